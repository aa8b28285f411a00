"""The papers' rules for deciding, ahead of a run, which unit is reused at which step.

Each takes plain numbers (and, for the measured rules, a [steps, units] tensor measured
on the user's model) and returns a Schedule; none of them looks at a model.
"""
from __future__ import annotations

import torch

from .schedule import Cell, Schedule


def _check_steps(num_steps: int, first_full_steps: int) -> None:
    if num_steps < 1:
        raise ValueError(f"steps must be >= 1, got {num_steps}")
    if first_full_steps < 0:
        raise ValueError(f"first_full_steps must be >= 0, got {first_full_steps}")


def fora(num_steps: int, units, family: str, interval: int = 3, first_full_steps: int = 1) -> Schedule:
    """FORA: every unit computed every `interval` steps (and the first steps), reused otherwise."""
    _check_steps(num_steps, first_full_steps)
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    anchor = max(first_full_steps - 1, 0)
    computed = [i < first_full_steps or (i - anchor) % interval == 0 for i in range(num_steps)]
    table = torch.tensor([[Cell.COMPUTE if c else Cell.REUSE] * len(units) for c in computed], dtype=torch.uint8)
    return Schedule(table, tuple(units), family, "fora", {"interval": interval, "first_full_steps": first_full_steps})


def parse_step_table(text: str) -> list:
    """EB-Cache's table, one digit per step (0 compute, 1 reuse attention, 2 reuse both);
    commas and spaces are ignored."""
    digits = [c for c in text if not c.isspace() and c != ","]
    bad = sorted({c for c in digits if c not in "012"})
    if bad:
        raise ValueError(f"table may hold only the digits 0, 1, 2 (one per step), found {''.join(bad)!r}")
    return [int(c) for c in digits]


def eb_cache(num_steps: int, units, family: str, attention_interval: int = 3, mlp_interval: int = 2,
             first_full_steps: int = 3, table: str = "") -> Schedule:
    """EB-Cache: attention and MLP on separate static intervals, or an explicit per-step table.

    Attention is the slower-changing unit, so it is reused at least as long as the MLP:
    a step where only the MLP would be reused is computed instead.
    """
    _check_steps(num_steps, first_full_steps)
    if table.strip():
        per_step = parse_step_table(table)
        if len(per_step) != num_steps:
            raise ValueError(f"table has {len(per_step)} entries but steps is {num_steps}")
        settings = {"table": "".join(map(str, per_step))}
    else:
        if attention_interval < 1 or mlp_interval < 1:
            raise ValueError("attention_interval and mlp_interval must be >= 1")
        if mlp_interval > attention_interval:
            raise ValueError(f"mlp_interval ({mlp_interval}) must not exceed attention_interval "
                             f"({attention_interval}): attention is the unit reused longer")
        anchor = max(first_full_steps - 1, 0)
        per_step = []
        for i in range(num_steps):
            if i < first_full_steps:
                per_step.append(Cell.COMPUTE)
                continue
            attention = (i - anchor) % attention_interval == 0
            mlp = (i - anchor) % mlp_interval == 0
            per_step.append(Cell.COMPUTE if attention else Cell.REUSE_ATTENTION if mlp else Cell.REUSE)
        settings = {"attention_interval": attention_interval, "mlp_interval": mlp_interval,
                    "first_full_steps": first_full_steps}
    rows = torch.tensor(per_step, dtype=torch.uint8)[:, None].expand(num_steps, len(units))
    return Schedule(rows, tuple(units), family, "eb-cache", settings)


def block_caching(change: torch.Tensor, units, family: str, threshold: float, first_full_steps: int = 1) -> Schedule:
    """Block Caching: recompute a unit once the relative change of its output, accumulated
    since it was last computed, passes `threshold`; reuse it until then.

    `change[i, u]` is unit u's relative L1 change between steps i - 1 and i (row 0 unused).
    """
    change = torch.as_tensor(change, dtype=torch.float64)
    _check_steps(change.shape[0], first_full_steps)
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    table = torch.full(change.shape, int(Cell.REUSE), dtype=torch.uint8)
    accumulated = torch.zeros(change.shape[1], dtype=torch.float64)
    for i in range(change.shape[0]):
        if i < max(first_full_steps, 1):
            table[i] = Cell.COMPUTE
            continue
        accumulated += change[i]
        due = accumulated > threshold
        table[i][due] = Cell.COMPUTE
        accumulated[due] = 0.0
    return Schedule(table, tuple(units), family, "block-caching",
                    {"threshold": threshold, "first_full_steps": first_full_steps})


def router(gates: torch.Tensor, routed_steps, units, family: str, threshold: float, settings=None) -> Schedule:
    """Learning-to-Cache: on routed steps a unit is computed iff its learned gate exceeds
    `threshold`; every other step is computed."""
    gates = torch.as_tensor(gates, dtype=torch.float64)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    table = torch.zeros(gates.shape, dtype=torch.uint8)
    for i in routed_steps:
        table[i] = torch.where(gates[i] > threshold, int(Cell.COMPUTE), int(Cell.REUSE)).to(torch.uint8)
    return Schedule(table, tuple(units), family, "l2c", {"threshold": threshold, **(settings or {})})


def threshold_for_fraction(gates: torch.Tensor, routed_steps, fraction: float) -> float:
    """The router threshold that computes `fraction` of all unit-steps (more where gates tie at
    the cut), for a schedule of a given compute or one compared with a fixed schedule."""
    gates = torch.as_tensor(gates, dtype=torch.float64)
    routed = sorted(set(routed_steps))
    steps, units = gates.shape
    must = (steps - len(routed)) * units           # unit-steps outside routed steps are computed
    wanted = round(fraction * steps * units) - must
    values = gates[routed].flatten().sort(descending=True).values
    if wanted <= 0 or not len(values):
        return 1.0
    if wanted >= len(values):
        return 0.0
    if values[wanted - 1] > values[wanted]:
        return float((values[wanted - 1] + values[wanted]) / 2)
    # a tie at the cut: compute all of the tied unit-steps rather than none of them
    return float(values[wanted - 1]) - 1e-12


def step_rehash(similarity: torch.Tensor, units, family: str, threshold: float, keep_first: int = 1,
                first_full_steps: int = 1) -> Schedule:
    """Step Rehash: a step is a key step (all computed) when the probed feature's similarity
    to the last key step falls below `threshold`; other steps recompute the first
    `keep_first` units (the shallow path) and reuse the deep ones.

    `similarity[i, k]`: cosine similarity of the probed feature at step i to step k (k < i).
    """
    similarity = torch.as_tensor(similarity, dtype=torch.float64)
    steps = similarity.shape[0]
    _check_steps(steps, first_full_steps)
    table = torch.zeros(steps, len(units), dtype=torch.uint8)
    key = 0
    for i in range(steps):
        if i < max(first_full_steps, 1) or similarity[i, key] < threshold:
            key = i
            continue
        table[i, keep_first:] = Cell.REUSE
    return Schedule(table, tuple(units), family, "step-rehash",
                    {"threshold": threshold, "keep_first": keep_first, "first_full_steps": first_full_steps})
