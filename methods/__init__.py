"""Methods: one module per caching method, each its settings and its executor behind the protocol
in protocol.py (a config builds its executor for a run: DuCa's picks DeepCache on U-Nets and whole
model calls where the host offers no block hook); engine.py runs any of them. `executor_for` is
what every glue calls.
"""
from __future__ import annotations

import logging
from typing import Optional

from ..adapters.registry import GENERIC
from .calibration import Calibration, CalibrationConfig
from .common import MethodSettings
from .deepcache import DeepCache, DeepCacheConfig
from .duca import PRESETS, DuCa, DuCaConfig
from .engine import RunState
from .forecast import BUDGETS, FORECAST_PRESETS, ForecastConfig, OutputForecast, noise_coefficients_of
from .protocol import STEP_OUTPUTS, HostContext, Method, MethodConfig, method_config
from .schedules import ScheduleConfig, ScheduleExecutor
from .step_reuse import StepReuse

LOG = logging.getLogger("comfyui-duca")


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
    preset = config.preset if isinstance(config, MethodSettings) and config.preset in BUDGETS else "balanced"
    return FORECAST_PRESETS[preset]


def executor_for(config: MethodConfig, adapter, host: HostContext = HostContext()) -> Method:
    """A fresh executor (one per sampling run) of `config`'s method on this model, for the run the
    host describes (its sigmas, model sampling and sampler)."""
    method = method_config(config).executor(adapter, host)
    if host.split_over_devices and method.wraps != STEP_OUTPUTS and not adapter.step_level:
        stand_in = whole_step_stand_in(config)
        LOG.info("DuCa: under ComfyUI's multi-GPU split each device runs its own copy of the model's blocks; "
                 "this run forecasts whole steps instead (%s preset), which skips every device at once",
                 stand_in.preset)
        method = stand_in.executor(adapter, host)
    return method


__all__ = ["BUDGETS", "FORECAST_PRESETS", "ForecastConfig", "OutputForecast", "Calibration", "CalibrationConfig", "DeepCache", "DeepCacheConfig", "DuCa", "DuCaConfig",
           "HostContext", "Method", "MethodConfig", "PRESETS", "RunState", "ScheduleConfig", "ScheduleExecutor", "StepReuse", "executor_for", "whole_step_stand_in", "why_no_method"]
