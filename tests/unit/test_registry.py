"""The family registry and each family's measured preset settings: pure data, no host."""
from types import SimpleNamespace

import pytest

from comfyui_duca.cache_core import all_full_plan
from comfyui_duca.adapters.registry import BY_NAME, FAMILIES, GENERIC, LEVELS
from comfyui_duca.methods.duca import PRESET_NAMES, PRESETS, DuCaConfig

KEYS = {"interval", "refresh_ratio", "first_full_steps"}


def model_of(family: str):
    """What the settings resolver reads of a model: its adapter's family and level."""
    return SimpleNamespace(family=family, level=BY_NAME[family].level)


MEASURED_FAMILIES = [name for name, family in BY_NAME.items()
                     if family.defaults and family.level != "deepcache"]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_a_preset_takes_the_familys_settings(preset):
    config = PRESETS[preset].with_changes(preset=preset, start=0.1, token_selector="random")
    assert len(MEASURED_FAMILIES) > 10
    for name in MEASURED_FAMILIES:
        measured = BY_NAME[name].defaults[preset]
        chosen = config.on_model(model_of(name))
        assert {k: getattr(chosen, k) for k in KEYS} == measured, name
        assert (chosen.start, chosen.token_selector, chosen.preset) == (0.1, "random", preset)  # the rest is kept
        assert chosen.estimator == BY_NAME[name].estimator  # auto: the family's measured one
        assert chosen.plan_for(20).timeline == DuCaConfig(**measured, start=0.1).plan_for(20).timeline


def test_first_full_steps_set_by_the_user_wins():
    name = next(n for n in MEASURED_FAMILIES if BY_NAME[n].defaults["balanced"]["first_full_steps"] != 6)
    measured = BY_NAME[name].defaults["balanced"]
    chosen = PRESETS["balanced"].with_changes(preset="balanced", first_full_steps=6).on_model(model_of(name))
    assert (chosen.interval, chosen.refresh_ratio, chosen.first_full_steps) == (
        measured["interval"], measured["refresh_ratio"], 6)


def test_custom_settings_fixed_plans_and_chosen_estimators_are_left_alone():
    flux = model_of("flux")
    custom = DuCaConfig(interval=7, refresh_ratio=0.4, estimator="taylor1")
    assert custom.on_model(flux) is custom
    fixed = DuCaConfig(preset="fast", plan=all_full_plan(5), estimator="reuse")
    assert fixed.on_model(flux) is fixed
    assert DuCaConfig(interval=7).on_model(flux) == DuCaConfig(interval=7, estimator=BY_NAME["flux"].estimator)


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
