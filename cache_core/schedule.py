"""Cache schedules: for every step of a run and every cacheable unit, compute or reuse.

A schedule is decided ahead of time (FORA, EB-Cache, Block Caching, Learning-to-Cache,
Step Rehash) and travels between nodes as plain data: printable, drawable as a
step x unit picture, saved as safetensors or JSON with its metadata, never pickled.

Units are the adapter's blocks in run order, named "kind.index" (a DiT's
"double_block.3", a U-Net's "transformer.5"). A cell says what that unit does at
that step:
  COMPUTE          run the unit
  REUSE_ATTENTION  reuse its attention output, recompute its MLP (EB-Cache's "1")
  REUSE            reuse the whole unit (under fresh gates where the family has them)
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from enum import IntEnum

import torch

from .plan import Action, Plan, StepPlan

FORMAT_VERSION = "1"
# A schedule is a small step x unit table: 1000 steps (the nodes' most) of 1000 units is 1 MB as
# safetensors and about 5 MB as JSON. A file far past that is not a schedule, and is refused
# before it is read.
MAX_FILE_BYTES = 64 * 2**20


class Cell(IntEnum):
    COMPUTE = 0
    REUSE_ATTENTION = 1
    REUSE = 2

    @property
    def letter(self) -> str:
        return "#a."[self]


class ScheduleMismatch(ValueError):
    """A schedule made for another model (family or unit count) than the one it is applied to."""


class ScheduleFileError(ValueError):
    """A file or text that is not a readable schedule. `reason` completes a sentence about it
    ("is empty", "is not valid JSON (...)"), so a node can name the file as its user chose it."""

    def __init__(self, reason: str):
        super().__init__(f"schedule file {reason}")
        self.reason = reason


@dataclass(frozen=True)
class Schedule:
    table: torch.Tensor          # uint8 [steps, units] of Cell values
    units: tuple                 # unit names, in run order
    family: str                  # model family the units belong to
    method: str                  # what made it: "fora", "eb-cache", "block-caching", "l2c", ...
    settings: dict = field(default_factory=dict)
    notes: tuple = ()            # e.g. "resampled from 28 to 20 steps"

    def __post_init__(self):
        table = torch.as_tensor(self.table)
        if table.dim() != 2 or table.shape[1] != len(self.units):
            raise ValueError(f"schedule table must be [steps, {len(self.units)} units], got {tuple(table.shape)}")
        if table.numel() and (int(table.min()) < 0 or int(table.max()) > max(Cell)):
            raise ValueError("schedule table holds values other than 0 (compute), 1 (reuse attention), 2 (reuse)")
        object.__setattr__(self, "table", table.to(torch.uint8).cpu().contiguous())
        object.__setattr__(self, "units", tuple(self.units))
        object.__setattr__(self, "notes", tuple(self.notes))

    @property
    def num_steps(self) -> int:
        return self.table.shape[0]

    def cell(self, step: int, unit: int) -> Cell:
        return Cell(int(self.table[step, unit]))

    def computes_step(self, step: int) -> bool:
        return bool((self.table[step] == Cell.COMPUTE).all())

    @property
    def computes_everything(self) -> bool:
        return bool((self.table == Cell.COMPUTE).all())

    def compute_fraction(self, unit_cost=None, attention_share: float = 0.5) -> float:
        """Fraction of unit compute the schedule runs; a REUSE_ATTENTION cell costs the MLP's share."""
        cost = {Cell.COMPUTE: 1.0, Cell.REUSE_ATTENTION: 1.0 - attention_share, Cell.REUSE: 0.0}
        done = torch.zeros(self.table.shape, dtype=torch.float64)
        for value, share in cost.items():
            done[self.table == value] = share
        weights = torch.ones(len(self.units), dtype=torch.float64) if unit_cost is None else \
            torch.as_tensor(unit_cost, dtype=torch.float64)
        total = weights.sum() * self.num_steps
        return float((done * weights).sum() / total) if total > 0 else 1.0

    def as_plan(self, whole_steps: bool = False) -> Plan:
        """Per-step actions: FULL where every unit computes, PARTIAL where units decide.
        `whole_steps` (families reused a whole model call at a time): a step that reuses
        every unit is AGGRESSIVE, any other step is computed."""
        steps = []
        for i in range(self.num_steps):
            if self.computes_step(i):
                steps.append(StepPlan(Action.FULL))
            elif whole_steps:
                reuses_all = bool((self.table[i] == Cell.REUSE).all())
                steps.append(StepPlan(Action.AGGRESSIVE if reuses_all else Action.FULL))
            else:
                steps.append(StepPlan(Action.PARTIAL))
        return Plan(tuple(steps), self.method, dict(self.settings))

    # --- fitting a run ----------------------------------------------------
    def check_fits(self, family: str, units) -> None:
        units = tuple(units)
        if family != self.family:
            raise ScheduleMismatch(f"this schedule was made for a {self.family} model ({self.method}); "
                                   f"the connected model is {family}")
        if len(units) != len(self.units):
            raise ScheduleMismatch(f"this schedule covers {len(self.units)} blocks of a {self.family} model; "
                                   f"the connected model has {len(units)}")

    def within(self, window) -> "Schedule":
        """Every unit computed at the steps where `window` (plan.StepWindow) does not let a method
        skip; the schedule itself where it skips nowhere outside it."""
        outside = [i for i in range(self.num_steps) if not window.may_skip(i, self.num_steps)]
        if not outside or all(self.computes_step(i) for i in outside):
            return self
        table = self.table.clone()
        table[outside] = int(Cell.COMPUTE)
        return replace(self, table=table, notes=self.notes + (f"every unit computed outside the step window "
                                                               f"({len(outside)} steps)",))

    def resampled(self, num_steps: int) -> "Schedule":
        """The same schedule on another step count, by relative position in the run.

        Each unit keeps its density of computation: a new step computes when the computations
        the old schedule made up to the end of that step, scaled to the new count, exceed
        those made so far (so every-2nd stays every-2nd). Other cells take the most computing
        reuse kind the old steps they cover held. The first step keeps the old first step.
        """
        if num_steps == self.num_steps:
            return self
        if num_steps < 1 or self.num_steps < 1:
            raise ValueError(f"cannot resample a {self.num_steps}-step schedule to {num_steps} steps")
        old, scale = self.num_steps, self.num_steps / num_steps
        computed = (self.table == Cell.COMPUTE).double()                   # [old, units]
        table = self.table[:1].clone()                                      # the first step as it was
        done = computed[0].clone()
        for i in range(1, num_steps):
            end = (i + 1) * scale
            coverage = (end - torch.arange(old, dtype=torch.float64)).clamp(0, 1)   # of each old step
            due = torch.floor((coverage[:, None] * computed).sum(0) / scale + 0.5)
            covered = self.table[int(i * scale):max(int(i * scale) + 1, math.ceil(end))]
            reuse_kind = torch.where((covered == Cell.REUSE_ATTENTION).any(0), int(Cell.REUSE_ATTENTION),
                                     int(Cell.REUSE))
            compute = due > done
            row = torch.where(compute, int(Cell.COMPUTE), reuse_kind).to(torch.uint8)
            table = torch.cat([table, row[None]])
            done += compute.double()
        note = f"resampled from {self.num_steps} to {num_steps} steps"
        return replace(self, table=table, notes=self.notes + (note,))

    # --- showing it -------------------------------------------------------
    def __str__(self) -> str:
        width = max((len(u) for u in self.units), default=0)
        lines = [f"{self.method} schedule for {self.family}: {len(self.units)} units x {self.num_steps} steps, "
                 f"{self.compute_fraction():.0%} of unit compute  (# compute, a reuse attention, . reuse)"]
        for j, unit in enumerate(self.units):
            lines.append(f"{unit:>{width}} " + "".join(Cell(int(v)).letter for v in self.table[:, j]))
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def picture(self, cell_pixels: int = 8) -> torch.Tensor:
        """[units * cell, steps * cell, 3] float image in [0, 1]: one column per step, one row per unit.
        Computed cells dark blue, attention-reused amber, reused pale."""
        colours = torch.tensor([[0.13, 0.29, 0.53], [0.95, 0.65, 0.15], [0.90, 0.92, 0.95]])
        image = colours[self.table.t().long()]                      # [units, steps, 3]
        image = image.repeat_interleave(cell_pixels, 0).repeat_interleave(cell_pixels, 1)
        image[::cell_pixels, :, :] *= 0.85                          # faint grid lines
        image[:, ::cell_pixels, :] *= 0.85
        return image

    # --- saving it --------------------------------------------------------
    def metadata(self) -> dict:
        return {"format": "duca-schedule", "version": FORMAT_VERSION, "family": self.family,
                "method": self.method, "units": list(self.units), "num_steps": self.num_steps,
                "settings": self.settings, "notes": list(self.notes)}

    def to_json(self) -> str:
        return json.dumps({**self.metadata(), "table": self.table.tolist()}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Schedule":
        try:
            data = json.loads(text)
        except ValueError as error:
            raise ScheduleFileError(f"is not valid JSON ({error})") from None
        except RecursionError:
            raise ScheduleFileError("is not valid JSON (nested too deeply to read)") from None
        if not isinstance(data, dict):
            raise ScheduleFileError(f"is not a cache schedule: the JSON is a {type(data).__name__}, not an object")
        _check_format(data)
        if "table" not in data:
            raise ScheduleFileError("is not a cache schedule: missing 'table'")
        try:
            table = torch.tensor(data["table"])
        except (TypeError, ValueError, RuntimeError, OverflowError):  # ragged rows, strings, huge numbers
            raise ScheduleFileError("is not a cache schedule: 'table' is not a list of rows of cells") from None
        return cls._checked(table, data)

    def save(self, path) -> None:
        """`.json` as text; anything else as safetensors (the table plus string metadata)."""
        path = str(path)
        if path.endswith(".json"):
            with open(path, "w", encoding="utf-8") as f:
                f.write(self.to_json())
            return
        from safetensors.torch import save_file
        meta = {key: json.dumps(value) for key, value in self.metadata().items()}
        save_file({"table": self.table}, path, metadata=meta)

    @classmethod
    def load(cls, path) -> "Schedule":
        """A saved schedule; a file that is not one raises ScheduleFileError saying why."""
        path = str(path)
        try:
            size = os.path.getsize(path)
            if size == 0:
                raise ScheduleFileError("is empty")
            if size > MAX_FILE_BYTES:
                raise ScheduleFileError(f"is {size} bytes, more than any schedule ({MAX_FILE_BYTES} at most)")
            if path.endswith(".json"):
                with open(path, "rb") as f:
                    raw = f.read()
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise ScheduleFileError("is not UTF-8 text") from None
                return cls.from_json(text)
            return cls._load_safetensors(path)
        except OSError as error:
            raise ScheduleFileError(f"cannot be read ({error.strerror or error})") from None

    @classmethod
    def _load_safetensors(cls, path: str) -> "Schedule":
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(path, framework="pt") as f:
                raw = f.metadata() or {}
                table = f.get_tensor("table") if "table" in f.keys() else None
        except SafetensorError as error:
            reason = str(error).removeprefix("Error while deserializing header: ")
            raise ScheduleFileError(f"is not a safetensors file ({reason})") from None
        data = {key: _metadata_value(value) for key, value in raw.items()}
        _check_format(data)
        if table is None:
            raise ScheduleFileError("is not a cache schedule: missing 'table'")
        return cls._checked(table, data)

    @classmethod
    def _checked(cls, table: torch.Tensor, data: dict) -> "Schedule":
        """The schedule a loaded table and metadata make, its own checks failing as a file error."""
        # Fractions or flags would be cast to cells silently; only whole numbers are cells.
        if table.numel() and (table.dtype == torch.bool or table.is_floating_point() or table.is_complex()):
            raise ScheduleFileError(f"is not a cache schedule: 'table' holds {table.dtype}, not integer cells")
        try:
            return cls(table, tuple(data["units"]), data["family"], data["method"], dict(data.get("settings", {})),
                       tuple(data.get("notes", ())))
        except ValueError as error:
            raise ScheduleFileError(f"is not a valid cache schedule: {error}") from None


def _metadata_value(text: str):
    """A safetensors metadata value as this pack writes it (JSON); another tool's plain string as it is,
    so that a model file dropped among the schedules is refused for its missing format marker."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def _check_format(data: dict) -> None:
    """The metadata a schedule saved by this pack has, of the types the Schedule needs."""
    if data.get("format") != "duca-schedule":
        raise ScheduleFileError("is not a cache schedule (no 'duca-schedule' format marker)")
    if str(data.get("version")) != FORMAT_VERSION:
        raise ScheduleFileError(f"is a schedule of format version {data.get('version')}; this pack reads "
                                f"version {FORMAT_VERSION}")
    for key in ("family", "method", "units"):
        if key not in data:
            raise ScheduleFileError(f"is not a cache schedule: missing {key!r}")
    expected = {"family": str, "method": str, "units": list, "settings": dict, "notes": list}
    for key, kind in expected.items():
        if key in data and not isinstance(data[key], kind):
            raise ScheduleFileError(f"is not a cache schedule: {key!r} is a {type(data[key]).__name__}, "
                                    f"not a {kind.__name__}")
    for key in ("units", "notes"):
        if not all(isinstance(item, str) for item in data.get(key, ())):
            raise ScheduleFileError(f"is not a cache schedule: {key!r} holds other things than names")
