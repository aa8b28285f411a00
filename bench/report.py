"""The harness's outputs: results.md, results.json, speed_vs_fidelity.png, grid.png."""
from __future__ import annotations

import datetime
import json
import math
import platform
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

DEFINITIONS = [
    "speedup: median over repeats of the no-cache time divided by the method's median time; a repeat "
    "runs every case, methods interleaved (order rotated per case) so machine drift hits all alike; "
    "speedup (best): the same with each case's fastest run (interference only ever adds time)",
    "machine: GFLOP/s of a fixed matmul taken right before each timed run (median over the method's runs)",
    "block compute: DuCa-based rows: block FLOPs done / all-full (RunStats); no cache, EasyCache, "
    "LazyCache: model calls computed / total; mean over cases",
    "PSNR px / SSIM px: decoded pictures vs the no-cache picture of the same seed and conditioning, pixels "
    "in [-1, 1] (data range 2); SSIM with an 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, per channel",
    "PSNR latent: final latents in model space, range = max - min of the no-cache latent; rel. L2: "
    "||latent - reference|| / ||reference||",
    "fidelity columns are medians over the cases; inf = identical to no cache",
    "cache: peak bytes in the DuCa cache (RunStats.peak_cache_bytes, max over cases)",
    "timeline: case 1; DuCa letters F full, C conservative, A aggressive; EasyCache/LazyCache F computed, "
    "s skipped (reused)",
]
GROUP_COLORS = {"reference": (90, 90, 90), "every-k": (120, 120, 200), "EasyCache": (220, 130, 30),
                "LazyCache": (170, 80, 160), "DuCa": (30, 150, 70)}


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def comfyui_version() -> str:
    try:
        import comfyui_version
        return comfyui_version.__version__
    except ImportError:
        return "unknown"


def setup_info(args, work, device, memory_method, target, searches, speeds) -> dict:
    all_speeds = [s for v in speeds.values() for s in v]
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": f"{device_name(device)} ({device.type}, {torch.get_num_threads()} torch threads)",
        "torch": torch.__version__, "python": platform.python_version(), "comfyui": comfyui_version(),
        "model": work.name, "description": work.description, "notes": work.notes,
        "steps": work.steps, "sampler": work.sampler, "scheduler": work.scheduler, "cfg": work.cfg,
        "width": work.width, "height": work.height, "repeats": args.repeats,
        "cases": [{"label": c.label, "seed": c.seed} for c in work.cases],
        "balanced_compute_target": target,
        "matched_thresholds": searches,
        "matching": "geometric bisection on reuse_threshold (case 1) for the smallest computed-call "
                    "fraction still >= DuCa balanced's block compute",
        "memory_method": memory_method,
        "machine_gflops_range": [min(all_speeds), max(all_speeds)] if all_speeds else None,
        "definitions": DEFINITIONS,
    }


def write_all(out: Path, setup: dict, rows: list, pictures: dict, cases: list) -> None:
    out.mkdir(parents=True, exist_ok=True)
    checks = targets(rows, setup["steps"])
    (out / "results.md").write_text(markdown(setup, rows, checks) + "\n")
    data = {"setup": setup, "targets": checks, "results": rows}
    (out / "results.json").write_text(json.dumps(finite(data), indent=2, allow_nan=False) + "\n")
    plot(rows, out / "speed_vs_fidelity.png", setup)
    if any(p is not None for v in pictures.values() for p in v):
        grid(rows, pictures, cases, out / "grid.png")


def finite(value):
    """JSON has no infinity: non-finite floats become null (identical to no cache, for PSNR)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


# --- Markdown --------------------------------------------------------------------------

def fmt(value, spec, unit=""):
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:{spec}}{unit}"


def mib(value):
    return "n/a" if value is None else f"{value / 2**20:.1f}"


def markdown(setup: dict, rows: list, checks: list) -> str:
    cases = ", ".join(f"{c['label']}/seed {c['seed']}" for c in setup["cases"])
    low_high = setup["machine_gflops_range"] or [0, 0]
    lines = [
        f"# DuCa evaluation: {setup['model']} ({setup['date']})", "",
        f"- device: {setup['device']}; torch {setup['torch']}, Python {setup['python']}, "
        f"ComfyUI {setup['comfyui']}",
        f"- model: {setup['description']}" + "".join(f"; {n}" for n in setup["notes"]),
        f"- {setup['steps']} steps, {setup['sampler']}/{setup['scheduler']}, cfg {setup['cfg']}, "
        f"{setup['width']}x{setup['height']} (latent pixels), {setup['repeats']} timed repeats",
        f"- cases ({len(setup['cases'])}): {cases}",
        f"- matched thresholds: {setup['matching']}" + (
            f" ({setup['balanced_compute_target']:.1%})" if setup["balanced_compute_target"] is not None
            else " (skipped: DuCa balanced is not supported on this model)"),
        f"- peak memory: {setup['memory_method']}",
        f"- machine speed during timed runs: {low_high[0]:.0f} to {low_high[1]:.0f} GFLOP/s", "",
        "| method | s/sample | speedup | speedup (best) | machine GFLOP/s | block compute | PSNR px dB "
        "| SSIM px | PSNR latent dB | rel. L2 | peak mem MiB | cache MiB | timeline |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if not r["supported"]:
            lines.append(f"| {r['method']} | {r['note']} |" + " |" * 11)
            continue
        lines.append(
            f"| {r['method']} | {r['s_per_sample']:.2f} | {r['speedup']:.2f}x | {r['speedup_best']:.2f}x "
            f"| {r['machine_gflops']:.0f} "
            f"| {r['compute_fraction']:.1%} | {fmt(r['psnr_picture'], '.2f')} | {fmt(r['ssim_picture'], '.4f')} "
            f"| {fmt(r['psnr_latent'], '.2f')} | {r['rel_l2']:.4f} | {mib(r['peak_memory_bytes'])} "
            f"| {mib(r['cache_bytes'])} | {r['timeline']} |")
    if checks:
        lines += ["", "## Targets", ""]
        lines += [f"- **{c['target']}**: {'holds' if c['holds'] else 'does not hold'}. {c['detail']}" for c in checks]
    lines += ["", "## Definitions", ""] + [f"- {d}" for d in setup["definitions"]]
    return "\n".join(lines)


def targets(rows: list, steps: int) -> list:
    """(a) balanced beats, on picture PSNR, every baseline at about the same block compute: from half
    a step's share below balanced's to one and a half above (a baseline with fewer computed steps
    would be at lower compute; one with more is a different operating point);
    (b) fast computes at most a third of the blocks with >= 30 dB latent PSNR;
    (c) balanced: >= 2.5x wall clock, and at least 0.9 of the speedup its block compute allows
    (the GPU target; the overhead of caching shows in the second number)."""
    by_name = {r["method"]: r for r in rows if r["supported"]}
    checks = []
    balanced, fast = by_name.get("DuCa balanced"), by_name.get("DuCa fast")
    key = "psnr_picture" if balanced and balanced.get("psnr_picture") is not None else "psnr_latent"
    if balanced:
        low, high = balanced["compute_fraction"] - 0.5 / steps, balanced["compute_fraction"] + 1.5 / steps
        baselines = [r for r in by_name.values() if r["group"] in ("every-k", "EasyCache", "LazyCache")]
        rivals = [r for r in baselines if low <= r["compute_fraction"] <= high]
        others = ", ".join(f"{r['method']} {r['compute_fraction']:.1%}" for r in baselines if r not in rivals)
        if rivals:
            best = max(rivals, key=lambda r: r[key])
            checks.append({"target": "(a) balanced beats the baselines at the same block compute",
                           "holds": balanced[key] > best[key], "detail":
                           f"balanced {balanced[key]:.2f} dB ({key}) at {balanced['compute_fraction']:.1%}; "
                           f"baselines at {low:.1%} to {high:.1%} block compute: " + ", ".join(
                               f"{r['method']} {r[key]:.2f} dB at {r['compute_fraction']:.1%}" for r in rivals) +
                           f". Outside that range: {others or 'none'}"})
    if fast:
        reduction = 1 / fast["compute_fraction"]
        checks.append({"target": "(b) fast: >= 3x block-compute reduction with >= 30 dB latent PSNR",
                       "holds": reduction >= 3 and fast["psnr_latent"] >= 30, "detail":
                       f"fast: {reduction:.2f}x reduction ({fast['compute_fraction']:.1%} block compute), "
                       f"latent PSNR {fast['psnr_latent']:.2f} dB"})
    if balanced:
        ideal = 1 / balanced["compute_fraction"]
        checks.append({"target": "(c) balanced: >= 2.5x wall clock, >= 0.9 x (1 / block compute)",
                       "holds": balanced["speedup"] >= 2.5 and balanced["speedup"] >= 0.9 * ideal, "detail":
                       f"balanced {balanced['speedup']:.2f}x wall clock; 1 / block compute = {ideal:.2f}x, "
                       f"achieved {balanced['speedup'] / ideal:.2f} of it"})
    return checks


# --- pictures ---------------------------------------------------------------------------

def to_image(picture: torch.Tensor) -> Image.Image:
    """[1, 3, H, W] or [3, H, W] in [-1, 1] -> PIL RGB."""
    p = picture[0] if picture.ndim == 4 else picture
    array = ((p.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array, "RGB")


def fit(image: Image.Image, side: int = 128, largest: int = 256) -> Image.Image:
    """Small pictures are upscaled by an integer factor with nearest; large ones shrunk."""
    longest = max(image.size)
    if longest > largest:
        scale = largest / longest
        return image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    factor = max(1, side // longest)
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def grid(rows: list, pictures: dict, cases: list, path: Path) -> None:
    """One row per method (no cache first), one column per case."""
    shown = [r for r in rows if r["supported"] and pictures.get(r["method"])]
    tiles = {r["method"]: [fit(to_image(p)) for p in pictures[r["method"]]] for r in shown}
    tile_w, tile_h = tiles["no cache"][0].size
    label_w, head_h, pad = 190, 22, 4
    canvas = Image.new("RGB", (label_w + len(cases) * (tile_w + pad), head_h + len(shown) * (tile_h + pad)), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for j, case in enumerate(cases):
        draw.text((label_w + j * (tile_w + pad), 4), f"{case.label[:16]}, seed {case.seed}", fill="black", font=font)
    for i, r in enumerate(shown):
        y = head_h + i * (tile_h + pad)
        draw.text((4, y + 4), r["method"], fill="black", font=font)
        if r["method"] != "no cache":
            draw.text((4, y + 20), f"{r['speedup']:.2f}x, PSNR {fmt(r['psnr_picture'], '.1f')} dB",
                      fill=(60, 60, 60), font=font)
        for j, tile in enumerate(tiles[r["method"]]):
            canvas.paste(tile, (label_w + j * (tile_w + pad), y))
    canvas.save(path)


def nice_ticks(low: float, high: float, count: int = 6) -> list:
    raw = (high - low) / count
    step = min((m * 10 ** math.floor(math.log10(raw)) for m in (1, 2, 5, 10)
                if m * 10 ** math.floor(math.log10(raw)) >= raw))
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def axes(draw, font, frame: tuple, limits: tuple, x_unit: str = ""):
    """The plot's frame and grid with tick labels; returns (x, y) -> pixel position.
    `frame`: (width, height, left, right, top, bottom) in pixels; `limits`: (x0, x1, y0, y1)."""
    width, height, left, right, top, bottom = frame
    x0, x1, y0, y1 = limits

    def at(x, y):
        return (left + (x - x0) / (x1 - x0) * (width - left - right),
                height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom))
    for x in nice_ticks(x0, x1):
        px, _ = at(x, y0)
        draw.line([px, height - bottom, px, top], fill=(230, 230, 230))
        draw.text((px - 10, height - bottom + 6), f"{x:g}{x_unit}", fill="black", font=font)
    for y in nice_ticks(y0, y1):
        _, py = at(x0, y)
        draw.line([left, py, width - right, py], fill=(230, 230, 230))
        draw.text((left - 40, py - 6), f"{y:g}", fill="black", font=font)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    return at


def plot(rows: list, path: Path, setup: dict) -> None:
    """Scatter of speedup (x) against picture PSNR (y), one labelled point per method."""
    key = "psnr_picture" if any(r.get("psnr_picture") is not None for r in rows) else "psnr_latent"
    points = [(r["speedup"], r[key], r["method"], r["group"]) for r in rows
              if r["supported"] and r.get(key) is not None and math.isfinite(r[key])]
    width, height, left, right, top, bottom = 760, 520, 70, 30, 40, 60
    canvas = Image.new("RGB", (width, height), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    title = f"{setup['model']}: speed vs fidelity to no cache ({'pictures' if key == 'psnr_picture' else 'latents'})"
    draw.text((left, 6), title, fill="black", font=font)
    if not points:
        draw.text((left, height // 2), "no cached method differs from no cache", fill="black", font=font)
        canvas.save(path)
        return
    xs, ys = [p[0] for p in points] + [1.0], [p[1] for p in points]
    x0, x1 = min(xs) - 0.1, max(xs) + 0.1 + 0.25 * (max(xs) - min(xs) + 0.4)  # room for labels
    y0, y1 = min(ys) - 2, max(ys) + 2
    at = axes(draw, font, (width, height, left, right, top, bottom), (x0, x1, y0, y1), x_unit="x")
    draw.text(((width - left) // 2, height - 28), "wall-clock speedup over no cache", fill="black", font=font)
    draw.text((8, top - 14), f"PSNR to no cache, dB ({'pictures' if key == 'psnr_picture' else 'latents'})",
              fill="black", font=font)
    placed = [(px - 6, py - 6, px + 6, py + 6) for px, py in (at(x, y) for x, y, _, _ in points)]  # the dots
    for x, y, name, group in sorted(points, key=lambda p: -p[1]):
        px, py = at(x, y)
        color = GROUP_COLORS.get(group, (0, 0, 0))
        draw.ellipse([px - 5, py - 5, px + 5, py + 5], fill=color)
        placed.append(place_label(draw, font, px, py, name, placed, width - 4))
        draw.text(placed[-1][:2], name, fill=color, font=font)
    canvas.save(path)


def place_label(draw, font, px, py, text, placed, right_edge):
    """A spot for a point's label that overlaps no earlier label: right, below, above, left."""
    box = draw.textbbox((0, 0), text, font=font)
    w, h = box[2] - box[0], box[3] - box[1]
    spots = [(px + 8, py - h / 2 - 2), (px + 8, py + 4), (px + 8, py - h - 8), (px - 8 - w, py - h / 2 - 2),
             (px + 8, py + h + 8), (px + 8, py - 2 * h - 12)]
    for x, y in spots:
        if x + w <= right_edge and all(x + w < a or x > c or y + h < b or y > d for a, b, c, d in placed):
            return (x, y, x + w, y + h)
    x, y = spots[0]
    return (x, y, x + w, y + h)
