"""Token scoring and selection."""
import torch

from comfyui_duca.cache_core.tokens import (TokenLayout, TokenRows, TokenSelector, gather_tokens, layer_refresh_ratio, scatter_tokens,
                               select_top_tokens, spatial_spread_bonus, value_norm_score)


def test_value_norm_score_prefers_small_value_vectors():
    v = torch.ones(1, 2, 5, 4)
    v[:, :, 3] = 0.1   # the smallest values
    v[:, :, 1] = 5.0   # the largest
    score = value_norm_score(v)
    assert score.shape == (1, 5)
    assert score[0].argmax() == 3 and score[0].argmin() == 1
    assert score.min() == 0.0 and score.max() == 1.0


def test_top_tokens_count_and_order():
    score = torch.tensor([[0.1, 0.9, 0.5, 0.7]])
    idx = select_top_tokens(score, 0.5)
    assert idx.tolist() == [[1, 3]]
    assert select_top_tokens(score, 0.0).shape == (1, 0)
    assert select_top_tokens(score, 1.0).shape == (1, 4)


def test_spatial_bonus_marks_one_token_per_cell_on_rectangular_grids():
    h, w, prefix = 3, 5, 2   # odd sizes: partial cells at the edges
    score = torch.rand(2, prefix + h * w)
    bonus = spatial_spread_bonus(score, TokenLayout(prefix, (h, w), prefix + h * w), cell=2)
    cells = 2 * 3            # ceil(3/2) * ceil(5/2)
    assert (bonus[:, :prefix] == 0).all()                  # text tokens get none
    assert ((bonus > 0).sum(dim=1) == cells).all()
    grid = score[:, prefix:].reshape(2, h, w)
    top_left = grid[:, :2, :2].reshape(2, -1).argmax(dim=1)
    for b in range(2):
        r, c = divmod(int(top_left[b]), 2)
        assert bonus[b, prefix + r * w + c] > 0


def test_spatial_bonus_on_video_grids():
    t, h, w = 3, 4, 4
    score = torch.rand(1, t * h * w)
    bonus = spatial_spread_bonus(score, TokenLayout(0, (t, h, w), t * h * w), cell=2)
    assert (bonus > 0).sum() == t * 4


def test_frequency_term_rotates_refreshed_tokens():
    selector = TokenSelector("value_norm", interval=4)
    score = torch.zeros(1, 8)
    score[0, :2] = 0.01  # slightly preferred, but long-unrefreshed tokens must catch up
    age = torch.zeros(1, 8, dtype=torch.int32)
    age[0, 5] = 8
    idx = selector.select(0.25, score, age, TokenLayout(0, (), 8), torch.Generator().manual_seed(0))
    assert 5 in idx[0].tolist()


def test_random_selector_is_seeded():
    selector = TokenSelector("random")
    age = torch.zeros(2, 100, dtype=torch.int32)
    layout = TokenLayout(0, (10, 10), 100)
    a = selector.select(0.1, None, age, layout, torch.Generator().manual_seed(3))
    b = selector.select(0.1, None, age, layout, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (2, 10)


def test_layer_ratio_decreases_with_depth_and_is_clamped():
    shallow = layer_refresh_ratio(0.1, 0, 10, 1.6)
    deep = layer_refresh_ratio(0.1, 9, 10, 1.6)
    assert shallow > deep > 0
    assert abs(shallow - 0.1 * 1.5 * 1.6) < 1e-9
    assert layer_refresh_ratio(1.0, 0, 10, 2.0) == 1.0


def test_gather_scatter_round_trip():
    x = torch.arange(24.0).reshape(2, 4, 3)
    idx = torch.tensor([[0, 2], [1, 3]])
    picked = gather_tokens(x, idx)
    assert picked[1, 0].tolist() == x[1, 1].tolist()
    target = torch.zeros_like(x)
    scatter_tokens(target, idx, picked)
    assert target[0, 2].tolist() == x[0, 2].tolist() and target[0, 1].abs().sum() == 0


def test_token_rows_move_the_same_values_as_gather_and_scatter():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 5, dtype=torch.bfloat16)
    idx = select_top_tokens(torch.rand(2, 9), 0.4)
    fused, reference = TokenRows(idx), TokenRows(idx, fused=False)
    assert torch.equal(fused.take(x), gather_tokens(x, idx)) and torch.equal(reference.take(x), fused.take(x))
    values = torch.randn(2, idx.shape[1], 5)  # float32 values into a bf16 cache: cast as the scatter casts
    a, b = torch.zeros_like(x), torch.zeros_like(x)
    fused.put(a, values)
    scatter_tokens(b, idx, values)
    assert torch.equal(a, b) and a.abs().sum() > 0
    # rows of the other batch entry are untouched
    untouched = torch.ones(9, dtype=torch.bool)
    untouched[idx[1]] = False
    assert a[1, untouched].abs().sum() == 0


def test_token_rows_share_one_flat_index_and_fall_back_on_strided_tensors():
    idx = torch.tensor([[0, 3], [1, 2]])
    rows = TokenRows(idx)
    assert rows.flat(4).tolist() == [0, 3, 5, 6] and rows.flat(4) is rows.flat(4)
    assert TokenRows(idx[1:]).flat(4).tolist() == [1, 2]  # one picture: no offsets
    x = torch.arange(2 * 5 * 4.0).reshape(2, 4, 5).transpose(1, 2)  # [2, 5, 4], not contiguous
    assert torch.equal(rows.take(x), gather_tokens(x, idx))
    empty = TokenRows(torch.empty(2, 0, dtype=torch.long))
    assert empty.count == 0 and empty.take(x).shape == (2, 0, 4)
