"""Correcting a gap of forecast steps once the step after it has computed (Euler, DPM++ 2M).

While steps are skipped, the sampler moves the sample with forecast values: extrapolations past
the last computed step. When the next step computes, the value is known on both sides of the gap,
so the skipped steps can be estimated again by interpolation, which is much closer than
extrapolation. The gap is replayed with those estimates through the sampler's own step
(cache_core.sampler_steps), and the computed step hands on the output that lands the sampler
where it would have stepped from the replayed sample.

The computed value itself was evaluated at the drifted sample. It is moved to the corrected
sample by the noise sensitivity of the ideal denoiser of data with a Gaussian spread (`data_std`):
for x = a x0 + b n, dn/dx = b / (a^2 data_std^2 + b^2), which is 1 / b at high noise (the noise
estimate follows the sample) and 0 at low noise (it has settled). The replayed sample depends on
that moved value and the moved value on the sample; both are linear, so it is solved in closed form.

Values are the implied noise n, kept as (t, value) points by the forecast; all functions are pure.
"""
from __future__ import annotations

from .estimators import taylor

INTERPOLANT_ORDER = 2   # the re-estimate: the polynomial through the new point and the two before it
# The data spread of the sensitivity model: the latent formats scale latents to about unit spread,
# and x0 estimates spread less; chosen on held-out seeds (bench/RESULTS.md, "How the presets'
# settings were chosen").
DATA_STD = 0.5
# Under classifier-free guidance the sampler follows a sharpened distribution whose denoised output
# barely moves with the sample: spread 0, the noise estimate follows the sample (dn/dx = 1 / b)
# (bench/RESULTS.md, "Under guidance (cfg)").
GUIDED_DATA_STD = 0.0


def replay_gap(start, held, gap: list, before: list, new: tuple, sample, sensitivity: float):
    """A gap of forecast steps replayed with the interpolated re-estimates instead of the forecasts.

    `start`: the sample at the gap's first step (exact: the step before it computed); `held`: the
    denoised output the sampler held entering the gap (None for one-step samplers); `gap`: per
    skipped step, (t, step, to_denoised) with `step` its sampler_steps.LinearStep and
    `to_denoised(x, value)` the forecast space's map at that step; `before`: the points the
    forecasts came from; `new`: (t, value) of the computed step that ends the gap, evaluated at
    `sample`. The value is moved to the replayed sample by `sensitivity` (dvalue/dx).

    Returns (the corrected sample at the computed step, its value there, the last replayed
    denoised output: what the sampler would hold)."""
    t_new, value = new

    def replay(start, held, before, value):
        through = (list(before) + [(t_new, value)])[-(INTERPOLANT_ORDER + 1):]
        x, previous = start, held
        for t, step, to_denoised in gap:
            denoised = to_denoised(x, taylor(through, t, len(through) - 1))
            x, previous = step(x, denoised, previous), denoised
        return x, previous

    # The replay is affine in the new value with a scalar slope (every map in it is), and the value
    # at the corrected sample is value + sensitivity (corrected - sample): solved in closed form.
    plain, last = replay(start, held, before, value)
    zero = 0.0
    slope, last_slope = replay(zero, None if held is None else zero, [(t, zero) for t, _ in before], 1.0)
    gain = sensitivity * float(slope)
    if abs(1.0 - gain) < 1e-3:  # the model's answer would be unbounded: leave the value where it was
        return plain, value, last
    corrected = (plain - gain * sample) / (1.0 - gain)
    moved_by = sensitivity * (corrected - sample)
    return corrected, value + moved_by, last + float(last_slope) * moved_by
