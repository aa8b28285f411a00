"""The family registry and each family's measured preset settings: pure data, no host."""
import pytest

from cache_core import all_full_plan
from duca_layers.adapters.registry import BY_NAME, FAMILIES, GENERIC, LEVELS
from duca_layers.methods.duca import PRESET_NAMES, PRESETS, DuCaConfig

KEYS = {"interval", "refresh_ratio", "first_full_steps"}
MEASURED = {"quality": {"interval": 3, "refresh_ratio": 0.3, "first_full_steps": 1},
            "balanced": {"interval": 5, "refresh_ratio": 0.2, "first_full_steps": 2},
            "fast": {"interval": 8, "refresh_ratio": 0.05, "first_full_steps": 4}}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_a_preset_takes_the_familys_settings(preset):
    config = PRESETS[preset].with_changes(preset=preset, start=0.1, token_selector="random")
    chosen = config.for_family(MEASURED)
    assert {k: getattr(chosen, k) for k in KEYS} == MEASURED[preset]
    assert (chosen.start, chosen.token_selector, chosen.preset) == (0.1, "random", preset)  # the rest is kept
    assert chosen.plan_for(20).timeline == DuCaConfig(**MEASURED[preset], start=0.1).plan_for(20).timeline


def test_first_full_steps_set_by_the_user_wins():
    chosen = PRESETS["balanced"].with_changes(preset="balanced", first_full_steps=6).for_family(MEASURED)
    assert (chosen.interval, chosen.refresh_ratio, chosen.first_full_steps) == (5, 0.2, 6)


def test_custom_settings_fixed_plans_and_unmeasured_families_are_left_alone():
    custom = DuCaConfig(interval=7, refresh_ratio=0.4)
    assert custom.for_family(MEASURED) is custom
    fixed = DuCaConfig(preset="fast", plan=all_full_plan(5))
    assert fixed.for_family(MEASURED) is fixed
    other = PRESETS["fast"].with_changes(preset="fast")
    assert other.for_family({}) is other


def test_a_preset_name_is_checked():
    with pytest.raises(ValueError, match="preset"):
        DuCaConfig(preset="turbo")


def test_one_entry_and_one_name_per_family():
    names = [f.name for f in FAMILIES]
    assert len(names) == len(set(names)) and set(BY_NAME) == set(names) | {GENERIC.name}
    assert all(f.level in LEVELS for f in FAMILIES)
    assert all(f.slicing is None or f.slicing.family == f.name for f in FAMILIES)  # the slicer says the same name


def test_measured_settings_are_valid_for_every_preset_and_say_how_they_were_chosen():
    measured = [f for f in FAMILIES if f.defaults]
    assert measured, "no family measured"
    for family in measured:
        assert set(family.defaults) == set(PRESET_NAMES), family.name
        for preset, settings in family.defaults.items():
            assert set(settings) == KEYS, (family.name, preset)
            DuCaConfig(**settings)  # in range
        assert family.how_chosen, family.name
