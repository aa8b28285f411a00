"""Train the small model of every family in testbed.families on photographs, on the CPU.

    python3 tools/host.py python training/train_families.py --minutes 3
    python3 tools/host.py python training/train_families.py --families ltxv mochi --minutes 3
    python3 tools/host.py --comfyui DIR python training/train_families.py --families flux2 ltx2 --minutes 3

The random-weight family models test plumbing; how a trained model's output moves from step to
step, which every forecast relies on, needs trained weights. These are trained briefly (minutes,
not the hours a picture model needs): enough for a denoiser whose output changes smoothly with the
noise level, as a real one does, not for good pictures.

One recipe for every family, through ComfyUI's own conditioning path (process_conds, then the
model's apply_model, as a sampler calls it), so no family's input layout is written out here:
- data: random crops of the photographs that ship with scikit-image (train_small_models.py), one
  class per photograph; a video family's frames pan across the crop, two pixels a frame;
- latent: 2x2 cells of RGB folded into 12 of the family's channels, the rest zero (4 channels:
  2x2 cells of grey, as the trained Flux's layout, not the U-Net's rescaled one: a flow model's
  data, unlike an epsilon model's, need no channel at unit variance);
- conditioning: the family's own conditioning tensors, one seed per class (-1: the empty prompt,
  dropped in 10% of the batches so cfg works);
- loss: the denoised output's squared error divided by b^2 (x = a x0 + b n, read from the model's
  noise_scaling): the noise-prediction loss for epsilon models and the velocity loss for flow
  models, so both kinds train alike; noise levels drawn from the model's own sigma table.
Writes EMA weights (fp16) to testbed/weights/families/<family>.safetensors, settings in metadata.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # once the host is loaded, the checkout must not go first: its nodes/ would
    sys.path.insert(0, str(REPO))  # shadow ComfyUI's nodes.py

from testbed import families, host, models  # noqa: E402
from training.train_small_models import load_photographs, update  # noqa: E402

CELL = 2                # pixels per latent position, each way
PAN_PIXELS = 2          # a video family's frames: the crop moved this far per frame
MIN_NOISE_SCALE = 0.05  # b below this weighs as this: the last steps would otherwise dominate


def to_latent(rgb: torch.Tensor, channels: int) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> [B, channels, H / 2, W / 2]: 2x2 cells of RGB in 12 channels, the
    rest zero; with fewer than 12 channels, 2x2 cells of grey in 4. Finer cells would put more
    values in a token than these models' narrow blocks carry (a real model is far wider)."""
    pixels = rgb if channels >= 3 * CELL * CELL else rgb.mean(dim=1, keepdim=True)
    folded = F.pixel_unshuffle(pixels, CELL)
    return torch.cat((folded, folded.new_zeros(folded.shape[0], channels - folded.shape[1], *folded.shape[2:])), 1)


def to_pictures(latent: torch.Tensor) -> torch.Tensor:
    """The inverse of to_latent: [B, C, H, W] -> [B, 3, 2 H, 2 W] in [-1, 1]."""
    colours = 3 if latent.shape[1] >= 3 * CELL * CELL else 1
    pictures = F.pixel_shuffle(latent[:, :colours * CELL * CELL], CELL)
    return pictures.expand(-1, 3, -1, -1).clamp(-1, 1)


def crops(photo: torch.Tensor, batch: int, side: int, frames: int, gen: torch.Generator) -> torch.Tensor:
    """[batch, frames, 3, side, side]: random crops of one photograph, each frame panned."""
    margin = PAN_PIXELS * (frames - 1)
    out = []
    _, h, w = photo.shape
    for _ in range(batch):
        size = int(min(h, w) * (0.55 + 0.45 * torch.rand((), generator=gen).item()))
        top = int(torch.randint(0, h - size + 1, (), generator=gen))
        left = int(torch.randint(0, w - size + 1, (), generator=gen))
        crop = F.interpolate(photo[None, :, top:top + size, left:left + size], size=(side + margin, side + margin),
                             mode="bilinear", antialias=True, align_corners=False)[0]
        if torch.rand((), generator=gen) < 0.5:
            crop = crop.flip(-1)
        out.append(torch.stack([crop[:, k * PAN_PIXELS:k * PAN_PIXELS + side, k * PAN_PIXELS:k * PAN_PIXELS + side]
                                for k in range(frames)]))
    return torch.stack(out)


def family_named(name: str):
    """A family of testbed.families, or of testbed.newer (those only newer hosts have)."""
    from testbed import newer
    return families.FAMILIES.get(name) or newer.FAMILIES[name]


def data_batch(family, photo, batch: int, gen) -> torch.Tensor:
    """x0 for `family` in its latent layout ([B, C, H, W] or [B, C, T, H, W]). A latent of several
    streams (LTX-2's video and audio, a NestedTensor): the pictures in the first, the others zero."""
    like = family.latent(1)
    if getattr(like, "is_nested", False):
        import comfy.nested_tensor
        first, *others = like.unbind()
        return comfy.nested_tensor.NestedTensor((pictures_latent(first.shape, photo, batch, gen),
                                                 *(torch.zeros(batch, *o.shape[1:]) for o in others)))
    return pictures_latent(like.shape, photo, batch, gen)


def pictures_latent(shape, photo, batch: int, gen) -> torch.Tensor:
    channels, video = shape[1], len(shape) == 5
    frames = shape[2] if video else 1
    pictures = crops(photo, batch, shape[-1] * CELL, frames, gen)                # [B, T, 3, s, s]
    latent = to_latent(pictures.flatten(0, 1), channels).unflatten(0, (batch, frames))  # [B, T, C, h, w]
    return latent.transpose(1, 2) if video else latent[:, 0]


def packed(x0):
    """A latent as the sampler hands it on: several streams packed into one [B, 1, N] tensor, with
    their shapes (None for a plain latent)."""
    if not getattr(x0, "is_nested", False):
        return x0, None
    import comfy.utils
    return comfy.utils.pack_latents(x0.unbind())


def model_inputs(model, conditioning, x0: torch.Tensor, latent_shapes=None) -> dict:
    """What a sampler hands the model for `conditioning` at a batch shaped like `x0`."""
    import comfy.sampler_helpers
    import comfy.samplers
    streams = {"latent_shapes": latent_shapes} if latent_shapes is not None else {}  # a newer host's
    conds = comfy.samplers.process_conds(model.model, x0, {"positive": comfy.sampler_helpers.convert_cond(conditioning)},
                                         x0.device, latent_image=x0, seed=0, **streams)["positive"]
    return conds[0]


def denoised(model, entry: dict, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    import comfy.samplers
    part = comfy.samplers.get_area_and_mult(entry, x_t, sigma)
    inputs = comfy.samplers.cond_cat([part.conditioning])
    return model.model.apply_model(x_t, sigma, transformer_options={}, **inputs)


def train(name: str, minutes: float, batch: int, lr: float, seed: int, classes: int, resume: bool = False) -> Path:
    import comfy.model_management
    if hasattr(comfy.model_management, "in_training"):  # a newer host: run the kernels that have a backward
        comfy.model_management.in_training = True
    family = family_named(name)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = family.build_trained() if resume else family.build(0)
    dm = model.model.diffusion_model
    before = load_metadata(family.trained_weights()) if resume else {}
    dm.train()
    dm.requires_grad_(True)  # newer hosts build their models frozen
    sampling = model.model.model_sampling
    table = sampling.sigmas.float()
    ema = {k: v.detach().clone() for k, v in dm.state_dict().items()}
    optimizer = torch.optim.AdamW(dm.parameters(), lr=lr, weight_decay=0.01)
    photos = load_photographs(64)[:classes]
    entries = {}
    started = time.monotonic()
    step, losses = 0, []
    while time.monotonic() - started < minutes * 60:
        label = int(torch.randint(0, classes, (), generator=gen))
        label = families.EMPTY_PROMPT if torch.rand((), generator=gen) < 0.1 else label
        x0, latent_shapes = packed(data_batch(family, photos[max(label, 0)], batch, gen))
        key = (label, tuple(x0.shape))
        if key not in entries:
            model.model.latent_shapes = latent_shapes  # as the sampler sets it
            with torch.no_grad():  # the conditioning's own path (LTX-2's text connectors) stays as built
                entries[key] = model_inputs(model, family.class_conditioning(label), x0, latent_shapes)
        sigma = table[torch.randint(0, len(table), (batch,), generator=gen)]
        noise = torch.randn(x0.shape, generator=gen)
        x_t = sampling.noise_scaling(sigma, noise, x0)
        b = sampling.noise_scaling(sigma, torch.ones(batch), torch.zeros(batch))  # x = a x0 + b n
        progress = min((time.monotonic() - started) / (minutes * 60), 1.0)
        for group in optimizer.param_groups:  # warm-up, then cosine decay over the time budget
            group["lr"] = lr * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        # ComfyUI's blocks update hidden states in place (inference code): copies of what autograd
        # saves make them trainable unchanged
        with torch.autograd.graph.saved_tensors_hooks(torch.clone, lambda saved: saved):
            out = denoised(model, entries[key], x_t, sigma)
        weight = b.clamp_min(MIN_NOISE_SCALE).pow(-2).view(-1, *([1] * (x0.ndim - 1)))
        loss = ((out - x0).pow(2) * weight).mean()
        update(dm, optimizer, loss, ema, step)
        losses.append(loss.item())
        step += 1
        if step % 100 == 0:
            print(f"{name} step {step} loss {sum(losses[-100:]) / 100:.4f}", flush=True)

    import comfy.utils
    path = family.trained_weights()
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"seed": str(seed), "iterations": str(step + int(before.get("iterations", 0))), "batch": str(batch),
                "lr": str(lr), "minutes": str(minutes + float(before.get("minutes", 0))), "classes": json.dumps(models.CLASSES[:classes]),
                "first_loss": before.get("first_loss") or f"{sum(losses[:100]) / max(len(losses[:100]), 1):.4f}",
                "final_loss": f"{sum(losses[-100:]) / max(len(losses[-100:]), 1):.4f}",
                "data": "random crops of scikit-image's sample photographs, folded by training/train_families.py"}
    comfy.utils.save_torch_file({k: v.half() for k, v in ema.items()}, str(path), metadata=metadata)
    print(f"saved {path} after {step} iterations: loss {metadata['first_loss']} -> {metadata['final_loss']}",
          flush=True)
    return path


def load_metadata(path: Path) -> dict:
    """The metadata a trained family's weights were saved with."""
    import safetensors
    with safetensors.safe_open(str(path), framework="pt") as weights:
        return weights.metadata() or {}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from testbed import newer
    parser.add_argument("--families", nargs="+", default=list(families.FAMILIES),
                        choices=[*families.FAMILIES, *newer.FAMILIES], help="testbed/newer's need a host that has them")
    parser.add_argument("--minutes", type=float, default=3.0, help="per family")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="go on from the family's saved weights")
    args = parser.parse_args(argv)
    host.boot()
    for name in args.families:
        train(name, args.minutes, args.batch, args.lr, args.seed, args.classes, args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
