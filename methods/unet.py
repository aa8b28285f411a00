"""What the methods on ComfyUI's U-Net share: each block's and transformer layer's FLOPs, counted
by hooks on the first call of each conditioning group and kept for the rest of the run."""
from __future__ import annotations

import contextlib

BLOCK_FLOPS = "unet_block_flops"  # kept: {block name: FLOPs of one call}
UNIT_FLOPS = "unet_unit_flops"    # kept: [FLOPs of one call per transformer layer]


@contextlib.contextmanager
def counted_call(run, call, adapter):
    """Yields (block FLOPs, unit FLOPs) of this group's calls, or (None, None) on its first call,
    which is counted while it runs and then added to the step's stats as computed in full."""
    blocks = dict(adapter.blocks())
    block_flops = run.store.get(call.group, BLOCK_FLOPS)
    counted, handles = {}, []
    if block_flops is None:
        handles = adapter.flop_hooks({**blocks, **adapter.named_units()}, counted)
    try:
        yield block_flops, run.store.get(call.group, UNIT_FLOPS)
    finally:
        for handle in handles:
            handle.remove()
    if block_flops is None:
        block_flops = {name: counted.get(name, 0.0) for name in blocks}
        run.keep(call, BLOCK_FLOPS, block_flops)
        run.keep(call, UNIT_FLOPS, [counted.get(name, 0.0) for name in adapter.named_units()])
        stats = run.stats.at(call.step)
        stats.compute_full += sum(block_flops.values())
        stats.compute_done += sum(block_flops.values())
