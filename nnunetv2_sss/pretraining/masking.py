"""Masked image modelling: block masks, the masked input and the reconstruction loss.

- A patch ``(B, C, *spatial)`` is divided into blocks of the network's total stride per axis (the
  encoder's deepest level sees one voxel per block; a block at the border may be cut by the patch);
  ``round(mask_ratio * blocks)`` blocks of each sample (at least 1, at most all but 1) are masked,
  drawn on the device from a ``torch.Generator``.
- Masked input: every masked voxel is replaced by a learnable mask token (one value per input channel,
  the same for every voxel), the other voxels keep the input (Wald et al., CVPR 2025, use a mask token
  for the CNN; for SAM-2's Hiera input masking works as it is).
- Loss: the squared error between the network's output (as many channels as the input) and the unmasked
  input, averaged over the masked voxels of each channel, then over the channels; unmasked voxels do not
  count. The target of a masked voxel is the input as nnU-Net's preprocessing and spatial augmentation
  made it, before masking.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
from torch import nn

DEFAULT_MASK_RATIO = 0.6


def blocks_masked(num_blocks: int, mask_ratio: float) -> int:
    """How many of ``num_blocks`` blocks a sample has masked."""
    if num_blocks < 2:
        return num_blocks
    return min(max(round(mask_ratio * num_blocks), 1), num_blocks - 1)


def block_mask(batch_size: int, spatial_shape: Sequence[int], block_size: Sequence[int], mask_ratio: float,
               generator: torch.Generator, device=None) -> torch.Tensor:
    """``(B, 1, *spatial)`` bool, True where masked: per sample, ``blocks_masked`` blocks of ``block_size``
    voxels drawn at random (uniformly, without replacement)."""
    if len(block_size) != len(spatial_shape):
        raise ValueError(f"block size {tuple(block_size)} does not match the patch's axes {tuple(spatial_shape)}")
    device = generator.device if device is None else device
    grid = [math.ceil(n / b) for n, b in zip(spatial_shape, block_size)]
    num_blocks = math.prod(grid)
    scores = torch.rand((batch_size, num_blocks), generator=generator, device=device)
    ranks = scores.argsort(1).argsort(1)
    masked = (ranks < blocks_masked(num_blocks, mask_ratio)).reshape(batch_size, 1, *grid)
    for axis, size in enumerate(block_size):
        masked = masked.repeat_interleave(int(size), dim=axis + 2)
    return masked[(Ellipsis, *(slice(0, n) for n in spatial_shape))].contiguous()


def masked_input(data: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
    """``data`` with every masked voxel replaced by ``mask_token`` (``(C,)``, one value per channel)."""
    token = mask_token.to(data.dtype).reshape(1, -1, *([1] * (data.ndim - 2)))
    return torch.where(mask, token, data)


def masked_mse(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over channels of the mean squared error over each channel's masked voxels (float32)."""
    weight = mask.to(torch.float32)
    squared = (output.float() - target.float()) ** 2 * weight
    axes = [0] + list(range(2, output.ndim))
    per_channel = squared.sum(axes) / weight.sum(axes).clamp_min(1.0)
    return per_channel.mean()


def total_stride(network: nn.Module, conv_dim: int, configuration_manager=None) -> Tuple[int, ...]:
    """Per-axis stride of the network's deepest encoder level: the SAM-2 U-Net's last level (its encoder
    lists cumulative strides), the product of an nnU-Net encoder's stage strides, else the plans'."""
    encoder = getattr(network, 'encoder', None)
    strides = getattr(encoder, 'strides', None)
    if strides and hasattr(encoder, 'sam2'):
        return tuple(int(s) for s in strides[-1])
    if strides is None and configuration_manager is not None:
        strides = configuration_manager.network_arch_init_kwargs.get('strides')
    if not strides:
        raise ValueError(f"cannot tell the total stride of {type(network).__name__} (no encoder.strides)")
    total = [1] * conv_dim
    for stride in strides:
        stride = [stride] * conv_dim if isinstance(stride, int) else list(stride)
        total = [t * int(s) for t, s in zip(total, stride)]
    return tuple(total)
