"""Learning-to-Cache on the user's own model: a router of one logit per (step, block) learned
against the uncached output, through the schedule executor's own compute and reuse paths, then
thresholded into a static schedule (docs/METHODS.md, Learning-to-Cache)."""
from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..cache_core.schedule_rules import router
from .schedules import compute_block, reuse_block


@dataclass
class RecordedCall:
    """One model call of the uncached run, replayable with other block patches."""
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
        self.index = {block_id: i for i, block_id in enumerate(adapter.block_ids)}
        self.mode = "fill"
        self.step = 0
        self.slot = 0      # which of a step's model calls (conditioning groups) runs
        self.caches = {}   # (slot, block id) -> what the reuse path needs

    def patches(self) -> dict:
        return {block_id: (lambda args, extra, block_id=block_id: self.block(block_id, args, extra["original_block"]))
                for block_id in self.adapter.block_ids}

    def block(self, block_id, args, original):
        kind = block_id[0]
        block = self.adapter.block(*block_id)
        inputs = self.adapter.passthrough(kind, args)
        if self.mode == "fill":
            with torch.no_grad():
                out, kept = compute_block(self.adapter, kind, block, args, original, keep=True)
            self.caches[(self.slot, block_id)] = kept
            return out
        cache = self.caches[(self.slot, block_id)]
        reused, _ = reuse_block(self.adapter, kind, block, {**args, **{k: v.clone() for k, v in inputs.items()}},
                                dict(cache), original)
        fresh, kept = compute_block(self.adapter, kind, block, {**args, **{k: v.clone() for k, v in inputs.items()}},
                                    original, keep=True)
        beta = torch.sigmoid(self.logits[self.step, self.index[block_id]])
        with torch.no_grad():
            weight = beta.detach()
            for name, value in kept.items():
                if value.is_floating_point() and name in cache:
                    cache[name] = weight * value.detach() + (1 - weight) * cache[name]
        return {k: beta * fresh[k] + (1 - beta) * reused[k] for k in fresh}


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
        return router(self.gates, self.routed_steps, adapter.schedule_units(), adapter.family, threshold,
                      {"iterations": self.iterations, **(settings or {})})


def check_learnable(adapter, full_every: int) -> None:
    if adapter.step_level or not adapter.block_ids:
        raise ValueError(f"model: Learn to Cache needs a family with block hooks; {adapter.family} is reused "
                         "a whole step at a time (use FORA or EB-Cache schedules)")
    if full_every < 2:
        raise ValueError(f"full_every must be >= 2 (1 leaves no step to route), got {full_every}")


def train_router(diffusion_model, adapter, trajectory: Trajectory, full_every: int = 2, first_full_steps: int = 1,
                 iterations: int = 600, seconds: float = 300.0, reuse_pressure: float = 0.01,
                 learning_rate: float = 0.3, seed: int = 0,
                 progress: Optional[Callable[[int, int], None]] = None,
                 interrupted: Optional[Callable[[], None]] = None) -> LearnedRouter:
    """Replays a routed step's recorded calls and minimises MSE(routed, uncached output), normalised
    by the output's mean square, plus `reuse_pressure` * mean(beta); only the logits learn."""
    num_steps = max(len(trajectory.sigmas) - 1, 1)
    full = base_full_steps(num_steps, full_every, first_full_steps)
    routed = [i for i in range(num_steps) if i not in full and trajectory.at(i)]
    if not routed:
        return LearnedRouter(torch.sigmoid(torch.full((num_steps, len(adapter.block_ids)), 3.0)), [], 0, 0.0, [])
    device = trajectory.calls[0].output.device
    with torch.inference_mode(False):  # the host runs nodes in inference mode; the router must learn
        logits = torch.full((num_steps, len(adapter.block_ids)), 3.0, device=device, requires_grad=True)
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
