"""Per-step plans: what a caching method does at each sampling step, as plain data.

A plan is decided before a run starts and never looks at tensors, so it can be
printed, saved and compared. Steps are indexed by their position in the run's
sigma schedule (step i runs at sigmas[i]), never by counting model calls.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from .validate import check_int, check_window


class Action(str, Enum):
    FULL = "full"                    # compute every block, record what later steps reuse
    CONSERVATIVE = "conservative"    # reuse module outputs, recompute a fraction of tokens
    AGGRESSIVE = "aggressive"        # reuse the whole block stack as a residual
    PARTIAL = "partial"              # a schedule decides per unit (cache_core.schedule)
    FORECAST = "forecast"            # the model is not called: its output forecast from computed steps

    @property
    def letter(self) -> str:
        """Its letter in a timeline: F, C, A, P, and E (estimated) for a forecast step."""
        return "E" if self is Action.FORECAST else self.value[0].upper()


def timeline_letter(action: str) -> str:
    """The timeline letter of an action's value (as run stats keep it); another string's first letter."""
    try:
        return Action(action).letter
    except ValueError:
        return action[:1].upper()


@dataclass(frozen=True)
class StepPlan:
    action: Action
    refresh_ratio: float = 0.0  # fraction of tokens recomputed on a conservative step


@dataclass(frozen=True)
class Plan:
    steps: tuple
    method: str = "duca"
    settings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, step: int) -> StepPlan:
        return self.steps[step]

    @property
    def computes_everything(self) -> bool:
        return all(s.action is Action.FULL for s in self.steps)

    @property
    def timeline(self) -> str:
        """One letter per step (Action.letter)."""
        return "".join(s.action.letter for s in self.steps)

    def needs_stack_residual(self) -> bool:
        return any(s.action is Action.AGGRESSIVE for s in self.steps)

    def needs_module_cache(self) -> bool:
        return any(s.action is Action.CONSERVATIVE for s in self.steps)

    def __str__(self) -> str:
        return f"{self.method} plan, {len(self)} steps: {self.timeline}"

    def replacing(self, old: Action, new: Action) -> "Plan":
        """The same plan with every `old` step turned into `new` (e.g. for a block-level family)."""
        steps = tuple(StepPlan(new) if s.action is old else s for s in self.steps)
        return Plan(steps, self.method, dict(self.settings))


def fitted(plan: Plan, num_steps: int) -> Plan:
    """A fixed plan given in a method's settings, checked against the run's step count."""
    if len(plan) != num_steps:
        raise ValueError(f"the fixed plan has {len(plan)} steps but the run has {num_steps}")
    return plan


def all_full_plan(num_steps: int) -> Plan:
    return Plan(tuple(StepPlan(Action.FULL) for _ in range(num_steps)), "full", {})


def duca_cycle_action(position: int) -> Action:
    """DuCa's cycle after a full step: odd offsets conservative, even offsets aggressive."""
    if position == 0:
        return Action.FULL
    return Action.CONSERVATIVE if position % 2 == 1 else Action.AGGRESSIVE


@dataclass(frozen=True)
class StepWindow:
    """Where in a run a method may skip: not in its first `first_full_steps` steps, and only within
    [start, end) (fractions of the step count); every other step computes. Every method's settings
    carry one, and this is where it is checked."""
    first_full_steps: int = 0
    start: float = 0.0
    end: float = 1.0

    def __post_init__(self):
        check_int("first_full_steps", self.first_full_steps, 0, 100_000)
        check_window(self.start, self.end)

    def bounds(self, num_steps: int) -> tuple:
        """(the first step that may skip, the step from which every step computes again)."""
        return max(self.first_full_steps, int(round(self.start * num_steps))), int(round(self.end * num_steps))

    def may_skip(self, step: int, num_steps: int) -> bool:
        first, stop = self.bounds(num_steps)
        return first <= step < stop


def duca_plan(num_steps: int, interval: int, refresh_ratio: float, first_full_steps: int = 3,
              start: float = 0.0, end: float = 1.0, aggressive: bool = True) -> Plan:
    """Full every `interval` steps, conservative / aggressive alternating in between.

    `start` and `end` are fractions of the step count; outside [start, end) every
    step is full. The cycle is anchored on the last full step before the cached
    window (or on step 0), so the window never opens with a redundant full step.
    `aggressive=False` gives ToCa (all conservative).
    """
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    if not 0.0 <= refresh_ratio <= 1.0:
        raise ValueError(f"refresh_ratio must be in [0, 1], got {refresh_ratio}")
    first_cached, last_cached = StepWindow(first_full_steps, start, end).bounds(num_steps)
    anchor = max(first_cached - 1, 0)
    steps = []
    for i in range(num_steps):
        if i < first_cached or i >= last_cached:
            steps.append(StepPlan(Action.FULL))
            continue
        action = duca_cycle_action((i - anchor) % interval)
        if action is Action.AGGRESSIVE and not aggressive:
            action = Action.CONSERVATIVE
        steps.append(StepPlan(action, refresh_ratio if action is Action.CONSERVATIVE else 0.0))
    settings = {"interval": interval, "refresh_ratio": refresh_ratio, "first_full_steps": first_full_steps,
                "start": start, "end": end, "aggressive": aggressive}
    return Plan(tuple(steps), "duca" if aggressive else "toca", settings)


def budget_plan(num_steps: int, budget: float, first_full_steps: int = 3, max_skipped: int = 0,
                ends: float = 0.0, last_step_full: bool = False) -> Plan:
    """Full on round(budget x steps) steps: the first `first_full_steps`, the rest over the steps after
    them (the last skipped run ends the run); forecast (FORECAST) in between. `ends` = 0 spreads
    them evenly; towards 1 they move to cosine (Chebyshev-like) spacing, denser near the start and
    the end of sampling, where the model's output bends most. At least the first steps and one step
    compute. `last_step_full`: the last step is one of them (a gap that ends the run has no computed
    step after it to be corrected at). `max_skipped` > 0 caps the longest run of skipped steps
    (computing more than the budget if it must). A budget of 1 computes everything."""
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget must be in (0, 1], got {budget}")
    if not 0.0 <= ends <= 1.0:
        raise ValueError(f"ends must be in [0, 1], got {ends}")
    computes = min(max(int(round(budget * num_steps)), min(first_full_steps, num_steps), 1), num_steps)
    first = min(first_full_steps, computes)
    final = [num_steps - 1] if last_step_full and computes > first else []
    rest, span = computes - first - len(final), num_steps - first - len(final)
    full, last = list(range(first)), first - 1
    for i in range(rest):
        u = (i + 1) / (rest + 1)
        where = (1 - ends) * u + ends * (1 - math.cos(math.pi * u)) / 2
        # distinct steps, leaving room for the ones still to place
        last = min(max(first - 1 + round(where * (span + 1)), last + 1), first + span - (rest - i))
        full.append(last)
    full += final
    if max_skipped > 0:
        full = sorted(_capped(full, num_steps, max_skipped))
    full = set(full)
    steps = tuple(StepPlan(Action.FULL if i in full else Action.FORECAST) for i in range(num_steps))
    return Plan(steps, "forecast", {"budget": budget, "first_full_steps": first_full_steps,
                                    "max_skipped": max_skipped, "ends": ends,
                                    "last_step_full": last_step_full})


def _capped(full: list, num_steps: int, max_skipped: int) -> set:
    """`full` with steps added wherever more than `max_skipped` steps in a row would be skipped."""
    capped, last = set(), -1
    for step in full + [num_steps]:
        while step - last - 1 > max_skipped:
            last += max_skipped + 1
            capped.add(last)
        if step < num_steps:
            capped.add(step)
        last = step
    return capped


def every_kth_step_plan(num_steps: int, k: int, first_full_steps: int = 1) -> Plan:
    """The simplest baseline: compute every k-th step, reuse the whole stack otherwise."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    steps = []
    for i in range(num_steps):
        full = i < first_full_steps or (i - first_full_steps) % k == 0
        steps.append(StepPlan(Action.FULL if full else Action.AGGRESSIVE))
    return Plan(tuple(steps), f"every-{k}", {"k": k, "first_full_steps": first_full_steps})


def step_index(sigmas, sigma: float, tolerance: float = 1e-5) -> int:
    """Position of `sigma` in a decreasing schedule.

    A sigma between two schedule points (a sampler's intermediate evaluation)
    belongs to the step that started above it, so multi-evaluation samplers
    never shift the plan.
    """
    index = 0
    for i, s in enumerate(sigmas[:-1] if len(sigmas) > 1 else sigmas):
        if float(s) + tolerance * max(1.0, abs(float(s))) >= sigma:
            index = i
        else:
            break
    return index
