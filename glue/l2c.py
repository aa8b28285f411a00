"""Learning-to-Cache against a real model: one uncached run with the user's sampling settings
records every model call, then methods.l2c trains the router on replays of them."""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch

import comfy.model_management
import comfy.patcher_extension as ext

from ..cache_core.plan import step_index
from ..methods.l2c import LearnedRouter, RecordedCall, Trajectory, check_learnable, train_router
from .attach import find_transformer_options
from .schedules import Sampling, model_adapter

RECORD_KEY = "duca_l2c_record"
REPLAY_DROPPED = ("wrappers", "patches_replace", "callbacks")  # replays run only the router's patches


def _detached(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    return value


def record_trajectory(model, sampling: Sampling) -> Trajectory:
    """Sample once without caching and keep every model call."""
    trajectory = Trajectory()

    def outer(executor, *args, **kwargs):
        sigmas = kwargs["sigmas"] if "sigmas" in kwargs else args[3]
        trajectory.sigmas = [float(s) for s in sigmas]
        return executor(*args, **kwargs)

    def diffusion(executor, *args, **kwargs):
        output = executor(*args, **kwargs)
        options = find_transformer_options(args, kwargs)
        at = "kwargs" if kwargs.get("transformer_options") is options else \
            max(i for i, a in enumerate(args) if a is options)
        sigma = options.get("sigmas")
        step = step_index(trajectory.sigmas, float(sigma.flatten()[0])) if sigma is not None else len(trajectory.calls)
        kept_args = tuple(None if i == at else a for i, a in enumerate(args))
        kept_kwargs = {k: v for k, v in kwargs.items() if k != "transformer_options"}
        replay_options = {k: v for k, v in options.items() if k not in REPLAY_DROPPED}
        with torch.inference_mode(False):
            trajectory.calls.append(RecordedCall(step, _detached(kept_args), _detached(kept_kwargs), replay_options,
                                                 at, _detached(output)))
        return output

    recorder = model.clone()
    recorder.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, RECORD_KEY, outer)
    recorder.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, RECORD_KEY, diffusion)
    sampling.run(recorder)
    return trajectory


def learn_router(model, sampling: Sampling, full_every: int = 2, first_full_steps: int = 1,
                 iterations: int = 600, seconds: float = 300.0, reuse_pressure: float = 0.01,
                 learning_rate: float = 0.3, seed: int = 0,
                 progress: Optional[Callable[[int, int], None]] = None,
                 interrupted: Optional[Callable[[], None]] = None) -> LearnedRouter:
    adapter = model_adapter(model)
    check_learnable(adapter, full_every)
    trajectory = record_trajectory(model, sampling)
    comfy.model_management.load_models_gpu([model])
    with host_training():
        return train_router(model.model.diffusion_model, adapter, trajectory, full_every, first_full_steps,
                            iterations, seconds, reuse_pressure, learning_rate, seed, progress, interrupted)


@contextlib.contextmanager
def host_training():
    """Tell the host a training runs, as its own training node does: newer hosts run some fused
    kernels (rotary embeddings, norms) that have no backward unless told (feature-detected: a host
    without the flag has no such kernels)."""
    if not hasattr(comfy.model_management, "in_training"):
        yield
        return
    before = comfy.model_management.in_training
    comfy.model_management.in_training = True
    try:
        yield
    finally:
        comfy.model_management.in_training = before
