"""What the harness samples: a model, its cases (conditioning x seed) and how to
decode a latent into a picture. Built-in test models, or a user's checkpoint.
"""
from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

REPO = Path(__file__).resolve().parent.parent
MODELS = ("flux_trained", "sd_trained", "flux_bench", "tiny", "flux_dev", "wan_14b")
GPU_MODELS = ("flux_dev", "wan_14b")  # full-size architectures in bf16: a CUDA device is required


@dataclass
class Case:
    label: str      # what the conditioning is (a class name, a prompt)
    seed: int
    positive: list
    negative: list


@dataclass
class Workload:
    name: str
    description: str
    model: object                 # a ComfyUI ModelPatcher
    cases: list
    steps: int
    cfg: float
    sampler: str = "euler"
    scheduler: str = "simple"
    width: int = 256
    height: int = 256
    decode: Optional[Callable] = None  # latent (as sampled) -> [B, 3, H, W] in [-1, 1], or None
    frames: int = 0                    # video models: latent frames (0: an image model)
    notes: list = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        import comfy.model_management
        return comfy.model_management.get_torch_device()

    def to_model_space(self, latent):
        return self.model.model.process_latent_in(latent)

    def sample(self, model, case: Case, callback=None):
        """One ComfyUI sampling run (KSampler's path); returns the final latent on the CPU.
        `callback(step, x0, x, total_steps)` runs after every step."""
        import comfy.sample
        fmt = self.model.model.latent_format
        down = getattr(fmt, "spacial_downscale_ratio", 8)
        size = (self.height // down, self.width // down)
        latent = torch.zeros(1, fmt.latent_channels, *((self.frames,) if self.frames else ()), *size)
        noise = comfy.sample.prepare_noise(latent, case.seed)
        out = comfy.sample.sample(model, noise, self.steps, self.cfg, self.sampler, self.scheduler,
                                  case.positive, case.negative, latent, seed=case.seed, disable_pbar=True,
                                  callback=callback)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return out.cpu()


def boot(comfyui: Optional[str], cpu: bool):
    """Import ComfyUI (the embedded one, or the folder given) and load this pack."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    if comfyui:
        os.environ["DUCA_COMFYUI_PATH"] = str(Path(comfyui).expanduser().resolve())
    from testbed import host
    if cpu:
        return host.load_pack()  # forces the CPU and PyTorch attention, as the tests do
    root = str(host.comfy_path())
    if root not in sys.path:
        sys.path.insert(0, root)
    import comfy.cli_args
    saved = dict(vars(comfy.cli_args.args))
    import comfy.model_management  # noqa: F401  (picks the GPU from the user's settings)
    pack = host.load_pack()
    vars(comfy.cli_args.args).update(saved)  # load_pack's CPU flags came too late to matter: undo them
    return pack


def testbed_workload(name: str, steps: int, classes: int, seeds: list) -> Workload:
    from testbed import models, pixel_latents

    def decode(latent):
        return pixel_latents.decode(model.model.process_latent_in(latent))

    notes = []
    if name in ("flux_trained", "sd_trained"):
        file = "flux_small" if name == "flux_trained" else "sd_unet_small"
        path = models.WEIGHTS / f"{file}.safetensors"
        if path.exists():
            model = models.flux_trained() if name == "flux_trained" else models.sd_unet_trained()
            notes.append(f"weights {path.name}, sha256 {hashlib.sha256(path.read_bytes()).hexdigest()[:12]}")
        else:
            model = (models.flux(**models.FLUX_TRAINED) if name == "flux_trained"
                     else models.sd_unet_small(**models.SD_TRAINED))
            notes.append(f"UNTRAINED: {path.name} is missing, random weights")
        side = models.FLUX_TRAINED_PIXELS if name == "flux_trained" else models.SD_TRAINED_PIXELS
        pixels = side * 4  # picture side = latent side * 2, latent side = pixels // 8
        negative = models.class_conditioning(model, -1)
        cases = [Case(models.CLASSES[c], seed, models.class_conditioning(model, c), negative)
                 for c in range(classes) for seed in seeds]
        size = models.FLUX_TRAINED
        description = (f"ComfyUI Flux trained on photographs (hidden {size['hidden_size']}, {size['depth']} "
                       f"double + {size['depth_single_blocks']} single blocks), {side}x{side} RGB pictures, "
                       f"{(pixels // 16) ** 2} image tokens" if name == "flux_trained" else
                       f"ComfyUI SD1.5-class U-Net trained on photographs, {side}x{side} grey pictures")
        return Workload(name, description, model, cases, steps, models.TRAINED_CFG, width=pixels,
                        height=pixels, decode=decode, notes=notes)
    size = models.FLUX_BENCH if name == "flux_bench" else models.FLUX_SMALL
    pixels = 512 if name == "flux_bench" else 128
    model = models.flux(seed=0, **size)
    cases = []
    for c in range(classes):
        positive = models.flux_conditioning(model=model, seed=1 + c)
        cases += [Case(f"cond{c}", seed, positive, positive) for seed in seeds]
    tokens = (pixels // 16) ** 2
    description = (f"ComfyUI Flux, random weights, hidden {size['hidden_size']}, {size['depth']} double + "
                   f"{size['depth_single_blocks']} single blocks, {tokens} image tokens")
    return Workload(name, description, model, cases, steps, 1.0, width=pixels, height=pixels,
                    decode=decode, notes=["random weights: pictures are noise-like, fidelity still compares"])


def gpu_workload(name: str, steps: int, classes: int, seeds: list, blocks: Optional[int] = None,
                 tiny: bool = False) -> Workload:
    """Full-size architectures with random weights, bf16, built on the GPU: the work of
    Flux-dev at 1024x1024 (4096 image + 512 text tokens) or Wan 2.1 14B text-to-video.
    `blocks`: how many of Wan's 40 blocks to build (fewer fit a time budget). `tiny`: the same
    set-up at a small width, few blocks, a small picture and few frames, on any device (float32
    on the CPU): a smoke test of the code that runs the full sizes."""
    import comfy.model_management
    from testbed import models
    device = comfy.model_management.get_torch_device()
    if device.type != "cuda" and not tiny:
        raise SystemExit(f"--model {name} needs a CUDA GPU (found {device}); pass --comfyui with a GPU build")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    kind = str(dtype).removeprefix("torch.")
    notes = ["random weights: they size the work; fidelity figures compare outputs of an untrained model"]
    if name == "flux_dev":
        size, side, text = (models.FLUX_SMALL, 128, 8) if tiny else (models.FLUX_DEV, 1024, 512)
        model = models.flux(seed=0, dtype=dtype, device=device, **size)
        cases = []
        for c in range(classes):
            positive = models.flux_conditioning(model=model, seed=1 + c, tokens=text)
            cases += [Case(f"cond{c}", seed, positive, positive) for seed in seeds]
        return Workload(name, f"ComfyUI Flux at {'a tiny' if tiny else 'Flux-dev'} size (hidden "
                        f"{size['hidden_size']}, {size['depth']} double + {size['depth_single_blocks']} single "
                        f"blocks), {kind}, {side}x{side}: {(side // 16) ** 2} image + {text} text tokens",
                        model, cases, steps, 1.0, width=side, height=side, notes=notes)
    size = dict(TINY_WAN if tiny else models.WAN21_14B)
    if blocks:
        size["num_layers"] = blocks
    model = models.wan(seed=0, dtype=dtype, device=device, **size)
    text = 8 if tiny else 512
    negative = models.text_conditioning(size["text_dim"], tokens=text, seed=0)
    cases = []
    for c in range(classes):
        positive = models.text_conditioning(size["text_dim"], tokens=text, seed=1 + c)
        cases += [Case(f"cond{c}", seed, positive, negative) for seed in seeds]
    frames, width, height = (2, 64, 64) if tiny else (WAN_FRAMES, 832, 480)
    tokens = frames * (height // 16) * (width // 16)
    layers = f"{size['num_layers']} blocks" if tiny or size["num_layers"] == models.WAN21_14B["num_layers"] \
        else f"{size['num_layers']} of its {models.WAN21_14B['num_layers']} blocks"
    return Workload(name, f"ComfyUI Wan 2.1 at {'a tiny' if tiny else '14B'} size (dim {size['dim']}, {layers}), "
                    f"{kind}, {width}x{height}, {4 * (frames - 1) + 1} frames: {tokens} video tokens, cfg 5 "
                    "(batch 2)", model, cases, steps, 5.0, width=width, height=height, frames=frames, notes=notes)


WAN_FRAMES = 3  # latent frames: 9 video frames; 81 frames (21 latent) is 7x the tokens, ~25x the time
TINY_WAN = dict(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32)  # gpu_workload(tiny=True)


def user_workload(args) -> Workload:
    """A user's checkpoint (or diffusion model + text encoders) and prompts."""
    import comfy.sd
    import comfy.utils
    vae = None
    if args.checkpoint:
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(args.checkpoint)[:3]
        name = Path(args.checkpoint).name
    else:
        if not args.clip:
            raise SystemExit("--unet needs --clip (and --clip2 for two text encoders)")
        model = comfy.sd.load_diffusion_model(args.unet)
        clip_type = getattr(comfy.sd.CLIPType, args.clip_type.upper())
        clip = comfy.sd.load_clip([p for p in (args.clip, args.clip2) if p], clip_type=clip_type)
        name = Path(args.unet).name
    if args.vae:
        vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(args.vae))
    if clip is None:
        raise SystemExit(f"{name} has no text encoder: pass --unet FILE --clip FILE instead")

    def encode(text):
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))

    negative = encode(args.negative)
    prompts = args.prompt or ["a photograph of a red fox in the snow, detailed fur, morning light"]
    cases = [Case(text, seed, encode(text), negative) for text in prompts for seed in args.seeds]
    cfg = args.cfg
    if cfg is None:
        cfg = 1.0 if model.model.model_config.unet_config.get("guidance_embed") else 5.0

    def decode(latent):
        pictures = vae.decode(latent)  # [B, H, W, 3] in [0, 1]
        return (pictures.float().cpu().movedim(-1, 1) * 2 - 1).clamp(-1, 1)

    notes = [] if vae is not None else ["no VAE: picture metrics are skipped (pass --vae FILE)"]
    return Workload("user", f"{name} ({type(model.model).__name__})", model, cases, args.steps, cfg,
                    sampler=args.sampler, scheduler=args.scheduler, width=args.width, height=args.height,
                    decode=decode if vae is not None else None, notes=notes)
