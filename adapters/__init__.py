"""Architecture adapters: how one block of a model family splits into cacheable units.

Adding a family is one adapter file and one line in ADAPTERS.
"""
from __future__ import annotations

from typing import Optional

from .flux import FluxAdapter

ADAPTERS = (FluxAdapter,)


def find_adapter(diffusion_model) -> Optional[object]:
    for adapter_class in ADAPTERS:
        if adapter_class.matches(diffusion_model):
            return adapter_class(diffusion_model)
    return None
