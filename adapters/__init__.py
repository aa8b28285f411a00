"""Architecture adapters: how one block of a model family splits into cacheable units.

Adding a family is one adapter file and one line in ADAPTERS (or one StackSpec
in block_stack.SPECS, or one class name in step_level.STEP_LEVEL_CLASSES).
"""
from __future__ import annotations

from typing import Optional

from .aura import AuraFlowAdapter
from .block_stack import BlockStackAdapter
from .flux import FluxAdapter
from .step_level import StepAdapter
from .unet import UNetAdapter

# Most specific first: Flux-built models, the families of block_stack.SPECS, then those
# reused a whole step at a time (step_level.STEP_LEVEL_CLASSES).
ADAPTERS = (FluxAdapter.for_model, BlockStackAdapter.for_model, AuraFlowAdapter.for_model, StepAdapter.for_model,
            UNetAdapter.for_model)


def find_adapter(diffusion_model) -> Optional[object]:
    for make in ADAPTERS:
        adapter = make(diffusion_model)
        if adapter is not None:
            return adapter
    return None
