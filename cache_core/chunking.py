"""Chunked execution for memory (Streamlined Inference's Feature Slicer + Operator Grouping).

An operator that treats the items along one axis independently (token-wise layers
over tokens, per-frame layers over batch x frames, temporal layers over space)
gives the same result when run slice by slice. Running a group of consecutive
such operators one slice at a time keeps their intermediates slice-sized; the
slices' outputs are written into one preallocated tensor, so no second full-size
copy is made by concatenating.

Pure torch: the host glue passes in free memory and the callables.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable, Optional

import torch

AUTO = "auto"
MIN_SLICE = 64  # items per slice in automatic mode: smaller slices cost speed for little memory


def parse_chunks(value) -> Optional[int]:
    """The node's `chunks` input: "auto" (None) or a whole number >= 1."""
    if value is None or (isinstance(value, str) and value.strip().lower() == AUTO):
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        number = 0
    if number < 1 or str(number) != str(value).strip():
        raise ValueError(f"chunks must be 'auto' or a whole number >= 1, got {value!r}")
    return number


def plan_chunks(length: int, bytes_per_item: float, budget_bytes: float, requested: Optional[int] = None,
                min_slice: int = MIN_SLICE) -> int:
    """How many slices to cut `length` items into.

    `requested` (a user setting) wins, capped at `length`. Otherwise: enough slices that
    one slice's transient memory (`bytes_per_item` each) fits in `budget_bytes`, but no
    slice shorter than `min_slice` items.
    """
    if length <= 1:
        return 1
    if requested is not None:
        return max(1, min(int(requested), length))
    if budget_bytes <= 0:
        needed = length
    else:
        needed = math.ceil(length * max(bytes_per_item, 0.0) / budget_bytes)
    most = max(1, length // max(min_slice, 1))
    return max(1, min(needed, most))


def slice_bounds(length: int, chunks: int, align: int = 1) -> list:
    """At most `chunks` contiguous (start, stop) ranges covering range(length).

    Sizes differ by at most one item; with `align` > 1 and slices at least that long,
    every slice but the last is a multiple of `align` items instead (attention kernels
    work in blocks of queries: a slice of 256 + 4 queries costs two passes over the keys).
    """
    if length <= 0:
        return [(0, 0)]
    chunks = max(1, min(chunks, length))
    even = -(-length // chunks)
    if align > 1 and even >= align:
        size = -(-even // align) * align
        return [(start, min(start + size, length)) for start in range(0, length, size)]
    base, extra = divmod(length, chunks)
    bounds, start = [], 0
    for i in range(chunks):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def narrow(value, axis: int, start: int, stop: int, length: int):
    """`value` cut to [start, stop) along `axis` if it is a tensor that spans `length` items
    there; tensors that broadcast (size 1) or don't span the axis, and non-tensors, unchanged."""
    if not isinstance(value, torch.Tensor) or value.ndim == 0:
        return value
    dim = axis if axis >= 0 else value.ndim + axis
    if dim < 0 or dim >= value.ndim or value.shape[dim] != length:
        return value
    return value.narrow(dim, start, stop - start)


def run_sliced(fn: Callable, x: torch.Tensor, axis: int, chunks: int, *args, sliced_args=(), sliced_kwargs=(),
               align: int = 1, **kwargs) -> torch.Tensor:
    """`fn(x, *args, **kwargs)` computed slice by slice along `axis` of `x`.

    The positional args at indices in `sliced_args` and the kwargs named in `sliced_kwargs`
    are cut along the same axis when they span it (per-token modulation, per-frame
    embeddings); everything else is passed whole. The output must have `x`'s length along
    `axis`; slices are written into one preallocated output.
    """
    length = x.shape[axis]
    bounds = slice_bounds(length, chunks, align)
    if len(bounds) == 1:
        return fn(x, *args, **kwargs)
    out = None
    for start, stop in bounds:
        part_args = [narrow(a, axis, start, stop, length) if i in sliced_args else a for i, a in enumerate(args)]
        part_kwargs = {k: narrow(v, axis, start, stop, length) if k in sliced_kwargs else v
                       for k, v in kwargs.items()}
        part = fn(x.narrow(axis, start, stop - start), *part_args, **part_kwargs)
        if not isinstance(part, torch.Tensor) or part.ndim <= (axis % x.ndim) \
                or part.shape[axis] != stop - start:
            raise ValueError(f"a sliced operator must keep its input's length along axis {axis}; "
                             f"got {type(part).__name__} {tuple(getattr(part, 'shape', ()))}")
        if out is None:
            shape = list(part.shape)
            shape[axis] = length
            out = part.new_empty(shape)
        out.narrow(axis, start, stop - start).copy_(part)
        del part
    return out


# --- attention over slices of queries (or of the batch) ----------------------------------
def attention_arguments(func: Callable, args: tuple, kwargs: dict) -> Optional[inspect.BoundArguments]:
    """The call's arguments bound to `func`'s names (None if they don't fit it)."""
    try:
        bound = inspect.signature(func).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return None
    names = list(bound.signature.parameters)
    if names[:4] != ["q", "k", "v", "heads"]:
        return None
    return bound


def query_axis(bound: inspect.BoundArguments) -> tuple:
    """(axis of queries in q, axis of queries in the output) for the host's two layouts:
    [batch, tokens, heads*dim] or, with skip_reshape / skip_output_reshape, [batch, heads, tokens, dim]."""
    params = bound.arguments
    extra = {}
    for name, parameter in bound.signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            extra = params.get(name, {})
    skip_in = params.get("skip_reshape", extra.get("skip_reshape", False))
    skip_out = params.get("skip_output_reshape", extra.get("skip_output_reshape", False))
    return (2 if skip_in else 1), (2 if skip_out else 1)


def sliced_attention(func: Callable, args: tuple, kwargs: dict, chunks: int, call: Optional[Callable] = None,
                     align: int = 1):
    """Attention `func(q, k, v, heads, ...)` computed over slices of the queries, each slice's
    output written into one preallocated output (in the layout the caller asked for, so no
    full-size reshape copy is made). Every query attends to all keys: the result equals the
    unsliced call up to float reassociation. `call(func, *args, **kwargs)` runs one slice
    (default: `func` itself). Falls back to one unsliced call when the arguments don't fit.
    """
    run = call or (lambda f, *a, **kw: f(*a, **kw))
    bound = attention_arguments(func, args, kwargs)
    if bound is None or chunks <= 1:
        return run(func, *args, **kwargs)
    q = bound.arguments["q"]
    q_axis, out_axis = query_axis(bound)
    if not isinstance(q, torch.Tensor) or q.ndim <= q_axis:
        return run(func, *args, **kwargs)
    length = q.shape[q_axis]
    mask = bound.arguments.get("mask")
    if isinstance(mask, torch.Tensor) and mask.ndim >= 2 and mask.shape[-2] not in (1, length):
        return run(func, *args, **kwargs)  # a mask layout we don't know how to cut
    bounds = slice_bounds(length, chunks, align)
    if len(bounds) == 1:
        return run(func, *args, **kwargs)
    out = None
    for start, stop in bounds:
        bound.arguments["q"] = q.narrow(q_axis, start, stop - start)
        if isinstance(mask, torch.Tensor) and mask.ndim >= 2 and mask.shape[-2] == length and length > 1:
            bound.arguments["mask"] = mask.narrow(mask.ndim - 2, start, stop - start)
        part = run(func, *bound.args, **bound.kwargs)
        if out is None:
            if not isinstance(part, torch.Tensor) or part.ndim <= out_axis or part.shape[out_axis] != stop - start:
                bound.arguments["q"], bound.arguments["mask"] = q, mask
                return run(func, *bound.args, **bound.kwargs)  # an output layout we don't know
            shape = list(part.shape)
            shape[out_axis] = length
            out = part.new_empty(shape)
        out.narrow(out_axis, start, stop - start).copy_(part)
        del part
    return out


def attention_bytes_per_query(q: torch.Tensor, k: torch.Tensor, heads: int, q_axis: int,
                              materializes_scores: bool) -> float:
    """Transient bytes one query costs in an attention call: its output row (twice: the
    kernel's layout and the caller's), plus its row of scores if the kernel materializes them."""
    if q.ndim <= q_axis:
        return 0.0
    length = q.shape[q_axis]
    per_query = 2.0 * q.numel() / max(length, 1) * q.element_size()
    if materializes_scores and k.ndim > q_axis:
        batch = q.shape[0]
        per_query += batch * heads * k.shape[q_axis] * max(q.element_size(), 4)
    return per_query
