"""Peak activation memory and time of one model call, with and without the Feature Slicer.

A Wan 2.1 block stack of ComfyUI's class (WanModel, random weights) at a video size, called
through the model's own apply_model (so the node's wrappers run as in sampling):

    python3 tools/host.py python bench/memory.py                 # CPU default (scaled, see below)
    python3 tools/host.py python bench/memory.py --frames 81     # the issue's size, if you have the time

Peak activation memory: the most bytes allocated during the call above what was allocated
before it (weights and inputs excluded). CUDA: torch.cuda.max_memory_allocated. CPU:
live tensor storage counted by a dispatch mode (bench/memory_meter.py), in a pass of
its own (timing passes run without it). Times: median over repeats, variants interleaved.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Wan 2.1 widths (ComfyUI's WanModel configs): 1.3B and 14B; and a tiny one for smoke tests, its FFN
# 8x wide so that slicing still lowers the peak
SIZES = {"1.3b": dict(dim=1536, ffn_dim=8960, num_heads=12), "14b": dict(dim=5120, ffn_dim=13824, num_heads=40),
         "tiny": dict(dim=128, ffn_dim=1024, num_heads=2)}
TEXT_DIM, TEXT_TOKENS = 4096, 512  # umT5 features, padded prompt length


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="1.3b", help="Wan 2.1 width (default 1.3b)")
    p.add_argument("--blocks", type=int, default=2, help="blocks in the stack (default 2; the peak is per block)")
    p.add_argument("--frames", type=int, default=9, help="video frames, 4k+1 (default 9: 3 latent frames)")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--chunks", default="auto", help="the node's chunks input (default auto)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def build(args):
    from testbed import host, models
    host.boot()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    size = dict(SIZES[args.size], num_layers=args.blocks, text_dim=TEXT_DIM)
    model = models.wan(seed=0, dtype=dtype, device=torch.device(args.device), **size)
    model.model.to(args.device)
    latent_frames = (args.frames - 1) // 4 + 1
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, latent_frames, args.height // 8, args.width // 8, generator=gen).to(args.device, dtype)
    context = (torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=gen) * 0.1).to(args.device, dtype)
    sigma = torch.full((1,), 0.7, device=args.device)
    tokens = latent_frames * (args.height // 16) * (args.width // 16)
    return model, (x, sigma, context), tokens


def call(model, inputs):
    x, sigma, context = inputs
    options = dict(model.model_options.get("transformer_options", {}))
    options["wrappers"] = model.wrappers  # what sampling merges in (sampler_helpers.prepare_model_patcher)
    with torch.no_grad():
        return model.model.apply_model(x, sigma, c_crossattn=context, transformer_options=options)


def peak_bytes(model, inputs, device):
    from bench.memory_meter import PeakMemory
    with PeakMemory(device) as peak:
        out = call(model, inputs)
        del out
    return peak.peak_bytes


def timed(model, inputs, device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    out = call(model, inputs)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu, out


def main(argv=None):
    args = parse_args(argv)
    from testbed import host
    host.load_pack()
    model, inputs, tokens = build(args)
    from comfyui_duca.cache_core.chunking import parse_chunks
    from comfyui_duca.glue.memory import apply_feature_slicer, last_slice_stats
    sliced = apply_feature_slicer(model, parse_chunks(args.chunks))
    variants = {"unpatched": model, "feature slicer": sliced}

    outputs = {name: call(m, inputs) for name, m in variants.items()}  # warm-up, and the equality check
    diff = (outputs["feature slicer"].float() - outputs["unpatched"].float()).abs().max().item()
    del outputs
    peaks = {name: peak_bytes(m, inputs, args.device) for name, m in variants.items()}
    times = {name: [] for name in variants}
    cpu_times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, m in variants.items():
            seconds, cpu_seconds, out = timed(m, inputs, args.device)
            times[name].append(seconds)
            cpu_times[name].append(cpu_seconds)
            del out
    medians = {name: statistics.median(t) for name, t in times.items()}
    cpu_medians = {name: statistics.median(t) for name, t in cpu_times.items()}

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"# Feature Slicer, {datetime.date.today()}, {device}, torch {torch.__version__}")
    print(f"Wan 2.1 {args.size} width ({SIZES[args.size]}), {args.blocks} blocks, {args.frames} frames "
          f"{args.width}x{args.height} -> {tokens} tokens, {TEXT_TOKENS} text tokens, batch 1, "
          f"{next(model.model.diffusion_model.parameters()).dtype}, chunks {args.chunks}, "
          f"median of {args.repeats}")
    print(f"sliced: {last_slice_stats(sliced).summary()}")
    print("| variant | peak activation memory | time per model call | process CPU time |")
    print("|---|---:|---:|---:|")
    for name in variants:
        print(f"| {name} | {peaks[name] / 2**20:.0f} MiB | {medians[name]:.2f} s | {cpu_medians[name]:.2f} s |")
    print(f"all times: { {name: [round(t, 2) for t in ts] for name, ts in times.items()} }")
    print(f"peak memory {peaks['unpatched'] / max(peaks['feature slicer'], 1):.2f}x lower, "
          f"time x{medians['feature slicer'] / medians['unpatched']:.3f} "
          f"(CPU time x{cpu_medians['feature slicer'] / cpu_medians['unpatched']:.3f}), "
          f"max |difference| {diff:.2e}")


if __name__ == "__main__":
    main()
