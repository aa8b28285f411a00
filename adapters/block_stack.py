"""Families whose blocks run through `patches_replace["dit"]`, one `StackSpec` each.

Aggressive steps work for every such family: the whole block stack is skipped
and its residual from the last computed step is added. Where the spec names the
block's units (units.UnitSpec), conservative steps are token-wise; otherwise they
are computed fully and the run's stats say the level was "block".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .base import BlockView, FamilyAdapter, PairedState
from .units import UnitSpec, conservative_units, recording, standing_in, submodule, unit_outputs
from ..cache_core.tokens import TokenLayout


@dataclass(frozen=True)
class StackSpec:
    block_lists: tuple        # (patch kind, attribute holding the block list), in run order
    outputs: tuple = ("img",)  # keys of a block's output dict; "img" carries the residual
    units: Optional[UnitSpec] = None  # token-wise conservative steps; None: block level
    patch: tuple = (1, 2, 2)  # latent cells per token along (frames,) height, width
    carried: tuple = ("img",)  # outputs the model's result is read from: the stack's residual spans them
    view: Optional[BlockView] = None  # where the host's block arguments are laid out otherwise


# Wan: self-attention and cross-attention reused, the FFN refreshed per token.
WAN_UNITS = UnitSpec(reused=("self_attn", "cross_attn"), tokenwise=("ffn",), value="self_attn.v")
LTXV_UNITS = UnitSpec(reused=("attn1", "attn2"), tokenwise=("ff",), value="attn1.to_v", heads="attn1.heads")

WAN = StackSpec((("double_block", "blocks"),), units=WAN_UNITS)
LTXV = StackSpec((("double_block", "transformer_blocks"),), units=LTXV_UNITS, patch=(1, 1, 1))
QWEN_IMAGE = StackSpec((("double_block", "transformer_blocks"),), ("img", "txt"))
SD3 = StackSpec((("double_block", "joint_blocks"),), ("img", "txt"))
MOCHI = StackSpec((("double_block", "blocks"),), ("img", "txt"))
# LTX-2 (ComfyUI's LTXAVModel): each block updates a video and an audio stream, both read out.
LTXAV = StackSpec((("double_block", "transformer_blocks"),), ("img", "audio"), patch=(1, 1, 1),
                  carried=("img", "audio"), view=PairedState("audio"))
# Wan Animate 2: Wan's block arguments; its blocks' attention is not a unit a stand-in reaches.
WAN_ANIMATE2 = StackSpec((("double_block", "blocks"),))
# Blocks of one packed sequence (MiniMax-H3: video, audio and text segments in one "img").
PACKED = StackSpec((("double_block", "blocks"),))


class BlockStackAdapter(FamilyAdapter):
    def __init__(self, diffusion_model, spec: StackSpec):
        self.spec = spec
        self.view = spec.view
        self.tokenwise = spec.units is not None
        self.level = "token-wise" if self.tokenwise else "block"
        self.blocks = {}
        self.block_ids = []
        for kind, attribute in spec.block_lists:
            for i, block in enumerate(getattr(diffusion_model, attribute)):
                self.blocks[(kind, i)] = block
                self.block_ids.append((kind, i))
        self._params = {id(b): sum(p.numel() for p in b.parameters()) for b in self.blocks.values()}
        self._width = getattr(diffusion_model, "dim", None) or getattr(diffusion_model, "hidden_size", 0)
        if self.tokenwise:  # parameters of the units a conservative step recomputes, per block
            self._tokenwise_params = {id(b): sum(p.numel() for path in spec.units.tokenwise
                                                 for p in submodule(b, path).parameters())
                                      for b in self.blocks.values()}

    @classmethod
    def for_model(cls, diffusion_model, spec: StackSpec):
        """An adapter if the model has the spec's block lists (the registry matched its class)."""
        return cls(diffusion_model, spec) if all(hasattr(diffusion_model, a) for _, a in spec.block_lists) else None

    def block(self, kind, index):
        return self.blocks[(kind, index)]

    def grid(self, x: torch.Tensor) -> tuple:
        """The token grid of the model input x [batch, channels, (frames,) height, width]."""
        if not self.tokenwise:
            return ()  # token positions only matter for token-wise refresh
        sizes = x.shape[2:]
        patch = self.spec.patch[-len(sizes):]
        return tuple(math.ceil(n / p) for n, p in zip(sizes, patch))

    def stack_state(self, kind, io: dict) -> torch.Tensor:
        """What the stack carries, as one tensor (several streams: each flattened, side by side)."""
        if len(self.spec.carried) == 1:
            return io["img"]
        return torch.cat([io[key].flatten(1) for key in self.spec.carried], dim=1)

    def from_stack_state(self, kind, state: torch.Tensor, like: dict) -> dict:
        if len(self.spec.carried) == 1:
            return {**like, "img": state}
        out, start = dict(like), 0
        for key in self.spec.carried:
            size = like[key][0].numel()
            out[key] = state[:, start:start + size].reshape(like[key].shape)
            start += size
        return out

    def passthrough(self, kind, args: dict) -> dict:
        return {key: args[key] for key in self.spec.outputs}

    @staticmethod
    def streams(kind, args, grid, txt_len) -> dict:
        tokens = args["img"].shape[-2]  # [batch, tokens, width]; a packed sequence has no batch axis
        if math.prod(grid) > tokens:  # not the layout this spec expects: no spatial terms
            grid = ()
        return {"img": TokenLayout(0, grid, tokens)}

    def full(self, kind, block, args, original, keep_units):
        if not keep_units:
            return original(args), None
        heads = submodule(block, self.spec.units.heads)
        with recording(unit_outputs(block, self.spec.units, heads, "img")) as seen:
            out = original(args)
        return out, seen

    def conservative(self, kind, block, args, cache, picks, original) -> dict:
        with standing_in(conservative_units(block, self.spec.units, cache, picks["img"])):
            return original(args)

    def flops_full(self, kind, block, streams) -> float:
        """Two FLOPs per parameter and token, plus self-attention's score and value products."""
        tokens = sum(s.total for s in streams.values())
        return 2 * self._params[id(block)] * tokens + 4 * tokens * tokens * self._width

    def flops_conservative(self, kind, block, picked: dict) -> float:
        return 2 * self._tokenwise_params[id(block)] * sum(picked.values())

    @staticmethod
    def stream_factor(kind, config) -> float:
        return 1.0
