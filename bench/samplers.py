"""The budget presets under each sampler users pick, guided and not: one frontier (bench/frontier.py)
per sampler and cfg, every entry and the uncached reference sampled with that sampler, and one
table per sampler: each preset's PSNR to the uncached output against the best rival at the same or
lower compute (the same sampler and euler / dpmpp_2m / uni_pc at fewer steps, every-k forecast or
reuse, EasyCache, LazyCache), and under a sampler that adds noise its distance to the same preset
under euler.

    python3 tools/host.py python bench/samplers.py --model flux_trained --out bench/samplers_flux_trained
    python3 tools/host.py python bench/samplers.py --model sd_trained --out bench/samplers_sd_trained
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH.parent) not in sys.path:
    sys.path.insert(0, str(BENCH.parent))

from bench import frontier, workloads  # noqa: E402

SAMPLERS = ("euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "uni_pc")
NOISY = ("ancestral", "sde")  # samplers whose presets are also held against euler's
MARGIN_DB, NOISY_WITHIN_DB = 1.5, 8.0


def preset_rows(rows: list) -> dict:
    """preset -> (its row, the best rival at <= its compute)."""
    others = [r for r in rows if r["group"] != frontier.PACK and math.isfinite(r["psnr"])]
    found = {}
    for preset in frontier.BUDGET_PRESETS:
        mine = next(r for r in rows if r["method"] == f"accelerate {preset}")
        rivals = [r for r in others if r["compute"] <= mine["compute"] + 1e-9]
        found[preset] = (mine, max(rivals, key=lambda r: r["psnr"]) if rivals else None)
    return found


def table(sampler: str, by_cfg: dict, euler: dict) -> str:
    lines = [f"### {sampler}", "", "| cfg | preset | compute | PSNR (dB) | best rival at <= compute | rival dB | "
             f"margin | >= {MARGIN_DB} dB | under euler |", "|---|---|---:|---:|---|---:|---:|---|---:|"]
    for cfg, rows in by_cfg.items():
        for preset, (mine, best) in preset_rows(rows).items():
            margin = mine["psnr"] - best["psnr"] if best else math.inf
            under_euler = euler.get(cfg, {}).get(preset)
            lines.append(f"| {cfg:g} | {preset} | {mine['compute']:.3f} | {mine['psnr']:.2f} | "
                         f"{best['method'] if best else '-'} | {best['psnr'] if best else math.nan:.2f} | "
                         f"{margin:+.2f} | {'yes' if margin >= MARGIN_DB else 'NO'} | "
                         f"{'-' if under_euler is None else format(under_euler, '.2f')} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("flux_trained", "sd_trained"), default="flux_trained")
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    p.add_argument("--cfg", type=float, nargs="+", default=[1.0, 4.0])
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--out", help="path prefix: writes PREFIX.json and PREFIX.md")
    args = p.parse_args(argv)
    workloads.boot(None, cpu=True)
    work = workloads.testbed_workload(args.model, args.steps, args.classes, args.seeds)
    results = {}
    for sampler in args.samplers:
        for cfg in args.cfg:
            work.sampler, work.cfg = sampler, cfg
            baselines = tuple(dict.fromkeys((sampler, *frontier.SAMPLERS)))  # the same sampler first
            print(f"## {args.model}: {sampler}, cfg {cfg:g}", flush=True)
            results.setdefault(sampler, {})[cfg] = frontier.run(work, baselines)
    euler = {cfg: {p: mine["psnr"] for p, (mine, _) in preset_rows(rows).items()}
             for cfg, rows in results.get("euler", {}).items()}
    text = (f"{work.description}; {work.steps} steps, {work.scheduler} schedule, {len(work.cases)} cases; "
            f"PSNR of the pictures to the uncached output of the same sampler and cfg, median over cases.\n\n")
    text += "\n".join(table(s, by_cfg, euler if any(w in s for w in NOISY) else {})
                      for s, by_cfg in results.items())
    print(text)
    if args.out:
        out = Path(args.out)
        out.with_suffix(".json").write_text(json.dumps({"model": args.model, "results": {
            s: {str(c): rows for c, rows in by_cfg.items()} for s, by_cfg in results.items()}}, indent=1) + "\n")
        out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
