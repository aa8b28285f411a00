"""Train the small models the benchmarks use for fidelity, on the CPU, from photographs.

    python3 tools/host.py python training/train_small_models.py --model flux --minutes 20
    python3 tools/host.py python training/train_small_models.py --model sd --minutes 20 --lr 1e-3

Models of ComfyUI's own classes (a Flux, flow matching; an SD1.5-class U-Net,
epsilon prediction), conditioned per class through fixed context tensors
(testbed.models.class_conditioning; label -1 is the empty prompt, dropped in
10% of samples so cfg works). Data: random crops of the photographs that ship
with scikit-image, one class per photograph, folded into latent channels by
testbed.pixel_latents (no VAE is available offline). Writes EMA weights (fp16)
with seed and settings in the file's metadata, and a sample grid under docs/.
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

from testbed import host, models, pixel_latents  # noqa: E402


def load_photographs(side: int) -> list:
    """Each class's photograph as a [3, H, W] tensor in [-1, 1] (at least `side` pixels)."""
    import skimage.data
    import skimage.io
    photos = []
    for name in models.CLASSES:
        image = skimage.io.imread(Path(skimage.data.data_dir) / next(
            p.name for p in Path(skimage.data.data_dir).iterdir() if p.stem == name))
        rgb = torch.from_numpy(image[..., :3]).permute(2, 0, 1).float() / 127.5 - 1
        photos.append(rgb)
    return photos


def random_crops(photos, labels, side: int, gen: torch.Generator) -> torch.Tensor:
    crops = []
    for label in labels.tolist():
        photo = photos[label]
        _, h, w = photo.shape
        size = int(min(h, w) * (0.55 + 0.45 * torch.rand((), generator=gen).item()))
        top = int(torch.randint(0, h - size + 1, (), generator=gen))
        left = int(torch.randint(0, w - size + 1, (), generator=gen))
        crop = photo[:, top:top + size, left:left + size][None]
        crop = F.interpolate(crop, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        if torch.rand((), generator=gen) < 0.5:
            crop = crop.flip(-1)
        crops.append(crop)
    return torch.cat(crops)


def conditioning_batch(model, labels):
    contexts, pooled = [], []
    for label in labels.tolist():
        cond = models.class_conditioning(model, label)[0]
        contexts.append(cond[0])
        pooled.append(cond[1].get("pooled_output"))
    context = torch.cat(contexts)
    return context, (torch.cat(pooled) if pooled[0] is not None else None)


def flux_loss(model, x0, context, pooled, gen):
    """Rectified flow: x_t = (1 - s) x0 + s e; the model predicts e - x0 (ComfyUI's FLOW type)."""
    dm = model.model.diffusion_model
    sigma = torch.sigmoid(torch.randn(x0.shape[0], generator=gen))  # logit-normal, as SD3/Flux train
    noise = torch.randn(x0.shape, generator=gen)
    s = sigma.view(-1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * noise
    out = dm(x_t, sigma, context, y=pooled, transformer_options={})
    return F.mse_loss(out, noise - x0)


def unet_loss(model, x0, context, _pooled, gen):
    """DDPM epsilon prediction on ComfyUI's own SD1.5 noise schedule.

    Each sample's squared error is weighted by sqrt(1 + sigma^2): the picture's error is
    sigma times the noise error, so the high-noise steps, where a sampler starts, need
    the noise predicted far more precisely than a plain average over timesteps asks for
    (unweighted, a short training leaves the samples noisy)."""
    dm = model.model.diffusion_model
    sigmas = model.model.model_sampling.sigmas.float()
    alphas = 1.0 / (sigmas ** 2 + 1.0)  # k-diffusion sigmas -> alphas_cumprod
    t = torch.randint(0, len(alphas), (x0.shape[0],), generator=gen)
    a = alphas[t].view(-1, 1, 1, 1).float()
    noise = torch.randn(x0.shape, generator=gen)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    out = dm(x_t, timesteps=t.float(), context=context, transformer_options={})
    weight = (1 + sigmas[t] ** 2).sqrt()
    return (weight * (out - noise).pow(2).mean(dim=(1, 2, 3))).mean() / weight.mean()


SETUPS = {
    "flux": dict(build=lambda: models.flux(seed=0, **models.FLUX_TRAINED), loss=flux_loss,
                 side=models.FLUX_TRAINED_PIXELS, channels=pixel_latents.FLUX_CHANNELS, name="flux_small",
                 settings=models.FLUX_TRAINED),
    "sd": dict(build=lambda: models.sd_unet_small(seed=0, **models.SD_TRAINED), loss=unet_loss,
               side=models.SD_TRAINED_PIXELS, channels=pixel_latents.SD_CHANNELS, name="sd_unet_small",
               settings=models.SD_TRAINED),
}


def update(dm, optimizer, loss, ema: dict, step: int) -> None:
    """One optimizer step on `loss` (gradients clipped to norm 1), then the EMA of the weights,
    whose decay warms up to 0.999."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(dm.parameters(), 1.0)
    optimizer.step()
    with torch.no_grad():
        decay = min(0.999, (1 + step) / (10 + step))
        for k, v in dm.state_dict().items():
            ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)


def train(kind: str, minutes: float, batch: int, lr: float, seed: int, max_iterations: int) -> Path:
    setup = SETUPS[kind]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = setup["build"]()
    dm = model.model.diffusion_model
    dm.train()
    ema = {k: v.detach().clone() for k, v in dm.state_dict().items()}
    optimizer = torch.optim.AdamW(dm.parameters(), lr=lr, weight_decay=0.01)
    photos = load_photographs(setup["side"])
    deadline = time.monotonic() + minutes * 60
    step, losses = 0, []
    while time.monotonic() < deadline and step < max_iterations:
        labels = torch.randint(0, len(models.CLASSES), (batch,), generator=gen)
        x0 = pixel_latents.encode(random_crops(photos, labels, setup["side"], gen), setup["channels"])
        dropped = torch.where(torch.rand(batch, generator=gen) < 0.1, torch.full_like(labels, -1), labels)
        context, pooled = conditioning_batch(model, dropped)
        progress = min((time.monotonic() - (deadline - minutes * 60)) / (minutes * 60), 1.0)
        for group in optimizer.param_groups:  # warm-up, then cosine decay over the time budget
            group["lr"] = lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        # ComfyUI's blocks update hidden states in place (inference code); keeping
        # copies of what autograd saves makes them trainable unchanged.
        with torch.autograd.graph.saved_tensors_hooks(torch.clone, lambda saved: saved):
            loss = setup["loss"](model, x0, context, pooled, gen)
        update(dm, optimizer, loss, ema, step)
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            print(f"{kind} step {step} loss {sum(losses[-50:]) / 50:.4f}", flush=True)

    import comfy.utils
    models.WEIGHTS.mkdir(exist_ok=True)
    path = models.WEIGHTS / f"{setup['name']}.safetensors"
    metadata = {"seed": str(seed), "iterations": str(step), "batch": str(batch), "lr": str(lr),
                "minutes": str(minutes), "final_loss": f"{sum(losses[-100:]) / max(len(losses[-100:]), 1):.4f}",
                "classes": json.dumps(models.CLASSES), "settings": json.dumps(setup["settings"]),
                "data": "random crops of scikit-image's sample photographs, folded by testbed.pixel_latents"}
    comfy.utils.save_torch_file({k: v.half() for k, v in ema.items()}, str(path), metadata=metadata)
    print(f"saved {path} after {step} iterations: {metadata['final_loss']}")
    return path


def sample_grid(kind: str, steps: int = 28, seeds=(0, 1)) -> Path:
    """Uncached samples, one row per seed, one column per class, through ComfyUI's sampler."""
    import numpy as np
    from PIL import Image
    setup = SETUPS[kind]
    model = models.flux_trained() if kind == "flux" else models.sd_unet_trained()
    side, channels = setup["side"], setup["channels"]
    latent_side = side // 2
    rows = []
    for seed in seeds:
        row = []
        for label in range(len(models.CLASSES)):
            latent = models.sample(model, models.class_conditioning(model, label),
                                   models.class_conditioning(model, -1), steps=steps, cfg=models.TRAINED_CFG,
                                   seed=seed, channels=channels, height=latent_side * 8, width=latent_side * 8)
            rgb = pixel_latents.decode(model.model.process_latent_in(latent))[0]
            row.append(pixel_latents.to_uint8(rgb))
        rows.append(np.concatenate(row, axis=1))
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    grid = grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST)
    path = REPO / "docs" / f"trained_{setup['name']}_samples.png"
    path.parent.mkdir(exist_ok=True)
    grid.save(path)
    print(f"wrote {path}")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SETUPS), required=True)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--max-iterations", type=int, default=10**9)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid-only", action="store_true", help="only sample the grid from saved weights")
    args = parser.parse_args(argv)
    host.boot()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    if not args.grid_only:
        train(args.model, args.minutes, args.batch, args.lr, args.seed, args.max_iterations)
    sample_grid(args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
