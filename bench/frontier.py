"""PSNR against block compute, side by side in one run: the flagship's presets against what a user
can already do at the same cost. Every entry samples the same cases (classes x seeds) with the
same sampler and steps as the uncached reference; fidelity is the median picture PSNR to it,
compute the fraction of the uncached run's model calls (a forward hook on the first block of the
host's diffusion model; the pack's methods report their own FLOP-weighted fraction), speed the median
ratio of wall-clock times on this machine.

Compared: the budget presets (quality / balanced / fast / turbo) and DuCa's cycles, fewer steps
(euler, dpmpp_2m, uni_pc at round(steps x compute) steps), every-k computing with the denoised
output forecast (order 1) or reused (order 0) or the residual (denoised - input) reused, and
ComfyUI's own EasyCache and LazyCache over a range of thresholds; with --peer-pack, the nodes of
community packs the user has installed (ComfyUI-TaylorSeer's TaylorSeer and TaylorSeerLite on Flux).

    python3 tools/host.py python bench/frontier.py --model flux_trained --out bench/frontier_flux_trained
    python3 tools/host.py python bench/frontier.py --peer-pack ~/ComfyUI/custom_nodes/ComfyUI-TaylorSeer
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH.parent) not in sys.path:
    sys.path.insert(0, str(BENCH.parent))

from bench import metrics, workloads  # noqa: E402

BUDGET_PRESETS = ("quality", "balanced", "fast", "turbo")
COMPUTE_LEVELS = (0.2, 0.27, 0.29, 0.35, 0.45)   # where the fewer-steps baselines are sampled
SAMPLERS = ("euler", "dpmpp_2m", "uni_pc")
THRESHOLDS = (0.05, 0.1, 0.2, 0.4, 0.8)           # EasyCache / LazyCache reuse_threshold
PACK = "pack"
# Community packs' nodes, by node id: the settings tried (their documented inputs; Flux models).
TAYLORSEER = [dict(model_type="flux", fresh_threshold=t, max_order=2, first_enhance=3, last_enhance=50)
              for t in (3, 4, 5, 6, 7)]
PEER_NODES = {"TaylorSeer": TAYLORSEER, "TaylorSeerLite": TAYLORSEER}


def first_block(diffusion_model):
    """A module every computed model call runs and a skipped one does not: the first block's
    attention projection where it has one (a method may enter the diffusion model's forward, or
    the block's, and forecast inside, as ComfyUI's EasyCache and TaylorSeer do), else the block."""
    for name in ("double_blocks", "double_layers", "transformer_blocks", "blocks", "layers"):
        if len(getattr(diffusion_model, name, ())):
            block = getattr(diffusion_model, name)[0]
            return getattr(getattr(block, "img_attn", None), "qkv", block)
    if hasattr(diffusion_model, "input_blocks"):  # U-Nets: the first convolution
        return diffusion_model.input_blocks[0][0]
    return diffusion_model


class CallCounter:
    """Computed model calls (forward calls of the model's first block) while installed."""

    def __init__(self, model):
        self.calls = 0
        self.handle = first_block(model.model.diffusion_model).register_forward_hook(self._count)

    def _count(self, *_):
        self.calls += 1

    def remove(self):
        self.handle.remove()


def timed(work, model, case):
    started = time.perf_counter()
    latent = work.sample(model, case)
    return latent, time.perf_counter() - started


def measure(work, model, reference, name, group, stats_of=None, adjacent=0) -> dict:
    """One entry over every case: median PSNR, compute, median speedup over no cache. `adjacent`:
    the uncached time is measured again right before each case, and that pair timed `adjacent`
    times (a shared machine's speed drifts over a long bench; the speedup targets are checked on
    these)."""
    counter = CallCounter(work.model)
    px, times, fractions = [], [], []
    try:
        for case, (ref_picture, ref_calls, ref_seconds) in zip(work.cases, reference):
            for _ in range(adjacent - 1):  # the pairs after the first: timing only
                ref_again = timed(work, work.model, case)[1]
                times.append(ref_again / timed(work, model, case)[1])
            if adjacent:
                ref_seconds = timed(work, work.model, case)[1]
            before = counter.calls
            latent, seconds = timed(work, model, case)
            times.append(ref_seconds / seconds)
            stats = stats_of(model) if stats_of else None
            fractions.append(stats.compute_fraction if stats else (counter.calls - before) / ref_calls)
            px.append(metrics.psnr(work.decode(latent), ref_picture, metrics.PICTURE_RANGE))
    finally:
        counter.remove()
    row = {"method": name, "group": group, "compute": statistics.mean(fractions),
           "psnr": statistics.median(px), "speedup": statistics.median(times)}
    print(f"| {name} | {group} | {row['compute']:.3f} | {row['psnr']:.2f} | {row['speedup']:.2f}x |", flush=True)
    return row


def pack_entries(model):
    from testbed import host
    node = host.node("DuCaAccelerateV2")
    yield from ((f"accelerate {p}", node.execute(model, p).result[0]) for p in BUDGET_PRESETS)
    yield from ((f"accelerate duca {p}", node.execute(model, f"duca {p}").result[0])
                for p in ("quality", "balanced", "fast"))


def host_cache_entries(model):
    from comfy_extras.nodes_easycache import EasyCacheNode, LazyCacheNode
    for node in (EasyCacheNode, LazyCacheNode):
        for threshold in THRESHOLDS:
            name = node.define_schema().node_id
            yield name, f"{name} {threshold}", node.execute(model, threshold, 0.15, 0.95, False).result[0]


def load_pack(path: Path):
    """A custom-node pack the user installed, imported as ComfyUI imports it (a package)."""
    name = "peer_" + "".join(c if c.isalnum() else "_" for c in path.name)
    spec = importlib.util.spec_from_file_location(name, path / "__init__.py", submodule_search_locations=[str(path)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def peer_entries(model, paths):
    if type(model.model.diffusion_model).__name__ != "Flux":
        return
    for path in paths:
        mappings = getattr(load_pack(Path(path).expanduser()), "NODE_CLASS_MAPPINGS", {})
        for node_id, settings in PEER_NODES.items():
            if node_id not in mappings:
                continue
            node = mappings[node_id]()
            for setting in settings:
                label = f"{node_id} fresh {setting['fresh_threshold']}"
                yield node_id, label, getattr(node, node.FUNCTION)(model=model, **setting)[0]


def run(work, samplers=SAMPLERS, peers=(), timing_pairs=1) -> list:
    from bench.baselines import denoised_forecast, fewer_steps
    from comfyui_duca.glue.patch import last_stats
    reference = []
    counter = CallCounter(work.model)
    try:
        for case in work.cases:
            before, started = counter.calls, time.perf_counter()
            latent = work.sample(work.model, case)
            reference.append((work.decode(latent), counter.calls - before, time.perf_counter() - started))
    finally:
        counter.remove()
    rows = []
    for name, model in pack_entries(work.model):
        rows.append(measure(work, model, reference, name, PACK, last_stats, adjacent=timing_pairs))
    for n in sorted({round(work.steps * c) for c in COMPUTE_LEVELS}):
        for sampler in samplers:
            fewer = fewer_steps(work, n, sampler)
            row = measure(fewer, work.model, reference, f"fewer steps {n} {sampler}", "fewer steps")
            row["compute"] = n / work.steps  # calls of a shorter run, against the reference's
            rows.append(row)
    for every in (2, 3, 4):
        for label, order, residual in (("denoised forecast", 1, False), ("denoised reuse", 0, False),
                                       ("residual reuse", 0, True)):
            model, _ = denoised_forecast(work.model, every, order, residual)
            rows.append(measure(work, model, reference, f"{label} every {every}", "every-k"))
    for group, name, model in [*host_cache_entries(work.model), *peer_entries(work.model, peers)]:
        try:
            rows.append(measure(work, model, reference, name, group))
        except Exception as error:  # another pack failing on this host is a result, not a crash
            print(f"| {name} | {group} | fails on this host: {type(error).__name__}: {error} |", flush=True)
            rows.append({"method": name, "group": group, "compute": math.nan, "psnr": math.nan,
                         "speedup": math.nan, "error": f"{type(error).__name__}: {error}"})
    return rows


def checks(rows: list, steps: int, sampler: str) -> list:
    """The issue's targets, each (what, holds, figures)."""
    found = []
    others = [r for r in rows if r["group"] != PACK and math.isfinite(r["psnr"])]
    for preset in BUDGET_PRESETS:
        mine = next(r for r in rows if r["method"] == f"accelerate {preset}")
        rivals = [r for r in others if r["compute"] <= mine["compute"] + 1e-9]
        best = max(rivals, key=lambda r: r["psnr"]) if rivals else None
        margin = mine["psnr"] - best["psnr"] if best else math.inf
        found.append((f"{preset} at least 1.5 dB above the best rival at <= its compute", margin >= 1.5,
                      f"{mine['psnr']:.2f} dB at {mine['compute']:.3f}; best rival "
                      f"{best['method'] if best else '-'} {best['psnr'] if best else math.nan:.2f} dB: "
                      f"{margin:+.2f} dB"))
        bound = 0.9 / mine["compute"]
        found.append((f"{preset} wall-clock speedup at least 0.9 x 1/compute", mine["speedup"] >= bound,
                      f"{mine['speedup']:.2f}x against {bound:.2f}x"))
    turbo = next(r for r in rows if r["method"] == "accelerate turbo")
    limit = round(0.29 * steps)
    fewer = [r for r in rows if r["group"] == "fewer steps" and r["method"].split()[2] == str(limit)]
    # the "fewer steps" is the same sampler at fewer steps; any sampler at that count is stricter
    same = [r for r in fewer if r["method"].split()[3] == sampler]
    for what, candidates in ((f"the same sampler ({sampler})", same), ("any sampler", fewer)):
        if not candidates:
            continue
        best = max(candidates, key=lambda r: r["psnr"])
        found.append((f"turbo at <= 0.22 compute at least as close as {what} at 0.29",
                      turbo["compute"] <= 0.22 + 1e-9 and turbo["psnr"] >= best["psnr"],
                      f"turbo {turbo['psnr']:.2f} dB at {turbo['compute']:.3f}; {best['method']} {best['psnr']:.2f} dB"))
    return found


def markdown(work, rows: list, found: list) -> str:
    lines = [f"{work.description}; {work.steps} steps {work.sampler} {work.scheduler}, cfg {work.cfg}, "
             f"{len(work.cases)} cases. {' '.join(work.notes)}", "",
             "| method | group | compute | PSNR (dB) | speedup |", "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["compute"], -r["psnr"]) if "error" not in r else (math.inf, 0)):
        if "error" in r:
            lines.append(f"| {r['method']} | {r['group']} | fails on this host: {r['error']} | | |")
        else:
            lines.append(f"| {r['method']} | {r['group']} | {r['compute']:.3f} | {r['psnr']:.2f} | {r['speedup']:.2f}x |")
    lines += ["", "| target | holds | figures |", "|---|---|---|"]
    lines += [f"| {what} | {'yes' if holds else 'NO'} | {figures} |" for what, holds, figures in found]
    return "\n".join(lines) + "\n"


GROUP_COLORS = {PACK: (30, 150, 70), "fewer steps": (200, 60, 50), "every-k": (120, 120, 200),
                "EasyCache": (220, 130, 30), "LazyCache": (170, 80, 160), "TaylorSeer": (20, 160, 190),
                "TaylorSeerLite": (90, 90, 90)}


def plot(rows: list, path: Path, title: str) -> None:
    """PSNR (y) against compute (x), one dot per entry, the pack's labelled; a legend per group."""
    from PIL import Image, ImageDraw, ImageFont
    from bench.report import axes, place_label
    width, height, left, right, top, bottom = 820, 540, 70, 30, 40, 60
    canvas = Image.new("RGB", (width, height), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    draw.text((left, 6), title, fill="black", font=font)
    points = [r for r in rows if math.isfinite(r["psnr"]) and math.isfinite(r["compute"])]
    x0, x1 = 0.0, max(r["compute"] for r in points) * 1.1
    y0, y1 = min(r["psnr"] for r in points) - 1, max(r["psnr"] for r in points) + 1

    at = axes(draw, font, (width, height, left, right, top, bottom), (x0, x1, y0, y1))
    draw.text(((width - left) // 2 - 60, height - 28), "block compute (fraction of no cache)", fill="black", font=font)
    draw.text((8, top - 14), "PSNR to no cache, dB (pictures)", fill="black", font=font)
    placed = []
    for r in sorted(points, key=lambda r: r["group"] == PACK):
        px, py = at(r["compute"], r["psnr"])
        color = GROUP_COLORS.get(r["group"], (0, 0, 0))
        draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=color)
        placed.append((px - 5, py - 5, px + 5, py + 5))
        if r["group"] == PACK:
            placed.append(place_label(draw, font, px, py, r["method"].removeprefix("accelerate "), placed, width - 4))
            draw.text(placed[-1][:2], r["method"].removeprefix("accelerate "), fill=color, font=font)
    for i, (group, color) in enumerate(GROUP_COLORS.items()):
        draw.ellipse([left + 10, top + 10 + 14 * i, left + 18, top + 18 + 14 * i], fill=color)
        draw.text((left + 24, top + 8 + 14 * i), group, fill=color, font=font)
    canvas.save(path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("flux_trained", "sd_trained", "flux_bench"), default="flux_trained")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), help="of the fewer-steps baselines")
    p.add_argument("--peer-pack", action="append", default=[], metavar="PATH",
                   help="an installed community pack to compare (its folder under custom_nodes)")
    p.add_argument("--timing-pairs", type=int, default=1, metavar="N",
                   help="uncached and accelerated runs timed N times per case for the presets' speedup "
                        "(more for a bench of few cases)")
    p.add_argument("--out", help="path prefix: writes PREFIX.json, PREFIX.md and PREFIX.png")
    args = p.parse_args(argv)
    workloads.boot(None, cpu=True)
    work = workloads.testbed_workload(args.model, args.steps, args.classes, args.seeds)
    rows = run(work, args.samplers, args.peer_pack, max(args.timing_pairs, 1))
    found = checks(rows, work.steps, work.sampler)
    text = markdown(work, rows, found)
    print(text)
    if args.out:
        out = Path(args.out)
        out.with_suffix(".json").write_text(json.dumps({"model": args.model, "rows": rows}, indent=1) + "\n")
        out.with_suffix(".md").write_text(text)
        plot(rows, out.with_suffix(".png"), f"{args.model}: PSNR against block compute, {work.steps} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
