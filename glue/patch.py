"""Attach the accelerator to a ComfyUI model through the host's extension points.

- OUTER_SAMPLE wrapper: creates the run state for one sampling run and drops
  it in `finally` (EasyCache's idiom).
- DIFFUSION_MODEL wrapper: tells the run which step and conditionings a model
  call belongs to, and times it.
- `patches_replace["dit"]` entries: the block-level work.
Wrappers take `(executor, *args, **kwargs)` and pass everything through.
"""
from __future__ import annotations

import logging

import comfy.model_patcher
import comfy.patcher_extension as ext

from ..adapters import find_adapter
from ..cache_core import Action, DuCaConfig
from .run import RunState

LOG = logging.getLogger("comfyui-duca")
WRAPPER_KEY = "duca_accelerate"
HOLDER_KEY = "duca_accelerate"   # transformer_options: the node's settings (and last stats)
RUN_KEY = "duca_accelerate_run"  # transformer_options: the live run, only while sampling


class DuCaHolder:
    """What the node puts on the model: settings in, statistics of the last run out."""

    def __init__(self, config: DuCaConfig, family: str):
        self.config = config
        self.family = family
        self.last_stats = None   # RunStats of the most recent run
        self.last_profile = None  # ChangeProfile of the most recent calibration run
        self.listeners = []      # callables taking RunStats, e.g. the UI reporter

    def __deepcopy__(self, memo):  # ModelPatcher.clone() deep-copies model_options
        clone = DuCaHolder(self.config, self.family)
        clone.listeners = list(self.listeners)
        return clone


class BlockPatch:
    """A `patches_replace["dit"]` entry; chains to a patch that was there before."""

    def __init__(self, kind: str, index: int, inner=None):
        self.kind, self.index, self.inner = kind, index, inner

    def __call__(self, args: dict, extra: dict) -> dict:
        original = extra["original_block"]
        if self.inner is not None:
            inner = self.inner
            original = lambda a: inner(a, extra)  # noqa: E731
        run = (args.get("transformer_options") or {}).get(RUN_KEY)
        if run is None:
            return original(args)
        return run.run_block(self.kind, self.index, args, original)


def find_transformer_options(args: tuple, kwargs: dict) -> dict:
    options = kwargs.get("transformer_options")
    if isinstance(options, dict):
        return options
    for value in reversed(args):
        if isinstance(value, dict):
            return value
    return {}


def outer_sample_wrapper(executor, *args, **kwargs):
    guider = executor.class_obj
    sigmas = kwargs["sigmas"] if "sigmas" in kwargs else args[3]
    original_options = guider.model_options
    guider.model_options = comfy.model_patcher.create_model_options_clone(original_options)
    options = guider.model_options.setdefault("transformer_options", {})
    holder: DuCaHolder = options[HOLDER_KEY]
    adapter = find_adapter(guider.model_patcher.model.diffusion_model)
    run = RunState(holder.config, adapter, sigmas)
    options[RUN_KEY] = run
    LOG.info("DuCa: %s on %s", run.plan, holder.family)
    try:
        return executor(*args, **kwargs)
    finally:
        stats = run.finish()
        holder.last_stats = stats
        holder.last_profile = run.profile
        guider.model_options = original_options
        LOG.info("DuCa: %s", stats.summary())
        for listener in holder.listeners:
            try:
                listener(stats)
            except Exception:  # a reporting failure must never fail the sampling run
                LOG.exception("DuCa: stats listener failed")


def diffusion_model_wrapper(executor, *args, **kwargs):
    options = find_transformer_options(args, kwargs)
    run = options.get(RUN_KEY)
    if run is None or not args:
        return executor(*args, **kwargs)
    call = run.begin_call(args[0], options)
    try:
        reused = run.reused_output(call, args[0])
        if reused is not None:
            return reused
        # the host consumes some arguments (ControlNet residual lists are popped): keep copies
        # for a retry, in case reusing fails partway through a call that stands in for modules
        retry = (_fresh_containers(args), _fresh_containers(kwargs)) if call.action is not Action.FULL else None
        try:
            with run.adapter.around_call(run, call):
                output = executor(*args, **kwargs)
        except Exception as error:
            if retry is None or run.disabled or type(error).__name__ == "InterruptProcessingException":
                raise
            run.switch_off(call, error)
            output = executor(*retry[0], **retry[1])
        run.keep_output(call, output)
        return output
    finally:
        run.end_call(call)


def _fresh_containers(value):
    """The same tensors in new dicts and lists (so a consumed list can be replayed)."""
    if type(value) is dict:
        return {k: _fresh_containers(v) for k, v in value.items()}
    if type(value) in (list, tuple):  # not subclasses: a named tuple can't be rebuilt from one iterable
        return type(value)(_fresh_containers(v) for v in value)
    return value


def apply_duca(model, config: DuCaConfig, listeners=()):
    """A clone of `model` with DuCa attached, or `model` itself if its family is unknown.

    `listeners` are called with the RunStats at the end of every run.
    """
    diffusion_model = getattr(getattr(model, "model", None), "diffusion_model", None)
    adapter = find_adapter(diffusion_model) if diffusion_model is not None else None
    if adapter is None:
        LOG.warning("DuCa: %s is not a model family this pack accelerates yet; "
                    "passing it through unchanged.", type(diffusion_model).__name__)
        return model
    if config.unit_schedule is not None:  # made for another model: say so now, not mid-run
        config.unit_schedule.check_fits(adapter.schedule_family, adapter.schedule_units())
    patched = model.clone()
    options = patched.model_options.setdefault("transformer_options", {})
    wrappers = {ext.WrappersMP.OUTER_SAMPLE: outer_sample_wrapper,
                ext.WrappersMP.DIFFUSION_MODEL: diffusion_model_wrapper}
    for wrapper_type, wrapper in wrappers.items():
        if HOLDER_KEY in options and hasattr(patched, "remove_wrappers_with_key"):
            patched.remove_wrappers_with_key(wrapper_type, WRAPPER_KEY)  # applied twice: the last settings win
        patched.add_wrapper_with_key(wrapper_type, WRAPPER_KEY, wrapper)
    holder = DuCaHolder(config, adapter.family)
    holder.listeners.extend(listeners)
    options[HOLDER_KEY] = holder
    existing = options.get("patches_replace", {}).get("dit", {})
    for kind, index in adapter.keys:
        inner = existing.get((kind, index))
        if isinstance(inner, BlockPatch):  # ours, from an earlier application: keep what it wrapped
            inner = inner.inner
        patched.set_model_patch_replace(BlockPatch(kind, index, inner), "dit", kind, index)
    return patched


def last_profile(model):
    """ChangeProfile of the last calibration run (config.measure_change) of a patched model."""
    holder = model.model_options.get("transformer_options", {}).get(HOLDER_KEY)
    return holder.last_profile if holder is not None else None


def last_stats(model):
    """RunStats of the last run of a model patched by `apply_duca` (None if none)."""
    holder = model.model_options.get("transformer_options", {}).get(HOLDER_KEY)
    return holder.last_stats if holder is not None else None
