"""The one way the pack's nodes put themselves on a ComfyUI model: a clone of the patcher, a
holder in its transformer options (settings in, the last run's results out) and keyed wrappers.
Applied twice, the last settings win: the earlier wrappers with the same key are taken out."""
from __future__ import annotations

import comfy.patcher_extension as ext

# The host's cond-batch wrapper type where it has one, else None (feature-detected).
CALC_COND_BATCH = getattr(ext.WrappersMP, "CALC_COND_BATCH", None)
# every wrapper type the pack's nodes use (removed by key when a node is applied again)
WRAPPER_TYPES = tuple(kind for kind in (ext.WrappersMP.OUTER_SAMPLE, ext.WrappersMP.DIFFUSION_MODEL,
                                         ext.WrappersMP.APPLY_MODEL, CALC_COND_BATCH) if kind is not None)


class Holder:
    """What a node puts on the model: its settings, and what the most recent run left."""

    def __init__(self, config, family: str, listeners=()):
        self.config = config
        self.family = family
        self.listeners = list(listeners)  # callables taking the RunStats of each run (the UI reporter)
        self.last_stats = None            # of the most recent run (or model call, for the slicer)
        self.last_result = None           # what the method left, e.g. a calibration's ChangeProfile
        self.compiled_blocks = {}         # under TorchCompileModel: the blocks compiled one by one

    def __deepcopy__(self, memo):  # ModelPatcher.clone() deep-copies model_options
        return Holder(self.config, self.family, self.listeners)


def attach(model, key: str, holder: Holder, wrappers: dict):
    """A clone of `model` with `holder` at `key` and `wrappers` (type -> function) under `key`."""
    patched = model.clone()
    options = patched.model_options.setdefault("transformer_options", {})
    if key in options and hasattr(patched, "remove_wrappers_with_key"):
        for wrapper_type in WRAPPER_TYPES:
            patched.remove_wrappers_with_key(wrapper_type, key)
    for wrapper_type, wrapper in wrappers.items():
        patched.add_wrapper_with_key(wrapper_type, key, wrapper)
    options[key] = holder
    return patched


def holder_of(model, key: str):
    """The holder a node put on `model` at `key` (None if none)."""
    return model.model_options.get("transformer_options", {}).get(key)


def find_transformer_options(args: tuple, kwargs: dict) -> dict:
    """A wrapper call's transformer options, passed by name or as its last dict argument."""
    options = kwargs.get("transformer_options")
    if isinstance(options, dict):
        return options
    for value in reversed(args):
        if isinstance(value, dict):
            return value
    return {}
