"""Which operators of each family may run slice by slice, and the stand-ins that do it
(Streamlined Inference's Feature Slicer + Operator Grouping, through the host's own modules).

A rule names a submodule of a block class and the axis along which its items are
independent:
- token-wise groups over the token axis (1): the MLP (Linear -> activation -> Linear:
  its hidden layer, 2.7-8x the model width, is the largest transient of a block) and
  cross-attention (projections, attention over the whole text, output projection;
  each query token is independent of the others);
- per-frame groups over the batch x frames axis (0): the U-Net's ResBlocks
  (GroupNorm -> conv -> embedding -> GroupNorm -> conv, per picture), and the spatial part of
  SVD's VideoResBlocks (the ResBlock `_forward` their own forward calls, stood in for during it);
- temporal groups over the batch x space axis (0) of SVD's temporal transformer blocks
  (SpatialVideoTransformer.time_stack, fed [(b s), frames, c]): the whole block per slice of
  positions, every slice keeping all frames (attention over frames mixes them), its
  time context cut with it; what runs inside a slice cuts only within the slice's budget;
- self-attention reads every token's key and value: it is grouped with its projections
  (memory_attention.py, keys first, then slices of queries), and its attention call runs
  over slices of queries through the host's `optimized_attention_override`;
- whole blocks (Wan, LTXV) group over the token axis: keys and values first, then the
  rest of the block slice by slice (memory_block.py). Their submodules keep their own
  rules for the calls the block runs plainly (another method at work on the block).

The stand-in of a module is an instance-level `forward` set for one model call and
removed in `finally` (units.standing_in); it calls the module's own forward on each
slice and writes the slices into one preallocated output. No forward is copied.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..cache_core.chunking import (attention_bytes_per_query, plan_chunks, query_axis, attention_arguments,
                                   run_sliced, sliced_attention)
from .memory_attention import QUERY_BLOCK, context_memos, grouped_self_attention
from .memory_block import BlockRule
from .units import optional_submodule, own_forward, standing_in, submodule

MLP, CROSS_ATTENTION, PER_PICTURE, SELF_ATTENTION = "mlp", "cross_attention", "per_picture", "self_attention"
TEMPORAL = "temporal"
MIN_TOKENS = 256  # automatic slices never go below this many tokens (matmul efficiency)
NESTED_MIN_TOKENS = 512  # ... nor, inside a block's slice, below this many (the block is sliced already)
TOKEN_BLOCK = 64   # token slices of the other operators: whole multiples of this
# kernels that hold a full [queries x keys] score matrix (the others stream over keys)
SCORE_MATERIALIZING = ("attention_basic",)


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
    token_args: tuple = ()   # SELF_ATTENTION: per-token args (rotary frequencies) as (position, name, axis)
    sliced_kwargs: tuple = ()  # kwargs cut along with the first input when they span the axis
    inner: str = ""          # a method the module's own forward calls: it is sliced instead, during that forward

    def stand_in(self, module, settings):
        """The stand-in for `module` during one model call (BlockRule has the same method)."""
        if self.inner:
            return inner_sliced(module, self, settings)
        if self.kind == SELF_ATTENTION:
            return grouped_self_attention(module, self, settings)
        return sliced_forward(module, self, settings)


@dataclass(frozen=True)
class MemorySpec:
    family: str
    model_classes: tuple     # class names of the diffusion model
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
LTXV_SELF_ATTENTION = SliceRule(("BasicTransformerBlock",), "attn1", SELF_ATTENTION,
                                children=("to_q", "to_k", "to_v", "to_out"), norms=("q_norm", "k_norm"),
                                token_args=((2, "pe", 2),))
CONTEXT_PROJECTIONS = ("to_k", "to_v")
# exact class names: subclasses (VACE, audio) take arguments of their own
WAN_BLOCK = BlockRule(("WanAttentionBlock",), WAN_SELF_ATTENTION, token_args=(("freqs", 1),),
                      row_args=(("e", 1, 4),),
                      context_projections=("cross_attn.k", "cross_attn.v", "cross_attn.k_img", "cross_attn.v_img"))
LTXV_BLOCK = BlockRule(("BasicTransformerBlock",), LTXV_SELF_ATTENTION, token_args=(("pe", 2),),
                       row_args=(("timestep", 1, 3),), context_projections=("attn2.to_k", "attn2.to_v"))

# SVD (UNetModel with temporal layers). A VideoResBlock's time_stack is a ResBlock with a 3D conv over
# frames and GroupNorm over frames and space: it can't be cut over space or frames, only over videos
# (the ResBlock rule above does that: its input is [b, c, t, h, w]).
SVD_RULES = (SliceRule(("SpatialVideoTransformer",), "time_stack.*", TEMPORAL, axis=0, sliced_kwargs=("context",)),
             SliceRule(("VideoResBlock",), "", PER_PICTURE, axis=0, sliced_args=(0,), inner="_forward"))

SPECS = (
    MemorySpec("wan", ("WanModel", "VaceWanModel", "CameraWanModel", "HumoWanModel"),
               (WAN_BLOCK, SliceRule(WAN_BLOCKS, "ffn", MLP), WAN_CROSS_ATTENTION, WAN_SELF_ATTENTION)),
    MemorySpec("hunyuan-video", ("HunyuanVideo",),
               (SliceRule(FLUX_DOUBLE, "img_mlp", MLP), SliceRule(FLUX_DOUBLE, "txt_mlp", MLP)),
               notes="single-stream blocks fuse their MLP into one projection with q/k/v: only their "
                     "attention is sliced"),
    MemorySpec("ltxv", ("LTXVModel",),
               (LTXV_BLOCK, SliceRule(("BasicTransformerBlock",), "ff", MLP),
                SliceRule(("BasicTransformerBlock",), "attn2", CROSS_ATTENTION, children=CONTEXT_PROJECTIONS),
                LTXV_SELF_ATTENTION)),
    MemorySpec("mochi", ("AsymmDiTJoint",),
               (SliceRule(("AsymmetricJointBlock",), "mlp_x", MLP),
                SliceRule(("AsymmetricJointBlock",), "mlp_y", MLP)),
               diffusion_wrapper=False),
    MemorySpec("sd-unet", ("UNetModel",),
               (SliceRule(UNET_BLOCKS, "ff", MLP),
                SliceRule(UNET_BLOCKS, "attn2", CROSS_ATTENTION, children=CONTEXT_PROJECTIONS),
                SliceRule(("ResBlock",), "", PER_PICTURE, axis=0, sliced_args=(0,)),
                *SVD_RULES)),
)


@dataclass
class SliceStats:
    """What one model call sliced: calls and slices per kind (the tests and the log read it)."""
    calls: dict = field(default_factory=dict)
    slices: dict = field(default_factory=dict)

    def add(self, kind: str, chunks: int) -> None:
        self.calls[kind] = self.calls.get(kind, 0) + 1
        self.slices[kind] = self.slices.get(kind, 0) + chunks

    def summary(self) -> str:
        parts = [f"{kind} {self.calls[kind]} calls in {self.slices[kind]} slices" for kind in sorted(self.calls)]
        return ", ".join(parts) or "nothing sliced"


@dataclass
class SliceSettings:
    """One model call's slicing: the user's chunk count (None: automatic) and the memory
    an automatic slice may use (free device memory, when the glue knows it)."""
    requested: Optional[int] = None
    free_bytes: Optional[float] = None
    stats: SliceStats = field(default_factory=SliceStats)
    min_tokens: int = MIN_TOKENS
    cap_bytes: Optional[float] = None  # inside a sliced block: its slices' budget

    def chunks(self, length: int, bytes_per_item: float, budget_bytes: float, min_slice: int) -> int:
        # automatic: one slice's transients within `budget_bytes` (a small multiple of the
        # sliced input, so they never outweigh what self-attention must hold whole: its input,
        # keys, values and output), and at most an eighth of free memory
        budget = float(budget_bytes)
        if self.free_bytes is not None:
            budget = min(budget, self.free_bytes / 8)
        if self.cap_bytes is not None:
            budget = min(budget, self.cap_bytes)
        return plan_chunks(length, bytes_per_item, budget, self.requested, min_slice)

    @contextlib.contextmanager
    def nested(self, budget_bytes: float):
        """Operators inside a block that is run in slices: the user's slice count applied to the
        block; inside a slice they cut themselves only where their transients pass its budget."""
        saved = self.requested, self.cap_bytes, self.min_tokens
        self.requested, self.cap_bytes = None, budget_bytes
        self.min_tokens = max(self.min_tokens, NESTED_MIN_TOKENS)
        try:
            yield
        finally:
            self.requested, self.cap_bytes, self.min_tokens = saved


def widest_output(module: torch.nn.Module) -> int:
    """The widest Linear output inside `module` (an MLP's hidden width)."""
    widths = [m.out_features for m in module.modules() if hasattr(m, "out_features")]
    return max(widths) if widths else 0


def item_bytes(kind: str, module, x: torch.Tensor, axis: int) -> float:
    """Transient bytes one item (token, or picture) costs inside the grouped operator."""
    per_item = x.numel() / max(x.shape[axis], 1) * x.element_size()
    if kind in (MLP, TEMPORAL):  # hidden layer before and after the activation (a temporal block's MLPs)
        width = x.shape[-1] if x.ndim else 1
        return per_item * 2 * max(widest_output(module), width) / max(width, 1)
    if kind == CROSS_ATTENTION:  # q, attention output (two layouts), output projection
        return per_item * 4
    return per_item * 3  # a ResBlock: normed/activated input, hidden, output


class MemoryAdapter:
    """The modules of one diffusion model that slice, and their stand-ins."""

    def __init__(self, diffusion_model, spec: MemorySpec):
        self.spec = spec
        self.family = spec.family
        self.targets = []  # (module, rule)
        seen = set()
        for block in diffusion_model.modules():
            name = type(block).__name__
            for rule in spec.rules:
                if name not in rule.block_classes:
                    continue
                try:
                    modules = submodules(block, rule.path)
                except AttributeError:
                    continue
                for module in modules:
                    if isinstance(module, torch.nn.Module) and id(module) not in seen:
                        seen.add(id(module))
                        self.targets.append((module, rule))

    @classmethod
    def for_model(cls, diffusion_model) -> Optional["MemoryAdapter"]:
        name = type(diffusion_model).__name__
        for spec in SPECS:
            if name in spec.model_classes:
                adapter = cls(diffusion_model, spec)
                return adapter if adapter.targets or spec.attention else None
        return None

    def stand_ins(self, settings: SliceSettings) -> dict:
        # a module another method already stands in for (DeepCache's reused blocks) is left to it:
        # its stand-in need not be slice-independent
        return {module: rule.stand_in(module, settings)
                for module, rule in self.targets if "forward" not in module.__dict__}

    def attention_override(self, settings: SliceSettings, previous=None):
        """An `optimized_attention_override` slicing the queries; chains to `previous`."""
        if not self.spec.attention:
            return previous

        def call(func, *args, **kwargs):
            if previous is not None:
                return previous(func, *args, **kwargs)
            return func(*args, **kwargs)

        def override(func, *args, **kwargs):
            bound = attention_arguments(func, args, kwargs)
            if bound is None:
                return call(func, *args, **kwargs)
            q, k, heads = bound.arguments["q"], bound.arguments["k"], bound.arguments["heads"]
            q_axis, _ = query_axis(bound)
            if not isinstance(q, torch.Tensor) or q.ndim <= q_axis:
                return call(func, *args, **kwargs)
            per_query = attention_bytes_per_query(q, k, int(heads), q_axis,
                                                  getattr(func, "__name__", "") in SCORE_MATERIALIZING)
            # slices of the output (and its copy in the caller's layout) up to the size of q
            chunks = settings.chunks(q.shape[q_axis], per_query, q.numel() * q.element_size(), settings.min_tokens)
            if chunks > 1:
                settings.stats.add("attention", chunks)
            return sliced_attention(func, args, kwargs, chunks, call=call, align=QUERY_BLOCK)
        override.slices_queries = True
        override.previous = previous  # what a hook that slices the queries itself calls instead
        return override


def sliced_forward(module, rule: SliceRule, settings: SliceSettings, forward=None):
    forward = forward or own_forward(module)

    def run(x, *args, **kwargs):
        if not isinstance(x, torch.Tensor) or x.ndim <= rule.axis:
            return forward(x, *args, **kwargs)
        if rule.kind == CROSS_ATTENTION and kwargs.get("context", args[0] if args else None) is None:
            return forward(x, *args, **kwargs)  # no context: it attends to itself, not token-wise
        length = x.shape[rule.axis]
        budget = 2 * x.numel() * x.element_size()
        chunks = settings.chunks(length, item_bytes(rule.kind, module, x, rule.axis), budget,
                                 min_items(rule, settings, x))
        if chunks <= 1:
            return forward(x, *args, **kwargs)
        settings.stats.add(rule.kind, chunks)
        with standing_in(cross_attention_memos(module, rule)), within_slices(rule, settings, budget):
            return run_sliced(forward, x, rule.axis, chunks, *args, sliced_args=rule.sliced_args,
                              sliced_kwargs=rule.sliced_kwargs, align=1 if rule.axis == 0 else TOKEN_BLOCK, **kwargs)
    run.feature_slicer = True
    return run


def min_items(rule: SliceRule, settings: SliceSettings, x: torch.Tensor) -> int:
    """The smallest automatic slice: min_tokens tokens, one picture, or (temporal) enough positions
    that a slice holds min_tokens rows of frames (matmul efficiency)."""
    if rule.kind == TEMPORAL:
        return max(1, -(-settings.min_tokens // max(x.shape[1], 1)))
    return 1 if rule.axis == 0 else settings.min_tokens


def within_slices(rule: SliceRule, settings: SliceSettings, budget: float):
    """Inside a temporal block's slice, the user's slice count must not cut its frames (its MLPs and
    attention over frames): they cut only where their transients pass the slice's budget."""
    return settings.nested(budget) if rule.kind == TEMPORAL else contextlib.nullcontext()


def inner_sliced(module, rule: SliceRule, settings: SliceSettings):
    """The module's own forward, with the method it calls (`rule.inner`) sliced for the call's duration:
    a VideoResBlock runs its spatial ResBlock part through `super().forward` -> `self._forward`, then
    its time_stack on whole videos. The instance-level method is removed afterwards, also on errors."""
    forward = own_forward(module)
    if not callable(getattr(module, rule.inner, None)):
        return forward  # a host whose forward calls no such method: it runs plainly
    sliced = sliced_forward(module, rule, settings, getattr(module, rule.inner))

    def run(*args, **kwargs):
        saved = module.__dict__.get(rule.inner)
        module.__dict__[rule.inner] = sliced
        try:
            return forward(*args, **kwargs)
        finally:
            if saved is None:
                del module.__dict__[rule.inner]
            else:
                module.__dict__[rule.inner] = saved
    run.feature_slicer = True
    return run


def submodules(block, path: str) -> list:
    """The modules at `path` in `block` (the block itself for ""); a `*` part stands for every child
    of a container (`time_stack.*`: each entry of a ModuleList)."""
    found = [block]
    for part in path.split(".") if path else ():
        found = [child for m in found for child in (m.children() if part == "*" else (getattr(m, part),))]
    return found


def cross_attention_memos(module, rule: SliceRule) -> dict:
    """Cross-attention: its projections of the context run once for all slices."""
    if rule.kind != CROSS_ATTENTION:
        return {}
    return context_memos([child for child in (optional_submodule(module, path) for path in rule.children)
                          if child is not None])


def find_memory_adapter(diffusion_model) -> Optional[MemoryAdapter]:
    return MemoryAdapter.for_model(diffusion_model) if diffusion_model is not None else None
