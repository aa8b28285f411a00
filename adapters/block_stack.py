"""Block-level adapters: families whose blocks run through `patches_replace["dit"]`
but whose units this pack cannot yet split token by token.

Aggressive steps work for every such family: the whole block stack is skipped
and its residual from the last computed step is added. Conservative steps are
computed fully (the run says so in its stats). One `StackSpec` per family.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import BlockStack
from ..cache_core.tokens import TokenLayout


@dataclass(frozen=True)
class StackSpec:
    family: str
    model_classes: tuple      # class names of the diffusion model this spec describes
    block_lists: tuple        # (patch kind, attribute holding the block list), in run order
    outputs: tuple = ("img",)  # keys of a block's output dict; "img" carries the residual


SPECS = (
    StackSpec("wan", ("WanModel", "VaceWanModel", "CameraWanModel", "HumoWanModel"), (("double_block", "blocks"),)),
    StackSpec("ltxv", ("LTXVModel",), (("double_block", "transformer_blocks"),)),
    StackSpec("qwen-image", ("QwenImageTransformer2DModel",), (("double_block", "transformer_blocks"),),
              ("img", "txt")),
    StackSpec("sd3", ("OpenAISignatureMMDITWrapper", "MMDiT"), (("double_block", "joint_blocks"),), ("img", "txt")),
    StackSpec("mochi", ("AsymmDiTJoint",), (("double_block", "blocks"),), ("img", "txt")),
)


class BlockStackAdapter(BlockStack):
    level = "block"
    tokenwise = False

    def __init__(self, diffusion_model, spec: StackSpec):
        self.spec = spec
        self.family = spec.family
        self.blocks = {}
        self.keys = []
        for kind, attribute in spec.block_lists:
            for i, block in enumerate(getattr(diffusion_model, attribute)):
                self.blocks[(kind, i)] = block
                self.keys.append((kind, i))
        self._params = {id(b): sum(p.numel() for p in b.parameters()) for b in self.blocks.values()}
        self._width = getattr(diffusion_model, "dim", None) or getattr(diffusion_model, "hidden_size", 0)

    @classmethod
    def for_model(cls, diffusion_model):
        name = type(diffusion_model).__name__
        for spec in SPECS:
            if name in spec.model_classes and all(hasattr(diffusion_model, a) for _, a in spec.block_lists):
                return cls(diffusion_model, spec)
        return None

    def block(self, kind, index):
        return self.blocks[(kind, index)]

    @staticmethod
    def grid(x: torch.Tensor) -> tuple:
        return ()  # token positions only matter for token-wise refresh

    @staticmethod
    def stack_state(kind, io: dict) -> torch.Tensor:
        return io["img"]

    @staticmethod
    def from_stack_state(kind, state: torch.Tensor, like: dict) -> dict:
        return {**like, "img": state}

    def passthrough(self, kind, args: dict) -> dict:
        return {key: args[key] for key in self.spec.outputs}

    @staticmethod
    def streams(kind, args, grid, txt_len) -> dict:
        return {"img": TokenLayout(0, (), args["img"].shape[1])}

    @staticmethod
    def full(kind, block, args, original, record):
        return original(args), None

    def flops_full(self, kind, block, streams) -> float:
        """Two FLOPs per parameter and token, plus self-attention's score and value products."""
        tokens = sum(s.total for s in streams.values())
        return 2 * self._params[id(block)] * tokens + 4 * tokens * tokens * self._width

    @staticmethod
    def stream_factor(kind, config) -> float:
        return 1.0
