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


def test_sd_layout_scales_each_channel_to_its_own_spread():
    # one pure pattern per Haar channel: each lands alone in its channel, divided by that channel's std
    patterns = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0],
                             [1.0, -1.0, -1.0, 1.0]]) * 0.25
    for channel, cell in enumerate(patterns):
        grey = cell.view(1, 1, 2, 2).repeat(1, 1, 4, 4)  # 8x8 picture of 2x2 cells
        latent = pixel_latents.encode(grey.expand(-1, 3, -1, -1), pixel_latents.SD_CHANNELS)
        expected = torch.zeros(4)
        expected[channel] = 0.5 / pixel_latents.SD_CHANNEL_STD[channel]  # orthonormal Haar of the cell: 2 x 0.25
        assert torch.allclose(latent[0, :, 0, 0], expected, atol=1e-6)
        assert torch.allclose(pixel_latents.decode(latent), grey.expand(-1, 3, -1, -1), atol=1e-6)
