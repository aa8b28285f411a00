"""Side-by-side benchmark: DuCa presets against no cache, ComfyUI's EasyCache and
LazyCache, and the every-k-th-step baseline, on a CPU-sized Flux of ComfyUI's
real class with random weights.

    python3 scripts/host.py bench            # full size: hidden 512, 1024 tokens, 28 steps
    python3 scripts/host.py bench --quick    # seconds: hidden 64, 256 tokens, 8 steps

Every method samples the same noise and conditioning; its final latent is
compared with the uncached one. Times are medians over repeats, with methods
interleaved inside each repeat so machine drift hits all of them alike.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from testbed import host, models  # noqa: E402

SEED = 0
TEXT_TOKENS = 8
# ComfyUI's EasyCache / LazyCache node defaults.
EASYCACHE_DEFAULTS = dict(reuse_threshold=0.2, start_percent=0.15, end_percent=0.95, verbose=False)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 256 tokens, 8 steps, 1 repeat")
    parser.add_argument("--steps", type=int, help="sampling steps (default 28, quick 8)")
    parser.add_argument("--repeats", type=int, help="timed runs per method (default 3, quick 1)")
    parser.add_argument("--out", default=str(REPO / "bench" / "out"), help="folder for results.md / results.json")
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 8 if args.quick else 28
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be at least 1")
    return args


class CallCounter:
    """Counts model evaluations that really ran: `img_in` runs once per computed call,
    and a cache that skips a call returns before reaching it."""

    def __init__(self, diffusion_model):
        self.count = 0
        self.handle = diffusion_model.img_in.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.count += 1


def build_methods(base, steps, balanced_fraction):
    """name -> (patched model, kind). kind says where the compute fraction comes from."""
    from comfy_extras.nodes_easycache import EasyCacheNode, LazyCacheNode
    from comfyui_duca.cache_core import PRESETS, DuCaConfig, all_full_plan, every_kth_step_plan
    from comfyui_duca.glue.patch import apply_duca

    methods = {"no cache": (base, "calls"),
               "all-full plan": (apply_duca(base, DuCaConfig(plan=all_full_plan(steps))), "duca")}
    for name in ("quality", "balanced", "fast"):
        methods[f"DuCa {name}"] = (apply_duca(base, PRESETS[name]), "duca")
    methods["EasyCache"] = (EasyCacheNode.execute(base, **EASYCACHE_DEFAULTS).result[0], "calls")
    methods["LazyCache"] = (LazyCacheNode.execute(base, **EASYCACHE_DEFAULTS).result[0], "calls")

    # every-k at the k whose computed-step share is closest to balanced's block compute
    def full_share(k):
        return every_kth_step_plan(steps, k).timeline.count("F") / steps
    matched = min(range(1, steps + 1), key=lambda k: (abs(full_share(k) - balanced_fraction), k))
    for k in sorted({2, 3, 4, matched}):
        label = f"every-{k}" + (" (matched)" if k == matched else "")
        methods[label] = (apply_duca(base, DuCaConfig(plan=every_kth_step_plan(steps, k))), "duca")
    return methods


def machine_speed(seconds=0.3):
    """GFLOP/s of a fixed matmul, taken before each timed run: shared CPUs can
    drift by 2x or more over minutes, and this shows when a time was taken slow."""
    a, b = torch.ones(1024, 512), torch.ones(512, 2048)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return count * 2 * 1024 * 512 * 2048 / (time.perf_counter() - start) / 1e9


def compare(latent, reference):
    """Relative L2 and PSNR on latents; PSNR's range is max - min of the reference.
    PSNR is None for an identical latent (infinite; JSON has no infinity)."""
    err = (latent - reference).double()
    ref = reference.double()
    rel_l2 = (err.norm() / ref.norm()).item()
    mse = err.pow(2).mean().item()
    data_range = (ref.max() - ref.min()).item()
    psnr = None if mse == 0 else 10 * torch.log10(torch.tensor(data_range ** 2 / mse)).item()
    return rel_l2, psnr


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None):
    args = parse_args(argv)
    host.load_pack()  # importable as comfyui_duca from here on
    from comfyui_duca.cache_core import PRESETS
    from comfyui_duca.glue.patch import apply_duca, last_stats

    size = models.FLUX_SMALL if args.quick else models.FLUX_BENCH
    pixels = 256 if args.quick else 512  # latent pixels/8, patch 2: 256 or 1024 image tokens
    base = models.flux(seed=SEED, **size)
    positive = models.flux_conditioning(tokens=TEXT_TOKENS, model=base)
    counter = CallCounter(base.model.diffusion_model)

    def sample(model):
        counter.count = 0
        start = time.perf_counter()
        latent = models.sample(model, positive, steps=args.steps, cfg=1.0, sampler="euler",
                               scheduler="simple", seed=SEED, height=pixels, width=pixels)
        return time.perf_counter() - start, latent, counter.count

    # Warm-up (untimed): first-run allocations, and balanced's block compute to match every-k to.
    sample(base)
    balanced = apply_duca(base, PRESETS["balanced"])
    sample(balanced)
    methods = build_methods(base, args.steps, last_stats(balanced).compute_fraction)

    times = {name: [] for name in methods}
    speeds = {name: [] for name in methods}
    results = {}
    names = list(methods)
    for repeat in range(args.repeats):
        # rotate the order each repeat so no method always runs first or last
        order = names[repeat % len(names):] + names[:repeat % len(names)]
        for name in order:
            model, kind = methods[name]
            speeds[name].append(machine_speed())
            seconds, latent, calls = sample(model)
            times[name].append(seconds)
            print(f"  repeat {repeat + 1}/{args.repeats} {name:20s} {seconds:7.2f}s "
                  f"(machine {speeds[name][-1]:.0f} GFLOP/s)", flush=True)
            stats = last_stats(model) if kind == "duca" else None
            results[name] = {"latent": latent, "calls": calls, "stats": stats}

    reference = results["no cache"]["latent"]
    total_calls = results["no cache"]["calls"]
    base_time = statistics.median(times["no cache"])
    base_best = min(times["no cache"])
    rows = []
    for name in names:
        res, median = results[name], statistics.median(times[name])
        stats = res["stats"]
        fraction = stats.compute_fraction if stats is not None else res["calls"] / total_calls
        rel_l2, psnr = compare(res["latent"], reference)
        best = min(times[name])
        rows.append({"method": name, "median_s": median, "times_s": times[name], "speedup": base_time / median,
                     "best_s": best, "speedup_best": base_best / best, "machine_gflops": speeds[name],
                     "compute_fraction": fraction,
                     "compute_source": "block FLOPs (RunStats)" if stats is not None else "model calls computed",
                     "model_calls": res["calls"], "rel_l2": rel_l2, "psnr_db": psnr,
                     "timeline": stats.timeline if stats is not None else None,
                     "stats": stats.to_dict() if stats is not None else None})

    setup = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
             "device": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
             "python": platform.python_version(), "model": "ComfyUI Flux, random weights", "size": size,
             "image_tokens": (pixels // 16) ** 2, "text_tokens": TEXT_TOKENS, "steps": args.steps,
             "sampler": "euler", "scheduler": "simple", "cfg": 1.0, "seed": SEED, "repeats": args.repeats,
             "psnr_range": "max - min of the uncached final latent",
             "psnr_range_value": (reference.max() - reference.min()).item(),
             "machine_gflops_range": [min(min(v) for v in speeds.values()), max(max(v) for v in speeds.values())]}
    table = markdown(setup, rows)
    print()
    print(table)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"setup": setup, "results": rows}, indent=2) + "\n")
    print(f"\nwrote {out / 'results.md'} and {out / 'results.json'}")
    return 0


def markdown(setup, rows):
    size = setup["size"]
    low, high = setup["machine_gflops_range"]
    lines = [
        f"# DuCa benchmark ({setup['date']})",
        "",
        f"- device: {setup['device']}, {setup['threads']} torch threads; torch {setup['torch']}",
        f"- model: {setup['model']}, hidden {size['hidden_size']}, {size['num_heads']} heads, "
        f"{size['depth']} double + {size['depth_single_blocks']} single blocks",
        f"- {setup['image_tokens']} image + {setup['text_tokens']} text tokens, {setup['steps']} steps, "
        f"{setup['sampler']}/{setup['scheduler']}, cfg {setup['cfg']}, seed {setup['seed']}, "
        f"median of {setup['repeats']} runs",
        "- compute: block FLOPs done / full for DuCa-based rows; model calls computed / total "
        "for no cache, EasyCache, LazyCache",
        f"- PSNR on the final latent, range = max - min of the uncached latent "
        f"({setup['psnr_range_value']:.3f})",
        f"- machine speed before each run (fixed matmul): {low:.0f} to {high:.0f} GFLOP/s; "
        "best = fastest run, for when the machine drifted during the median's runs",
        "",
        "| method | median s | speedup | best s | speedup (best) | compute | rel. L2 | PSNR dB | timeline |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        psnr = "inf" if r["psnr_db"] is None else f"{r['psnr_db']:.1f}"
        lines.append(f"| {r['method']} | {r['median_s']:.2f} | {r['speedup']:.2f}x | {r['best_s']:.2f} "
                     f"| {r['speedup_best']:.2f}x | {r['compute_fraction']:.1%} "
                     f"| {r['rel_l2']:.4f} | {psnr} | {r['timeline'] or ''} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
