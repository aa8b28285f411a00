"""What the Forge accordion sets, how it resolves on a model, and how it is written to (and read
back from) the generation parameters, so PNG Info and "Send to" restore it."""
from __future__ import annotations

from dataclasses import dataclass, fields

from ..adapters.registry import DEEPCACHE
from ..cache_core.schedule import Schedule
from ..cache_core.schedule_rules import fora
from ..cache_core.validate import check_choice, check_float, check_int, check_window
from ..methods.common import AUTO
from ..methods.duca import PRESETS
from ..methods.forecast import FORECAST_PRESETS
from ..methods.schedules import ScheduleConfig
from ..methods.settings import build_config, forecast_config

# auto: DeepCache on U-Nets (the duca presets run it there), the budget presets (a forecast of the
# whole model call, which needs no block hooks) on every other family. fora: every block computed
# every N steps, reused between (FORA; N per preset below).
METHODS = (AUTO, "deepcache", "forecast", "duca", "fora")
FORA_INTERVALS = {"quality": 2, "balanced": 3, "fast": 4}  # the FORA paper's N = 3 in the middle
PRESET_NAMES = tuple(FORECAST_PRESETS)  # quality, balanced, fast, turbo
CYCLE_PRESETS = tuple(PRESETS)          # the presets DeepCache and DuCa have (no turbo)
PRESET_FIRST_STEPS = -1                 # first_full_steps: the preset's own

# field -> infotext key (Forge writes "key: value" pairs under the picture)
INFOTEXT_KEYS = {"method": "DuCa method", "preset": "DuCa preset", "budget": "DuCa budget",
                 "first_full_steps": "DuCa first full steps", "start": "DuCa start", "end": "DuCa end",
                 "schedule_file": "DuCa schedule file"}


@dataclass(frozen=True)
class ForgeSettings:
    method: str = AUTO
    preset: str = "balanced"
    budget: float = 0.0              # forecast only: fraction of the steps computed; 0: the preset's
    first_full_steps: int = PRESET_FIRST_STEPS
    start: float = 0.0               # fractions of the steps where caching may begin ...
    end: float = 1.0                 # ... and stop
    schedule_file: str = ""          # a saved cache schedule (ComfyUI's Save Cache Schedule): used instead

    def __post_init__(self):
        check_choice("method", self.method, METHODS)
        check_choice("preset", self.preset, PRESET_NAMES)
        check_float("budget", self.budget, 0.0, 1.0)
        check_int("first_full_steps", self.first_full_steps, PRESET_FIRST_STEPS, 1000)
        check_window(self.start, self.end)

    @classmethod
    def from_inputs(cls, method, preset, budget, first_full_steps, start, end, schedule_file="") -> "ForgeSettings":
        """From the accordion's (or an API request's) values, as Gradio passes them."""
        return cls(str(method), str(preset), float(budget), int(first_full_steps), float(start), float(end),
                   str(schedule_file or "").strip())

    def resolved_method(self, adapter) -> str:
        if self.method != AUTO:
            return self.method
        return "deepcache" if adapter.level == DEEPCACHE and self.preset in CYCLE_PRESETS else "forecast"

    def config_for(self, adapter, steps: int):
        """The method's settings on this model, for a pass of `steps` steps (errors name the input)."""
        if self.schedule_file:
            return ScheduleConfig(self._loaded_schedule(adapter))
        method = self.resolved_method(adapter)
        first = None if self.first_full_steps == PRESET_FIRST_STEPS else self.first_full_steps
        if method == "forecast":
            return forecast_config(self.preset, self.budget, "ends", first, self.start, self.end, "compute")
        if self.preset not in CYCLE_PRESETS:
            raise ValueError(f"preset: {self.preset} is a budget preset; method {method} offers "
                             f"{', '.join(CYCLE_PRESETS)} (or choose method forecast)")
        if method == "deepcache" and adapter.level != DEEPCACHE:
            raise ValueError(f"method: DeepCache needs a U-Net (SD1.5, SDXL); this model is {adapter.family}")
        if method == "fora":
            table = fora(steps, adapter.schedule_units(), adapter.family, FORA_INTERVALS[self.preset],
                         1 if first is None else first)
            return ScheduleConfig(table)
        return build_config(self.preset, None, None, None, first, self.start, self.end, "compute")

    def _loaded_schedule(self, adapter) -> Schedule:
        try:
            schedule = Schedule.load(self.schedule_file)
            schedule.check_fits(adapter.family, adapter.schedule_units())
        except (OSError, ValueError) as error:  # unreadable, or made for another model
            raise ValueError(f"schedule_file {self.schedule_file!r}: {error}") from error
        return schedule

    # --- generation parameters ---------------------------------------------
    def infotext(self) -> dict:
        return {key: getattr(self, name) for name, key in INFOTEXT_KEYS.items()
                if name != "schedule_file" or self.schedule_file}  # no empty entry without a file

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
