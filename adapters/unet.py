"""ComfyUI's U-Net (UNetModel: SD1.x, SD2.x, SDXL and their fine-tunes) as units: its blocks in the
order `_forward` runs them, which of them a DeepCache branch computes, its transformer layers (the
units schedules decide on), and hooks that record block outputs and count FLOPs. The host's
`_forward` always runs unchanged; methods stand in for layers during a call (docs/METHODS.md).
"""
from __future__ import annotations

import math

import torch

from .base import FamilyAdapter
from .units import copied

KEPT_FEATURE = "kept_feature"  # where a full call's recording keeps the deep feature

# ComfyUI's U-Net class and Forge's (the same layout: input, middle and output blocks of ResBlocks and
# SpatialTransformers, as in the original latent-diffusion code)
UNET_CLASSES = ("UNetModel", "IntegratedUNet2DConditionModel")
TRANSFORMER_CLASSES = ("SpatialTransformer",)  # subclasses (SpatialVideoTransformer) match too


def is_transformer_unit(layer) -> bool:
    return any(cls.__name__ in TRANSFORMER_CLASSES for cls in type(layer).__mro__)


class UNetAdapter(FamilyAdapter):
    level = "deepcache"

    def __init__(self, diffusion_model):
        self.block_ids = []  # no `patches_replace["dit"]` blocks: methods work around the model call
        self.inputs = list(diffusion_model.input_blocks)
        self.middle = diffusion_model.middle_block
        self.outputs = list(diffusion_model.output_blocks)
        self.variant = _variant(diffusion_model)
        # the transformer layers, in run order: the units a schedule decides on
        self.units = [layer for _, block in self.blocks() for layer in block if is_transformer_unit(layer)]

    @classmethod
    def for_model(cls, diffusion_model):
        if type(diffusion_model).__name__ not in UNET_CLASSES:
            return None
        if not all(hasattr(diffusion_model, a) for a in ("input_blocks", "middle_block", "output_blocks")):
            return None
        inputs, outputs = diffusion_model.input_blocks, diffusion_model.output_blocks
        if len(inputs) < 2 or len(inputs) != len(outputs) or any(len(b) == 0 for b in list(inputs) + list(outputs)):
            return None  # a layout whose skips don't pair one to one: not the U-Net this knows
        return cls(diffusion_model)

    # --- settings ------------------------------------------------------------
    @property
    def max_branch(self) -> int:
        """The deepest valid branch: with branch N-1 only the middle block is reused."""
        return len(self.inputs) - (1 if self.middle is not None else 2)

    def check_branch(self, branch: int, name: str = "cache_depth") -> None:
        if not 0 <= branch <= self.max_branch:
            raise ValueError(f"{name} must be in [0, {self.max_branch}] for this U-Net ({len(self.inputs)} input "
                             f"blocks; 0 reuses the most), got {branch}")

    # --- schedules ---------------------------------------------------------------
    def schedule_units(self) -> list:
        return [f"transformer.{i}" for i in range(len(self.units))]

    def named_units(self) -> dict:
        return {("transformer", i): unit for i, unit in enumerate(self.units)}

    # --- which block does what -------------------------------------------------
    def blocks(self):
        """(name, block) in the order `_forward` runs them; name is (kind, index)."""
        named = [(("input", i), b) for i, b in enumerate(self.inputs)]
        if self.middle is not None:
            named.append((("middle", 0), self.middle))
        return named + [(("output", j), b) for j, b in enumerate(self.outputs)]

    def layout(self, branch: int):
        """(computed block names, skipped block names, the block whose output is the feature)."""
        n = len(self.inputs)
        feature = ("middle", 0) if branch == n - 1 else ("output", n - 2 - branch)
        computed = [("input", i) for i in range(branch + 1)] + [("output", j) for j in range(n - 1 - branch, n)]
        skipped = [name for name, _ in self.blocks() if name not in computed]
        return computed, skipped, feature

    # --- hooks ---------------------------------------------------------------------
    @staticmethod
    def block_outputs(blocks, kept_block) -> dict:
        """What a full call records of the blocks (for units.recording): each block's output (shape,
        dtype, device) under its name, and a copy of `kept_block`'s under KEPT_FEATURE (the host
        adds residuals to it in place)."""
        def shape_of(out):
            return tuple(out.shape), out.dtype, out.device
        found = {name: (list(block)[-1], shape_of) for name, block in blocks.items()}
        found[KEPT_FEATURE] = (list(blocks[kept_block])[-1], copied)
        return found

    @staticmethod
    def flop_hooks(blocks, counted) -> list:
        """Forward hooks adding each block's FLOPs (2 x multiply-adds) of convolutions, linear
        layers and attention's two matrix products (from its q, k and v projections)."""
        handles = []

        def add(name, value):
            counted[name] = counted.get(name, 0.0) + float(value)

        for name, block in blocks.items():
            for module in block.modules():
                if isinstance(module, torch.nn.modules.conv._ConvNd):
                    per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
                    handles.append(module.register_forward_hook(
                        lambda _m, _a, out, name=name, k=per_output: add(name, 2 * out.numel() * k)))
                elif isinstance(module, torch.nn.Linear):
                    handles.append(module.register_forward_hook(
                        lambda m, _a, out, name=name: add(name, 2 * out.numel() * m.in_features)))
                elif all(isinstance(getattr(module, p, None), torch.nn.Linear) for p in ("to_q", "to_k", "to_v")):
                    handles += _attention_hooks(module, lambda value, name=name: add(name, value))
        return handles


def _attention_hooks(attention, add) -> list:
    """q [B, N, dq], k [B, M, dq], v [B, M, dv]: q k^T and the weighted sum of v cost
    2 B N M (dq + dv) FLOPs, whatever attention kernel the host picks."""
    shapes = {}

    def keep(part):
        return lambda _m, _a, out: shapes.__setitem__(part, tuple(out.shape))

    def count(_m, _a, _out):
        if {"to_q", "to_k", "to_v"} <= set(shapes):
            q, k, v = shapes["to_q"], shapes["to_k"], shapes["to_v"]
            add(2 * math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1]))
        shapes.clear()
    handles = [getattr(attention, p).register_forward_hook(keep(p)) for p in ("to_q", "to_k", "to_v")]
    return handles + [attention.register_forward_hook(count)]


def _variant(diffusion_model) -> str:
    """For the log: SDXL-like (label embedding from pooled text), SD2-like, SD1-like, or ""."""
    if getattr(diffusion_model, "num_classes", None) == "sequential":
        return "SDXL-like"
    for module in diffusion_model.modules():
        attn2 = getattr(module, "attn2", None)
        to_k = getattr(attn2, "to_k", None)
        if isinstance(to_k, torch.nn.Linear):
            return {768: "SD1-like", 1024: "SD2-like"}.get(to_k.in_features, "")
    return ""
