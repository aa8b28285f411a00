"""DeepCache on ComfyUI's U-Net: every few steps the whole U-Net runs and the feature entering
the branch's up block is kept; in between only the shallow path runs, on the kept feature."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from ..adapters.unet import KEPT_FEATURE
from ..adapters.units import own_forward, recording, standing_in
from ..cache_core.deepcache import PLACEMENTS, deepcache_plan
from ..cache_core.plan import Action, Plan, fitted
from ..cache_core.validate import check_choice, check_float, check_int
from ..adapters.registry import DEEPCACHE
from .common import MethodSettings, keyword
from .protocol import Executor, HostContext
from .unet import counted_call


@dataclass(frozen=True)
class DeepCacheConfig(MethodSettings):
    """Shared settings (common.MethodSettings): first_full_steps (step 0 always runs: DeepCache's
    schedules start there), start / end, cache_device, estimator (what reuse steps hand on for the
    deep feature; auto: reuse, the paper's)."""
    interval: int = 3               # the whole U-Net runs every N steps (DeepCache's default 3)
    branch: int = 0                 # deepest input block still run on reuse steps (0: most reuse);
                                    # its upper bound is the model's, checked when attached
    placement: str = "uniform"      # how full steps are placed (cache_core.deepcache.PLACEMENTS)
    center: float = 0.3             # quadratic: the densest point, as a fraction of the steps
    power: float = 1.4              # quadratic: how strongly full steps gather at the centre
    plan: Optional[Plan] = field(default=None, compare=False)  # a fixed plan overrides the placement
    first_full_steps: int = keyword(1)
    estimator: str = keyword("reuse")

    def __post_init__(self):
        super().__post_init__()
        check_int("interval", self.interval, 1, 100)
        check_int("branch", self.branch, 0, 1000)
        check_choice("placement", self.placement, PLACEMENTS)
        check_float("center", self.center, 0.0, 1.0)
        check_float("power", self.power, 1.0, 4.0)

    def plan_for(self, num_steps: int) -> Plan:
        if self.plan is not None:
            return fitted(self.plan, num_steps)
        plan = deepcache_plan(num_steps, self.interval, self.placement, self.center, self.power,
                              self.first_full_steps, self.start, self.end)
        return Plan(plan.steps, plan.method, {**plan.settings, "branch": self.branch})

    def check(self, adapter) -> None:
        if adapter.level != DEEPCACHE:
            raise ValueError(f"model: DeepCache needs a U-Net (SD1.5, SD2, SDXL); this is {adapter.family}")
        adapter.check_branch(self.branch)

    def executor(self, adapter, host: HostContext) -> "DeepCache":
        self.check(adapter)
        return DeepCache(self.on_model(adapter), adapter, host)

    @classmethod
    def from_duca(cls, config) -> "DeepCacheConfig":
        """The flagship's DuCa settings on a U-Net (resolved on it): interval N becomes DeepCache
        interval N - 1 at branch 0 (presets 3 / 4 / 6 -> 2 / 3 / 5). A U-Net has no token-wise
        conservative step, so DuCa's F C A C cycle would compute its C steps; N - 1 keeps the presets' order."""
        return cls(interval=max(1, config.interval - 1), branch=0, first_full_steps=config.first_full_steps,
                   start=config.start, end=config.end, cache_device=config.cache_device,
                   estimator=config.estimator, plan=config.plan)


FEATURE = "deepcache_feature"   # kept: the deep feature entering the branch's output block
SHAPES = "deepcache_shapes"     # kept: {block: (shape, dtype, device)} of each block's output


class DeepCache(Executor):
    """A full step runs the whole U-Net and keeps the deep feature (when a later step reuses it);
    a reuse step stands in for the deep blocks' layers (docs/METHODS.md, DeepCache)."""
    name = "deepcache"

    def __init__(self, config: DeepCacheConfig, adapter, host: HostContext):
        super().__init__(adapter, host)
        adapter.check_branch(config.branch)
        self.config = config
        self.cache_device = config.cache_device
        self.estimator = config.estimator
        self.plan = config.plan_for(host.num_steps)

    def on_call(self, run, call, compute):
        with counted_call(run, call, self.adapter) as (flops, _):
            blocks = dict(self.adapter.blocks())
            computed, skipped, feature_block = self.adapter.layout(self.config.branch)
            shapes = run.store.get(call.group, SHAPES) or {}
            stats = run.stats.at(call.step)
            if (call.action is Action.AGGRESSIVE and not run.disabled and flops is not None
                    and run.has_kept(call, FEATURE) and all(name in shapes for name in skipped)):
                reuse = DeepCacheReuse(run, call, shapes, feature_block)
                with standing_in(reuse.stand_ins(blocks, skipped)):
                    output = compute()
                stats.compute_full += sum(flops.values())
                stats.compute_done += sum(flops.values() if reuse.failed else (flops[n] for n in computed))
                return output
            later_reuse = any(s.action is Action.AGGRESSIVE for s in run.plan.steps[call.step + 1:])
            keep = later_reuse and not run.disabled
            with recording(self.adapter.block_outputs(blocks, feature_block) if keep else {}) as seen:
                output = compute()
            feature = seen.pop(KEPT_FEATURE, None)
            if keep and feature is not None:
                run.keep(call, SHAPES, {**shapes, **seen})
                run.keep_point(call, FEATURE, feature)
            if flops is not None:
                stats.compute_full += sum(flops.values())
                stats.compute_done += sum(flops.values())
            return output


class DeepCacheReuse:
    """Stand-ins for one reuse call: a skipped block's layers pass their input on, its last layer
    returns a placeholder of its recorded output shape (never read), or the kept feature for the
    block the branch's output block reads. The first stand-in that runs checks everything before
    any layer is skipped; if that fails, every stand-in runs its layer (the call computes as
    usual) and caching is switched off for the rest of the run."""

    def __init__(self, run, call, shapes, feature_block):
        self.run, self.call, self.shapes, self.feature_block = run, call, shapes, feature_block
        self.ready = self.failed = False
        self.feature, self.placeholders, self.skipped = None, {}, ()

    def prepare(self, x: torch.Tensor) -> None:
        """The kept feature and the placeholders, checked against the live input."""
        shape, dtype, device = self.shapes[self.feature_block]
        feature = self.run.estimated(self.call, FEATURE, device=device)
        if feature is None or tuple(feature.shape) != tuple(shape) or feature.shape[0] != x.shape[0]:
            raise RuntimeError(f"kept deep feature {getattr(feature, 'shape', None)} does not fit this call "
                               f"(expected {tuple(shape)}, batch {x.shape[0]})")
        self.feature = feature.to(x.device)
        for name in self.skipped:
            shape, dtype, device = self.shapes[name]
            if (shape, dtype, device) not in self.placeholders:  # shared: nothing reads them
                self.placeholders[(shape, dtype, device)] = torch.empty(shape, dtype=dtype, device=device)
        self.ready = True

    def stand_ins(self, blocks, skipped) -> dict:
        def passthrough(x, *args, **kwargs):
            return x

        def placeholder(name):
            return lambda *args, **kwargs: self.placeholders[self.shapes[name]]

        def kept_feature(*args, **kwargs):
            return self.feature.clone()  # the host may add a residual to it in place

        self.skipped = tuple(skipped)
        stand_ins = {}
        for name in skipped:
            layers = list(blocks[name])
            for layer in layers[:-1]:
                stand_ins[layer] = self._guarded(layer, passthrough)
            last = kept_feature if name == self.feature_block else placeholder(name)
            stand_ins[layers[-1]] = self._guarded(layers[-1], last)
        return stand_ins

    def _guarded(self, layer, role):
        forward = own_forward(layer)

        def run(*args, **kwargs):
            if not self.ready and not self.failed:
                def fail():
                    self.failed = True
                self.run.guarded(self.call, "DeepCache's deep branch",
                                 lambda: self.prepare(args[0] if args else kwargs["x"]), fail)
            if self.failed:
                return forward(*args, **kwargs)
            return role(*args, **kwargs)
        return run
