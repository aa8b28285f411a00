"""The one protocol every caching method implements, and the defaults it starts from.

A method is a per-run executor built from its config and the model's adapter. The run engine
(engine.RunState) calls it at two places only: around each model call (`on_call`) and for each
hooked block (`on_block`). Three choices stay apart: the *unit* a method caches (a model call,
the block stack, a block, a module's tokens, a U-Net's deep feature) is what its hooks touch;
the *decision* of when to compute is its `plan`; the *estimator* of a skipped value is the
run's (cache_core.estimators).
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

from ..cache_core.plan import Plan


@runtime_checkable
class Method(Protocol):
    name: str            # for the log and the stats
    level: str           # the level it caches at on this model (token-wise, block, step, deepcache)
    cache_device: str    # where its caches live (store.CACHE_DEVICES)
    notes: tuple         # for the run's stats, once its plan is made
    estimator: str       # what a skipped unit hands on (cache_core.estimators.ESTIMATORS)

    def plan(self, num_steps: int) -> Plan:
        """What each step of a run of `num_steps` does, decided before the run."""

    def on_call(self, run, call, compute: Callable[[], Any]) -> Any:
        """One model call: return its output, by calling `compute()` or from the cache."""

    def on_block(self, run, call, block_id: tuple, args: dict, original: Callable) -> dict:
        """One hooked block: return its output dict, by calling `original(args)` or not."""


class Executor:
    """Defaults: a model call is computed, a block is computed, caches on the compute device."""
    name = "method"
    cache_device = "compute"
    notes = ()  # what the stats should say about how the method fits this run (set by plan())
    estimator = "reuse"  # what its skipped units hand on (cache_core.estimators.ESTIMATORS)

    def __init__(self, adapter):
        self.adapter = adapter
        self.level = adapter.level

    def on_call(self, run, call, compute):
        return compute()

    def on_block(self, run, call, block_id, args, original):
        return original(args)

    def finish(self, run):
        """What the run leaves for the caller (a calibration's profile); None by default."""
        return None
