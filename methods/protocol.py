"""The one protocol every caching method implements, what the host tells it, and the defaults.

A method is two things in one file of this folder: its settings (a frozen config dataclass, the
`MethodConfig` protocol) and its per-run executor (the `Method` protocol), which the config builds
for one sampling run from the model's adapter and the run's `HostContext`. The glues read nothing
else of a method: what it wraps, its compute unit and its plan; they hand it each model call
(`on_call`) and each hooked block (`on_block`) through the run engine (engine.RunState), and
`finish` at the end. Three choices stay apart: the *unit* a method caches is what its hooks touch,
the *decision* of when to compute is its plan, the *estimator* of a skipped value is the run's
(cache_core.estimators).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, runtime_checkable

from ..cache_core.plan import Plan
from ..cache_core.stats import FLOPS, MODEL_CALLS

# What a method's model calls are (`Method.wraps`), so a glue knows where to hand them over:
DIFFUSION_MODEL = "diffusion_model"  # each call of the diffusion model (and its hooked blocks)
STEP_OUTPUTS = "step_outputs"        # a step's denoised outputs: the host's cond batch, else apply_model
UNSCHEDULED = -1.0                   # a sigma the host has not said yet (every real sigma is >= 0)


@dataclass(frozen=True)
class HostContext:
    """What the host says about one sampling run, the same on every host: its sigma schedule
    (UNSCHEDULED slots where the host does not give it up front), the model's sampling (its
    `noise_scaling` gives the noise coefficients), the sampler, and whether the host splits each
    step over several devices (each then runs its own copy of the blocks)."""
    sigmas: tuple = ()
    sampling: Any = None
    sampler: Any = None
    split_over_devices: bool = False

    @property
    def num_steps(self) -> int:
        return max(len(self.sigmas) - 1, 0)

    @property
    def known_sigmas(self) -> list:
        return [s for s in self.sigmas if s != UNSCHEDULED]

    @property
    def scheduled(self) -> bool:
        """Whether the host gave the whole schedule up front."""
        return UNSCHEDULED not in self.sigmas


@runtime_checkable
class Method(Protocol):
    """One run of a method: built fresh for each sampling run, dropped at its end."""
    adapter: Any         # the model's family adapter (adapters/)
    host: HostContext    # the run it was built for
    name: str            # for the log and the stats
    level: str           # the level it caches at on this model (token-wise, block, step, deepcache)
    cache_device: str    # where its caches live (store.CACHE_DEVICES)
    estimator: str       # what a skipped unit hands on (cache_core.estimators.ESTIMATORS)
    notes: tuple         # for the run's stats: how the method fits this run
    wraps: str           # DIFFUSION_MODEL or STEP_OUTPUTS: where its calls are handed to it
    compute_unit: str    # what its stats count (cache_core.stats: FLOPS or MODEL_CALLS)
    plan: Plan           # what each step of this run does, decided when it was built

    def on_call(self, run, call, compute: Callable[[], Any]) -> Any:
        """One model call: return its output, by calling `compute()` or from the cache."""

    def on_block(self, run, call, block_id: tuple, args: dict, original: Callable) -> dict:
        """One hooked block: return its output dict, by calling `original(args)` or not."""

    def finish(self, run) -> Optional[Any]:
        """What the run leaves for the caller (a calibration's profile), or None."""


@runtime_checkable
class MethodConfig(Protocol):
    """A method's settings: checked against a model when attached, built into a run's executor."""

    def check(self, adapter) -> None:
        """Raise ValueError, naming the input, where this model can't run these settings."""

    def executor(self, adapter, host: HostContext) -> Method:
        """A fresh executor of these settings for one run on this model."""


def method_config(config) -> MethodConfig:
    """`config` itself, where it is a method's settings; else a TypeError saying what one is."""
    if not isinstance(config, MethodConfig):
        raise TypeError(f"not a method's settings: {type(config).__name__} (a method's config has "
                        "`check(adapter)` and `executor(adapter, host)`, as methods.ForecastConfig)")
    return config


class Executor:
    """Defaults: calls of the diffusion model, a model call and a block computed, caches on the
    compute device; compute counted in block FLOPs (in model calls on a family without block hooks)."""
    name = "method"
    cache_device = "compute"
    estimator = "reuse"
    notes = ()
    wraps = DIFFUSION_MODEL

    def __init__(self, adapter, host: HostContext):
        self.adapter, self.host = adapter, host
        self.level = adapter.level
        self.compute_unit = MODEL_CALLS if adapter.step_level else FLOPS

    def on_call(self, run, call, compute):
        return compute()

    def on_block(self, run, call, block_id, args, original):
        return original(args)

    def finish(self, run):
        return None
