"""Chroma shares Flux's block classes (with modulation computed outside the blocks)."""
import torch

from testbed import models

KW = dict(steps=10, height=64, width=64, cfg=3.0)


def test_chroma_all_full_is_bit_identical_and_balanced_stays_close(pack, duca):
    patch, core = duca
    chroma = models.chroma(seed=4)
    positive = models.chroma_conditioning(model=chroma, seed=1)
    negative = models.chroma_conditioning(model=chroma, seed=2)
    reference = models.sample(chroma, positive, negative, batch=2, **KW)

    full = patch.apply_method(chroma, core.DuCaConfig(plan=core.all_full_plan(KW["steps"])))
    assert full is not chroma   # recognised, not passed through
    assert torch.equal(models.sample(full, positive, negative, batch=2, **KW), reference)

    balanced = patch.apply_method(chroma, core.PRESETS["balanced"])
    out = models.sample(balanced, positive, negative, batch=2, **KW)
    stats = patch.last_stats(balanced)
    assert stats.timeline == core.PRESETS["balanced"].plan_for(KW["steps"]).timeline
    assert stats.level == "token-wise" and stats.block_fraction < 0.8
    assert stats.compute_fraction > stats.block_fraction  # what runs outside the blocks counts too
    distance = float((out - reference).norm() / reference.norm())
    assert 1e-6 < distance < 0.2
