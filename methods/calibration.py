"""Calibration: one run that computes everything and measures how much each unit's residual
changes from step to step (cache_core.profile). Block Caching and Step Rehash make their
schedules from it."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..cache_core.profile import ChangeProfile
from ..cache_core.schedule import Cell, Schedule
from ..cache_core.validate import check_int
from .protocol import HostContext
from .schedules import ScheduleExecutor


@dataclass(frozen=True)
class CalibrationConfig:
    probe_unit: int = -1  # the unit whose residual is compared across all steps (Step Rehash); -1: the last

    def __post_init__(self):
        check_int("probe_unit", self.probe_unit, -100_000, 100_000)

    def check(self, adapter) -> None:
        """Every family: it computes everything and watches."""

    def executor(self, adapter, host: HostContext) -> "Calibration":
        return Calibration(self, adapter, host)


class Calibration(ScheduleExecutor):
    """A schedule that computes every unit at every step, watched by a ChangeProfile."""

    def __init__(self, config: CalibrationConfig, adapter, host: HostContext):
        schedule = computing_everything(adapter, host.num_steps)
        observer = ChangeProfile(host.num_steps, len(schedule.units), config.probe_unit)
        super().__init__(schedule, adapter, host, observer=observer)
        self.name = "calibration"
        self.config = config

    def finish(self, run):
        return self.observer


def computing_everything(adapter, num_steps: int) -> Schedule:
    units = adapter.schedule_units()
    table = torch.full((num_steps, len(units)), int(Cell.COMPUTE), dtype=torch.uint8)
    return Schedule(table, units, adapter.family, "full")
