"""cache_core plans and DuCa's settings: pure data, no host."""
import pytest

from comfyui_duca.cache_core import Action, all_full_plan, duca_plan, every_kth_step_plan, step_index
from comfyui_duca.methods.duca import PRESETS, DuCaConfig


def test_duca_cycle_alternates_after_the_first_full_steps():
    plan = duca_plan(12, interval=4, refresh_ratio=0.1, first_full_steps=3)
    # steps 0-2 full; step 2 anchors the cycle: C A C F C A C F C
    assert plan.timeline == "FFFCACFCACFC"
    assert all(s.refresh_ratio == 0.1 for s in plan.steps if s.action is Action.CONSERVATIVE)
    assert all(s.refresh_ratio == 0.0 for s in plan.steps if s.action is not Action.CONSERVATIVE)


def test_interval_three_is_full_conservative_aggressive():
    assert duca_plan(9, 3, 0.2, first_full_steps=1).timeline == "FCAFCAFCA"


def test_toca_plan_has_no_aggressive_steps():
    plan = duca_plan(10, 4, 0.1, first_full_steps=1, aggressive=False)
    assert plan.timeline == "FCCCFCCCFC"
    assert plan.method == "toca"


def test_start_and_end_fractions_force_full_steps():
    plan = duca_plan(20, 3, 0.1, first_full_steps=0, start=0.25, end=0.75)
    assert plan.timeline[:5] == "FFFFF"       # steps 0-4 before start
    assert plan.timeline[15:] == "FFFFF"      # steps 15-19 after end
    assert set(plan.timeline[5:15]) == {"F", "C", "A"}


def test_interval_one_computes_everything():
    assert duca_plan(7, 1, 0.5, first_full_steps=0).computes_everything


def test_a_plan_prints_as_its_timeline():
    plan = duca_plan(28, 4, 0.1)
    assert str(plan) == f"duca plan, 28 steps: {plan.timeline}"


def test_every_kth_baseline():
    assert every_kth_step_plan(7, 3).timeline == "FFAAFAA"


@pytest.mark.parametrize("kwargs, name", [
    (dict(interval=0), "interval"), (dict(refresh_ratio=1.5), "refresh_ratio"),
    (dict(start=0.8, end=0.2), "start"), (dict(token_selector="best"), "token_selector"),
    (dict(cache_device="disk"), "cache_device"), (dict(first_full_steps=-1), "first_full_steps"),
])
def test_bad_settings_name_the_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DuCaConfig(**kwargs)


def test_presets_trade_compute_for_fidelity():
    compute = {name: PRESETS[name].plan_for(28).timeline.count("F") for name in ("quality", "balanced", "fast")}
    assert compute["quality"] > compute["balanced"] > compute["fast"]


def test_fixed_plan_must_match_the_step_count():
    config = DuCaConfig(plan=all_full_plan(10))
    assert config.plan_for(10).computes_everything
    with pytest.raises(ValueError, match="10 steps"):
        config.plan_for(12)


def test_step_index_follows_the_sigma_schedule_not_calls():
    sigmas = [1.0, 0.75, 0.5, 0.25, 0.0]
    assert [step_index(sigmas, s) for s in (1.0, 0.75, 0.5, 0.25)] == [0, 1, 2, 3]
    assert step_index(sigmas, 0.6) == 1      # a midpoint evaluation belongs to the step above it
    assert step_index(sigmas, 0.75 + 1e-7) == 1  # float noise on a schedule point


def test_replacing_turns_one_action_into_another():
    plan = duca_plan(8, 4, 0.1, first_full_steps=1)
    assert plan.replacing(Action.CONSERVATIVE, Action.FULL).timeline == plan.timeline.replace("C", "F")


def test_every_methods_settings_share_one_checked_step_window():
    from comfyui_duca.cache_core.plan import StepWindow
    from comfyui_duca.methods.deepcache import DeepCacheConfig
    from comfyui_duca.methods.forecast import ForecastConfig
    window = StepWindow(first_full_steps=2, start=0.25, end=0.75)
    assert [window.may_skip(i, 12) for i in range(12)] == [False] * 3 + [True] * 6 + [False] * 3
    assert window.bounds(12) == (3, 9) and StepWindow(first_full_steps=5).bounds(12) == (5, 12)
    for config in (DuCaConfig, DeepCacheConfig, ForecastConfig):
        assert config(first_full_steps=2, start=0.25, end=0.75).window == window
        with pytest.raises(ValueError, match=r"start \(0.8\) must not be after end \(0.2\)"):
            config(start=0.8, end=0.2)
        with pytest.raises(ValueError, match="first_full_steps"):
            config(first_full_steps=-1)
    with pytest.raises(ValueError, match="end must be a number"):
        duca_plan(10, 3, 0.1, end=1.5)  # the plan builders check through the same window


def test_a_forecast_step_is_its_own_action_with_its_own_letter():
    from comfyui_duca.cache_core.plan import budget_plan, timeline_letter
    from comfyui_duca.cache_core.stats import RunStats
    plan = budget_plan(10, 0.3, first_full_steps=1)
    assert Action.AGGRESSIVE not in {s.action for s in plan.steps} and Action.FORECAST in {s.action for s in plan.steps}
    assert {a.letter for a in Action} == {"F", "C", "A", "P", "E"}  # one letter each
    stats = RunStats("forecast", 3)
    for step, action in enumerate((Action.FULL, Action.FORECAST, Action.AGGRESSIVE)):
        stats.at(step).action = action.value
    assert stats.timeline == "FEA" and timeline_letter("other") == "O"
