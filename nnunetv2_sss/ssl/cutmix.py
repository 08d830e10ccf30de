"""CutMix boxes for images, pseudo-labels and confidences (UniMatch V2: paste from the
batch reversed)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch


def random_box_mask(spatial_shape: Sequence[int], rng: np.random.Generator, p: float = 0.5,
                    area_range=(0.02, 0.4), aspect_range=(0.3, 1 / 0.3), device=None) -> torch.Tensor:
    """Bool mask of ``spatial_shape`` with one axis-aligned box, or all False with prob ``1-p``,
    made on ``device`` (the box drawn from ``rng`` on the host, no copy).

    The box covers a fraction in ``area_range`` of the patch area (2-D) or volume (3-D);
    its side ratios are drawn log-uniformly from ``aspect_range`` and it lies inside the patch.
    """
    mask = torch.zeros(tuple(spatial_shape), dtype=torch.bool, device=device)
    if rng.random() >= p:
        return mask
    total = float(np.prod(spatial_shape))
    box_volume = rng.uniform(*area_range) * total
    dims = len(spatial_shape)
    log_ratios = rng.uniform(math.log(aspect_range[0]), math.log(aspect_range[1]), size=dims)
    log_ratios -= log_ratios.mean()  # product of the ratios is 1
    side = box_volume ** (1.0 / dims)
    sizes = [int(min(s, max(1, round(side * math.exp(r))))) for s, r in zip(spatial_shape, log_ratios)]
    starts = [int(rng.integers(0, s - b + 1)) for s, b in zip(spatial_shape, sizes)]
    mask[tuple(slice(a, a + b) for a, b in zip(starts, sizes))] = True
    return mask


def cutmix_from_reversed_batch(tensor: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Paste, per sample ``b``, ``tensor[B-1-b]`` inside ``boxes[b]``.

    ``tensor``: ``(B, ...spatial)`` or ``(B, C, ...spatial)``; ``boxes``: bool ``(B, ...spatial)``.
    Returns a new tensor; images, pseudo-labels and confidences mixed with the same
    ``boxes`` stay consistent.
    """
    source = tensor.flip(0)
    mask = boxes
    if tensor.ndim == boxes.ndim + 1:
        mask = mask.unsqueeze(1)
    return torch.where(mask, source, tensor)
