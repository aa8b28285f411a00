"""One sampling run: its plan, cache store, statistics and the block-level logic.

Created in the OUTER_SAMPLE wrapper and dropped when the run ends, so nothing
survives between runs (a new resolution, batch or step count starts clean, and
an interrupted run leaves nothing behind).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..cache_core import (Action, CacheStore, DuCaConfig, RunStats, TokenSelector, all_full_plan, layer_refresh_ratio,
                          step_index)
from ..cache_core.profile import ChangeProfile
from ..cache_core.schedule import Cell, Schedule

RESIDUAL = "residual"   # store name: stack output minus stack input at the last computed step
STEP_OUTPUT = "step_output"  # store name: the model's output at the last computed step (step level)
BLOCK_RESIDUAL = "block_residual"  # store name prefix: one block's output minus input (schedules)
LOG = logging.getLogger("comfyui-duca")


def call_key(x: torch.Tensor, transformer_options: dict) -> tuple:
    """Which conditionings this model call carries: one cache entry per group."""
    uuids = tuple(str(u) for u in transformer_options.get("uuids", ()) or ())
    chunks = tuple(transformer_options.get("cond_or_uncond", ()) or ())
    return (uuids, chunks, tuple(x.shape))


def current_sigma(transformer_options: dict) -> Optional[float]:
    sigmas = transformer_options.get("sigmas")
    if sigmas is None:
        return None
    return float(sigmas.flatten()[0]) if isinstance(sigmas, torch.Tensor) else float(sigmas)


@dataclass
class Call:
    """One model evaluation inside the run."""
    step: int
    action: Action
    refresh_ratio: float
    key: tuple
    grid: tuple
    started: float = field(default_factory=time.perf_counter)
    txt_len: Optional[int] = None
    stack_in: Optional[torch.Tensor] = None
    framed_by_blocks: bool = False  # begun at the first block, ended at the last


class RunState:
    def __init__(self, config: DuCaConfig, adapter, sigmas):
        self.config = config
        self.adapter = adapter
        self.sigmas = [float(s) for s in sigmas]
        self.num_steps = max(len(self.sigmas) - 1, 0)
        schedule = config.unit_schedule
        self.schedule = fit_schedule(schedule, adapter, self.num_steps) if schedule is not None else None
        if config.measure_change:  # a calibration run computes everything
            self.plan = all_full_plan(self.num_steps)
        elif self.schedule is not None:
            self.plan = self.schedule.as_plan(whole_steps=adapter.step_level)
        else:
            self.plan = adapter.plan_for(config, self.num_steps)
        if not adapter.tokenwise and self.plan.needs_module_cache():
            # this family's blocks can't be split token by token yet: compute those steps
            self.plan = self.plan.replacing(Action.CONSERVATIVE, Action.FULL)
        offload = torch.device("cpu") if config.cache_device == "cpu" else None
        self.store = CacheStore(offload_device=offload)
        self.stats = RunStats(self.plan.method, self.num_steps, level=adapter.level)
        self.unit_index = {key: i for i, key in enumerate(adapter.keys)}
        self.last_reuse = self._last_reuse_steps()
        self.profile = ChangeProfile(self.num_steps, len(adapter.schedule_units()), config.probe_unit) \
            if config.measure_change else None
        if self.schedule is not None:
            self.stats.notes.extend(self.schedule.notes)
        self.selector = TokenSelector(config.token_selector, config.interval)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.record_modules = self.plan.needs_module_cache() or (adapter.tokenwise and bool(self.last_reuse))
        self.record_residual = self.plan.needs_stack_residual()
        self.call: Optional[Call] = None
        self.completed_keys = set()  # call keys whose full step has finished: reuse may follow
        self.disabled = False  # set if reusing ever fails: the rest of the run computes everything

    # --- model calls -------------------------------------------------------
    def begin_call(self, x: torch.Tensor, transformer_options: dict) -> Call:
        sigma = current_sigma(transformer_options)
        step = step_index(self.sigmas, sigma) if sigma is not None else 0
        planned = self.plan[min(step, len(self.plan) - 1)] if len(self.plan) else None
        action = planned.action if planned else Action.FULL
        key = call_key(x, transformer_options)
        if action is not Action.FULL and key not in self.completed_keys:
            self.stats.notes.append(f"step {step}: no cache yet for this conditioning, computed fully")
            action = Action.FULL
        record = self.stats.record(step)
        if not record.action:
            record.action = action.value
        self.call = Call(step, action, planned.refresh_ratio if planned else 0.0, key, self.adapter.grid(x))
        return self.call

    def end_call(self, call: Call) -> None:
        record = self.stats.record(call.step)
        record.model_calls += 1
        record.wall_seconds += time.perf_counter() - call.started
        if call.action is Action.FULL:
            self.completed_keys.add(call.key)
        record.cache_bytes = max(record.cache_bytes, self.store.nbytes())
        self.call = None

    def switch_off(self, call: Call, error: Exception, where: str = "the model call") -> None:
        """Reusing failed: the rest of this run computes everything (logged once, noted in the stats)."""
        LOG.exception("DuCa: reusing features failed at step %d (%s); computing the rest of this run "
                      "without caching", call.step, where)
        self.stats.notes.append(f"caching switched off at step {call.step}: {error!r}")
        self.disabled = True

    # --- whole model calls (families without block hooks) -----------------
    def reused_output(self, call: Call, x: torch.Tensor) -> Optional[torch.Tensor]:
        """Step level: the output to return instead of calling the model, or None to compute."""
        if not self.adapter.step_level:
            return None
        record = self.stats.record(call.step)
        record.block_flops_full += 1.0  # counted in model calls
        if call.action is not Action.AGGRESSIVE or self.disabled or not self.store.has(call.key, STEP_OUTPUT):
            record.block_flops_done += 1.0
            return None
        return self.store.get(call.key, STEP_OUTPUT, device=x.device)

    def keep_output(self, call: Call, output) -> None:
        if self.adapter.step_level and self.record_residual and isinstance(output, torch.Tensor):
            self.store.put(call.key, STEP_OUTPUT, output)

    def finish(self) -> RunStats:
        self.store.clear()
        self.completed_keys.clear()
        self.call = None
        return self.stats

    # --- blocks ------------------------------------------------------------
    def run_block(self, kind: str, index: int, args: dict, original) -> dict:
        name = (kind, index)
        if self.call is None and name == self.adapter.first_key and "transformer_options" in args:
            # a family whose forward has no DIFFUSION_MODEL wrapper: the block stack frames the call
            self.begin_call(args["img"], args["transformer_options"]).framed_by_blocks = True
        call = self.call
        if call is None:  # a model call we know nothing about: leave it alone
            return original(args)
        out = self._run_block(call, kind, index, args, original)
        if call.framed_by_blocks and name == self.adapter.last_key:
            self.end_call(call)
        return out

    def _run_block(self, call: Call, kind: str, index: int, args: dict, original) -> dict:
        adapter, name = self.adapter, (kind, index)
        if name == adapter.first_key:
            if kind == "double_block" and isinstance(args.get("txt"), torch.Tensor):
                call.txt_len = args["txt"].shape[1]
            if self.record_residual:
                call.stack_in = adapter.stack_state(kind, args).clone()
        if call.txt_len is None:  # no double blocks: the text is what the image grid is not
            call.txt_len = max(args["img"].shape[1] - math.prod(call.grid), 0)

        block = adapter.block(kind, index)
        streams = adapter.streams(kind, args, call.grid, call.txt_len)
        record = self.stats.record(call.step)
        full_flops = adapter.flops_full(kind, block, streams)
        record.block_flops_full += full_flops
        record.tokens_total += sum(s.total for s in streams.values())
        cell = self.schedule.cell(call.step, self.unit_index[name]) if call.action is Action.PARTIAL else None
        reusable = not self.disabled and (
            call.action is Action.AGGRESSIVE
            or (call.action is Action.CONSERVATIVE and self.store.has(call.key, name)
                and adapter.can_refresh(kind, args))
            or (cell is not None and cell is not Cell.COMPUTE and self._can_reuse_cell(call, name, args, cell)))
        if reusable:
            try:
                if cell is not None:
                    return self._reuse_cell(call, name, block, args, streams, record, original, cell)
                return self._reuse(call, name, block, args, streams, record, original)
            except Exception as error:  # never fail a user's run over a cache problem
                if type(error).__name__ == "InterruptProcessingException":
                    raise
                self.switch_off(call, error, f"block {name}")
        record.block_flops_done += full_flops
        return self._compute(call, name, block, args, streams, record, original)

    def _compute(self, call, name, block, args, streams, record, original) -> dict:
        kind = name[0]
        record_units = self.record_modules and not self.disabled
        unit = self.unit_index[name]
        keep_residual = self.profile is not None or (
            not self.adapter.tokenwise and call.step < self.last_reuse.get(unit, -1) and not self.disabled)
        # a copy: host blocks may add to their inputs in place
        before = {k: v.clone() for k, v in self.adapter.passthrough(kind, args).items()} if keep_residual else None
        out, cache = self.adapter.full(kind, block, args, original, record=record_units)
        if before is not None:
            residual = {k: out[k] - v for k, v in before.items()}
            if self.profile is not None:
                self.profile.observe(call.key, unit, call.step, residual)
            if call.step < self.last_reuse.get(unit, -1):
                self.store.put(call.key, (BLOCK_RESIDUAL, name), residual)
        if cache is not None:
            batch, device = args["img"].shape[0], args["img"].device
            for stream, layout in streams.items():
                cache[f"{stream}_age"] = torch.zeros(batch, layout.total, dtype=torch.int32, device=device)
            self.store.put(call.key, name, cache)
        record.tokens_recomputed += sum(s.total for s in streams.values())
        self._keep_residual(call, name, out)
        return out

    def _reuse(self, call, name, block, args, streams, record, original) -> dict:
        adapter, kind = self.adapter, name[0]
        if call.action is Action.AGGRESSIVE:
            out = adapter.passthrough(kind, args)
            if name == adapter.last_key:
                residual = self.store.get(call.key, RESIDUAL, device=call.stack_in.device)
                out = adapter.from_stack_state(kind, call.stack_in + residual, like=out)
            return out
        cache = self.store.get(call.key, name, device=args["img"].device)
        picks = self._pick_tokens(kind, name[1], cache, streams, call.refresh_ratio)
        out = adapter.conservative(kind, block, args, cache, picks, original)
        picked = {s: idx.shape[1] for s, idx in picks.items()}
        record.block_flops_done += adapter.flops_conservative(kind, block, picked)
        record.tokens_recomputed += sum(picked.values())
        self.store.put(call.key, name, cache)
        self._keep_residual(call, name, out)
        return out

    # --- schedules: each unit decides ----------------------------------------
    def _last_reuse_steps(self) -> dict:
        """unit -> the last step at which the schedule reuses it (units never reused: absent)."""
        if self.schedule is None or self.adapter.step_level:
            return {}
        reused = (self.schedule.table != Cell.COMPUTE).nonzero().tolist()
        last = {}
        for step, unit in reused:
            last[unit] = max(last.get(unit, -1), step)
        return last

    def _can_reuse_cell(self, call, name, args, cell) -> bool:
        if self.adapter.tokenwise:
            return self.store.has(call.key, name) and self.adapter.can_refresh(name[0], args)
        # without unit hooks only the whole block can be reused; REUSE_ATTENTION computes it
        return cell is Cell.REUSE and self.store.has(call.key, (BLOCK_RESIDUAL, name))

    def _reuse_cell(self, call, name, block, args, streams, record, original, cell) -> dict:
        kind, device = name[0], args["img"].device
        if not self.adapter.tokenwise:
            residual = self.store.get(call.key, (BLOCK_RESIDUAL, name), device=device)
            return {k: v + residual[k] if k in residual else v
                    for k, v in self.adapter.passthrough(kind, args).items()}
        cache = self.store.get(call.key, name, device=device)
        batch = args["img"].shape[0]
        if cell is Cell.REUSE_ATTENTION:  # every token's MLP recomputed, attention reused
            picks = {s: torch.arange(layout.total, device=device).expand(batch, layout.total)
                     for s, layout in streams.items()}
        else:  # the whole block reused under fresh gates
            picks = {s: torch.empty(batch, 0, dtype=torch.long, device=device) for s in streams}
        out = self.adapter.conservative(kind, block, args, cache, picks, original)
        picked = {s: idx.shape[1] for s, idx in picks.items()}
        record.block_flops_done += self.adapter.flops_conservative(kind, block, picked)
        record.tokens_recomputed += sum(picked.values())
        self.store.put(call.key, name, cache)
        return out

    def _keep_residual(self, call, name, out) -> None:
        """After the last block of a computed step: what the whole stack added."""
        if name != self.adapter.last_key or not self.record_residual or call.stack_in is None:
            return
        state = self.adapter.stack_state(name[0], out)
        if state.shape != call.stack_in.shape:  # a layout this adapter did not expect: stop reusing
            self.stats.notes.append(f"stack output {tuple(state.shape)} does not match its input "
                                    f"{tuple(call.stack_in.shape)}; caching switched off")
            LOG.warning("DuCa: %s", self.stats.notes[-1])
            self.disabled = True
            return
        self.store.put(call.key, RESIDUAL, state - call.stack_in)

    def _pick_tokens(self, kind, index, cache, streams, base_ratio) -> dict:
        position, depth = self.adapter.layer_position(kind, index)
        factor = self.adapter.stream_factor(kind, self.config)
        ratio = layer_refresh_ratio(base_ratio, position, depth, factor, self.config.layer_weight)
        picks = {}
        for stream, layout in streams.items():
            age = cache[f"{stream}_age"]
            idx = self.selector.select(ratio, cache.get(f"{stream}_score"), age, layout, self.generator)
            age += 1
            age.scatter_(1, idx, 0)
            picks[stream] = idx
        return picks


def fit_schedule(schedule: Schedule, adapter, num_steps: int) -> Schedule:
    """The schedule checked against the model (a clear error if it was made for another)
    and resampled to the run's step count (the stats then say so)."""
    schedule.check_fits(adapter.schedule_family, adapter.schedule_units())
    return schedule.resampled(num_steps) if num_steps >= 1 else schedule
