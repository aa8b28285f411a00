"""Host-independent core: plans and schedules as data, token selection, the cache store, run
stats, change profiles and chunked execution.

Pure torch; never imports ComfyUI, so it is unit-testable without a host.
"""
from .deepcache import PLACEMENTS, deepcache_plan
from .plan import Action, Plan, StepPlan, all_full_plan, duca_plan, every_kth_step_plan, step_index
from .stats import RunStats, StepStats
from .store import CACHE_DEVICES, CacheStore
from .tokens import TokenLayout, TokenSelector, layer_refresh_ratio

__all__ = ["PLACEMENTS", "deepcache_plan", "Action", "Plan", "StepPlan", "all_full_plan", "duca_plan",
           "every_kth_step_plan", "step_index", "RunStats", "StepStats", "CACHE_DEVICES", "CacheStore",
           "TokenLayout", "TokenSelector", "layer_refresh_ratio"]
