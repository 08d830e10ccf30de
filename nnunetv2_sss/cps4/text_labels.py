"""Class-prompt pseudo-labels of CPS4 stage 2 (docs/method.md 2.2).

``y_text``: every class's attention map is up-sampled bilinearly to the image size and
thresholded with its own Otsu threshold (``skimage.filters.threshold_otsu``; a pixel fires
when its attention is strictly above the threshold, skimage's convention, so a constant map
fires nowhere). The binary maps are stacked into one label map: where several classes fire
the one with the highest attention wins, where none fires the label is 0 (background).
Channel ``k`` of the attention is label ``k``; when channel 0 (background) fires and is
highest the label is 0 as well.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from skimage.filters import threshold_otsu

from nnunetv2_sss.transfer import to_device


def otsu_thresholds(maps: torch.Tensor) -> torch.Tensor:
    """Otsu threshold of every 2-D map: ``[B, K, H, W]`` -> ``[B, K]`` (same device, float32)."""
    flat = maps.detach().float().cpu().numpy().reshape(-1, *maps.shape[-2:])
    thresholds = np.array([threshold_otsu(m) for m in flat], dtype=np.float32)
    return to_device(torch.from_numpy(thresholds).view(maps.shape[:2]), maps.device)


def attention_to_label_map(attention: torch.Tensor, out_size: Sequence[int]) -> torch.Tensor:
    """``A [B, K, h, w]`` -> ``y_text`` ``[B, H, W]`` (int64) with ``(H, W) = out_size``."""
    if attention.ndim != 4:
        raise ValueError(f"attention must be [B, K, h, w], got shape {tuple(attention.shape)}")
    up = F.interpolate(attention.detach().float(), size=tuple(out_size), mode="bilinear", align_corners=False)
    fires = up > otsu_thresholds(up)[..., None, None]
    score = torch.where(fires, up, torch.full_like(up, -torch.inf))
    return torch.where(fires.any(1), score.argmax(1), torch.zeros_like(score[:, 0], dtype=torch.long))

