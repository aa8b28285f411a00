"""The whole-step forecast's host-free parts: where full steps go under a budget (even and
adaptive), the noise space it extrapolates in, and its settings."""
import math
from types import SimpleNamespace

import pytest
import torch

from comfyui_duca.cache_core.noise_space import from_noise, recoverable, to_noise
from comfyui_duca.cache_core.placement import AdaptiveBudget
from comfyui_duca.cache_core.plan import budget_plan
from comfyui_duca.methods.forecast import BUDGETS, FORECAST_PRESETS, ForecastConfig, sigma_is_flow_time


@pytest.mark.parametrize("steps", [10, 20, 28, 50])
@pytest.mark.parametrize("budget", sorted(BUDGETS.values()))
def test_an_even_plan_computes_its_budget_with_the_first_steps_and_even_gaps(steps, budget):
    plan = budget_plan(steps, budget, first_full_steps=3)
    full = [i for i, s in enumerate(plan.timeline) if s == "F"]
    assert len(full) == max(round(budget * steps), 3)  # never fewer than the first steps
    assert full[:3] == [0, 1, 2]
    gaps = [b - a for a, b in zip(full[2:], full[3:] + [steps])]  # the last gap runs to the end
    assert max(gaps) - min(gaps) <= 1
    assert set(plan.timeline) == {"F", "E"}


def test_an_even_plan_at_budget_one_computes_everything_and_small_budgets_keep_the_first_steps():
    assert budget_plan(12, 1.0).computes_everything
    assert budget_plan(12, 0.01, first_full_steps=3).timeline == "FFFEEEEEEEEE"
    assert budget_plan(12, 0.01, first_full_steps=0).timeline.count("F") == 1
    assert budget_plan(0, 0.3).timeline == ""


@pytest.mark.parametrize("steps", [10, 20, 28, 50])
@pytest.mark.parametrize("budget", sorted(BUDGETS.values()))
def test_full_steps_towards_the_ends_keep_the_budget_and_are_densest_at_both_ends(steps, budget):
    plan = budget_plan(steps, budget, first_full_steps=3, ends=0.75)
    full = [i for i, s in enumerate(plan.timeline) if s == "F"]
    assert len(full) == max(round(budget * steps), 3) and full[:3] == [0, 1, 2]
    gaps = [b - a for a, b in zip(full[2:], full[3:] + [steps])]
    if len(gaps) >= 4:
        middle = max(gaps[1:-1])
        assert gaps[0] < middle and gaps[-1] < middle
        assert gaps != sorted(gaps) and gaps != sorted(gaps, reverse=True)


def test_ends_zero_is_even_and_one_is_cosine_spacing():
    assert budget_plan(28, 0.35, ends=0.0).timeline == budget_plan(28, 0.35).timeline
    cosine = [i for i, s in enumerate(budget_plan(28, 0.35, ends=1.0).timeline) if s == "F"]
    assert cosine == [0, 1, 2] + [2 + round((1 - math.cos(math.pi * k / 8)) / 2 * 26) for k in range(1, 8)]
    with pytest.raises(ValueError, match="ends"):
        budget_plan(28, 0.35, ends=1.5)


@pytest.mark.parametrize("steps", [10, 20, 28, 50])
@pytest.mark.parametrize("budget", sorted(BUDGETS.values()))
def test_a_plan_can_end_on_a_computed_step_within_its_budget(steps, budget):
    plan = budget_plan(steps, budget, first_full_steps=1, ends=0.25, last_step_full=True)
    plain = budget_plan(steps, budget, first_full_steps=1, ends=0.25)
    assert plan.timeline.endswith("F") and plan.timeline.startswith("F")
    assert plan.timeline.count("F") == plain.timeline.count("F") == max(round(budget * steps), 1)
    assert budget_plan(steps, budget, 1, ends=0.25, last_step_full=False).timeline == plain.timeline


def test_a_cap_on_skipped_steps_adds_full_steps_only_where_needed():
    loose = budget_plan(28, 0.2, first_full_steps=3)
    capped = budget_plan(28, 0.2, first_full_steps=3, max_skipped=2)
    assert "EEE" in loose.timeline and "EEE" not in capped.timeline
    assert set(i for i, s in enumerate(loose.timeline) if s == "F") <= set(
        i for i, s in enumerate(capped.timeline) if s == "F")


@pytest.mark.parametrize("budget", [0.0, -0.1, 1.5])
def test_a_budget_out_of_range_is_refused_naming_it(budget):
    with pytest.raises(ValueError, match="budget"):
        budget_plan(10, budget)
    with pytest.raises(ValueError, match="budget"):
        AdaptiveBudget(10, budget)


def simulate(placement: AdaptiveBudget, curvature) -> str:
    """Drive a placement as a run does: ask each step, and at a full step report the error a
    linear forecast from the last two full steps would have made there, curvature(step) times the
    product of the distances to them."""
    timeline = ""
    for step in range(placement.num_steps):
        earlier = [i for i, s in enumerate(timeline) if s == "F"][-2:]
        full = placement.is_full(step)
        if full and len(earlier) == 2:
            placement.observe(step, curvature(step) * (step - earlier[0]) * (step - earlier[1]))
        timeline += "F" if full else "A"
    return timeline


def growing_error(step):  # a forecast that gets worse towards the end of the run
    return 1e-3 * math.exp(0.15 * step)


@pytest.mark.parametrize("steps", [20, 28, 50])
@pytest.mark.parametrize("budget", sorted(BUDGETS.values()))
def test_adaptive_placement_is_repeatable_and_spends_its_budget(steps, budget):
    runs = [simulate(AdaptiveBudget(steps, budget, 3), growing_error) for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0].startswith("FFF")
    computed = runs[0].count("F")
    assert abs(computed - budget * steps) <= max(0.02 * steps, 0.5)  # within 2% of the steps
    assert computed <= round(budget * steps)


def test_adaptive_placement_follows_the_measured_error():
    """More full steps where the forecast's error grows, fewer where it shrinks."""
    steps, budget = 40, 0.3
    rising = simulate(AdaptiveBudget(steps, budget, 3), growing_error)
    falling = simulate(AdaptiveBudget(steps, budget, 3), lambda s: math.exp(-0.15 * s))
    half = steps // 2
    assert rising[half:].count("F") > rising[3:half].count("F")
    assert falling[3:half].count("F") > falling[half:].count("F")


def test_adaptive_placement_holds_its_cap_on_skipped_steps():
    placement = AdaptiveBudget(40, 0.3, 3, max_skipped=3)
    timeline = simulate(placement, lambda s: math.exp(-0.3 * s))  # would otherwise skip long runs late
    full = [i for i, s in enumerate(timeline) if s == "F"]
    assert all(b - a - 1 <= 3 for a, b in zip(full, full[1:]))
    assert len(full) == placement.computes  # a skipped tail only once the budget is spent


def test_noise_space_round_trip_and_what_cannot_be_recovered():
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    for a, b in ((0.7, 0.3), (1.0, 2.5)):   # a flow model's sample at sigma 0.3; an eps model's at 2.5
        x = a * x0 + b * noise
        assert torch.allclose(to_noise(x, x0, a, b), noise, atol=1e-5)
        assert torch.allclose(from_noise(x, noise, a, b), x0, atol=1e-5)
    assert recoverable(0.5, 0.5)
    assert not recoverable(0.0, 1.0)   # a flow model at sigma 1: pure noise, x0 can't be recovered
    assert not recoverable(1.0, 0.0)   # no noise left: nothing to extrapolate


def test_forecast_presets_are_the_budgets_and_bad_settings_name_the_input():
    assert {name: c.budget for name, c in FORECAST_PRESETS.items()} == BUDGETS
    assert list(BUDGETS) == ["quality", "balanced", "fast", "turbo"]
    assert BUDGETS["quality"] > BUDGETS["balanced"] > BUDGETS["fast"] > BUDGETS["turbo"]
    # the small budgets spend one call on the first steps, not three (measured: FIRST_FULL_STEPS)
    assert [c.first_full_steps for c in FORECAST_PRESETS.values()] == [3, 3, 1, 1]
    for kwargs, name in ((dict(budget=0.0), "budget"), (dict(placement="random"), "placement"),
                         (dict(estimator="magic"), "estimator"), (dict(space="latent"), "space"),
                         (dict(start=0.8, end=0.2), "start"), (dict(preset="ludicrous"), "preset")):
        with pytest.raises(ValueError, match=name):
            ForecastConfig(**kwargs)
    with pytest.raises(ValueError, match="ends"):
        ForecastConfig(ends=1.2)


def test_a_preset_takes_its_kind_of_models_settings_and_nothing_else_changes():
    unet, dit = SimpleNamespace(family="unet", level="deepcache"), SimpleNamespace(family="flux", level="token-wise")
    fast = FORECAST_PRESETS["fast"]
    on_unets, on_dits = fast.on_model(unet), fast.on_model(dit)
    assert (on_unets.last_step_full, on_unets.ends, on_unets.gap_correction) == (True, 0.25, True)
    assert (on_dits.last_step_full, on_dits.gap_correction) == (False, False)
    assert on_unets.with_changes(last_step_full=False, ends=fast.ends) == fast.with_changes(estimator="taylor1")
    for name in ("quality", "balanced", "turbo"):
        preset = FORECAST_PRESETS[name]
        assert preset.on_model(unet) == preset.on_model(dit) == preset.with_changes(estimator="taylor1")
    custom = ForecastConfig(budget=0.27, estimator="reuse")  # no preset: the settings as given
    assert custom.on_model(unet) is custom
    changed = fast.with_changes(gap_correction=False, ends=0.5)  # changed from the preset's: kept
    assert (changed.on_model(unet).ends, changed.on_model(unet).last_step_full) == (0.5, True)
    assert changed.on_model(dit) == changed.with_changes(estimator="taylor1")


def test_the_forecast_runs_in_sigma_only_where_sigma_is_a_flows_time():
    """auto time: sigma for x = (1 - s) x0 + s n (Flux, SD3, Wan...); log-SNR for an epsilon model's
    x = x0 + s n and for Cosmos's rectified flow in t = s / (1 + s) (sigma up to 80)."""
    assert sigma_is_flow_time(lambda s: (1 - s, s))
    assert not sigma_is_flow_time(lambda s: (1.0, s))
    assert not sigma_is_flow_time(lambda s: (1 / (1 + s), s / (1 + s)))
    assert sigma_is_flow_time(None)  # no coefficients: sigma is all there is
