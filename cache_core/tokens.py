"""Token scoring and selection for conservative (token-wise refresh) steps.

Scores are [batch, tokens] tensors; higher means "recompute first". The token
sequence of a block is a text part (no position) followed by one or more grids
(an image is (h, w), a video (t, h, w)); only grid tokens get the spatial bonus.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

FREQUENCY_WEIGHT = 0.25  # ToCa's lambda3 for the cache-frequency term


@dataclass(frozen=True)
class TokenLayout:
    """Where the grid tokens sit in a block's sequence."""
    prefix: int            # tokens before the grid (e.g. text tokens)
    grid: tuple            # (h, w) or (t, h, w)
    total: int             # all tokens of the sequence (extra tokens after the grid are allowed)

    @property
    def grid_tokens(self) -> int:
        return math.prod(self.grid)


def min_max_normalize(score: torch.Tensor) -> torch.Tensor:
    low = score.amin(dim=-1, keepdim=True)
    high = score.amax(dim=-1, keepdim=True)
    return (score - low) / (high - low).clamp_min(1e-12)


def value_norm_score(v: torch.Tensor) -> torch.Tensor:
    """V-caching score from value vectors [batch, heads, tokens, head_dim].

    Tokens whose value vectors are small score highest (DuCa's reference code
    ranks `sum_h (1 - ||v_h||)`), normalized to [0, 1] over tokens. Needs no
    attention map, so fused attention kernels keep working.
    """
    norms = v.float().norm(dim=-1).mean(dim=1)  # [batch, tokens]
    return min_max_normalize(-norms)


def spatial_spread_bonus(score: torch.Tensor, layout: TokenLayout, cell: int = 2,
                         weight: float = 0.4) -> torch.Tensor:
    """Bonus for the best token of every `cell`-sized patch of the grid.

    Spreads refreshed tokens over the picture instead of letting them cluster.
    Works on any (h, w) or (t, h, w) grid; partial cells at the edges count.
    """
    bonus = torch.zeros_like(score)
    if not layout.grid or layout.grid_tokens == 0:
        return bonus
    batch = score.shape[0]
    grid_scores = score[:, layout.prefix:layout.prefix + layout.grid_tokens]
    *lead, h, w = layout.grid
    frames = math.prod(lead) if lead else 1
    s = grid_scores.reshape(batch * frames, 1, h, w)
    pad_h, pad_w = (-h) % cell, (-w) % cell
    if pad_h or pad_w:
        s = torch.nn.functional.pad(s, (0, pad_w, 0, pad_h), value=float("-inf"))
    _, best = torch.nn.functional.max_pool2d(s, cell, return_indices=True)  # flat index in padded grid
    best = best.flatten(1)
    row, col = best // (w + pad_w), best % (w + pad_w)
    flat = (row * w + col).reshape(batch, frames, -1)
    flat = flat + (torch.arange(frames, device=score.device) * h * w).view(1, frames, 1)
    flat = flat.reshape(batch, -1) + layout.prefix
    top = score.amax(dim=-1, keepdim=True).expand_as(flat)
    bonus.scatter_(1, flat, weight * top)
    return bonus


def random_score(batch: int, tokens: int, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(batch, tokens, generator=generator).to(device)


def select_top_tokens(score: torch.Tensor, ratio: float) -> torch.Tensor:
    """Indices [batch, k] of the k = int(ratio * tokens) highest scores, ascending."""
    tokens = score.shape[-1]
    k = int(min(max(ratio, 0.0), 1.0) * tokens)
    if k == 0:
        return torch.empty(score.shape[0], 0, dtype=torch.long, device=score.device)
    idx = torch.topk(score, k, dim=-1, sorted=False).indices
    return idx.sort(dim=-1).values


def layer_refresh_ratio(base: float, position: int, depth: int, stream_factor: float = 1.0,
                        layer_weight: float = 0.5) -> float:
    """ToCa's per-layer ratio: shallow layers refresh more, deep layers less.

    `1 + w - 2 w l / L`, times a factor per stream (Flux: 0.4 double, 1.6 single).
    """
    layer_factor = 1.0 + layer_weight - 2.0 * layer_weight * position / max(depth, 1)
    return min(1.0, max(0.0, base * layer_factor * stream_factor))


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [batch, tokens, dim], idx [batch, k] -> [batch, k, dim]."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def scatter_tokens(target: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Write values [batch, k, dim] into target [batch, tokens, dim] at idx, in place."""
    return target.scatter_(1, idx.unsqueeze(-1).expand(-1, -1, target.shape[-1]), values.to(target.dtype))


@functools.lru_cache(maxsize=32)
def row_offsets(batch: int, tokens: int, device: torch.device) -> torch.Tensor:
    """[batch, 1]: where each batch entry's rows start in the flat view (made once per shape)."""
    return torch.arange(0, batch * tokens, tokens, device=device).unsqueeze(1)


class TokenRows:
    """Picked tokens idx [batch, k] of a stream, read and written as rows of the
    [batch * tokens, dim] view: one flat index, made once per pick and shared by every
    gather and scatter of the block, instead of an index expanded over the feature dim
    per call (on a GPU, torch.gather reads an int64 index per element: four to eight
    times the bytes of the values it moves; index_select reads one per row).

    `fused=False` keeps torch.gather / scatter_, the reference the fused path is tested
    against (both copy the same values: outputs are equal bit for bit). Tensors that are
    not contiguous take the reference path too (a flat view of them would copy them).
    """

    def __init__(self, idx: torch.Tensor, fused: bool = True):
        self.idx = idx
        self.fused = fused
        self.batch, self.count = idx.shape
        self._flat = {}  # tokens -> flat row index [batch * k]

    def flat(self, tokens: int) -> torch.Tensor:
        if tokens not in self._flat:
            if self.batch == 1:  # one picture (cfg 1, as Flux-dev runs): the picks are the rows already
                self._flat[tokens] = self.idx.reshape(-1)
            else:
                self._flat[tokens] = (self.idx + row_offsets(self.batch, tokens, self.idx.device)).reshape(-1)
        return self._flat[tokens]

    def _as_rows(self, x: torch.Tensor) -> bool:
        return self.fused and x.is_contiguous() and x.shape[0] == self.batch

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """x [batch, tokens, dim] -> the picked rows [batch, k, dim]."""
        if not self._as_rows(x):
            return gather_tokens(x, self.idx)
        dim = x.shape[-1]
        return x.view(-1, dim).index_select(0, self.flat(x.shape[1])).view(self.batch, self.count, dim)

    def put(self, target: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Write values [batch, k, dim] into target [batch, tokens, dim] at the picks, in place."""
        if not self._as_rows(target):
            return scatter_tokens(target, self.idx, values)
        dim = target.shape[-1]
        target.view(-1, dim).index_copy_(0, self.flat(target.shape[1]), values.reshape(-1, dim).to(target.dtype))
        return target


SELECTORS = ("value_norm", "value_norm_spread", "random")


@dataclass(frozen=True)
class TokenSelector:
    """How a conservative step picks the tokens it recomputes.

    value_norm: V-caching score taken at the last full step, plus the
    cache-frequency term. value_norm_spread: the same plus the spatial bonus.
    random: a seeded random pick (DuCa v2 found it about as good).
    """
    kind: str = "value_norm"
    interval: int = 4  # normalizes the cache-frequency term

    def __post_init__(self):
        if self.kind not in SELECTORS:
            raise ValueError(f"token selector must be one of {SELECTORS}, got {self.kind!r}")

    def select(self, ratio: float, value_score, steps_since_refresh: torch.Tensor,
               layout: TokenLayout, generator: torch.Generator) -> torch.Tensor:
        batch, tokens = steps_since_refresh.shape
        if self.kind == "random" or value_score is None:
            score = random_score(batch, tokens, generator, steps_since_refresh.device)
        else:
            # ToCa's cache-frequency term (tokens reused for longer come first), in one kernel
            score = torch.add(value_score, steps_since_refresh, alpha=FREQUENCY_WEIGHT / max(self.interval, 1))
            if self.kind == "value_norm_spread":
                score = score + spatial_spread_bonus(score, layout)
        return select_top_tokens(score, ratio)
