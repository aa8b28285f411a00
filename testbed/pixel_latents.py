"""An exact, invertible stand-in for a VAE: pictures folded into latent channels.

No VAE can be downloaded here, so the small trained models work on pictures
folded into the latent layout their ComfyUI class expects:
- Flux's 16 channels hold a 2x2 space-to-depth of RGB (12 channels) plus 4 zero
  channels;
- the SD U-Net's 4 channels hold a one-level Haar transform of the luminance
  (grey pictures, a quarter of the positions: a U-Net's cost grows with them):
  the 2x2 average and three 2x2 differences. Like a VAE's channels they are
  decorrelated, so a model's errors in the small detail channels stay small in
  the picture; a plain space-to-depth turns independent channel errors into a
  checkerboard. Each channel is scaled to about unit variance on the training
  crops, as SD's VAE latents are per channel: the detail channels of photographs
  are 5-11x smaller than the average, and with one global scale a model's error
  there (as large as in the average channel) decodes as a 2x2 texture; an epsilon
  model's error at high noise is multiplied by sigma, so data far below unit
  variance come out noisy.
Values are in model space (what `latent_format.process_in` returns), RGB in [-1, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

FLUX_CHANNELS = 16
SD_CHANNELS = 4
# std of each Haar channel (average, three differences) of the SD training crops,
# measured once on 1200 crops; dividing by it makes each channel about unit variance
SD_CHANNEL_STD = torch.tensor([0.81, 0.16, 0.16, 0.071])
# 2x2 cell (top-left, top-right, bottom-left, bottom-right) -> average and differences; orthonormal
HAAR = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0],
                     [1.0, -1.0, -1.0, 1.0]]) / 2


def encode(rgb: torch.Tensor, channels: int) -> torch.Tensor:
    """[batch, 3, H, W] in [-1, 1] -> model-space latent."""
    if channels == FLUX_CHANNELS:
        folded = F.pixel_unshuffle(rgb, 2)
        return torch.cat((folded, torch.zeros_like(folded[:, :4])), dim=1)
    if channels == SD_CHANNELS:
        cells = F.pixel_unshuffle(rgb.mean(dim=1, keepdim=True), 2)
        return torch.einsum("oc,bchw->bohw", HAAR.to(cells), cells) / SD_CHANNEL_STD.to(cells).view(1, -1, 1, 1)
    raise ValueError(f"no pixel latent layout for {channels} channels")


def decode(latent: torch.Tensor) -> torch.Tensor:
    """Model-space latent -> [batch, 3, H, W] in [-1, 1]."""
    if latent.shape[1] == FLUX_CHANNELS:
        return F.pixel_shuffle(latent[:, :12], 2).clamp(-1, 1)
    if latent.shape[1] == SD_CHANNELS:
        haar = latent * SD_CHANNEL_STD.to(latent).view(1, -1, 1, 1)
        cells = torch.einsum("co,bchw->bohw", HAAR.to(latent), haar)  # HAAR is its own inverse
        return F.pixel_shuffle(cells, 2).expand(-1, 3, -1, -1).clamp(-1, 1)
    raise ValueError(f"no pixel latent layout for {latent.shape[1]} channels")


def to_uint8(rgb: torch.Tensor):
    """[3, H, W] in [-1, 1] -> H x W x 3 uint8 array."""
    return ((rgb.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
