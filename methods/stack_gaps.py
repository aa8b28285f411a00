"""What the host adds to the hidden state between hooked blocks, within one model call.

Flux, Chroma, HunyuanVideo and Qwen-Image add ControlNet residuals after their blocks, outside
the block hooks (in place: `img[:, :n] += control`), and Wan VACE adds its control-video hints
the same way. An aggressive step skips the stack and adds the stack's residual from a computed
step; if that residual still held the computed step's control, the skipped step would replay old
control and lose its own. So on calls that carry control the residual is kept without what was
added between blocks, and the skipped step's own control, which reaches the last block's input
through the passed-through blocks, stays in.

Measuring costs a copy of the hidden state per block, so it runs only on calls with control.
"""
from __future__ import annotations

import inspect
from typing import Optional

import torch


# Model inputs whose residuals the host adds between blocks: a ControlNet's (Flux, Chroma,
# HunyuanVideo, Qwen-Image), Wan VACE's control-video hints (its VACE blocks, every few blocks),
# Wan 2.2 S2V's audio (its audio injector, after chosen blocks) and Wan Animate's face motion (its
# face adapter, after every fifth block).
BETWEEN_BLOCK_INPUTS = ("control", "vace_context", "audio_embed", "face_pixel_values")


def carries_control(executor, args: tuple, kwargs: dict) -> bool:
    """Whether a model call passes residuals the host adds between blocks (read by name)."""
    if any(kwargs.get(name) is not None for name in BETWEEN_BLOCK_INPUTS):
        return True
    try:  # the host's executor wraps the model's own forward: bind the call to its signature
        bound = inspect.signature(executor.original).bind_partial(*args, **kwargs)
    except (AttributeError, TypeError, ValueError):
        return False
    return any(bound.arguments.get(name) is not None for name in BETWEEN_BLOCK_INPUTS)


class StackGaps:
    """Sums, over one call, what the host added between consecutive hooked blocks."""

    def __init__(self, adapter):
        self.adapter = adapter
        self.total: Optional[torch.Tensor] = None  # in the stack-state layout
        self._exited: Optional[torch.Tensor] = None  # the last block's output, copied (the host adds in place)

    def block_exit(self, kind: str, out: dict) -> None:
        self._exited = self.adapter.stack_state(kind, out).clone()

    def block_entry(self, kind: str, args: dict) -> None:
        if self._exited is None:
            return
        gap = self.adapter.stack_state(kind, args) - self._exited
        self.total = gap if self.total is None else self.total + gap
        self._exited = None

    def without_gaps(self, stack_change: torch.Tensor) -> torch.Tensor:
        return stack_change if self.total is None else stack_change - self.total
