"""Every small family's balanced preset (0.357 of the model calls at 28 steps) against every-k
reuse: the relative error to the uncached output (latent space, median over the cases), for the
forecast with and without the gap correction, the denoised output reused every 4th step (0.321:
the every-k at no more compute) and every 3rd step (0.393: more compute), and forecast every 3rd
step (order 1), at cfg 1 and 4.

`--weights trained` (the default) samples each family's model trained on photographs
(training/train_families.py), 3 classes x the seeds, against the empty prompt; `--weights random`
its random-weight model with one random prompt: random outputs move little and erratically with
sigma, so that measures the arithmetic on the real classes, not how a trained model behaves.

    python3 tools/host.py python bench/family_balanced.py --steps 28 --seeds 0 1
    python3 tools/host.py python bench/family_balanced.py --weights random
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH.parent) not in sys.path:
    sys.path.insert(0, str(BENCH.parent))

from bench import workloads  # noqa: E402


def relative_error(out, reference) -> float:
    return float((out - reference).norm() / reference.norm())


def entries(model):
    from bench.baselines import denoised_forecast
    from comfyui_duca.glue.patch import apply_method
    from comfyui_duca.methods import FORECAST_PRESETS
    balanced = FORECAST_PRESETS["balanced"]
    yield "balanced", apply_method(model, balanced)
    yield "balanced uncorrected", apply_method(model, balanced.with_changes(gap_correction=False))
    yield "reuse every 4", denoised_forecast(model, 4, order=0)[0]
    yield "reuse every 3", denoised_forecast(model, 3, order=0)[0]
    yield "forecast every 3", denoised_forecast(model, 3, order=1)[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--cfgs", type=float, nargs="+", default=[1.0, 4.0])
    p.add_argument("--weights", choices=("trained", "random"), default="trained")
    p.add_argument("--classes", type=int, default=3, help="trained weights: prompts per family")
    args = p.parse_args(argv)
    workloads.boot(None, cpu=True)
    from testbed import models
    from testbed.families import EMPTY_PROMPT, FAMILIES
    names = ["balanced", "balanced uncorrected", "reuse every 4", "reuse every 3", "forecast every 3"]
    print("| family | cfg | " + " | ".join(names) + " | closer than reuse every 4 / 3 |")
    print("|---|---:|" + "---:|" * len(names) + "---|")
    wins = {4: 0, 3: 0}
    total = 0
    for family_name, family in FAMILIES.items():
        if args.weights == "trained":
            model = family.build_trained()
            prompts = [(family.class_conditioning(c), family.class_conditioning(EMPTY_PROMPT))
                       for c in range(args.classes)]
        else:
            model = family.build(3)
            prompts = [(family.conditioning(1), family.negative(2))]
        cases = [(positive, negative, seed) for positive, negative in prompts for seed in args.seeds]
        for cfg in args.cfgs:
            def sample(m, case):
                positive, negative, seed = case
                return models.sample(m, positive, negative, steps=args.steps, cfg=cfg, seed=seed,
                                     latent=family.latent(1))
            references = [sample(model, case) for case in cases]
            errors = {name: statistics.median(relative_error(sample(m, case), ref)
                                              for case, ref in zip(cases, references))
                      for name, m in entries(model)}
            closer = {k: errors["balanced"] < errors[f"reuse every {k}"] for k in wins}
            wins = {k: wins[k] + closer[k] for k in wins}
            total += 1
            print(f"| {family_name} | {cfg:g} | " + " | ".join(f"{100 * errors[n]:.3f}%" for n in names)
                  + " | " + " / ".join("yes" if closer[k] else "no" for k in wins) + " |", flush=True)
    print(f"\n{args.weights} weights: balanced closer than reusing the denoised output every 4th step on "
          f"{wins[4]} of {total} family x cfg runs, every 3rd step on {wins[3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
