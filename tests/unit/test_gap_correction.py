"""The gap correction: what a gap of forecast steps moved Euler's sample by, handed back at the
step that ends it."""
import math

import pytest
import torch

from cache_core.estimators import taylor
from cache_core.gap_correction import gap_drift, handed_on, noise_sensitivity, skip_weight

SIGMAS = [1.0, 0.86, 0.72, 0.6, 0.47, 0.35, 0.24, 0.14, 0.0]


def noise_at(sigma):  # a smooth noise estimate of degree 2 in sigma, the same at any sample
    return torch.tensor([0.3 - 0.8 * sigma + 0.5 * sigma ** 2, 1.2 * sigma ** 2], dtype=torch.float64)


def euler(x, sigma, following, noise):  # x = x0 + sigma n (a = 1, b = sigma): x0 = x - sigma n
    denoised = x - sigma * noise
    return x + (following - sigma) * (x - denoised) / sigma


def full_run(x):
    for sigma, following in zip(SIGMAS, SIGMAS[1:]):
        x = euler(x, sigma, following, noise_at(sigma))
    return x


def run_with_gap(x, computed, correct):
    points, skipped = [], []
    for step, (sigma, following) in enumerate(zip(SIGMAS, SIGMAS[1:])):
        if step in computed:
            noise = noise_at(sigma)
            denoised = x - sigma * noise
            if correct and skipped:
                drift, _ = gap_drift(points, (sigma, noise), skipped, lambda p, t: taylor(p, t, 1), 0.0)
                fixed = x + drift
                denoised = handed_on(x, euler(fixed, sigma, following, noise), sigma, following)
            skipped = []
            points = (points + [(sigma, noise)])[-2:]
        else:
            noise = taylor(points, sigma, 1)
            denoised = x - sigma * noise
            skipped.append((sigma, skip_weight(sigma, following, 1.0, sigma)))
        x = x + (following - sigma) * (x - denoised) / sigma
    return x


def test_corrected_gaps_land_on_the_full_run_when_the_noise_is_quadratic():
    start = torch.tensor([1.5, -0.7], dtype=torch.float64)
    computed = {0, 1, 2, 5, 7}
    uncorrected = run_with_gap(start, computed, correct=False)
    corrected = run_with_gap(start, computed, correct=True)
    reference = full_run(start)
    assert not torch.allclose(uncorrected, reference, atol=1e-6)  # the linear forecast misses the curve
    assert torch.allclose(corrected, reference, atol=1e-12)


def test_skip_weight_is_eulers_step_per_unit_of_noise():
    assert skip_weight(0.5, 0.4, 1.0, 0.5) == pytest.approx(-0.1)  # a = 1, b = sigma: x += dsigma n
    assert skip_weight(0.5, 0.4, 0.5, 0.5) == pytest.approx(-0.2)  # flow: x0 = (x - b n) / a


def test_noise_sensitivity_follows_the_sample_at_high_noise_and_settles_at_low():
    assert noise_sensitivity(1.0, 80.0) == pytest.approx(1 / 80.0, rel=1e-3)
    assert noise_sensitivity(1.0, 0.01, data_std=1.0) == pytest.approx(0.01, rel=1e-3)
    assert noise_sensitivity(0.5, 0.5, data_std=1.0) == pytest.approx(0.5 / (0.25 + 0.25))
    assert noise_sensitivity(1.0, 0.01, data_std=0.5) == pytest.approx(0.01 / 0.25, rel=1e-3)


def test_with_no_data_spread_the_noise_follows_the_sample_at_every_level():
    """Spread 0 (guided runs): the denoised output does not move with the sample, x = a x0 + b n."""
    for a, b in ((1.0, 80.0), (1.0, 0.01), (0.3, 0.7)):
        assert noise_sensitivity(a, b, data_std=0.0) == pytest.approx(1 / b)


def test_the_moved_value_and_the_drift_agree():
    """Solved together: the drift re-estimated with the moved value, at no sensitivity, is the same."""
    before = [(0.9, torch.tensor([0.2, 0.1])), (0.7, torch.tensor([0.4, -0.3]))]
    new = (0.4, torch.tensor([0.9, 0.5]))
    skipped = [(0.6, skip_weight(0.6, 0.5, 1.0, 0.6)), (0.5, skip_weight(0.5, 0.4, 1.0, 0.5))]
    forecast = lambda p, t: taylor(p, t, 1)  # noqa: E731
    drift, moved = gap_drift(before, new, skipped, forecast, 0.8)
    plain, _ = gap_drift(before, new, skipped, forecast, 0.0)
    again, _ = gap_drift(before, (new[0], moved), skipped, forecast, 0.0)
    assert not torch.allclose(drift, plain)
    assert torch.allclose(again, drift, atol=1e-6)
    assert torch.allclose(moved, new[1] + 0.8 * drift)


def test_handed_on_output_makes_eulers_step_land_where_asked():
    x, wanted = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.5])
    out = handed_on(x, wanted, 0.6, 0.45)
    assert torch.allclose(x + (0.45 - 0.6) * (x - out) / 0.6, wanted, atol=1e-6)
    assert math.isfinite(float(handed_on(x, wanted, 0.2, 0.0).sum()))
