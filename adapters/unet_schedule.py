"""Schedules (cache_core.schedule) and calibration on ComfyUI's U-Net.

A schedule's units are the U-Net's transformer layers (`SpatialTransformer`, SVD's video
variant included), named "transformer.<i>" in the order `_forward` runs them. Each one is
`x + f(x)`, so a reused unit hands on its input plus the residual f(x) kept at its last
computation (per call key), and everything around it runs as the host runs it: the
ResBlocks, the skips, ControlNet / T2I residuals (added to block outputs, outside the
transformers) and block patches.

- Compute (FULL steps, COMPUTE cells): forward hooks keep the unit's residual, but only
  while a later step of the schedule still reuses that unit.
- REUSE cells: the unit is stood in for (units.standing_in) during that one call. If a
  stand-in fails, that unit is computed by its own forward and caching is switched off for
  the rest of the run (one log line and a stats note).
- REUSE_ATTENTION cells are computed on the U-Net: its transformers are cheap next to
  the ResBlocks around them, so only whole-unit reuse is worth its bookkeeping here.
- Calibration (config.measure_change, every step computed): every unit's residual goes to
  the run's ChangeProfile on every step.

FLOPs: each block's and each unit's are counted once per call key (UNetAdapter._flop_hooks); a
step's block compute is all blocks minus the units reused at it.
"""
from __future__ import annotations

import contextlib

from .units import own_forward, standing_in
from ..cache_core.plan import Action
from ..cache_core.schedule import Cell

RESIDUAL = "unet_unit_residual"   # store name prefix: (RESIDUAL, unit) -> output minus input
TRANSFORMER_CLASSES = ("SpatialTransformer",)  # subclasses (SpatialVideoTransformer) match too


def is_transformer_unit(layer) -> bool:
    return any(cls.__name__ in TRANSFORMER_CLASSES for cls in type(layer).__mro__)


def transformer_units(named_blocks) -> list:
    """The transformer layers of (name, block) pairs given in run order, in run order."""
    return [layer for _, block in named_blocks for layer in block if is_transformer_unit(layer)]


def _input_of(args, kwargs):
    return args[0] if args else kwargs["x"]


def _interrupted(error) -> bool:
    return type(error).__name__ == "InterruptProcessingException"


@contextlib.contextmanager
def scheduled_call(run, call, units, unit_flops, block_flops):
    """One model call of a schedule or calibration run (see the module docstring).

    `units`: the transformer layers in run order; `unit_flops` / `block_flops`: FLOPs of one
    call for this call key per unit / block (None on the first call, which computes)."""
    run.stats.level = "block"  # the schedule works on whole transformer layers
    store, key = run.store, call.key
    reusable = (call.action is Action.PARTIAL and run.schedule is not None and not run.disabled
                and unit_flops is not None)
    reused = set()
    stand_ins = {}
    if reusable:
        for u, unit in enumerate(units):
            if run.schedule.cell(call.step, u) is Cell.REUSE and store.has(key, (RESIDUAL, u)):
                stand_ins[unit] = _reusing(run, call, u, unit, reused)
    keep = {u for u, unit in enumerate(units) if unit not in stand_ins and (
        run.profile is not None or (not run.disabled and call.step < run.last_reuse.get(u, -1)))}
    handles = [units[u].register_forward_hook(_keeping(run, call, u), with_kwargs=True) for u in sorted(keep)]
    try:
        with standing_in(stand_ins):
            yield
    finally:
        for handle in handles:
            handle.remove()
    if block_flops is not None:
        record = run.stats.record(call.step)
        total = sum(block_flops.values())
        record.block_flops_full += total
        record.block_flops_done += total - sum(unit_flops[u] for u in reused)


def _keeping(run, call, u):
    """Forward hook: the unit's residual, for later reuse and / or the change profile."""
    def keep(_module, args, kwargs, out):
        residual = (out - _input_of(args, kwargs)).detach()
        if run.profile is not None:
            run.profile.observe(call.key, u, call.step, residual)
        if not run.disabled and call.step < run.last_reuse.get(u, -1):
            run.store.put(call.key, (RESIDUAL, u), residual)
    return keep


def _reusing(run, call, u, unit, reused):
    """Stand-in for a reused unit: its input plus the kept residual; on any failure the unit
    computes and the run stops caching."""
    forward = own_forward(unit)

    def reuse(*args, **kwargs):
        if run.disabled:
            return forward(*args, **kwargs)
        try:
            x = _input_of(args, kwargs)
            residual = run.store.get(call.key, (RESIDUAL, u), device=x.device)
            if residual is None or residual.shape != x.shape:
                raise RuntimeError(f"kept residual {getattr(residual, 'shape', None)} does not fit input "
                                   f"{tuple(x.shape)}")
            out = x + residual.to(x.dtype)
        except Exception as error:  # never fail a user's run over a cache problem
            if _interrupted(error):
                raise
            run.switch_off(call, error, f"transformer.{u}")
            return forward(*args, **kwargs)
        reused.add(u)
        return out
    return reuse
