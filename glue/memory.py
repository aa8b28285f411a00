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
from ..slicer import MemoryAdapter, SliceSettings, find_memory_adapter
from .patch import find_transformer_options

LOG = logging.getLogger("comfyui-duca")
WRAPPER_KEY = "duca_feature_slicer"
HOLDER_KEY = "duca_feature_slicer"  # transformer_options: the node's settings and the last call's stats
OVERRIDE_KEY = "optimized_attention_override"  # the host's attention hook (comfy/ldm/modules/attention.py)


class SlicerHolder:
    """Settings in, what the last model call sliced out."""

    def __init__(self, chunks: Optional[int], family: str):
        self.chunks = chunks  # None: automatic
        self.family = family
        self.last_stats = None

    def __deepcopy__(self, memo):  # ModelPatcher.clone() deep-copies model_options
        return SlicerHolder(self.chunks, self.family)


def free_memory(device) -> Optional[float]:
    try:
        import comfy.model_management as mm
        return float(mm.get_free_memory(device))
    except Exception:  # an older or newer host without it: slice by the shapes alone
        return None


def diffusion_model_of(obj):
    return getattr(obj, "diffusion_model", obj)


def with_options(args: tuple, kwargs: dict, options: dict, replacement: dict):
    """The call's arguments with its transformer options dict replaced by `replacement`."""
    if kwargs.get("transformer_options") is options:
        return args, {**kwargs, "transformer_options": replacement}
    args = tuple(replacement if a is options else a for a in args)
    return args, kwargs


def slicer_wrapper(executor, *args, **kwargs):
    options = find_transformer_options(args, kwargs)
    holder = options.get(HOLDER_KEY)
    adapter = find_memory_adapter(diffusion_model_of(getattr(executor, "class_obj", None)))
    if holder is None or adapter is None or not args:
        return executor(*args, **kwargs)
    device = getattr(args[0], "device", None)
    settings = SliceSettings(requested=holder.chunks, free_bytes=free_memory(device) if holder.chunks is None else None)
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
    diffusion_model = getattr(getattr(model, "model", None), "diffusion_model", None)
    adapter = find_memory_adapter(diffusion_model)
    if adapter is None:
        LOG.warning("DuCa feature slicer: %s is not a model family this node knows how to slice; "
                    "passing it through unchanged.", type(diffusion_model).__name__)
        return model
    patched = model.clone()
    options = patched.model_options.setdefault("transformer_options", {})
    kind = wrapper_type(adapter)
    if HOLDER_KEY in options and hasattr(patched, "remove_wrappers_with_key"):
        for earlier in (ext.WrappersMP.DIFFUSION_MODEL, ext.WrappersMP.APPLY_MODEL):
            patched.remove_wrappers_with_key(earlier, WRAPPER_KEY)  # applied twice: the last settings win
    patched.add_wrapper_with_key(kind, WRAPPER_KEY, slicer_wrapper)
    options[HOLDER_KEY] = SlicerHolder(chunks, adapter.family)
    LOG.info("DuCa feature slicer: %s, %d operators sliced%s, chunks %s", adapter.family, len(adapter.targets),
             " + self-attention over queries" if adapter.spec.attention else "", chunks or "auto")
    return patched


def last_slice_stats(model):
    """What the last model call of a model patched by `apply_feature_slicer` sliced (None if none)."""
    holder = model.model_options.get("transformer_options", {}).get(HOLDER_KEY)
    return holder.last_stats if holder is not None else None
