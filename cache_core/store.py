"""The per-run cache: tensors keyed by conditioning group and name, with byte accounting.

A sampling run calls the model once per step for every group of conditionings
the sampler batches together (cond and uncond together or apart, area conds,
several prompts). Each group has its own entries, so every conditioning has its own
entries. Tensors stay on the compute device unless offloading is asked for.
"""
from __future__ import annotations

from typing import Hashable, Optional

import torch

CACHE_DEVICES = ("compute", "cpu")  # where caches live: the compute device, or offloaded to RAM


class CacheStore:
    def __init__(self, offload_device: Optional[torch.device] = None):
        self.offload_device = offload_device
        self._entries: dict = {}

    @classmethod
    def on(cls, cache_device: str) -> "CacheStore":
        """A store for a `cache_device` setting (CACHE_DEVICES)."""
        return cls(offload_device=torch.device("cpu") if cache_device == "cpu" else None)

    def has(self, group: Hashable, name: Hashable) -> bool:
        return name in self._entries.get(group, {})

    def get(self, group: Hashable, name: Hashable, device=None):
        """A tensor, or a dict of tensors, moved to `device` if it was offloaded."""
        value = self._entries.get(group, {}).get(name)
        if value is not None and device is not None:
            value = _move(value, torch.device(device))
        return value

    def put(self, group: Hashable, name: Hashable, value) -> None:
        if self.offload_device is not None:
            value = _move(value, self.offload_device)
        self._entries.setdefault(group, {})[name] = value

    def append(self, group: Hashable, name: Hashable, value, keep_last: Optional[int] = None) -> None:
        """Add `value` to the list at `name`, keeping only its last `keep_last` entries (None: all)."""
        if self.offload_device is not None:
            value = _move(value, self.offload_device)
        entries = self._entries.setdefault(group, {})
        kept = entries.get(name, []) + [value]
        entries[name] = kept[-keep_last:] if keep_last else kept

    def nbytes(self) -> int:
        return sum(_nbytes(value) for entry in self._entries.values() for value in entry.values())

    def clear(self) -> None:
        self._entries.clear()


def _move(value, device: torch.device):
    if isinstance(value, dict):
        return {k: _move(v, device) for k, v in value.items()}
    if type(value) in (list, tuple):  # an estimator's (sigma, value) points
        return type(value)(_move(v, device) for v in value)
    if isinstance(value, torch.Tensor) and value.device != device:
        return value.to(device, non_blocking=device.type != "cpu")
    return value


def _nbytes(value) -> int:
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if type(value) in (list, tuple):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    return 0
