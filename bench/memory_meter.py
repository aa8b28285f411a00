"""Peak activation memory of a piece of code, on any device.

On CUDA the allocator keeps the figure (`torch.cuda.max_memory_allocated`). On the
CPU nothing does, so `LiveTensorMeter` counts it itself: a TorchDispatchMode sees
every tensor an operator returns; a tensor that owns new storage adds its bytes
(once per storage, views share it), and the bytes are taken off again when the
last tensor object on that storage is freed. Storage that existed before the
meter started (weights, inputs) is never counted, so the figure is the peak of
what the measured code allocated on top of what was already there.
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveTensorMeter(TorchDispatchMode):
    """`with LiveTensorMeter() as meter: ...` then `meter.peak_bytes` (and `meter.live_bytes`)."""

    def __init__(self):
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._owners = {}  # storage key -> [bytes, live tensor objects on it]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        aliasing = any(r.alias_info is not None for r in func._schema.returns)
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._track(tensor, fresh=not aliasing)
        return out

    def _track(self, tensor: torch.Tensor, fresh: bool) -> None:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        size = storage.nbytes()
        if size == 0:
            return
        key = (storage.data_ptr(), tensor.device)
        owner = self._owners.get(key)
        if owner is None:
            if not fresh:  # a view of storage made before the meter started: not ours
                return
            owner = self._owners[key] = [size, 0]
            self.live_bytes += size
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        owner[1] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key) -> None:
        owner = self._owners.get(key)
        if owner is None:
            return
        owner[1] -= 1
        if owner[1] <= 0:
            del self._owners[key]
            self.live_bytes -= owner[0]


class PeakMemory:
    """Peak bytes allocated inside the block on `device`, above what was allocated at its start.

    CUDA: the allocator's own peak counter. CPU: LiveTensorMeter (see above).
    """

    def __init__(self, device=None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.peak_bytes = 0
        self._meter = None
        self._start = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._meter = LiveTensorMeter().__enter__()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._start
        else:
            self._meter.__exit__(*exc)
            self.peak_bytes = self._meter.peak_bytes
        return False
