"""Demo: an example graph run by ComfyUI's own executor, with and without "Accelerate (DuCa)".

    python3 scripts/host.py demo [--steps 28] [--size 512] [--out out/demo]

The graph is the one in workflows/flux_accelerate_duca.json (Flux loader ->
Accelerate (DuCa) -> KSampler), with the loader and text encoder swapped for a
demo node that builds a small Flux of ComfyUI's real class in memory (no
downloads here). The pack is loaded the way ComfyUI loads custom nodes. Prints
the speedup and writes a side-by-side preview (uncached | DuCa) as a PNG.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testbed import host, models  # noqa: E402

RESULTS = {}


class DemoSmallFlux:
    """Stands in for the model loader and text encoder of the example workflow."""
    CATEGORY = "demo"
    RETURN_TYPES = ("MODEL", "CONDITIONING")
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0})}}

    def build(self, seed):
        model = models.flux(seed=seed, **models.FLUX_BENCH)
        return (model, models.flux_conditioning(model=model, seed=seed + 1))


class DemoCollectLatent:
    CATEGORY = "demo"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "collect"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "name": ("STRING", {"default": ""})}}

    def collect(self, samples, name):
        RESULTS[name] = samples["samples"].clone()
        return {}


def graph(name: str, accelerate: bool, steps: int, size: int, preset: str, seed: int) -> dict:
    model_source = ["1", 0]
    prompt = {
        "1": {"class_type": "DemoSmallFlux", "inputs": {"seed": 0}},
        "3": {"class_type": "EmptySD3LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "4": {"class_type": "KSampler", "inputs": {
            "model": model_source, "positive": ["1", 1], "negative": ["1", 1], "latent_image": ["3", 0],
            "seed": seed, "steps": steps, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
            "denoise": 1.0}},
        "5": {"class_type": "DemoCollectLatent", "inputs": {"samples": ["4", 0], "name": name}},
    }
    if accelerate:
        prompt["2"] = {"class_type": "DuCaAccelerate", "inputs": {"model": ["1", 0], "preset": preset}}
        prompt["4"]["inputs"]["model"] = ["2", 0]
    return prompt


class QuietServer:
    """The executor reports progress to a server; the demo has no client to tell."""
    client_id = None
    last_node_id = None
    last_prompt_id = None

    def send_sync(self, *args, **kwargs):
        pass

    def queue_updated(self):
        pass


def preview(latent):
    """Latent to RGB with the Flux format's own preview factors (what ComfyUI's previews use)."""
    import comfy.latent_formats
    import torch
    fmt = comfy.latent_formats.Flux()
    factors = torch.tensor(fmt.latent_rgb_factors, dtype=latent.dtype)
    bias = torch.tensor(fmt.latent_rgb_factors_bias or [0, 0, 0], dtype=latent.dtype)
    rgb = torch.einsum("chw,cr->hwr", fmt.process_in(latent[0]), factors) + bias
    return ((rgb.clamp(-1, 1) + 1) * 127.5).byte().numpy()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (512 -> 1024 tokens)")
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "out" / "demo"))
    args = parser.parse_args(argv)

    host.boot()
    import execution
    import nodes
    from PIL import Image
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    asyncio.run(nodes.load_custom_node(str(REPO)))  # as ComfyUI loads custom_nodes/<pack>
    nodes.NODE_CLASS_MAPPINGS.update({"DemoSmallFlux": DemoSmallFlux, "DemoCollectLatent": DemoCollectLatent})
    from comfy.cli_args import args as host_args
    cache_type = getattr(getattr(execution, "CacheType", None), "CLASSIC", False)
    executor = execution.PromptExecutor(QuietServer(), cache_type=cache_type,
                                        cache_args={"lru": host_args.cache_lru, "ram": host_args.cache_ram})

    timings = {"uncached": [], "duca": []}
    for name in timings:  # warm-up: builds the model once (cached by the executor) and warms kernels
        executor.execute(graph(name, name == "duca", 2, args.size, args.preset, seed=0), str(uuid.uuid4()),
                         execute_outputs=["5"])
    for repeat in range(args.repeats):
        for name in timings:
            # A new noise seed per repeat makes the executor sample again while it
            # keeps the model node cached, so only sampling is timed.
            prompt = graph(name, name == "duca", args.steps, args.size, args.preset, seed=42 + repeat)
            start = time.perf_counter()
            executor.execute(prompt, str(uuid.uuid4()), execute_outputs=["5"])
            timings[name].append(time.perf_counter() - start)
            if not executor.success:
                print(executor.status_messages[-1])
                return 1

    uncached, duca = (statistics.median(timings[k]) for k in ("uncached", "duca"))
    a, b = RESULTS["uncached"], RESULTS["duca"]
    rel = float((b - a).norm() / a.norm())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    side_by_side = Image.fromarray(__import__("numpy").concatenate([preview(a), preview(b)], axis=1))
    side_by_side = side_by_side.resize((side_by_side.width * 4, side_by_side.height * 4), Image.NEAREST)
    image_path = out / "uncached_vs_duca.png"
    side_by_side.save(image_path)
    print(f"\nFlux (hidden 512, 4 double + 8 single blocks), {args.size}x{args.size}, {args.steps} steps, "
          f"preset {args.preset}, median of {args.repeats}")
    print(f"  uncached: {uncached:.2f} s   DuCa: {duca:.2f} s   speedup {uncached / duca:.2f}x")
    print(f"  relative L2 of the final latent vs uncached: {rel:.4f}")
    print(f"  side-by-side preview (uncached | DuCa): {image_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
