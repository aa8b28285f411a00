"""Attach a caching method to a ComfyUI model through the host's extension points.

- OUTER_SAMPLE wrapper: creates the run (methods.engine.RunState) for one sampling run and
  drops it in `finally` (EasyCache's idiom).
- DIFFUSION_MODEL wrapper: hands each model call to the run.
- CALC_COND_BATCH wrapper: hands each step's whole cond batch to the run, for methods that work
  on the denoised outputs (methods.forecast): a skipped step then skips the host's batching and
  ControlNets too. On a host without that wrapper type, the APPLY_MODEL wrapper does it per call.
- `patches_replace["dit"]` entries (methods.attach.BlockPatch, shared with Forge): hand each
  hooked block to the run.
Wrappers take `(executor, *args, **kwargs)` and pass everything through.
"""
from __future__ import annotations

import contextvars
import logging

import comfy.model_patcher
import comfy.patcher_extension as ext

from ..adapters import find_adapter
from ..adapters.registry import GENERIC
from ..methods import HostContext, RunState, executor_for
from ..methods.attach import adapter_for, diffusion_model_of, outside_compile, patch_blocks
from ..methods.engine import end_run
from ..methods.protocol import DIFFUSION_MODEL, STEP_OUTPUTS
from .attach import CALC_COND_BATCH, Holder, attach, find_transformer_options, holder_of
from .compile import compile_hooked_blocks

LOG = logging.getLogger("comfyui-duca")
KEY = "duca_accelerate"          # wrappers and transformer_options: the holder
RUN_KEY = "duca_accelerate_run"  # transformer_options: the live run, only while sampling
# The run of the model call in progress, for block patches whose arguments carry no transformer
# options (Wan 2.2 S2V's forward leaves them out). Per thread: the host's threads never mix runs.
CALLING_RUN = contextvars.ContextVar("duca_calling_run", default=None)


@outside_compile
def _model_call(run, executor, args, kwargs, options):
    token = CALLING_RUN.set(run)
    try:
        return run.model_call(executor, args, kwargs, options)
    finally:
        CALLING_RUN.reset(token)


COND_BATCH_ARGUMENTS = ("model", "conds", "x_in", "timestep", "model_options")
# Where a newer host's multi-GPU CFG split keeps its per-device model copies (model_options).
MULTIGPU_CLONES = "multigpu_clones"


def outer_sample_wrapper(executor, *args, **kwargs):
    guider = executor.class_obj
    sigmas = kwargs["sigmas"] if "sigmas" in kwargs else args[3]
    sampler = kwargs["sampler"] if "sampler" in kwargs else (args[2] if len(args) > 2 else None)
    original_options = guider.model_options
    guider.model_options = comfy.model_patcher.create_model_options_clone(original_options)
    options = guider.model_options.setdefault("transformer_options", {})
    holder: Holder = options[KEY]
    adapter = find_adapter(diffusion_model_of(guider.model_patcher))
    host = HostContext(tuple(float(s) for s in sigmas), model_sampling(guider.model_patcher), sampler,
                       split_over_devices=MULTIGPU_CLONES in guider.model_options)
    run = RunState(executor_for(holder.config, adapter, host))
    options[RUN_KEY] = run
    blocks = [adapter.block(kind, index) for kind, index in adapter.block_ids]
    if compile_hooked_blocks(guider.model_options, guider.model_patcher.model, blocks, holder.compiled_blocks):
        run.outside.enabled = False  # a FLOP counter around compiled blocks would recompile them
        LOG.info("DuCa: TorchCompileModel compiles the %d hooked blocks one by one", len(blocks))
    LOG.info("DuCa: %s on %s", run.plan, holder.family)
    try:
        return executor(*args, **kwargs)
    finally:
        guider.model_options = original_options
        holder.last_stats, holder.last_result = end_run(run, holder.listeners)


def diffusion_model_wrapper(executor, *args, **kwargs):
    return _hand_to_run(executor, args, kwargs, wraps=DIFFUSION_MODEL)


def apply_model_wrapper(executor, *args, **kwargs):
    run = find_transformer_options(args, kwargs).get(RUN_KEY)
    if run is None or run.wraps != DIFFUSION_MODEL or run.handed:
        return _hand_to_run(executor, args, kwargs, wraps=STEP_OUTPUTS)
    out = executor(*args, **kwargs)  # its model's DIFFUSION_MODEL wrapper hands the call on, if it runs one
    if not run.handed:
        run.wraps = STEP_OUTPUTS
        run.stats.notes.append("the model's forward runs no DIFFUSION_MODEL wrapper: whole calls are "
                               "taken at apply_model from the second call on")
        LOG.info("DuCa: %s", run.stats.notes[-1])
    return out


def cond_batch_wrapper(executor, *args, **kwargs):
    """A step's cond batch to the live run, if its method works on whole-step outputs."""
    named = dict(zip(COND_BATCH_ARGUMENTS, args), **kwargs)
    options = (named.get("model_options") or {}).get("transformer_options", {})
    run = options.get(RUN_KEY)
    if (run is None or run.method.wraps != STEP_OUTPUTS or run.call is not None
            or any(named.get(name) is None for name in ("x_in", "timestep")) or not isinstance(named.get("conds"), list)):
        return executor(*args, **kwargs)
    return run.cond_batch_call(executor, named["conds"], named["x_in"], named["timestep"], options, args, kwargs)


def _hand_to_run(executor, args, kwargs, wraps):
    """The model call to the live run, if its method works at this wrapper's level (and no cond
    batch around it has been handed to the run already)."""
    options = find_transformer_options(args, kwargs)
    run = options.get(RUN_KEY)
    if run is None or not args or run.wraps != wraps or run.call is not None:
        return executor(*args, **kwargs)
    return _model_call(run, executor, args, kwargs, options)


def model_sampling(model_patcher):
    """The model's sampling as sampling sees it (patched samplings count)."""
    get = getattr(model_patcher, "get_model_object", None)
    return get("model_sampling") if get else getattr(model_patcher.model, "model_sampling", None)


def apply_method(model, config, listeners=()):
    """A clone of `model` running `config`'s method (a methods.protocol.MethodConfig), or `model`
    itself where no method can run on it. `listeners` are called with the RunStats at the end of every run."""
    diffusion_model = diffusion_model_of(model)
    sampling = model_sampling(model) if diffusion_model is not None else None
    adapter, config, why_not = adapter_for(diffusion_model, sampling, lambda _: config)
    if why_not:
        LOG.warning("DuCa: %s; passing it through unchanged.", why_not)
        return model
    if adapter.family == GENERIC.name:
        LOG.info("DuCa: %s has no entry in this pack's registry: whole model calls are its unit (the budget "
                 "presets forecast them; caching inside it needs an entry)", adapter.model_class)
    wrappers = {ext.WrappersMP.OUTER_SAMPLE: outer_sample_wrapper,
                ext.WrappersMP.DIFFUSION_MODEL: diffusion_model_wrapper,
                ext.WrappersMP.APPLY_MODEL: apply_model_wrapper}
    if CALC_COND_BATCH is not None:
        wrappers[CALC_COND_BATCH] = cond_batch_wrapper
    patched = attach(model, KEY, Holder(config, adapter.label, listeners), wrappers)
    patch_blocks(patched, adapter, live_run)
    return patched


def live_run(block_args: dict):
    """The run a hooked block belongs to: its options', or (a forward that passes its blocks none,
    Wan 2.2 S2V's) the model call's on this thread."""
    return (block_args.get("transformer_options") or {}).get(RUN_KEY) or CALLING_RUN.get()


def last_stats(model):
    """RunStats of the last run of a model patched by `apply_method` (None if none)."""
    holder = holder_of(model, KEY)
    return holder.last_stats if holder is not None else None


def last_result(model):
    """What the last run's method left (a calibration's ChangeProfile; None for most methods)."""
    holder = holder_of(model, KEY)
    return holder.last_result if holder is not None else None
