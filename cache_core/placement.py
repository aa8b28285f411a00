"""Full steps placed as the run goes, under a compute budget (the `adaptive` placement).

The live signal is the forecast's own error: at each computed step the value just computed is
compared with what the forecast would have handed on there, relative to its size, and divided by
the product of the distances to the two computed steps the forecast came from (a linear forecast's
error grows with that product; the quotient is the local curvature). The log-curvature's trend
over the last measurements is extrapolated over the steps still to come; the remaining budget is
spread over them with density sqrt(curvature) (the spacing that gives every gap the same
forecast error), and the next full step is the first at which the density since the last full
step reaches its share.

Deterministic: the same outputs give the same decisions. The first steps always compute; the
count never exceeds round(budget x steps), and the last steps compute if only that reaches it; a
cap on the longest skipped run holds while budget remains.
"""
from __future__ import annotations

import math

TREND_WINDOW = 4        # curvature measurements the trend is fitted over
STEEPEST_TREND = 0.3    # |d log curvature / d step| is clipped to this: a few points extrapolate poorly


class AdaptiveBudget:
    def __init__(self, num_steps: int, budget: float, first_full_steps: int = 3, max_skipped: int = 0):
        if not 0.0 < budget <= 1.0:
            raise ValueError(f"budget must be in (0, 1], got {budget}")
        self.num_steps = num_steps
        self.computes = min(max(int(round(budget * num_steps)), min(first_full_steps, num_steps), 1), num_steps)
        self.first = min(first_full_steps, self.computes)
        even_gap = (num_steps - self.first) / max(self.computes - self.first + 1, 1)
        self.max_skipped = max_skipped or max(2, math.ceil(2 * even_gap))  # 0: twice the even spacing
        self.computed = []   # steps decided full, in order
        self.decided = {}    # step -> full?
        self.curvature = []  # (step, measured curvature)

    def is_full(self, step: int) -> bool:
        """Whether `step` computes (decided once, at its first model call)."""
        if step not in self.decided:
            self.decided[step] = self._decide(step)
            if self.decided[step]:
                self.computed.append(step)
        return self.decided[step]

    def observe(self, step: int, relative_error: float) -> None:
        """The forecast's error at computed `step`, measured against the computed value."""
        earlier = [s for s in self.computed if s < step][-2:]
        if len(earlier) < 2 or any(s == step for s, _ in self.curvature):
            return
        gaps = (step - earlier[1]) * (step - earlier[0])
        self.curvature.append((step, max(relative_error, 1e-12) / gaps))

    def _decide(self, step: int) -> bool:
        left = self.computes - len(self.computed)
        if step < self.first or not self.computed:
            return left > 0 or not self.computed
        if left <= 0:
            return False
        if self.num_steps - step <= left:  # only computing every step from here spends the budget
            return True
        last = self.computed[-1]
        if step - last > self.max_skipped:
            return True
        density = self._density()
        weights = [density(j) for j in range(last + 1, self.num_steps + 1)]
        share = sum(weights) / (left + 1)
        return sum(weights[:step - last]) >= share * (1 - 1e-9)

    def _density(self):
        """step -> sqrt(extrapolated curvature); constant (even spacing) before any measurement."""
        points = self.curvature[-TREND_WINDOW:]
        if not points:
            return lambda step: 1.0
        xs = [s for s, _ in points]
        ys = [math.log(c) for _, c in points]
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        spread = sum((x - mean_x) ** 2 for x in xs)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread if spread else 0.0
        slope = max(-STEEPEST_TREND, min(STEEPEST_TREND, slope))
        return lambda step: math.exp(0.5 * (mean_y + slope * (step - mean_x)))
