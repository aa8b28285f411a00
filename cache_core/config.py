"""Settings of the DuCa accelerator, its presets, and the plan they give."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

from .plan import Plan, duca_plan
from .schedule import Schedule
from .tokens import SELECTORS

CACHE_DEVICES = ("compute", "cpu")


@dataclass(frozen=True)
class DuCaConfig:
    interval: int = 4               # a full step every `interval` steps
    refresh_ratio: float = 0.1      # base fraction of tokens recomputed on conservative steps
    first_full_steps: int = 3       # the first steps set the composition: always computed
    start: float = 0.0              # fraction of the steps where caching may begin
    end: float = 1.0                # ... and where it stops (the last steps are computed)
    token_selector: str = "value_norm"
    cache_device: str = "compute"
    aggressive: bool = True         # False: every cached step is conservative (ToCa)
    # ToCa's Flux factors: deep layers refresh fewer tokens; single blocks more than double.
    layer_weight: float = 0.5
    double_stream_factor: float = 0.4
    single_stream_factor: float = 1.6
    seed: int = 0                   # for the random token selector
    preset: Optional[str] = None    # the preset it came from: adapters then use their family's defaults
    plan: Optional[Plan] = field(default=None, compare=False)  # a fixed plan overrides the cycle
    unit_schedule: Optional[Schedule] = field(default=None, compare=False)  # per-unit decisions override both
    measure_change: bool = False    # calibration: compute everything, profile each unit's change
    probe_unit: int = -1            # calibration: the unit whose residual is compared across steps (Step Rehash)

    def __post_init__(self):
        _check_int("interval", self.interval, 1, 100)
        _check_float("refresh_ratio", self.refresh_ratio, 0.0, 1.0)
        _check_int("first_full_steps", self.first_full_steps, 0, 1000)
        _check_float("start", self.start, 0.0, 1.0)
        _check_float("end", self.end, 0.0, 1.0)
        if self.start > self.end:
            raise ValueError(f"start ({self.start}) must not be after end ({self.end})")
        if self.token_selector not in SELECTORS:
            raise ValueError(f"token_selector must be one of {SELECTORS}, got {self.token_selector!r}")
        if self.cache_device not in CACHE_DEVICES:
            raise ValueError(f"cache_device must be one of {CACHE_DEVICES}, got {self.cache_device!r}")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {list(PRESETS)}, got {self.preset!r}")

    def plan_for(self, num_steps: int) -> Plan:
        if self.plan is not None:
            if len(self.plan) != num_steps:
                raise ValueError(f"the fixed plan has {len(self.plan)} steps but the run has {num_steps}")
            return self.plan
        return duca_plan(num_steps, self.interval, self.refresh_ratio, self.first_full_steps,
                         self.start, self.end, self.aggressive)

    def with_changes(self, **changes) -> "DuCaConfig":
        return replace(self, **changes)


def _check_int(name, value, low, high):
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def _check_float(name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")


# Flux settings of the papers (ToCa: R = 0.1, first 3 steps full, N = 4), then a
# safer and a faster point on the same curve. See README for what each costs.
PRESETS = {
    "quality": DuCaConfig(interval=3, refresh_ratio=0.15),
    "balanced": DuCaConfig(interval=4, refresh_ratio=0.1),
    "fast": DuCaConfig(interval=6, refresh_ratio=0.1),
}
