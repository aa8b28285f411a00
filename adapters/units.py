"""Token-wise caching inside the host's own block forward, for blocks built as
`x += gate * attention(...)` then `x += gate * mlp(...)` (Wan, LTXV and alike).

On a full step, forward hooks on the block's units record their outputs and the
value projection's norm score. On a conservative step the host's block forward
runs as usual, with fresh modulation, norms and gates, while its heavy units are
stood in for during that one call:
- an attention unit returns its output from the last full step;
- an MLP unit (token-wise by nature) recomputes the picked tokens through the
  host's own module and returns the cached rows for all others.
The stand-in is an instance-level `forward` set for the duration of the block
call and removed in `finally`; nothing of the block's forward is copied.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..cache_core.tokens import TokenRows, value_norm_score


@dataclass(frozen=True)
class UnitSpec:
    """Submodules of one block, by attribute path."""
    reused: tuple          # attention units: output reused on conservative steps
    tokenwise: tuple       # MLP units: picked tokens recomputed, the rest reused
    value: str             # a Linear whose output holds the value vectors (V-caching score)
    heads: str = "num_heads"  # block attribute (or path) giving the head count


def submodule(root: torch.nn.Module, path: str):
    module = root
    for part in path.split("."):
        module = getattr(module, part)
    return module


def optional_submodule(root: torch.nn.Module, path: str):
    """The submodule at `path`, or None where this block has none (a model variant without it)."""
    try:
        return submodule(root, path)
    except AttributeError:
        return None


@contextlib.contextmanager
def standing_in(replacements: dict):
    """Run `module` as `fn` (module -> fn, where fn receives the module's call arguments)
    inside the block; the module's own forward (or an earlier instance-level one) is back
    afterwards, also on errors."""
    saved = {}
    try:
        for module, fn in replacements.items():
            saved[module] = module.__dict__.get("forward")
            module.forward = fn
        yield
    finally:
        for module, previous in saved.items():
            if previous is None:
                del module.forward
            else:
                module.forward = previous


def own_forward(module):
    """The module's forward as it was before any stand-in of ours."""
    return module.__dict__.get("forward") or type(module).forward.__get__(module)


def copied(tensor: torch.Tensor) -> torch.Tensor:
    """What a recording keeps of a tensor: a copy (a host block may change it in place later)."""
    return tensor.detach().clone()


@contextlib.contextmanager
def recording(outputs: dict, inputs: dict = None):
    """Record what modules return (or receive) while the host's code runs: every adapter's one
    recorder. `outputs` / `inputs` map a name to `(module, keep)`; `keep` turns the tensor into
    what is stored under the name, at once (a copy, a small score, a shape)."""
    seen, handles = {}, []
    try:
        for name, (module, keep) in outputs.items():
            handles.append(module.register_forward_hook(
                lambda _m, _args, out, name=name, keep=keep: seen.__setitem__(name, keep(out))))
        for name, (module, keep) in (inputs or {}).items():
            handles.append(module.register_forward_pre_hook(
                lambda _m, args, name=name, keep=keep: seen.__setitem__(name, keep(args[0]))))
        yield seen
    finally:
        for h in handles:
            h.remove()


def unit_outputs(block, spec: UnitSpec, heads: int, stream: str) -> dict:
    """What a full step records of a block's units (for `recording`): each unit's output, and
    the value projection's norm score (V-caching) under "<stream>_score"."""
    found = {path: (submodule(block, path), copied) for path in spec.reused + spec.tokenwise}
    found[f"{stream}_score"] = (submodule(block, spec.value), lambda out: value_score(out, heads))
    return found


def value_score(values: torch.Tensor, heads: int) -> torch.Tensor:
    """V-caching's token score from a value projection's output [batch, tokens, width]."""
    b, t, width = values.shape
    return value_norm_score(values.reshape(b, t, heads, width // heads).transpose(1, 2))


def conservative_units(block, spec: UnitSpec, cache: dict, picks: TokenRows) -> dict:
    """Stand-ins for one conservative block call (see standing_in)."""
    def reuse(path):
        return lambda *args, **kwargs: cache[path]

    stand_ins = {submodule(block, p): reuse(p) for p in spec.reused}
    stand_ins.update({submodule(block, p): token_refresh(submodule(block, p), cache, p, picks) for p in spec.tokenwise})
    return stand_ins


def token_refresh(module, cache: dict, name: str, picks: TokenRows):
    """An MLP stand-in: the picked tokens through the host's module, the cached rows for the rest."""
    forward = own_forward(module)

    def run(x, *args, **kwargs):
        rows = cache[name]
        if picks.count > 0:
            picks.put(rows, forward(picks.take(x), *args, **kwargs))
        return rows
    return run
