"""Schedules on the trained small Flux: Learning-to-Cache against FORA at the same compute,
and the exposure-bias correction on and off for each accelerator.

    python3 tools/host.py python bench/schedules.py --out out/schedules

The L2C router is learned once, on the first class and seed (the user's prompt), with
the same sampler settings, then thresholded to match each FORA interval's fraction of
block compute. Fidelity is latent PSNR to the uncached output of the same class and seed
(median over classes x seeds). Wall-clock speed is measured by bench/run.py; the seconds
in the JSON here are only as steady as the machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from testbed import host, models  # noqa: E402

from metrics import latent_psnr  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--l2c-windows", type=int, default=30, help="training windows for the router")
    parser.add_argument("--l2c-full-every", type=int, nargs="+", default=[3, 4])
    parser.add_argument("--fora", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--l2c-pressure", type=float, default=0.01,
                        help="L2C's push toward reuse; small, since a threshold then sets the compute")
    parser.add_argument("--delta", type=float, nargs="+", default=[0.98, 0.96],
                        help="exposure-bias deltas for the on/off rows")
    parser.add_argument("--no-eb", action="store_true", help="skip the exposure-bias rows")
    parser.add_argument("--out", default="out/schedules")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    host.load_pack()
    from comfyui_duca.methods import PRESETS, ScheduleConfig
    from comfyui_duca.cache_core import schedule_rules as rules
    from comfyui_duca.glue import exposure, l2c, patch, schedules

    model = models.flux_trained()
    adapter = schedules.model_adapter(model)
    family, units = adapter.family, adapter.schedule_units()
    latent = {"samples": torch.zeros(1, 16, models.FLUX_TRAINED_PIXELS // 2, models.FLUX_TRAINED_PIXELS // 2)}
    cases = [(c, s) for c in range(args.classes) for s in range(args.seeds)]

    def sampling(label, seed):
        positive = models.class_conditioning(model, label)
        return schedules.Sampling(positive, positive, latent, seed, args.steps, 1.0, "euler", "simple")

    references = {case: sampling(*case).run(model) for case in cases}
    rows = []

    def evaluate(name, patched, settings, fraction=None):
        psnrs, times = [], []
        for case in cases:
            started = time.perf_counter()
            out = sampling(*case).run(patched)
            times.append(time.perf_counter() - started)
            psnrs.append(latent_psnr(out, references[case]))
            stats = patch.last_stats(patched)
            if stats is not None:
                fraction = stats.compute_fraction
        for _ in range(args.repeats - 1):
            started = time.perf_counter()
            sampling(*cases[0]).run(patched)
            times.append(time.perf_counter() - started)
        row = {"method": name, "settings": settings, "compute": fraction if fraction is not None else 1.0,
               "psnr_db": statistics.median(psnrs), "seconds": statistics.median(times)}
        rows.append(row)
        print(f"{name:<28} compute {row['compute']:.3f}  PSNR {row['psnr_db']:.2f} dB  {row['seconds']:.2f} s",
              flush=True)
        return row

    evaluate("uncached", model, {}, 1.0)
    with_schedule = lambda s: patch.apply_method(model, ScheduleConfig(s))  # noqa: E731
    fora = {k: rules.fora(args.steps, units, family, interval=k) for k in args.fora}
    for k, schedule in fora.items():
        evaluate(f"FORA N={k}", with_schedule(schedule), schedule.settings)

    learned_runs = {}
    for full_every in args.l2c_full_every:
        started = time.perf_counter()
        learned = l2c.learn_router(model, sampling(0, 0), full_every=full_every, iterations=args.l2c_windows,
                                   seconds=3600, reuse_pressure=args.l2c_pressure)
        learned_runs[full_every] = learned
        print(f"L2C full_every={full_every}: {learned.iterations} windows in {time.perf_counter() - started:.0f} s",
              flush=True)
        for k, schedule in fora.items():
            target = schedule.compute_fraction()
            threshold = rules.threshold_for_fraction(learned.gates, learned.routed_steps, target)
            routed = learned.schedule(adapter, threshold, {"full_every": full_every})
            if routed.compute_fraction() + 1e-9 < target - 0.02:
                continue  # this base pattern cannot reach the FORA fraction
            evaluate(f"L2C full_every={full_every} @FORA{k}", with_schedule(routed),
                     {"threshold": threshold, "full_every": full_every}, )

    # exposure-bias correction on and off, per accelerator
    eb_table = rules.eb_cache(args.steps, units, family, attention_interval=3, mlp_interval=2, first_full_steps=3)
    accelerators = {"none": model, "DuCa balanced": patch.apply_method(model, PRESETS["balanced"]),
                    "FORA N=3": with_schedule(fora.get(3, rules.fora(args.steps, units, family, 3))),
                    "EB-Cache 3/2": with_schedule(eb_table)}
    if learned_runs:  # thresholded to FORA N=2's compute
        full_every, learned = next(iter(learned_runs.items()))
        threshold = rules.threshold_for_fraction(learned.gates, learned.routed_steps, 0.5)
        accelerators[f"L2C full_every={full_every} @50%"] = with_schedule(
            learned.schedule(adapter, threshold, {"full_every": full_every}))
    for name, accelerated in ({} if args.no_eb else accelerators).items():
        for delta in (1.0, *args.delta):
            evaluate(f"{name} | EB delta={delta}", exposure.apply_exposure_bias(accelerated, delta), {"delta": delta})

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "schedules.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    # fidelity at equal compute is the point here; times (in the JSON) are only as quiet as the machine
    lines = ["| method | block compute | latent PSNR (dB) |", "|---|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['compute']:.1%} | {row['psnr_db']:.2f} |")
    (out / "schedules.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
