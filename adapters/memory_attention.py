"""Self-attention grouped with its projections, slice by slice, through the host's own module.

Self-attention needs every token's key and value, but its query path (projection, norm,
rotary embedding in float32, attention, output projection) is token-wise. The host's
attention forward is run twice per slice of tokens, with the slice's rotary frequencies:
1. keys: its query projection (and norm) and output projection stand in as free
   stand-ins (a broadcast zero, no memory), and the attention hook keeps the slice's keys
   and values in two full tensors instead of attending;
2. queries: its key and value projections (and key norm) are free stand-ins, and the attention
   hook attends the slice's queries to the kept keys and values; the output projection's
   slice goes into one preallocated output.
So no full-size query, rotary temporary or attention output exists: the peak inside is
input + keys + values + output. The attention forward itself is the host's, not a copy.

It falls back to one plain call (with the query-slicing hook) whenever the forward does
something this does not expect: no per-token frequencies, a context (cross-attention),
hooks on the projections (another method watching them), or not exactly one attention
call per slice.
"""
from __future__ import annotations

import torch

from ..cache_core.chunking import attention_arguments, query_axis, slice_bounds
from .units import own_forward, standing_in, submodule

OVERRIDE_KEY = "optimized_attention_override"  # the host's attention hook in transformer_options
QUERY_BLOCK = 256  # slices are whole multiples of this many queries (attention kernels' query blocks)


class Unexpected(Exception):
    """The host's attention forward did not go as planned: compute this call plainly."""


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


def unused(stand_ins: dict) -> dict:
    return {module: fn for module, fn in stand_ins.items() if module is not None}


def watched(module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def token_argument(args: tuple, kwargs: dict, position: int, name: str):
    """A per-token argument (rotary frequencies): by its position among the args after x, or its name."""
    return args[position] if position < len(args) else kwargs.get(name)


def with_token_slice(args: tuple, kwargs: dict, token_args: tuple, start: int, stop: int):
    args, kwargs = list(args), dict(kwargs)
    for position, name, axis in token_args:
        if position < len(args):
            args[position] = args[position].narrow(axis, start, stop - start)
        elif name in kwargs:
            kwargs[name] = kwargs[name].narrow(axis, start, stop - start)
    return tuple(args), kwargs


def grouped_self_attention(module, rule, settings):
    """The stand-in for one self-attention module (rule: adapters.memory.SliceRule with
    `children` = (query, key, value, output) paths and `token_args` = ((position, name, axis), ...))."""
    forward = own_forward(module)
    q_mod, k_mod, v_mod, o_mod = (submodule(module, path) for path in rule.children)
    q_norm, k_norm = (submodule(module, path) for path in rule.norms) if rule.norms else (None, None)

    def plain(x, *args, **kwargs):
        return forward(x, *args, **kwargs)

    def run(x, *args, **kwargs):
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or kwargs.get("context") is not None:
            return plain(x, *args, **kwargs)
        length = x.shape[1]
        for position, name, axis in rule.token_args:
            value = token_argument(args, kwargs, position, name)
            if not isinstance(value, torch.Tensor) or value.ndim <= axis or value.shape[axis] != length:
                return plain(x, *args, **kwargs)
        if any(watched(m) for m in (q_mod, k_mod, v_mod, o_mod, q_norm, k_norm) if m is not None):
            return plain(x, *args, **kwargs)
        chunks = settings.chunks(length, 6 * x.shape[-1] * x.element_size(), x.numel() * x.element_size(),
                                 settings.min_tokens)
        if chunks <= 1:
            return plain(x, *args, **kwargs)
        options = kwargs.get("transformer_options")
        if not isinstance(options, dict):
            return plain(x, *args, **kwargs)
        try:
            out = two_passes(x, args, kwargs, options, chunks)
        except Unexpected:
            return plain(x, *args, **kwargs)
        settings.stats.add("self_attention", chunks)
        return out

    def two_passes(x, args, kwargs, options, chunks):
        length = x.shape[1]
        bounds = slice_bounds(length, chunks, QUERY_BLOCK)
        kept = {}

        def keep(func, *a, **kw):
            bound = attention_arguments(func, a, kw)
            if bound is None or query_axis(bound) != (1, 1) or "k" in kept.get("slice", {}):
                raise Unexpected()
            k, v = bound.arguments["k"], bound.arguments["v"]
            kept["slice"] = {"k": k, "v": v}
            return free_zeros(v.shape, v)

        keys = values = None
        with standing_in(unused({q_mod: projection_stand_in(q_mod), o_mod: same, q_norm: same})):
            for start, stop in bounds:
                kept["slice"] = {}
                a, kw = with_token_slice(args, kwargs, rule.token_args, start, stop)
                kw["transformer_options"] = {**options, OVERRIDE_KEY: keep}
                forward(x.narrow(1, start, stop - start), *a, **kw)
                part = kept["slice"]
                if "k" not in part or part["k"].shape[1] != stop - start:
                    raise Unexpected()
                if keys is None:
                    keys = part["k"].new_empty((x.shape[0], length, *part["k"].shape[2:]))
                    values = part["v"].new_empty((x.shape[0], length, *part["v"].shape[2:]))
                keys.narrow(1, start, stop - start).copy_(part["k"])
                values.narrow(1, start, stop - start).copy_(part["v"])
                del part
        kept.clear()

        outer = options.get(OVERRIDE_KEY)
        if getattr(outer, "slices_queries", False):  # ours: these queries are a slice already
            outer = outer.previous
        calls = []

        def attend(func, *a, **kw):
            bound = attention_arguments(func, a, kw)
            if bound is None or query_axis(bound)[0] != 1:
                raise Unexpected()
            calls.append(1)
            bound.arguments["k"], bound.arguments["v"] = keys, values
            if outer is not None:
                return outer(func, *bound.args, **bound.kwargs)
            return func(*bound.args, **bound.kwargs)

        out = None
        with standing_in(unused({k_mod: projection_stand_in(k_mod), v_mod: projection_stand_in(v_mod),
                                 k_norm: same})):
            for start, stop in bounds:
                a, kw = with_token_slice(args, kwargs, rule.token_args, start, stop)
                kw["transformer_options"] = {**options, OVERRIDE_KEY: attend}
                part = forward(x.narrow(1, start, stop - start), *a, **kw)
                if len(calls) != 1 or not isinstance(part, torch.Tensor) or part.shape[1] != stop - start:
                    raise Unexpected()
                calls.clear()
                if out is None:
                    out = part.new_empty((x.shape[0], length, *part.shape[2:]))
                out.narrow(1, start, stop - start).copy_(part)
                del part
        return out
    return run
