"""Per-family preset settings (cache_core/family_defaults.py): pure data, no host."""
import pytest

from cache_core import PRESETS, DuCaConfig, all_full_plan
from cache_core import family_defaults
from cache_core.family_defaults import defaults, for_family

KEYS = {"interval", "refresh_ratio", "first_full_steps"}


@pytest.fixture
def measured(monkeypatch):
    """A family with settings of its own for every preset."""
    table = {"quality": {"interval": 3, "refresh_ratio": 0.3, "first_full_steps": 1},
             "balanced": {"interval": 5, "refresh_ratio": 0.2, "first_full_steps": 2},
             "fast": {"interval": 8, "refresh_ratio": 0.05, "first_full_steps": 4}}
    monkeypatch.setitem(defaults, "test-family", table)
    return table


@pytest.mark.parametrize("preset", list(PRESETS))
def test_a_preset_takes_the_familys_settings(measured, preset):
    config = PRESETS[preset].with_changes(preset=preset, start=0.1, token_selector="random")
    chosen = for_family(config, "test-family")
    assert {k: getattr(chosen, k) for k in KEYS} == measured[preset]
    assert (chosen.start, chosen.token_selector, chosen.preset) == (0.1, "random", preset)  # the rest is kept
    assert chosen.plan_for(20).timeline == DuCaConfig(**measured[preset], start=0.1).plan_for(20).timeline


def test_first_full_steps_set_by_the_user_wins(measured):
    config = PRESETS["balanced"].with_changes(preset="balanced", first_full_steps=6)
    chosen = for_family(config, "test-family")
    assert (chosen.interval, chosen.refresh_ratio, chosen.first_full_steps) == (5, 0.2, 6)


def test_custom_settings_fixed_plans_and_other_families_are_left_alone(measured):
    custom = DuCaConfig(interval=7, refresh_ratio=0.4)
    assert for_family(custom, "test-family") is custom
    fixed = DuCaConfig(preset="fast", plan=all_full_plan(5))
    assert for_family(fixed, "test-family") is fixed
    other = PRESETS["fast"].with_changes(preset="fast")
    assert for_family(other, "a-family-nobody-measured") is other


def test_a_preset_name_is_checked():
    with pytest.raises(ValueError, match="preset"):
        DuCaConfig(preset="turbo")


def test_the_table_holds_valid_settings_for_every_preset_with_how_they_were_chosen():
    assert defaults, "no family measured"
    for family, presets in defaults.items():
        assert set(presets) == set(PRESETS), family
        for preset, settings in presets.items():
            assert set(settings) == KEYS, (family, preset)
            DuCaConfig(**settings)  # in range
        assert family in family_defaults.HOW_CHOSEN and family_defaults.HOW_CHOSEN[family], family
