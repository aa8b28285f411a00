"""Architecture adapters: how one block of a model family splits into cacheable units.

Adding a family is one adapter file and one line in ADAPTERS (or, for a
block-level family, one StackSpec in block_stack.SPECS).
"""
from __future__ import annotations

from typing import Optional

from .block_stack import BlockStackAdapter
from .flux import FluxAdapter

# Token-wise adapters first; the block-level one covers the families listed in block_stack.SPECS.
ADAPTERS = (FluxAdapter.for_model, BlockStackAdapter.for_model)


def find_adapter(diffusion_model) -> Optional[object]:
    for make in ADAPTERS:
        adapter = make(diffusion_model)
        if adapter is not None:
            return adapter
    return None
