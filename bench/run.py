"""Evaluation harness: DuCa presets against no cache, uniform whole-step reuse and
ComfyUI's EasyCache / LazyCache, on the same seeds and conditionings.

    python3 tools/host.py bench                         # trained small Flux, 28 steps
    python3 tools/host.py bench --model sd_trained      # trained SD1.5-class U-Net
    python3 tools/host.py bench --model flux_bench      # random-weight Flux, 1024 tokens
    python3 tools/host.py bench --quick                 # seconds: tiny Flux, 8 steps
    python bench/run.py --comfyui ~/ComfyUI --checkpoint flux1-dev-fp8.safetensors --prompt "..."

Writes results.md, results.json, speed_vs_fidelity.png and grid.png to --out
(default bench/out/<model>/). See bench/README.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
if str(BENCH.parent) not in sys.path:
    sys.path.insert(0, str(BENCH.parent))

from bench import methods as M  # noqa: E402
from bench import metrics, report, workloads  # noqa: E402

# per model: steps, classes, seeds, repeats
DEFAULTS = {"flux_trained": (28, 3, 2, 3), "sd_trained": (28, 3, 2, 3), "flux_bench": (28, 1, 1, 3),
            "tiny": (28, 2, 1, 3), "user": (28, 1, 2, 2), "flux_dev": (28, 1, 1, 3), "wan_14b": (28, 1, 1, 2)}
QUICK = (8, 2, 1, 1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=workloads.MODELS, help="built-in model (default flux_trained; quick: tiny)")
    p.add_argument("--quick", action="store_true", help="smallest setting: 8 steps, 2 cases, 1 repeat")
    p.add_argument("--steps", type=int)
    p.add_argument("--classes", type=int, help="conditionings (classes / prompts) for built-in models")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds, e.g. --seeds 0 1")
    p.add_argument("--repeats", type=int, help="timed repeats (median taken)")
    p.add_argument("--search-iterations", type=int, help="bisection steps for matched thresholds")
    p.add_argument("--out", help="output folder (default bench/out/<model>)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default torch's; quick: 1, tiny ops gain nothing from more)")
    p.add_argument("--easycache-copy-input", action="store_true",
                   help="give EasyCache a copy of the model input (ComfyUI <= 0.3.75 alters it in place on Flux)")
    p.add_argument("--no-progress", action="store_true")
    user = p.add_argument_group("your own ComfyUI and checkpoint")
    user.add_argument("--comfyui", help="a ComfyUI folder to import instead of the embedded one")
    user.add_argument("--cpu", action="store_true", help="with --comfyui: run on the CPU anyway")
    user.add_argument("--checkpoint", help="a full checkpoint (model, text encoder, VAE)")
    user.add_argument("--unet", help="a diffusion model file (with --clip)")
    user.add_argument("--clip", help="text encoder file")
    user.add_argument("--clip2", help="second text encoder file (Flux: clip_l + t5)")
    user.add_argument("--clip-type", default="flux", help="comfy.sd.CLIPType name (flux, stable_diffusion, ...)")
    user.add_argument("--vae", help="VAE file (otherwise the checkpoint's, if any)")
    user.add_argument("--prompt", action="append", help="prompt (repeat for several)")
    user.add_argument("--negative", default="", help="negative prompt")
    user.add_argument("--width", type=int, default=1024)
    user.add_argument("--height", type=int, default=1024)
    user.add_argument("--cfg", type=float, help="default 3.0 trained, 1.0 random or guidance-distilled, else 5.0")
    user.add_argument("--sampler", default="euler")
    user.add_argument("--scheduler", default="simple")
    args = p.parse_args(argv)
    args.user = bool(args.checkpoint or args.unet)
    if args.user and args.model:
        p.error("--model is for built-in models; leave it out with --checkpoint / --unet")
    args.model = "user" if args.user else (args.model or ("tiny" if args.quick else "flux_trained"))
    steps, classes, seeds, repeats = QUICK if args.quick else DEFAULTS[args.model]
    args.steps = args.steps or steps
    args.classes = args.classes or classes
    args.seeds = args.seeds if args.seeds is not None else list(range(seeds))
    args.repeats = args.repeats or repeats
    args.search_iterations = args.search_iterations if args.search_iterations is not None else (3 if args.quick else 8)
    args.out = Path(args.out or BENCH / "out" / args.model)
    if args.threads is None and args.quick:
        args.threads = 1
    if min(args.steps, args.classes, args.repeats, len(args.seeds)) < 1:
        p.error("--steps, --classes, --repeats and --seeds must be at least 1")
    return args


def machine_speed(device, seconds=0.1):
    """GFLOP/s of a fixed matmul right before a timed run: shows when the machine was slow."""
    a, b = torch.ones(1024, 512, device=device), torch.ones(512, 2048, device=device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return count * 2 * 1024 * 512 * 2048 / (time.perf_counter() - start) / 1e9


class Runner:
    """Runs one method on one case and records what it computed."""

    def __init__(self, workload):
        self.workload = workload
        self.counter = M.CallCounter(workload.model.model.diffusion_model)

    def run(self, method, case):
        from comfyui_duca.glue.patch import last_stats
        per_step = []
        self.counter.count = 0
        start = time.perf_counter()
        latent = self.workload.sample(method.model, case, lambda *_: per_step.append(self.counter.count))
        seconds = time.perf_counter() - start
        stats = last_stats(method.model) if method.counted_by == "stats" else None
        steps_computed = [b > a for a, b in zip([0] + per_step, per_step)]
        return {"seconds": seconds, "latent": latent, "calls": self.counter.count, "stats": stats,
                "timeline": stats.timeline if stats else "".join("F" if c else "s" for c in steps_computed)}

    def fraction(self, model, case, reference_calls):
        """Fraction of model calls computed (EasyCache / LazyCache) on one case."""
        return self.run(M.Method("probe", "probe", model), case)["calls"] / reference_calls


def main(argv=None):
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return evaluate(args)
    finally:
        torch.set_num_threads(threads)


def evaluate(args):
    on_gpu = args.comfyui or args.model in workloads.GPU_MODELS
    workloads.boot(args.comfyui, cpu=args.cpu or not on_gpu)
    from tqdm import tqdm
    if args.user:
        work = workloads.user_workload(args)
    elif args.model in workloads.GPU_MODELS:
        work = workloads.gpu_workload(args.model, args.steps, args.classes, args.seeds)
    else:
        work = workloads.testbed_workload(args.model, args.steps, args.classes, args.seeds)
    runner, case0 = Runner(work), work.cases[0]
    base = work.model

    # untimed warm-up; balanced's block compute on case 0 is the matching target
    reference_calls = runner.run(M.Method("no cache", "reference", base), case0)["calls"]
    ours = M.presets(base)
    balanced = next(m for m in ours if m.name == "DuCa balanced")
    target = None
    if balanced.supported:
        runner.run(balanced, case0)
        from comfyui_duca.glue.patch import last_stats
        target = last_stats(balanced.model).compute_fraction
    groups = ("EasyCache", "LazyCache")
    search_runs = 2 * (args.search_iterations + 1) if target is not None else 0
    cases = work.cases
    bar = tqdm(total=search_runs or None, desc=work.name, unit="run", disable=args.no_progress, dynamic_ncols=True)

    matched, searches = {}, {}
    if target is not None:
        for group in groups:
            bar.set_postfix_str(f"matching {group} to {target:.1%}")

            def fraction_of(model):
                bar.update()
                return runner.fraction(model, case0, reference_calls)
            t, fraction, tried = M.match_threshold(base, group, target, fraction_of, args.search_iterations,
                                                   copy=args.easycache_copy_input and group == "EasyCache")
            matched[group] = t
            searches[group] = {"threshold": t, "fraction_case0": fraction, "tried": tried}
    methods = M.build(base, work.steps, matched, ours, args.easycache_copy_input)
    supported = [m for m in methods if m.supported]
    device = work.device
    separate_memory_run = device.type != "cuda"  # the CPU's profiler slows the run it measures
    bar.total = search_runs + (args.repeats * len(cases) + separate_memory_run) * len(supported)
    bar.refresh()

    times = {m.name: [[] for _ in cases] for m in supported}  # seconds per case, one per repeat
    speeds = {m.name: [] for m in supported}
    outputs = {m.name: [None] * len(cases) for m in supported}
    memory, memory_method = {}, None
    for repeat in range(args.repeats):
        for i, case in enumerate(cases):
            shift = (repeat * len(cases) + i) % len(supported)  # rotate: nobody always first
            for m in supported[shift:] + supported[:shift]:
                bar.set_postfix_str(f"{m.name} | {case.label} seed {case.seed}")
                speeds[m.name].append(machine_speed(device))
                if not separate_memory_run and repeat == 0 and i == 0:
                    result = {}
                    memory[m.name], memory_method = metrics.peak_memory(
                        lambda: result.update(runner.run(m, case)), device)
                else:
                    result = runner.run(m, case)
                times[m.name][i].append(result["seconds"])
                if outputs[m.name][i] is None:
                    outputs[m.name][i] = result
                bar.update()

    for m in supported if separate_memory_run else ():
        bar.set_postfix_str(f"memory {m.name}")
        memory[m.name], memory_method = metrics.peak_memory(lambda: runner.run(m, case0), device)
        bar.update()
    bar.close()

    pictures = {name: [work.decode(o["latent"]) if work.decode else None for o in outs]
                for name, outs in outputs.items()}
    rows = [summarize(m, work, times, speeds, outputs, pictures, memory) for m in methods]
    setup = report.setup_info(args, work, device, memory_method, target, searches, speeds)
    report.write_all(args.out, setup, rows, pictures, cases)
    print("\n" + (args.out / "results.md").read_text())
    print(f"wrote {args.out}/results.md, results.json, speed_vs_fidelity.png, grid.png")
    return 0


def summarize(method, work, times, speeds, outputs, pictures, memory):
    """One table row: speed, compute, fidelity (medians over cases), memory."""
    row = {"method": method.name, "group": method.group, "supported": method.supported,
           "note": method.note, "settings": method.settings}
    if not method.supported:
        return row
    def per_repeat(name):
        return [sum(run) for run in zip(*times[name])]

    def best(name):  # noise only ever adds time: the fastest run of each case
        return sum(min(t) for t in times[name])
    outs, refs = outputs[method.name], outputs["no cache"]
    per_case = []
    for i, (out, ref) in enumerate(zip(outs, refs)):
        latent, reference = work.to_model_space(out["latent"]), work.to_model_space(ref["latent"])
        case = {"label": work.cases[i].label, "seed": work.cases[i].seed,
                "psnr_latent": metrics.latent_psnr(latent, reference), "rel_l2": metrics.rel_l2(latent, reference),
                "compute_fraction": out["stats"].compute_fraction if out["stats"] else out["calls"] / ref["calls"],
                "model_calls": out["calls"], "timeline": out["timeline"],
                "cache_bytes": out["stats"].peak_cache_bytes if out["stats"] else None}
        picture, ref_picture = pictures[method.name][i], pictures["no cache"][i]
        if picture is not None:
            case["psnr_picture"] = metrics.psnr(picture, ref_picture, metrics.PICTURE_RANGE)
            case["ssim_picture"] = metrics.ssim(picture, ref_picture)
        per_case.append(case)

    def median(key):
        values = [c[key] for c in per_case if c.get(key) is not None]
        return statistics.median(values) if values else None

    median_s = statistics.median(per_repeat(method.name))
    cache = [c["cache_bytes"] for c in per_case if c["cache_bytes"] is not None]
    row.update({
        "seconds": times[method.name], "median_s": median_s, "best_s": best(method.name),
        "s_per_sample": median_s / len(per_case),
        "speedup": statistics.median(per_repeat("no cache")) / median_s,
        "speedup_best": best("no cache") / best(method.name),
        "machine_gflops": statistics.median(speeds[method.name]),
        "compute_fraction": statistics.mean(c["compute_fraction"] for c in per_case),
        "compute_source": "block FLOPs (RunStats)" if method.counted_by == "stats" else "model calls computed",
        "psnr_picture": median("psnr_picture"), "ssim_picture": median("ssim_picture"),
        "psnr_latent": median("psnr_latent"), "rel_l2": median("rel_l2"),
        "peak_memory_bytes": memory.get(method.name), "cache_bytes": max(cache) if cache else None,
        "timeline": per_case[0]["timeline"], "cases": per_case})
    return row


if __name__ == "__main__":
    sys.exit(main())
