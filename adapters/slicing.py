"""Feature Slicer rules per family: which submodules of which blocks may run slice by slice,
and along which axis. Data only; the slicer/ package runs them (docs/FEATURE_SLICER.md).
Which diffusion model belongs to which family is the registry's business, not this file's.
"""
from __future__ import annotations

from dataclasses import dataclass

# operator kinds (also the keys of the slicer's per-call stats)
MLP, CROSS_ATTENTION, PER_PICTURE, SELF_ATTENTION = "mlp", "cross_attention", "per_picture", "self_attention"
TEMPORAL = "temporal"
BLOCK = "block"


@dataclass(frozen=True)
class SliceRule:
    block_classes: tuple     # class names of the blocks holding the submodule
    path: str                # attribute path of the submodule in the block
    kind: str                # MLP, CROSS_ATTENTION, PER_PICTURE, SELF_ATTENTION or TEMPORAL
    axis: int = 1            # axis of the first input whose items are independent
    sliced_args: tuple = ()  # positional args (after the first) cut along with it when they span the axis
    children: tuple = ()     # SELF_ATTENTION: paths of its query, key, value and output projections;
                             # CROSS_ATTENTION: its projections of the context (computed once per call)
    norms: tuple = ()        # SELF_ATTENTION: paths of its query and key norms
    token_args: tuple = ()   # SELF_ATTENTION: per-token args (rotary frequencies) as (position, name, axis or candidate axes)
    sliced_kwargs: tuple = ()  # kwargs cut along with the first input when they span the axis
    inner: str = ""          # a method the module's own forward calls: it is sliced instead, during that forward


@dataclass(frozen=True)
class BlockRule:
    block_classes: tuple     # class names of the blocks (exact: subclasses add arguments of their own)
    attention: SliceRule     # its self-attention (path from the block)
    token_args: tuple = ()   # (name, axis or candidate axes): per-token arguments (rotary frequencies)
    row_args: tuple = ()     # (name, axis, ndim): per-row modulation, cut when it has `ndim` dims and rows
    context_projections: tuple = ()  # paths of projections of the context: computed once for all slices
    path: str = ""           # the rule applies to the block itself
    kind: str = BLOCK


@dataclass(frozen=True)
class MemorySpec:
    family: str
    rules: tuple
    attention: bool = True   # slice self-attention calls over queries (the host's override hook)
    diffusion_wrapper: bool = True  # the model's forward runs the DIFFUSION_MODEL wrappers
    notes: str = ""


WAN_BLOCKS = ("WanAttentionBlock", "VaceWanAttentionBlock")
FLUX_DOUBLE = ("DoubleStreamBlock",)
UNET_BLOCKS = ("BasicTransformerBlock",)

WAN_SELF_ATTENTION = SliceRule(WAN_BLOCKS, "self_attn", SELF_ATTENTION, children=("q", "k", "v", "o"),
                               norms=("norm_q", "norm_k"), token_args=((0, "freqs", 1),))
WAN_CROSS_ATTENTION = SliceRule(WAN_BLOCKS, "cross_attn", CROSS_ATTENTION, children=("k", "v", "k_img", "v_img"))
# LTXV's rotary frequencies hold the tokens on axis 2 (ComfyUI 0.3.75: one tensor) or axis 1 (newer
# hosts: a (rotation matrix, split flag) tuple)
LTXV_PE_AXES = (2, 1)
LTXV_SELF_ATTENTION = SliceRule(("BasicTransformerBlock",), "attn1", SELF_ATTENTION,
                                children=("to_q", "to_k", "to_v", "to_out"), norms=("q_norm", "k_norm"),
                                token_args=((2, "pe", LTXV_PE_AXES),))
CONTEXT_PROJECTIONS = ("to_k", "to_v")
# exact class names: subclasses (VACE, audio) take arguments of their own
WAN_BLOCK = BlockRule(("WanAttentionBlock",), WAN_SELF_ATTENTION, token_args=(("freqs", 1),),
                      row_args=(("e", 1, 4),),
                      context_projections=("cross_attn.k", "cross_attn.v", "cross_attn.k_img", "cross_attn.v_img"))
LTXV_BLOCK = BlockRule(("BasicTransformerBlock",), LTXV_SELF_ATTENTION, token_args=(("pe", LTXV_PE_AXES),),
                       row_args=(("timestep", 1, 3),), context_projections=("attn2.to_k", "attn2.to_v"))

# SVD (UNetModel with temporal layers). A VideoResBlock's time_stack is a ResBlock with a 3D conv over
# frames and GroupNorm over frames and space: it can't be cut over space or frames, only over videos
# (the ResBlock rule of UNET does that: its input is [b, c, t, h, w]).
SVD_RULES = (SliceRule(("SpatialVideoTransformer",), "time_stack.*", TEMPORAL, axis=0, sliced_kwargs=("context",)),
             SliceRule(("VideoResBlock",), "", PER_PICTURE, axis=0, sliced_args=(0,), inner="_forward"))

# A block rule's submodules keep rules of their own: for the calls the block runs plainly
# (another method at work on the block).
WAN = MemorySpec("wan", (WAN_BLOCK, SliceRule(WAN_BLOCKS, "ffn", MLP), WAN_CROSS_ATTENTION, WAN_SELF_ATTENTION))
HUNYUAN_VIDEO = MemorySpec("hunyuan-video",
                           (SliceRule(FLUX_DOUBLE, "img_mlp", MLP), SliceRule(FLUX_DOUBLE, "txt_mlp", MLP)),
                           notes="single-stream blocks fuse their MLP into one projection with q/k/v: only their "
                                 "attention is sliced")
LTXV = MemorySpec("ltxv", (LTXV_BLOCK, SliceRule(("BasicTransformerBlock",), "ff", MLP),
                           SliceRule(("BasicTransformerBlock",), "attn2", CROSS_ATTENTION,
                                     children=CONTEXT_PROJECTIONS),
                           LTXV_SELF_ATTENTION))
MOCHI = MemorySpec("mochi", (SliceRule(("AsymmetricJointBlock",), "mlp_x", MLP),
                             SliceRule(("AsymmetricJointBlock",), "mlp_y", MLP)),
                   diffusion_wrapper=False)
UNET = MemorySpec("unet", (SliceRule(UNET_BLOCKS, "ff", MLP),
                           SliceRule(UNET_BLOCKS, "attn2", CROSS_ATTENTION, children=CONTEXT_PROJECTIONS),
                           SliceRule(("ResBlock",), "", PER_PICTURE, axis=0, sliced_args=(0,)),
                           *SVD_RULES))
