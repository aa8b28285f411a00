"""Host-independent core: plans, token selection, the cache store and run stats.

Pure torch; never imports ComfyUI, so it is unit-testable without a host.
"""
from .config import PRESETS, DuCaConfig
from .deepcache import SCHEDULES, DeepCacheConfig, deepcache_plan
from .plan import Action, Plan, StepPlan, all_full_plan, duca_plan, every_kth_step_plan, step_index
from .stats import RunStats, StepRecord
from .store import CacheStore
from .tokens import TokenLayout, TokenSelector, layer_refresh_ratio

__all__ = ["PRESETS", "DuCaConfig", "SCHEDULES", "DeepCacheConfig", "deepcache_plan", "Action", "Plan", "StepPlan",
           "all_full_plan", "duca_plan", "every_kth_step_plan",
           "step_index", "RunStats", "StepRecord", "CacheStore", "TokenLayout", "TokenSelector",
           "layer_refresh_ratio"]
