"""Small checkpoints of ComfyUI's real classes, written where the real loaders find them,
and the rules that put them (and a hand-made conditioning) into an example workflow.

Sizes are what the loaders' detection allows: Flux detection fixes hidden 3072 and 24
heads, so the smallest loadable Flux has one double and one single block; Wan reads its
width from the weights; SD U-Nets are forced to 320 channels (the SDXL example runs on a
small SD1.5-class U-Net: the DeepCache node treats both layouts alike).
"""
from __future__ import annotations

from pathlib import Path

import torch

FLUX_FILE = "flux_e2e.safetensors"
WAN_FILE = "wan_e2e.safetensors"
SD_FILE = "sd_unet_e2e.safetensors"
WAN_VAE_FILE = "wan_vae_e2e.safetensors"

FLUX_SIZE = {"hidden_size": 3072, "num_heads": 24, "depth": 1, "depth_single_blocks": 1, "axes_dim": [16, 56, 56],
             "context_in_dim": 4096, "vec_in_dim": 768}
WAN_SIZE = {"dim": 128, "ffn_dim": 256, "num_heads": 1, "num_layers": 2, "text_dim": 4096}

# What each family's text encoder would have produced: (tokens, width, pooled width).
CONDITIONING = {"flux": (8, 4096, 768), "sd": (77, 768, 0), "wan": (8, 4096, 0)}
DIFFUSION_FILE = {"flux": FLUX_FILE, "sd": SD_FILE, "wan": WAN_FILE}
VAE_NAME = {"flux": "taef1", "sd": "taesd", "wan": WAN_VAE_FILE}
PICTURE = 64  # pixels a side: a few latent tokens keep CPU runs short
VIDEO_FRAMES = 5  # two latent frames


def write_models(models_dir: Path) -> None:
    """Write every small checkpoint the substituted workflows load (seeded, deterministic)."""
    import comfy.utils
    from comfy.ldm.wan.vae import WanVAE
    from comfy.taesd.taesd import TAESD

    from testbed import models

    unet_dir, approx_dir, vae_dir = (models_dir / name for name in ("diffusion_models", "vae_approx", "vae"))
    for folder in (unet_dir, approx_dir, vae_dir):
        folder.mkdir(parents=True, exist_ok=True)

    def save(module, path):
        comfy.utils.save_torch_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))

    flux = models.flux(seed=0, dtype=torch.float16, **FLUX_SIZE)
    save(flux.model.diffusion_model, unet_dir / FLUX_FILE)
    del flux
    save(models.wan(seed=0, **WAN_SIZE).model.diffusion_model, unet_dir / WAN_FILE)
    models.save_unet_checkpoint(unet_dir / SD_FILE, seed=0)

    for name, channels in (("taef1", 16), ("taesd", 4)):
        tae = TAESD(latent_channels=channels)
        models.init_weights(tae, seed=3)
        save(tae.taesd_encoder, approx_dir / f"{name}_encoder.safetensors")
        save(tae.taesd_decoder, approx_dir / f"{name}_decoder.safetensors")
    wan_vae = WanVAE(dim=16, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                     temperal_downsample=[False, True, True])
    models.init_weights(wan_vae, seed=4)
    save(wan_vae, vae_dir / WAN_VAE_FILE)


def family_of(file_name: str) -> str:
    name = file_name.lower()
    if "wan" in name:
        return "wan"
    if "flux" in name:
        return "flux"
    if "sd" in name or "xl" in name:
        return "sd"
    raise ValueError(f"no small model stands in for {file_name!r}: add its family to tests/e2e/e2e_models.py")


def substitute(prompt: dict, salt: int = 0, steps: int | None = None) -> dict:
    """Point an API-format prompt at the small models; returns a new prompt.

    Text encoders become the test-only conditioning node, checkpoints become the small
    diffusion model plus a small VAE, and pictures become small. `salt` seeds the
    conditioning, so a graph that shares nodes with an earlier one is not answered from
    the server's cache; `steps` (if given) shortens every sampler."""
    prompt = {key: {"class_type": node["class_type"], "inputs": dict(node["inputs"])} for key, node in prompt.items()}
    loaders = [n for n in prompt.values() if n["class_type"] in ("UNETLoader", "CheckpointLoaderSimple")]
    if not loaders:
        raise ValueError("the workflow has no model loader to substitute")
    families = {family_of(n["inputs"].get("unet_name") or n["inputs"]["ckpt_name"]) for n in loaders}
    if len(families) != 1:
        raise ValueError(f"one model family per workflow expected, got {sorted(families)}")
    family = families.pop()
    tokens, width, pooled = CONDITIONING[family]

    for key, node in list(prompt.items()):
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CheckpointLoaderSimple":
            vae_key = f"{key}_vae"
            prompt[key] = {"class_type": "UNETLoader",
                           "inputs": {"unet_name": DIFFUSION_FILE[family], "weight_dtype": "default"}}
            prompt[vae_key] = {"class_type": "VAELoader", "inputs": {"vae_name": VAE_NAME[family]}}
            _relink(prompt, (key, 2), [vae_key, 0])
        elif kind == "UNETLoader":
            inputs.update(unet_name=DIFFUSION_FILE[family], weight_dtype="default")
        elif kind == "VAELoader":
            inputs["vae_name"] = VAE_NAME[family]
        elif kind == "CLIPTextEncode":
            prompt[key] = {"class_type": "E2ETestConditioning",
                           "inputs": {"tokens": tokens, "dim": width, "pooled_dim": pooled,
                                      "seed": salt + len(str(inputs.get("text", "")))}}
        elif kind in ("EmptyLatentImage", "EmptySD3LatentImage", "EmptyHunyuanLatentVideo"):
            inputs.update(width=PICTURE, height=PICTURE)
            if "length" in inputs:
                inputs["length"] = VIDEO_FRAMES
        elif "steps" in inputs and steps is not None and not isinstance(inputs["steps"], list):
            inputs["steps"] = steps
    for key in [k for k, n in prompt.items() if n["class_type"] in ("CLIPLoader", "DualCLIPLoader")]:
        del prompt[key]  # nothing reads them any more
    return prompt


def _relink(prompt: dict, old: tuple, new: list) -> None:
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and (str(value[0]), value[1]) == (str(old[0]), old[1]):
                node["inputs"][name] = list(new)
