"""What attaching a method to a model is on every host (the ComfyUI glue and the Forge glue): the
family's adapter, where no method can run on it the reason, and one block patch that hands each
hooked block to the live run."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..adapters import find_adapter
from . import why_no_method
from .protocol import method_config


def outside_compile(fn):
    """`fn`, run eagerly (with what it calls) when compiled code calls it."""
    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    return disable(fn) if disable is not None else fn


def diffusion_model_of(patcher):
    """The diffusion model inside a model patcher, ComfyUI's or Forge's (None if it has none)."""
    return getattr(getattr(patcher, "model", None), "diffusion_model", None)


def adapter_for(diffusion_model, sampling, config_for: Callable) -> tuple:
    """(adapter, config, "") where a method can run on the model; (adapter or None, None, why not)
    where none can. `config_for(adapter)` gives the settings (Forge's depend on the family); a
    method this model can't run is refused now, naming the input."""
    adapter = find_adapter(diffusion_model)
    why_not = why_no_method(adapter, sampling)
    if why_not:
        return adapter, None, why_not
    config = method_config(config_for(adapter))
    config.check(adapter)
    return adapter, config, ""


class BlockPatch:
    """A `patches_replace["dit"]` entry: the block to the run `live_run(args)` finds (None: the
    block runs as it would without us); chains to a patch that was there before."""

    def __init__(self, kind: str, index: int, live_run: Callable[[dict], Optional[object]], inner=None):
        self.kind, self.index, self.live_run, self.inner = kind, index, live_run, inner

    def __call__(self, args: dict, extra: dict) -> dict:
        original = extra["original_block"]
        if self.inner is not None:
            inner = self.inner
            original = lambda a: inner(a, extra)  # noqa: E731
        run = self.live_run(args)
        if run is None:
            return original(args)
        return _run_block(run, self.kind, self.index, args, original)


@outside_compile
def _run_block(run, kind, index, args, original):
    return run.run_block(kind, index, args, original)


def patch_blocks(patcher, adapter, live_run) -> None:
    """One BlockPatch per hooked block of `adapter` on `patcher` (a clone), each chained to the patch
    that was there; one of ours from an earlier application is replaced, not chained."""
    existing = patcher.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    for kind, index in adapter.block_ids:
        inner = existing.get((kind, index))
        if isinstance(inner, BlockPatch):
            inner = inner.inner
        patcher.set_model_patch_replace(BlockPatch(kind, index, live_run, inner), "dit", kind, index)
