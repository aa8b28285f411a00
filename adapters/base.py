"""What every adapter shares: its blocks as an ordered list of `patches_replace` keys."""
from __future__ import annotations

import contextlib

from ..cache_core import family_defaults


class BlockStack:
    """`keys`: ("double_block" | "single_block", index) in the order the model runs them."""
    keys: list
    step_level = False  # True: no block hooks, whole model calls are reused (step_level.py)

    @property
    def first_key(self):
        return self.keys[0]

    @property
    def last_key(self):
        return self.keys[-1]

    def layer_position(self, kind: str, index: int):
        """(position in the stack, stack depth), for per-layer refresh ratios."""
        if getattr(self, "_positions", None) is None:
            self._positions = {key: i for i, key in enumerate(self.keys)}
        return self._positions[(kind, index)], len(self.keys)

    @property
    def schedule_family(self) -> str:
        """The family name a schedule made on this model carries (and must match)."""
        return self.family

    def schedule_units(self) -> list:
        """Names of the units a schedule decides on, in run order."""
        if self.step_level:
            return ["model"]
        return [f"{kind}.{index}" for kind, index in self.keys]

    def plan_for(self, config, num_steps: int):
        """The run's plan: a preset's with this family's measured settings (an adapter with its
        own method, the U-Net's DeepCache, overrides it)."""
        return family_defaults.for_family(config, self.family).plan_for(num_steps)

    @staticmethod
    def can_refresh(kind: str, args: dict) -> bool:
        """False when this block call can't be refreshed token-wise (it is computed instead)."""
        return True

    def around_call(self, run, call):
        """A context entered around each model call that computes (adapters that work on
        the whole forward, such as the U-Net's DeepCache, stand in for blocks here)."""
        return contextlib.nullcontext()
