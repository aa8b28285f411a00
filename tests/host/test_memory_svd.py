"""Feature Slicer on ComfyUI's SVD video U-Net (real host, real sampler): temporal layers are cut over
space, every slice keeping all frames; spatial ResBlock parts over pictures.

Tolerance and peak memory as in test_memory.py: float32 CPU outputs within 1e-5 x max(1, max |unsliced|);
peak = live tensor storage allocated during one model call (bench/memory_meter.py).
"""
import pytest
import torch

from testbed import models

TOLERANCE = 1e-5
STEPS = 4
CHUNKS = 3
FRAMES = 5       # odd: a slice of frames (2 + 2 + 1) can't pass for all of them
SIDE = 8         # latent side: 64 positions per picture at the full resolution
VIDEOS = 2       # cond and uncond run as one batch of two videos (cfg > 1)


@pytest.fixture(scope="module")
def slicer(pack):
    from comfyui_duca.glue import memory
    return memory


@pytest.fixture(scope="module")
def svd(pack):
    model = models.svd_unet(seed=0)
    positive, negative = models.svd_conditioning(seed=1), models.svd_conditioning(empty=True)
    return model, (positive, negative, models.svd_latent(FRAMES, SIDE, SIDE))


def run(model, conds):
    positive, negative, latent = conds
    return models.sample(model, positive, negative, steps=STEPS, cfg=2.5, latent=latent)


@pytest.fixture(scope="module")
def reference(svd):
    model, conds = svd
    out = run(model, conds)
    assert torch.isfinite(out).all() and out.abs().max() > 0
    return out


def close(out, reference) -> bool:
    return (out - reference).abs().max().item() <= TOLERANCE * max(1.0, reference.abs().max().item())


def first(model, class_name):
    return next(m for m in model.model.diffusion_model.modules() if type(m).__name__ == class_name)


def stood_in(model):
    return [name for name, m in model.model.diffusion_model.named_modules()
            if "forward" in m.__dict__ or "_forward" in m.__dict__]


def test_sliced_svd_equals_unpatched_and_cuts_its_temporal_blocks(svd, reference, slicer):
    model, conds = svd
    sliced = slicer.apply_feature_slicer(model, CHUNKS)
    out = run(sliced, conds)
    assert close(out, reference), (out - reference).abs().max().item()
    stats = slicer.last_slice_stats(sliced)
    assert stats.calls.get("temporal") == 7, stats.summary()   # every time_stack block of the U-Net, each call
    assert stats.slices["temporal"] > stats.calls["temporal"], stats.summary()
    assert stats.slices.get("per_picture", 0) > stats.calls.get("per_picture", 0), stats.summary()
    assert stood_in(model) == []   # every stand-in (forward and VideoResBlock._forward) is gone


def shapes_seen(modules, model, conds):
    """Input shapes each of `modules` saw while `model` sampled."""
    seen = [[] for _ in modules]
    handles = [m.register_forward_hook(lambda _m, args, _out, into=into: into.append(tuple(args[0].shape)))
               for m, into in zip(modules, seen)]
    try:
        run(model, conds)
    finally:
        for h in handles:
            h.remove()
    return seen


def test_each_temporal_slice_keeps_all_frames(svd, slicer):
    model, conds = svd
    block = first(model, "SpatialVideoTransformer").time_stack[0]   # full resolution
    inside = [block.attn1, block.ff.net]   # ff.net: what the MLP's own forward (or its stand-in's slices) runs
    plain, _ = shapes_seen(inside, model, conds)
    sliced, inner = shapes_seen(inside, slicer.apply_feature_slicer(model, CHUNKS), conds)
    positions = VIDEOS * SIDE * SIDE
    assert set(plain) == {(positions, FRAMES, plain[0][2])}   # [(b s), t, c]: what the rule relies on
    assert {shape[1] for shape in sliced} == {FRAMES}           # every slice holds all frames
    assert {shape[1] for shape in inner} == {FRAMES}            # also in its MLP (not cut again over frames)
    assert max(shape[0] for shape in sliced) < positions        # and only some positions
    assert sum(shape[0] for shape in sliced) == sum(shape[0] for shape in plain)  # all of them, once
    assert len(sliced) == CHUNKS * len(plain)


def test_video_resblocks_cut_pictures_in_space_and_keep_whole_videos_in_time(svd, slicer):
    model, conds = svd
    block = first(model, "VideoResBlock")
    spatial, temporal = shapes_seen([block.in_layers, block.time_stack.in_layers],
                                    slicer.apply_feature_slicer(model, CHUNKS), conds)
    pictures = VIDEOS * FRAMES
    assert max(s[0] for s in spatial) < pictures and sum(s[0] for s in spatial) % pictures == 0
    assert {s[2:] for s in temporal} == {(FRAMES, SIDE, SIDE)}   # [b, c, t, h, w]: all frames, all space
    assert stood_in(model) == []


def one_call_peak(model, frames, side):
    from bench.memory_meter import PeakMemory
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(frames, 4, side, side, generator=gen)
    cond = dict(c_concat=torch.randn(frames, 4, side, side, generator=gen),
                c_crossattn=torch.randn(frames, 1, 64, generator=gen), y=torch.randn(frames, 768, generator=gen))
    options = dict(model.model_options.get("transformer_options", {}))
    options["wrappers"] = model.wrappers
    with torch.no_grad(), PeakMemory() as peak:
        out = model.model.apply_model(x, torch.ones(frames), transformer_options=options,
                                      num_video_frames=frames, **cond)
    return peak.peak_bytes, out


# 14 frames (SVD's own count), one video. The temporal blocks' MLPs (ff_in and ff, GEGLU 8x the width)
# dominate the unpatched peak; without the temporal rule the slicer lowers it by under 10%.
@pytest.mark.parametrize("chunks, side", [(4, 16), (None, 32)])
def test_peak_memory_of_a_call_is_lower_where_the_temporal_mlp_dominates(slicer, pack, chunks, side):
    model = models.svd_unet(seed=0)
    plain, reference = one_call_peak(model, 14, side)
    sliced = slicer.apply_feature_slicer(model, chunks)
    low, out = one_call_peak(sliced, 14, side)
    assert close(out, reference)
    stats = slicer.last_slice_stats(sliced)
    print(f"chunks {chunks}, 14 x {side} x {side}: peak {plain} -> {low} bytes ({plain / low:.2f}x), "
          f"{stats.summary()}")
    assert low < 0.6 * plain, (low, plain)
    assert stats.slices.get("temporal", 0) > stats.calls.get("temporal", 0), stats.summary()
    assert stood_in(model) == []
