"""What the block-level methods share: one block call's work and its compute accounting."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BlockWork:
    """One hooked block call: the host's block, its token streams and this step's stats."""
    kind: str
    index: int
    block: torch.nn.Module
    streams: dict       # stream name -> TokenLayout
    stats: object       # StepStats of the call's step
    full_compute: float  # what computing the block costs

    @property
    def block_id(self) -> tuple:
        return (self.kind, self.index)


def begin_block(run, call, block_id: tuple, args: dict) -> BlockWork:
    """The block's work, its full cost and tokens counted into the step's stats."""
    adapter, (kind, index) = run.adapter, block_id
    block = adapter.block(kind, index)
    streams = adapter.streams(kind, args, call.grid, call.txt_len)
    stats = run.stats.at(call.step)
    full = adapter.flops_full(kind, block, streams)
    stats.compute_full += full
    stats.tokens_total += sum(s.total for s in streams.values())
    return BlockWork(kind, index, block, streams, stats, full)


def computed(work: BlockWork) -> None:
    work.stats.compute_done += work.full_compute
    work.stats.tokens_recomputed += sum(s.total for s in work.streams.values())


def refreshed(run, work: BlockWork, picks: dict) -> None:
    """A token-wise refresh of `picks` (stream -> TokenRows) was run."""
    picked = {s: rows.count for s, rows in picks.items()}
    work.stats.compute_done += run.adapter.flops_conservative(work.kind, work.block, picked)
    work.stats.tokens_recomputed += sum(picked.values())


def fresh_ages(args: dict, streams: dict) -> dict:
    """Per-token counters of steps since each token was refreshed, all zero (a full step)."""
    batch, device = args["img"].shape[0], args["img"].device
    return {f"{stream}_age": torch.zeros(batch, layout.total, dtype=torch.int32, device=device)
            for stream, layout in streams.items()}
