"""Families whose forward offers no block hook: whole-step reuse around the model call.

On an aggressive step the DIFFUSION_MODEL wrapper returns the model's output from
the last computed step of the same conditionings instead of calling the model;
conservative steps compute (the stats report level "step"). Compute is counted
in model calls.
"""
from __future__ import annotations

from .base import BlockStack

# Diffusion-model classes of the host with no `patches_replace["dit"]` in their forward.
STEP_LEVEL_CLASSES = {
    "NextDiT": "lumina2",                                # Lumina 2, Z-Image
    "HiDreamImageTransformer2DModel": "hidream",
    "GeneralDIT": "cosmos",                              # Cosmos 1
    "MiniTrainDIT": "cosmos-predict2",
    "OmniGen2Transformer2DModel": "omnigen2",
    "PixArtMS": "pixart",
}


class StepAdapter(BlockStack):
    level = "step"
    tokenwise = False
    step_level = True

    def __init__(self, family: str):
        self.family = family
        self.keys = []

    @classmethod
    def for_model(cls, diffusion_model):
        family = STEP_LEVEL_CLASSES.get(type(diffusion_model).__name__)
        return cls(family) if family else None

    @staticmethod
    def grid(x) -> tuple:
        return ()
