"""Fidelity and block compute of the pack's methods on the trained small models (no timing):
every preset of the flagship node, DeepCache's default and a FORA schedule, against no cache;
with --estimators, the same methods with other estimators of the skipped values.
The figures are deterministic, so two checkouts can be compared to the last digit.

    python3 tools/host.py python bench/fidelity.py --model flux_trained --out before.json
    python3 tools/host.py python bench/fidelity.py --model sd_trained --estimators taylor1 taylor2
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



def node(node_id: str, **inputs) -> tuple:
    """Run one of the pack's nodes as the host does and return its outputs."""
    from testbed import host
    return tuple(host.node(node_id).execute(**inputs).result)


def methods(model, steps):
    """(name, patched model) for each method this model supports, through the nodes."""
    from comfyui_duca.methods.settings import FLAGSHIP_PRESETS
    found = [(f"accelerate {p}", node("DuCaAccelerateV2", model=model, preset=p)[0]) for p in FLAGSHIP_PRESETS]
    if type(model.model.diffusion_model).__name__ == "UNetModel":
        found.append(("deepcache default", node("DuCaDeepCache", model=model, cache_interval=3, cache_depth=0,
                                                 schedule="uniform")[0]))
    schedule = node("DuCaFORASchedule", model=model, steps=steps, interval=3, first_full_steps=1)[0]
    found.append(("fora 3", node("DuCaApplySchedule", model=model, schedule=schedule)[0]))
    return found


def with_estimator(model, steps, estimator):
    """The same methods with `estimator` for their skipped values (no node input for it yet)."""
    from comfyui_duca.cache_core import schedule_rules
    from comfyui_duca.glue.patch import apply_method
    from comfyui_duca.glue.schedules import model_units
    from comfyui_duca.methods import PRESETS as SETTINGS, DeepCacheConfig, ScheduleConfig
    found = [(f"accelerate {p} {estimator}", apply_method(model, SETTINGS[p].with_changes(preset=p, estimator=estimator)))
             for p in ("quality", "balanced", "fast")]
    if type(model.model.diffusion_model).__name__ == "UNetModel":
        found.append((f"deepcache default {estimator}", apply_method(model, DeepCacheConfig(estimator=estimator))))
    family, units = model_units(model)
    schedule = schedule_rules.fora(steps, units, family, 3, 1)
    found.append((f"fora 3 {estimator}", apply_method(model, ScheduleConfig(schedule, estimator=estimator))))
    return found


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("flux_trained", "sd_trained"), default="flux_trained")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--estimators", nargs="*", default=[], help="also run the methods with these estimators")
    p.add_argument("--baselines", action="store_true",
                   help="also fewer steps (euler, dpmpp_2m) and a forecast of the denoised output (every 2-4)")
    p.add_argument("--out", help="JSON file for the results")
    args = p.parse_args(argv)
    workloads.boot(None, cpu=True)
    from comfyui_duca.glue.patch import last_stats

    work = workloads.testbed_workload(args.model, args.steps, 3, [0, 1])
    uncached = [work.sample(work.model, c) for c in work.cases]
    ref_pictures = [work.decode(u) for u in uncached]
    results = {}
    runs = methods(work.model, args.steps)
    for estimator in args.estimators:
        runs += with_estimator(work.model, args.steps, estimator)
    for name, model in runs:
        fractions, px = [], []
        for case, ref in zip(work.cases, ref_pictures):
            latent = work.sample(model, case)
            fractions.append(last_stats(model).compute_fraction)
            px.append(metrics.psnr(work.decode(latent), ref, metrics.PICTURE_RANGE))
        results[name] = {"compute_fraction": statistics.mean(fractions), "psnr_picture": statistics.median(px),
                         "timeline": last_stats(model).timeline}
        print(f"| {name} | {results[name]['compute_fraction']:.4%} | {results[name]['psnr_picture']:.3f} dB "
              f"| {results[name]['timeline']} |", flush=True)
    if args.baselines:
        results.update(baselines(work, ref_pictures, args.steps))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def baselines(work, ref_pictures, steps) -> dict:
    """What a user can do without the pack, at block compute 0.2-0.5: fewer steps, and every-k
    computing with the denoised output forecast (order 1) or reused (order 0) in between."""
    from bench.baselines import denoised_forecast, fewer_steps
    found = {}
    for n in sorted({round(steps * c) for c in (0.2, 0.27, 0.29, 0.35, 0.45)}):
        for sampler in ("euler", "dpmpp_2m"):
            fewer = fewer_steps(work, n, sampler)
            px = [metrics.psnr(work.decode(fewer.sample(work.model, c)), ref, metrics.PICTURE_RANGE)
                  for c, ref in zip(work.cases, ref_pictures)]
            found[f"fewer steps {n} {sampler}"] = report(f"fewer steps {n} {sampler}", n / steps, px)
    for every in (2, 3, 4):
        for order in (0, 1):
            model, forecast = denoised_forecast(work.model, every, order)
            px, fractions = [], []
            for c, ref in zip(work.cases, ref_pictures):
                px.append(metrics.psnr(work.decode(work.sample(model, c)), ref, metrics.PICTURE_RANGE))
                fractions.append(forecast.computed / steps)
            name = f"denoised forecast every {every} order {order}"
            found[name] = report(name, statistics.mean(fractions), px)
    return found


def report(name, fraction, px) -> dict:
    row = {"compute_fraction": fraction, "psnr_picture": statistics.median(px), "timeline": ""}
    print(f"| {name} | {fraction:.4%} | {row['psnr_picture']:.3f} dB | |", flush=True)
    return row


if __name__ == "__main__":
    sys.exit(main())
