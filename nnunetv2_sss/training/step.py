"""Pieces of one semi-supervised training step (``semi_supervised.train_step``).

- :func:`local_gradients` / :func:`average_gradients`: the step's loss parts each run their
  backward pass while the next part is not built yet (one part's graph alive at a time); on several
  GPUs (DDP) every backward runs in DDP's ``no_sync()`` and the summed gradients are averaged over
  the GPUs once, after the last part (one all-reduce of all gradients; a parameter a rank did not
  use in this step, e.g. the prompt head in a step without prompts, contributes zeros, so its
  gradient and AdamW's weight decay stay the same on every rank).
- :func:`all_finite`: one fused finiteness check of many tensors (one host round-trip).
- :func:`scalars_of`: the step's losses and figures (0-d tensors) fetched to the host at once.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist


@contextlib.contextmanager
def local_gradients(modules: Sequence[torch.nn.Module], active: bool):
    """While active, DDP keeps every module's gradients local (``no_sync``)."""
    with contextlib.ExitStack() as stack:
        if active:
            for module in modules:
                stack.enter_context(module.no_sync())
        yield


@torch.no_grad()
def average_gradients(modules: Sequence[torch.nn.Module]) -> None:
    """Replace every trainable parameter's gradient by its mean over the ranks (missing gradients count
    as zeros), in one all-reduce per dtype."""
    parameters = [p for module in modules for p in module.parameters() if p.requires_grad]
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    world = dist.get_world_size()
    for dtype in {p.grad.dtype for p in parameters}:
        grads = [p.grad for p in parameters if p.grad.dtype == dtype]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset: offset + grad.numel()].view_as(grad))
            offset += grad.numel()


@torch.no_grad()
def all_finite(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """0-d bool tensor: every element of every tensor is finite (fused norms, no host round-trip)."""
    tensors = [t.detach() for t in tensors]
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    return torch.isfinite(torch.stack(torch._foreach_norm(tensors))).all()


def scalars_of(values: Dict[str, object]) -> Dict[str, object]:
    """Tensors among ``values`` as Python floats, fetched in one host round-trip; other values unchanged
    (the step's ``loss`` as a numpy scalar, as nnU-Net's loggers expect)."""
    keys = [k for k, v in values.items() if torch.is_tensor(v)]
    if not keys:
        return dict(values)
    fetched = torch.stack([values[k].detach().float().reshape(()) for k in keys]).cpu().tolist()
    out = {**values, **dict(zip(keys, fetched))}
    if 'loss' in out:
        out['loss'] = np.float32(out['loss'])
    return out
