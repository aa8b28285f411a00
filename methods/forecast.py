"""Whole-step forecast under a compute budget: the pack's presets on every family.

The unit is the model's denoised output of each conditioning, before cfg, so it works on every
family, with or without block hooks: all of a step's conditionings at once where the host wraps its
cond batch (ComfyUI), else per model call (Forge's model function wrapper). Full steps: the model
runs; the noise its output implies (cache_core.noise_space) is kept with its sigma. Skipped steps:
the model is not called; the noise is forecast from the kept points (cache_core.estimators) and
turned back into a denoised output with this step's sample.

Under Euler and DPM++ 2M, each gap of skipped steps is corrected once the step after it computes
(cache_core.gap_correction): the gap is estimated again by interpolation, replayed through the
sampler's own step (cache_core.sampler_steps), and that step hands on what lands the sampler where
it would step from the replayed sample. Under a sampler that adds noise, the forecast moves with
the injected noise (cache_core.noise_space.SampleSpace). Under FEW_STEPS steps, every step computes.

Where the full steps go: round(budget x steps) of them, the first steps always, the rest denser
near the start and the end of sampling (`ends`, measured best), spread evenly (`even`), or placed
as the run goes by the forecast's own measured error (`adaptive`, cache_core.placement). Compute
is counted in model calls: a computed call runs every block and a skipped one none, so the
fraction of calls is the fraction of block compute.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional

import torch

from ..adapters.registry import DEEPCACHE, STEP
from ..cache_core import gap_correction
from ..cache_core.noise_space import SampleSpace, recoverable
from ..cache_core.placement import AdaptiveBudget
from ..cache_core.plan import Action, Plan, StepPlan, StepWindow, budget_plan
from ..cache_core.sampler_steps import STEPS, linear_steps
from ..cache_core.stats import MODEL_CALLS
from ..cache_core.validate import check_choice, check_float, check_int
from .common import MethodSettings
from .protocol import STEP_OUTPUTS, Executor, HostContext

LOG = logging.getLogger("comfyui-duca")

PLACEMENTS = ("ends", "even", "adaptive")
# `ends`: how far the full steps move from even towards cosine spacing (plan.budget_plan): the model's
# output bends most near the start and the end of sampling (bench/RESULTS.md, "Placement").
ENDS = 0.75
SPACES = ("noise", "denoised")  # what is extrapolated: the implied noise (measured best), or x0 itself
# The time it is extrapolated in: sigma where sigma is a flow's own time (x = (1 - sigma) x0 + sigma n,
# bounded by 1), else log(a / b) (DPM-Solver's lambda), for an unbounded noise level (epsilon
# U-Nets, EDM-style schedules such as Cosmos's sigma 0.002-80) (bench/RESULTS.md, "The forecast's
# time axis").
OUTPUT = "step_output"          # kept per group: (sigma, noise or denoised) of its computed steps
GAP = "gap"                     # kept per group: the gap of skipped steps since the last computed one
HELD = "held"                   # kept per group: (step, output handed on, output meant) of the last call
# Samplers that add fresh noise to the sample each step (by the name of their function): the noise a
# step's output implies then jumps between steps. The forecast carries what the sample does not
# explain and moves with the injected noise as the ideal denoiser of data with this spread does
# (cache_core.noise_space.SampleSpace; the gap correction's own model). Measured against forecasting
# the denoised output (spread 0) and the noise (infinite): bench/RESULTS.md, "Samplers that add noise".
NOISY_SPREAD = gap_correction.DATA_STD
ADDS_NOISE = ("ancestral", "sde", "lcm", "ddpm", "seeds", "sa_solver")

# Under this many steps, or under a few-step sampler, a preset computes every step: with guidance,
# skipping any was further from the uncached output than the same sampler at the same number of
# calls (trained small Flux and U-Net; bench/RESULTS.md, "Few steps").
FEW_STEPS = 14
FEW_STEP_SAMPLERS = ("lcm",)
# Block-compute budgets of the presets (bench/RESULTS.md, "Budget presets").
BUDGETS = {"quality": 0.45, "balanced": 0.35, "fast": 0.27, "turbo": 0.20}
# First steps always computed, per preset: on small budgets each of them is a call fewer later on
# (bench/RESULTS.md, "First full steps").
FIRST_FULL_STEPS = {"quality": 3, "balanced": 3, "fast": 1, "turbo": 1}
# A preset's settings where a kind of model measured better otherwise, chosen on held-out seeds: U-Nets'
# fast computes the last step with its full steps nearer even spacing, DiTs' fast leaves its gaps
# uncorrected (bench/RESULTS.md, "How the presets' settings were chosen").
UNET, DIT = "unet", "dit"
MODEL_PRESETS = {UNET: {"fast": dict(last_step_full=True, ends=0.25)},
                 DIT: {"fast": dict(gap_correction=False)}}
# What `auto` forecasts with (bench/RESULTS.md, "Estimators").
FORECAST_ESTIMATOR = "taylor1"


@dataclass(frozen=True)
class ForecastConfig(MethodSettings):
    """Shared settings (common.MethodSettings): first_full_steps (always computed: they set the
    composition), start / end (outside them every step computes, on top of the budget),
    cache_device, estimator (how skipped steps are forecast; auto: FORECAST_ESTIMATOR), preset."""
    budget: float = BUDGETS["balanced"]  # fraction of the steps computed
    placement: str = "ends"              # where the other full steps go (PLACEMENTS)
    ends: float = ENDS                   # `ends` placement: 0 even, 1 cosine spacing
    last_step_full: bool = False         # the last step computes too (within the budget)
    max_skipped: int = 0                 # longest run of skipped steps; 0: twice the even spacing (adaptive)
    space: str = "noise"                 # what is extrapolated (SPACES)
    gap_correction: bool = True          # Euler's method: each gap corrected at the step after it

    PRESET_NAMES = tuple(BUDGETS)

    def __post_init__(self):
        super().__post_init__()
        check_float("budget", self.budget, 0.01, 1.0)
        check_choice("placement", self.placement, PLACEMENTS)
        check_float("ends", self.ends, 0.0, 1.0)
        check_int("max_skipped", self.max_skipped, 0, 1000)
        check_choice("space", self.space, SPACES)

    def check(self, adapter) -> None:
        """Every family can run it: it needs only the model's whole calls."""

    def executor(self, adapter, host: HostContext) -> "OutputForecast":
        return OutputForecast(self.on_model(adapter), adapter, host)

    def preset_settings(self) -> Optional["ForecastConfig"]:
        return FORECAST_PRESETS[self.preset] if self.preset is not None else None

    def measured(self, adapter) -> dict:
        return MODEL_PRESETS[UNET if adapter.level == DEEPCACHE else DIT].get(self.preset, {})

    def measured_estimator(self, adapter) -> str:
        return FORECAST_ESTIMATOR


FORECAST_PRESETS = {name: ForecastConfig(budget=budget, first_full_steps=FIRST_FULL_STEPS[name], preset=name)
                    for name, budget in BUDGETS.items()}


def noise_coefficients_of(sampling, sigmas=()):
    """sigma -> (a, b) with the sampler's sample x = a x0 + b noise, read from a model sampling's
    `noise_scaling(sigma, noise, latent)` (ComfyUI's and Forge's contract); None if it has none."""
    scaling = getattr(sampling, "noise_scaling", None)
    if scaling is None:
        return None
    try:
        return NoiseCoefficients(scaling, sigmas)
    except Exception:  # a sampling with another contract: forecast the denoised output instead
        LOG.warning(
            "DuCa: %s.noise_scaling did not take (sigma, noise, latent); forecasting the denoised output",
            type(sampling).__name__)
        return None


class NoiseCoefficients:
    """(a, b) at each sigma asked, read once: a run's schedule in one call up front (every model
    call asks), any other sigma (a multi-evaluation sampler's) when first asked."""

    def __init__(self, scaling, sigmas=()):
        self.scaling, self.known = scaling, {}
        known = [float(s) for s in sigmas] or [0.5]  # a sampling that can't be read fails here
        self.known.update(zip(known, zip(*self._read(known))))

    def __call__(self, sigma: float) -> tuple:
        found = self.known.get(sigma)
        if found is None:
            (a,), (b,) = self._read([sigma])
            found = self.known[sigma] = (a, b)
        return found

    def _read(self, sigmas: list) -> tuple:
        """([a], [b]) at `sigmas`: as a batch, or one by one for a sampling that reads no batch."""
        n = len(sigmas)
        s = torch.tensor(sigmas, dtype=torch.float64)
        zeros, ones = torch.zeros(n, 1, dtype=torch.float64), torch.ones(n, 1, dtype=torch.float64)
        a, b = self.scaling(s, zeros.clone(), ones.clone()).flatten(), self.scaling(s, ones.clone(), zeros.clone()).flatten()
        if a.numel() != n or b.numel() != n:
            if n == 1:
                raise ValueError(f"noise_scaling gave {a.numel()} values for one sigma")
            return tuple(zip(*(self(sigma) for sigma in sigmas)))
        return a.tolist(), b.tolist()


def sigma_is_flow_time(noise_coefficients: Optional[Callable]) -> bool:
    """Whether the sampling's sigma is a flow's time, x = (1 - sigma) x0 + sigma n (True where the
    host gave no coefficients: sigma is then all there is)."""
    if noise_coefficients is None:
        return True
    a, b = noise_coefficients(0.5)
    return math.isclose(a, 0.5, abs_tol=1e-6) and math.isclose(b, 0.5, abs_tol=1e-6)


def adds_noise(sampler) -> Optional[str]:
    """The name of the host sampler's function if it adds noise as it goes, else None."""
    name = getattr(getattr(sampler, "sampler_function", None), "__name__", "") or ""
    options = getattr(sampler, "extra_options", None) or {}
    if options.get("eta", 1.0) == 0 or options.get("s_noise", 1.0) == 0:
        return None
    return name.removeprefix("sample_") if any(word in name for word in ADDS_NOISE) else None


class OutputForecast(Executor):
    wraps = STEP_OUTPUTS

    def __init__(self, config: ForecastConfig, adapter, host: HostContext):
        """The noise coefficients of the host's model sampling (x = a x0 + b n) say what the denoised
        output implies; a sampling that gives none has the denoised output itself extrapolated, as
        does a sampler that adds noise."""
        super().__init__(adapter, host)
        self.compute_unit = MODEL_CALLS
        noise_coefficients, sampler = noise_coefficients_of(host.sampling, host.known_sigmas), host.sampler
        self.config = config
        self.name = f"forecast {config.preset}" if config.preset else "forecast"
        self.level = STEP
        self.cache_device = config.cache_device
        self.estimator = config.estimator
        noisy = adds_noise(sampler)
        self.log_snr = None if sigma_is_flow_time(noise_coefficients) else noise_coefficients  # the time axis
        self.coefficients = noise_coefficients if config.space == "noise" else None
        # injected noise moves the denoiser as a Gaussian-data one moves (NOISY_SPREAD); else the noise
        self.space = SampleSpace(NOISY_SPREAD if noisy else math.inf)
        self.placement = None
        function = getattr(getattr(sampler, "sampler_function", None), "__name__", "")
        # how the sampler's step moves the sample: its gaps are corrected (None: not corrected)
        sampler_steps = linear_steps(function) if config.gap_correction and self.coefficients is not None and not noisy else None
        self.steps = sampler_steps.step if sampler_steps else None
        self.keeps_history = bool(sampler_steps and sampler_steps.keeps_history)
        self.sampler_name = function.removeprefix("sample_")
        if config.space != "noise":
            self.notes = ()
        elif self.coefficients is None:
            self.notes = ("the host's model sampling gave no noise coefficients: the denoised output is forecast",)
        elif noisy:
            self.notes = (f"{noisy} adds noise every step: the forecast moves with it as the denoiser of data "
                          f"of spread {NOISY_SPREAD} would",)
        elif config.gap_correction and function and self.steps is None:
            self.notes = (f"gaps of forecast steps are corrected under {' and '.join(s.removeprefix('sample_') for s in STEPS)}"
                          f", not under {self.sampler_name}",)
        else:
            self.notes = ()
        self.plan = self._plan(host.num_steps)

    def _plan(self, num_steps: int) -> Plan:
        c = self.config
        few = num_steps < FEW_STEPS or self.sampler_name in FEW_STEP_SAMPLERS
        if few and c.preset is not None:
            why = (f"{self.sampler_name} samples in few steps" if self.sampler_name in FEW_STEP_SAMPLERS
                   else f"{num_steps} steps are too few to skip any (the presets skip from {FEW_STEPS} steps on)")
            self.notes += (f"every step computed: {why}",)
            LOG.info("DuCa: %s: every step computed: %s", self.name, why)
            return Plan(tuple(StepPlan(Action.FULL) for _ in range(num_steps)), self.name,
                        {"budget": 1.0, "few_steps": True})
        # where it may skip (the first steps are the budget's and the placement's to place)
        skips = StepWindow(0, c.start, c.end).may_skip
        if c.placement != "adaptive":
            plan = budget_plan(num_steps, c.budget, c.first_full_steps, c.max_skipped,
                               c.ends if c.placement == "ends" else 0.0, c.last_step_full)
            return Plan(tuple(s if skips(i, num_steps) else StepPlan(Action.FULL) for i, s in enumerate(plan)),
                        self.name, dict(plan.settings, start=c.start, end=c.end))
        self.placement = AdaptiveBudget(num_steps, c.budget, c.first_full_steps, c.max_skipped)
        first = self.placement.first
        steps = tuple(StepPlan(Action.FORECAST if first <= i and skips(i, num_steps) else Action.FULL)
                      for i in range(num_steps))
        return Plan(steps, f"{self.name} adaptive", {"budget": c.budget, "first_full_steps": c.first_full_steps,
                                                 "max_skipped": self.placement.max_skipped,
                                                 "start": c.start, "end": c.end})

    def on_call(self, run, call, compute):
        stats = run.stats.at(call.step)
        stats.compute_full += 1
        in_noise = self.coefficients is not None
        a, b = self.coefficients(call.sigma) if in_noise and call.sigma is not None else (1.0, 0.0)
        t = self._time(call.sigma)
        # the plan computes outside the window; the placement is asked at every step, the first ones
        # too: it counts what it has spent
        placed_full = self.placement.is_full(call.step) if self.placement is not None else False
        planned_full = placed_full or call.action is Action.FULL
        if (planned_full or run.disabled or call.sample is None or not run.has_kept(call, OUTPUT)
                or (in_noise and not recoverable(a, b)) or t is None):
            call.action = Action.FULL
            stats.action = Action.FULL.value
            stats.compute_done += 1
            denoised = compute()
            if (in_noise and b <= 0) or t is None:  # no noise left to imply, or no time to keep it at
                return self._handed(run, call, denoised, denoised)
            # a flow model's first step (a = 0) still implies its noise exactly: it is the sample
            value = self.space.to_value(call.sample, denoised, a, b) if in_noise else denoised
            if self.placement is not None and run.has_kept(call, OUTPUT):
                forecast = run.estimated(call, OUTPUT, device=value.device, t=t)
                self.placement.observe(call.step, float((forecast - value).norm() / value.norm().clamp_min(1e-12)))
            gap = run.store.get(call.group, GAP, device=value.device) if self.steps else None
            if gap:
                run.keep(call, GAP, None)
                corrected = self._corrected(run, call, gap, value, t, a, b)
                if corrected is not None:
                    handed, intended, value = corrected
                    run.keep_point(call, OUTPUT, value, t=t)
                    if self.keeps_history:
                        run.keep(call, HELD, (call.step, handed, intended))
                    return handed.to(denoised.dtype)
            run.keep_point(call, OUTPUT, value, t=t)
            return self._handed(run, call, denoised, denoised)
        stats.action = Action.FORECAST.value
        value = run.estimated(call, OUTPUT, device=call.device, t=t)
        denoised = self.space.to_denoised(call.sample, value, a, b) if in_noise else value
        if self.steps:
            gap = run.store.get(call.group, GAP)  # where it is kept: only added to here
            if gap is None:  # the gap's first step: its sample is exact, the step before computed
                gap = {"start": call.sample, "held": self._held(run, call, intended=True), "steps": []}
            gap["steps"] = gap["steps"] + [(t, call.step, a, b)]
            run.keep(call, GAP, gap)
        return self._handed(run, call, denoised, denoised)

    def _held(self, run, call, intended: bool):
        """The previous step's output as handed on (or as meant: a corrected step hands on the
        landing it needs, not the value), None if this call's step has no previous one here."""
        held = run.store.get(call.group, HELD, device=call.device)
        if held is None or held[0] != call.step - 1:
            return None
        return held[2] if intended else held[1]

    def _handed(self, run, call, handed, intended):
        """What a call hands on: under a multistep sampler, with what the sampler holds from a
        corrected step made up, so its history is the corrected values (sampler_steps)."""
        if not self.keeps_history or not self._follows_schedule(run, call):
            return handed
        step = self.steps(run.sigmas, call.step)
        held, meant = self._held(run, call, intended=False), self._held(run, call, intended=True)
        if step.before and held is not None and meant is not None:
            handed = handed + (step.before / step.now) * (meant - held).to(handed.dtype)
        run.keep(call, HELD, (call.step, handed, intended))
        return handed

    def _corrected(self, run, call, gap, value, t, a, b):
        """(the output handed on, the value meant, the point kept) at the computed step that ends a
        gap: the gap replayed with its interpolated re-estimates gives the corrected sample, and
        this step hands on what lands the sampler where it would step from there; None where the
        run's schedule does not say where the sampler steps."""
        if not self._follows_schedule(run, call) or any(step >= len(run.sigmas) - 1 for _, step, _, _ in gap["steps"]):
            return None
        spread = gap_correction.GUIDED_DATA_STD if run.guided else gap_correction.DATA_STD
        replayed = [(t_j, self.steps(run.sigmas, j), partial(self.space.to_denoised, a=a_j, b=b_j))
                    for t_j, j, a_j, b_j in gap["steps"]]
        before = run.store.get(call.group, OUTPUT, device=value.device)
        sample, moved, last = gap_correction.replay_gap(gap["start"], gap["held"], replayed, before, (t, value),
                                                        call.sample, self.space.sensitivity(a, b, spread))
        intended = self.space.to_denoised(sample, moved, a, b)
        step = self.steps(run.sigmas, call.step)
        landing = step(sample, intended, last)
        return step.handed(call.sample, landing, self._held(run, call, intended=False)), intended, moved

    @staticmethod
    def _follows_schedule(run, call) -> bool:
        """Whether this call is at a step of the run's schedule with a known step after it."""
        i = call.step
        return (call.sigma is not None and i + 1 < len(run.sigmas) and run.sigmas[i + 1] >= 0
                and math.isclose(run.sigmas[i], call.sigma, rel_tol=1e-5) and run.sigmas[i] > 0)

    def _time(self, sigma: Optional[float]) -> Optional[float]:
        """The time the forecast runs in at `sigma`; None where it has none (log-SNR at pure noise)."""
        if sigma is None or self.log_snr is None:
            return sigma
        a, b = self.log_snr(sigma)
        return math.log(a / b) if a > 0 and b > 0 else None
