"""Where a cached run spends its time: median milliseconds per step for each planned
action (F full, C conservative, A aggressive), measured with the device synchronized
after every step, for each DuCa preset and two budget presets against no cache. With --profile, the
heaviest operators of one run per preset (torch.profiler). With --ops, operator calls (a torch
dispatch-mode count of every aten operator) per step of each action and per block: a step's
count less an aggressive step's (which runs no block: embedders, final layer and the sampler's
work only), over the blocks of the stack.

    python3 tools/host.py python bench/step_times.py --model flux_bench
    python3 tools/host.py python bench/step_times.py --model tiny --ops
    python3 tools/host.py python bench/step_times.py --model flux_bench --reference-refresh
    python bench/step_times.py --comfyui ~/ComfyUI --model flux_dev --profile
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

if str(Path(__file__).resolve().parent.parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import workloads  # noqa: E402


def step_times(work, model, case) -> list:
    """Seconds per step of one sampling run."""
    device = work.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    marks = []

    def tick(*_):
        sync()
        marks.append(time.perf_counter())
    sync()
    start = time.perf_counter()
    work.sample(model, case, callback=tick)
    return [b - a for a, b in zip([start] + marks, marks)]


def op_counts(work, model, case) -> list:
    """Operator calls per step of one sampling run."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.calls += 1
            return func(*args, **(kwargs or {}))
    marks = []
    with Count():
        work.sample(model, case, callback=lambda *_: marks.append(Count.calls))
    return [b - a for a, b in zip([0] + marks, marks)]


def ops_report(work, patched: dict) -> None:
    from comfyui_duca.glue.patch import last_stats
    dm = work.model.model.diffusion_model
    depth = sum(len(getattr(dm, name, ())) for name in ("double_blocks", "single_blocks"))
    uncached = statistics.median(op_counts(work, work.model, work.cases[0]))
    print(f"operator calls per step: no cache {uncached:.0f}")
    for name, model in patched.items():
        counts = op_counts(work, model, work.cases[0])
        groups = {a: n for a, (n, _) in by_action(counts, last_stats(model).timeline, scale=1).items()}
        outside = groups.get("A")
        cells = []
        for action, per_step in groups.items():
            block = f", {(per_step - outside) / depth:.0f} per block" if outside is not None and depth else ""
            cells.append(f"{action} {per_step:.0f} per step{block}")
        print(f"{name}: " + "; ".join(cells))


def by_action(seconds: list, timeline: str, scale: float = 1000) -> dict:
    groups = defaultdict(list)
    for s, action in zip(seconds, timeline):
        groups[action].append(s)
    return {a: (statistics.median(v) * scale, len(v)) for a, v in sorted(groups.items())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="flux_bench", choices=workloads.MODELS)
    p.add_argument("--comfyui", help="a ComfyUI folder to import instead of the embedded one")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="also list the heaviest operators per preset")
    p.add_argument("--ops", action="store_true", help="also count operator calls per step and block")
    p.add_argument("--reference-refresh", action="store_true",
                   help="also time DuCa balanced with the reference (gather / scatter) token refresh")
    args = p.parse_args(argv)
    workloads.boot(args.comfyui, cpu=not (args.comfyui or args.model in workloads.GPU_MODELS))
    from comfyui_duca.methods import FORECAST_PRESETS, PRESETS
    from comfyui_duca.glue.patch import apply_method, last_stats
    if args.model in workloads.GPU_MODELS:
        work = workloads.gpu_workload(args.model, args.steps, 1, [0])
    else:
        work = workloads.testbed_workload(args.model, args.steps, 1, [0])
    case = work.cases[0]
    step_times(work, work.model, case)  # warm-up
    full = statistics.median(s for _ in range(args.repeats) for s in step_times(work, work.model, case)) * 1000
    print(f"{work.description}\nno cache: {full:.1f} ms per step")
    patched = {f"duca {name}": apply_method(work.model, PRESETS[name]) for name in ("quality", "balanced", "fast")}
    if args.reference_refresh:  # the same cycle with the picked tokens moved by gather / scatter
        patched["duca balanced, reference refresh"] = apply_method(
            work.model, PRESETS["balanced"].with_changes(fused_refresh=False))
    patched.update({name: apply_method(work.model, FORECAST_PRESETS[name]) for name in ("balanced", "turbo")})
    for name, model in patched.items():
        runs = [step_times(work, model, case) for _ in range(args.repeats + 1)][1:]
        stats = last_stats(model)
        per_step = [statistics.median(column) for column in zip(*runs)]
        cells = ", ".join(f"{a} {ms:.1f} ms x{n} ({ms / full:.2f} of full)"
                          for a, (ms, n) in by_action(per_step, stats.timeline).items())
        print(f"{name}: {sum(per_step):.2f} s, block compute {stats.compute_fraction:.1%}: {cells}")
    if args.ops:
        ops_report(work, patched)
    for name, model in patched.items() if args.profile else ():  # last: the profiler slows what follows
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if work.device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            step_times(work, model, case)
        key = "cuda_time_total" if work.device.type == "cuda" else "cpu_time_total"
        print(f"{name}, heaviest operators:")
        print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=48))
    return 0


if __name__ == "__main__":
    sys.exit(main())
