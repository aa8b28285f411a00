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


class UnitRecorder:
    """Forward hooks recording unit outputs (and the value score) while a full step runs."""

    def __init__(self, block, spec: UnitSpec, heads: int):
        self.block, self.spec, self.heads = block, spec, heads

    @contextlib.contextmanager
    def recording(self, stream: str):
        seen, handles = {}, []

        def keep(name):
            return lambda _m, _args, out: seen.__setitem__(name, out.detach().clone())

        def score(_m, _args, out):
            b, t, width = out.shape
            v = out.reshape(b, t, self.heads, width // self.heads).transpose(1, 2)
            seen[f"{stream}_score"] = value_norm_score(v)
        try:
            for path in self.spec.reused + self.spec.tokenwise:
                handles.append(submodule(self.block, path).register_forward_hook(keep(path)))
            handles.append(submodule(self.block, self.spec.value).register_forward_hook(score))
            yield seen
        finally:
            for h in handles:
                h.remove()


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
