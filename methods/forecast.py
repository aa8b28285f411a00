"""Whole-step forecast under a compute budget: the pack's presets on every family.

The unit is the model's denoised output, per conditioning group, wrapped at the host's apply-model
level (after the sampler's input scaling, before cfg), so it works on every family, with or without
block hooks. Full steps: the model runs; the noise its output implies (cache_core.noise_space) is
kept with its sigma. Skipped steps: the model is not called; the noise is forecast from the kept
points (cache_core.estimators) and turned back into a denoised output with this step's sample.

Where the full steps go: round(budget x steps) of them, the first steps always, the rest spread
evenly (`even`) or placed as the run goes by the forecast's own measured error (`adaptive`,
cache_core.placement). Compute is counted in model calls: a computed call runs every block and a
skipped one none, so the fraction of calls is the fraction of block compute.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

from ..adapters.registry import STEP
from ..cache_core.estimators import ESTIMATORS
from ..cache_core.noise_space import from_noise, recoverable, to_noise
from ..cache_core.placement import AdaptiveBudget
from ..cache_core.plan import Action, Plan, StepPlan, budget_plan
from ..cache_core.stats import MODEL_CALLS
from ..cache_core.store import CACHE_DEVICES
from ..cache_core.validate import check_choice, check_float, check_int
from .protocol import Executor

APPLY_MODEL = "apply_model"  # the host level this method's model calls are wrapped at
PLACEMENTS = ("even", "adaptive")
SPACES = ("noise", "denoised")  # what is extrapolated: the implied noise (measured best), or x0 itself
OUTPUT = "step_output"          # kept per group: (sigma, noise or denoised) of its computed steps

# Block-compute budgets of the presets (issue targets: the measured frontier in bench/RESULTS.md).
BUDGETS = {"quality": 0.45, "balanced": 0.35, "fast": 0.27, "turbo": 0.20}


@dataclass(frozen=True)
class ForecastConfig:
    budget: float = BUDGETS["balanced"]  # fraction of the steps computed
    first_full_steps: int = 3            # always computed: they set the composition
    placement: str = "even"              # where the other full steps go (PLACEMENTS)
    max_skipped: int = 0                 # longest run of skipped steps; 0: twice the even spacing (adaptive)
    estimator: str = "taylor1"           # how skipped steps are forecast (estimators.ESTIMATORS)
    space: str = "noise"                 # what is extrapolated (SPACES)
    cache_device: str = "compute"
    preset: Optional[str] = None         # for the log and the stats

    def __post_init__(self):
        check_float("budget", self.budget, 0.01, 1.0)
        check_int("first_full_steps", self.first_full_steps, 0, 1000)
        check_choice("placement", self.placement, PLACEMENTS)
        check_int("max_skipped", self.max_skipped, 0, 1000)
        check_choice("estimator", self.estimator, ESTIMATORS)
        check_choice("space", self.space, SPACES)
        check_choice("cache_device", self.cache_device, CACHE_DEVICES)
        if self.preset is not None:
            check_choice("preset", self.preset, BUDGETS)

    def with_changes(self, **changes) -> "ForecastConfig":
        return replace(self, **changes)


FORECAST_PRESETS = {name: ForecastConfig(budget=budget, preset=name) for name, budget in BUDGETS.items()}


class OutputForecast(Executor):
    wraps = APPLY_MODEL
    compute_unit = MODEL_CALLS

    def __init__(self, config: ForecastConfig, adapter, noise_coefficients: Optional[Callable] = None):
        """`noise_coefficients(sigma) -> (a, b)` of the model's sampling (x = a x0 + b n); None
        (a host that doesn't say) extrapolates the denoised output itself."""
        super().__init__(adapter)
        self.config = config
        self.name = f"forecast {config.preset}" if config.preset else "forecast"
        self.level = STEP
        self.cache_device = config.cache_device
        self.estimator = config.estimator
        self.coefficients = noise_coefficients if config.space == "noise" else None
        self.placement = None
        self.notes = () if self.coefficients or config.space != "noise" else (
            "the host's model sampling gave no noise coefficients: the denoised output is forecast",)

    def plan(self, num_steps: int) -> Plan:
        c = self.config
        if c.placement == "even":
            return budget_plan(num_steps, c.budget, c.first_full_steps, c.max_skipped)
        self.placement = AdaptiveBudget(num_steps, c.budget, c.first_full_steps, c.max_skipped)
        first = self.placement.first
        steps = tuple(StepPlan(Action.FULL if i < first else Action.AGGRESSIVE) for i in range(num_steps))
        return Plan(steps, "forecast adaptive", {"budget": c.budget, "first_full_steps": c.first_full_steps,
                                                 "max_skipped": self.placement.max_skipped})

    def on_call(self, run, call, compute):
        stats = run.stats.at(call.step)
        stats.compute_full += 1
        a, b = self.coefficients(call.sigma) if self.coefficients and call.sigma is not None else (1.0, 0.0)
        in_noise = self.coefficients is not None and recoverable(a, b)
        planned_full = self.placement.is_full(call.step) if self.placement else call.action is Action.FULL
        if (planned_full or call.action is Action.FULL or run.disabled or call.sample is None
                or not run.has_kept(call, OUTPUT) or (self.coefficients is not None and not in_noise)):
            call.action = Action.FULL
            stats.action = Action.FULL.value
            stats.compute_done += 1
            denoised = compute()
            value = to_noise(call.sample, denoised, a, b) if in_noise else denoised
            if self.placement is not None and run.has_kept(call, OUTPUT):
                forecast = run.estimated(call, OUTPUT, device=value.device)
                self.placement.observe(call.step, float((forecast - value).norm() / value.norm().clamp_min(1e-12)))
            run.keep_point(call, OUTPUT, value)
            return denoised
        stats.action = Action.AGGRESSIVE.value
        value = run.estimated(call, OUTPUT, device=call.device)
        return from_noise(call.sample, value, a, b) if in_noise else value
