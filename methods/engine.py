"""One sampling run's bookkeeping: the step of each model call (from the sigma schedule), the
conditioning group it carries, the cache store, the stats, and one guard that switches caching
off when reusing fails. What is computed or reused is the method's business (protocol.Method).

A RunState is created when sampling starts and dropped when it ends, so nothing survives between
runs: a new resolution, batch or step count starts clean, and an interrupted run leaves nothing.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..adapters.base import viewed
from ..cache_core.estimators import ESTIMATORS
from ..cache_core.plan import Action, step_index
from ..cache_core.stats import FLOPS, RunStats
from ..cache_core.store import CacheStore
from .outside import OutsideCompute
from .protocol import Method
from .stack_gaps import carries_control

LOG = logging.getLogger("comfyui-duca")
UNCOND = 1  # how transformer_options["cond_or_uncond"] marks an unconditional batch entry (ComfyUI, Forge)


def conditioning_group(x: torch.Tensor, transformer_options: dict) -> tuple:
    """Which conditionings a model call carries (and at which shape, on which device): one cache
    entry each. Under the host's multi-GPU split each device keeps its own."""
    uuids = tuple(str(u) for u in transformer_options.get("uuids", ()) or ())
    chunks = tuple(transformer_options.get("cond_or_uncond", ()) or ())
    if isinstance(x, (list, tuple)):  # a packed latent (MiniMax-H3: video and audio) as the model gets it
        return (uuids, chunks, tuple(tuple(t.shape) for t in x), str(x[0].device), context_window(transformer_options))
    return (uuids, chunks, tuple(x.shape), str(x.device), context_window(transformer_options))


def context_window(transformer_options: dict) -> tuple:
    """The frames of the host's context window this call samples (long videos): () if none."""
    window = transformer_options.get("context_window")
    return tuple(int(i) for i in getattr(window, "index_list", ()) or ())


def cond_batch_group(conds: list, x: torch.Tensor, sigma: float, transformer_options: dict) -> tuple:
    """Which conditionings a step's whole cond batch carries: each slot's entries (by the uuid the
    host gives each), those outside their timestep range at `sigma` left out, as the host does."""
    def active(entry) -> bool:
        return entry.get("timestep_start", math.inf) >= sigma >= entry.get("timestep_end", -math.inf)
    slots = tuple(None if cond is None else tuple(str(entry.get("uuid")) for entry in cond if active(entry))
                  for cond in conds)
    return (slots, tuple(x.shape), context_window(transformer_options))


def current_sigma(transformer_options: dict) -> Optional[float]:
    sigmas = transformer_options.get("sigmas")
    if sigmas is None:
        return None
    return float(sigmas.flatten()[0]) if isinstance(sigmas, torch.Tensor) else float(sigmas)


def is_interrupt(error: BaseException) -> bool:
    """The host's "stop" button: it must propagate, never be swallowed by a fallback."""
    return type(error).__name__ == "InterruptProcessingException"


@dataclass
class Call:
    """One model evaluation inside the run."""
    step: int
    action: Action
    refresh_ratio: float
    group: tuple                    # conditioning_group()
    grid: tuple                     # token grid of the input (token-wise families)
    device: Optional[torch.device] = None  # where the model runs this call
    sigma: Optional[float] = None
    sample: Optional[torch.Tensor] = None  # the call's input as the sampler passed it
    started: float = field(default_factory=time.perf_counter)
    txt_len: Optional[int] = None   # text tokens, once the first block has seen them
    framed_by_blocks: bool = False  # begun at the first block, ended at the last
    carries_control: bool = False   # ControlNet residuals: the host adds them between blocks
    blocks_before: float = 0.0      # the step's full block compute when the call began
    scratch: dict = field(default_factory=dict)  # the method's values for this call only


class RunState:
    def __init__(self, method: Method):
        """The run of `method`, an executor built for it (its HostContext gives the sigmas)."""
        self.method = method
        self.adapter = method.adapter
        self.sigmas = [float(s) for s in method.host.sigmas]  # a host that learns them as it goes fills them in
        self.num_steps = method.host.num_steps
        self.plan = method.plan
        self.store = CacheStore.on(method.cache_device)
        self.stats = RunStats(self.plan.method, self.num_steps, family=self.adapter.family,
                              model_class=self.adapter.model_class, level=method.level,
                              compute_unit=method.compute_unit)
        self.stats.notes.extend(method.notes)  # e.g. a schedule resampled to this run's step count
        # counted in block FLOPs: what runs outside the hooked blocks is added to every call
        self.outside = OutsideCompute(self.stats.compute_unit == FLOPS and bool(self.adapter.block_ids))
        self.estimate, self.history = ESTIMATORS[method.estimator]
        self._calls = threading.local()  # the model call in progress, per thread (see `call`)
        self._cond_batch = None          # the cond batch in progress: its model calls may run on other threads
        self.completed_groups = set()  # groups whose full step has finished: reuse may follow
        self.disabled = False  # set if reusing ever fails: the rest of the run computes everything
        self.guided = False    # an unconditional output was asked for: the sampler applies guidance
        # where model calls are handed to the method (protocol.DIFFUSION_MODEL or STEP_OUTPUTS); a model
        # whose forward runs no DIFFUSION_MODEL wrapper has its calls taken at apply_model instead
        self.wraps = method.wraps
        self.handed = False    # a model call has reached this run

    # --- model calls -------------------------------------------------------
    @property
    def call(self) -> Optional[Call]:
        """The model call in progress on this thread, else the cond batch in progress (None between
        calls). Per thread: the host's multi-GPU split runs a step's conditionings at once on worker
        threads, one per device, under the one cond batch the forecast decides on."""
        return getattr(self._calls, "call", None) or self._cond_batch

    @call.setter
    def call(self, value: Optional[Call]) -> None:
        self._calls.call = value

    def begin_call(self, x: torch.Tensor, transformer_options: dict, sigma: Optional[float] = None,
                   group: Optional[tuple] = None) -> Call:
        sigma = current_sigma(transformer_options) if sigma is None else sigma
        self.handed = True
        self.guided = self.guided or UNCOND in (transformer_options.get("cond_or_uncond") or ())
        step = step_index(self.sigmas, sigma) if sigma is not None else 0
        planned = self.plan[min(step, len(self.plan) - 1)] if len(self.plan) else None
        action = planned.action if planned else Action.FULL
        group = conditioning_group(x, transformer_options) if group is None else group
        if action is not Action.FULL and group not in self.completed_groups:
            self.stats.notes.append(f"step {step}: no cache yet for this conditioning, computed fully")
            action = Action.FULL
        stats = self.stats.at(step)
        if not stats.action:
            stats.action = action.value
        device = (x[0] if isinstance(x, (list, tuple)) else x).device
        self.call = Call(step, action, planned.refresh_ratio if planned else 0.0, group, self.adapter.grid(x),
                         device, sigma, x, blocks_before=stats.compute_full)
        return self.call

    def end_call(self, call: Call) -> None:
        stats = self.stats.at(call.step)
        stats.outside += self.outside.of(stats.compute_full - call.blocks_before)
        stats.model_calls += 1
        stats.wall_seconds += time.perf_counter() - call.started
        if call.action is Action.FULL:
            self.completed_groups.add(call.group)
        stats.cache_bytes = max(stats.cache_bytes, self.store.nbytes())
        self.call = None
        if self._cond_batch is call:
            self._cond_batch = None

    def model_call(self, executor, args: tuple, kwargs: dict, transformer_options: dict):
        """What the DIFFUSION_MODEL wrapper runs: the method decides; if reusing fails partway,
        the call is computed again from fresh argument containers and caching stays off."""
        call = self.begin_call(args[0], transformer_options)
        call.carries_control = carries_control(executor, args, kwargs)
        try:
            # the host consumes some arguments (ControlNet residual lists are popped): keep copies
            retry = (_fresh_containers(args), _fresh_containers(kwargs)) if call.action is not Action.FULL else None
            try:
                with self.outside.measuring(call.action is Action.FULL):
                    return self.method.on_call(self, call, lambda: executor(*args, **kwargs))
            except Exception as error:
                if retry is None or self.disabled or is_interrupt(error):
                    raise
                self.switch_off(call, error)
                return executor(*retry[0], **retry[1])
        finally:
            self.end_call(call)

    def cond_batch_call(self, executor, conds: list, x: torch.Tensor, timestep: torch.Tensor,
                        transformer_options: dict, args: tuple, kwargs: dict) -> list:
        """What the host's cond-batch wrapper runs, for a method of whole-step outputs: every
        conditioning's denoised output of a step at once (stacked), so a skipped step skips the
        host's batching of the conditionings and their ControlNets too. Empty slots (no negative
        at cfg 1) stay the host's zeros."""
        sigma = float(timestep.flatten()[0])
        call = self.begin_call(x, transformer_options, sigma, cond_batch_group(conds, x, sigma, transformer_options))
        self._cond_batch = call
        filled = [i for i, cond in enumerate(conds) if cond is not None]
        self.guided = self.guided or len(filled) > 1
        outputs = [None if cond is not None else torch.zeros_like(x) for cond in conds]
        may_retry = call.action is not Action.FULL  # the host's arguments are untouched until it computes

        def compute() -> torch.Tensor:
            outputs[:] = executor(*args, **kwargs)
            if len(filled) == 1:  # cfg 1: a view, no copy
                return outputs[filled[0]].unsqueeze(0)
            return torch.stack([outputs[i] for i in filled])
        try:
            try:
                stacked = self.method.on_call(self, call, compute)
            except Exception as error:
                if not may_retry or self.disabled or is_interrupt(error):
                    raise
                self.switch_off(call, error)
                return executor(*args, **kwargs)
            for i, value in zip(filled, stacked.unbind(0)):
                outputs[i] = value
            return outputs
        finally:
            self.end_call(call)

    # --- blocks ------------------------------------------------------------
    def run_block(self, kind: str, index: int, args: dict, original) -> dict:
        view = self.adapter.view
        if view is None:
            return self._run_block(kind, index, args, original)
        return view.output_out(self._run_block(kind, index, view.args_in(args), viewed(view, original)))

    def _run_block(self, kind: str, index: int, args: dict, original) -> dict:
        block_id = (kind, index)
        if self.call is None and block_id == self.adapter.first_block and "transformer_options" in args:
            # a family whose forward runs no DIFFUSION_MODEL wrapper: the block stack frames the call
            self.begin_call(args["img"], args["transformer_options"]).framed_by_blocks = True
        call = self.call
        if call is None:  # a model call we know nothing about: leave it alone
            return original(args)
        if call.txt_len is None:
            if kind == "double_block" and isinstance(args.get("txt"), torch.Tensor):
                call.txt_len = args["txt"].shape[1]
            else:  # no double blocks: the text is what the image grid is not
                call.txt_len = max(args["img"].shape[1] - math.prod(call.grid), 0)
        if self.outside.counting:  # only on the one call a run measures
            out = self.outside.block(lambda: self.method.on_block(self, call, block_id, args, original))
        else:
            out = self.method.on_block(self, call, block_id, args, original)
        if call.framed_by_blocks and block_id == self.adapter.last_block:
            self.end_call(call)
        return out

    # --- the guard -----------------------------------------------------------
    def switch_off(self, call: Call, error: Exception, where: str = "the model call") -> None:
        """Reusing failed: the rest of this run computes everything (logged once, noted in the stats)."""
        LOG.exception("DuCa: reusing features failed at step %d (%s); computing the rest of this run "
                      "without caching", call.step, where)
        self.stats.notes.append(f"caching switched off at step {call.step}: {error!r}")
        self.disabled = True

    def guarded(self, call: Call, where: str, reuse, compute):
        """`reuse()`, or, if it fails (interrupts excepted), caching off and `compute()`."""
        try:
            return reuse()
        except Exception as error:  # never fail a user's run over a cache problem
            if is_interrupt(error):
                raise
            self.switch_off(call, error, where)
        return compute()

    # --- kept values and their estimates -------------------------------------
    def keep(self, call: Call, name, value) -> None:
        """State a method keeps for this conditioning group (module caches, counts), as it is."""
        self.store.put(call.group, name, value)

    def keep_point(self, call: Call, name, value, t: Optional[float] = None) -> None:
        """A unit's value at a computed step, kept with its time (`t`, default the call's sigma) for
        the estimator of the steps that skip it; at most as many points as the estimator uses."""
        self.store.append(call.group, name, (call.sigma if t is None else t, value), keep_last=self.history)

    def estimated(self, call: Call, name, device=None, t: Optional[float] = None):
        """What a skipped unit hands on at this call's time (`t`, default its sigma); None when
        nothing was kept for this group."""
        points = self.store.get(call.group, name, device=device)
        if not points:
            return None
        t = call.sigma if t is None else t
        return self.estimate(points, t) if t is not None else points[-1][1]

    def has_kept(self, call: Call, name) -> bool:
        return self.store.has(call.group, name)

    def finish(self) -> RunStats:
        self.store.clear()
        self.completed_groups.clear()
        self.call, self._cond_batch = None, None
        return self.stats


def end_run(run: RunState, listeners=()) -> tuple:
    """End a run as every host's glue does: (its stats, what its method left); the run line is
    logged and each listener is called with the stats (a failing listener never fails the run)."""
    stats = run.finish()
    result = run.method.finish(run)
    LOG.info("DuCa: %s", stats.summary())
    for listener in listeners:
        try:
            listener(stats)
        except Exception:
            LOG.exception("DuCa: stats listener failed")
    return stats, result


def _fresh_containers(value):
    """The same tensors in new dicts and lists (so a consumed list can be replayed)."""
    if type(value) is dict:
        return {k: _fresh_containers(v) for k, v in value.items()}
    if type(value) in (list, tuple):  # not subclasses: a named tuple can't be rebuilt from one iterable
        return type(value)(_fresh_containers(v) for v in value)
    return value
