"""What every method's settings share, in one shape: the step window where it may skip, where its
caches live, what a skipped unit hands on, and the preset the settings came from. One resolver
turns them into the settings for a given model (`on_model`), and `auto` has one meaning there:
the estimator measured best for this method on this model.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar, Optional

from ..cache_core.estimators import ESTIMATORS
from ..cache_core.plan import StepWindow
from ..cache_core.store import CACHE_DEVICES
from ..cache_core.validate import check_choice

AUTO = "auto"  # the estimator measured best for the method on the model (MethodSettings.measured_estimator)
ESTIMATOR_CHOICES = (AUTO, *ESTIMATORS)


def keyword(default):
    """A shared setting a method gives its own default (keyword-only, as every shared setting is)."""
    return field(default=default, kw_only=True)


@dataclass(frozen=True, kw_only=True)
class MethodSettings:
    """The settings every method's config shares, each method's own fields after them."""
    first_full_steps: int = 3       # the first steps set the composition: always computed
    start: float = 0.0              # fractions of the steps: outside [start, end) every step computes
    end: float = 1.0
    cache_device: str = "compute"   # where caches live (store.CACHE_DEVICES)
    estimator: str = AUTO           # what a skipped unit hands on (ESTIMATOR_CHOICES)
    preset: Optional[str] = None    # the preset they came from: its settings measured on the model apply

    PRESET_NAMES: ClassVar[tuple] = ()  # the method's presets

    def __post_init__(self):
        self.window  # a StepWindow checks them
        check_choice("cache_device", self.cache_device, CACHE_DEVICES)
        check_choice("estimator", self.estimator, ESTIMATOR_CHOICES)
        if self.preset is not None:
            check_choice("preset", self.preset, self.PRESET_NAMES)

    @property
    def window(self) -> StepWindow:
        return StepWindow(self.first_full_steps, self.start, self.end)

    def with_changes(self, **changes):
        return replace(self, **changes)

    # --- what each method says about its presets (overridden per method) -------------
    def preset_settings(self) -> Optional["MethodSettings"]:
        """The settings of the preset these came from, as shipped (None: not from a preset)."""
        return None

    def measured(self, adapter) -> dict:
        """The preset's settings measured best on this model (its family, or its kind of model)."""
        return {}

    def measured_estimator(self, adapter) -> str:
        """What `auto` means for this method on this model."""
        return "reuse"

    # --- the one resolver --------------------------------------------------------------
    def on_model(self, adapter):
        """These settings on this model: a preset's settings measured on the model replace the
        preset's own, except where a user changed them; `auto` becomes the measured estimator."""
        changes = {}
        shipped = self.preset_settings()
        if shipped is not None:
            changes = {name: value for name, value in self.measured(adapter).items()
                       if getattr(self, name) == getattr(shipped, name)}
        if self.estimator == AUTO:
            changes["estimator"] = self.measured_estimator(adapter)
        return self.with_changes(**changes) if changes else self
