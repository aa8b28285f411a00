"""The fused token refresh (picked tokens moved as rows of a flat view, one index per pick)
gives the same output as the reference refresh (torch.gather / scatter_ with an index
expanded over the features). Both only copy values, so the outputs are equal bit for bit, in
float32 and bf16, one picture per call and with cond and uncond batched together."""
import pytest
import torch

from testbed import models

STEPS = 10


def refresh_config(core, fused: bool, selector: str):
    # enough tokens refreshed that the double blocks' text stream picks some too
    return core.PRESETS["balanced"].with_changes(refresh_ratio=0.4, token_selector=selector, fused_refresh=fused)


def tokens_recomputed(stats) -> list:
    return [stats.steps[i].tokens_recomputed for i in sorted(stats.steps)]


def run(patch, model, config, conds, cfg, **size):
    accelerated = patch.apply_method(model, config)
    out = models.sample(accelerated, *conds, steps=STEPS, cfg=cfg, **size)
    return out, patch.last_stats(accelerated)


@pytest.mark.parametrize("dtype, cfg", [(torch.float32, 1.0), (torch.float32, 3.5), (torch.bfloat16, 3.5)])
@pytest.mark.parametrize("selector", ["value_norm", "random"])
def test_flux_fused_refresh_equals_the_reference(duca, dtype, cfg, selector):
    """cfg 1 runs one picture per call (its picks are the flat rows), cfg 3.5 cond and uncond together."""
    patch, core = duca
    model = models.flux(seed=0, dtype=dtype)
    conds = (models.flux_conditioning(model=model, seed=1), models.flux_conditioning(model=model, seed=2))
    fused, fused_stats = run(patch, model, refresh_config(core, True, selector), conds, cfg, height=128, width=128)
    reference, reference_stats = run(patch, model, refresh_config(core, False, selector), conds, cfg,
                                     height=128, width=128)
    assert "C" in fused_stats.timeline and fused_stats.timeline == reference_stats.timeline
    assert tokens_recomputed(fused_stats) == tokens_recomputed(reference_stats)
    assert torch.isfinite(fused).all() and torch.equal(fused, reference)
    uncached = models.sample(model, *conds, steps=STEPS, cfg=cfg, height=128, width=128)
    assert not torch.equal(fused, uncached)  # the refresh ran: the comparison is not between two full runs


@pytest.mark.parametrize("batch", [1, 2])
def test_unit_level_fused_refresh_equals_the_reference(duca, batch):
    """Wan's token-wise units (the host's FFN run on the picked rows) take the same path."""
    patch, core = duca
    model = models.wan(seed=2)
    conds = models.text_conditioning(32, seed=1), models.text_conditioning(32, seed=2)
    latent = models.video_latent(batch=batch, frames=3, height=16, width=16)
    fused, stats = run(patch, model, refresh_config(core, True, "value_norm"), conds, 4.0, latent=latent)
    reference, _ = run(patch, model, refresh_config(core, False, "value_norm"), conds, 4.0, latent=latent)
    assert "C" in stats.timeline and sum(tokens_recomputed(stats)) > 0
    assert torch.equal(fused, reference)
