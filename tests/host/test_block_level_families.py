"""Families reused at block level: aggressive steps skip the stack, the rest computes.
(Token-wise families built from units: test_unit_families.py.)"""
import torch

from testbed import models

STEPS = 10


def check_all_full_is_identical(patch, core, model, positive, negative, **kw):
    """The unpatched reference (finite), and the all-full plan reproducing it bit for bit."""
    reference = models.sample(model, positive, negative, **kw)
    assert torch.isfinite(reference).all()
    full = patch.apply_method(model, core.DuCaConfig(plan=core.all_full_plan(kw["steps"])))
    assert full is not model   # recognised, not passed through
    assert torch.equal(models.sample(full, positive, negative, **kw), reference)
    return reference


def sample_counting_blocks(model, blocks, positive, negative, **kw):
    """Sample while forward hooks on the host's blocks count how often they ran."""
    count = [0]
    handles = [b.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1)) for b in blocks]
    try:
        return models.sample(model, positive, negative, **kw), count[0]
    finally:
        for h in handles:
            h.remove()


def test_sd3_mmdit_all_full_is_identical_and_aggressive_steps_reuse(pack, duca):
    patch, core = duca
    sd3 = models.sd3(seed=5, depth=3)
    cond = [[torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(1)),
             {"pooled_output": torch.randn(2, 32, generator=torch.Generator().manual_seed(2))}]]
    uncond = [[torch.zeros(2, 8, 32), {"pooled_output": torch.zeros(2, 32)}]]
    kw = dict(steps=STEPS, cfg=4.5, batch=2, height=64, width=64)
    reference = check_all_full_is_identical(patch, core, sd3, cond, uncond, **kw)

    fast = patch.apply_method(sd3, core.PRESETS["fast"])
    out, calls = sample_counting_blocks(fast, sd3.model.diffusion_model.joint_blocks, cond, uncond, **kw)
    timeline = patch.last_stats(fast).timeline
    assert "A" in timeline and "C" not in timeline
    assert calls == timeline.count("F") * 3
    distance = float((out - reference).norm() / reference.norm())
    assert 1e-6 < distance < 0.3
