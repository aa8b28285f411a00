"""The evaluation harness (bench/): end to end on --quick, and its metrics on known inputs."""
import json
import math

import pytest
import torch
from PIL import Image

from bench import metrics

METHODS = ["no cache", "every-2", "every-3", "every-4", "EasyCache default", "LazyCache default",
           "DuCa quality", "DuCa balanced", "DuCa fast"]


def picture(seed=0, size=64):
    """A smooth RGB picture in [-1, 1]: gradients plus a few blobs."""
    gen = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    channels = []
    for _ in range(3):
        a, b, cx, cy = (torch.rand(4, generator=gen) * 2 - 1).tolist()
        channels.append(0.4 * a * x + 0.4 * b * y + 0.5 * torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) * 8))
    return torch.stack(channels)[None].clamp(-1, 1)


def test_quick_run_end_to_end(pack, tmp_path):
    from bench import run
    assert run.main(["--quick", "--out", str(tmp_path), "--no-progress"]) == 0

    def no_constants(name):
        raise AssertionError(f"{name} in results.json")
    data = json.loads((tmp_path / "results.json").read_text(), parse_constant=no_constants)
    rows = {r["method"]: r for r in data["results"]}
    for name in METHODS:
        assert name in rows and rows[name]["supported"], name
    assert any(name.startswith("EasyCache matched") for name in rows)
    assert any(name.startswith("LazyCache matched") for name in rows)
    for name, row in rows.items():
        for key in ("speedup", "speedup_best", "s_per_sample", "compute_fraction", "rel_l2", "machine_gflops"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (name, key)
        assert 0 < row["compute_fraction"] <= 1
        assert len(row["cases"]) == len(data["setup"]["cases"]) == 2
    for name in ("every-2", "DuCa balanced", "DuCa fast"):  # they reuse, so they differ from no cache
        for key in ("psnr_picture", "ssim_picture", "psnr_latent"):
            assert math.isfinite(rows[name][key]), (name, key)
        assert rows[name]["compute_fraction"] < 1 and rows[name]["cache_bytes"] > 0
    assert rows["no cache"]["psnr_picture"] is None  # identical: infinite, stored as null
    assert rows["no cache"]["ssim_picture"] == 1.0
    assert "| DuCa balanced |" in (tmp_path / "results.md").read_text()
    for png in ("speed_vs_fidelity.png", "grid.png"):
        with Image.open(tmp_path / png) as image:
            assert image.width > 100 and image.height > 100


def test_identical_pictures():
    p = picture()
    assert metrics.psnr(p, p, metrics.PICTURE_RANGE) == math.inf
    assert metrics.ssim(p, p) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("sigma", [0.02, 0.1])
def test_psnr_of_known_noise(sigma):
    p = picture(size=256)
    noisy = p + sigma * torch.randn(p.shape, generator=torch.Generator().manual_seed(1))
    expected = 20 * math.log10(metrics.PICTURE_RANGE / sigma)
    assert metrics.psnr(noisy, p, metrics.PICTURE_RANGE) == pytest.approx(expected, abs=0.2)


def test_ssim_of_shifted_and_noisy_copies():
    p = picture()
    shifted = torch.roll(p, shifts=(2, 3), dims=(-2, -1))
    noisy = p + 0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2))
    for other in (shifted, noisy):
        assert 0 < metrics.ssim(other, p) < 1
    assert metrics.ssim(noisy, p) < metrics.ssim(p + 0.3 * (noisy - p), p)  # more noise, lower SSIM


def test_ssim_matches_scikit_image():
    skimage = pytest.importorskip("skimage.metrics")
    p = picture()
    noisy = p + 0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3))
    theirs = skimage.structural_similarity(noisy[0].double().numpy(), p[0].double().numpy(), channel_axis=0,
                                           data_range=2.0, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False)
    assert metrics.ssim(noisy, p) == pytest.approx(theirs, abs=1e-6)


def test_latent_metrics():
    ref = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(4))
    assert metrics.rel_l2(ref, ref) == 0 and metrics.latent_psnr(ref, ref) == math.inf
    assert metrics.rel_l2(ref * 1.1, ref) == pytest.approx(0.1)


def test_the_denoised_forecast_baseline_computes_every_kth_step_and_forecasts_between(pack, flux, flux_conds):
    """Computing every step it is the uncached sampler exactly; every 3rd, it runs the first 3 steps
    and every 3rd after, and its in-between steps are a forecast, not the model's."""
    from bench.baselines import denoised_forecast
    from testbed import models
    steps = 10
    reference = models.sample(flux, *flux_conds, steps=steps, cfg=2.0, height=32, width=32)
    everything, state = denoised_forecast(flux, every=1)
    assert torch.equal(models.sample(everything, *flux_conds, steps=steps, cfg=2.0, height=32, width=32), reference)
    assert state.computed == steps
    outs = {}
    for order in (0, 1):
        model, state = denoised_forecast(flux, every=3, order=order)
        outs[order] = models.sample(model, *flux_conds, steps=steps, cfg=2.0, height=32, width=32)
        assert state.computed == 5  # steps 0, 1, 2, 5, 8
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], reference)
