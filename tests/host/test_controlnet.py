"""ControlNet on Flux and Qwen-Image, and Wan VACE, with the host's own classes and nodes.

The host adds a ControlNet residual to the hidden state after each block, outside the block
hooks, at every step. On a reused step the pack must count the step's own control exactly once:
neither drop it nor replay the control of the step its cache came from. Flux (token-wise) and
Qwen-Image (block level, an InstantX ControlNet whose hint is a VAE latent) are checked, and
Wan VACE, whose VACE blocks add control-video hints the same way.

The exact check: with every block's output projections zeroed, each block hands its input on
unchanged, so the uncached output is the embedded input plus this step's control summed over
the blocks. Any plan must then give the uncached output (up to rounding): an aggressive step
that replayed the cached step's control, or dropped its own, would not.
"""
import pytest
import torch

from testbed import families, host, models

host.load_pack()
from comfyui_duca.methods.forecast import FEW_STEPS  # noqa: E402

SMALL = dict(height=64, width=64)  # 4x4 image tokens; the hint is a 64x64 picture
STEPS = 12
FORECAST_STEPS = FEW_STEPS  # the budget presets skip steps from this many on
CFG = 3.5


def accelerate(model, preset, **inputs):
    (out,) = host.node("DuCaAccelerate").execute(model, preset, **inputs).result
    return out


def scheduled(model, node_id, *args):
    (schedule, _) = host.node(node_id).execute(model, STEPS, *args).result
    (out,) = host.node("DuCaApplySchedule").execute(model, schedule).result
    return out


def sample(model, conds, steps=STEPS):
    return models.sample(model, *conds, steps=steps, cfg=CFG, **SMALL)


def hint(seed):
    return torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(seed))


def relative_l2(out, reference):
    return float((out - reference).norm() / reference.norm())


# How each way of reusing is put on the model; every one of them skips work on some steps.
ACCELERATIONS = {
    "duca balanced": lambda m: accelerate(m, "duca balanced"),              # full, C, A, C
    "duca fast, first step only": lambda m: accelerate(m, "duca fast", first_full_steps=1),
    "balanced (forecast)": lambda m: accelerate(m, "balanced"),
    "FORA every 2": lambda m: scheduled(m, "DuCaFORASchedule", 2, 1),
    "EB-Cache 3/2": lambda m: scheduled(m, "DuCaEBCacheSchedule", 3, 2, 1),
}
BLOCK_LEVEL = ["duca balanced", "duca fast, first step only", "FORA every 2", "EB-Cache 3/2"]


def steps_of(name):
    """The steps a run reuses under: the budget preset only skips on runs long enough."""
    return FORECAST_STEPS if name == "balanced (forecast)" else STEPS


@pytest.fixture(scope="module")
def controlnet(pack, flux):
    return models.flux_controlnet(flux, seed=3)


@pytest.fixture(scope="module")
def pass_through_flux(pack):
    """The small Flux with every block reduced to handing its input on: the residual each block
    adds (attention and MLP projections, gated) is zero, exactly."""
    model = models.flux(seed=0)
    dm = model.model.diffusion_model
    outputs = [m for b in dm.double_blocks for m in (b.img_attn.proj, b.img_mlp[2], b.txt_attn.proj, b.txt_mlp[2])]
    outputs += [b.linear2 for b in dm.single_blocks]
    with torch.no_grad():
        for linear in outputs:
            linear.weight.zero_()
            linear.bias.zero_()
    return model


def controlled(flux, controlnet, image_seed, **applied):
    positive = models.flux_conditioning(model=flux, seed=1)
    negative = models.flux_conditioning(model=flux, seed=2)
    return models.with_control(positive, negative, controlnet, hint(image_seed), **applied)


def skipped_steps(model) -> str:
    from comfyui_duca.glue import patch
    timeline = patch.last_stats(model).timeline
    assert set(timeline) - {"F"}, f"nothing was reused: {timeline}"
    return timeline


def assert_exact(sample_with_control, pass_through, name):
    """The accelerated pass-through model gives its uncached output: each step's own control,
    counted once."""
    reference = sample_with_control(pass_through)
    model = ACCELERATIONS[name](pass_through)
    out = sample_with_control(model)
    timeline = skipped_steps(model)
    if name.startswith("duca"):
        assert "A" in timeline, timeline  # aggressive steps: the case that can replay old control
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


def test_the_controlnet_steers_the_pass_through_model(pass_through_flux, controlnet):
    """Else the exact check below would hold with or without control."""
    with_a = sample(pass_through_flux, controlled(pass_through_flux, controlnet, 0))
    with_b = sample(pass_through_flux, controlled(pass_through_flux, controlnet, 1))
    assert relative_l2(with_a, with_b) > 0.05


@pytest.mark.parametrize("name", BLOCK_LEVEL)
@pytest.mark.parametrize("window", [(0.0, 1.0), (0.0, 0.5), (0.3, 1.0)], ids=["always", "first half", "from 30%"])
def test_every_reused_step_counts_its_own_control_exactly_once(pass_through_flux, controlnet, name, window):
    conds = controlled(pass_through_flux, controlnet, 0, start=window[0], end=window[1])
    assert_exact(lambda model: sample(model, conds), pass_through_flux, name)


@pytest.mark.parametrize("name", list(ACCELERATIONS))
def test_a_new_control_image_changes_the_output_of_reused_steps_as_uncached(flux, controlnet, name):
    """On the random-weight Flux: each control image gives an output near its own uncached one
    and far from the other's (ParaAttention #34: a cache that stopped following the ControlNet)."""
    steps = steps_of(name)
    references = [sample(flux, controlled(flux, controlnet, seed), steps) for seed in (0, 1)]
    assert relative_l2(references[0], references[1]) > 0.05
    model = ACCELERATIONS[name](flux)
    for seed, own in ((0, references[0]), (1, references[1])):
        out = sample(model, controlled(flux, controlnet, seed), steps)
        skipped_steps(model)
        other = references[1 - seed]
        assert relative_l2(out, own) < 0.5 * relative_l2(out, other), (seed, relative_l2(out, own))


def test_the_forecasts_skipped_steps_run_no_controlnet(flux, controlnet):
    """The budget presets skip a step's whole cond batch: its ControlNet is not run either."""
    conds = controlled(flux, controlnet, 0)
    runs = []
    handle = controlnet.control_model.register_forward_hook(lambda *_: runs.append(1))
    try:
        sample(flux, conds, FORECAST_STEPS)
        uncached_runs = len(runs)
        model = accelerate(flux, "balanced")
        runs.clear()
        sample(model, conds, FORECAST_STEPS)
    finally:
        handle.remove()
    timeline = skipped_steps(model)
    assert uncached_runs == FORECAST_STEPS  # cond and negative in one batch: one ControlNet run per step
    assert len(runs) == timeline.count("F") < FORECAST_STEPS


def test_control_ending_halfway_is_followed_on_reused_steps(flux, controlnet):
    """Control for the first half only: DuCa's reused steps after it ends must carry none."""
    conds = controlled(flux, controlnet, 0, end=0.5)
    reference = sample(flux, conds)
    always = sample(flux, controlled(flux, controlnet, 0))
    model = ACCELERATIONS["duca balanced"](flux)
    out = sample(model, conds)
    skipped_steps(model)
    assert relative_l2(out, reference) < 0.5 * relative_l2(out, always)


# --- Qwen-Image's ControlNet (InstantX): a block-level family, its hint a VAE latent --------------
QWEN = families.FAMILIES["qwen-image"]


@pytest.fixture(scope="module")
def pass_through_qwen(pack):
    """The small Qwen-Image with every block's modulation zeroed: its gates are 0, so each block
    hands its input on exactly."""
    model = QWEN.build(0)
    with torch.no_grad():
        for block in model.model.diffusion_model.transformer_blocks:
            for linear in (block.img_mod[1], block.txt_mod[1]):
                linear.weight.zero_()
                linear.bias.zero_()
    return model


@pytest.fixture(scope="module")
def qwen_control(pass_through_qwen):
    return models.qwen_controlnet(pass_through_qwen, seed=3), models.wan_vae(seed=9)


def qwen_sample(model, controlnet=None, vae=None, image_seed=0):
    conds = QWEN.conditioning(1), QWEN.negative(2)
    if controlnet is not None:
        conds = models.with_control(*conds, controlnet, hint(image_seed), vae=vae)
    return models.sample(model, *conds, steps=STEPS, cfg=CFG, latent=QWEN.latent(1))


def test_the_qwen_controlnet_steers_the_pass_through_model(pass_through_qwen, qwen_control):
    plain = qwen_sample(pass_through_qwen)
    assert relative_l2(qwen_sample(pass_through_qwen, *qwen_control, 0), plain) > 0.05


@pytest.mark.parametrize("name", BLOCK_LEVEL)
def test_qwen_reused_steps_count_their_own_control_exactly_once(pass_through_qwen, qwen_control, name):
    assert_exact(lambda model: qwen_sample(model, *qwen_control, 0), pass_through_qwen, name)


# --- Wan VACE: its VACE blocks add control-video hints after every second block ------------------
VACE_LATENT = (16, 3, 8, 8)  # channels, frames, height, width


def control_video(seed):
    return torch.randn(1, models.VACE_CHANNELS, *VACE_LATENT[1:], generator=torch.Generator().manual_seed(seed))


def vace_sample(model, video_seed):
    video = control_video(video_seed)
    conds = [models.with_vace(models.text_conditioning(32, seed=seed), video) for seed in (1, 2)]
    return models.sample(model, *conds, steps=STEPS, cfg=CFG, latent=torch.zeros(1, *VACE_LATENT))


@pytest.fixture(scope="module")
def vace(pack):
    return models.wan_vace(seed=5)


@pytest.fixture(scope="module")
def pass_through_vace(pack):
    """The small Wan VACE with its main blocks' output projections zeroed (the VACE blocks stay)."""
    model = models.wan_vace(seed=5)
    with torch.no_grad():
        for block in model.model.diffusion_model.blocks:
            for linear in (block.self_attn.o, block.cross_attn.o, block.ffn[2]):
                linear.weight.zero_()
                linear.bias.zero_()
    return model


def test_the_control_video_steers_the_pass_through_vace(pass_through_vace):
    assert relative_l2(vace_sample(pass_through_vace, 0), vace_sample(pass_through_vace, 1)) > 0.05


@pytest.mark.parametrize("name", BLOCK_LEVEL)
def test_vace_reused_steps_count_their_own_hints_exactly_once(pass_through_vace, name):
    assert_exact(lambda model: vace_sample(model, 0), pass_through_vace, name)


@pytest.mark.parametrize("name", BLOCK_LEVEL)
def test_another_control_video_is_followed_on_reused_steps(vace, name):
    references = [vace_sample(vace, seed) for seed in (0, 1)]
    assert relative_l2(references[0], references[1]) > 0.05
    model = ACCELERATIONS[name](vace)
    for seed, own in ((0, references[0]), (1, references[1])):
        out = vace_sample(model, seed)
        skipped_steps(model)
        assert relative_l2(out, own) < 0.5 * relative_l2(out, references[1 - seed]), seed
