"""Learning-to-Cache on the user's own model and conditionings.

1. One uncached run with the user's sampling settings records every model call (inputs,
   step, output).
2. A router holds one logit per (step, block); beta = sigmoid(logit). On a routed step
   each block returns beta * (its fresh output) + (1 - beta) * (its reused output), the
   reused output being what this pack's reuse path gives from the cache filled at the
   last full step (fresh gates where the family has them). Training replays a routed
   step's recorded call and minimises MSE(routed output, uncached output), normalised by
   the output's mean square, plus `reuse_pressure` * mean(beta); only the logits learn.
3. Thresholding beta gives a static schedule (schedule_rules.router).

Differences from the paper, for minutes on one user's model instead of hours on
ImageNet: a few hundred iterations on one trajectory, a larger learning rate, and a
routed step's cache always comes from the last full step (at run time a block computed
on an earlier routed step refreshes its cache, so the schedule is, if anything, better
than trained for).
"""
from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

import comfy.patcher_extension as ext

from ..cache_core.plan import step_index
from ..cache_core.schedule_rules import router
from .patch import find_transformer_options
from .schedules import Sampling, model_adapter

RECORD_KEY = "duca_l2c_record"


@dataclass
class RecordedCall:
    step: int
    args: tuple
    kwargs: dict
    options: dict             # its transformer_options, less what replays must not run
    options_at: object        # where they go back: "kwargs" or a position in args
    output: torch.Tensor

    def replay(self, diffusion_model, patches: dict) -> torch.Tensor:
        options = {**self.options, "patches_replace": {"dit": patches}}
        args, kwargs = list(self.args), dict(self.kwargs)
        if self.options_at == "kwargs":
            kwargs["transformer_options"] = options
        else:
            args[self.options_at] = options
        return diffusion_model(*args, **kwargs)


@dataclass
class Trajectory:
    sigmas: list = field(default_factory=list)
    calls: list = field(default_factory=list)

    def at(self, step: int) -> list:
        return [c for c in self.calls if c.step == step]


def _detached(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    return value


REPLAY_DROPPED = ("wrappers", "patches_replace", "callbacks")  # replays run only the router's patches


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


@contextlib.contextmanager
def autograd_ready(module: torch.nn.Module):
    """Lets autograd run through `module`: weights loaded while the host ran in inference mode
    are swapped for ordinary copies (one extra copy of them while training), and tensors
    saved for backward are copied so the host's in-place adds (`img += ...`) don't void them."""
    swapped = []
    with torch.inference_mode(False):
        for sub in module.modules():
            for table in (sub._parameters, sub._buffers):
                for name, tensor in list(table.items()):
                    if tensor is not None and tensor.is_inference():
                        copy = tensor.detach().clone()
                        table[name] = torch.nn.Parameter(copy, requires_grad=False) if table is sub._parameters \
                            else copy
                        swapped.append((table, name, tensor))
    try:
        with torch.inference_mode(False), torch.enable_grad(), \
                torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
            yield
    finally:
        for table, name, tensor in swapped:
            table[name] = tensor


class RouterBlocks:
    """`patches_replace["dit"]` entries for replays: fill the cache, or blend by the router.

    The cache follows the run-time rule softly: after a routed step each block's cache is
    beta * (its fresh units) + (1 - beta) * (the cache), so beta = 1 refreshes it and beta = 0
    keeps it, as computing or reusing the block does when the schedule runs."""

    def __init__(self, adapter, logits: torch.Tensor):
        self.adapter = adapter
        self.logits = logits
        self.index = {key: i for i, key in enumerate(adapter.keys)}
        self.mode = "fill"
        self.step = 0
        self.slot = 0      # which of a step's model calls (conditioning groups) runs
        self.caches = {}   # (slot, block key) -> what the reuse path needs

    def patches(self) -> dict:
        return {key: (lambda args, extra, key=key: self.block(key, args, extra["original_block"]))
                for key in self.adapter.keys}

    def block(self, key, args, original):
        kind = key[0]
        block = self.adapter.block(*key)
        inputs = self.adapter.passthrough(kind, args)
        if self.mode == "fill":
            with torch.no_grad():
                out, units = self._fresh(kind, block, args, inputs, original)
            self.caches[(self.slot, key)] = units
            return out
        cache = self.caches[(self.slot, key)]
        reused = self._reused(kind, block, {**args, **{k: v.clone() for k, v in inputs.items()}}, cache, original)
        fresh, units = self._fresh(kind, block, {**args, **{k: v.clone() for k, v in inputs.items()}}, inputs,
                                   original)
        beta = torch.sigmoid(self.logits[self.step, self.index[key]])
        with torch.no_grad():
            kept = beta.detach()
            for name, value in units.items():
                if value.is_floating_point() and name in cache:
                    cache[name] = kept * value.detach() + (1 - kept) * cache[name]
        return {k: beta * fresh[k] + (1 - beta) * reused[k] for k in fresh}

    def _fresh(self, kind, block, args, inputs, original):
        """The block's output and what the reuse path needs of it (its units, or its residual)."""
        if self.adapter.tokenwise:
            return self.adapter.full(kind, block, args, original, record=True)
        before = {k: v.detach().clone() for k, v in inputs.items()}
        out = original(args)
        return out, {k: out[k].detach() - v for k, v in before.items()}

    def _reused(self, kind, block, args, cache, original):
        if not self.adapter.tokenwise:
            return {k: v + cache[k] if k in cache else v for k, v in self.adapter.passthrough(kind, args).items()}
        streams = self.adapter.streams(kind, args, self.adapter.grid(args["img"]), 0)
        batch, device = args["img"].shape[0], args["img"].device
        picks = {s: torch.empty(batch, 0, dtype=torch.long, device=device) for s in streams}
        return self.adapter.conservative(kind, block, args, dict(cache), picks, original)


def _descend(logits: torch.Tensor, learning_rate: float) -> None:
    """A gradient step scaled by the mean gradient size of the blocks it touches: the step
    size does not depend on the model's output scale, while blocks keep their relative
    gradients (Adam's per-entry normalisation would move every block of a step alike)."""
    grad = logits.grad
    scale = grad.abs()[grad != 0].mean() if bool((grad != 0).any()) else None
    if scale is not None:
        logits -= learning_rate * grad / scale
    logits.clamp_(-5.0, 5.0)


def base_full_steps(num_steps: int, full_every: int, first_full_steps: int) -> list:
    anchor = max(first_full_steps - 1, 0)
    return [i for i in range(num_steps) if i < first_full_steps or (i - anchor) % full_every == 0]


@dataclass
class LearnedRouter:
    gates: torch.Tensor        # [steps, units] sigmoid of the learned logits
    routed_steps: list
    iterations: int
    seconds: float
    losses: list

    def schedule(self, adapter, threshold: float, settings: Optional[dict] = None):
        return router(self.gates, self.routed_steps, adapter.schedule_units(), adapter.schedule_family, threshold,
                      {"iterations": self.iterations, **(settings or {})})


def learn_router(model, sampling: Sampling, full_every: int = 2, first_full_steps: int = 1,
                 iterations: int = 600, seconds: float = 300.0, reuse_pressure: float = 0.01,
                 learning_rate: float = 0.3, seed: int = 0,
                 progress: Optional[Callable[[int, int], None]] = None,
                 interrupted: Optional[Callable[[], None]] = None) -> LearnedRouter:
    adapter = model_adapter(model)
    if adapter.step_level or not adapter.keys:
        raise ValueError(f"model: Learn to Cache needs a family with block hooks; {adapter.family} is reused "
                         "a whole step at a time (use FORA or EB-Cache schedules)")
    if full_every < 2:
        raise ValueError(f"full_every must be >= 2 (1 leaves no step to route), got {full_every}")
    trajectory = record_trajectory(model, sampling)
    num_steps = max(len(trajectory.sigmas) - 1, 1)
    full = base_full_steps(num_steps, full_every, first_full_steps)
    routed = [i for i in range(num_steps) if i not in full and trajectory.at(i)]
    if not routed:
        return LearnedRouter(torch.sigmoid(torch.full((num_steps, len(adapter.keys)), 3.0)), [], 0, 0.0, [])
    import comfy.model_management
    comfy.model_management.load_models_gpu([model])
    diffusion_model = model.model.diffusion_model
    device = trajectory.calls[0].output.device
    with torch.inference_mode(False):  # the host runs nodes in inference mode; the router must learn
        logits = torch.full((num_steps, len(adapter.keys)), 3.0, device=device, requires_grad=True)
        blocks = RouterBlocks(adapter, logits)
    windows = {}  # full step -> the routed steps that reuse its caches
    for step in routed:
        windows.setdefault(max(i for i in full if i < step), []).append(step)
    rng = random.Random(seed)
    losses, started, done = [], time.perf_counter(), 0
    with autograd_ready(diffusion_model):
        while done < iterations and time.perf_counter() - started < seconds:
            # one window: a full step fills the caches, the routed steps after it run in order
            start = rng.choice(sorted(windows))
            blocks.mode, blocks.step = "fill", start
            blocks.caches.clear()
            for blocks.slot, call in enumerate(trajectory.at(start)):
                call.replay(diffusion_model, blocks.patches())
            blocks.mode = "route"
            window_loss = 0.0
            for step in windows[start]:
                if interrupted is not None:
                    interrupted()
                blocks.step = step
                logits.grad = None
                loss = reuse_pressure * torch.sigmoid(logits[step]).mean()
                for blocks.slot, call in enumerate(trajectory.at(step)):
                    out = call.replay(diffusion_model, blocks.patches())
                    loss = loss + torch.mean((out - call.output) ** 2) / torch.mean(call.output ** 2).clamp_min(1e-12)
                loss.backward()
                with torch.no_grad():
                    _descend(logits, learning_rate)
                window_loss += float(loss.detach())
            losses.append(window_loss)
            done += 1
            if progress is not None:
                progress(done, iterations)
    gates = torch.sigmoid(logits.detach()).cpu()
    return LearnedRouter(gates, routed, done, time.perf_counter() - started, losses)

