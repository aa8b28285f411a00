"""Methods: one module per caching method, each a config dataclass and an executor behind the
protocol in protocol.py; engine.py runs any of them. `executor_for` is the flagship's choice of
method for a model: DuCa on DiTs with block hooks, DeepCache on U-Nets, whole-step reuse where
the host offers no block hook.
"""
from __future__ import annotations

from typing import Optional

from ..adapters.registry import DEEPCACHE, GENERIC
from .calibration import Calibration, CalibrationConfig
from .deepcache import DeepCache, DeepCacheConfig
from .duca import PRESETS, DuCa, DuCaConfig
from .engine import RunState
from .forecast import BUDGETS, FORECAST_PRESETS, ForecastConfig, OutputForecast, noise_coefficients_of
from .protocol import Method
from .schedules import ScheduleConfig, ScheduleExecutor
from .step_reuse import StepReuse

CONFIGS = (ForecastConfig, DuCaConfig, DeepCacheConfig, ScheduleConfig, CalibrationConfig)


def why_no_method(adapter, sampling) -> Optional[str]:
    """Why no method can run on a model (None: one can), given its adapter (None: no diffusion model)
    and its model sampling. A family the pack knows runs at its level; any other model runs
    whole-step forecasts, which need the noise coefficients of its sampling."""
    if adapter is None:
        return "the model has no diffusion model to accelerate"
    if adapter.family == GENERIC.name and noise_coefficients_of(sampling) is None:
        return (f"{adapter.model_class} is not a model family this pack knows, and its sampling gives no "
                f"noise coefficients to forecast with")
    return None


def whole_step_stand_in(config) -> ForecastConfig:
    """The budget preset a block-level method runs as where the model's blocks cannot be followed
    (the host's multi-GPU split runs per-device copies of them): a DuCa preset's namesake, else balanced."""
    preset = config.preset if isinstance(config, DuCaConfig) and config.preset in BUDGETS else "balanced"
    return FORECAST_PRESETS[preset]


def executor_for(config, adapter, noise_coefficients=None, sampler=None) -> Method:
    """A fresh executor (one per sampling run) of `config`'s method on this model.
    `noise_coefficients` (the model sampling's sigma -> (a, b)) and `sampler` (the host's) tell
    the whole-step forecast what to extrapolate."""
    if isinstance(config, ForecastConfig):  # every family: it wraps the whole model call
        return OutputForecast(config, adapter, noise_coefficients, sampler)
    if adapter.step_level:  # no block hooks: the method's plan decides over whole model calls
        if isinstance(config, ScheduleConfig):
            return StepReuse(ScheduleExecutor(config.schedule, adapter, config.cache_device, config.estimator), adapter)
        if isinstance(config, DuCaConfig):
            return StepReuse(DuCa(config, adapter), adapter)
    if isinstance(config, DuCaConfig):
        if adapter.level == DEEPCACHE:
            return DeepCache(DeepCacheConfig.from_duca(config, config.estimator_for(adapter.family)), adapter)
        return DuCa(config, adapter)
    if isinstance(config, DeepCacheConfig):
        if adapter.level != DEEPCACHE:
            raise ValueError(f"model: DeepCache needs a U-Net (SD1.5, SD2, SDXL); this is {adapter.family}")
        return DeepCache(config, adapter)
    if isinstance(config, ScheduleConfig):
        return ScheduleExecutor(config.schedule, adapter, config.cache_device, config.estimator)
    if isinstance(config, CalibrationConfig):
        return Calibration(config, adapter)
    raise TypeError(f"not a method's settings: {type(config).__name__} (expected one of "
                    f"{[c.__name__ for c in CONFIGS]})")


__all__ = ["BUDGETS", "FORECAST_PRESETS", "ForecastConfig", "OutputForecast", "CONFIGS", "Calibration", "CalibrationConfig", "DeepCache", "DeepCacheConfig", "DuCa", "DuCaConfig",
           "Method", "PRESETS", "RunState", "ScheduleConfig", "ScheduleExecutor", "StepReuse", "executor_for", "whole_step_stand_in", "why_no_method"]
