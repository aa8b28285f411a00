"""Slicing one operator at a time: the per-call settings, the stand-ins for MLPs, cross-attention,
ResBlocks and temporal blocks, the query-slicing attention override, and MemoryAdapter, which
finds a model's sliceable modules by its family's rules (docs/FEATURE_SLICER.md).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..adapters.registry import family_of
from ..adapters.slicing import BLOCK, CROSS_ATTENTION, MLP, SELF_ATTENTION, TEMPORAL, MemorySpec, SliceRule
from ..adapters.units import optional_submodule, own_forward, standing_in
from ..cache_core.chunking import (attention_bytes_per_query, plan_chunks, query_axis, attention_arguments,
                                   run_sliced, sliced_attention)
from .attention import QUERY_BLOCK, context_memos, grouped_self_attention
from .block import grouped_block

MIN_TOKENS = 256  # automatic slices never go below this many tokens (matmul efficiency)
NESTED_MIN_TOKENS = 512  # ... nor, inside a block's slice, below this many (the block is sliced already)
TOKEN_BLOCK = 64   # token slices of the other operators: whole multiples of this
# kernels that hold a full [queries x keys] score matrix (the others stream over keys)
SCORE_MATERIALIZING = ("attention_basic",)

def slicing_spec(diffusion_model) -> Optional[MemorySpec]:
    """The slicing rules of the model's family (the registry's), or None where it has none."""
    family = family_of(diffusion_model)
    return family.slicing if family is not None else None


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
        spec = slicing_spec(diffusion_model)
        if spec is None:
            return None
        adapter = cls(diffusion_model, spec)
        return adapter if adapter.targets or spec.attention else None

    def stand_ins(self, settings: SliceSettings) -> dict:
        # a module another method already stands in for (DeepCache's reused blocks) is left to it:
        # its stand-in need not be slice-independent
        return {module: stand_in(module, rule, settings)
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


def stand_in(module, rule, settings: SliceSettings):
    """The stand-in for `module` during one model call, by the kind of its rule."""
    if rule.kind == BLOCK:
        return grouped_block(module, rule, settings)
    if rule.inner:
        return inner_sliced(module, rule, settings)
    if rule.kind == SELF_ATTENTION:
        return grouped_self_attention(module, rule, settings)
    return sliced_forward(module, rule, settings)


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
