"""Families reused at block level: aggressive steps skip the stack, the rest computes."""
import torch

from testbed import models

STEPS = 10


def count_block_calls(blocks):
    count = [0]
    handles = [b.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1)) for b in blocks]
    return count, handles


def test_wan_video_all_full_is_identical_and_balanced_skips_blocks(pack, duca):
    patch, core = duca
    wan = models.wan(seed=2)
    positive, negative = models.text_conditioning(32, seed=1), models.text_conditioning(32, seed=2)
    kw = dict(steps=STEPS, cfg=4.0, latent=models.video_latent(batch=2, frames=3))
    reference = models.sample(wan, positive, negative, **kw)
    assert torch.isfinite(reference).all()

    full = patch.apply_duca(wan, core.DuCaConfig(plan=core.all_full_plan(STEPS)))
    assert full is not wan
    assert torch.equal(models.sample(full, positive, negative, **kw), reference)

    balanced = patch.apply_duca(wan, core.PRESETS["balanced"])
    blocks = wan.model.diffusion_model.blocks
    count, handles = count_block_calls(blocks)
    try:
        out = models.sample(balanced, positive, negative, **kw)
    finally:
        for h in handles:
            h.remove()
    stats = patch.last_stats(balanced)
    expected = core.PRESETS["balanced"].plan_for(STEPS).timeline.replace("C", "F")
    assert stats.level == "block" and stats.timeline == expected
    # cond and uncond batched together: one model call per step
    assert count[0] == expected.count("F") * len(blocks)
    assert 0 < stats.compute_fraction < 1
    distance = float((out - reference).norm() / reference.norm())
    assert 1e-6 < distance < 0.2


def test_sd3_mmdit_all_full_is_identical_and_aggressive_steps_reuse(pack, duca):
    patch, core = duca
    sd3 = models.sd3(seed=5, depth=3)
    cond = [[torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(1)),
             {"pooled_output": torch.randn(2, 32, generator=torch.Generator().manual_seed(2))}]]
    uncond = [[torch.zeros(2, 8, 32), {"pooled_output": torch.zeros(2, 32)}]]
    kw = dict(steps=STEPS, cfg=4.5, batch=2, height=64, width=64)
    reference = models.sample(sd3, cond, uncond, **kw)
    assert torch.isfinite(reference).all()
    full = patch.apply_duca(sd3, core.DuCaConfig(plan=core.all_full_plan(STEPS)))
    assert full is not sd3
    assert torch.equal(models.sample(full, cond, uncond, **kw), reference)

    fast = patch.apply_duca(sd3, core.PRESETS["fast"])
    count, handles = count_block_calls(sd3.model.diffusion_model.joint_blocks)
    try:
        out = models.sample(fast, cond, uncond, **kw)
    finally:
        for h in handles:
            h.remove()
    timeline = patch.last_stats(fast).timeline
    assert "A" in timeline and "C" not in timeline
    assert count[0] == timeline.count("F") * 3
    distance = float((out - reference).norm() / reference.norm())
    assert 1e-6 < distance < 0.3
