"""Estimators of skipped values (cache_core/estimators.py): pure functions of (sigma, value) points."""
import pytest
import torch

from comfyui_duca.cache_core.estimators import ESTIMATORS, chebyshev, chebyshev_basis, reuse, spectrum, taylor

SIGMAS = [1.0, 0.93, 0.81, 0.62, 0.4]  # uneven, decreasing: as a sampler's schedule is


def points_of(poly, sigmas=SIGMAS, shape=(2, 3)):
    """(sigma, value) points of an element-wise polynomial of sigma with a different scale per element."""
    scale = torch.arange(1, 1 + torch.tensor(shape).prod().item(), dtype=torch.float64).reshape(shape)
    return [(s, scale * poly(s)) for s in sigmas], scale


def test_reuse_hands_on_the_last_value():
    points, _ = points_of(lambda s: s)
    assert torch.equal(reuse(points, 0.1), points[-1][1])


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_taylor_is_exact_on_polynomials_of_its_order_in_sigma(order):
    coefficients = [0.3, -1.2, 2.0, 0.7][:order + 1]

    def poly(s):
        return sum(c * s ** k for k, c in enumerate(coefficients))
    points, scale = points_of(poly)
    for t in (0.25, 0.0, 0.5):  # ahead of the last point, at the end of the run, between points
        torch.testing.assert_close(taylor(points, t, order), scale * poly(t), rtol=1e-9, atol=1e-9)


def test_taylor_of_a_lower_order_misses_a_higher_degree():
    points, scale = points_of(lambda s: s ** 2)
    assert not torch.allclose(taylor(points, 0.2, 1), scale * 0.2 ** 2, atol=1e-3)
    torch.testing.assert_close(taylor(points, 0.2, 2), scale * 0.2 ** 2)


def test_taylor_uses_only_the_last_points_and_what_there_is():
    points, scale = points_of(lambda s: 3 * s)
    broken = [(points[0][0], points[0][1] * 100)] + points[1:]  # far in the past: not among the last 2
    torch.testing.assert_close(taylor(broken, 0.2, 1), scale * 0.6)
    assert torch.equal(taylor(points[:1], 0.2, 2), points[0][1])  # one point: reuse


def test_a_repeated_sigma_counts_once():
    points, scale = points_of(lambda s: 2 * s - 1)
    doubled = points + [(points[-1][0], points[-1][1])]  # the next step starts where a multi-step eval ended
    torch.testing.assert_close(taylor(doubled, 0.1, 2), scale * (2 * 0.1 - 1))


@pytest.mark.parametrize("degree", [1, 2, 4])
def test_chebyshev_is_exact_on_polynomials_of_its_degree_without_ridge(degree):
    def poly(s):
        return sum((k + 1) * (-0.5) ** k * s ** k for k in range(degree + 1))
    sigmas = [1.0, 0.9, 0.8, 0.65, 0.5, 0.38, 0.25][:max(degree + 2, 3)]
    points, scale = points_of(poly, sigmas)
    for t in (0.3, 0.1):
        torch.testing.assert_close(chebyshev(points, t, degree, ridge=0.0), scale * poly(t), rtol=1e-7, atol=1e-7)


def test_chebyshev_ridge_shrinks_the_fit_and_keeps_dtype_and_shape():
    points, scale = points_of(lambda s: s ** 3)
    points32 = [(s, v.float()) for s, v in points]
    exact, shrunk = chebyshev(points32, 0.3, 3, ridge=0.0), chebyshev(points32, 0.3, 3, ridge=10.0)
    assert exact.dtype == torch.float32 and exact.shape == (2, 3)
    assert (shrunk - scale * 0.3 ** 3).abs().max() > (exact - scale * 0.3 ** 3).abs().max()


def test_spectrum_blends_the_global_fit_with_the_local_forecast():
    points, _ = points_of(lambda s: torch.sin(torch.tensor(4 * s, dtype=torch.float64)).item())
    blend = spectrum(points, 0.3, weight=0.25)
    torch.testing.assert_close(blend, 0.25 * chebyshev(points, 0.3) + 0.75 * taylor(points, 0.3, 1))


def test_chebyshev_basis_follows_the_recurrence():
    x = torch.linspace(-1, 1, 7, dtype=torch.float64)
    basis = chebyshev_basis(x, 3)
    torch.testing.assert_close(basis[:, 2], 2 * x ** 2 - 1)
    torch.testing.assert_close(basis[:, 3], 4 * x ** 3 - 3 * x)


def test_each_named_estimator_keeps_no_more_points_than_it_uses():
    points, scale = points_of(lambda s: 1 + s)
    for name, (estimate, history) in ESTIMATORS.items():
        kept = points[-history:] if history else points
        torch.testing.assert_close(estimate(kept, 0.2), estimate(points, 0.2), msg=name)
    assert ESTIMATORS["reuse"][1] == 1 and ESTIMATORS["taylor1"][1] == 2 and ESTIMATORS["taylor2"][1] == 3
