"""Where the whole-step forecast extrapolates: the sampler's sample is `x = a(sigma) x0 + b(sigma) n`
(a = 1 - sigma, b = sigma for flow models; a = 1, b = sigma for noise- and v-prediction models in the
sampler's space). A model call hands on its denoised output x0; the forecast runs on the noise it
implies, n = (x - a x0) / b, and turns the forecast back into a denoised output with the sample of the
skipped step.

Why the noise and not x0: x0 still moves fast where the noise estimate has settled, and the sample of
the skipped step, which is exact, takes part in the estimate; it was closer to the uncached picture
(bench/RESULTS.md, "Estimators").
"""
from __future__ import annotations

import math

import torch

SMALLEST_SIGNAL = 1e-4  # a(sigma) below this (a flow model at sigma 1): x0 can't be recovered, compute


def to_noise(x: torch.Tensor, denoised: torch.Tensor, a: float, b: float) -> torch.Tensor:
    return (x - a * denoised) / b


def from_noise(x: torch.Tensor, noise: torch.Tensor, a: float, b: float) -> torch.Tensor:
    return (x - b * noise) / a


def recoverable(a: float, b: float) -> bool:
    """Whether a step at these coefficients can be forecast in noise space."""
    return abs(a) >= SMALLEST_SIGNAL and b > 0


class SampleSpace:
    """Where a step's denoised output D is forecast, as an affine function of the sample:
    D = follows x + scale v, with v the value forecast across steps (independent of the sample).

    `spread` is the data spread of the ideal Gaussian-data denoiser the space assumes: the forecast
    moves with the sample as that denoiser does (dD/dx = a spread^2 / (a^2 spread^2 + b^2)). An
    infinite spread is the implied noise (D = (x - b n) / a, the noise-space forecast); 0 is the
    denoised output itself (it does not move with the sample). In between, a sampler's injected
    noise moves the forecast as it moves the denoiser, and the value carried across steps is the
    part of the noise estimate the sample does not explain: v = n - s x (s = dn/dx of that denoiser).
    """

    def __init__(self, spread: float = math.inf):
        self.spread = spread

    def follows(self, a: float, b: float) -> float:
        """dn/dx of that denoiser: 0 at an infinite spread, 1 / b at 0."""
        return 0.0 if math.isinf(self.spread) else b / (a * a * self.spread * self.spread + b * b)

    def to_value(self, x: torch.Tensor, denoised: torch.Tensor, a: float, b: float) -> torch.Tensor:
        if self.spread == 0:
            return denoised
        value = to_noise(x, denoised, a, b)
        follows = self.follows(a, b)
        return value - follows * x if follows else value

    def to_denoised(self, x: torch.Tensor, value: torch.Tensor, a: float, b: float) -> torch.Tensor:
        if self.spread == 0:
            return value
        follows = self.follows(a, b)
        return from_noise(x, value + follows * x if follows else value, a, b)

    def sensitivity(self, a: float, b: float, data_std: float) -> float:
        """dvalue/dx of a model that moves as the Gaussian-data denoiser of spread `data_std` does."""
        if self.spread == 0:
            return a * data_std * data_std / (a * a * data_std * data_std + b * b)
        return SampleSpace(data_std).follows(a, b) - self.follows(a, b)
