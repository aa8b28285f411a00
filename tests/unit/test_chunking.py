"""Chunk planning, sliced execution (cache_core) and the CPU peak-memory meter (bench/memory_meter.py); no host."""
import pytest
import torch

from comfyui_duca.cache_core.chunking import (attention_bytes_per_query, parse_chunks, plan_chunks, run_sliced, slice_bounds,
                                 sliced_attention)
from bench.memory_meter import LiveTensorMeter, PeakMemory

MiB = 1 << 20


def test_parse_chunks_accepts_auto_and_whole_numbers():
    assert parse_chunks("auto") is None and parse_chunks(" Auto ") is None and parse_chunks(None) is None
    assert parse_chunks("4") == 4 and parse_chunks(3) == 3
    for bad in ("0", "-2", "2.5", "many", 0):
        with pytest.raises(ValueError, match="chunks"):
            parse_chunks(bad)


def test_slice_bounds_cover_the_axis_evenly():
    bounds = slice_bounds(10, 3)
    assert bounds == [(0, 4), (4, 7), (7, 10)]
    assert slice_bounds(3, 8) == [(0, 1), (1, 2), (2, 3)]   # never more slices than items
    assert slice_bounds(5, 1) == [(0, 5)]


def test_plan_chunks_from_budget_user_setting_and_floor():
    # 4096 items of 1 MiB each in a 256 MiB budget: 16 slices
    assert plan_chunks(4096, MiB, 256 * MiB) == 16
    assert plan_chunks(4096, MiB, 1e12) == 1                 # fits: no slicing
    assert plan_chunks(4096, MiB, 1, min_slice=512) == 8     # never slices under min_slice items
    assert plan_chunks(4096, MiB, 256 * MiB, requested=3) == 3
    assert plan_chunks(2, MiB, 1, requested=9) == 2          # a user setting is capped at the length
    assert plan_chunks(1, MiB, 1) == 1


def mlp(dim=32, hidden=256):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, dim))


@pytest.mark.parametrize("chunks", [1, 2, 7])
def test_run_sliced_matches_the_whole_call_along_tokens_and_batch(chunks):
    net = mlp()
    x = torch.randn(3, 50, 32)
    with torch.no_grad():
        whole = net(x)
        assert torch.allclose(run_sliced(net, x, 1, chunks), whole, atol=1e-6)
        assert torch.allclose(run_sliced(net, x, 0, chunks), whole, atol=1e-6)


def test_run_sliced_cuts_per_token_arguments_and_keeps_shared_ones():
    x = torch.randn(2, 12, 4)
    scale = torch.randn(2, 12, 4)   # per token: cut
    shift = torch.randn(2, 1, 4)    # broadcast: passed whole

    def modulate(t, s, shift=None):
        return t * s + shift
    out = run_sliced(modulate, x, 1, 5, scale, shift=shift, sliced_args=(0,), sliced_kwargs=("shift",))
    assert torch.equal(out, x * scale + shift)


def test_run_sliced_refuses_an_operator_that_changes_the_axis():
    with pytest.raises(ValueError, match="length along axis"):
        run_sliced(lambda t: t.sum(dim=1, keepdim=True), torch.randn(2, 8, 3), 1, 4)


def reference_attention(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                        skip_output_reshape=False, **kwargs):
    """The host's attention signature and layouts, computed with PyTorch's SDPA."""
    if not skip_reshape:
        b, n, width = q.shape
        q, k, v = (t.view(b, -1, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    if mask is not None and mask.ndim == 3:
        mask = mask.unsqueeze(1)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if skip_output_reshape:
        return out
    return out.transpose(1, 2).reshape(out.shape[0], -1, out.shape[1] * out.shape[3])


@pytest.mark.parametrize("skip_reshape,skip_output_reshape", [(False, False), (True, False), (True, True)])
def test_sliced_attention_equals_the_whole_call_in_every_layout(skip_reshape, skip_output_reshape):
    torch.manual_seed(1)
    b, heads, n, d = 2, 4, 37, 8
    shape = (b, heads, n, d) if skip_reshape else (b, n, heads * d)
    q, k, v = torch.randn(shape), torch.randn(shape), torch.randn(shape)
    kwargs = dict(skip_reshape=skip_reshape, skip_output_reshape=skip_output_reshape)
    whole = reference_attention(q, k, v, heads, **kwargs)
    calls = []

    def counting(func, *args, **kw):
        calls.append(args[0].shape)
        return func(*args, **kw)
    sliced = sliced_attention(reference_attention, (q, k, v, heads), kwargs, 5, call=counting)
    assert len(calls) == 5 and sum(c[2 if skip_reshape else 1] for c in calls) == n
    assert sliced.shape == whole.shape
    assert torch.allclose(sliced, whole, atol=1e-6)


def test_sliced_attention_cuts_a_per_query_mask_and_keeps_a_broadcast_one():
    torch.manual_seed(2)
    q, k, v = torch.randn(1, 20, 16), torch.randn(1, 6, 16), torch.randn(1, 6, 16)
    per_query = torch.randn(1, 20, 6)
    broadcast = torch.randn(1, 1, 6)
    for mask in (per_query, broadcast):
        whole = reference_attention(q, k, v, 2, mask)
        sliced = sliced_attention(reference_attention, (q, k, v, 2, mask), {}, 4)
        assert torch.allclose(sliced, whole, atol=1e-6)


def test_sliced_attention_passes_unknown_signatures_through():
    def other(a, b, c):
        return a + b + c
    assert sliced_attention(other, (1, 2, 3), {}, 4) == 6


def test_attention_bytes_count_scores_only_when_materialized():
    q = torch.zeros(2, 100, 64)
    k = torch.zeros(2, 300, 64)
    flash = attention_bytes_per_query(q, k, 4, 1, materializes_scores=False)
    basic = attention_bytes_per_query(q, k, 4, 1, materializes_scores=True)
    assert flash == 2 * 2 * 64 * 4
    assert basic == flash + 2 * 4 * 300 * 4


def test_meter_counts_new_storage_once_and_frees_it():
    weight = torch.randn(256, 256)      # made before the meter: never counted
    x = torch.randn(64, 256)
    with LiveTensorMeter() as meter:
        y = x @ weight                  # 64 KiB
        view = y.view(-1)               # same storage: not counted again
        z = torch.relu(y)               # 64 KiB more
        del y, view
        w = weight.t()                  # a view of old storage: not counted
        assert meter.live_bytes == 64 * 256 * 4
        del z, w
    assert meter.peak_bytes == 2 * 64 * 256 * 4
    assert meter.live_bytes == 0


def test_meter_sees_the_lower_peak_of_a_sliced_mlp():
    net = mlp(dim=64, hidden=1024)
    x = torch.randn(1, 512, 64)
    with torch.no_grad():
        with PeakMemory() as whole:
            net(x)
        with PeakMemory() as sliced:
            run_sliced(net, x, 1, 8)
    hidden_bytes = 512 * 1024 * 4
    assert whole.peak_bytes >= 2 * hidden_bytes            # Linear output and GELU output together
    assert sliced.peak_bytes < whole.peak_bytes / 4


def test_slice_bounds_align_long_slices_to_kernel_blocks():
    assert slice_bounds(4680, 6, align=256) == [(0, 1024), (1024, 2048), (2048, 3072), (3072, 4096), (4096, 4680)]
    assert slice_bounds(48, 3, align=256) == [(0, 16), (16, 32), (32, 48)]   # short slices: even split
    bounds = slice_bounds(1000, 3, align=64)
    assert len(bounds) <= 3 and bounds[0] == (0, 384) and bounds[-1][1] == 1000
