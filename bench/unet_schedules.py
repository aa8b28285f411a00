"""Schedules on the small trained SD U-Net: Block Caching (calibrated), FORA, DeepCache and
ComfyUI's EasyCache, on the same seeds and conditionings.

    python3 tools/host.py python bench/unet_schedules.py [--steps 28] [--repeats 3]

Block Caching is calibrated first: one all-computing run per class on a seed the cases do not
use (`CalibrationConfig()`), the relative change profiles averaged, then
thresholded. EasyCache runs at several thresholds and at the one matched to DeepCache interval
3's speed (bisection on time measured side by side with no cache on case 0). Per method:
seconds (median over repeats of the summed cases; methods interleaved, order rotated, after
an untimed warm-up), speedup over no cache (and "best": the fastest repeat of each, as load
only adds time), block compute (block FLOPs done / all,
from the run's stats; model calls computed for EasyCache and whole-step reuse), latent and
picture PSNR to the uncached output (medians over the cases). Writes
bench/out/unet_schedules/results.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
if str(BENCH.parent) not in sys.path:
    sys.path.insert(0, str(BENCH.parent))

from bench import methods as M  # noqa: E402
from bench import metrics, workloads  # noqa: E402

CALIBRATION_SEED = 100  # not one of the cases' seeds


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.2],
                   help="Block Caching thresholds (accumulated relative L1 change)")
    p.add_argument("--easycache", type=float, nargs="+", default=[0.2, 0.1, 0.05, 0.025],
                   help="EasyCache thresholds (besides the one matched to DeepCache's speed)")
    p.add_argument("--search-iterations", type=int, default=8, help="bisection steps for the matched threshold")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    p.add_argument("--out", default=str(BENCH / "out" / "unet_schedules"))
    return p.parse_args(argv)


def calibrate(work, units):
    """The mean [steps, units] relative change over one calibration run per class."""
    from comfyui_duca.methods import CalibrationConfig
    from comfyui_duca.glue.patch import apply_method, last_result
    model = apply_method(work.model, CalibrationConfig())
    profiles, seen = [], set()
    for case in work.cases:
        if case.label in seen:
            continue
        seen.add(case.label)
        work.sample(model, workloads.Case(case.label, CALIBRATION_SEED, case.positive, case.negative))
        profiles.append(last_result(model).relative_change())
    return torch.stack(profiles).mean(0)


def build(work, args):
    from comfyui_duca.adapters.unet import UNetAdapter
    from comfyui_duca.cache_core import every_kth_step_plan, schedule_rules
    from comfyui_duca.methods import DeepCacheConfig, ScheduleConfig
    units = UNetAdapter.for_model(work.model.model.diffusion_model).schedule_units()
    steps, base = work.steps, work.model
    change = calibrate(work, units)
    rows = [M.Method("no cache", "reference", base)]
    for t in args.thresholds:
        schedule = schedule_rules.block_caching(change, units, "unet", t)
        rows.append(M.duca(base, ScheduleConfig(schedule), f"Block Caching t={t:g}", "block-caching",
                           {"threshold": t, "unit_compute": schedule.compute_fraction()}))
    for n in (2, 3):
        schedule = schedule_rules.fora(steps, units, "unet", interval=n)
        rows.append(M.duca(base, ScheduleConfig(schedule), f"FORA interval {n}", "fora",
                           {"interval": n, "unit_compute": schedule.compute_fraction()}))
    for n in (2, 3, 4):
        rows.append(M.duca(base, DeepCacheConfig(interval=n), f"DeepCache interval {n}", "deepcache",
                           {"interval": n}))
    rows.append(M.whole_step_reuse(base, every_kth_step_plan(steps, 3, first_full_steps=1), "every-3 (whole step)",
                                   {"k": 3}))
    for t in args.easycache:
        rows.append(M.cache_node(base, "EasyCache", t, f"EasyCache t={t:g}"))
    return rows, change


def seconds_ratio(work, method, reference, runs=5):
    """Median over interleaved runs of case 0 of method's seconds / reference's."""
    ratios = []
    for _ in range(runs):
        start = time.perf_counter()
        work.sample(reference.model, work.cases[0])
        middle = time.perf_counter()
        work.sample(method.model, work.cases[0])
        ratios.append((time.perf_counter() - middle) / (middle - start))
    return statistics.median(ratios)


def easycache_at_speed_of(work, rows, name, iterations):
    """EasyCache with the threshold whose time on case 0 is the shortest still at least `name`'s
    (both over no cache's, measured side by side): at the same speed, or slower, never faster."""
    reference, method = rows[0], next(m for m in rows if m.name == name)
    target = seconds_ratio(work, method, reference)

    def time_ratio(model):
        return seconds_ratio(work, M.Method("EasyCache", "EasyCache", model), reference, runs=3)
    t, ratio, tried = M.match_threshold(work.model, "EasyCache", target, time_ratio, iterations)
    matched = M.cache_node(work.model, "EasyCache", t, f"EasyCache at {name}'s speed (t={t:.3g})")
    return matched, {"to": name, "time_ratio": target, "threshold": t, "easycache_time_ratio": ratio,
                     "tried": tried}


def main(argv=None):
    args = parse_args(argv)
    workloads.boot(None, cpu=True)
    torch.set_num_threads(args.threads)
    from comfyui_duca.glue.patch import last_stats
    work = workloads.testbed_workload("sd_trained", args.steps, args.classes, args.seeds)
    rows, change = build(work, args)
    counter = M.CallCounter(work.model.model.diffusion_model)
    matched, matching = easycache_at_speed_of(work, rows, "DeepCache interval 3", args.search_iterations)
    rows.append(matched)
    times = {m.name: [0.0] * args.repeats for m in rows}
    outputs = {m.name: [None] * len(work.cases) for m in rows}
    fractions = {m.name: [None] * len(work.cases) for m in rows}
    for m in rows:  # untimed warm-up
        work.sample(m.model, work.cases[0])
    for repeat in range(args.repeats):
        for i, case in enumerate(work.cases):
            shift = (repeat * len(work.cases) + i) % len(rows)
            for m in rows[shift:] + rows[:shift]:
                counter.count = 0
                start = time.perf_counter()
                latent = work.sample(m.model, case)
                times[m.name][repeat] += time.perf_counter() - start
                if outputs[m.name][i] is None:
                    outputs[m.name][i] = latent
                    stats = last_stats(m.model) if m.counted_by == "stats" else None
                    fractions[m.name][i] = (stats.compute_fraction, stats.timeline) if stats else counter.count
    reference_calls = fractions["no cache"][0]
    results = []
    for m in rows:
        psnr_latent, psnr_picture, compute, timeline = [], [], [], ""
        for i in range(len(work.cases)):
            out, ref = outputs[m.name][i], outputs["no cache"][i]
            psnr_latent.append(metrics.latent_psnr(work.to_model_space(out), work.to_model_space(ref)))
            psnr_picture.append(metrics.psnr(work.decode(out), work.decode(ref), metrics.PICTURE_RANGE))
            f = fractions[m.name][i]
            if isinstance(f, tuple):
                compute.append(f[0])
                timeline = timeline or f[1]
            else:
                compute.append(f / reference_calls)
        results.append({"method": m.name, "settings": m.settings, "seconds": times[m.name],
                        "speedup": statistics.median(times["no cache"]) / statistics.median(times[m.name]),
                        "speedup_best": min(times["no cache"]) / min(times[m.name]),
                        "block_compute": statistics.mean(compute), "psnr_latent": statistics.median(psnr_latent),
                        "psnr_picture": statistics.median(psnr_picture), "timeline": timeline})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    setup = {"steps": args.steps, "cases": [(c.label, c.seed) for c in work.cases], "repeats": args.repeats,
             "cfg": work.cfg, "threads": args.threads, "notes": work.notes,
             "calibration": change.tolist(), "matching": matching}
    (out / "results.json").write_text(json.dumps({"setup": setup, "results": results}, indent=1,
                                                 default=str).replace("Infinity", "null"))
    print(f"{work.description}; {args.steps} steps, cfg {work.cfg}, {len(work.cases)} cases, "
          f"median of {args.repeats} repeats")
    print(f"EasyCache matched to {matching['to']} on case 0: {matching['time_ratio']:.1%} of no cache's time; "
          f"EasyCache at threshold {matching['threshold']:.3g}: {matching['easycache_time_ratio']:.1%}")
    print("| method | s (all cases) | speedup | speedup (best) | block compute | latent PSNR dB | picture PSNR dB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['method']} | {statistics.median(r['seconds']):.2f} | {r['speedup']:.2f}x | "
              f"{r['speedup_best']:.2f}x | "
              f"{r['block_compute']:.1%} | {r['psnr_latent']:.2f} | {r['psnr_picture']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
