"""Attach the Feature Slicer to a ComfyUI model.

One keyed wrapper around every model call (DIFFUSION_MODEL, or APPLY_MODEL for a
family whose forward runs no DIFFUSION_MODEL wrappers) puts the slicer's stand-ins
(slicer/) on the model's modules and the query-slicing attention override
in the call's transformer options, and takes both away in `finally`. Its own key
lets it compose with the Accelerate wrappers in either order.
"""
from __future__ import annotations

import logging
from typing import Optional

import comfy.patcher_extension as ext

from ..adapters.units import standing_in
from ..methods.attach import diffusion_model_of
from ..slicer import MemoryAdapter, SliceSettings, find_memory_adapter
from .attach import Holder, attach, find_transformer_options, holder_of

LOG = logging.getLogger("comfyui-duca")
KEY = "duca_feature_slicer"  # wrappers and transformer_options: the holder (chunks in, last call's stats out)
OVERRIDE_KEY = "optimized_attention_override"  # the host's attention hook (comfy/ldm/modules/attention.py)


def free_memory(device) -> Optional[float]:
    try:
        import comfy.model_management as mm
        return float(mm.get_free_memory(device))
    except Exception:  # an older or newer host without it: slice by the shapes alone
        return None


def called_diffusion_model(base_model):
    """The diffusion model a wrapper's executor belongs to (its class_obj is the host's BaseModel)."""
    return getattr(base_model, "diffusion_model", base_model)


def with_options(args: tuple, kwargs: dict, options: dict, replacement: dict):
    """The call's arguments with its transformer options dict replaced by `replacement`."""
    if kwargs.get("transformer_options") is options:
        return args, {**kwargs, "transformer_options": replacement}
    args = tuple(replacement if a is options else a for a in args)
    return args, kwargs


def slicer_wrapper(executor, *args, **kwargs):
    options = find_transformer_options(args, kwargs)
    holder = options.get(KEY)
    adapter = find_memory_adapter(called_diffusion_model(getattr(executor, "class_obj", None)))
    if holder is None or adapter is None or not args:
        return executor(*args, **kwargs)
    device = getattr(args[0], "device", None)
    chunks = holder.config  # None: automatic
    settings = SliceSettings(requested=chunks, free_bytes=free_memory(device) if chunks is None else None)
    replacement = dict(options)
    override = adapter.attention_override(settings, options.get(OVERRIDE_KEY))
    if override is not None:
        replacement[OVERRIDE_KEY] = override
    args, kwargs = with_options(args, kwargs, options, replacement)
    try:
        with standing_in(adapter.stand_ins(settings)):
            return executor(*args, **kwargs)
    finally:
        holder.last_stats = settings.stats
        LOG.debug("DuCa feature slicer: %s", settings.stats.summary())


def wrapper_type(adapter: MemoryAdapter) -> str:
    return ext.WrappersMP.DIFFUSION_MODEL if adapter.spec.diffusion_wrapper else ext.WrappersMP.APPLY_MODEL


def apply_feature_slicer(model, chunks: Optional[int] = None):
    """A clone of `model` whose calls run their sliceable operators slice by slice
    (`chunks` slices, or automatic for None), or `model` itself if its family is unknown."""
    diffusion_model = diffusion_model_of(model)
    adapter = find_memory_adapter(diffusion_model)
    if adapter is None:
        LOG.warning("DuCa feature slicer: %s is not a model family this node knows how to slice; "
                    "passing it through unchanged.", type(diffusion_model).__name__)
        return model
    patched = attach(model, KEY, Holder(chunks, adapter.family), {wrapper_type(adapter): slicer_wrapper})
    LOG.info("DuCa feature slicer: %s, %d operators sliced%s, chunks %s", adapter.family, len(adapter.targets),
             " + self-attention over queries" if adapter.spec.attention else "", chunks or "auto")
    return patched


def last_slice_stats(model):
    """What the last model call of a model patched by `apply_feature_slicer` sliced (None if none)."""
    holder = holder_of(model, KEY)
    return holder.last_stats if holder is not None else None
