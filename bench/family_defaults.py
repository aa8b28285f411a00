"""Per-family DuCa defaults by measurement: for each family's small model of the host's
class, sweep interval x refresh ratio x first full steps, and keep, per preset, the
setting with the best latent PSNR to the uncached output at the preset's compute budget
(the block compute of the papers' setting on the same model; see `budgets`).

    python3 tools/host.py python bench/family_defaults.py
    python3 tools/host.py python bench/family_defaults.py --families wan21-t2v auraflow --steps 20
    python3 tools/host.py python bench/family_defaults.py --rechoose   # from the last results.json

Models: every entry of testbed/families.py (and of testbed/newer where the host has it) plus Flux (random and the small trained one)
and Wan 2.1 text-to-video and SD3 from testbed/models.py. All but the trained Flux have
seeded random weights: their features change across steps unlike a trained model's, so
the choice is a measurement on the real classes' arithmetic, not on real pictures; where a
family has a trained model, it alone decides. A setting replaces the papers' only when it
wins by at least --margin dB (mean over the deciding models and seeds) or the papers'
setting falls outside the budget; Flux keeps the papers' settings (KEEP_PAPERS).
Writes a markdown table and the JSON of every point to --out (bench/out/family_defaults).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

BENCH = Path(__file__).resolve().parent
if str(BENCH.parent) not in sys.path:
    sys.path.insert(0, str(BENCH.parent))

from bench import metrics, workloads  # noqa: E402

PAPER = {"quality": (3, 0.15), "balanced": (4, 0.1), "fast": (6, 0.1)}  # (interval, refresh ratio), 3 full first
PAPER_FIRST_FULL = 3
BUDGET_SLACK = 0.005   # compute fractions this close to the budget count as within it
GAP = 0.05             # quality spends at least this much more block compute than balanced, fast this much less
# The papers tuned their settings on Flux-dev itself: a better measurement than our small model's.
KEEP_PAPERS = {"flux": "tuned by the papers on Flux-dev"}
TRAINED = set()        # names of subjects with trained weights (filled as they are built)


@dataclass
class Subject:
    """One small model to measure: `sample(model, seed)` gives the final latent in model space."""
    name: str
    model: object
    sample: Callable
    trained: bool = False


def family_subjects(names, steps):
    from testbed import models
    from testbed.families import FAMILIES

    from testbed import newer

    subjects = []
    # the families only a newer host has join where this host has them
    available = {**FAMILIES, **{n: f for n, f in newer.FAMILIES.items() if not newer.missing(f)}}
    for name, family in available.items():
        if names and name not in names:
            continue
        model = family.build(3)

        def sample(m, seed, family=family):
            return newer.flat(models.sample(m, family.conditioning(1), family.negative(2), steps=steps, cfg=4.0,
                                            seed=seed, latent=family.latent(1)))
        subjects.append(Subject(name, model, sample))
    extra = {
        "flux": lambda: _flux(models, steps), "flux-trained": lambda: _flux_trained(steps),
        "wan21-t2v": lambda: _wan(models, steps), "sd3": lambda: _sd3(models, steps)}
    subjects += [make() for name, make in extra.items() if not names or name in names]
    return subjects


def _flux(models, steps):
    model = models.flux(seed=0)
    positive, negative = models.flux_conditioning(model=model, seed=1), models.flux_conditioning(model=model, seed=2)
    return Subject("flux", model, lambda m, seed: models.sample(m, positive, negative, steps=steps, cfg=3.5,
                                                                seed=seed, height=64, width=64))


def _flux_trained(steps):
    work = workloads.testbed_workload("flux_trained", steps, classes=1, seeds=[0])
    trained = not any("UNTRAINED" in n for n in work.notes)

    def sample(m, seed):
        return work.to_model_space(work.sample(m, dataclasses.replace(work.cases[0], seed=seed)))
    if trained:
        TRAINED.add("flux-trained")
    return Subject("flux-trained", work.model, sample, trained=trained)


def _wan(models, steps):
    model = models.wan(seed=2)
    positive, negative = models.text_conditioning(32, seed=1), models.text_conditioning(32, seed=2)
    return Subject("wan21-t2v", model, lambda m, seed: models.sample(m, positive, negative, steps=steps, cfg=5.0,
                                                                     seed=seed, latent=models.video_latent()))


def _sd3(models, steps):
    model = models.sd3(seed=5, depth=3)
    gen = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, 8, 32, generator=gen), {"pooled_output": torch.randn(1, 32, generator=gen)}]]
    negative = [[torch.zeros(1, 8, 32), {"pooled_output": torch.zeros(1, 32)}]]
    return Subject("sd3", model, lambda m, seed: models.sample(m, positive, negative, steps=steps, cfg=4.5,
                                                               seed=seed, height=64, width=64))


def grid(args, tokenwise: bool):
    ratios = args.ratios if tokenwise else [0.1]  # other levels compute conservative steps fully
    return list(itertools.product(args.intervals, ratios, args.first_full))


def measure(subject, adapter, args):
    """Every grid point on one model: {(interval, ratio, first): (compute fraction, [PSNR], [rel L2])}."""
    from comfyui_duca.methods import DuCaConfig
    from comfyui_duca.glue.patch import apply_method, last_stats

    references = {seed: subject.sample(subject.model, seed) for seed in args.seeds}
    points = set(grid(args, adapter.tokenwise)) | {(i, r, PAPER_FIRST_FULL) for i, r in PAPER.values()}
    results = {}
    for interval, ratio, first in sorted(points):
        model = apply_method(subject.model, DuCaConfig(interval=interval, refresh_ratio=ratio, first_full_steps=first))
        psnr, rel, fractions = [], [], []
        for seed, reference in references.items():
            out = subject.sample(model, seed)
            fractions.append(last_stats(model).compute_fraction)
            psnr.append(metrics.latent_psnr(out, reference))
            rel.append(metrics.rel_l2(out, reference))
        results[interval, ratio, first] = (statistics.mean(fractions), psnr, rel)
    return results


def budgets(results) -> dict:
    """Block compute each preset may spend on one model: the papers' setting's, except that
    quality never spends less, and fast never more, than balanced +- GAP (where conservative
    steps are computed fully, the papers' quality and fast cost less than their balanced)."""
    paper = {preset: results[(i, r, PAPER_FIRST_FULL)][0] for preset, (i, r) in PAPER.items()}
    return {"quality": max(paper["quality"], paper["balanced"] + GAP), "balanced": paper["balanced"],
            "fast": min(paper["fast"], paper["balanced"] - GAP)}


def choose(family, measured, margin):
    """Per preset: the best setting at its compute budget (at most the budget, at least GAP
    below it) on every deciding model (the trained ones where the family has any), unless
    the papers' setting is in that band too and within `margin` dB of it. Families in
    KEEP_PAPERS keep the papers' setting regardless."""
    deciding = {n: r for n, r in measured.items() if n in TRAINED} or measured
    shared = set.intersection(*(set(r) for r in deciding.values()))
    limits = {name: budgets(r) for name, r in deciding.items()}

    def compute(point):
        return statistics.mean(r[point][0] for r in deciding.values())
    chosen = {}
    for preset, (interval, ratio) in PAPER.items():
        paper = (interval, ratio, PAPER_FIRST_FULL)

        def score(point):
            return statistics.mean(min(v, 99.0) for r in deciding.values() for v in r[point][1])
        within = [p for p in shared if all(limits[n][preset] - GAP <= r[p][0] <= limits[n][preset] + BUDGET_SLACK
                                           for n, r in deciding.items())]
        if not within:  # nothing in the band: the dearest settings below the budget
            below = [p for p in shared if all(r[p][0] <= limits[n][preset] + BUDGET_SLACK
                                              for n, r in deciding.items())]
            within = [p for p in below if compute(p) >= max(map(compute, below)) - BUDGET_SLACK]
        if not within:  # every setting costs more (what runs outside the blocks dominates): the cheapest
            within = [p for p in shared if compute(p) <= min(map(compute, shared)) + BUDGET_SLACK]
        best = max(within, key=lambda p: (score(p), -compute(p)))
        paper_ok = paper in within and score(best) - score(paper) < margin
        pick = paper if paper_ok or family in KEEP_PAPERS else best
        how = ("papers: " + KEEP_PAPERS[family] if family in KEEP_PAPERS else
               "papers: no setting wins by the margin" if paper_ok else "measured")
        chosen[preset] = {
            "setting": dict(zip(("interval", "refresh_ratio", "first_full_steps"), pick)),
            "how": how, "best": dict(zip(("interval", "refresh_ratio", "first_full_steps"), best)),
            "psnr": score(pick), "best_psnr": score(best), "paper_psnr": score(paper),
            "compute": compute(pick), "paper_compute": compute(paper), "models": sorted(deciding)}
    return chosen


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", nargs="*", help="testbed names (default: all)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--intervals", type=int, nargs="+", default=[2, 3, 4, 5, 6, 8])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3])
    p.add_argument("--first-full", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--margin", type=float, default=0.5, help="dB a setting must win by to replace the papers'")
    p.add_argument("--out", default=str(BENCH / "out" / "family_defaults"))
    p.add_argument("--rechoose", action="store_true", help="choose again from --out's results.json, no sampling")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.rechoose:
        data = json.loads((out / "results.json").read_text())
    else:
        data = sweep(args)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(data, indent=1))
    measured = {family: {name: {tuple(json.loads(k)): (v["compute"], v["psnr"], v["rel_l2"])
                                for k, v in points.items()} for name, points in by_name.items()}
                for family, by_name in data["points"].items()}
    TRAINED.update(data["trained"])
    chosen = {family: choose(family, results, args.margin) for family, results in sorted(measured.items())}
    report = render(chosen, measured, data["levels"], data["subjects"], data["args"], data["seconds"], args.margin)
    print(report)
    (out / "results.md").write_text(report)


def sweep(args) -> dict:
    """Every grid point on every model, as JSON data."""
    workloads.boot(None, cpu=True)
    torch.set_num_threads(1)  # models this small run fastest on one thread
    from comfyui_duca.adapters import find_adapter

    started = time.perf_counter()
    points, levels, subjects = {}, {}, {}
    for subject in family_subjects(args.families, args.steps):
        t0 = time.perf_counter()
        adapter = find_adapter(subject.model.model.diffusion_model)
        results = measure(subject, adapter, args)
        points.setdefault(adapter.family, {})[subject.name] = {
            json.dumps(list(point)): {"compute": c, "psnr": ps, "rel_l2": rl} for point, (c, ps, rl) in results.items()}
        levels[adapter.family] = adapter.level
        subjects.setdefault(adapter.family, []).append(subject.name)
        print(f"{subject.name}: {adapter.family}, {adapter.level}, {len(results)} settings "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)
    return {"args": {k: v for k, v in vars(args).items() if k not in ("out", "rechoose")}, "points": points,
            "levels": levels, "subjects": subjects, "trained": sorted(TRAINED),
            "seconds": time.perf_counter() - started}


def render(chosen, measured, levels, subjects, args, seconds, margin) -> str:
    def setting(d):
        return f"{d['interval']} / {d['refresh_ratio']} / {d['first_full_steps']}"

    def rel_l2(family, d, c):
        point = (d["interval"], d["refresh_ratio"], d["first_full_steps"])
        return statistics.mean(v for name, r in measured[family].items() if name in c["models"] for v in r[point][2])
    lines = [f"{args['steps']} steps, euler/simple, cfg > 1, seeds {args['seeds']}; swept intervals "
             f"{args['intervals']}, refresh ratios {args['ratios']} (token-wise families; the others compute "
             f"conservative steps fully), first full steps {args['first_full']}; margin {margin} dB "
             f"({seconds:.0f} s of sampling in all). Settings are interval / refresh ratio / first full steps; "
             "compute is block compute, PSNR (capped at 99 dB) and rel. L2 compare final latents with the uncached "
             "output of the same seed, averaged over the deciding models (the trained one where there is one).", "",
             "| family | level | models | preset | chosen | compute | PSNR dB | rel. L2 | papers' compute "
             "| papers' PSNR dB | best measured (PSNR dB) | chosen by |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---|---|"]
    for family, presets in chosen.items():
        names = ", ".join(n + (" (trained)" if n in TRAINED else "") for n in subjects[family])
        for preset, c in presets.items():
            lines.append(f"| {family} | {levels[family]} | {names} | {preset} | {setting(c['setting'])} "
                         f"| {c['compute']:.1%} | {c['psnr']:.1f} | {rel_l2(family, c['setting'], c):.1e} "
                         f"| {c['paper_compute']:.1%} | {c['paper_psnr']:.1f} | {setting(c['best'])} "
                         f"({c['best_psnr']:.1f}) | {c['how']} |")
    lines += ["", "As the registry's `defaults` (adapters/registry.py, measured(quality, balanced, fast)):", "", "```"]
    for family, presets in chosen.items():
        triples = ", ".join(str(tuple(c["setting"][k] for k in ("interval", "refresh_ratio", "first_full_steps")))
                            for c in presets.values())
        lines.append(f'"{family}": measured({triples}),')
    return "\n".join(lines + ["```"]) + "\n"


if __name__ == "__main__":
    main()
