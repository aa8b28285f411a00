"""Schedule execution: a table (cache_core.schedule) says, per step and unit, compute, reuse
the attention, or reuse the whole unit. FORA, EB-Cache, Block Caching, Learning-to-Cache and
Step Rehash all make such tables; this runs them.

Units are a DiT's hooked blocks, or a U-Net's transformer layers (`x + f(x)`: a reused one hands
on its input plus its residual kept at its last computation). Token-wise families reuse a block
under fresh gates (the adapter's conservative path with every token, or none, refreshed);
block-level families reuse the block's residual. Units are kept only while a later step reuses
them. `compute_block` and `reuse_block` are also how Learning-to-Cache trains its router.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..adapters.registry import DEEPCACHE
from ..adapters.units import own_forward, standing_in
from ..cache_core.plan import Action, StepWindow
from ..cache_core.schedule import Cell, Schedule
from ..cache_core.tokens import TokenRows
from .blocks import begin_block, computed, fresh_ages, refreshed
from .common import MethodSettings, keyword
from .protocol import Executor, HostContext
from .step_reuse import whole_calls
from .unet import counted_call

BLOCK_RESIDUAL = "block_residual"       # kept, with the block id: one block's output minus its input
UNIT_RESIDUAL = "unet_unit_residual"    # kept, with the unit index: a U-Net transformer layer's residual


@dataclass(frozen=True)
class ScheduleConfig(MethodSettings):
    """Shared settings (common.MethodSettings): first_full_steps and start / end (every unit computes
    outside them, whatever the table says), cache_device, estimator (what a reused block hands on
    for its residual; auto: reuse, the papers')."""
    schedule: Schedule              # what each unit does at each step
    first_full_steps: int = keyword(0)
    estimator: str = keyword("reuse")

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.schedule, Schedule):
            raise ValueError(f"schedule must be a cache schedule, got {type(self.schedule).__name__}")

    def check(self, adapter) -> None:
        """A schedule made for another model is refused when attached, not mid-run."""
        self.schedule.check_fits(adapter.family, adapter.schedule_units())

    def executor(self, adapter, host: HostContext):
        config = self.on_model(adapter)
        return whole_calls(ScheduleExecutor(config.schedule, adapter, host, config.cache_device, config.estimator,
                                            window=config.window))


def fit_schedule(schedule: Schedule, adapter, num_steps: int) -> Schedule:
    """The schedule checked against the model (a clear error if it was made for another)
    and resampled to the run's step count (its notes then say so)."""
    schedule.check_fits(adapter.family, adapter.schedule_units())
    return schedule.resampled(num_steps) if num_steps >= 1 else schedule


def last_reuse_steps(schedule: Schedule) -> dict:
    """unit -> the last step at which the schedule reuses it (units never reused: absent)."""
    last = {}
    for step, unit in (schedule.table != Cell.COMPUTE).nonzero().tolist():
        last[unit] = max(last.get(unit, -1), step)
    return last


# --- one block, computed or reused (shared with Learning-to-Cache) ---------------
def compute_block(adapter, kind, block, args, original, keep: bool):
    """The block's output, and (with `keep`) what reusing it later needs: its units (token-wise
    families) or its residual (others)."""
    if adapter.tokenwise:
        return adapter.full(kind, block, args, original, keep_units=keep)
    # a copy: host blocks may add to their inputs in place
    before = {k: v.detach().clone() for k, v in adapter.passthrough(kind, args).items()} if keep else None
    out = original(args)
    return out, ({k: out[k].detach() - v for k, v in before.items()} if keep else None)


def reuse_block(adapter, kind, block, args, kept, original, cell: Cell = Cell.REUSE, streams=None):
    """The block's output from what `compute_block` kept: token-wise families run the block under
    fresh gates with no token (REUSE) or every token's MLP (REUSE_ATTENTION) recomputed; others add
    the kept residual. Returns (output, picks: the tokens recomputed per stream)."""
    if not adapter.tokenwise:
        out = {k: v + kept[k] if k in kept else v for k, v in adapter.passthrough(kind, args).items()}
        return out, {}
    if streams is None:
        streams = adapter.streams(kind, args, adapter.grid(args["img"]), 0)
    batch, device = args["img"].shape[0], args["img"].device
    if cell is Cell.REUSE_ATTENTION:
        picks = {s: TokenRows(torch.arange(layout.total, device=device).expand(batch, layout.total))
                 for s, layout in streams.items()}
    else:
        picks = {s: TokenRows(torch.empty(batch, 0, dtype=torch.long, device=device)) for s in streams}
    return adapter.conservative(kind, block, args, kept, picks, original), picks


class ScheduleExecutor(Executor):
    def __init__(self, schedule: Schedule, adapter, host: HostContext, cache_device: str = "compute",
                 estimator: str = "reuse", observer=None, window: StepWindow = StepWindow()):
        """`schedule`: the table this run follows, before it is fitted to the model and the step
        count (and to `window`: outside it every unit computes); `observer`: a ChangeProfile that
        sees every computed unit's residual (calibration)."""
        super().__init__(adapter, host)
        self.name = schedule.method
        self.cache_device = cache_device
        self.estimator = estimator
        self.observer = observer
        self.unet = adapter.level == DEEPCACHE  # a U-Net: the units are its transformer layers
        if self.unet:
            self.level = "block"  # whole transformer layers
        self.fitted = fit_schedule(schedule, adapter, host.num_steps).within(window)
        self.notes = self.fitted.notes
        self.last_reuse = last_reuse_steps(self.fitted)
        self.unit_index = {block_id: i for i, block_id in enumerate(adapter.block_ids)}
        self.plan = self.fitted.as_plan(whole_steps=adapter.step_level)

    def _kept_for_later(self, run, call, unit: int) -> bool:
        return not run.disabled and call.step < self.last_reuse.get(unit, -1)

    # --- DiT blocks ----------------------------------------------------------
    def on_block(self, run, call, block_id, args, original):
        unit = self.unit_index[block_id]
        work = begin_block(run, call, block_id, args)
        cell = self.fitted.cell(call.step, unit) if call.action is Action.PARTIAL else Cell.COMPUTE
        compute = lambda: self._compute(run, call, work, unit, args, original)  # noqa: E731
        if cell is Cell.COMPUTE or run.disabled or not self._can_reuse(run, call, block_id, args, cell):
            return compute()
        return run.guarded(call, f"block {block_id}", lambda: self._reuse(run, call, work, args, original, cell),
                           compute)

    def _compute(self, run, call, work, unit, args, original) -> dict:
        adapter = self.adapter
        computed(work)
        if adapter.tokenwise:  # units kept on every computed step while the schedule reuses any
            keep = bool(self.last_reuse) and not run.disabled
        else:
            keep = self._kept_for_later(run, call, unit)
        # a copy: host blocks may add to their inputs in place
        before = {k: v.clone() for k, v in adapter.passthrough(work.kind, args).items()} \
            if self.observer is not None else None
        out, kept = compute_block(adapter, work.kind, work.block, args, original, keep)
        if before is not None:
            self.observer.observe(call.group, unit, call.step, {k: out[k] - v for k, v in before.items()})
        if kept is not None and adapter.tokenwise:
            kept.update(fresh_ages(args, work.streams))
            run.keep(call, work.block_id, kept)
        elif kept is not None:
            run.keep_point(call, (BLOCK_RESIDUAL, work.block_id), kept)
        return out

    def _can_reuse(self, run, call, block_id, args, cell) -> bool:
        if self.adapter.tokenwise:
            return run.has_kept(call, block_id) and self.adapter.can_refresh(block_id[0], args)
        # without unit hooks only the whole block can be reused; REUSE_ATTENTION computes it
        return cell is Cell.REUSE and run.has_kept(call, (BLOCK_RESIDUAL, block_id))

    def _reuse(self, run, call, work, args, original, cell) -> dict:
        device = args["img"].device
        if not self.adapter.tokenwise:
            kept = run.estimated(call, (BLOCK_RESIDUAL, work.block_id), device=device)
            return reuse_block(self.adapter, work.kind, work.block, args, kept, original)[0]
        units = run.store.get(call.group, work.block_id, device=device)
        out, picks = reuse_block(self.adapter, work.kind, work.block, args, units, original, cell, work.streams)
        refreshed(run, work, picks)
        run.keep(call, work.block_id, units)
        return out

    # --- U-Net transformer layers ----------------------------------------------
    def on_call(self, run, call, compute):
        if not self.unet:
            return compute()
        with counted_call(run, call, self.adapter) as (block_flops, unit_flops):
            reused = set()
            with self._unit_stand_ins(run, call, unit_flops, reused):
                output = compute()
            if block_flops is not None:
                stats = run.stats.at(call.step)
                total = sum(block_flops.values())
                stats.compute_full += total
                stats.compute_done += total - sum(unit_flops[u] for u in reused)
            return output

    @contextlib.contextmanager
    def _unit_stand_ins(self, run, call, unit_flops, reused):
        units = self.adapter.units
        stand_ins = {}
        if call.action is Action.PARTIAL and not run.disabled and unit_flops is not None:
            for u, unit in enumerate(units):
                if self.fitted.cell(call.step, u) is Cell.REUSE and run.has_kept(call, (UNIT_RESIDUAL, u)):
                    stand_ins[unit] = self._reusing_unit(run, call, u, unit, reused)
        keep = [u for u, unit in enumerate(units) if unit not in stand_ins
                and (self.observer is not None or self._kept_for_later(run, call, u))]
        handles = [units[u].register_forward_hook(self._keeping_unit(run, call, u), with_kwargs=True) for u in keep]
        try:
            with standing_in(stand_ins):
                yield
        finally:
            for handle in handles:
                handle.remove()

    def _keeping_unit(self, run, call, u):
        """Forward hook: the unit's residual, for later reuse and / or the observer."""
        def keep(_module, args, kwargs, out):
            residual = (out - _input_of(args, kwargs)).detach()
            if self.observer is not None:
                self.observer.observe(call.group, u, call.step, residual)
            if self._kept_for_later(run, call, u):
                run.keep_point(call, (UNIT_RESIDUAL, u), residual)
        return keep

    def _reusing_unit(self, run, call, u, unit, reused):
        """Stand-in for a reused unit: its input plus the kept residual; on any failure the unit
        computes and the run stops caching."""
        forward = own_forward(unit)

        def run_unit(*args, **kwargs):
            def reuse():
                x = _input_of(args, kwargs)
                residual = run.estimated(call, (UNIT_RESIDUAL, u), device=x.device)
                if residual is None or residual.shape != x.shape:
                    raise RuntimeError(f"kept residual {getattr(residual, 'shape', None)} does not fit input "
                                       f"{tuple(x.shape)}")
                out = x + residual.to(x.dtype)
                reused.add(u)
                return out
            if run.disabled:
                return forward(*args, **kwargs)
            return run.guarded(call, f"transformer.{u}", reuse, lambda: forward(*args, **kwargs))
        return run_unit


def _input_of(args, kwargs):
    return args[0] if args else kwargs["x"]
