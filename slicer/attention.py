"""Self-attention grouped with its projections, slice by slice, through the host's own module:
keys and values of every slice first, then each slice of queries attending to all of them
(docs/FEATURE_SLICER.md, "Self-attention").
"""
from __future__ import annotations

import torch

from ..adapters.units import own_forward, standing_in, submodule
from ..cache_core.chunking import attention_arguments, query_axis, slice_bounds

OVERRIDE_KEY = "optimized_attention_override"  # the host's attention hook in transformer_options
QUERY_BLOCK = 256  # slices are whole multiples of this many queries (attention kernels' query blocks)


class Unexpected(Exception):
    """The host's forward did not go as planned: compute this call plainly."""


def free_zeros(shape, like: torch.Tensor) -> torch.Tensor:
    """A tensor of zeros of `shape` that allocates nothing (a broadcast scalar)."""
    return torch.zeros((), dtype=like.dtype, device=like.device).expand(*shape)


def projection_stand_in(module):
    width = getattr(module, "out_features", None)

    def run(x, *args, **kwargs):
        return free_zeros((*x.shape[:-1], width or x.shape[-1]), x)
    return run


def same(x, *args, **kwargs):
    """Stand-in for a norm on a path whose result is thrown away (a norm of zeros is zeros)."""
    return x


def present(stand_ins: dict) -> dict:
    return {module: fn for module, fn in stand_ins.items() if module is not None}


def watched(module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def token_argument(args: tuple, kwargs: dict, position: int, name: str):
    """A per-token argument (rotary frequencies): by its position among the args after x, or its name."""
    return args[position] if position < len(args) else kwargs.get(name)


def token_axis(value, axes, length: int):
    """The axis along which a per-token argument holds its `length` tokens (None: it holds none).
    The argument is a tensor, or a tuple holding one (newer hosts pass LTXV's rotary frequencies as
    (matrix, flag), tokens on another axis): the first of `axes` (one axis or several) that fits."""
    if isinstance(value, (tuple, list)):
        value = next((v for v in value if isinstance(v, torch.Tensor)), None)
    if not isinstance(value, torch.Tensor):
        return None
    return next((axis for axis in (axes if isinstance(axes, tuple) else (axes,))
                 if value.ndim > axis and value.shape[axis] == length), None)


def narrow_tokens(value, axes, start: int, stop: int, length: int):
    """Tokens start:stop of a per-token argument (its tensors cut, anything else kept)."""
    axis = token_axis(value, axes, length)
    if isinstance(value, (tuple, list)):
        return type(value)(v.narrow(axis, start, stop - start) if isinstance(v, torch.Tensor) else v for v in value)
    return value.narrow(axis, start, stop - start)


def with_token_slice(args: tuple, kwargs: dict, token_args: tuple, start: int, stop: int, length: int):
    args, kwargs = list(args), dict(kwargs)
    for position, name, axes in token_args:
        if position < len(args):
            args[position] = narrow_tokens(args[position], axes, start, stop, length)
        elif name in kwargs:
            kwargs[name] = narrow_tokens(kwargs[name], axes, start, stop, length)
    return tuple(args), kwargs


def with_override(kwargs: dict, override) -> dict:
    options = kwargs.get("transformer_options")
    if not isinstance(options, dict):
        raise Unexpected()
    return {**kwargs, "transformer_options": {**options, OVERRIDE_KEY: override}}


class SelfAttentionParts:
    """One self-attention module (rule: adapters.slicing.SliceRule with `children` = (query, key,
    value, output) paths, `norms` = (query, key) norm paths and `token_args`), run one token
    slice at a time. Built before any stand-in is set, so `forward` is the host's."""

    def __init__(self, module, rule):
        self.module, self.rule = module, rule
        self.forward = own_forward(module)
        self.q, self.k, self.v, self.o = (submodule(module, path) for path in rule.children)
        self.q_norm, self.k_norm = (submodule(module, path) for path in rule.norms) if rule.norms else (None, None)

    def fits(self, x, args: tuple, kwargs: dict) -> bool:
        """Whether a call with these arguments can run in slices (else: call it plainly)."""
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or kwargs.get("context") is not None:
            return False
        for position, name, axes in self.rule.token_args:
            if token_axis(token_argument(args, kwargs, position, name), axes, x.shape[1]) is None:
                return False
        if not isinstance(kwargs.get("transformer_options"), dict):
            return False
        return not any(watched(m) for m in (self.q, self.k, self.v, self.o, self.q_norm, self.k_norm)
                       if m is not None)

    def keys(self, x, args: tuple, kwargs: dict):
        """(keys, values) of the tokens of `x`, as the host's attention kernel would receive them."""
        kept = {}

        def keep(func, *a, **kw):
            bound = attention_arguments(func, a, kw)
            if bound is None or query_axis(bound) != (1, 1) or kept:
                raise Unexpected()
            kept["k"], kept["v"] = bound.arguments["k"], bound.arguments["v"]
            return free_zeros(kept["v"].shape, kept["v"])

        with standing_in(present({self.q: projection_stand_in(self.q), self.o: same, self.q_norm: same})):
            self.forward(x, *args, **with_override(kwargs, keep))
        if "k" not in kept or kept["k"].shape[1] != x.shape[1]:
            raise Unexpected()
        return kept["k"], kept["v"]

    def attend(self, x, args: tuple, kwargs: dict, keys, values):
        """The module's output for the tokens of `x`, their queries attending to `keys`, `values`."""
        outer = kwargs["transformer_options"].get(OVERRIDE_KEY)
        if getattr(outer, "slices_queries", False):  # ours: these queries are a slice already
            outer = outer.previous
        calls = []

        def attend(func, *a, **kw):
            bound = attention_arguments(func, a, kw)
            if bound is None or query_axis(bound)[0] != 1 or calls:
                raise Unexpected()
            calls.append(1)
            bound.arguments["k"], bound.arguments["v"] = keys, values
            if outer is not None:
                return outer(func, *bound.args, **bound.kwargs)
            return func(*bound.args, **bound.kwargs)

        with standing_in(present({self.k: projection_stand_in(self.k), self.v: projection_stand_in(self.v),
                                  self.k_norm: same})):
            out = self.forward(x, *args, **with_override(kwargs, attend))
        if not calls or not isinstance(out, torch.Tensor) or out.shape[1] != x.shape[1]:
            raise Unexpected()
        return out


def into(buffer, part: torch.Tensor, start: int, length: int):
    """Copy `part` into rows [start, start + len) of `buffer` (allocated like `part`, `length` rows)."""
    if buffer is None:
        buffer = part.new_empty((part.shape[0], length, *part.shape[2:]))
    buffer.narrow(1, start, part.shape[1]).copy_(part)
    return buffer


def memoized(forward):
    """`forward` of one tensor, computed once per input tensor (same storage, shape and layout)."""
    seen = {}

    def run(x, *args, **kwargs):
        if args or kwargs or not isinstance(x, torch.Tensor):
            return forward(x, *args, **kwargs)
        key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype, x.device)
        if key not in seen:
            seen[key] = forward(x)
        return seen[key]
    run.feature_slicer = True
    return run


def context_memos(projections) -> dict:
    """Projections of a context that every slice passes whole: computed once for all slices.
    A projection someone watches with hooks or stands in for is left alone."""
    return {child: memoized(own_forward(child)) for child in projections
            if not watched(child) and "forward" not in child.__dict__}


def grouped_self_attention(module, rule, settings):
    """The module-level stand-in for one self-attention module: both passes over slices of its input."""
    parts = SelfAttentionParts(module, rule)

    def plain(x, *args, **kwargs):
        return parts.forward(x, *args, **kwargs)

    def run(x, *args, **kwargs):
        if not parts.fits(x, args, kwargs):
            return plain(x, *args, **kwargs)
        length = x.shape[1]
        chunks = settings.chunks(length, 6 * x.shape[-1] * x.element_size(), x.numel() * x.element_size(),
                                 settings.min_tokens)
        if chunks <= 1:
            return plain(x, *args, **kwargs)
        bounds = slice_bounds(length, chunks, QUERY_BLOCK)
        try:
            keys = values = None
            for start, stop in bounds:
                a, kw = with_token_slice(args, kwargs, rule.token_args, start, stop, length)
                k, v = parts.keys(x.narrow(1, start, stop - start), a, kw)
                keys, values = into(keys, k, start, length), into(values, v, start, length)
                del k, v
            out = None
            for start, stop in bounds:
                a, kw = with_token_slice(args, kwargs, rule.token_args, start, stop, length)
                out = into(out, parts.attend(x.narrow(1, start, stop - start), a, kw, keys, values), start, length)
        except Unexpected:
            return plain(x, *args, **kwargs)
        settings.stats.add("self_attention", chunks)
        return out
    run.feature_slicer = True
    return run
