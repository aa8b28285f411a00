"""DuCa (dual feature caching) and ToCa: full steps, then conservative steps (module outputs
reused, a scored fraction of tokens recomputed) alternating with aggressive steps (the whole
block stack reused as a residual)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..adapters.registry import BY_NAME, DEEPCACHE
from ..cache_core.plan import Action, Plan, duca_plan, fitted
from ..cache_core.tokens import SELECTORS, TokenRows, TokenSelector, layer_refresh_ratio
from ..cache_core.validate import check_choice, check_float, check_int
from .blocks import begin_block, computed, fresh_ages, refreshed
from .common import MethodSettings
from .deepcache import DeepCache, DeepCacheConfig
from .protocol import Executor, HostContext
from .stack_gaps import StackGaps
from .step_reuse import whole_calls

LOG = logging.getLogger("comfyui-duca")

PRESET_NAMES = ("quality", "balanced", "fast")


@dataclass(frozen=True)
class DuCaConfig(MethodSettings):
    """Shared settings (common.MethodSettings): first_full_steps, start / end, cache_device,
    estimator (auto: the family's measured one, registry), preset (the family's measured settings
    for it apply)."""
    interval: int = 4               # a full step every `interval` steps
    refresh_ratio: float = 0.1      # base fraction of tokens recomputed on conservative steps
    token_selector: str = "value_norm"  # how conservative steps pick tokens (tokens.SELECTORS)
    aggressive: bool = True         # False: every cached step is conservative (ToCa)
    # ToCa's Flux factors: deep layers refresh fewer tokens; single blocks more than double.
    layer_weight: float = 0.5       # w of the layer factor 1 + w - 2wl/L
    double_stream_factor: float = 0.4  # refresh ratio factor of double-stream blocks
    single_stream_factor: float = 1.6  # ... and of single-stream blocks
    seed: int = 0                   # for the random token selector
    fused_refresh: bool = True      # picked tokens moved as flat rows (False: gather/scatter, the reference)
    plan: Optional[Plan] = field(default=None, compare=False)  # a fixed plan overrides the cycle

    PRESET_NAMES = PRESET_NAMES

    def __post_init__(self):
        super().__post_init__()
        check_int("interval", self.interval, 1, 100)
        check_float("refresh_ratio", self.refresh_ratio, 0.0, 1.0)
        check_choice("token_selector", self.token_selector, SELECTORS)

    def plan_for(self, num_steps: int) -> Plan:
        if self.plan is not None:
            return fitted(self.plan, num_steps)
        return duca_plan(num_steps, self.interval, self.refresh_ratio, self.first_full_steps,
                         self.start, self.end, self.aggressive)

    def check(self, adapter) -> None:
        """Every family runs it at its level: token-wise, block, whole calls, or a U-Net's DeepCache."""

    def executor(self, adapter, host: HostContext):
        """DuCa where the model's blocks can be followed; on a U-Net its namesake DeepCache cycle; on a
        family without block hooks the same plan over whole model calls."""
        config = self.on_model(adapter)
        if adapter.level == DEEPCACHE:
            deepcache = DeepCache(DeepCacheConfig.from_duca(config), adapter, host)
            deepcache.notes += (f"a U-Net has no token-wise step: DuCa's cycle of {config.interval} steps runs as "
                                f"DeepCache's of {deepcache.config.interval}",)
            return deepcache
        return whole_calls(DuCa(config, adapter, host))

    def preset_settings(self) -> Optional["DuCaConfig"]:
        """A fixed plan is kept as it is."""
        return PRESETS[self.preset] if self.preset is not None and self.plan is None else None

    def measured(self, adapter) -> dict:
        return BY_NAME[adapter.family].defaults.get(self.preset, {})

    def measured_estimator(self, adapter) -> str:
        return BY_NAME[adapter.family].estimator


# Flux settings of the papers (ToCa: R = 0.1, first 3 steps full, N = 4), then a
# safer and a faster point on the same curve. See README for what each costs.
PRESETS = {
    "quality": DuCaConfig(interval=3, refresh_ratio=0.15),
    "balanced": DuCaConfig(interval=4, refresh_ratio=0.1),
    "fast": DuCaConfig(interval=6, refresh_ratio=0.1),
}


RESIDUAL = "stack_residual"  # kept: stack output minus stack input at the last computed step
STACK_IN = "stack_in"        # call scratch: the stack's input, while a computed step runs
GAPS = "stack_gaps"          # call scratch: what the host added between blocks (ControlNet)


class DuCa(Executor):
    """The DuCa / ToCa cycle on a family with block hooks.

    Full step: every block runs; module outputs (before their gates) and value-norm scores are
    kept where conservative steps follow, the stack's residual where aggressive steps follow.
    Conservative: the adapter reuses attention under fresh gates and refreshes the picked tokens
    of the MLP (families whose blocks can't be split token-wise compute these steps).
    Aggressive: every block passes its input on; the last adds the stack's estimated residual
    to its own input, which holds what the host added between blocks this step (ControlNet).
    """

    def __init__(self, config: DuCaConfig, adapter, host: HostContext):
        super().__init__(adapter, host)
        self.config = config
        self.name = "duca" if config.aggressive else "toca"
        self.cache_device = config.cache_device
        self.estimator = config.estimator
        self.selector = TokenSelector(config.token_selector, config.interval)
        self.generators = {}  # per conditioning group: its random picks never depend on another's calls
        plan = config.plan_for(host.num_steps)
        if not adapter.tokenwise and plan.needs_module_cache():
            plan = plan.replacing(Action.CONSERVATIVE, Action.FULL)  # no token-wise refresh on this family
        self.plan = plan
        self.keep_modules = plan.needs_module_cache()
        self.keep_residual = plan.needs_stack_residual()

    def on_block(self, run, call, block_id, args, original):
        adapter, kind = self.adapter, block_id[0]
        measures_residual = self.keep_residual and call.action is not Action.AGGRESSIVE
        if block_id == adapter.first_block and measures_residual:
            call.scratch[STACK_IN] = adapter.stack_state(kind, args).clone()
            if call.carries_control:
                call.scratch[GAPS] = StackGaps(adapter)
        gaps = call.scratch.get(GAPS)
        if gaps is not None:
            gaps.block_entry(kind, args)
        out = self._run_block(run, call, block_id, args, original)
        if gaps is not None and block_id != adapter.last_block:
            gaps.block_exit(kind, out)
        return out

    def _run_block(self, run, call, block_id, args, original):
        adapter, kind = self.adapter, block_id[0]
        work = begin_block(run, call, block_id, args)
        refreshable = run.has_kept(call, block_id) and adapter.can_refresh(kind, args)
        reusable = not run.disabled and (
            call.action is Action.AGGRESSIVE or (call.action is Action.CONSERVATIVE and refreshable))
        compute = lambda: self._compute(run, call, work, args, original)  # noqa: E731
        if not reusable:
            return compute()
        if call.action is Action.AGGRESSIVE:
            return run.guarded(call, f"block {block_id}", lambda: self._aggressive(run, call, work, args), compute)
        return run.guarded(call, f"block {block_id}", lambda: self._conservative(run, call, work, args, original),
                           compute)

    def _compute(self, run, call, work, args, original) -> dict:
        computed(work)
        keep_units = self.keep_modules and not run.disabled
        out, units = self.adapter.full(work.kind, work.block, args, original, keep_units=keep_units)
        if units is not None:
            units.update(fresh_ages(args, work.streams))
            run.keep(call, work.block_id, units)
        self._keep_stack_residual(run, call, work.block_id, out)
        return out

    def _aggressive(self, run, call, work, args) -> dict:
        out = self.adapter.passthrough(work.kind, args)
        if work.block_id == self.adapter.last_block:
            state = self.adapter.stack_state(work.kind, args)
            residual = run.estimated(call, RESIDUAL, device=state.device)
            out = self.adapter.from_stack_state(work.kind, state + residual, like=out)
        return out

    def _conservative(self, run, call, work, args, original) -> dict:
        units = run.store.get(call.group, work.block_id, device=args["img"].device)
        picks = self._pick_tokens(work, units, call.refresh_ratio, self._generator(call.group))
        out = self.adapter.conservative(work.kind, work.block, args, units, picks, original)
        refreshed(run, work, picks)
        run.keep(call, work.block_id, units)
        self._keep_stack_residual(run, call, work.block_id, out)
        return out

    def _keep_stack_residual(self, run, call, block_id, out) -> None:
        """After the last block of a computed step: what the whole stack added."""
        stack_in = call.scratch.get(STACK_IN)
        if block_id != self.adapter.last_block or not self.keep_residual or stack_in is None:
            return
        state = self.adapter.stack_state(block_id[0], out)
        if state.shape != stack_in.shape:  # a layout this adapter did not expect: stop reusing
            run.stats.notes.append(f"stack output {tuple(state.shape)} does not match its input "
                                   f"{tuple(stack_in.shape)}; caching switched off")
            LOG.warning("DuCa: %s", run.stats.notes[-1])
            run.disabled = True
            return
        gaps = call.scratch.get(GAPS)
        change = state - stack_in
        run.keep_point(call, RESIDUAL, gaps.without_gaps(change) if gaps is not None else change)

    def _generator(self, group) -> torch.Generator:
        """The group's own random source (the host's multi-GPU split runs groups at once on threads)."""
        if group not in self.generators:
            self.generators[group] = torch.Generator().manual_seed(self.config.seed)
        return self.generators[group]

    def _pick_tokens(self, work, units, base_ratio, generator) -> dict:
        position, depth = self.adapter.layer_position(work.kind, work.index)
        factor = self.adapter.stream_factor(work.kind, self.config)
        ratio = layer_refresh_ratio(base_ratio, position, depth, factor, self.config.layer_weight)
        picks = {}
        for stream, layout in work.streams.items():
            age = units[f"{stream}_age"]
            idx = self.selector.select(ratio, units.get(f"{stream}_score"), age, layout, generator)
            age += 1
            age.scatter_(1, idx, 0)
            picks[stream] = TokenRows(idx, fused=self.config.fused_refresh)
        return picks
