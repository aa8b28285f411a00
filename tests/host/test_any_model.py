"""Every model the host can sample: the budget presets forecast a model no registry entry names,
a subclass of a known class is its parent's family (named with its own class), Wan 2.2 S2V and
Animate are accelerated, and a run's compute counts what runs outside the hooked blocks."""
import logging
from types import SimpleNamespace

import pytest
import torch

from testbed import host, models

STEPS = 20  # above the few-step threshold, under which the presets compute every step


def stable_cascade_prior(seed: int = 3):
    """A tiny Stable Cascade stage C (the host's StageC): no registry entry names it."""
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


def prior_conditioning(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 8, 32, generator=gen), {"pooled_output": torch.randn(1, 1, 32, generator=gen)}]]


PRIOR_KW = dict(steps=STEPS, cfg=2.0, channels=4, height=32, width=32)


def accelerate(model, preset: str):
    """The flagship node, as the host runs it."""
    (accelerated,) = host.node("DuCaAccelerate").execute(model, preset).result
    return accelerated


def planned_calls(preset: str, steps: int) -> float:
    from comfyui_duca.cache_core.plan import budget_plan
    from comfyui_duca.methods.forecast import FORECAST_PRESETS
    c = FORECAST_PRESETS[preset].on_model(SimpleNamespace(family="flux", level="token-wise"))
    timeline = budget_plan(steps, c.budget, c.first_full_steps, c.max_skipped, c.ends, c.last_step_full).timeline
    return timeline.count("F") / steps


def test_a_host_class_no_entry_names_runs_the_balanced_preset_at_its_budget(pack, duca, caplog):
    patch, core = duca
    prior = stable_cascade_prior()
    positive, negative = prior_conditioning(1), prior_conditioning(2)
    reference = models.sample(prior, positive, negative, **PRIOR_KW)

    full = patch.apply_method(prior, core.ForecastConfig(budget=1.0))
    assert full is not prior
    assert torch.equal(models.sample(full, positive, negative, **PRIOR_KW), reference)

    with caplog.at_level(logging.INFO, logger="comfyui-duca"):
        balanced = accelerate(prior, "balanced")
        out = models.sample(balanced, positive, negative, **PRIOR_KW)
    stats = patch.last_stats(balanced)
    assert (stats.family, stats.model_class, stats.level) == ("generic", "StageC", "step")
    assert stats.compute_fraction == pytest.approx(planned_calls("balanced", STEPS))
    assert stats.compute_fraction <= core.BUDGETS["balanced"] + 1 / STEPS
    distance = float((out - reference).norm() / reference.norm())
    assert 1e-6 < distance < 0.5
    lines = [r.getMessage() for r in caplog.records if r.name == "comfyui-duca"]
    assert any("StageC has no entry" in line for line in lines)
    assert any(line.startswith("DuCa: forecast balanced") and line.endswith("on generic (StageC)") for line in lines)
    assert not [r for r in caplog.records if r.name == "comfyui-duca" and r.levelno >= logging.WARNING]


class NoCoefficients(torch.nn.Module):
    """A model sampling without the host's `noise_scaling`: nothing to forecast with."""

    def sigma(self, timestep):
        return timestep


def test_a_model_whose_sampling_cannot_be_read_passes_through_with_one_warning(pack, duca, caplog):
    patch, _ = duca
    prior = stable_cascade_prior()
    prior.add_object_patch("model_sampling", NoCoefficients())
    with caplog.at_level(logging.WARNING, logger="comfyui-duca"):
        same = accelerate(prior, "balanced")
    warnings = [r.getMessage() for r in caplog.records if r.name == "comfyui-duca"]
    assert same is prior
    assert len(warnings) == 1
    assert "StageC" in warnings[0] and "noise coefficients" in warnings[0] and "unchanged" in warnings[0]


def subclassed(model, name: str):
    """`model` with its diffusion model's class swapped for a subclass made here (what a newer host
    or another pack adds: the parent's blocks, a class no entry names)."""
    dm = model.model.diffusion_model
    dm.__class__ = type(name, (type(dm),), {})
    return model


@pytest.mark.parametrize("build, family, level", [
    (lambda: models.flux(seed=2), "flux", "token-wise"),
    (lambda: models.wan(seed=2), "wan", "token-wise"),
])
def test_a_subclass_of_a_known_class_is_its_parents_family_named_with_its_own_class(pack, duca, caplog, build,
                                                                                   family, level):
    from comfyui_duca.adapters import family_of, find_adapter
    patch, core = duca
    model = subclassed(build(), "NewerModel")
    adapter = find_adapter(model.model.diffusion_model)
    assert (adapter.family, adapter.model_class, adapter.label) == (family, "NewerModel", f"{family} (NewerModel)")
    assert family_of(model.model.diffusion_model).name == family
    with caplog.at_level(logging.INFO, logger="comfyui-duca"):
        duca_balanced = patch.apply_method(model, core.PRESETS["balanced"])
        cond = (models.text_conditioning(32, seed=1), models.text_conditioning(32, seed=2))
        if family == "flux":
            cond = (models.flux_conditioning(model=model, seed=1), models.flux_conditioning(model=model, seed=2))
        latent = torch.zeros(1, 16, 8, 8) if family == "flux" else torch.zeros(1, 16, 2, 8, 8)
        models.sample(duca_balanced, *cond, latent=latent, steps=10, cfg=2.0)
    stats = patch.last_stats(duca_balanced)
    assert (stats.family, stats.model_class, stats.level) == (family, "NewerModel", level)
    assert "A" in stats.timeline and stats.compute_fraction < 0.8
    assert any(r.getMessage().endswith(f"on {family} (NewerModel)") for r in caplog.records if r.name == "comfyui-duca")


# --- Wan 2.2 S2V and Animate: WanModel subclasses with the same block hooks ------------------------
AUDIO_DIM, AUDIO_LAYERS = 32, 25  # the audio encoder's features: [batch, layers, width, 4 per latent frame]


def wan_s2v(seed: int = 0):
    return models.wan(seed, config_class="WAN22_S2V", model_type="s2v", audio_dim=AUDIO_DIM, num_audio_token=4,
                      cond_dim=16, audio_inject_layers=[0, 2])


def wan_animate(seed: int = 0):
    return models.wan(seed, config_class="WAN22_Animate", model_type="animate")


def with_audio(conditioning, frames: int, seed: int = 7):
    """`conditioning` with S2V's audio features (what WanSoundImageToVideo puts on it); the host's
    audio injector adds them to the hidden state after chosen blocks, outside the block hooks."""
    gen = torch.Generator().manual_seed(seed)
    audio = torch.randn(1, AUDIO_LAYERS, AUDIO_DIM, 4 * frames, generator=gen)
    return [[tensor, {**extras, "audio_embed": audio}] for tensor, extras in conditioning]


WAN_KW = dict(steps=STEPS, cfg=3.0)


@pytest.mark.parametrize("build, model_class, audio", [
    (wan_s2v, "WanModel_S2V", True),
    (wan_animate, "AnimateWanModel", False),
])
def test_wan22_s2v_and_animate_are_accelerated(pack, duca, build, model_class, audio):
    patch, core = duca
    model = build(seed=3)
    assert type(model.model.diffusion_model).__name__ == model_class
    positive, negative = models.text_conditioning(32, seed=1), models.text_conditioning(32, seed=2)
    if audio:
        positive, negative = with_audio(positive, frames=2), with_audio(negative, frames=2)
    latent = torch.zeros(1, 16, 2, 8, 8)
    reference = models.sample(model, positive, negative, latent=latent, **WAN_KW)

    full = patch.apply_method(model, core.DuCaConfig(plan=core.all_full_plan(STEPS)))
    assert torch.equal(models.sample(full, positive, negative, latent=latent, **WAN_KW), reference)

    for config in (core.PRESETS["balanced"], core.FORECAST_PRESETS["balanced"]):
        accelerated = patch.apply_method(model, config)
        out = models.sample(accelerated, positive, negative, latent=latent, **WAN_KW)
        stats = patch.last_stats(accelerated)
        assert (stats.family, stats.model_class) == ("wan", model_class)
        assert stats.compute_fraction < 0.6
        distance = float((out - reference).norm() / reference.norm())
        assert 1e-6 < distance < 0.3, (config, distance)


# --- compute outside the hooked blocks ------------------------------------------------------------
def chroma_radiance(seed: int = 0):
    """A small Chroma Radiance: Chroma's blocks on 16x16-pixel patches, then a per-pixel decoder (its
    NeRF blocks) that runs outside the hooked blocks on every call."""
    import comfy.supported_models
    config = dict(models.FLUX_SMALL)
    config.pop("vec_in_dim", None)
    unet_config = {"image_model": "chroma_radiance", "in_channels": 3, "out_channels": 3, "patch_size": 16,
                   "mlp_ratio": 4.0, "theta": 10000, "qkv_bias": True, "in_dim": 64,
                   "out_dim": config["hidden_size"], "hidden_dim": 128, "n_layers": 2,
                   "nerf_hidden_size": 32, "nerf_mlp_ratio": 4, "nerf_depth": 2, "nerf_max_freqs": 8,
                   "nerf_tile_size": 0, "nerf_final_head_type": "conv", "nerf_embedder_dtype": torch.float32, **config}
    return models.build(comfy.supported_models.ChromaRadiance, unet_config, seed)


def counted_flops(run) -> float:
    """FLOPs of a whole sampling run, by torch's counter over every op the host runs."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def test_chroma_radiance_claimed_speedup_counts_its_pixel_decoder(pack, duca):
    """DuCa skips blocks, never the pixel decoder: the fraction of compute the run claims (and the
    speedup it logs from it) is the measured fraction of the whole model's FLOPs. Tolerance 5%: the
    blocks' cost is counted analytically (a conservative step's partial refresh by formula)."""
    patch, core = duca
    model = chroma_radiance(seed=1)
    assert type(model.model.diffusion_model).__name__ == "ChromaRadiance"
    positive = models.chroma_conditioning(model=model, seed=1)
    negative = models.chroma_conditioning(model=model, seed=2)
    kw = dict(steps=STEPS, cfg=3.0, latent=torch.zeros(1, 3, 64, 64))
    uncached = counted_flops(lambda: models.sample(model, positive, negative, **kw))
    balanced = patch.apply_method(model, core.PRESETS["balanced"])
    cached = counted_flops(lambda: models.sample(balanced, positive, negative, **kw))
    stats = patch.last_stats(balanced)
    assert (stats.family, stats.model_class) == ("flux", "ChromaRadiance")
    measured = cached / uncached
    assert stats.compute_fraction == pytest.approx(measured, rel=0.05)
    assert stats.compute_fraction > stats.block_fraction + 0.05  # the decoder is a real share here
    assert f"(up to {1 / stats.compute_fraction:.2f}x)" in stats.summary()
