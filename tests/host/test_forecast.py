"""The whole-step forecast (the flagship's budget presets) on ComfyUI's real Flux classes and
samplers: all-full bit-identity, the blocks it really runs, what a skipped step hands on per
conditioning, state that never crosses runs, multi-evaluation samplers."""
import pytest
import torch

from testbed import forecast_checks, host, models

SMALL = dict(height=64, width=64)
STEPS = 20


def sample(model, conds, **kwargs):
    positive, negative = conds
    return models.sample(model, positive, negative, **{"steps": STEPS, **SMALL, **kwargs})


def accelerate(model, preset, **inputs):
    (out,) = host.node("DuCaAccelerate").execute(model, preset, **inputs).result
    return out


class BlockCalls:
    """Forward calls of the host's Flux blocks and of the diffusion model, per sampling step."""

    def __init__(self, model):
        dm = model.model.diffusion_model
        self.blocks, self.calls, self._blocks, self._calls = [], [], 0, 0
        self.handles = [b.register_forward_hook(self._block) for b in (*dm.double_blocks, *dm.single_blocks)]
        self.handles.append(dm.register_forward_hook(self._call))
        self.depth = len(dm.double_blocks) + len(dm.single_blocks)

    def _block(self, *_):
        self._blocks += 1

    def _call(self, *_):
        self._calls += 1

    def step_done(self, *_):
        self.blocks.append(self._blocks)
        self.calls.append(self._calls)
        self._blocks = self._calls = 0

    def remove(self):
        for h in self.handles:
            h.remove()


def counted(flux, model, conds, **kwargs):
    counts = BlockCalls(flux)
    try:
        out = sample(model, conds, callback=counts.step_done, **kwargs)
    finally:
        counts.remove()
    return out, counts


@pytest.mark.parametrize("cfg, batch", [(1.0, 1), (1.0, 2), (3.5, 2)])
def test_a_forecast_that_computes_every_step_is_bit_identical(flux, flux_conds, duca, cfg, batch):
    patch, _ = duca
    reference = sample(flux, flux_conds, cfg=cfg, batch=batch)
    full = accelerate(flux, "balanced", budget=1.0)
    assert torch.equal(sample(full, flux_conds, cfg=cfg, batch=batch), reference)
    assert patch.last_stats(full).timeline == "F" * STEPS


@pytest.mark.parametrize("preset", ["quality", "balanced", "fast", "turbo"])
def test_each_preset_runs_the_blocks_of_its_budget_and_none_on_skipped_steps(flux, flux_conds, duca, preset):
    patch, _ = duca
    from comfyui_duca.methods import BUDGETS
    from comfyui_duca.methods.forecast import FIRST_FULL_STEPS
    reference = sample(flux, flux_conds, cfg=3.5, batch=2)
    accelerated = accelerate(flux, preset)
    out, counts = counted(flux, accelerated, flux_conds, cfg=3.5, batch=2)
    stats = patch.last_stats(accelerated)
    timeline = stats.timeline
    first = FIRST_FULL_STEPS[preset]
    assert timeline.startswith("F" * first) and set(timeline) == {"F", "E"}
    assert timeline.count("F") == round(BUDGETS[preset] * STEPS)
    for action, blocks, calls in zip(timeline, counts.blocks, counts.calls):
        assert (blocks, calls) == ((counts.depth, 1) if action == "F" else (0, 0))
    block_fraction = sum(counts.blocks) / (counts.depth * STEPS)
    assert block_fraction == pytest.approx(stats.compute_fraction)
    assert block_fraction <= BUDGETS[preset] + 0.5 / STEPS
    assert torch.isfinite(out).all()
    assert 1e-6 < float((out - reference).norm() / reference.norm()) < 0.3


def test_skipped_steps_forecast_each_conditioning_from_its_own_computed_steps(flux, flux_conds):
    """On each skipped step, cond's and uncond's outputs are the linear forecast, in sigma, of the
    noise each implied on its own last two computed steps: recomputed here from what the
    sampler saw (its post-cfg hook), so points shared across conditionings would show."""
    recorded, seen = forecast_checks.recording(accelerate(flux, "balanced"))
    sample(recorded, flux_conds, cfg=3.5, batch=2, sampler=forecast_checks.SAMPLER)
    from comfyui_duca.glue.patch import last_stats
    forecast_checks.assert_forecast_from_own_points(seen, last_stats(recorded).timeline)


def test_forecast_state_never_crosses_runs_resolutions_or_batch_sizes(flux, flux_conds, duca):
    patch, _ = duca
    accelerated = accelerate(flux, "fast")
    first = sample(accelerated, flux_conds, cfg=3.5)
    other_size = sample(accelerated, flux_conds, cfg=3.5, height=96, width=64)
    other_batch = sample(accelerated, flux_conds, cfg=1.0, batch=3)
    from comfyui_duca.methods.forecast import FEW_STEPS
    fewer_steps = sample(accelerated, flux_conds, cfg=3.5, steps=FEW_STEPS)  # fewer, and still skipping
    assert torch.equal(sample(accelerated, flux_conds, cfg=3.5), first)
    # each of the runs in between is what a fresh accelerator gives
    for out, kwargs in ((other_size, dict(cfg=3.5, height=96, width=64)), (other_batch, dict(cfg=1.0, batch=3)),
                        (fewer_steps, dict(cfg=3.5, steps=FEW_STEPS))):
        assert torch.equal(out, sample(accelerate(flux, "fast"), flux_conds, **kwargs))
    assert not patch.last_stats(accelerated).notes


def test_a_conditioning_that_starts_mid_run_is_computed_before_it_is_forecast(flux, flux_conds, duca):
    """Prompt A for the first part of the run, prompt B for the rest (ConditioningSetTimestepRange):
    B's first step is a planned skip, and computes, since nothing was kept for B yet."""
    import comfy.samplers
    import nodes
    patch, _ = duca
    from comfyui_duca.cache_core.plan import budget_plan
    from comfyui_duca.methods.forecast import ENDS
    planned = budget_plan(STEPS, 0.35, ends=ENDS).timeline
    sampling = flux.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", STEPS).tolist()
    percent, switch = next((p, i) for p in (x / 20 for x in range(4, 17))
                           for i, sigma in enumerate(sigmas[:-1])
                           if sigma <= sampling.percent_to_sigma(p) and planned[i] == "E"
                           and all(s > sampling.percent_to_sigma(p) for s in sigmas[:i]))
    positive, negative = flux_conds
    (early,) = nodes.ConditioningSetTimestepRange().set_range(positive, 0.0, percent)
    (late,) = nodes.ConditioningSetTimestepRange().set_range(models.flux_conditioning(model=flux, seed=3),
                                                             percent, 1.0)
    (both,) = nodes.ConditioningCombine().combine(early, late)
    accelerated = accelerate(flux, "balanced")
    out = sample(accelerated, (both, negative), cfg=3.5)
    stats = patch.last_stats(accelerated)
    assert stats.notes == [f"step {switch}: no cache yet for this conditioning, computed fully"]
    assert stats.timeline[switch] == "F" and stats.timeline[:switch] == planned[:switch]
    assert torch.isfinite(out).all()


def test_batch_elements_are_forecast_independently(flux, flux_conds):
    """A batch of two latents: each element's output is the one it gets sampled alone."""
    import comfy.sample
    accelerated = accelerate(flux, "balanced")
    latent = torch.zeros(2, 16, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 0)
    positive, negative = flux_conds
    both = comfy.sample.sample(accelerated, noise, STEPS, 3.5, "euler", "simple", positive, negative, latent,
                               disable_pbar=True, seed=0)
    alone = comfy.sample.sample(accelerated, noise[1:], STEPS, 3.5, "euler", "simple", positive, negative,
                                latent[1:], disable_pbar=True, seed=0)
    assert torch.allclose(both[1:], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sampler", ["heun", "dpmpp_2s_ancestral"])
def test_multi_evaluation_samplers_keep_the_plan(flux, flux_conds, duca, sampler):
    patch, _ = duca
    from comfyui_duca.cache_core.plan import budget_plan
    from comfyui_duca.methods.forecast import ENDS, FEW_STEPS, NOISY_SPREAD
    steps = FEW_STEPS  # the fewest the presets skip at
    accelerated = accelerate(flux, "balanced")
    reference = sample(flux, flux_conds, sampler=sampler, steps=steps)
    out, counts = counted(flux, accelerated, flux_conds, sampler=sampler, steps=steps)
    stats = patch.last_stats(accelerated)
    assert stats.timeline == budget_plan(steps, 0.35, ends=ENDS).timeline
    # every evaluation the sampler makes at a computed step's sigma runs the model, none at a skipped
    # step's (a correction at the next sigma belongs to the next step, as the run's stats count it)
    per_step = [stats.steps[i] for i in range(steps)]
    assert [s.compute_done for s in per_step] == [s.model_calls if a == "F" else 0
                                                  for s, a in zip(per_step, stats.timeline)]
    assert max(s.model_calls for s in per_step) == 2
    assert sum(counts.calls) == sum(s.compute_done for s in per_step)
    assert torch.isfinite(out).all()
    if sampler == "heun":
        assert float((out - reference).norm() / reference.norm()) < 0.3
        # its one note says heun's gaps are left uncorrected: no step fell back
        (note,) = stats.notes
        assert note.startswith("gaps of forecast steps are corrected under") and note.endswith(", not under heun")
    else:  # an ancestral sampler's fresh noise would jump the implied noise between steps
        assert stats.notes == [f"dpmpp_2s_ancestral adds noise every step: the forecast moves with it as the "
                               f"denoiser of data of spread {NOISY_SPREAD} would"]


def test_adaptive_placement_is_repeatable_and_spends_the_budget(flux, flux_conds, duca):
    patch, _ = duca
    accelerated = accelerate(flux, "balanced", placement="adaptive")
    first = sample(accelerated, flux_conds, cfg=3.5, steps=28)
    timeline = patch.last_stats(accelerated).timeline
    again = sample(accelerated, flux_conds, cfg=3.5, steps=28)
    assert torch.equal(first, again) and patch.last_stats(accelerated).timeline == timeline
    assert timeline.startswith("FFF")
    assert abs(patch.last_stats(accelerated).compute_fraction - 0.35) <= 0.02


@pytest.mark.parametrize("family", ["flux", "unet"])
def test_noise_coefficients_read_for_a_whole_schedule_are_those_read_one_by_one(family, flux, unet):
    """The run's schedule is read in one batched call; each value is the host sampling's own."""
    import comfy.samplers
    from comfyui_duca.methods.forecast import noise_coefficients_of
    sampling = (flux if family == "flux" else unet).get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", 9)
    batched, alone = noise_coefficients_of(sampling, sigmas), noise_coefficients_of(sampling)
    for sigma in sigmas.tolist():
        latent, noise = torch.randn(2, 1, 4, 4, dtype=torch.float64).unbind(0)
        expected = sampling.noise_scaling(torch.tensor([sigma], dtype=torch.float64), noise, latent)
        for a, b in (batched(sigma), alone(sigma)):
            torch.testing.assert_close(a * latent + b * noise, expected)
    assert batched(0.123) == alone(0.123)  # a sigma off the schedule is read when asked


@pytest.mark.parametrize("cfg_negative", [1.0, 2.0], ids=["no negative", "three prompts"])
def test_a_three_prompt_guider_keeps_every_slot_of_its_cond_batch(flux, flux_conds, duca, cfg_negative):
    """The host's DualCFGGuider batches three prompts in one cond batch (the negative left out at
    its cfg 1): an all-full plan is bit-identical, and a budget preset skips steps without a
    fallback and stays near the uncached output."""
    import comfy.sample
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import DualCFGGuider
    patch, _ = duca
    positive, negative = flux_conds
    middle = models.flux_conditioning(model=flux, seed=4)
    latent = torch.zeros(1, 16, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 0)
    sigmas = comfy.samplers.calculate_sigmas(flux.get_model_object("model_sampling"), "simple", STEPS)

    def guided(model):
        guider = DualCFGGuider.execute(model, positive, middle, negative, 3.0, cfg_negative, "regular").result[0]
        return guider.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, disable_pbar=True, seed=0)
    reference = guided(flux)
    assert torch.equal(guided(accelerate(flux, "balanced", budget=1.0)), reference)
    accelerated = accelerate(flux, "balanced")
    out = guided(accelerated)
    stats = patch.last_stats(accelerated)
    assert set(stats.timeline) == {"F", "E"} and not stats.notes
    assert 1e-6 < float((out - reference).norm() / reference.norm()) < 0.3
