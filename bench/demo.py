"""Demo: the example graph run by ComfyUI's own executor, with and without "Accelerate (DuCa)".

    python3 tools/host.py demo [--steps 28] [--preset balanced] [--repeats 2] [--out out/demo]

The graph is the one in workflows/flux_accelerate_duca.json (Flux loader ->
Accelerate (DuCa) -> KSampler), with the loader and text encoder swapped for a
demo node that builds a small Flux of ComfyUI's real class in memory (nothing
is downloaded here). The pack is loaded the way ComfyUI loads custom nodes.

Two models: speed is measured on a CPU-sized Flux (hidden 512, 4 double + 8
single blocks, 1024 image tokens, random weights: it sizes the work like a
real model); pictures come from the small Flux trained on photographs (64x64
pixels), one per class, uncached above and DuCa below, written as a PNG.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testbed import host, models, pixel_latents  # noqa: E402

RESULTS = {}
SPEED, PICTURES = "speed", "pictures"


class DemoSmallFlux:
    """Stands in for the model loader and text encoder of the example workflow."""
    CATEGORY = "demo"
    RETURN_TYPES = ("MODEL", "CONDITIONING", "CONDITIONING")
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"which": ([SPEED, PICTURES],), "label": ("INT", {"default": 0})}}

    def build(self, which, label):
        if which == SPEED:
            model = models.flux(seed=0, **models.FLUX_BENCH)
            cond = models.flux_conditioning(model=model, seed=1)
            return (model, cond, cond)
        model = models.flux_trained()
        return (model, models.class_conditioning(model, label), models.class_conditioning(model, -1))


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


def graph(name, which, label, accelerate, steps, preset, seed, cfg, size) -> dict:
    prompt = {
        "1": {"class_type": "DemoSmallFlux", "inputs": {"which": which, "label": label}},
        "3": {"class_type": "EmptySD3LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "4": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["1", 1], "negative": ["1", 2], "latent_image": ["3", 0],
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple",
            "denoise": 1.0}},
        "5": {"class_type": "DemoCollectLatent", "inputs": {"samples": ["4", 0], "name": name}},
    }
    if accelerate:
        prompt["2"] = {"class_type": "DuCaAccelerateV2", "inputs": {"model": ["1", 0], "preset": preset}}
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


def make_executor():
    import execution
    import nodes
    from comfy.cli_args import args as host_args
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the host's optional audio nodes complain without torchaudio
    try:
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    finally:
        logging.getLogger().setLevel(quiet)
    asyncio.run(nodes.load_custom_node(str(REPO)))  # as ComfyUI loads custom_nodes/<pack>
    nodes.NODE_CLASS_MAPPINGS.update({"DemoSmallFlux": DemoSmallFlux, "DemoCollectLatent": DemoCollectLatent})
    cache_type = getattr(getattr(execution, "CacheType", None), "CLASSIC", False)
    # classic caching: no RAM-pressure cache (newer hosts read RAM headrooms in GiB from these)
    return execution.PromptExecutor(QuietServer(), cache_type=cache_type,
                                    cache_args={"lru": host_args.cache_lru, "ram": 0.0, "ram_inactive": 0.0})


def run(executor, prompt) -> float:
    start = time.perf_counter()
    executor.execute(prompt, str(uuid.uuid4()), execute_outputs=["5"])
    if not executor.success:
        raise RuntimeError(f"the graph failed: {executor.status_messages[-1]}")
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "out" / "demo"))
    args = parser.parse_args(argv)
    host.boot()
    import numpy as np
    from PIL import Image
    import comfy.latent_formats
    executor = make_executor()
    to_model_space = comfy.latent_formats.Flux().process_in

    # Speed: a new noise seed per repeat makes the executor sample again while the
    # model node stays cached, so only sampling is timed. One untimed warm-up each.
    timings = {"uncached": [], "duca": []}
    for repeat in range(args.repeats + 1):
        for name in timings:
            seconds = run(executor, graph(f"{SPEED}-{name}", SPEED, 0, name == "duca", args.steps if repeat else 2,
                                          args.preset, seed=repeat, cfg=1.0, size=512))
            if repeat:
                timings[name].append(seconds)
    uncached, duca = (statistics.median(timings[k]) for k in ("uncached", "duca"))

    rows = {"uncached": [], "duca": []}
    for label in range(len(models.CLASSES)):
        for name in rows:
            run(executor, graph(f"{PICTURES}-{name}", PICTURES, label, name == "duca", args.steps, args.preset,
                                seed=7, cfg=3.0, size=models.FLUX_TRAINED_PIXELS * 4))
            latent = to_model_space(RESULTS[f"{PICTURES}-{name}"])
            rows[name].append(pixel_latents.to_uint8(pixel_latents.decode(latent)[0]))
    picture = np.concatenate([np.concatenate(rows[k], axis=1) for k in ("uncached", "duca")], axis=0)
    image = Image.fromarray(picture)
    image = image.resize((image.width * 3, image.height * 3), Image.NEAREST)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    image_path = out / "uncached_vs_duca.png"
    image.save(image_path)

    print(f"\nAccelerate (DuCa), preset {args.preset}, {args.steps} steps, euler/simple")
    print(f"  speed, Flux hidden 512 (4 double + 8 single blocks), 1024 image tokens, median of {args.repeats}:")
    print(f"    uncached {uncached:.2f} s   DuCa {duca:.2f} s   speedup {uncached / duca:.2f}x")
    print(f"  pictures from the small trained Flux (top: uncached, bottom: DuCa): {image_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
