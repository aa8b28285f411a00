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
    assert inputs["hidden"] == {"unique_id": "UNIQUE_ID"}  # where the UI shows the run's stats
    for section in (inputs["required"], inputs["optional"]):
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


def stable_cascade_prior(seed: int = 3):
    """A tiny Stable Cascade stage C (ComfyUI's StageC): no block hooks, not reused step-wise
    by the pack, so a family the pack does not know."""
    import comfy.supported_models
    unet_config = {"stable_cascade_stage": "c", "c_in": 4, "c_out": 4, "c_r": 16, "c_cond": 32, "c_hidden": [32, 32],
                   "nhead": [2, 2], "blocks": [[1, 1], [1, 1]], "block_repeat": [[1, 1], [1, 1]],
                   "level_config": ["CTA", "CTA"], "c_clip_text": 32, "c_clip_text_pooled": 32, "c_clip_img": 768,
                   "c_clip_seq": 2}
    model_config = comfy.supported_models.Stable_Cascade_C(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    models.init_weights(model.diffusion_model, seed)
    return models.patcher(model)


def test_unknown_model_passes_through_with_one_warning(pack, caplog):
    """A Stable Cascade prior: no adapter covers it (U-Nets get DeepCache, see test_deepcache.py)."""
    from comfyui_duca.adapters import find_adapter
    prior = stable_cascade_prior()
    assert type(prior.model.diffusion_model).__name__ == "StageC"
    assert find_adapter(prior.model.diffusion_model) is None
    gen = torch.Generator().manual_seed(1)
    cond = [[torch.randn(1, 8, 32, generator=gen), {"pooled_output": torch.randn(1, 1, 32, generator=gen)}]]
    kw = dict(steps=4, cfg=2.0, channels=4, height=64, width=64)
    reference = models.sample(prior, cond, **kw)
    node = pack.NODE_CLASS_MAPPINGS["DuCaAccelerate"]()
    with caplog.at_level(logging.WARNING, logger="comfyui-duca"):
        (same,) = node.apply(prior, "balanced")
        out = models.sample(same, cond, **kw)
    warnings = [r for r in caplog.records if r.name == "comfyui-duca" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unchanged" in warnings[0].getMessage() and "StageC" in warnings[0].getMessage()
    assert same is prior
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
    patched = apply_duca(other, DuCaConfig(plan=all_full_plan(4)))
    out = models.sample(patched, *flux_conds, steps=4, height=64, width=64)
    assert len(seen) == 2 * calls_without > 0
    assert torch.equal(out, reference)
