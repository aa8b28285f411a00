"""DeepCache (arXiv 2312.00858) as plain data: which steps run the whole U-Net and which reuse
its deep features.

On a full step every block of the U-Net runs and the feature entering the chosen
up-path block (before its skip concatenation) is kept. On a reuse step (Action.AGGRESSIVE,
letter A) only the shallow down path up to the branch and the up path from the branch on
run; the deep part is replaced by the kept feature. Which modules that means is the
adapter's business (adapters/unet.py); this module only decides the steps.

Schedules, for T steps and interval N (both give ceil(T / N) full steps in a plain run):
- "uniform": a full step every N steps (DeepCache's default).
- "quadratic": DeepCache's non-uniform schedule. Full steps sit at
  `g(linspace(f(-c), f(T - c), k + 1)) + c`, k = ceil(T / N), with f(u) = sign(u) |u|^(1/p)
  and g its inverse, rounded to the nearest step: dense around the centre step c, sparse
  far from it. The power p starts at `power` and drops by 0.02 until the k steps are
  distinct (p = 1 is uniform, so it always ends). This is the sign-preserving, real-valued
  reading; the reference code raises a negative number to a real power (a complex number in
  Python) and keeps the real part, which moves the early steps. The reference fixes c at step
  15 of 50; here the centre is a fraction of the run (default 0.3 = 15/50) so the shape holds
  for any step count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .config import DuCaConfig, _check_float, _check_int
from .plan import Action, Plan, StepPlan

SCHEDULES = ("uniform", "quadratic")
POWER_STEP = 0.02  # how much the quadratic schedule's power drops per retry (the reference's)


@dataclass(frozen=True)
class DeepCacheConfig(DuCaConfig):
    """DeepCache's settings. A DuCaConfig so the pack's glue runs it unchanged: `interval`,
    `first_full_steps`, `start`, `end`, `cache_device` and a fixed `plan` mean what they mean
    there; the token-wise fields (refresh_ratio, token_selector, ...) are not used.

    `branch`: the deepest input block that still runs on reuse steps (0: only the first, the
    most reuse). Its upper bound depends on the model (its number of input blocks); the
    adapter checks it against the model it runs on.
    """
    interval: int = 3               # DeepCache's default N
    first_full_steps: int = 1       # step 0 always runs (DeepCache's schedules start there)
    branch: int = 0
    schedule: str = "uniform"
    center: float = 0.3             # quadratic: the densest point, as a fraction of the steps
    power: float = 1.4              # quadratic: how strongly full steps gather at the centre

    def __post_init__(self):
        super().__post_init__()
        _check_int("branch", self.branch, 0, 1000)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        _check_float("center", self.center, 0.0, 1.0)
        _check_float("power", self.power, 1.0, 4.0)

    def plan_for(self, num_steps: int) -> Plan:
        if self.plan is not None:
            return super().plan_for(num_steps)
        plan = deepcache_plan(num_steps, self.interval, self.schedule, self.center, self.power,
                              self.first_full_steps, self.start, self.end)
        return Plan(plan.steps, plan.method, {**plan.settings, "branch": self.branch})


def deepcache_plan(num_steps: int, interval: int, schedule: str = "uniform", center: float = 0.3,
                   power: float = 1.4, first_full_steps: int = 1, start: float = 0.0, end: float = 1.0) -> Plan:
    """Full steps by `schedule`, every other step a reuse step (Action.AGGRESSIVE).

    Steps before `first_full_steps` and outside [start, end) (fractions of the step count)
    are full. The uniform cycle is anchored on the last full step before the window, so the
    window never opens with a redundant full step; the quadratic schedule is laid over the
    whole run and then clipped to the window.
    """
    _check_int("num_steps", num_steps, 0, 100_000)
    _check_int("interval", interval, 1, 100_000)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    _check_float("center", center, 0.0, 1.0)
    _check_float("power", power, 1.0, 4.0)
    _check_int("first_full_steps", first_full_steps, 0, 100_000)
    _check_float("start", start, 0.0, 1.0)
    _check_float("end", end, 0.0, 1.0)
    if start > end:
        raise ValueError(f"start ({start}) must not be after end ({end})")
    first_cached = max(first_full_steps, 1, int(round(start * num_steps)))  # step 0 has nothing to reuse
    last_cached = int(round(end * num_steps))  # exclusive
    if schedule == "uniform":
        anchor = first_cached - 1
        full = {i for i in range(num_steps) if (i - anchor) % interval == 0}
    else:
        full = set(quadratic_full_steps(num_steps, interval, center * num_steps, power))
    steps = tuple(StepPlan(Action.FULL if (i < first_cached or i >= last_cached or i in full)
                           else Action.AGGRESSIVE) for i in range(num_steps))
    settings = {"interval": interval, "schedule": schedule, "first_full_steps": first_full_steps,
                "start": start, "end": end}
    if schedule == "quadratic":
        settings.update(center=center, power=power)
    return Plan(steps, "deepcache", settings)


def quadratic_full_steps(num_steps: int, interval: int, center: float, power: float) -> list:
    """DeepCache's non-uniform placement of ceil(T / N) full steps (see the module docstring)."""
    if num_steps == 0:
        return []
    count = math.ceil(num_steps / interval)

    def f(u, p):
        return math.copysign(abs(u) ** (1.0 / p), u)

    def g(v, p):
        return math.copysign(abs(v) ** p, v)

    p = power
    while True:
        low, high = f(-center, p), f(num_steps - center, p)
        points = [g(low + (high - low) * j / count, p) + center for j in range(count + 1)]
        steps = sorted({min(max(int(round(x)), 0), num_steps) for x in points} - {num_steps})
        if len(steps) >= count or p <= 1.0:
            return steps
        p = max(1.0, p - POWER_STEP)
