"""The Forge glue (forge/), driven through ComfyUI's own ModelPatcher and model classes: Forge's
U-Net patcher shares the contract the glue uses (`clone()`, `set_model_unet_function_wrapper`,
`set_model_patch_replace`, the `model_function_wrapper(apply_model, {"input", "timestep", "c",
"cond_or_uncond"})` call), so the same sampling passes a Forge script makes run here on the real
host. The script itself (scripts/duca_forge.py) needs Forge: tests/e2e/test_forge_host.py."""
import logging

import pytest
import torch

from testbed import models

STEPS = 9
KW = dict(channels=4, height=64, width=64)


@pytest.fixture(scope="module")
def forge(pack):
    from comfyui_duca import forge
    return forge


def schedule(model, steps, denoise=1.0):
    """The sigmas a sampling pass of `steps` steps runs (a partial pass for denoise < 1), as the
    Forge script reads them from the pass's sampler."""
    import comfy.samplers
    total = int(steps / denoise)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", total)
    return [float(s) for s in sigmas[-(steps + 1):]]


def one_pass(forge, model, settings, conds, steps=STEPS, counted=True, sampler="euler", **kw):
    """One pass as the Forge script runs it: a patched clone, sampling, finish. -> (output, stats)."""
    sigmas = schedule(model, steps, kw.get("denoise", 1.0)) if counted else None
    patched, sampling_pass = forge.accelerate(model, settings, steps, sigmas)
    out = models.sample(patched, *conds, steps=steps, sampler=sampler, **{**KW, **kw})
    return out, sampling_pass.finish()


class Fixed:
    """Settings that resolve to one method config (what the accordion cannot express: all-full)."""

    def __init__(self, config):
        self.config = config

    def config_for(self, adapter, steps):
        return self.config


def middle_runs(model):
    """Counts real runs of the U-Net's middle block (a hook on its first conv: a stood-in block
    would not run it)."""
    counts = [0]
    conv = next(m for m in model.model.diffusion_model.middle_block.modules() if isinstance(m, torch.nn.Conv2d))
    return counts, conv.register_forward_hook(lambda *_: counts.__setitem__(0, counts[0] + 1))


@pytest.mark.parametrize("cfg, batch", [(1.0, 1), (3.0, 2)])
def test_all_full_plans_are_bit_identical_to_the_stock_model(forge, duca, unet, conds, cfg, batch):
    _, core = duca
    reference = models.sample(unet, *conds, steps=STEPS, cfg=cfg, batch=batch, **KW)
    for settings in (Fixed(core.DeepCacheConfig(plan=core.all_full_plan(STEPS))),
                     forge.ForgeSettings(method="forecast", budget=1.0)):
        out, stats = one_pass(forge, unet, settings, conds, cfg=cfg, batch=batch)
        assert torch.equal(out, reference), settings
        assert stats.timeline == "F" * STEPS and stats.compute_fraction == 1.0


def test_auto_runs_deepcache_on_a_unet_and_skips_what_it_plans(forge, unet, conds):
    counts, handle = middle_runs(unet)
    try:
        uncached = models.sample(unet, *conds, steps=STEPS, cfg=3.0, **KW)
        full_runs = counts[0]
        counts[0] = 0
        out, stats = one_pass(forge, unet, forge.ForgeSettings(), conds, cfg=3.0)
    finally:
        handle.remove()
    assert stats.level == "deepcache" and stats.method == "deepcache"
    computed = stats.timeline.count("F")
    assert 0 < computed < STEPS and stats.compute_fraction < 0.8
    assert counts[0] == full_runs * computed // STEPS  # the middle block ran on the computed steps only
    assert float((out - uncached).norm() / uncached.norm()) < 0.2


def test_nothing_survives_into_the_next_pass(forge, unet, conds):
    """Each pass is its own run: the same settings after another resolution, batch and seed give
    the output of a first pass; the patcher the script was given is left as it was."""
    settings = forge.ForgeSettings(preset="fast")
    first, first_stats = one_pass(forge, unet, settings, conds, cfg=3.0, seed=5)
    one_pass(forge, unet, settings, conds, cfg=3.0, batch=2, height=96, width=64, seed=1)
    again, again_stats = one_pass(forge, unet, settings, conds, cfg=3.0, seed=5)
    assert torch.equal(first, again) and first_stats.timeline == again_stats.timeline
    assert "model_function_wrapper" not in unet.model_options


@pytest.mark.parametrize("counted", [True, False])
def test_a_hires_second_pass_gets_its_own_plan(forge, unet, conds, counted):
    """Hires fix: a second, partial pass on an upscaled latent, patched afresh before it runs. Given its
    schedule or counting its steps from the calls' sigmas, the plan covers the pass's own steps."""
    settings = forge.ForgeSettings(preset="fast")
    low, low_stats = one_pass(forge, unet, settings, conds, cfg=3.0, counted=counted)
    upscaled = torch.nn.functional.interpolate(low, scale_factor=2, mode="nearest")
    steps = 6
    high, high_stats = one_pass(forge, unet, settings, conds, steps=steps, cfg=3.0, latent=upscaled, denoise=0.5,
                                counted=counted)
    assert high.shape == (1, 4, 16, 16) and torch.isfinite(high).all()
    assert high_stats.num_steps == steps and len(high_stats.timeline) == steps
    assert high_stats.timeline.count("F") < steps and low_stats.timeline != ""
    stock = models.sample(unet, *conds, steps=steps, cfg=3.0, latent=upscaled, denoise=0.5, **KW)
    assert float((high - stock).norm() / stock.norm()) < 0.2


def test_counting_steps_gives_the_plan_of_the_given_schedule(forge, unet, conds):
    settings = forge.ForgeSettings(preset="balanced")
    given, given_stats = one_pass(forge, unet, settings, conds, cfg=3.0, counted=True)
    counted, counted_stats = one_pass(forge, unet, settings, conds, cfg=3.0, counted=False)
    assert given_stats.timeline == counted_stats.timeline and torch.equal(given, counted)


def test_forecast_gaps_are_corrected_only_under_euler_with_the_schedule(forge, unet, conds):
    """The gap correction needs where each step goes: the pass's schedule and Euler's method."""
    from comfy.k_diffusion.sampling import sample_euler
    from comfyui_duca.methods import FORECAST_PRESETS
    balanced, steps = FORECAST_PRESETS["balanced"], 20  # computed steps after gaps (not at 9 steps)

    def run(config, given_schedule, function):
        sigmas = schedule(unet, steps, 1.0) if given_schedule else None
        patched, sampling_pass = forge.accelerate(unet, Fixed(config), steps, sigmas, function)
        return models.sample(patched, *conds, steps=steps, cfg=3.0, **KW), sampling_pass.finish()
    corrected, stats = run(balanced, True, sample_euler)
    plain, plain_stats = run(balanced.with_changes(gap_correction=False), True, sample_euler)
    counted, counted_stats = run(balanced, False, sample_euler)
    unknown_sampler, _ = run(balanced, True, None)
    assert stats.timeline == plain_stats.timeline == counted_stats.timeline and "E" in stats.timeline
    assert not torch.allclose(corrected, plain, atol=1e-6)
    assert torch.equal(counted, plain) and torch.equal(unknown_sampler, plain)


def test_a_multi_evaluation_sampler_keeps_the_plan_with_the_schedule(forge, unet, conds):
    settings = forge.ForgeSettings(preset="balanced")
    _, euler = one_pass(forge, unet, settings, conds, cfg=3.0)
    out, two_stage = one_pass(forge, unet, settings, conds, cfg=3.0, sampler="dpmpp_2s_ancestral")
    assert two_stage.timeline == euler.timeline and torch.isfinite(out).all()
    assert sum(s.model_calls for s in two_stage.steps.values()) > sum(s.model_calls for s in euler.steps.values())


def test_flux_forecasts_whole_steps_at_the_budget(forge, flux, flux_conds):
    settings = forge.ForgeSettings(preset="turbo")  # auto on a DiT: the budget presets
    out, stats = one_pass(forge, flux, settings, flux_conds, steps=20, cfg=3.5, channels=16, height=64, width=64)
    assert stats.method != "deepcache" and torch.isfinite(out).all()
    assert stats.timeline.count("F") == round(0.2 * 20) and abs(stats.compute_fraction - 0.2) < 0.03


def test_fora_computes_every_unit_every_nth_step(forge, unet, conds):
    """A U-Net's schedule units are its transformer layers: count the middle one's real runs."""
    counts = [0]
    layer = next(m for m in unet.model.diffusion_model.middle_block if type(m).__name__ == "SpatialTransformer")
    handle = layer.proj_in.register_forward_hook(lambda *_: counts.__setitem__(0, counts[0] + 1))
    try:
        out, stats = one_pass(forge, unet, forge.ForgeSettings(method="fora", preset="balanced"), conds, cfg=3.0)
    finally:
        handle.remove()
    computed = [i for i in range(STEPS) if i == 0 or i % 3 == 0]  # FORA's N = 3, first step computed
    # the ResBlocks around the transformer layers still run on every step
    assert counts[0] == len(computed) and 0.5 < stats.compute_fraction < 0.9 and torch.isfinite(out).all()


def test_a_saved_schedule_replaces_the_method(forge, duca, unet, conds, tmp_path):
    from comfyui_duca.adapters import find_adapter
    from comfyui_duca.cache_core.schedule_rules import fora
    adapter = find_adapter(unet.model.diffusion_model)
    path = tmp_path / "every_other.json"
    fora(STEPS, adapter.schedule_units(), adapter.family, interval=2).save(path)
    settings = forge.ForgeSettings(method="deepcache", schedule_file=str(path))
    with_file, file_stats = one_pass(forge, unet, settings, conds, cfg=3.0)
    as_fora, fora_stats = one_pass(forge, unet, forge.ForgeSettings(method="fora", preset="quality"), conds, cfg=3.0)
    assert torch.equal(with_file, as_fora) and file_stats.timeline == fora_stats.timeline
    assert forge.ForgeSettings.from_infotext(
        {k: str(v) for k, v in settings.infotext().items()}) == settings
    wrong = tmp_path / "flux.json"
    fora(STEPS, ["double.0"], "flux").save(wrong)
    for bad in (wrong, tmp_path / "missing.json"):
        with pytest.raises(ValueError, match="schedule_file"):
            forge.accelerate(unet, forge.ForgeSettings(schedule_file=str(bad)), STEPS)


def test_an_earlier_model_function_wrapper_still_runs(forge, unet, conds):
    seen = []

    def other_extension(apply_model, params):
        seen.append(params["timestep"])
        return apply_model(params["input"], params["timestep"], **params["c"])
    wrapped = unet.clone()
    wrapped.set_model_unet_function_wrapper(other_extension)
    out, stats = one_pass(forge, wrapped, forge.ForgeSettings(), conds, cfg=1.0)
    assert len(seen) == sum(s.model_calls for s in stats.steps.values()) == STEPS
    assert stats.timeline.count("F") < STEPS


def test_an_unknown_model_passes_through_with_one_warning(forge, caplog):
    class Stranger(torch.nn.Module):
        pass

    class Patcher:
        model = type("Model", (), {"diffusion_model": Stranger()})()
    patcher = Patcher()
    with caplog.at_level(logging.WARNING, logger="comfyui-duca"):
        assert forge.accelerate(patcher, forge.ForgeSettings(), STEPS) == (patcher, None)
        forge.accelerate(patcher, forge.ForgeSettings(), STEPS)
    assert len([r for r in caplog.records if "Stranger" in r.getMessage()]) == 1


def test_settings_round_trip_through_the_generation_parameters(forge):
    settings = forge.ForgeSettings(method="forecast", preset="turbo", budget=0.25, first_full_steps=2,
                                   start=0.1, end=0.9)
    written = {key: str(value) for key, value in settings.infotext().items()}  # as PNG Info reads them back
    assert forge.ForgeSettings.from_infotext(written) == settings
    assert forge.ForgeSettings.from_infotext({"Steps": "20"}) is None


@pytest.mark.parametrize("inputs, named", [
    (dict(method="fastest"), "method"), (dict(preset="ultra"), "preset"), (dict(budget=1.5), "budget"),
    (dict(first_full_steps=-3), "first_full_steps"), (dict(start=0.8, end=0.2), "start")])
def test_bad_settings_name_the_input(forge, inputs, named):
    with pytest.raises(ValueError, match=named):
        forge.ForgeSettings(**inputs)


def test_a_preset_the_method_lacks_is_refused_naming_it(forge, unet):
    with pytest.raises(ValueError, match="preset: turbo"):
        forge.accelerate(unet, forge.ForgeSettings(method="deepcache", preset="turbo"), STEPS)
    patched, _ = forge.accelerate(unet, forge.ForgeSettings(preset="turbo"), STEPS)  # auto: the forecast has it
    assert patched is not unet
