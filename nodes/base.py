"""What the pack's model-patching nodes share: category, output, the step window inputs
and the hidden node id their run statistics are shown on."""
from __future__ import annotations

CATEGORY = "DuCa Accelerate"

STEP_WINDOW_INPUTS = {
    "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                      "Fraction of the sampling steps after which caching may begin."}),
    "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                    "Fraction of the sampling steps after which every step is computed again."}),
}
HIDDEN_INPUTS = {"unique_id": "UNIQUE_ID"}  # the node the run's stats are shown on


class ModelPatchNode:
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "apply"
