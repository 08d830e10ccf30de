"""Activation memory of a training step: the peak of bytes saved for backward alive at once.

:class:`SavedTensorTracker` pushes ``torch.autograd.graph.saved_tensors_hooks``: every tensor autograd
saves for a backward pass goes through its pack hook, which counts the tensor's storage once (views and
repeated saves of one storage count once) unless the storage belongs to a parameter or buffer of the
modules it was given, and hands autograd a small handle. Autograd drops the handle when it frees the
saved tensor (after the node's backward, or when the graph is dropped), and the storage stops counting
when its last handle is gone. ``peak`` is the largest number of counted bytes alive at once.

What it counts and what not:

- counted: every tensor an op saves for its backward (activations, the inputs of the first layer, masks
  and indices such as max-pool's), on any device, also the 'meta' device (sizes only, no data);
- not counted: parameters and buffers of the given modules (``exclude``), tensors that are alive but not
  saved for backward (the current op's output, gradients during backward, the batch itself if no op
  saves it), the allocator's caching and fragmentation, workspace of cuDNN/BLAS.
- Activation checkpointing (``networks/activation_checkpointing.py``): ``torch.utils.checkpoint`` hides
  the tensors of a checkpointed region behind its own hooks. While a tracker is active the checkpointed
  Hiera blocks report what they hold: the block's input (kept by the checkpoint until the block's backward)
  is counted as a saved tensor, and during backward each block's recomputation adds the block's own saved
  bytes (measured once per call with a nested tracker) until the next recomputation or the end of the
  backward pass (:meth:`SavedTensorTracker.end_backward`).

Per part of a step: :func:`track_step` runs a semi-supervised trainer's ``compute_gradients`` (or a
supervised trainer's forward, loss and backward) under a tracker and records, per backward pass, the bytes
alive when it started and the peak since the previous one, optionally split by the module that saved them
(``attribute_depth``).
"""
from __future__ import annotations

import contextlib
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional

import torch
from torch import nn

RECOMPUTATION = 'recomputation of a checkpointed region'
_ACTIVE: List["SavedTensorTracker"] = []  # trackers whose hooks are pushed, innermost last


def active_tracker() -> Optional["SavedTensorTracker"]:
    """The innermost active tracker (None outside :class:`SavedTensorTracker`)."""
    return _ACTIVE[-1] if _ACTIVE else None


def storage_key(tensor: torch.Tensor):
    """``(key, bytes)`` of a tensor's storage (shared by its views); a tensor without a storage (sparse,
    nested) counts as its own ``numel * element_size``."""
    try:
        storage = tensor.untyped_storage()
        return ('storage', storage._cdata), int(storage.nbytes())
    except (RuntimeError, NotImplementedError, TypeError):
        return ('tensor', id(tensor)), tensor.numel() * tensor.element_size()


def module_storage_keys(modules: Iterable[nn.Module]) -> set:
    """Storage keys of every parameter and buffer of ``modules``."""
    keys = set()
    for module in modules:
        if module is None:
            continue
        for tensor in [*module.parameters(), *module.buffers()]:
            keys.add(storage_key(tensor)[0])
    return keys


class _Saved:
    """What autograd keeps instead of a counted saved tensor; its end releases the count."""
    __slots__ = ('tracker', 'key', 'tensor', '__weakref__')

    def __init__(self, tracker: "SavedTensorTracker", key, tensor: torch.Tensor):
        self.tracker, self.key, self.tensor = tracker, key, tensor

    def __del__(self):
        tracker = self.tracker
        if tracker is not None:
            tracker._release(self.key)


class SavedTensorTracker:
    """Context manager: the peak of bytes saved for backward alive at once (module docstring).

    exclude: modules whose parameters and buffers do not count (the trained networks).
    attribute_depth: if > 0, attribute each saved storage to the innermost running module of ``exclude``'s
        trees, named by its first ``attribute_depth`` name components (``peak_by_module``: the split at the
        peak); 0: no attribution (cheaper).
    """

    def __init__(self, exclude: Iterable[nn.Module] = (), attribute_depth: int = 0):
        self.modules = [m for m in exclude if m is not None]
        self.excluded = module_storage_keys(self.modules)
        self.attribute_depth = attribute_depth
        self._lock = threading.RLock()
        self._alive: Dict[object, List] = {}  # key -> [handles, bytes, label]
        self.current = 0
        self.peak = 0
        self.section_peak = 0
        self.peak_by_module: Dict[str, int] = {}
        self._by_label: Dict[str, int] = defaultdict(int)
        self._transient = 0
        self._names: Dict[int, str] = {}
        self._stack: List[str] = []
        self._hook_handles = []
        self._hooks = None

    # ---- context ------------------------------------------------------------------------------------
    def __enter__(self) -> "SavedTensorTracker":
        if self.attribute_depth:
            for root in self.modules:
                for name, module in root.named_modules():
                    label = '.'.join(name.split('.')[:self.attribute_depth]) or type(root).__name__
                    self._names.setdefault(id(module), label)
            self._hook_handles = [nn.modules.module.register_module_forward_pre_hook(self._enter_module),
                                  nn.modules.module.register_module_forward_hook(self._leave_module)]
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.remove(self)
        self._hooks.__exit__(*exc)
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles = []

    def _enter_module(self, module, inputs):
        label = self._names.get(id(module))
        self._stack.append(label if label is not None else (self._stack[-1] if self._stack else 'other'))

    def _leave_module(self, module, inputs, output):
        if self._stack:
            self._stack.pop()

    # ---- hooks ----------------------------------------------------------------------------------------
    def _pack(self, tensor: torch.Tensor):
        key, nbytes = storage_key(tensor)
        if key in self.excluded:
            return tensor
        with self._lock:
            entry = self._alive.get(key)
            if entry is None:
                label = (self._stack[-1] if self._stack else 'outside modules') if self.attribute_depth else ''
                self._alive[key] = [1, nbytes, label]
                self._add(nbytes, label)
            else:
                entry[0] += 1
        return _Saved(self, key, tensor.detach())  # detached: no reference cycle through a saved output's grad_fn

    @staticmethod
    def _unpack(packed):
        return packed.tensor if isinstance(packed, _Saved) else packed

    def _release(self, key) -> None:
        with self._lock:
            entry = self._alive.get(key)
            if entry is None:
                return
            entry[0] -= 1
            if entry[0] == 0:
                del self._alive[key]
                self.current -= entry[1]
                if self.attribute_depth:
                    self._by_label[entry[2]] -= entry[1]

    def _add(self, nbytes: int, label: str = '') -> None:
        self.current += nbytes
        if self.attribute_depth:
            self._by_label[label] += nbytes
        if self.current > self.section_peak:
            self.section_peak = self.current
        if self.current > self.peak:
            self.peak = self.current
            if self.attribute_depth:
                self.peak_by_module = {k: v for k, v in self._by_label.items() if v}

    # ---- activation checkpointing (networks/activation_checkpointing.py) --------------------------------
    def recomputing(self, nbytes: int) -> None:
        """A checkpointed block is recomputed during backward: its ``nbytes`` replace the previous block's."""
        with self._lock:
            self.end_backward()
            self._add(nbytes, RECOMPUTATION)
            self._transient = nbytes

    def end_backward(self) -> None:
        """A backward pass ended: the last recomputed block's tensors are gone."""
        with self._lock:
            self.current -= self._transient
            if self.attribute_depth:
                self._by_label[RECOMPUTATION] -= self._transient
            self._transient = 0

    def start_section(self) -> int:
        """Start a new section (e.g. a loss part); returns the previous section's peak."""
        with self._lock:
            previous, self.section_peak = self.section_peak, self.current
            return previous


class _CountInputs(torch.autograd.Function):
    """Identity that saves its inputs, so that the tracker counts what a checkpoint holds."""

    @staticmethod
    def forward(ctx, *tensors):
        ctx.save_for_backward(*tensors)
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        return grads


class _Recomputation:
    def __init__(self, tracker: SavedTensorTracker, nbytes: int):
        self.tracker, self.nbytes = tracker, nbytes

    def __enter__(self):
        self.tracker.recomputing(self.nbytes)

    def __exit__(self, *exc):
        return False


def tracked_checkpoint(function, *inputs: torch.Tensor, tracker: SavedTensorTracker):
    """``torch.utils.checkpoint.checkpoint(function, *inputs, use_reentrant=False)`` that reports to
    ``tracker`` what the checkpoint holds: its inputs (saved tensors until the region's backward) and, during
    backward, the recomputed region's saved bytes (measured here by an extra forward under a nested tracker)."""
    from torch.utils.checkpoint import checkpoint
    measure = SavedTensorTracker()
    measure.excluded = tracker.excluded | {storage_key(x)[0] for x in inputs}
    with torch.random.fork_rng(devices=[]), torch.enable_grad(), measure:
        function(*(x.detach().requires_grad_(x.requires_grad) for x in inputs))
    region_bytes = measure.peak
    inputs = _CountInputs.apply(*inputs)
    return checkpoint(function, *inputs, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _Recomputation(tracker, region_bytes)))


# ---- a training step ------------------------------------------------------------------------------------
@dataclass
class StepMemory:
    """Saved-for-backward bytes of one training step."""
    peak: int                                                    # bytes alive at once, at most
    parts: List[int] = field(default_factory=list)               # per backward pass: the peak since the previous
    peak_by_module: Dict[str, int] = field(default_factory=dict)  # the split at the peak (attribute_depth > 0)


def trainer_modules(trainer) -> List[nn.Module]:
    """Every model a trainer holds (student, EMA teacher, the objective's extra modules)."""
    from nnunetv2_sss.networks.passes import unwrap
    modules = [unwrap(trainer.network), getattr(trainer, 'teacher', None)]
    objective = getattr(trainer, 'ssl_objective', None)
    if objective is not None:
        modules += [unwrap(m) for m in objective.trained_modules.values()]
    return [m for m in modules if m is not None]


def track_step(trainer, batch: dict, attribute_depth: int = 0) -> StepMemory:
    """Saved-for-backward bytes of one step's gradients on ``batch`` (no optimiser step): a
    semi-supervised trainer's ``compute_gradients`` (``batch['unlabeled']`` = the unlabeled batch, else
    the loader's next), else nnU-Net's forward + loss + backward of ``train_step``. Per backward pass
    (``parts``): the peak since the previous backward pass."""
    parts: List[int] = []
    tracker = SavedTensorTracker(trainer_modules(trainer), attribute_depth)
    if hasattr(trainer, 'compute_gradients'):
        original = trainer.backward

        def backward(loss):
            parts.append(tracker.start_section())
            try:
                original(loss)
            finally:
                tracker.end_backward()

        trainer.backward = backward
        try:
            with tracker:
                tracker.start_section()
                trainer.compute_gradients(batch)
        finally:
            del trainer.backward
    else:
        data = batch['data'].to(trainer.device)
        target = batch['target']
        target = [t.to(trainer.device) for t in target] if isinstance(target, list) else target.to(trainer.device)
        trainer.optimizer.zero_grad(set_to_none=True)
        with tracker:
            tracker.start_section()
            loss = trainer.loss(trainer.network(data), target)
            parts.append(tracker.start_section())
            loss.backward()
            tracker.end_backward()
            del loss
    return StepMemory(tracker.peak, parts, tracker.peak_by_module)
