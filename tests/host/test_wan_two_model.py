"""Wan 2.2 14B's two-model setup: a high-noise model samples the first steps and hands its
latent, noise left in, to a low-noise model for the rest (two KSamplerAdvanced nodes with
start/end_at_step; the host's own node class runs here).

Each accelerated model keeps its own run state and statistics, plans count the steps of
its own sub-run, and an all-full plan on both reproduces the unpatched pair bit for bit.
Attention calls are counted by forward hooks on each model's self-attention projection,
which the host runs only when it really computes a block's attention.

A LoRA on the high-noise model only, put on by the host's own LoRA loader before or after the
pack: all-full plans stay bit-identical, and a strength changed between runs is followed, each
run being what a fresh pair with that strength gives.
"""
import pytest
import torch

from testbed import host, models

STEPS, SWITCH = 16, 8      # the high-noise model samples steps 0-7, the low-noise model 8-15
MODES = {"cfg1": (1.0, 1), "cfg4": (4.0, 2)}  # cfg, latent batch


@pytest.fixture(scope="module")
def pair(pack):
    """Two Wan 2.1-shaped models of the host's class with different weights (Wan 2.2 14B
    ships two such checkpoints) and the host's KSamplerAdvanced node."""
    import nodes
    return models.wan(seed=11, num_layers=2), models.wan(seed=12, num_layers=2), nodes.KSamplerAdvanced()


@pytest.fixture(scope="module")
def conds():
    return models.text_conditioning(32, seed=1), models.text_conditioning(32, seed=2)


def two_model_sample(sampler, high, low, conds, cfg, batch, seed=0):
    """What a Wan 2.2 14B workflow does: noise added once, leftover noise handed over."""
    positive, negative = conds
    common = dict(noise_seed=seed, steps=STEPS, cfg=cfg, sampler_name="euler", scheduler="simple",
                  positive=positive, negative=negative)
    latent = {"samples": models.video_latent(batch=batch)}
    (half,) = sampler.sample(high, add_noise="enable", latent_image=latent, start_at_step=0, end_at_step=SWITCH,
                             return_with_leftover_noise="enable", **common)
    (done,) = sampler.sample(low, add_noise="disable", latent_image=half, start_at_step=SWITCH,
                             end_at_step=10000, return_with_leftover_noise="disable", **common)
    return half["samples"], done["samples"]


class AttentionCalls:
    def __init__(self, model):
        blocks = model.model.diffusion_model.blocks
        self.count = 0
        self.handles = [b.self_attn.q.register_forward_hook(self._add) for b in blocks]

    def _add(self, *_):
        self.count += 1

    def remove(self):
        for h in self.handles:
            h.remove()


@pytest.fixture(scope="module")
def reference(pair, conds):
    high, low, sampler = pair
    cache = {}

    def get(mode):
        if mode not in cache:
            cache[mode] = two_model_sample(sampler, high, low, conds, *MODES[mode])
        return cache[mode]
    return get


@pytest.mark.parametrize("mode", list(MODES))
def test_unpatched_pair_hands_over_a_noisy_latent(pair, conds, reference, mode):
    high, low, sampler = pair
    half, done = reference(mode)
    assert torch.isfinite(half).all() and torch.isfinite(done).all()
    # leftover noise: the handed-over latent is far noisier than the result
    assert half.std() > 1.5 * done.std()
    # the low-noise model matters: another one gives another result
    other = models.wan(seed=13, num_layers=2)
    _, changed = two_model_sample(sampler, high, other, conds, *MODES[mode])
    assert float((changed - done).norm() / done.norm()) > 1e-2


@pytest.mark.parametrize("mode", list(MODES))
def test_all_full_plans_on_both_models_are_bit_identical(pair, conds, reference, duca, mode):
    patch, core = duca
    high, low, sampler = pair
    # a fixed plan must have the sub-run's length: each model sees only its own steps
    full_high = patch.apply_method(high, core.DuCaConfig(plan=core.all_full_plan(SWITCH)))
    full_low = patch.apply_method(low, core.DuCaConfig(plan=core.all_full_plan(STEPS - SWITCH)))
    half, done = two_model_sample(sampler, full_high, full_low, conds, *MODES[mode])
    expected_half, expected_done = reference(mode)
    assert torch.equal(half, expected_half)
    assert torch.equal(done, expected_done)
    for model, steps in ((full_high, SWITCH), (full_low, STEPS - SWITCH)):
        stats = patch.last_stats(model)
        assert stats.timeline == "F" * steps and stats.level == "token-wise"


def test_a_fixed_plan_for_the_whole_schedule_is_refused_by_a_sub_run(pair, conds, duca):
    patch, core = duca
    high, low, sampler = pair
    wrong = patch.apply_method(high, core.DuCaConfig(plan=core.all_full_plan(STEPS)))
    with pytest.raises(ValueError, match=f"{STEPS} steps but the run has {SWITCH}"):
        two_model_sample(sampler, wrong, low, conds, *MODES["cfg1"])


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("preset", ["balanced", "fast"])
def test_each_model_plans_its_own_sub_run_and_keeps_its_own_stats(pair, conds, reference, duca, mode, preset):
    patch, core = duca
    high, low, sampler = pair
    config = core.PRESETS[preset]
    fast_high, fast_low = patch.apply_method(high, config), patch.apply_method(low, config)
    counters = {"high": AttentionCalls(high), "low": AttentionCalls(low)}
    try:
        half, done = two_model_sample(sampler, fast_high, fast_low, conds, *MODES[mode])
    finally:
        for counter in counters.values():
            counter.remove()
    stats = {"high": patch.last_stats(fast_high), "low": patch.last_stats(fast_low)}
    assert stats["high"] is not stats["low"]
    plans = {"high": config.plan_for(SWITCH).timeline, "low": config.plan_for(STEPS - SWITCH).timeline}
    for name, plan in plans.items():
        # the low-noise model starts its own plan: first full steps again, no cache from the high one
        assert stats[name].timeline == plan and plan.startswith("F" * config.first_full_steps)
        assert "A" in plan and "C" in plan
        assert 0 < stats[name].compute_fraction < 1
        assert not stats[name].notes  # nothing was computed outside the plan
        # each model's attention ran exactly on its own full steps (2 blocks, one batched call a step)
        assert counters[name].count == plan.count("F") * 2
    expected_half, expected_done = reference(mode)
    assert torch.isfinite(done).all()
    assert 1e-6 < float((half - expected_half).norm() / expected_half.norm()) < 0.3
    assert 1e-6 < float((done - expected_done).norm() / expected_done.norm()) < 0.3


def test_one_accelerated_model_for_both_halves_starts_clean_each_time(pair, conds, reference, duca):
    """The same patched model in both samplers: two runs, two plans, two sets of stats."""
    patch, core = duca
    high, _, sampler = pair
    config = core.PRESETS["balanced"]
    both = patch.apply_method(high, config)
    seen = []
    both.model_options["transformer_options"][patch.KEY].listeners.append(seen.append)
    unpatched = two_model_sample(sampler, high, high, conds, *MODES["cfg1"])[1]
    done = two_model_sample(sampler, both, both, conds, *MODES["cfg1"])[1]
    assert [s.timeline for s in seen] == [config.plan_for(SWITCH).timeline, config.plan_for(STEPS - SWITCH).timeline]
    assert seen[0] is not seen[1] and not seen[1].notes
    assert 1e-6 < float((done - unpatched).norm() / unpatched.norm()) < 0.3


# --- a LoRA on one of the two models ---------------------------------------------------------
LORA_RANK = 4


def lora_weights(model, seed):
    """A rank-4 LoRA of every block's attention and MLP projections, keyed as LoRA files are."""
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for i, block in enumerate(model.model.diffusion_model.blocks):
        for name, layer in (("self_attn.q", block.self_attn.q), ("self_attn.v", block.self_attn.v),
                            ("ffn.0", block.ffn[0]), ("ffn.2", block.ffn[2])):
            out_features, in_features = layer.weight.shape
            key = f"diffusion_model.blocks.{i}.{name}"
            weights[f"{key}.lora_up.weight"] = 0.3 * torch.randn(out_features, LORA_RANK, generator=gen)
            weights[f"{key}.lora_down.weight"] = 0.3 * torch.randn(LORA_RANK, in_features, generator=gen)
    return weights


def with_lora(model, weights, strength):
    """What LoraLoaderModelOnly hands on: a clone of the model patched by the host's LoRA loader."""
    import comfy.sd
    patched, _ = comfy.sd.load_lora_for_models(model, None, weights, strength, 0)
    assert len(patched.patches) == len(weights) // 2, "the host did not take every LoRA key"
    return patched


def accelerate(model, preset):
    """DuCa's cycle through the node; the whole-step forecast by the balanced preset's settings
    without the preset, which computes every step of sub-runs this short (methods.forecast.FEW_STEPS):
    these settings still skip."""
    if preset == "balanced":
        from comfyui_duca.glue.patch import apply_method
        from comfyui_duca.methods import FORECAST_PRESETS
        return apply_method(model, FORECAST_PRESETS["balanced"].with_changes(preset=None))
    (out,) = host.node("DuCaAccelerate").execute(model, preset).result
    return out


LORA_ORDERS = {
    "lora then accelerate": lambda model, weights, strength, preset: accelerate(with_lora(model, weights, strength),
                                                                               preset),
    "accelerate then lora": lambda model, weights, strength, preset: with_lora(accelerate(model, preset), weights,
                                                                               strength),
}
LORA_PRESETS = ["balanced", "duca balanced"]  # the whole-step forecast and DuCa's cycle
# At most this relative error on what the strength changes (1 would be a change ignored). The
# whole-step forecast of these random-weight models errs by more than a 0.3 LoRA changes (the
# strength moves the output by about 1.5%), so its bound is loose; DuCa's cycle errs far less.
FOLLOWED = {"balanced": 0.8, "duca balanced": 0.3}


@pytest.fixture(scope="module")
def lora(pair):
    return lora_weights(pair[0], seed=21)


def test_all_full_plans_with_a_lora_on_the_high_noise_model_are_bit_identical(pair, conds, duca, lora):
    patch, core = duca
    high, low, sampler = pair
    expected = two_model_sample(sampler, with_lora(high, lora, 1.0), low, conds, *MODES["cfg4"])
    plain = two_model_sample(sampler, high, low, conds, *MODES["cfg4"])
    assert not torch.equal(expected[1], plain[1])
    full = lambda m, steps: patch.apply_method(m, core.DuCaConfig(plan=core.all_full_plan(steps)))  # noqa: E731
    for high_model in (full(with_lora(high, lora, 1.0), SWITCH), with_lora(full(high, SWITCH), lora, 1.0)):
        out = two_model_sample(sampler, high_model, full(low, STEPS - SWITCH), conds, *MODES["cfg4"])
        assert torch.equal(out[0], expected[0]) and torch.equal(out[1], expected[1])
    # the LoRA lives on its clones only: the bare model samples as before
    assert torch.equal(two_model_sample(sampler, high, low, conds, *MODES["cfg4"])[1], plain[1])


@pytest.mark.parametrize("order", list(LORA_ORDERS))
@pytest.mark.parametrize("preset", LORA_PRESETS)
def test_a_lora_strength_changed_between_runs_is_followed_with_nothing_carried_over(pair, conds, duca, lora,
                                                                                    preset, order):
    """Strengths 1, 0.3, 1 in a row, as a user moving the LoRA loader's slider does: each run is what
    a fresh accelerated pair with that strength gives, it follows what the strength changes in the
    uncached output, and the third run repeats the first."""
    patch, _ = duca
    high, low, sampler = pair
    build = LORA_ORDERS[order]
    fast_low = accelerate(low, preset)
    outputs, references = [], []
    for strength in (1.0, 0.3, 1.0):
        fast_high = build(high, lora, strength, preset)
        out = two_model_sample(sampler, fast_high, fast_low, conds, *MODES["cfg4"])[1]
        for model in (fast_high, fast_low):
            stats = patch.last_stats(model)
            assert set(stats.timeline) != {"F"} and not stats.notes, (stats.timeline, stats.notes)
        fresh = two_model_sample(sampler, build(high, lora, strength, preset), accelerate(low, preset), conds,
                                 *MODES["cfg4"])[1]
        assert torch.equal(out, fresh), strength
        outputs.append(out)
        references.append(two_model_sample(sampler, with_lora(high, lora, strength), low, conds, *MODES["cfg4"])[1])
    assert torch.equal(outputs[2], outputs[0])
    change = references[1] - references[0]
    assert float(change.norm() / references[0].norm()) > 0.005, "the strength should matter here"
    followed = outputs[1] - outputs[0]
    assert float((followed - change).norm() / change.norm()) < FOLLOWED[preset]
