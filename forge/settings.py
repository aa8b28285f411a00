"""What the Forge accordion sets, how it resolves on a model, and how it is written to (and read
back from) the generation parameters, so PNG Info and "Send to" restore it."""
from __future__ import annotations

from dataclasses import dataclass, fields

from ..adapters.registry import DEEPCACHE
from ..cache_core.validate import check_choice, check_float, check_int, check_window
from ..methods.duca import AUTO, PRESETS
from ..methods.forecast import FORECAST_PRESETS
from ..methods.settings import build_config, forecast_config

# auto: DeepCache on U-Nets (the duca presets run it there), the budget presets (a forecast of the
# whole model call, which needs no block hooks) on every other family.
METHODS = (AUTO, "deepcache", "forecast", "duca")
PRESET_NAMES = tuple(FORECAST_PRESETS)  # quality, balanced, fast, turbo
CYCLE_PRESETS = tuple(PRESETS)          # the presets DeepCache and DuCa have (no turbo)
PRESET_FIRST_STEPS = -1                 # first_full_steps: the preset's own

# field -> infotext key (Forge writes "key: value" pairs under the picture)
INFOTEXT_KEYS = {"method": "DuCa method", "preset": "DuCa preset", "budget": "DuCa budget",
                 "first_full_steps": "DuCa first full steps", "start": "DuCa start", "end": "DuCa end"}


@dataclass(frozen=True)
class ForgeSettings:
    method: str = AUTO
    preset: str = "balanced"
    budget: float = 0.0              # forecast only: fraction of the steps computed; 0: the preset's
    first_full_steps: int = PRESET_FIRST_STEPS
    start: float = 0.0               # fractions of the steps where caching may begin ...
    end: float = 1.0                 # ... and stop

    def __post_init__(self):
        check_choice("method", self.method, METHODS)
        check_choice("preset", self.preset, PRESET_NAMES)
        check_float("budget", self.budget, 0.0, 1.0)
        check_int("first_full_steps", self.first_full_steps, PRESET_FIRST_STEPS, 1000)
        check_window(self.start, self.end)

    @classmethod
    def from_inputs(cls, method, preset, budget, first_full_steps, start, end) -> "ForgeSettings":
        """From the accordion's (or an API request's) values, as Gradio passes them."""
        return cls(str(method), str(preset), float(budget), int(first_full_steps), float(start), float(end))

    def resolved_method(self, adapter) -> str:
        if self.method != AUTO:
            return self.method
        return "deepcache" if adapter.level == DEEPCACHE and self.preset in CYCLE_PRESETS else "forecast"

    def config_for(self, adapter):
        """The method's settings on this model (errors name the input)."""
        method = self.resolved_method(adapter)
        first = None if self.first_full_steps == PRESET_FIRST_STEPS else self.first_full_steps
        if method == "forecast":
            return forecast_config(self.preset, self.budget, "ends", first, self.start, self.end, "compute")
        if self.preset not in CYCLE_PRESETS:
            raise ValueError(f"preset: {self.preset} is a budget preset; method {method} offers "
                             f"{', '.join(CYCLE_PRESETS)} (or choose method forecast)")
        if method == "deepcache" and adapter.level != DEEPCACHE:
            raise ValueError(f"method: DeepCache needs a U-Net (SD1.5, SDXL); this model is {adapter.family}")
        return build_config(self.preset, None, None, None, first, self.start, self.end, "compute")

    # --- generation parameters ---------------------------------------------
    def infotext(self) -> dict:
        return {key: getattr(self, name) for name, key in INFOTEXT_KEYS.items()}

    @classmethod
    def from_infotext(cls, params: dict):
        """The settings a picture was made with (None if it was made without the pack)."""
        if INFOTEXT_KEYS["method"] not in params:
            return None
        kinds = {f.name: f.type for f in fields(cls)}
        values = {}
        for name, key in INFOTEXT_KEYS.items():
            if key in params:
                kind = {"int": int, "float": float}.get(kinds[name], str)
                values[name] = kind(params[key])
        return cls(**values)
