"""The families only newer ComfyUI hosts have (testbed/newer), on the host this runs on: per family,
the level DuCa's presets run at, the balanced preset's share of the model's compute counted by
forward hooks on every linear layer of the host's diffusion model, and its distance to the uncached
output beside reusing the denoised output between every 3rd step (11 of 28 calls: no less compute).

    python3 tools/host.py --comfyui DIR python bench/newer_families.py [--families ltx2 flux2]

28 steps, euler/simple. A family with trained weights (training/train_families.py) is measured on
them, 3 prompts x 2 seeds against the empty prompt at cfg 1 and 4; the others on random weights,
seeds 0 and 1 at cfg 3 (there the distances say little about pictures). Median relative L2 of the
final latent (every stream of a NestedTensor). Writes a markdown table to --out.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
if str(BENCH.parent) not in sys.path:
    sys.path.insert(0, str(BENCH.parent))

STEPS = 28


def linear_flops(model, run):
    """`run()`'s output and the multiply-adds of the host's linear layers while it ran."""
    total = [0]

    def count(module, inputs, _out):
        total[0] += inputs[0].numel() // module.in_features * module.in_features * module.out_features
    handles = [m.register_forward_hook(count) for m in model.model.diffusion_model.modules()
               if isinstance(m, torch.nn.Linear)]
    try:
        return run(), total[0]
    finally:
        for handle in handles:
            handle.remove()


def measure(family, trained: bool) -> list:
    """Rows (cfg, level, compute, balanced error, reuse error) for one family."""
    from bench.baselines import denoised_forecast
    from comfyui_duca.glue.patch import apply_method, last_stats
    from comfyui_duca.methods import FORECAST_PRESETS
    from testbed import host, models
    from testbed.families import EMPTY_PROMPT
    from testbed.newer import flat

    model = family.build_trained() if trained else family.build(0)
    if trained:
        cases = [(family.class_conditioning(label), family.class_conditioning(EMPTY_PROMPT), seed)
                 for label in range(3) for seed in (0, 1)]
        cfgs = (1.0, 4.0)
    else:
        cases = [(family.conditioning(1), family.negative(2), seed) for seed in (0, 1)]
        cfgs = (3.0,)
    duca = host.node("DuCaAccelerateV2").execute(model, "duca balanced").result[0]
    positive, negative, seed = cases[0]
    models.sample(duca, positive, negative, steps=STEPS, cfg=cfgs[0], seed=seed, latent=family.latent(1))
    level = last_stats(duca).level
    balanced = apply_method(model, FORECAST_PRESETS["balanced"])
    reuse, _ = denoised_forecast(model, 3, order=0)
    rows = []
    for cfg in cfgs:
        errors, fractions = {"balanced": [], "reuse": []}, []
        for positive, negative, seed in cases:
            def run(m):
                return flat(models.sample(m, positive, negative, steps=STEPS, cfg=cfg, seed=seed,
                                          latent=family.latent(1)))
            reference, full = linear_flops(model, lambda: run(model))
            out, flops = linear_flops(model, lambda: run(balanced))
            fractions.append(flops / full)
            errors["balanced"].append(float((out - reference).norm() / reference.norm()))
            again = run(reuse)
            errors["reuse"].append(float((again - reference).norm() / reference.norm()))
        rows.append((cfg, level, statistics.median(fractions), statistics.median(errors["balanced"]),
                     statistics.median(errors["reuse"])))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="*", help="testbed/newer names (default: every one this host has)")
    parser.add_argument("--out", default=str(BENCH / "out" / "newer_families.md"))
    args = parser.parse_args(argv)
    from bench import workloads
    workloads.boot(None, cpu=True)
    torch.set_num_threads(1)  # models this small run fastest on one thread
    import comfyui_version
    from comfyui_duca.adapters import find_adapter
    from testbed.newer import FAMILIES, missing

    lines = [f"ComfyUI {comfyui_version.__version__}, {STEPS} steps euler/simple; compute: the balanced preset's "
             "share of the linear layers' multiply-adds (forward hooks); errors: median relative L2 to the uncached "
             "final latent.", "",
             "| family | host class | registry family | DuCa level | weights | cfg | balanced compute "
             "| balanced error | every-3rd reuse error | balanced closer |",
             "|---|---|---|---|---|---:|---:|---:|---:|---|"]
    for name, family in FAMILIES.items():
        if (args.families and name not in args.families) or missing(family):
            continue
        trained = family.trained_weights().is_file()
        registry = find_adapter(family.build(0).model.diffusion_model).family
        for cfg, level, compute, balanced, reuse in measure(family, trained):
            lines.append(f"| {name} | {family.model_class} | {registry} | {level} | {'trained' if trained else 'random'} "
                         f"| {cfg:g} | {compute:.1%} | {balanced:.2%} | {reuse:.2%} | {'yes' if balanced < reuse else 'no'} |")
            print(lines[-1], flush=True)
    report = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
