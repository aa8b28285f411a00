"""The flagship's settings from a user's choices, shared by the ComfyUI node and the Forge
script: a budget preset (forecast) or a DuCa cycle preset, with the inputs that change it."""
from __future__ import annotations

from dataclasses import dataclass

from .common import AUTO
from .duca import PRESETS
from .forecast import FORECAST_PRESETS, PLACEMENTS

CUSTOM = "custom"
DUCA = "duca "  # the prefix of DuCa's cycle presets ("duca balanced": the papers' cycle)
FLAGSHIP_PRESETS = (*FORECAST_PRESETS, *(DUCA + name for name in PRESETS))


def forecast_config(preset, budget, placement, first_full_steps, start, end, cache_device, estimator=AUTO):
    """A budget preset's settings, with the inputs that change it."""
    changes = {"placement": placement, "start": start, "end": end, "cache_device": cache_device,
               "estimator": estimator}
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


PRESETS_OWN = 0  # a budget or a number of first full steps of 0: the preset's own


@dataclass(frozen=True)
class Options:
    """What the flagship's options change; 0 (PRESETS_OWN) keeps the preset's budget and first steps.
    `budget` and `placement` apply to the budget presets only."""
    budget: float = PRESETS_OWN
    placement: str = PLACEMENTS[0]
    first_full_steps: int = PRESETS_OWN
    start: float = 0.0
    end: float = 1.0
    cache_device: str = "compute"
    estimator: str = AUTO

    def check_for_cycle(self) -> None:
        """A DuCa cycle has no budget and no placement: a user who set them is told, not ignored."""
        if self.budget != PRESETS_OWN:
            raise ValueError(f"budget applies to the presets {list(FORECAST_PRESETS)}, not to DuCa's cycles; "
                             "set it to 0 or pick one of those presets")
        if self.placement != PLACEMENTS[0]:
            raise ValueError(f"placement applies to the presets {list(FORECAST_PRESETS)}, not to DuCa's cycles; "
                             f"set it to {PLACEMENTS[0]!r} or pick one of those presets")


def preset_config(preset: str, options: Options = Options()):
    """The settings of a flagship preset: a budget preset, or DuCa's cycle ("duca balanced")."""
    first = options.first_full_steps or None
    if preset in FORECAST_PRESETS:
        return forecast_config(preset, options.budget, options.placement, first, options.start, options.end,
                               options.cache_device, options.estimator)
    cycle = preset.removeprefix(DUCA)
    if cycle not in PRESETS or cycle == preset:
        raise ValueError(f"preset must be one of {list(FLAGSHIP_PRESETS)}, got {preset!r}")
    options.check_for_cycle()
    return build_config(cycle, None, None, None, first, options.start, options.end, options.cache_device,
                        options.estimator)


def custom_config(interval: int, refresh_ratio: float, token_selector: str, options: Options = Options()):
    """DuCa's cycle with a user's own interval, refresh ratio and token selector."""
    options.check_for_cycle()
    return build_config(CUSTOM, interval, refresh_ratio, token_selector, options.first_full_steps or None,
                        options.start, options.end, options.cache_device, options.estimator)
