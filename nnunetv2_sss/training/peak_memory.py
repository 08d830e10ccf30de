"""The peak of live tensor bytes over a region of code, e.g. a whole training step: forward, backward with the
recomputation of checkpointed regions, clipping, optimiser step and EMA update.

:class:`LiveBytesTracker` is a ``TorchDispatchMode``: every op of the region (forward and backward ops, on any
device, also 'meta') passes through it. A storage that an op returns and that none of the op's inputs holds is
a new allocation: it counts with its size (``nbytes``) from that op until PyTorch frees it (a weak reference to
the storage, whose Python object lives exactly as long as the storage does, fires then). Views, in-place and
``out=`` results share a storage of the inputs and add nothing; a storage that grows (``resize_``) counts its
new size. ``peak`` is the largest number of counted bytes alive at once: what ``torch.cuda.max_memory_allocated``
reports for the same region on a GPU, less the bytes alive before it (:func:`resident_bytes`) and less the
caching allocator's rounding (blocks of 512 bytes) and the workspaces of cuDNN/cuBLAS that no tensor holds.

:func:`measure_train_step` measures a trainer's real ``train_step`` this way (``benchmarks/bench_memory.py``,
``tests/test_memory.py``); ``training/memory_estimate.py`` runs the same tracker over the step on the 'meta'
device to estimate it for any patch and batch size.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Dict, Iterable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_leaves

_ACTIVE: list = []  # LiveBytesTrackers in use, innermost last


def storage_id(tensor: torch.Tensor) -> int:
    """Identity of a tensor's storage (shared by its views)."""
    return tensor.untyped_storage()._cdata


def resident_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages of ``tensors`` (a storage shared by several tensors counts once)."""
    sizes: Dict[int, int] = {}
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor):
            storage = tensor.untyped_storage()
            sizes[storage._cdata] = storage.nbytes()
    return sum(sizes.values())


class LiveBytesTracker(TorchDispatchMode):
    """Context manager: ``peak`` (bytes) of the storages allocated inside it and alive at once (module docstring).

    device_type: count only storages on this device type ('cuda', 'cpu', 'meta'); None: every device.
    ``phase``: a label the caller sets (e.g. 'forward', 'backward', 'optimizer'); ``peak_phase`` is the label that
    was set when the peak was reached.
    """

    def __init__(self, device_type: Optional[str] = None):
        super().__init__()
        self.device_type = device_type
        self.current = 0
        self.peak = 0
        self.phase = ''
        self.peak_phase = ''
        self._live: Dict[int, list] = {}  # storage id -> [weak reference, counted bytes]
        self._lock = threading.Lock()

    def __enter__(self):
        _ACTIVE.append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        _ACTIVE.remove(self)
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        inputs = {storage_id(t) for t in tree_leaves((args, kwargs)) if _has_storage(t)}
        for tensor in tree_leaves(output):
            if _has_storage(tensor) and (self.device_type is None or tensor.device.type == self.device_type):
                self._count(tensor.untyped_storage(), inputs)
        return output

    def _count(self, storage, inputs: set) -> None:
        key, nbytes = storage._cdata, storage.nbytes()
        with self._lock:
            entry = self._live.get(key)
            if entry is None:
                if key in inputs:  # a view, in-place or out= result of a storage from before
                    return
                self._live[key] = [weakref.ref(storage, lambda _, key=key: self._release(key)), nbytes]
                self._add(nbytes)
            elif nbytes != entry[1]:  # resized
                self._add(nbytes - entry[1])
                entry[1] = nbytes

    def _release(self, key: int) -> None:
        with self._lock:
            entry = self._live.pop(key, None)
            if entry is not None:
                self.current -= entry[1]

    def _add(self, nbytes: int) -> None:
        self.current += nbytes
        if self.current > self.peak:
            self.peak, self.peak_phase = self.current, self.phase

    def set_phase(self, phase: str) -> None:
        self.phase = phase


def _has_storage(value) -> bool:
    return isinstance(value, torch.Tensor) and not value.is_sparse and not value.is_nested


def untracked():
    """A context in which no :class:`LiveBytesTracker` counts (a measurement's own extra work)."""
    return _disable_current_modes()


def set_phase(phase: str) -> None:
    """Label the active trackers' current phase (no-op without one)."""
    for tracker in _ACTIVE:
        tracker.set_phase(phase)


# ---- a trainer's real step ------------------------------------------------------------------------------------
@dataclass
class StepPeak:
    """Memory of one training step (bytes)."""
    resident: int   # alive before the step and kept through it: weights, buffers, optimizer state, teacher, batch
    live: int       # peak of what the step allocates (activations, gradients, temporaries) alive at once
    phase: str = ''  # where the peak was reached

    @property
    def peak(self) -> int:
        return self.resident + self.live


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list:
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def batch_tensors(batch) -> list:
    return [t for t in tree_leaves(batch) if isinstance(t, torch.Tensor)]


def step_resident_bytes(modules, optimizer, batch) -> int:
    """Weights and buffers of ``modules`` (student, teacher, extra networks), their gradients if any, the
    optimizer's state and the batch."""
    tensors = [t for m in modules for t in [*m.parameters(), *m.buffers()]]
    tensors += [p.grad for m in modules for p in m.parameters() if p.grad is not None]
    return resident_bytes(tensors + optimizer_state_tensors(optimizer) + batch_tensors(batch))


def use_foreach(optimizer: torch.optim.Optimizer) -> None:
    """The optimiser's multi-tensor implementation, PyTorch's default on CUDA (its update allocates a copy of all
    gradients at once; the per-parameter loop of the CPU one parameter's)."""
    for group in optimizer.param_groups:
        group['foreach'] = True


def measure_train_step(trainer, batch: dict) -> StepPeak:
    """Peak of one real ``trainer.train_step(batch)`` (nnU-Net's or a semi-supervised trainer's; pass the unlabeled
    batch as ``batch['unlabeled']``). Measured as the step runs on CUDA: a backward pass per loss part
    (``split_backward``) and the optimiser's multi-tensor update; gradients of an earlier step are dropped first
    (``train_step`` does that before its forward pass). Run a step before it for the optimiser's state."""
    from nnunetv2_sss.training.memory import trainer_modules
    if hasattr(trainer, 'split_backward'):
        trainer.split_backward = True
    use_foreach(trainer.optimizer)
    trainer.optimizer.zero_grad(set_to_none=True)
    resident = step_resident_bytes(trainer_modules(trainer), trainer.optimizer, batch)
    with LiveBytesTracker(trainer.device.type) as tracker:
        trainer.train_step(batch)
    return StepPeak(resident, tracker.peak, tracker.peak_phase)
