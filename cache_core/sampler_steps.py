"""How a deterministic sampler's step moves the sample, as an affine function of what it is handed.

A step from sigma_i to sigma_{i+1} computes `x_next = keep x + now D + before D_prev`, with D the
denoised output the model call of this step handed on and D_prev the one of the step before (the
history a multistep sampler holds). The gap correction replays a gap of forecast steps with these
coefficients, and solves the step that ends it for the output that lands where it should.

The coefficients follow k-diffusion's samplers as ComfyUI runs them: in sigma, on the sampler's
sample (x = x0 + sigma n for noise-prediction models; flow models run the same formulas on their
own sigma). Samplers not listed here are not corrected (their run notes say so).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Sequence


@dataclass(frozen=True)
class LinearStep:
    keep: float    # per unit of the sample
    now: float     # per unit of this step's denoised output
    before: float  # per unit of the previous step's (0 for one-step methods)

    def __call__(self, x, denoised, previous=None):
        moved = self.keep * x + self.now * denoised
        return moved if self.before == 0 or previous is None else moved + self.before * previous

    def handed(self, x, landing, previous=None):
        """The denoised output that makes this step from `x` land on `landing`."""
        rest = landing - self.keep * x
        if self.before != 0 and previous is not None:
            rest = rest - self.before * previous
        return rest / self.now


def euler(sigmas: Sequence[float], i: int) -> LinearStep:
    """x + (s' - s) (x - D) / s."""
    ratio = sigmas[i + 1] / sigmas[i]
    return LinearStep(ratio, 1.0 - ratio, 0.0)


def dpmpp_2m(sigmas: Sequence[float], i: int) -> LinearStep:
    """DPM-Solver++(2M): (s'/s) x + (1 - s'/s) D_d, D_d = (1 + 1/2r) D - 1/2r D_prev with r the ratio
    of the last log-sigma step to this one; the first step and the step to 0 take D alone."""
    ratio = sigmas[i + 1] / sigmas[i]
    if i == 0 or sigmas[i + 1] == 0:
        return LinearStep(ratio, 1.0 - ratio, 0.0)
    r = math.log(sigmas[i - 1] / sigmas[i]) / math.log(sigmas[i] / sigmas[i + 1])
    return LinearStep(ratio, (1.0 - ratio) * (1 + 1 / (2 * r)), -(1.0 - ratio) / (2 * r))


class Sampler(NamedTuple):
    step: Callable[[Sequence[float], int], LinearStep]  # (sigmas, i) -> the step from sigma_i
    keeps_history: bool  # whether its steps read the previous step's output (before != 0)


# by the name of the host sampler's function
STEPS = {"sample_euler": Sampler(euler, False), "sample_dpmpp_2m": Sampler(dpmpp_2m, True)}


def linear_steps(sampler_function: str) -> Optional[Sampler]:
    return STEPS.get(sampler_function)
