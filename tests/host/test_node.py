"""The node as ComfyUI sees it: mappings, inputs, errors, unsupported models."""
import logging

import pytest
import torch

from testbed import models


def test_pack_exports_the_flagship_node(pack):
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["DuCaAccelerate"] == "Accelerate (DuCa)"
    node = pack.NODE_CLASS_MAPPINGS["DuCaAccelerate"]
    inputs = node.INPUT_TYPES()
    assert set(inputs["required"]) == {"model", "preset"}
    assert {"interval", "refresh_ratio", "token_selector", "first_full_steps", "start_percent",
            "end_percent", "cache_device"} <= set(inputs["optional"])
    for section in inputs.values():
        for name, (_, options) in section.items():
            assert options.get("tooltip"), f"{name} has no tooltip"
    assert node.RETURN_TYPES == ("MODEL",)


def test_presets_and_custom_inputs_reach_the_plan(pack, flux, flux_conds):
    from comfyui_duca.glue.patch import last_stats
    node = pack.NODE_CLASS_MAPPINGS["DuCaAccelerate"]()
    (fast,) = node.apply(flux, "fast")
    (custom,) = node.apply(flux, "custom", interval=2, refresh_ratio=0.3, token_selector="random",
                           first_full_steps=1, start_percent=0.0, end_percent=0.5)
    timelines = {}
    for name, model in (("fast", fast), ("custom", custom)):
        models.sample(model, *flux_conds, steps=10, height=64, width=64)
        timelines[name] = last_stats(model).timeline
    assert timelines["fast"] == "FFFCACACFC"
    assert timelines["custom"] == "FCFCFFFFFF"
    assert last_stats(custom).to_dict()["steps"][1]["tokens_recomputed"] > 0


@pytest.mark.parametrize("kwargs, name", [
    (dict(preset="turbo"), "preset"),
    (dict(preset="custom", interval=0), "interval"),
    (dict(preset="custom", refresh_ratio=2.0), "refresh_ratio"),
    (dict(preset="balanced", token_selector="nearest"), "token_selector"),
    (dict(preset="balanced", start_percent=0.9, end_percent=0.1), "start"),
])
def test_bad_input_is_a_clear_error_naming_it(pack, flux, kwargs, name):
    node = pack.NODE_CLASS_MAPPINGS["DuCaAccelerate"]()
    with pytest.raises(ValueError, match=name):
        node.apply(flux, **kwargs)


def test_node_leaves_the_input_model_untouched(pack, flux):
    node = pack.NODE_CLASS_MAPPINGS["DuCaAccelerate"]()
    before = dict(flux.model_options.get("transformer_options", {}))
    (patched,) = node.apply(flux, "balanced")
    assert patched is not flux
    assert flux.model_options.get("transformer_options", {}) == before


def test_unknown_model_passes_through_with_one_warning(pack, tmp_path, caplog):
    """A U-Net that ComfyUI's loader detects from a safetensors file (DuCa covers DiTs for now)."""
    path = tmp_path / "small_unet.safetensors"
    models.save_unet_checkpoint(path, seed=3)
    unet = models.load_unet_checkpoint(path)
    cond = models.sd_conditioning()
    kw = dict(steps=4, cfg=2.0, channels=4, height=64, width=64)
    reference = models.sample(unet, cond, **kw)
    node = pack.NODE_CLASS_MAPPINGS["DuCaAccelerate"]()
    with caplog.at_level(logging.WARNING, logger="comfyui-duca"):
        (same,) = node.apply(unet, "balanced")
        out = models.sample(same, cond, **kw)
    warnings = [r for r in caplog.records if r.name == "comfyui-duca" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unchanged" in warnings[0].getMessage()
    assert same is unet
    assert torch.equal(out, reference)


def test_applying_twice_keeps_one_accelerator_with_the_last_settings(pack, flux, flux_conds):
    from comfyui_duca.glue.patch import last_stats
    node = pack.NODE_CLASS_MAPPINGS["DuCaAccelerate"]()
    (once,) = node.apply(flux, "fast")
    (twice,) = node.apply(once, "quality")
    reference = models.sample(node.apply(flux, "quality")[0], *flux_conds, steps=10, height=64, width=64)
    out = models.sample(twice, *flux_conds, steps=10, height=64, width=64)
    assert last_stats(twice).timeline == "FFFCAFCAFC"
    assert torch.equal(out, reference)


def test_another_packs_block_patch_still_runs(pack, flux, flux_conds):
    """A `dit` replacement set before ours is chained, not dropped."""
    from comfyui_duca.glue.patch import apply_duca
    from comfyui_duca.cache_core import DuCaConfig, all_full_plan
    seen = []

    def other_patch(args, extra):
        seen.append(1)
        return extra["original_block"](args)
    other = flux.clone()
    other.set_model_patch_replace(other_patch, "dit", "double_block", 0)
    reference = models.sample(other, *flux_conds, steps=4, height=64, width=64)
    calls_without = len(seen)
    patched = apply_duca(other, DuCaConfig(plan=all_full_plan(4)))
    out = models.sample(patched, *flux_conds, steps=4, height=64, width=64)
    assert len(seen) == 2 * calls_without > 0
    assert torch.equal(out, reference)
