"""One check of the pack on a CUDA machine, in a few minutes: each budget preset's wall-clock speedup
over no cache and its cache memory on ComfyUI's Flux at Flux-dev size (1024x1024) and on a Wan 2.1
14B-sized block stack, and the Feature Slicer's peak memory at Wan 1.3B and 14B widths, 81 frames.
Random weights in bf16: they size the work, not the pictures.

    python3 tools/host.py python bench/gpu_check.py --out gpu_check.json     # CUDA, under 8 minutes
    python3 tools/host.py python bench/gpu_check.py --tiny                   # CPU, tiny sizes, seconds

A preset's speedup is the time of an uncached run measured right before it over its own time, after
one untimed uncached run and one untimed turbo run (first-call costs). Compute fraction and cache
bytes are the run's statistics (RunStats.compute_fraction, RunStats.peak_cache_bytes).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import sys
import time
from pathlib import Path

import torch

if str(Path(__file__).resolve().parent.parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import memory, workloads  # noqa: E402
from bench.frontier import BUDGET_PRESETS, timed  # noqa: E402

TARGET = 0.9  # a preset should be at least 0.9 x 1/compute fraction faster than no cache
# The slicer's model calls: Wan widths at 81 frames 832x480 (32,760 tokens); the peak is per block.
SLICER = dict(sizes=("1.3b", "14b"), frames=81, height=480, width=832, blocks=2)
TINY_SLICER = dict(sizes=("tiny",), frames=13, height=256, width=256, blocks=2)  # 1,024 tokens


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny models on the CPU, few steps and frames (seconds)")
    p.add_argument("--steps", type=int, help="sampling steps (default 28; 16 with --tiny)")
    # fewer blocks make the sampler's fixed cost per step a larger share: the speedup reads low, not high
    p.add_argument("--wan-blocks", type=int, help="blocks of the Wan 14B stack (default all 40; the output "
                                                  "says how many ran)")
    p.add_argument("--out", help="write the results as JSON to this path")
    p.add_argument("--comfyui", help="a ComfyUI folder to use instead of the embedded host")
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 16 if args.tiny else 28
    return args


def release():
    """Free the last model before the next is built: ComfyUI holds loaded models by weak reference,
    so once ours are gone a collection frees the weights."""
    import comfy.model_management
    gc.collect()
    comfy.model_management.cleanup_models()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def preset_rows(work) -> list:
    from comfyui_duca.glue.patch import last_stats
    from testbed import host
    node = host.node("DuCaAccelerateV2")
    accelerated = {p: node.execute(work.model, p).result[0] for p in BUDGET_PRESETS}
    case = work.cases[0]
    timed(work, work.model, case)          # warm-up: kernels, ComfyUI's model loading
    timed(work, accelerated["turbo"], case)  # ... and the pack's code paths
    rows = []
    for preset, model in accelerated.items():
        reference = timed(work, work.model, case)[1]  # right before: drift hits both alike
        seconds = timed(work, model, case)[1]
        stats = last_stats(model)
        speedup = reference / seconds
        target = TARGET / stats.compute_fraction
        rows.append({"model": work.name, "preset": preset, "compute_fraction": stats.compute_fraction,
                     "speedup": speedup, "target": target, "met": speedup >= target,
                     "cache_bytes": stats.peak_cache_bytes, "seconds_no_cache": reference,
                     "seconds": seconds, "timeline": stats.timeline})
        print(f"{work.name} {preset}: {stats.summary()}, {reference:.2f} s -> {seconds:.2f} s", flush=True)
    return rows


def slicer_row(size: str, frames: int, height: int, width: int, blocks: int, device: str) -> dict:
    """Peak activation memory of one Wan model call without and with the Feature Slicer (auto)."""
    from comfyui_duca.cache_core.chunking import parse_chunks
    from comfyui_duca.glue.memory import apply_feature_slicer, last_slice_stats
    args = memory.parse_args(["--size", size, "--frames", str(frames), "--height", str(height),
                              "--width", str(width), "--blocks", str(blocks), "--device", device])
    model, inputs, tokens = memory.build(args)
    sliced = apply_feature_slicer(model, parse_chunks(args.chunks))
    for variant in (model, sliced):
        memory.call(variant, inputs)  # warm-up: one-time workspaces are not the call's activations
    plain, low = (memory.peak_bytes(variant, inputs, device) for variant in (model, sliced))
    return {"size": size, **memory.SIZES[size], "frames": frames, "height": height, "width": width,
            "tokens": tokens, "blocks": blocks, "chunks": args.chunks, "unsliced_peak_bytes": plain,
            "sliced_peak_bytes": low, "sliced": last_slice_stats(sliced).summary()}


def markdown(report: dict) -> str:
    mib = 2 ** 20
    lines = [f"# DuCa GPU check: {report['device']}, {report['date']}, torch {report['torch']}, "
             f"{report['seconds']:.0f} s in all", ""]
    lines += [f"- {name}: {text}" for name, text in report["workloads"].items()]
    lines += ["", f"| model | preset | compute fraction | speedup | {TARGET}/compute | met | cache MiB |",
              "|---|---|---:|---:|---:|---|---:|"]
    lines += [f"| {r['model']} | {r['preset']} | {r['compute_fraction']:.3f} | {r['speedup']:.2f}x | "
              f"{r['target']:.2f}x | {'yes' if r['met'] else 'no'} | {r['cache_bytes'] / mib:.2f} |"
              for r in report["presets"]]
    lines += ["", "Feature Slicer, one model call (peak activation memory above its inputs, chunks auto, "
              "bf16 on CUDA, float32 on the CPU):", "",
              "| Wan width | frames | tokens | blocks | unsliced peak MiB | sliced peak MiB | lower |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['size']} (dim {r['dim']}) | {r['frames']} | {r['tokens']} | {r['blocks']} | "
              f"{r['unsliced_peak_bytes'] / mib:.0f} | {r['sliced_peak_bytes'] / mib:.0f} | "
              f"{r['unsliced_peak_bytes'] / max(r['sliced_peak_bytes'], 1):.2f}x |" for r in report["slicer"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.tiny:  # tiny tensors gain nothing from threads, and on a busy CPU a waiting thread stalls each op
        torch.set_num_threads(1)
    try:
        return check(args)
    finally:
        torch.set_num_threads(threads)


def check(args) -> int:
    started = time.perf_counter()
    workloads.boot(args.comfyui, cpu=args.tiny)
    import comfy.model_management
    from bench.report import device_name
    device = comfy.model_management.get_torch_device()
    if device.type != "cuda" and not args.tiny:
        raise SystemExit(f"this check needs a CUDA GPU (found {device}); --tiny runs it on the CPU")
    report = {"device": device_name(device), "date": datetime.date.today().isoformat(),
              "torch": torch.__version__, "tiny": args.tiny, "steps": args.steps, "workloads": {},
              "presets": [], "slicer": []}
    for name in ("flux_dev", "wan_14b"):
        work = workloads.gpu_workload(name, args.steps, 1, [0], blocks=args.wan_blocks, tiny=args.tiny)
        report["workloads"][name] = f"{work.description}; {work.steps} steps {work.sampler} {work.scheduler}"
        report["presets"] += preset_rows(work)
        del work
        release()
    shape = TINY_SLICER if args.tiny else SLICER
    for size in shape["sizes"]:
        report["slicer"].append(slicer_row(size, shape["frames"], shape["height"], shape["width"],
                                           shape["blocks"], device.type))
        release()
    report["seconds"] = time.perf_counter() - started
    print(markdown(report), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
