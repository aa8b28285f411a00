"""How much each unit's contribution changes from step to step, measured on a run.

Block Caching decides reuse from this profile, and Step Rehash from the similarity of
one probed unit across steps. A unit's contribution is its residual (output minus
input), the thing a reused unit hands on.
"""
from __future__ import annotations

import torch


def flat(residual) -> torch.Tensor:
    """One float vector per batch item from a tensor or a dict of tensors (a block's streams)."""
    parts = residual.values() if isinstance(residual, dict) else (residual,)
    return torch.cat([p.detach().float().flatten(1) for p in parts], dim=1)


class ChangeProfile:
    def __init__(self, num_steps: int, num_units: int, probe_unit: int = -1):
        self.num_steps, self.num_units = num_steps, num_units
        self.probe_unit = probe_unit % num_units if num_units else 0
        self._sums = torch.zeros(num_steps, num_units, dtype=torch.float64)
        self._counts = torch.zeros(num_steps, num_units, dtype=torch.float64)
        self._last = {}    # (conditioning group, unit) -> (step, residual)
        self._probe = {}   # conditioning group -> {step: probed residual}

    def observe(self, group, unit: int, step: int, residual) -> None:
        current = flat(residual)
        previous = self._last.get((group, unit))
        if previous is not None and previous[0] == step - 1 and previous[1].shape == current.shape:
            before = previous[1]
            change = (current - before).abs().mean() / before.abs().mean().clamp_min(1e-12)
            self._sums[step, unit] += float(change)
            self._counts[step, unit] += 1
        self._last[(group, unit)] = (step, current)
        if unit == self.probe_unit:
            self._probe.setdefault(group, {})[step] = current

    def relative_change(self) -> torch.Tensor:
        """[steps, units]: mean relative L1 change since the previous step (0 where unmeasured)."""
        return self._sums / self._counts.clamp_min(1)

    def similarity(self) -> torch.Tensor:
        """[steps, steps]: cosine similarity of the probed unit's residual between steps,
        averaged over conditionings (1 on the diagonal, 0 where a step was not seen)."""
        total = torch.zeros(self.num_steps, self.num_steps, dtype=torch.float64)
        count = torch.zeros_like(total)
        for steps in self._probe.values():
            for i, a in steps.items():
                for k, b in steps.items():
                    if a.shape == b.shape:
                        total[i, k] += float(torch.nn.functional.cosine_similarity(a, b, dim=1).mean())
                        count[i, k] += 1
        return total / count.clamp_min(1)
