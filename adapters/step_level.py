"""Families whose forward offers no block hook (the registry's "step" level): the whole model
call is the unit, counted in model calls."""
from __future__ import annotations

from .base import FamilyAdapter


class StepAdapter(FamilyAdapter):
    level = "step"
    step_level = True

    def __init__(self, family: str):
        self.family = family
        self.block_ids = []
