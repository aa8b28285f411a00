"""Estimators: what a skipped unit hands on in place of computing. Each takes the values kept
at the unit's computed steps, oldest first, and returns the estimate for the current step.

Only reuse is here today; a forecast (a Taylor or a global fit) is one more function of the
same shape, kept values in, estimate out.
"""
from __future__ import annotations


def reuse(kept: list):
    """The unit's value at its last computed step."""
    return kept[-1]


ESTIMATORS = {"reuse": reuse}
HISTORY = {"reuse": 1}  # how many computed values each estimator keeps per quantity
