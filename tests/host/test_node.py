"""The nodes as ComfyUI sees them: the V3 entrypoint, schemas that saved workflows still fit,
inputs, errors, unsupported models."""
import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from testbed import host, models

REPO = Path(__file__).resolve().parents[2]
DISPLAY_NAMES = {
    "DuCaAccelerateV2": "Accelerate (DuCa)", "DuCaAccelerateOptions": "Accelerate Options (DuCa)",
    "DuCaCustomCycle": "DuCa Cycle (custom)", "DuCaAccelerate": "Accelerate (DuCa, 13 inputs)",
    "DuCaDeepCache": "DeepCache (U-Net)",
    "DuCaFeatureSlicer": "Reduce Video Memory (Feature Slicer)", "DuCaFORASchedule": "FORA Schedule",
    "DuCaEBCacheSchedule": "EB-Cache Schedule", "DuCaBlockCachingCalibration": "Block Caching Calibration",
    "DuCaStepRehashSchedule": "Step Rehash Schedule", "DuCaLearnToCache": "Learn to Cache (L2C)",
    "DuCaApplySchedule": "Apply Cache Schedule", "DuCaSaveSchedule": "Save Cache Schedule",
    "DuCaLoadSchedule": "Load Cache Schedule", "DuCaExposureBias": "Exposure Bias Correction",
}
# Every node's inputs as the pack declared them before its nodes moved to the V3 schema: a saved
# workflow's widget values are positional, so names, order, defaults and ranges must not move.
SAVED_INPUTS = json.loads((Path(__file__).parent / "data" / "node_inputs_v1.json").read_text())
# Defaults changed since, on purpose: a saved workflow keeps its own widget value, so only new nodes
# see these. first_full_steps -1: the preset's own (fast and turbo compute 1 first step, not 3).
NEW_DEFAULTS = {("DuCaAccelerate", "first_full_steps"): -1}


def accelerate(*args, **kwargs):
    (model,) = host.node("DuCaAccelerate").execute(*args, **kwargs).result
    return model


def test_pack_registers_every_node_through_its_v3_entrypoint(pack):
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS")  # a V1 mapping would send the host down its V1 path
    nodes = host.node_classes()
    assert {node_id: node.GET_SCHEMA().display_name for node_id, node in nodes.items()} == DISPLAY_NAMES
    node = nodes["DuCaAccelerate"]
    inputs = node.INPUT_TYPES()  # what the host validates a prompt against
    assert list(inputs["required"]) == ["model", "preset"]
    assert list(inputs["optional"]) == ["interval", "refresh_ratio", "token_selector", "first_full_steps",
                                        "start_percent", "end_percent", "cache_device", "schedule", "estimator",
                                        "budget", "placement"]
    assert inputs["optional"]["schedule"][0] == "DUCA_SCHEDULE"
    assert inputs["hidden"] == {"unique_id": ("UNIQUE_ID",)}  # where the UI shows the run's stats
    assert node.RETURN_TYPES == ["MODEL"] and node.RETURN_NAMES == ["model"]


def test_every_input_of_every_node_has_a_tooltip_and_numbers_a_range(pack):
    for node_id, node in host.node_classes().items():
        schema = node.GET_SCHEMA()
        assert schema.description, f"{node_id} has no description"
        for spec in schema.inputs:
            assert spec.tooltip, f"{node_id}.{spec.id} has no tooltip"
            if spec.get_io_type() in ("INT", "FLOAT"):
                assert None not in (spec.min, spec.max, spec.step), f"{node_id}.{spec.id} has no range"
        assert all(output.tooltip for output in schema.outputs), f"{node_id} has an output without a tooltip"


@pytest.mark.parametrize("node_id", sorted(SAVED_INPUTS))
def test_inputs_are_those_saved_workflows_were_made_with(pack, node_id):
    """What /object_info sends for the node (the host's V1 view of its schema) against the pack's
    inputs before the move: same names in the same order, types, defaults (but NEW_DEFAULTS), ranges
    that still hold every saved value, and every option still offered (a saved value is one of
    them). Inputs added since come after them and are optional (saved widget values are read by
    position)."""
    info = host.node_classes()[node_id].GET_NODE_INFO_V1()
    for section, saved in SAVED_INPUTS[node_id].items():
        names = [name for name, _, _ in saved]
        assert info["input_order"][section][:len(names)] == names, section
        added = info["input_order"][section][len(names):]
        assert not added or section == "optional", (section, added)
        for name, kind, options in saved:
            now_kind, now = info["input"][section][name]
            assert now_kind == kind, name
            for key, value in options.items():
                if key == "options":
                    assert set(value) <= set(now[key]), f"{name}.{key}"
                elif key == "min":
                    assert now[key] <= value, f"{name}.{key}"
                elif key == "max":
                    assert now[key] >= value, f"{name}.{key}"
                elif key == "default" and (node_id, name) in NEW_DEFAULTS:
                    assert now[key] == NEW_DEFAULTS[node_id, name], f"{name}.{key}"
                else:
                    assert now.get(key) == value, f"{name}.{key}"
    assert set(info["input"]) - {"hidden"} == set(SAVED_INPUTS[node_id])


def test_schedule_lists_are_the_hosts_and_the_packs_own(pack):
    import comfy.samplers
    nodes = host.node_classes()
    sampling = nodes["DuCaLearnToCache"].INPUT_TYPES()["required"]
    assert sampling["sampler_name"][1]["options"] == comfy.samplers.KSampler.SAMPLERS
    assert sampling["scheduler"][1]["options"] == comfy.samplers.KSampler.SCHEDULERS
    assert nodes["DuCaAccelerate"].INPUT_TYPES()["required"]["preset"][1]["options"] == [
        "quality", "balanced", "fast", "turbo", "duca quality", "duca balanced", "duca fast", "custom"]


def test_every_node_the_workflows_use_is_provided(pack):
    workflows = [*(REPO / "workflows").glob("*.json"), *(REPO / "tests" / "e2e" / "saved_workflows").glob("*.json")]
    used = {node["type"] for path in workflows for node in json.loads(path.read_text())["nodes"]}
    pack_nodes = {t for t in used if t.startswith("DuCa")}
    assert len(workflows) > 5 and len(pack_nodes) >= 6
    assert pack_nodes <= set(host.node_classes())


def planned_on_flux(preset, steps):
    """The timeline a budget preset plans for Flux (a DiT) at `steps` steps (methods.forecast)."""
    from comfyui_duca.cache_core.plan import budget_plan
    from comfyui_duca.methods.forecast import FORECAST_PRESETS
    c = FORECAST_PRESETS[preset].on_model(SimpleNamespace(family="flux", level="token-wise"))
    return budget_plan(steps, c.budget, c.first_full_steps, c.max_skipped, c.ends, c.last_step_full).timeline


def test_run_stats_go_to_the_node_that_ran(pack, flux, flux_conds, monkeypatch):
    """The host's hidden unique_id reaches the node (cls.hidden) and the listener its stats go to
    (the browser tests see them drawn on that node)."""
    from comfy_api.latest import io
    from comfyui_duca.methods.forecast import FEW_STEPS
    from comfyui_duca.nodes import accelerate as node_module
    reported = []
    monkeypatch.setattr(node_module, "node_reporter", lambda node_id: lambda stats: reported.append((node_id, stats)))
    model = host.node("DuCaAccelerateV2", unique_id="17").execute(flux, "fast")[0]
    models.sample(model, *flux_conds, steps=FEW_STEPS, height=64, width=64)  # the fewest steps it skips at
    expected = planned_on_flux("fast", FEW_STEPS)
    assert "E" in expected
    assert [(node_id, stats.timeline) for node_id, stats in reported] == [("17", expected)]
    for node_id in ("DuCaAccelerateV2", "DuCaCustomCycle", "DuCaAccelerate", "DuCaDeepCache",
                    "DuCaApplySchedule"):  # the nodes that show a timeline
        assert host.node_classes()[node_id].GET_SCHEMA().hidden == [io.Hidden.unique_id], node_id


def register(monkeypatch):
    """The pack's nodes in the host's node list, as its loader puts them there (for this test only)."""
    import nodes
    for node_id, node in host.node_classes().items():
        monkeypatch.setitem(nodes.NODE_CLASS_MAPPINGS, node_id, node)


def test_the_hosts_cache_keeps_identical_stats_nodes_apart(pack, monkeypatch):
    """Two identical Accelerate nodes are two runs for the host's cache (each shows its own stats),
    as for V1 nodes with a hidden UNIQUE_ID; a node without stats shares one cache entry."""
    from comfy_execution.caching import CacheKeySetInputSignature
    from comfy_execution.graph import DynamicPrompt
    from execution import IsChangedCache
    register(monkeypatch)
    prompt = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux.safetensors", "weight_dtype": "default"}},
              "2": {"class_type": "DuCaAccelerate", "inputs": {"model": ["1", 0], "preset": "fast"}},
              "3": {"class_type": "DuCaAccelerate", "inputs": {"model": ["1", 0], "preset": "fast"}},
              "4": {"class_type": "DuCaFeatureSlicer", "inputs": {"model": ["1", 0], "chunks": "auto"}},
              "5": {"class_type": "DuCaFeatureSlicer", "inputs": {"model": ["1", 0], "chunks": "auto"}}}
    graph = DynamicPrompt(prompt)
    keys = CacheKeySetInputSignature(graph, list(prompt), IsChangedCache("test", graph, None))
    asyncio.run(keys.add_keys(list(prompt)))
    assert keys.get_data_key("2") != keys.get_data_key("3")
    assert keys.get_data_key("4") == keys.get_data_key("5")


ACCELERATE_LISTS = {"preset": "fast", "token_selector": "random", "cache_device": "cpu"}


@pytest.mark.parametrize("node_id, good, name, bad", [
    ("DuCaAccelerate", ACCELERATE_LISTS, "preset", "ludicrous"),
    ("DuCaAccelerate", ACCELERATE_LISTS, "token_selector", "nearest"),
    ("DuCaAccelerate", ACCELERATE_LISTS, "cache_device", "tpu"),
    ("DuCaDeepCache", {"cache_interval": 3, "cache_depth": 1, "schedule": "quadratic"}, "schedule", "cubic"),
    ("DuCaApplySchedule", {"cache_device": "cpu"}, "cache_device", "tpu"),
    ("DuCaSaveSchedule", {"filename_prefix": "mine", "format": "json"}, "format", "xml"),
    ("DuCaLoadSchedule", {}, "schedule_name", "missing.json"),
    ("DuCaLearnToCache", {"sampler_name": "euler", "scheduler": "karras"}, "scheduler", "sometimes"),
])
def test_the_hosts_validation_refuses_a_value_not_in_a_list(pack, monkeypatch, node_id, good, name, bad):
    """Before the prompt runs, as the host refused V1 combo values (it checks V3 combos only
    through the node's validate_inputs)."""
    import execution
    register(monkeypatch)

    def refusals(inputs):
        _, errors, _ = asyncio.run(execution.validate_inputs("test", {"1": {"class_type": node_id, "inputs": inputs}},
                                                             "1", {}))
        return [e for e in errors if e["type"] == "custom_validation_failed"]
    assert not refusals(good)
    refused = refusals(dict(good, **{name: bad}))
    assert refused and all(f"{name}: {bad!r} is not one of" in e["details"] for e in refused)
    assert name in {e["extra_info"]["input_name"] for e in refused}


def test_presets_and_custom_inputs_reach_the_plan(pack, flux, flux_conds):
    from comfyui_duca.glue.patch import last_stats
    runs = {
        "fast": accelerate(flux, "fast"),
        "turbo, the widget's default": accelerate(flux, "turbo", first_full_steps=-1),
        "turbo, 2 first steps": accelerate(flux, "turbo", first_full_steps=2),
        "turbo, 3 as saved before": accelerate(flux, "turbo", first_full_steps=3),
        "balanced at half": accelerate(flux, "balanced", budget=0.5),
        "quality to 60%": accelerate(flux, "quality", end_percent=0.6),
        "duca fast": accelerate(flux, "duca fast"),
        "custom": accelerate(flux, "custom", interval=2, refresh_ratio=0.3, token_selector="random",
                             first_full_steps=1, start_percent=0.0, end_percent=0.5),
    }
    timelines = {}
    for name, model in runs.items():
        models.sample(model, *flux_conds, steps=20, height=64, width=64)
        timelines[name] = last_stats(model).timeline
    assert timelines == {
        # round(0.27 x 20) = 5 computed: the first one always (fast and turbo; 3 on quality and
        # balanced), the others nearer the start and the end
        "fast": "FEFEEEEFEEEEEFEEEEFE",
        "turbo, the widget's default": "FEEFEEEEEEFEEEEEEFEE",  # 4
        "turbo, 2 first steps": "FFEEEEFEEEEEEEEFEEEE",
        "turbo, 3 as saved before": "FFFEEEEEEEEFEEEEEEEE",
        "balanced at half": "FFFFEFEEFEEFEEFEEFEF",       # 10
        "quality to 60%": "FFFFEEFEEFEEFFFFFFFF",        # 9 planned, and every step from 12 on
        "duca fast": "FFFCACACFCACACFCACAC",              # DuCa's cycle, Flux's setting
        "custom": "FCFCFCFCFCFFFFFFFFFF"}
    assert last_stats(runs["custom"]).to_dict()["steps"][1]["tokens_recomputed"] > 0


@pytest.mark.parametrize("kwargs, name", [
    (dict(preset="ludicrous"), "preset"),
    (dict(preset="duca turbo"), "preset"),
    (dict(preset="balanced", budget=1.5), "budget"),
    (dict(preset="balanced", placement="random"), "placement"),
    (dict(preset="custom", interval=0), "interval"),
    (dict(preset="custom", refresh_ratio=2.0), "refresh_ratio"),
    (dict(preset="balanced", token_selector="nearest"), "token_selector"),
    (dict(preset="balanced", start_percent=0.9, end_percent=0.1), "start"),
])
def test_bad_input_is_a_clear_error_naming_it(pack, flux, kwargs, name):
    with pytest.raises(ValueError, match=name):
        accelerate(flux, **kwargs)


def test_node_leaves_the_input_model_untouched(pack, flux):
    before = dict(flux.model_options.get("transformer_options", {}))
    patched = accelerate(flux, "balanced")
    assert patched is not flux
    assert flux.model_options.get("transformer_options", {}) == before


def test_applying_twice_keeps_one_accelerator_with_the_last_settings(pack, flux, flux_conds):
    from comfyui_duca.glue.patch import last_stats
    from comfyui_duca.methods.forecast import FEW_STEPS
    once = accelerate(flux, "fast")
    twice = accelerate(once, "quality")
    steps = FEW_STEPS  # the fewest steps the presets skip at
    reference = models.sample(accelerate(flux, "quality"), *flux_conds, steps=steps, height=64, width=64)
    out = models.sample(twice, *flux_conds, steps=steps, height=64, width=64)
    # quality's plan, not fast's (they differ at these steps)
    assert planned_on_flux("quality", steps) != planned_on_flux("fast", steps)
    assert last_stats(twice).timeline == planned_on_flux("quality", steps)
    assert torch.equal(out, reference)


def test_another_packs_block_patch_still_runs(pack, flux, flux_conds):
    """A `dit` replacement set before ours is chained, not dropped."""
    from comfyui_duca.glue.patch import apply_method
    from comfyui_duca.cache_core import all_full_plan
    from comfyui_duca.methods import DuCaConfig
    seen = []

    def other_patch(args, extra):
        seen.append(1)
        return extra["original_block"](args)
    other = flux.clone()
    other.set_model_patch_replace(other_patch, "dit", "double_block", 0)
    reference = models.sample(other, *flux_conds, steps=4, height=64, width=64)
    calls_without = len(seen)
    patched = apply_method(other, DuCaConfig(plan=all_full_plan(4)))
    out = models.sample(patched, *flux_conds, steps=4, height=64, width=64)
    assert len(seen) == 2 * calls_without > 0
    assert torch.equal(out, reference)
