"""The flagship's settings from a user's choices, shared by the ComfyUI node and the Forge
script: a budget preset (forecast) or a DuCa cycle preset, with the inputs that change it."""
from __future__ import annotations

from .duca import AUTO, PRESETS
from .forecast import FORECAST_PRESETS

CUSTOM = "custom"
FORECAST_ESTIMATOR = "taylor1"  # what `auto` forecasts with on the budget presets (measured best, RESULTS)


def forecast_config(preset, budget, placement, first_full_steps, start, end, cache_device, estimator=AUTO):
    """A budget preset's settings, with the inputs that change it."""
    changes = {"placement": placement, "start": start, "end": end, "cache_device": cache_device,
               "estimator": FORECAST_ESTIMATOR if estimator == AUTO else estimator}
    if budget:  # 0 (the default) keeps the preset's
        changes["budget"] = budget
    if first_full_steps is not None:
        changes["first_full_steps"] = first_full_steps
    return FORECAST_PRESETS[preset].with_changes(**changes)


def build_config(preset, interval, refresh_ratio, token_selector, first_full_steps, start, end, cache_device,
                 estimator=AUTO):
    """DuCa's settings: a cycle preset (by its name without the prefix) or custom."""
    if preset not in PRESETS and preset != CUSTOM:
        raise ValueError(f"preset must be one of {list(PRESETS) + [CUSTOM]}, got {preset!r}")
    base = PRESETS.get(preset, PRESETS["balanced"])
    changes = {"start": start, "end": end, "cache_device": cache_device, "estimator": estimator}
    if token_selector is not None:
        changes["token_selector"] = token_selector
    if first_full_steps is not None:
        changes["first_full_steps"] = first_full_steps
    if preset == CUSTOM:
        if interval is not None:
            changes["interval"] = interval
        if refresh_ratio is not None:
            changes["refresh_ratio"] = refresh_ratio
    else:
        changes["preset"] = preset  # the adapter swaps in the model family's settings for it
    return base.with_changes(**changes)
