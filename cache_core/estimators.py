"""Estimators: what a skipped unit hands on instead of being computed. Each is a pure function of
the points kept at the unit's computed steps, `(t, value)` oldest first, and the `t` to estimate at.

`t` is the step's noise level sigma, the sampler's own time, not the step index: schedulers space
their steps unevenly (simple, karras, beta, shifted flow schedules), so equal index steps are not
equal moves along the sampling path; a network's output is a smooth function of the noise level it
is given; and samplers that evaluate the model between schedule points (Heun, DPM++ 2S) need
estimates at sigmas that have no step index of their own.
"""
from __future__ import annotations

import math
from typing import Optional

import torch


def reuse(points: list, t: float):
    """The value at the last computed step (what every method did before forecasting)."""
    return points[-1][1]


def taylor(points: list, t: float, order: int = 1):
    """TaylorSeer's forecast in sigma: the polynomial through the last `order` + 1 points (Newton's
    divided differences, so uneven steps are exact), evaluated at t. Exact on polynomials of degree
    <= order; with fewer points (the run's first computed steps) it uses as many as there are."""
    if order < 0:
        raise ValueError(f"order must be >= 0, got {order}")
    last = _distinct(points)[-(order + 1):]
    ts = [p for p, _ in last]
    table = [v for _, v in last]
    for level in range(1, len(last)):  # in place, highest index first: table[i - 1] is still one level down
        for i in range(len(last) - 1, level - 1, -1):
            table[i] = (table[i] - table[i - 1]) / (ts[i] - ts[i - level])
    value = table[-1]
    for i in range(len(last) - 2, -1, -1):
        value = table[i] + (t - ts[i]) * value
    return value


def chebyshev(points: list, t: float, degree: int = 4, ridge: float = 0.1, domain: Optional[tuple] = None):
    """Spectrum's global fit: every element of the value fitted over all points by a Chebyshev series
    T_0..T_degree of t mapped onto [-1, 1] over `domain` (default: the points' span), least squares
    with a ridge penalty on the coefficients; its value at t. Exact on polynomials of degree <= degree
    when `ridge` is 0 and there are degree + 1 distinct points (fewer: the degree drops to fit)."""
    distinct = _distinct(points)
    ts = torch.tensor([p for p, _ in distinct], dtype=torch.float64)
    low, high = domain if domain is not None else (float(ts.min()), float(ts.max()))
    width = (high - low) or 1.0
    degree = min(degree, len(distinct) - 1)
    basis = chebyshev_basis((2 * (ts - low) / width - 1), degree)                  # [points, degree + 1]
    values = torch.stack([v.reshape(-1) for _, v in distinct]).to(torch.float64)   # [points, elements]
    normal = basis.T @ basis + ridge * torch.eye(degree + 1, dtype=torch.float64)
    coefficients = torch.linalg.solve(normal, basis.T @ values)
    at = chebyshev_basis(torch.tensor([2 * (t - low) / width - 1], dtype=torch.float64), degree)
    like = distinct[-1][1]
    return (at @ coefficients).reshape(like.shape).to(like.dtype)


def spectrum(points: list, t: float, weight: float = 0.5, degree: int = 4, ridge: float = 0.1, order: int = 1):
    """Spectrum's blend: `weight` of the global Chebyshev fit, the rest a local Taylor forecast."""
    return weight * chebyshev(points, t, degree, ridge) + (1 - weight) * taylor(points, t, order)


def chebyshev_basis(x: torch.Tensor, degree: int) -> torch.Tensor:
    """[len(x), degree + 1]: T_k(x) by the recurrence T_{k+1} = 2 x T_k - T_{k-1}."""
    columns = [torch.ones_like(x), x][:degree + 1]
    while len(columns) < degree + 1:
        columns.append(2 * x * columns[-1] - columns[-2])
    return torch.stack(columns, dim=1)


def _distinct(points: list) -> list:
    """The points with one value per t (a later point at the same t replaces the earlier one)."""
    kept = []
    for t, value in points:
        if kept and math.isclose(kept[-1][0], t, rel_tol=1e-9, abs_tol=1e-12):
            kept[-1] = (t, value)
        else:
            kept.append((t, value))
    return kept


# name -> (estimator, how many points it keeps per quantity; None: all of the run's)
ESTIMATORS = {
    "reuse": (reuse, 1),
    "taylor1": (lambda points, t: taylor(points, t, 1), 2),
    "taylor2": (lambda points, t: taylor(points, t, 2), 3),
    "spectrum": (spectrum, None),
}
