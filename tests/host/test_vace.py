"""Wan VACE: the host's VACE blocks add a hint of the control video to the hidden state after
every second block, outside the block hooks, at every step (the same contract as a ControlNet's
residuals). A reused step must count its own step's hints exactly once.

The exact check, as for ControlNet on Flux: with every block's output projections zeroed, each
block hands its input on unchanged, so the uncached output is the embedded input plus this
step's hints; any plan must give the uncached output (up to rounding).
"""
import pytest
import torch

from testbed import host, models

STEPS = 12
CFG = 3.5
LATENT = (16, 3, 8, 8)  # channels, frames, height, width


def accelerate(model, preset):
    (out,) = host.node("DuCaAccelerate").execute(model, preset).result
    return out


def scheduled(model, node_id, *args):
    (schedule, _) = host.node(node_id).execute(model, STEPS, *args).result
    (out,) = host.node("DuCaApplySchedule").execute(model, schedule).result
    return out


ACCELERATIONS = {
    "duca balanced": lambda m: accelerate(m, "duca balanced"),
    "duca fast": lambda m: accelerate(m, "duca fast"),
    "FORA every 2": lambda m: scheduled(m, "DuCaFORASchedule", 2, 1),
    "EB-Cache 3/2": lambda m: scheduled(m, "DuCaEBCacheSchedule", 3, 2, 1),
}


def control_video(seed):
    return torch.randn(1, models.VACE_CHANNELS, *LATENT[1:], generator=torch.Generator().manual_seed(seed))


def conds(seed, strength=1.0):
    video = control_video(seed)
    return (models.with_vace(models.text_conditioning(32, seed=1), video, strength),
            models.with_vace(models.text_conditioning(32, seed=2), video, strength))


def sample(model, conditionings):
    return models.sample(model, *conditionings, steps=STEPS, cfg=CFG, latent=torch.zeros(1, *LATENT))


def relative_l2(out, reference):
    return float((out - reference).norm() / reference.norm())


@pytest.fixture(scope="module")
def vace(pack):
    return models.wan_vace(seed=5)


@pytest.fixture(scope="module")
def pass_through_vace(pack):
    model = models.wan_vace(seed=5)
    with torch.no_grad():
        for block in model.model.diffusion_model.blocks:
            for linear in (block.self_attn.o, block.cross_attn.o, block.ffn[2]):
                linear.weight.zero_()
                linear.bias.zero_()
    return model


def reused(model) -> str:
    from comfyui_duca.glue import patch
    timeline = patch.last_stats(model).timeline
    assert set(timeline) - {"F"}, timeline
    return timeline


def test_the_control_video_steers_the_pass_through_model(pass_through_vace):
    assert relative_l2(sample(pass_through_vace, conds(0)), sample(pass_through_vace, conds(1))) > 0.05


@pytest.mark.parametrize("name", list(ACCELERATIONS))
def test_every_reused_step_counts_its_own_hints_exactly_once(pass_through_vace, name):
    conditionings = conds(0)
    reference = sample(pass_through_vace, conditionings)
    model = ACCELERATIONS[name](pass_through_vace)
    out = sample(model, conditionings)
    timeline = reused(model)
    if name.startswith("duca"):
        assert "A" in timeline, timeline
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(ACCELERATIONS))
def test_another_control_video_is_followed_on_reused_steps(vace, name):
    references = [sample(vace, conds(seed)) for seed in (0, 1)]
    assert relative_l2(references[0], references[1]) > 0.05
    model = ACCELERATIONS[name](vace)
    for seed, own in ((0, references[0]), (1, references[1])):
        out = sample(model, conds(seed))
        reused(model)
        assert relative_l2(out, own) < 0.5 * relative_l2(out, references[1 - seed]), seed
