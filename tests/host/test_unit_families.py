"""Token-wise caching through the host's own block forward (adapters/units.py): Wan.

Counts come from forward hooks on the host's inner layers (the FFN's first Linear,
self-attention's q projection), which run only when the host really computes them.
"""
import pytest
import torch

from testbed import models

STEPS = 10
FRAMES, SIDE = 3, 8          # latent: 3 frames of 8x8 -> 3 x 4 x 4 = 48 tokens per video
TOKENS = FRAMES * (SIDE // 2) ** 2


@pytest.fixture(scope="module")
def wan(pack):
    return models.wan(seed=2)


@pytest.fixture(scope="module")
def wan_conds():
    return models.text_conditioning(32, seed=1), models.text_conditioning(32, seed=2)


def sample(model, conds, cfg, batch):
    positive, negative = conds
    return models.sample(model, positive, negative, steps=STEPS, cfg=cfg,
                         latent=models.video_latent(batch=batch, frames=FRAMES, height=SIDE, width=SIDE))


class Counter:
    """FFN rows and self-attention calls the host computed, summed over all blocks."""

    def __init__(self, blocks):
        self.ffn_rows = self.attention_calls = 0
        self.handles = [b.ffn[0].register_forward_hook(self._ffn) for b in blocks]
        self.handles += [b.self_attn.q.register_forward_hook(self._attention) for b in blocks]

    def _ffn(self, _m, args, _out):
        self.ffn_rows += args[0].shape[0] * args[0].shape[1]

    def _attention(self, *_):
        self.attention_calls += 1

    def remove(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("cfg,batch", [(1.0, 1), (4.0, 2)])
def test_wan_all_full_plan_is_bit_identical(wan, wan_conds, duca, cfg, batch):
    patch, core = duca
    reference = sample(wan, wan_conds, cfg, batch)
    assert torch.isfinite(reference).all()
    full = patch.apply_method(wan, core.DuCaConfig(plan=core.all_full_plan(STEPS)))
    assert full is not wan
    assert torch.equal(sample(full, wan_conds, cfg, batch), reference)
    assert patch.last_stats(full).level == "token-wise"


@pytest.mark.parametrize("preset", ["quality", "balanced", "fast"])
def test_wan_computes_the_planned_blocks_and_tokens(wan, wan_conds, duca, preset):
    patch, core = duca
    config = core.PRESETS[preset]
    blocks = list(wan.model.diffusion_model.blocks)
    model = patch.apply_method(wan, config)
    counter = Counter(blocks)
    try:
        sample(model, wan_conds, cfg=4.0, batch=2)   # cond + uncond of 2 videos: one call of batch 4
    finally:
        counter.remove()
    stats = patch.last_stats(model)
    plan = config.plan_for(STEPS)
    assert stats.timeline == plan.timeline
    rows_per_block = 4 * TOKENS
    expected_rows = 0
    for step in plan:
        if step.action is core.Action.FULL:
            expected_rows += rows_per_block * len(blocks)
        elif step.action is core.Action.CONSERVATIVE:
            for position in range(len(blocks)):
                ratio = core.layer_refresh_ratio(step.refresh_ratio, position, len(blocks), 1.0, config.layer_weight)
                expected_rows += 4 * int(ratio * TOKENS)
    assert counter.attention_calls == plan.timeline.count("F") * len(blocks)
    assert counter.ffn_rows == expected_rows
    assert 0 < stats.compute_fraction < 1


def test_wan_balanced_is_closer_than_whole_step_reuse_at_more_compute(wan, wan_conds, duca):
    patch, core = duca
    reference = sample(wan, wan_conds, 4.0, 2)

    def distance(x):
        return float((x - reference).norm() / reference.norm())
    balanced = patch.apply_method(wan, core.PRESETS["balanced"])
    out = sample(balanced, wan_conds, 4.0, 2)
    every_3rd = patch.apply_method(wan, core.DuCaConfig(plan=core.every_kth_step_plan(STEPS, 3, 1)))
    baseline = sample(every_3rd, wan_conds, 4.0, 2)
    assert 1e-6 < distance(out) < distance(baseline)
    assert patch.last_stats(balanced).compute_fraction <= patch.last_stats(every_3rd).compute_fraction + 0.02


def test_stand_ins_are_removed_even_when_the_block_fails(wan, duca):
    from comfyui_duca.adapters.units import standing_in
    block = wan.model.diffusion_model.blocks[0]
    with pytest.raises(RuntimeError):
        with standing_in({block.ffn: lambda *a, **k: None}):
            assert block.ffn(torch.zeros(1, 2, 64)) is None
            raise RuntimeError("block failed")
    assert "forward" not in block.ffn.__dict__
    assert block.ffn(torch.zeros(1, 2, 64)).shape == (1, 2, 64)
