"""DeepCache (arXiv 2312.00858) as plain data: which steps run the whole U-Net (FULL) and which
reuse its deep feature (AGGRESSIVE). How full steps are placed ("uniform", "quadratic") is in
docs/METHODS.md; how a reuse step runs is methods/deepcache.py's business.
"""
from __future__ import annotations

import math

from .plan import Action, Plan, StepPlan, StepWindow
from .validate import check_choice, check_float, check_int

PLACEMENTS = ("uniform", "quadratic")  # how full steps are placed over the run
POWER_STEP = 0.02  # how much the quadratic schedule's power drops per retry (the reference's)


def deepcache_plan(num_steps: int, interval: int, placement: str = "uniform", center: float = 0.3,
                   power: float = 1.4, first_full_steps: int = 1, start: float = 0.0, end: float = 1.0) -> Plan:
    """Full steps by `placement`, every other step a reuse step (Action.AGGRESSIVE).

    Steps before `first_full_steps` and outside [start, end) (fractions of the step count)
    are full. The uniform cycle is anchored on the last full step before the window, so the
    window never opens with a redundant full step; the quadratic schedule is laid over the
    whole run and then clipped to the window.
    """
    check_int("num_steps", num_steps, 0, 100_000)
    check_int("interval", interval, 1, 100_000)
    check_choice("placement", placement, PLACEMENTS)
    check_float("center", center, 0.0, 1.0)
    check_float("power", power, 1.0, 4.0)
    first_cached, last_cached = StepWindow(first_full_steps, start, end).bounds(num_steps)
    first_cached = max(first_cached, 1)  # step 0 has nothing to reuse
    if placement == "uniform":
        anchor = first_cached - 1
        full = {i for i in range(num_steps) if (i - anchor) % interval == 0}
    else:
        full = set(quadratic_full_steps(num_steps, interval, center * num_steps, power))
    steps = tuple(StepPlan(Action.FULL if (i < first_cached or i >= last_cached or i in full)
                           else Action.AGGRESSIVE) for i in range(num_steps))
    settings = {"interval": interval, "placement": placement, "first_full_steps": first_full_steps,
                "start": start, "end": end}
    if placement == "quadratic":
        settings.update(center=center, power=power)
    return Plan(steps, "deepcache", settings)


def quadratic_full_steps(num_steps: int, interval: int, center: float, power: float) -> list:
    """DeepCache's non-uniform placement of ceil(T / N) full steps (docs/METHODS.md)."""
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
