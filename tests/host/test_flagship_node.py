"""The flagship node a user reads at a glance: Accelerate (DuCa) takes a model and a preset, its
options come from Accelerate Options, DuCa's own cycle from DuCa Cycle (custom); each gives the
settings the 13-input node (kept, deprecated, for saved workflows) gives for the same choices."""
import pytest

from testbed import host, models

LEGACY, FLAGSHIP, OPTIONS, CYCLE = "DuCaAccelerate", "DuCaAccelerateV2", "DuCaAccelerateOptions", "DuCaCustomCycle"


def config_of(model):
    from comfyui_duca.glue.attach import holder_of
    from comfyui_duca.glue.patch import KEY
    return holder_of(model, KEY).config


def run(node_id, *args, **kwargs):
    return host.node(node_id).execute(*args, **kwargs).result[0]


@pytest.fixture(scope="module")
def flux(pack):
    return models.flux(seed=0)


def test_the_flagship_shows_a_preset_and_one_optional_socket(pack):
    nodes = host.node_classes()
    inputs = nodes[FLAGSHIP].INPUT_TYPES()
    assert list(inputs["required"]) == ["model", "preset"]
    assert list(inputs["optional"]) == ["options"]
    assert inputs["optional"]["options"][0] == "DUCA_ACCELERATE_OPTIONS"
    assert nodes[FLAGSHIP].GET_SCHEMA().display_name == "Accelerate (DuCa)"
    assert list(nodes[OPTIONS].INPUT_TYPES()["required"]) == [
        "budget", "first_full_steps", "start_percent", "end_percent", "placement", "cache_device", "estimator"]
    assert nodes[OPTIONS].RETURN_TYPES == ["DUCA_ACCELERATE_OPTIONS"]
    cycle = nodes[CYCLE].INPUT_TYPES()
    assert list(cycle["required"]) == ["model", "interval", "refresh_ratio", "token_selector"]
    assert list(cycle["optional"]) == ["options"]


def test_the_13_input_node_stays_registered_as_deprecated(pack):
    legacy = host.node_classes()[LEGACY]
    assert legacy.GET_SCHEMA().is_deprecated
    assert legacy.GET_NODE_INFO_V1()["deprecated"] is True  # the frontend keeps it out of the node search
    assert not host.node_classes()[FLAGSHIP].GET_SCHEMA().is_deprecated


@pytest.mark.parametrize("preset", ["quality", "balanced", "fast", "turbo", "duca quality", "duca balanced",
                                    "duca fast"])
def test_each_preset_gives_the_settings_the_13_input_node_gave(flux, preset):
    assert config_of(run(FLAGSHIP, flux, preset)) == config_of(run(LEGACY, flux, preset))


def test_options_change_a_budget_preset_as_the_13_input_nodes_inputs_did(flux):
    options = run(OPTIONS, budget=0.3, first_full_steps=2, start_percent=0.1, end_percent=0.9, placement="even",
                  cache_device="cpu", estimator="taylor2")
    legacy = run(LEGACY, flux, "fast", budget=0.3, first_full_steps=2, start_percent=0.1, end_percent=0.9,
                 placement="even", cache_device="cpu", estimator="taylor2")
    config = config_of(run(FLAGSHIP, flux, "fast", options))
    assert config == config_of(legacy)
    assert (config.budget, config.first_full_steps, config.placement) == (0.3, 2, "even")


def test_options_of_zero_keep_the_presets_own(flux):
    assert config_of(run(FLAGSHIP, flux, "turbo", run(OPTIONS))) == config_of(run(FLAGSHIP, flux, "turbo"))


def test_the_custom_cycle_gives_the_13_input_nodes_custom_settings(flux):
    options = run(OPTIONS, first_full_steps=2, start_percent=0.2, cache_device="cpu", estimator="taylor1")
    mine = run(CYCLE, flux, 5, 0.2, "random", options)
    legacy = run(LEGACY, flux, "custom", interval=5, refresh_ratio=0.2, token_selector="random", first_full_steps=2,
                 start_percent=0.2, cache_device="cpu", estimator="taylor1")
    config = config_of(mine)
    assert config == config_of(legacy)
    assert (config.interval, config.refresh_ratio, config.token_selector) == (5, 0.2, "random")


@pytest.mark.parametrize("changes, named", [({"budget": 0.5}, "budget"), ({"placement": "even"}, "placement")])
def test_a_budget_option_on_a_duca_cycle_is_refused_naming_it(flux, changes, named):
    options = run(OPTIONS, **changes)
    with pytest.raises(ValueError, match=named):
        run(FLAGSHIP, flux, "duca balanced", options)
    with pytest.raises(ValueError, match=named):
        run(CYCLE, flux, 4, 0.1, "value_norm", options)


def test_the_flagship_samples_at_its_presets_compute(flux):
    from comfyui_duca.glue.patch import last_stats
    positive = models.flux_conditioning(model=flux, seed=1)
    negative = models.flux_conditioning(model=flux, seed=2)
    accelerated = run(FLAGSHIP, flux, "balanced")
    models.sample(accelerated, positive, negative, steps=20, cfg=2.0)
    assert last_stats(accelerated).timeline.count("F") == 7  # 35% of 20 steps
