"""The pixel codec the small trained models use in place of a VAE is exact."""
import torch

from testbed import pixel_latents


def test_flux_layout_round_trips_rgb():
    rgb = torch.rand(2, 3, 16, 24) * 2 - 1
    latent = pixel_latents.encode(rgb, pixel_latents.FLUX_CHANNELS)
    assert latent.shape == (2, 16, 8, 12)
    assert torch.equal(latent[:, 12:], torch.zeros(2, 4, 8, 12))
    assert torch.allclose(pixel_latents.decode(latent), rgb, atol=1e-6)


def test_sd_layout_round_trips_grey_and_separates_detail():
    rgb = torch.rand(2, 3, 16, 16) * 2 - 1
    grey = rgb.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    latent = pixel_latents.encode(rgb, pixel_latents.SD_CHANNELS)
    assert latent.shape == (2, 4, 8, 8)
    assert torch.allclose(pixel_latents.decode(latent), grey, atol=1e-6)
    flat = torch.ones(1, 3, 16, 16) * 0.5  # a flat picture has no detail: only the average channel
    detail = pixel_latents.encode(flat, pixel_latents.SD_CHANNELS)[:, 1:]
    assert detail.abs().max() < 1e-6
