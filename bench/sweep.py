"""Fidelity sweep of custom DuCa settings (no timing): block compute and PSNR to no cache
for each interval x refresh ratio, on the same cases as the harness.

    python3 tools/host.py python bench/sweep.py --model flux_trained
    python3 tools/host.py python bench/sweep.py --intervals 4 5 6 --ratios 0.1 0.2 --first-full 2 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH.parent) not in sys.path:
    sys.path.insert(0, str(BENCH.parent))

from bench import metrics, workloads  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=workloads.MODELS, default="flux_trained")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--intervals", type=int, nargs="+", default=[3, 4, 5, 6, 7, 8])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3])
    p.add_argument("--first-full", type=int, nargs="+", default=[3])
    p.add_argument("--selectors", nargs="+", default=["value_norm"], help="token selectors to try")
    p.add_argument("--aggressive", type=int, nargs="+", default=[1], help="1: DuCa (C and A steps), 0: ToCa (C only)")
    p.add_argument("--out", help="JSON file for the results")
    args = p.parse_args(argv)
    workloads.boot(None, cpu=True)
    from comfyui_duca.methods import DuCaConfig
    from comfyui_duca.glue.patch import apply_method, last_stats

    work = workloads.testbed_workload(args.model, args.steps, args.classes, args.seeds)
    uncached = [work.sample(work.model, c) for c in work.cases]
    references = [work.to_model_space(u) for u in uncached]
    ref_pictures = [work.decode(u) for u in uncached]
    results = []
    print("| selector | aggressive | first full | interval | refresh | block compute | reduction | PSNR px dB "
          "| SSIM px | PSNR latent dB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    grid = [(sel, agg, first, interval, ratio) for sel in args.selectors for agg in args.aggressive
            for first in args.first_full for interval in args.intervals for ratio in args.ratios]
    for selector, aggressive, first, interval, ratio in grid:
        config = DuCaConfig(interval=interval, refresh_ratio=ratio, first_full_steps=first,
                            token_selector=selector, aggressive=bool(aggressive))
        model = apply_method(work.model, config)
        fractions, px, ssim, lat = [], [], [], []
        for case, ref, ref_pic in zip(work.cases, references, ref_pictures):
            latent = work.sample(model, case)
            fractions.append(last_stats(model).compute_fraction)
            picture = work.decode(latent)
            px.append(metrics.psnr(picture, ref_pic, metrics.PICTURE_RANGE))
            ssim.append(metrics.ssim(picture, ref_pic))
            lat.append(metrics.latent_psnr(work.to_model_space(latent), ref))
        row = {"token_selector": selector, "aggressive": bool(aggressive), "first_full_steps": first,
               "interval": interval, "refresh_ratio": ratio,
               "compute_fraction": statistics.mean(fractions), "psnr_picture": statistics.median(px),
               "ssim_picture": statistics.median(ssim), "psnr_latent": statistics.median(lat)}
        results.append(row)
        print(f"| {selector} | {bool(aggressive)} | {first} | {interval} | {ratio} "
              f"| {row['compute_fraction']:.1%} | {1 / row['compute_fraction']:.2f}x | {row['psnr_picture']:.2f} "
              f"| {row['ssim_picture']:.4f} | {row['psnr_latent']:.2f} |", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
