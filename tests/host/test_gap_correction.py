"""The gap correction of the budget presets on the host's real samplers and models: it changes a
run from the first computed step after a gap on and nowhere before, under Euler and DPM++ 2M only,
and brings the trained models closer to the uncached picture than the forecast alone."""
import statistics

import pytest
import torch

from testbed import host, models, pixel_latents

STEPS = 20


def sample(model, conds, **kwargs):
    positive, negative = conds
    return models.sample(model, positive, negative, **{"steps": STEPS, "height": 64, "width": 64, **kwargs})


def accelerated(model, preset="balanced", **changes):
    from comfyui_duca.glue.patch import apply_method
    from comfyui_duca.methods import FORECAST_PRESETS
    return apply_method(model, FORECAST_PRESETS[preset].with_changes(**changes))


def handed_on(model, conds, **kwargs):
    """(final latent, the denoised output the sampler was handed at each step)."""
    seen = []
    out = sample(model, conds, callback=lambda step, x0, x, total: seen.append(x0.clone()), **kwargs)
    return out, seen


def test_a_corrected_run_changes_from_the_step_that_ends_the_first_gap(pack, flux, flux_conds):
    from comfyui_duca.glue.patch import last_stats
    corrected_model = accelerated(flux)
    corrected, corrected_steps = handed_on(corrected_model, flux_conds, cfg=3.5, batch=2)
    timeline = last_stats(corrected_model).timeline
    plain_model = accelerated(flux, gap_correction=False)
    plain, plain_steps = handed_on(plain_model, flux_conds, cfg=3.5, batch=2)
    assert last_stats(plain_model).timeline == timeline
    first_gap_end = timeline.index("F", timeline.index("E"))
    for step in range(first_gap_end):
        assert torch.equal(corrected_steps[step], plain_steps[step]), step
    assert not torch.allclose(corrected_steps[first_gap_end], plain_steps[first_gap_end], atol=1e-6)
    assert torch.isfinite(corrected).all() and not torch.allclose(corrected, plain, atol=1e-6)


@pytest.mark.parametrize("sampler", ["uni_pc", "euler_ancestral"])
def test_samplers_without_a_step_model_are_not_corrected_and_say_so(pack, flux, flux_conds, sampler):
    from comfyui_duca.glue.patch import last_stats
    model = accelerated(flux)
    corrected = sample(model, flux_conds, cfg=3.5, sampler=sampler)
    notes = last_stats(model).notes
    plain = sample(accelerated(flux, gap_correction=False), flux_conds, cfg=3.5, sampler=sampler)
    assert torch.equal(corrected, plain)
    if sampler == "uni_pc":  # a sampler that adds noise says how it is forecast instead
        assert any("corrected under euler and dpmpp_2m, not under unipc" in note for note in notes), notes


def test_dpmpp_2m_is_corrected(pack, flux, flux_conds):
    corrected = sample(accelerated(flux), flux_conds, cfg=3.5, sampler="dpmpp_2m")
    plain = sample(accelerated(flux, gap_correction=False), flux_conds, cfg=3.5, sampler="dpmpp_2m")
    assert torch.isfinite(corrected).all() and not torch.allclose(corrected, plain, atol=1e-6)


def test_the_u_nets_fast_preset_ends_on_a_computed_step_and_dits_keep_theirs(pack, flux, flux_conds, unet, conds):
    from comfyui_duca.cache_core.plan import budget_plan
    from comfyui_duca.glue.patch import last_stats
    from comfyui_duca.methods.forecast import ENDS
    (on_unet,) = host.node("DuCaAccelerate").execute(unet, "fast").result
    models.sample(on_unet, *conds, steps=28, cfg=3.0, channels=4)
    unet_timeline = last_stats(on_unet).timeline
    assert unet_timeline == budget_plan(28, 0.27, 1, ends=0.25, last_step_full=True).timeline
    (on_flux,) = host.node("DuCaAccelerate").execute(flux, "fast").result
    fast = sample(on_flux, flux_conds, steps=28, cfg=3.5)
    assert last_stats(on_flux).timeline == budget_plan(28, 0.27, 1, ends=ENDS).timeline != unet_timeline
    # on DiTs the fast preset leaves its gaps as forecast (measured closer there)
    assert torch.equal(fast, sample(accelerated(flux, "fast", gap_correction=False), flux_conds, steps=28, cfg=3.5))


def picture(model, label, seed, side, channels):
    return models.class_picture(model, label, seed, side, channels, steps=28)


CASES = [(label, seed) for label in ("astronaut", "rocket", "coffee") for seed in (10, 11)]  # not the bench's


@pytest.mark.parametrize("name", ["sd_unet", "flux"])
def test_the_correction_brings_trained_models_closer_to_the_uncached_picture(pack, name):
    """The quality preset (three first steps, then gaps of one to three steps), 28 steps euler:
    over six cases the corrected runs are much closer to the uncached pictures than the forecast
    alone (measured: a third of the squared error on the U-Net, two thirds on Flux), and at most one
    case is a little farther (one of Flux's is, by 12%)."""
    if name == "sd_unet":
        model, side, channels = models.sd_unet_trained(), models.SD_TRAINED_PIXELS, pixel_latents.SD_CHANNELS
    else:
        model, side, channels = models.flux_trained(), models.FLUX_TRAINED_PIXELS, pixel_latents.FLUX_CHANNELS
    corrected, plain = accelerated(model, "quality"), accelerated(model, "quality", gap_correction=False)
    errors = {"corrected": [], "plain": []}
    for label, seed in CASES:
        uncached = picture(model, models.CLASSES.index(label), seed, side, channels)
        for key, patched in (("corrected", corrected), ("plain", plain)):
            out = picture(patched, models.CLASSES.index(label), seed, side, channels)
            errors[key].append(float(((out - uncached) ** 2).mean()))
    assert sum(errors["corrected"]) < 0.75 * sum(errors["plain"]), errors
    assert sum(c < p for c, p in zip(errors["corrected"], errors["plain"])) >= len(CASES) - 1, errors


def guided_picture(model, label, seed, cfg):
    return models.class_picture(model, label, seed, models.FLUX_TRAINED_PIXELS, pixel_latents.FLUX_CHANNELS,
                                steps=28, cfg=cfg)


def test_under_strong_guidance_the_correction_takes_the_denoised_output_as_settled(pack, monkeypatch):
    """cfg 6 on the trained Flux, balanced: a run that asks for an unconditional output moves the
    gap's new point as if the denoised output were unchanged by the drift (data spread 0). Median
    picture PSNR to the uncached pictures over the 12 cases the spread was checked on (the first
    three classes x seeds 2-5; chosen on the bench's seeds 0-1): closer than with the unguided
    spread (0.5) and than the forecast alone (measured: 39.1 against 36.8 and 37.9 dB). On six other
    cases (CASES) the two spreads were level (34.9 and 35.3 dB), both ahead of the forecast alone."""
    from comfyui_duca.cache_core import gap_correction
    model = models.flux_trained()
    psnr = {"settled": [], "unguided spread": [], "plain": []}
    variants = {"settled": accelerated(model), "plain": accelerated(model, gap_correction=False)}
    for label, seed in [(label, seed) for label in range(3) for seed in range(2, 6)]:
        uncached = guided_picture(model, label, seed, 6.0)

        def closeness(patched):
            out = guided_picture(patched, label, seed, 6.0)
            return float(-10 * torch.log10(((out - uncached) ** 2).mean() / 4))  # pictures span [-1, 1]
        for key, patched in variants.items():
            psnr[key].append(closeness(patched))
        with monkeypatch.context() as patch:
            patch.setattr(gap_correction, "GUIDED_DATA_STD", gap_correction.DATA_STD)
            psnr["unguided spread"].append(closeness(variants["settled"]))
    medians = {key: statistics.median(values) for key, values in psnr.items()}
    assert medians["settled"] > medians["unguided spread"] + 1.0, medians
    assert medians["settled"] > medians["plain"], medians
