"""What every user can already do at the same cost, for the bench to compare against: fewer
sampling steps, and a plain forecast of the denoised prediction (compute every k-th step, in
between extrapolate the sampler's denoised output linearly in sigma from the last two computed
steps; order 0 reuses it), or the reuse of the model's residual (denoised - input, handed on with
the skipped step's input). None uses the pack's methods."""
from __future__ import annotations

import dataclasses

from comfyui_duca.cache_core.estimators import taylor
from comfyui_duca.cache_core.plan import step_index

FIRST_FULL_STEPS = 3


class DenoisedForecast:
    """PREDICT_NOISE wrapper (the sampler's denoised output, after cfg) and OUTER_SAMPLE wrapper
    (the run's sigmas); state lives for one sampling run."""

    def __init__(self, every: int, order: int = 1, residual: bool = False):
        self.every, self.order, self.residual = every, order, residual
        self.sigmas, self.points, self.computed = None, [], 0

    def outer_sample(self, executor, *args, **kwargs):
        sigmas = kwargs["sigmas"] if "sigmas" in kwargs else args[3]
        self.sigmas, self.points, self.computed = [float(s) for s in sigmas], [], 0
        return executor(*args, **kwargs)

    def predict_noise(self, executor, x, timestep, *args, **kwargs):
        sigma = float(timestep.flatten()[0])
        step = step_index(self.sigmas, sigma)
        anchor = FIRST_FULL_STEPS - 1
        if step < FIRST_FULL_STEPS or (step - anchor) % self.every == 0 or not self.points:
            denoised = executor(x, timestep, *args, **kwargs)
            self.points = (self.points + [(sigma, denoised - x if self.residual else denoised)])[-2:]
            self.computed += 1
            return denoised
        forecast = taylor(self.points, sigma, self.order)
        return x + forecast if self.residual else forecast


def denoised_forecast(base, every: int, order: int = 1, residual: bool = False):
    """(patched model, its forecast state) for one baseline setting."""
    import comfy.patcher_extension as ext
    forecast = DenoisedForecast(every, order, residual)
    model = base.clone()
    model.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, "bench_denoised_forecast", forecast.outer_sample)
    model.add_wrapper_with_key(ext.WrappersMP.PREDICT_NOISE, "bench_denoised_forecast", forecast.predict_noise)
    return model, forecast


def fewer_steps(work, steps: int, sampler: str = "euler"):
    """The same workload sampled at `steps` steps with `sampler` (one model call per step)."""
    return dataclasses.replace(work, steps=steps, sampler=sampler)
