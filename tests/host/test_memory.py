"""Feature Slicer (glue/memory.py, slicer/, adapters/slicing.py) on the real host, family by family.

Tolerance: float32 on the CPU, sliced and unsliced outputs of a whole sampling run agree to
max |difference| <= 1e-5 x max(1, max |unsliced output|) (slicing only reorders float sums
inside matrix products, convolutions and attention). Peak memory: live tensor storage allocated during one model
call, counted by a TorchDispatchMode (bench/memory_meter.py); weights and inputs excluded.
"""
import logging

import pytest
import torch

from testbed import host, models
from testbed.families import FAMILIES

TOLERANCE = 1e-5
STEPS = 4
CHUNKS = 3  # forced: the test models are far below the automatic mode's smallest slice


def wan_t2v():
    return models.wan(seed=2), models.text_conditioning(32, seed=1), models.text_conditioning(32, seed=2), \
        models.video_latent(batch=2, frames=3, height=8, width=8)


def from_family(name):
    def build():
        family = FAMILIES[name]
        return family.build(3), family.conditioning(1), family.negative(2), family.latent(batch=2)
    return build


def sd_unet():
    return models.sd_unet(seed=1), models.sd_conditioning(seed=1), models.sd_conditioning(seed=2), \
        torch.zeros(2, 4, 4, 4)


# family -> (builder, the kinds of operator its model must have sliced). Wan and LTXV run whole
# blocks in slices (the operators inside a slice are far below their own smallest slice here).
CASES = {
    "wan21-t2v": (wan_t2v, {"block"}),
    "wan21-i2v": (from_family("wan21-i2v"), {"block"}),
    "wan22-5b": (from_family("wan22-5b"), {"block"}),
    "hunyuan-video": (from_family("hunyuan-video"), {"mlp", "attention"}),
    "ltxv": (from_family("ltxv"), {"block"}),
    "mochi": (from_family("mochi"), {"mlp", "attention"}),
    "sd15-unet": (sd_unet, {"mlp", "cross_attention", "attention", "per_picture"}),
}


@pytest.fixture(scope="module")
def slicer(pack):
    from comfyui_duca.glue import memory
    return memory


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, pack):
    build, kinds = CASES[request.param]
    model, positive, negative, latent = build()
    reference = models.sample(model, positive, negative, steps=STEPS, cfg=4.0, latent=latent)
    assert torch.isfinite(reference).all()
    return request.param, model, (positive, negative, latent), reference, kinds


def close(out, reference) -> bool:
    return (out - reference).abs().max().item() <= TOLERANCE * max(1.0, reference.abs().max().item())


def run(model, conds, steps=STEPS):
    positive, negative, latent = conds
    return models.sample(model, positive, negative, steps=steps, cfg=4.0, latent=latent)


def patched_modules(model):
    return [m for m in model.model.diffusion_model.modules() if "forward" in m.__dict__]


def test_sliced_output_equals_unpatched(case, slicer):
    name, model, conds, reference, kinds = case
    sliced = slicer.apply_feature_slicer(model, CHUNKS)
    assert sliced is not model
    out = run(sliced, conds)
    assert close(out, reference)
    stats = slicer.last_slice_stats(sliced)
    assert set(stats.calls) == kinds, stats.summary()
    assert all(stats.slices[k] > stats.calls[k] for k in kinds)  # each sliced call really was cut
    assert patched_modules(model) == []   # every stand-in is gone after the run
    assert slicer.last_slice_stats(model) is None  # the original model is untouched


# The small Wan test models (FFN 2x the width, 48 tokens) peak outside their blocks (text and time
# embeddings), so slicing can't lower their peak: Wan is measured on a wider model below.
@pytest.mark.parametrize("name", ["hunyuan-video", "ltxv", "mochi", "sd15-unet"])
def test_peak_memory_of_sampling_is_lower(name, slicer):
    from bench.memory_meter import PeakMemory
    model, positive, negative, latent = CASES[name][0]()
    conds = (positive, negative, latent)
    sliced = slicer.apply_feature_slicer(model, CHUNKS)
    run(model, conds, steps=1), run(sliced, conds, steps=1)   # first-call allocations out of the way
    with PeakMemory() as plain:
        run(model, conds, steps=2)
    with PeakMemory() as low:
        run(sliced, conds, steps=2)
    print(f"{name}: peak {plain.peak_bytes} -> {low.peak_bytes} bytes")
    assert low.peak_bytes < plain.peak_bytes


@pytest.mark.parametrize("order", ["slicer-then-duca", "duca-then-slicer"])
def test_composes_with_accelerate(case, slicer, duca, order):
    name, model, conds, reference, kinds = case
    patch, core = duca

    def both(config):
        if order == "slicer-then-duca":
            return patch.apply_method(slicer.apply_feature_slicer(model, CHUNKS), config)
        return slicer.apply_feature_slicer(patch.apply_method(model, config), CHUNKS)
    full = both(core.DuCaConfig(plan=core.all_full_plan(STEPS)))
    assert close(run(full, conds), reference)
    cached_alone = run(patch.apply_method(model, core.PRESETS["fast"].with_changes(first_full_steps=1)), conds)
    cached = both(core.PRESETS["fast"].with_changes(first_full_steps=1))
    out = run(cached, conds)
    assert close(out, cached_alone)
    assert patch.last_stats(cached).compute_fraction < 1.0   # DuCa did reuse, with slicing on
    assert slicer.last_slice_stats(cached).calls                 # and slicing ran inside its calls
    assert patched_modules(model) == []


def test_self_attention_runs_whole_while_its_projections_are_watched(slicer, pack):
    """A hook on a projection (DuCa records value vectors that way) must see every token in one call."""
    model, positive, negative, latent = wan_t2v()
    reference = run(model, (positive, negative, latent), steps=2)
    seen = []
    handles = [b.self_attn.v.register_forward_hook(lambda _m, _a, out: seen.append(out.shape[1]))
               for b in model.model.diffusion_model.blocks]
    try:
        sliced = slicer.apply_feature_slicer(model, CHUNKS)
        out = run(sliced, (positive, negative, latent), steps=2)
    finally:
        for h in handles:
            h.remove()
    assert close(out, reference)
    assert set(seen) == {48}    # 3 frames x 4 x 4 tokens, never a slice
    stats = slicer.last_slice_stats(sliced)
    assert "self_attention" not in stats.calls and stats.calls["mlp"] > 0


class Boom(RuntimeError):
    pass


def test_stand_ins_and_override_are_gone_after_an_error(slicer, pack):
    model, positive, negative, latent = wan_t2v()
    sliced = slicer.apply_feature_slicer(model, CHUNKS)
    blocks = model.model.diffusion_model.blocks
    seen = {}

    def fail(module, args, kwargs, output):
        seen["stand-ins"] = len(patched_modules(model))
        seen["override"] = "optimized_attention_override" in kwargs.get("transformer_options", {})
        raise Boom("stop inside the last block")
    handle = blocks[-1].register_forward_hook(fail, with_kwargs=True)
    try:
        with pytest.raises(Boom):
            run(sliced, (positive, negative, latent), steps=2)
    finally:
        handle.remove()
    assert seen["stand-ins"] > 0 and seen["override"]   # they were there while the model ran
    assert patched_modules(model) == []
    assert "optimized_attention_override" not in sliced.model_options["transformer_options"]


def one_call_peak(model, x, sigma, context):
    from bench.memory_meter import PeakMemory
    options = dict(model.model_options.get("transformer_options", {}))
    options["wrappers"] = model.wrappers
    with torch.no_grad(), PeakMemory() as peak:
        out = model.model.apply_model(x, sigma, c_crossattn=context, transformer_options=options)
    return peak.peak_bytes, out


def wan_call_peaks(slicer, chunks, size: dict, frames: int, side: int):
    """Peak bytes of one call of a 2-block Wan (`frames` latent frames of side x side) unpatched and
    sliced, after checking their outputs agree; and what the sliced call cut."""
    model = models.wan(seed=0, num_heads=2, num_layers=2, **size)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, frames, side, side, generator=gen)
    context = torch.randn(1, 8, 32, generator=gen)
    sigma = torch.full((1,), 0.5)
    plain, reference = one_call_peak(model, x, sigma, context)
    sliced = slicer.apply_feature_slicer(model, chunks)
    low, out = one_call_peak(sliced, x, sigma, context)
    assert close(out, reference)
    stats = slicer.last_slice_stats(sliced)
    print(f"chunks {chunks}: peak {plain} -> {low} bytes ({plain / low:.2f}x lower), {stats.summary()}")
    return plain, low, stats


# auto: 1024 tokens are too few to cut a whole block (its matrix products would lose efficiency), so
# the operators are sliced one by one; a forced count slices the blocks
@pytest.mark.parametrize("chunks, kind", [(None, "mlp"), (8, "block")])
def test_peak_memory_is_lower_on_a_wider_wan(slicer, pack, chunks, kind):
    """1024 video tokens, width 128, FFN 1024: the FFN's hidden layer dominates the unpatched peak."""
    plain, low, stats = wan_call_peaks(slicer, chunks, dict(dim=128, ffn_dim=1024), frames=4, side=32)
    assert stats.calls[kind] == 2 and ("block" in stats.calls) == (kind == "block")
    assert low < plain / 2, (low, plain)


def test_peak_memory_is_lower_on_a_unet_batch(slicer, pack):
    model = models.sd_unet(seed=1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 4, 16, 16, generator=gen)
    context = torch.randn(4, 77, 768, generator=gen)
    sigma = torch.full((4,), 1.0)
    plain, reference = one_call_peak(model, x, sigma, context)
    low, out = one_call_peak(slicer.apply_feature_slicer(model, 4), x, sigma, context)
    assert close(out, reference)
    assert low < plain * 0.75, (low, plain)


def test_node_registered_validates_chunks_and_passes_unknown_models_through(pack, caplog):
    node = host.node("DuCaFeatureSlicer")
    assert node.GET_SCHEMA().display_name == "Reduce Video Memory (Feature Slicer)"
    inputs = node.INPUT_TYPES()["required"]
    assert inputs["chunks"][1]["default"] == "auto" and inputs["chunks"][1]["tooltip"]
    model = models.wan(seed=0)
    (patched,) = node.execute(model, "auto").result
    assert patched is not model
    (patched,) = node.execute(model, "6").result
    assert patched.model_options["transformer_options"]["duca_feature_slicer"].config == 6
    for bad in ("0", "lots", "2.5"):
        with pytest.raises(ValueError, match="chunks"):
            node.execute(model, bad)
    aura = FAMILIES["auraflow"].build(0)
    with caplog.at_level(logging.WARNING, logger="comfyui-duca"):
        (same,) = node.execute(aura, "auto").result
    assert same is aura
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "feature slicer" in r.getMessage()]
    assert len(warnings) == 1 and "MMDiT" in warnings[0].getMessage()


def test_the_slicer_names_each_family_as_the_pack_does(slicer, pack):
    for model, family in ((models.wan(seed=0), "wan"), (models.sd_unet(seed=1), "unet")):
        patched = slicer.apply_feature_slicer(model, 2)
        assert patched.model_options["transformer_options"]["duca_feature_slicer"].family == family


def test_applied_twice_the_last_setting_wins(slicer, pack):
    model = models.wan(seed=0)
    twice = slicer.apply_feature_slicer(slicer.apply_feature_slicer(model, 2), 5)
    wrappers = twice.wrappers
    count = sum(len(v.get("duca_feature_slicer", [])) for v in wrappers.values())
    assert count == 1
    assert twice.model_options["transformer_options"]["duca_feature_slicer"].config == 5



def test_per_frame_modulation_is_cut_with_the_frames(slicer, pack):
    """Wan 2.2 with a denoise mask (image-to-video keeps frame 0) has one modulation row per latent frame:
    each slice must carry the rows of its own frames."""
    import comfy.sample
    family = FAMILIES["wan22-5b"]
    model = family.build(3)
    latent = family.latent(batch=1)
    mask = torch.ones(1, 1, *latent.shape[2:])
    mask[:, :, 0] = 0.0  # the first frame is given
    rows = []
    handle = model.model.diffusion_model.blocks[0].register_forward_pre_hook(
        lambda _m, _args, kwargs: rows.append(kwargs["e"].shape[1]), with_kwargs=True)

    def sample(m):
        noise = comfy.sample.prepare_noise(latent, 0)
        return comfy.sample.sample(m, noise, STEPS, 4.0, "euler", "simple", family.conditioning(1),
                                   family.negative(2), latent, noise_mask=mask, seed=0, disable_pbar=True)
    try:
        reference = sample(model)
        sliced = slicer.apply_feature_slicer(model, CHUNKS)
        out = sample(sliced)
    finally:
        handle.remove()
    assert set(rows) == {latent.shape[2]}   # per-frame rows reached the block
    assert close(out, reference)
    stats = slicer.last_slice_stats(sliced)
    assert stats.slices["block"] > stats.calls["block"]


def test_block_slicing_lowers_the_peak_threefold_where_the_mlp_is_wide(slicer, pack):
    """8192 video tokens, width 256, FFN 8x: unpatched, the FFN's hidden layer (before and after its
    activation) is most of the peak; sliced, the block holds its input, keys, values and output whole."""
    plain, low, stats = wan_call_peaks(slicer, None, dict(dim=256, ffn_dim=2048), frames=8, side=64)
    assert stats.calls["block"] == 2 and stats.slices["block"] >= 8
    assert low * 3 < plain, (low, plain)
