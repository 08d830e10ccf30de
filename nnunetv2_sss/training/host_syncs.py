"""Counting the device-to-host round-trips of a training step.

A read of a tensor's value on the host (``item()``, ``tolist()``, ``numpy()``, ``cpu()``, or
``bool()`` / ``float()`` / ``int()`` of a tensor, e.g. ``if torch.isfinite(loss):``) makes the host wait
for the GPU. On CUDA, ``torch.cuda.set_sync_debug_mode('warn')`` reports each such call; on the CPU,
where nothing waits, :class:`HostSyncCounter` counts the calls that would. A value read again from a
tensor the host already holds (the result of an earlier ``cpu()``) is not counted twice, and reads
made inside ``torch.optim`` are not counted: the optimisers' step counters live on the host unless
they run ``capturable`` / ``fused`` (a CPU run cannot tell a host tensor from a device tensor).
"""
from __future__ import annotations

import sys
import weakref
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode

HOST_READS = {'item', 'tolist', 'numpy', 'cpu', '__bool__', '__float__', '__int__', '__index__'}


def _called_from_optimizer() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_globals.get('__name__', '').startswith('torch.optim'):
            return True
        frame = frame.f_back
    return False


class HostSyncCounter(TorchFunctionMode):
    """While active, counts host reads of tensor values (``count``; ``by_call``: per method name)."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.by_call = Counter()
        self._on_host = {}  # id -> weak reference of the results of cpu(): already on the host

    def _held_by_host(self, tensor: torch.Tensor) -> bool:
        reference = self._on_host.get(id(tensor))
        return reference is not None and reference() is tensor

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        name = getattr(func, '__name__', '')
        if name in HOST_READS and args and torch.is_tensor(args[0]) and not self._held_by_host(args[0]) \
                and not _called_from_optimizer():
            self.count += 1
            self.by_call[name] += 1
        if name == 'cpu' and torch.is_tensor(result):
            key = id(result)
            self._on_host[key] = weakref.ref(result, lambda _, key=key: self._on_host.pop(key, None))
        return result
