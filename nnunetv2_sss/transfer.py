"""Host tensors (drawn from the CPU's random generators, built from PCSW's prompts) to the training
device without a blocking copy: pinned, then copied asynchronously. A CPU device gets the tensor as
it is."""
from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    """``tensor`` (on the host) on ``device``; for CUDA through pinned memory with ``non_blocking``."""
    device = torch.device(device)
    if device.type != 'cuda':
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
