"""A whole transformer block run slice by slice over its tokens, through the host's own forward:
up to its self-attention on each slice for all keys and values, then the whole block per slice
(docs/FEATURE_SLICER.md, "Whole blocks").
"""
from __future__ import annotations

import functools
import inspect

import torch

from ..adapters.slicing import BLOCK, BlockRule
from ..adapters.units import optional_submodule, own_forward, standing_in, submodule
from ..cache_core.chunking import slice_bounds
from .attention import (QUERY_BLOCK, SelfAttentionParts, Unexpected, context_memos, into, narrow_tokens, token_axis,
                        watched)

# A slice runs every matrix product of the block: below about a thousand rows they lose efficiency
# (weight packing on CPUs, weight reads on GPUs), which costs more time than the memory is worth.
BLOCK_MIN_TOKENS = 1024


class KeysKept(Exception):
    """Stops the block's forward once its self-attention has given its keys and values."""

    def __init__(self, keys, values):
        super().__init__()
        self.keys, self.values = keys, values


def others_at_work(block) -> bool:
    """Another method's stand-in or hook on a module inside the block (its result would be a whole-block one)."""
    for module in block.modules():
        if module is block:
            continue
        forward = module.__dict__.get("forward")
        if watched(module) or (forward is not None and not getattr(forward, "feature_slicer", False)):
            return True
    return False


def row_tokens(bound: dict, rule: BlockRule, length: int):
    """Tokens per modulation row (1: per token or a single row), or None if the rows don't divide the tokens."""
    unit = 1
    for name, axis, ndim in rule.row_args:
        value = bound.get(name)
        if not isinstance(value, torch.Tensor) or value.ndim != ndim or value.shape[axis] == 1:
            continue
        rows = value.shape[axis]
        if length % rows:
            return None
        unit = max(unit, length // rows)
    return unit


def slices_of(bound: dict, x_name: str, rule: BlockRule, length: int):
    """A function (start, stop) -> the block's arguments for those tokens."""
    def cut(start, stop):
        part = dict(bound)
        part[x_name] = bound[x_name].narrow(1, start, stop - start)
        for name, axes in rule.token_args:
            part[name] = narrow_tokens(bound[name], axes, start, stop, length)
        for name, axis, ndim in rule.row_args:
            value = bound.get(name)
            if isinstance(value, torch.Tensor) and value.ndim == ndim and value.shape[axis] > 1:
                rows = value.shape[axis]  # slices are whole rows: these divisions are exact
                first, last = start * rows // length, stop * rows // length
                part[name] = value.narrow(axis, first, last - first)
        return part
    return cut


def uncut_token_tensor(arguments: dict, names: set, length: int) -> bool:
    """An argument of the tokens' length along axis 1 that the rule doesn't know how to cut."""
    return any(isinstance(v, torch.Tensor) and v.ndim > 1 and v.shape[1] == length
               for k, v in arguments.items() if k not in names)


@functools.lru_cache(maxsize=64)
def method_signature(function) -> inspect.Signature:
    """A block class's forward signature without `self`, computed once (stand-ins are made every call)."""
    signature = inspect.signature(function)
    return signature.replace(parameters=list(signature.parameters.values())[1:])


def forward_signature(forward) -> inspect.Signature:
    function = getattr(forward, "__func__", None)  # a bound method: the class's own forward
    return method_signature(function) if function is not None else inspect.signature(forward)


def named_arguments(signature: inspect.Signature, args: tuple, kwargs: dict):
    """The call's arguments by name (extra keywords of a `**kwargs` forward flattened in), or None
    for a call this can't re-issue by name (extra positional arguments)."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    arguments = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                return None
        elif kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(value)
        elif kind is inspect.Parameter.POSITIONAL_ONLY:
            return None
        else:
            arguments[name] = value
    return arguments


def grouped_block(block, rule: BlockRule, settings):
    forward = own_forward(block)
    signature = forward_signature(forward)
    x_name = next(iter(signature.parameters))  # the tokens: the forward's first argument
    attention_module = submodule(block, rule.attention.path)
    attention = SelfAttentionParts(attention_module, rule.attention)
    projections = [child for child in (optional_submodule(block, path) for path in rule.context_projections)
                   if child is not None]

    def run(*args, **kwargs):
        arguments = named_arguments(signature, args, kwargs)
        x = arguments.get(x_name) if arguments is not None else None
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or others_at_work(block):
            return forward(*args, **kwargs)
        length = x.shape[1]
        known = {x_name} | {name for name, _ in rule.token_args} | {name for name, _, _ in rule.row_args}
        tokens_ok = all(token_axis(arguments.get(name), axes, length) is not None for name, axes in rule.token_args)
        unit = row_tokens(arguments, rule, length)
        if not tokens_ok or unit is None or uncut_token_tensor(arguments, known, length):
            return forward(*args, **kwargs)
        row_bytes = x.numel() // length * x.element_size()
        budget = x.numel() * x.element_size() / 2  # a slice's transients: well under one full tensor
        chunks = settings.chunks(length, 6 * row_bytes, budget, max(settings.min_tokens, BLOCK_MIN_TOKENS))
        if unit > 1:
            bounds = [(a * unit, b * unit) for a, b in slice_bounds(length // unit, chunks)]
        else:
            bounds = slice_bounds(length, chunks, QUERY_BLOCK)
        if len(bounds) <= 1:
            return forward(*args, **kwargs)
        cut = slices_of(arguments, x_name, rule, length)
        try:
            keys, values = keys_of(cut, bounds, length)
        except Unexpected:
            return forward(*args, **kwargs)
        try:
            with settings.nested(budget), standing_in(context_memos(projections)):
                out = rest_of(x, cut, bounds, keys, values)
        except Unexpected:  # nothing written into the input yet (rest_of says so otherwise)
            return forward(*args, **kwargs)
        settings.stats.add(BLOCK, len(bounds))
        return out

    def keys_of(cut, bounds, length):
        def capture(x, *a, **kw):
            if not attention.fits(x, a, kw):
                raise Unexpected()
            raise KeysKept(*attention.keys(x, a, kw))

        keys = values = None
        with standing_in({attention_module: capture}):
            for start, stop in bounds:
                try:
                    forward(**cut(start, stop))
                except KeysKept as kept:
                    keys, values = into(keys, kept.keys, start, length), into(values, kept.values, start, length)
                    del kept
                else:  # the block never reached its self-attention
                    raise Unexpected()
        return keys, values

    def rest_of(x, cut, bounds, keys, values):
        def attend(q, *a, **kw):
            if not attention.fits(q, a, kw):
                raise Unexpected()
            return attention.attend(q, a, kw, keys, values)

        out, in_place = None, None
        with standing_in({attention_module: attend}):
            for start, stop in bounds:
                part_args = cut(start, stop)
                rows = part_args[x_name]
                try:
                    part = forward(**part_args)
                except Unexpected:
                    if in_place:  # the input holds finished rows already: no plain rerun possible
                        raise RuntimeError("feature slicer: a block that updates its input in place "
                                           "changed its course between slices") from None
                    raise
                if not isinstance(part, torch.Tensor) or part.ndim != 3 or part.shape[1] != stop - start:
                    if in_place:
                        raise RuntimeError(f"feature slicer: {type(block).__name__} returned "
                                           f"{tuple(getattr(part, 'shape', ()))} for {stop - start} tokens")
                    raise Unexpected()  # not a block of the kind the rule describes: run it plainly
                if in_place is None:  # the host's block returns its own input, updated (LTXV)
                    in_place = part.data_ptr() == rows.data_ptr() and part.stride() == rows.stride()
                if in_place:
                    if part.data_ptr() != rows.data_ptr():
                        rows.copy_(part)
                else:
                    out = into(out, part, start, x.shape[1])
                del part
        return x if in_place else out

    run.feature_slicer = True
    return run

