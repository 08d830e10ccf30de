"""Multi-GPU training (nnU-Net's ``-num_gpus N``, DistributedDataParallel): what the plugin adds.

- :func:`rank_seed`: with ``nnUNet_sss_seed``, rank 0 keeps the seed (a one-GPU run's numbers)
  and every other rank gets a stream of its own, so the ranks draw different samples; the
  weights start equal anyway (DDP broadcasts rank 0's when it wraps a network).
- :func:`cpu_ddp_wrapping`: nnU-Net wraps the network with ``device_ids=[local_rank]``, which
  DDP refuses for a CPU module; on the gloo backend (CPU) the wrap gets ``device_ids=None``.
  nnU-Net's own launcher needs CUDA; CPU DDP is what the tests run.
- the semi-supervised step keeps gradients local and averages them itself (``training/step.py``).
- :func:`check_replicas_equal`: the EMA teacher (not a DDP module: every rank updates its own
  copy from the synchronised student) compared across ranks by a checksum.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.distributed as dist

from nnunetv2_sss.training.seeding import derived_seed


def rank_seed(seed: int, rank: int, epoch: Optional[int] = None) -> int:
    """The seed of ``rank``: ``seed`` itself on rank 0 (unless ``epoch`` is given, after ``--c``)."""
    if rank == 0 and epoch is None:
        return seed
    return derived_seed(seed, "rank", rank) if epoch is None else derived_seed(seed, "rank", rank, "epoch", epoch)


@contextlib.contextmanager
def cpu_ddp_wrapping(active: bool):
    """While active, nnU-Net's ``DDP(network, device_ids=[rank])`` builds ``DDP(network)``."""
    if not active:
        yield
        return
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as trainer_module
    original = trainer_module.DDP

    def wrap(module, device_ids=None, **kwargs):
        return original(module, **kwargs)

    trainer_module.DDP = wrap
    try:
        yield
    finally:
        trainer_module.DDP = original


def wrap_for_ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` wrapped as nnU-Net wraps its network (for a trainer's further networks, e.g. CPS's second)."""
    module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    device_ids = [device.index if device.index is not None else 0] if device.type == 'cuda' else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


@torch.no_grad()
def parameter_checksum(module: torch.nn.Module) -> torch.Tensor:
    """``(2,)`` float64: sum and position-weighted sum of all parameters and floating buffers."""
    total = torch.zeros(2, dtype=torch.float64)
    offset = 0
    for tensor in list(module.parameters()) + [b for b in module.buffers() if b.dtype.is_floating_point]:
        flat = tensor.detach().flatten().double().cpu()
        weights = torch.arange(offset + 1, offset + flat.numel() + 1, dtype=torch.float64)
        total += torch.stack([flat.sum(), (flat * weights).sum() / max(1, weights[-1].item())])
        offset += flat.numel()
    return total


def check_replicas_equal(module: torch.nn.Module, what: str, device: torch.device, rtol: float = 1e-10) -> None:
    """Raise if ``module``'s checksum differs between the ranks (a no-op without DDP)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    local = parameter_checksum(module).to(device)
    gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    for rank, other in enumerate(gathered):
        if not torch.allclose(other, gathered[0], rtol=rtol, atol=0):
            raise RuntimeError(f"{what} differs between ranks 0 and {rank} of this multi-GPU run (checksums "
                               f"{gathered[0].tolist()} vs {other.tolist()}): the ranks no longer train the same "
                               f"model. Every student pass must go through the DDP-wrapped network.")
