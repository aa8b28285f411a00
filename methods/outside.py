"""The compute a model call spends outside the hooked blocks: embedders, output heads, refiners,
Chroma Radiance's per-pixel decoder. A method that caches inside the blocks cannot skip it, so a
run's compute, and the speedup the log claims, must count it on every call.

It is measured once per run, on the first call that computes everything: torch's FLOP counter runs
over the whole call, and the hooked blocks' share of it is read off at each block. What is kept is
the ratio of the rest to the blocks, which scales the blocks' own (analytic) cost of every later
call. Both sides are counted by the same counter, so what it does not count (an attention kernel
it has no formula for) leaves the ratio nearly unchanged.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Optional

try:  # feature-detected: a torch without the counter keeps the blocks' compute only
    from torch.utils.flop_counter import FlopCounterMode
except ImportError:  # pragma: no cover - every torch the host supports has it
    FlopCounterMode = None


class OutsideCompute:
    """Per run: the ratio of a call's compute outside the hooked blocks to that inside them."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and FlopCounterMode is not None
        self.ratio: Optional[float] = None  # None until measured (or where it cannot be)
        self._counter = None
        self._thread = None  # the counting thread
        self._in_blocks = 0

    @contextlib.contextmanager
    def measuring(self, computes_all: bool):
        """Around a whole model call: counts it, if it is the run's first that computes everything."""
        if not (self.enabled and computes_all and self.ratio is None and self._counter is None):
            yield
            return
        counter = FlopCounterMode(display=False)
        self._counter, self._thread, self._in_blocks = counter, threading.get_ident(), 0
        try:
            with counter:
                yield
        finally:
            self._counter = None
        total = counter.get_total_flops()
        if self._in_blocks > 0:
            self.ratio = max(total - self._in_blocks, 0) / self._in_blocks
        self.enabled = self.ratio is not None  # a call that reached no block is not measured again

    @property
    def counting(self) -> bool:
        """A call is being measured on this thread (other threads' blocks are not in its count)."""
        return self._counter is not None and self._thread == threading.get_ident()

    def block(self, run_block):
        """Runs one hooked block (`run_block()`) of the measured call, its share counted."""
        before = self._counter.get_total_flops()
        out = run_block()
        self._in_blocks += self._counter.get_total_flops() - before
        return out

    def of(self, block_compute: float) -> float:
        """What runs outside the blocks on a call whose blocks cost `block_compute` in full."""
        return self.ratio * block_compute if self.ratio else 0.0
