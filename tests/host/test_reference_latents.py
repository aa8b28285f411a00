"""Edit and reference models: a Flux Kontext-style reference latent and Qwen-Image-Edit.

The encoded input picture rides on the conditioning (`reference_latents`) and the host appends
its tokens to the image stream after the latent's own, so the sequence the blocks see is longer
than the latent's token grid, and its length follows the reference's size, not the latent's.
Token picks must range over the whole sequence (the reference tokens can be refreshed too),
reused and forecast steps must keep following the reference, and a reference of another size in
the next run is another sequence: a fresh run, not a cache of the wrong shape.
"""
import pytest
import torch

from testbed import families, forecast_checks, host, models

host.load_pack()
from comfyui_duca.methods.forecast import FEW_STEPS  # noqa: E402

SMALL = dict(height=64, width=64)  # an 8x8 latent: 4x4 image tokens on Flux
STEPS = 10
CFG = 3.5
PRESETS = ["balanced", "fast", "duca balanced", "duca fast"]  # forecast and token-wise cycles
FORECASTS = ["balanced", "fast"]
CYCLES = ["duca balanced", "duca fast"]
FOLLOWED = 0.5  # at most this relative error on the change another reference makes


def steps_of(preset):
    """The steps a preset's run here takes: the budget presets skip steps from FEW_STEPS on."""
    return FEW_STEPS if preset in FORECASTS else STEPS


def accelerate(model, preset):
    (out,) = host.node("DuCaAccelerate").execute(model, preset).result
    return out


def with_reference(conditioning, reference):
    """The conditioning with `reference` as its reference latent (what the host's ReferenceLatent
    node and TextEncodeQwenImageEdit put on it)."""
    return [[tensor, {**extras, "reference_latents": [reference]}] for tensor, extras in conditioning]


def picture(shape, seed):
    return torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed))


def relative_l2(out, reference):
    return float((out - reference).norm() / reference.norm())


def assert_forecast_from_the_runs_own_outputs(duca, preset, model, conds, sample):
    """Each skipped step extrapolates what this run's computed steps gave with this reference."""
    patch, _ = duca
    recorded, seen = forecast_checks.recording(accelerate(model, preset))
    sample(recorded, conds, sampler=forecast_checks.SAMPLER, steps=steps_of(preset))
    forecast_checks.assert_forecast_from_own_points(seen, patch.last_stats(recorded).timeline)


def follow(duca, preset, model, conds_for_seed, sample):
    """Uncached and accelerated outputs with two reference pictures."""
    patch, _ = duca
    outputs, references = [], []
    for seed in (7, 8):
        conds = conds_for_seed(seed)
        accelerated = accelerate(model, preset)
        outputs.append(sample(accelerated, conds))
        references.append(sample(model, conds))
        stats = patch.last_stats(accelerated)
        assert set(stats.timeline) != {"F"} and not stats.notes, (stats.timeline, stats.notes)
    return outputs, references


def assert_followed(outputs, references):
    change = references[1] - references[0]
    assert float(change.norm()) > 1e-3 * float(references[0].norm()), "the reference should matter here"
    followed = outputs[1] - outputs[0]
    assert relative_l2(followed, change) < FOLLOWED, relative_l2(followed, change)


# --- Flux Kontext-style ---------------------------------------------------------------------------
def kontext_conds(flux_conds, reference):
    return tuple(with_reference(c, reference) for c in flux_conds)


def sample_flux(model, conds, **kwargs):
    return models.sample(model, *conds, **{"steps": STEPS, "cfg": CFG, **SMALL, **kwargs})


def block_work(diffusion_model):
    """Forward hooks on the host's Flux modules: rows each block's MLPs computed, per step."""
    rows = []

    def count(_module, args, _out):
        rows[-1] += args[0].shape[0] * args[0].shape[1]

    mlps = [b.img_mlp for b in diffusion_model.double_blocks] + [b.linear2 for b in diffusion_model.single_blocks]
    handles = [m.register_forward_hook(count) for m in mlps]
    handles.append(diffusion_model.register_forward_pre_hook(lambda *_: rows.append(0)))
    return rows, handles


@pytest.mark.parametrize("reference_shape", [(16, 8, 8), (16, 12, 8)], ids=["same size", "taller"])
def test_all_full_plan_is_bit_identical_with_a_reference(flux, flux_conds, duca, reference_shape):
    patch, core = duca
    conds = kontext_conds(flux_conds, picture(reference_shape, 5))
    expected = sample_flux(flux, conds)
    patched = patch.apply_method(flux, core.DuCaConfig(plan=core.all_full_plan(STEPS)))
    assert torch.equal(sample_flux(patched, conds), expected)
    assert torch.equal(sample_flux(flux, conds), expected)  # nothing left on the model itself


def test_token_picks_range_over_the_reference_tokens_too(flux, flux_conds, duca):
    """On conservative steps the image stream refreshes int(ratio x (latent + reference tokens))
    rows, not a fraction of the latent's grid: the pick is over the sequence the block sees."""
    patch, core = duca
    from comfyui_duca.cache_core.tokens import layer_refresh_ratio
    config = core.PRESETS["balanced"]
    dm = flux.model.diffusion_model
    n_double, n_single = len(dm.double_blocks), len(dm.single_blocks)
    reference = picture((16, 12, 8), 6)                  # 6x4 = 24 reference tokens
    grid, extra, txt = 16, 24, flux_conds[0][0][0].shape[1]
    rows, handles = block_work(dm)
    try:
        sample_flux(patch.apply_method(flux, config), kontext_conds(flux_conds, reference), cfg=1.0)
    finally:
        for h in handles:
            h.remove()
    plan = config.plan_for(STEPS)
    assert core.Action.CONSERVATIVE in {s.action for s in plan.steps}
    depth, image = n_double + n_single, grid + extra
    for step, counted in zip(plan.steps, rows):
        if step.action is core.Action.FULL:
            assert counted == n_double * image + n_single * (image + txt)
        elif step.action is core.Action.AGGRESSIVE:
            assert counted == 0
        else:
            expected = sum(int(layer_refresh_ratio(step.refresh_ratio, i, depth, config.double_stream_factor) * image)
                           for i in range(n_double))
            expected += sum(int(layer_refresh_ratio(step.refresh_ratio, n_double + i, depth,
                                                    config.single_stream_factor) * (image + txt))
                            for i in range(n_single))
            assert counted == expected


@pytest.mark.parametrize("preset", CYCLES)
def test_token_wise_steps_follow_the_reference(flux, flux_conds, duca, preset):
    """What another reference picture changes in the uncached output, it changes in the
    accelerated output too: the change is not lost on the steps that skip work."""
    conds_for_seed = lambda seed: kontext_conds(flux_conds, picture((16, 8, 8), seed))  # noqa: E731
    assert_followed(*follow(duca, preset, flux, conds_for_seed, sample_flux))


@pytest.mark.parametrize("preset", FORECASTS)
def test_forecast_steps_extrapolate_this_references_outputs(flux, flux_conds, duca, preset):
    conds = kontext_conds(flux_conds, picture((16, 12, 8), 7))
    assert_forecast_from_the_runs_own_outputs(duca, preset, flux, conds, sample_flux)


@pytest.mark.parametrize("preset", PRESETS)
def test_a_reference_of_another_size_in_the_next_run_gets_a_fresh_run(flux, flux_conds, duca, preset):
    patch, _ = duca
    accelerated = accelerate(flux, preset)
    outputs = []
    steps = steps_of(preset)
    for shape in [(16, 8, 8), (16, 12, 8), (16, 8, 8)]:
        conds = kontext_conds(flux_conds, picture(shape, 9))
        out = sample_flux(accelerated, conds, steps=steps)
        stats = patch.last_stats(accelerated)
        assert set(stats.timeline) != {"F"} and not stats.notes, (stats.timeline, stats.notes)
        assert torch.equal(out, sample_flux(accelerate(flux, preset), conds, steps=steps)), shape
        outputs.append(out)
    assert torch.equal(outputs[2], outputs[0])


# --- Qwen-Image-Edit --------------------------------------------------------------------------------
QWEN = families.FAMILIES["qwen-image-edit"]
QWEN_REFERENCE = families.QWEN_LATENT


@pytest.fixture(scope="module")
def qwen(pack):
    return QWEN.build(0)


def qwen_conds(reference):
    return with_reference(QWEN.conditioning(1), reference), with_reference(QWEN.negative(2), reference)


def sample_qwen(model, conds, **kwargs):
    return models.sample(model, *conds, **{"steps": STEPS, "cfg": CFG, "latent": QWEN.latent(1), **kwargs})


@pytest.mark.parametrize("preset", CYCLES)
def test_qwen_image_edit_cycles_follow_the_reference(qwen, duca, preset):
    conds_for_seed = lambda seed: qwen_conds(picture(QWEN_REFERENCE, seed))  # noqa: E731
    assert_followed(*follow(duca, preset, qwen, conds_for_seed, sample_qwen))


@pytest.mark.parametrize("preset", FORECASTS)
def test_qwen_image_edit_forecasts_extrapolate_this_references_outputs(qwen, duca, preset):
    conds = qwen_conds(picture(QWEN_REFERENCE, 14))
    assert_forecast_from_the_runs_own_outputs(duca, preset, qwen, conds, sample_qwen)


@pytest.mark.parametrize("preset", PRESETS)
def test_qwen_image_edit_reference_of_another_size_gets_a_fresh_run(qwen, duca, preset):
    patch, _ = duca
    accelerated = accelerate(qwen, preset)
    channels, frames, height, width = QWEN_REFERENCE
    steps = steps_of(preset)
    for shape in [QWEN_REFERENCE, (channels, frames, height + 4, width), QWEN_REFERENCE]:
        conds = qwen_conds(picture(shape, 13))
        out = sample_qwen(accelerated, conds, steps=steps)
        stats = patch.last_stats(accelerated)
        assert set(stats.timeline) != {"F"} and not stats.notes, (stats.timeline, stats.notes)
        assert torch.equal(out, sample_qwen(accelerate(qwen, preset), conds, steps=steps)), shape
