"""Stage-1 losses of CPS4 (docs/method.md 2.1) and their patch-grid targets.

Targets: ``M̃_k`` is the ground-truth mask of class ``k`` resampled to the ViT patch grid with
bilinear interpolation (``antialias=True``: each grid cell is the tent-weighted mean of the
mask, weights ``1 - |x - centre| / patch_size`` over the patch and half of each neighbour,
instead of the two pixels at the patch centre that plain bilinear down-sampling reads) and
binarised with ``M̃_k >= MASK_THRESHOLD`` (0.5: the class holds at least half of that weight;
a patch fully covered by the class qualifies even when its neighbours are not). Label values
outside ``0 … K-1`` (nnU-Net's padding -1, an ignore label) belong to no class.

A class counts as present in an image (one of the ``N`` classes of the formulas) when its
``M̃_k`` is non-empty; a class smaller than about half a patch is therefore absent for the
loss (its token term would be the constant 1). Images without any present class (only
possible when every class is below that size) do not count. Each loss is the mean over
the images of the batch of the per-image value:

    L_token = (1/N) Σ_k (1 − Σ_{j∈B_k} A_k[j] / Σ_j A_k[j])²
    L_pixel = (1/N) Σ_k mean_j BCE(A_k[j], M̃_k[j])
    L       = ½ (L_token + L_pixel)

``A = sigmoid(logits)``; the BCE is evaluated from the logits (same value, no overflow).
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F

MASK_THRESHOLD = 0.5


def patch_grid_masks(seg: torch.Tensor, num_classes: int, grid: Tuple[int, int],
                     threshold: float = MASK_THRESHOLD) -> torch.Tensor:
    """``M̃``: label maps ``[B, H, W]`` (int) -> binary float masks ``[B, K, h, w]`` on the patch grid."""
    classes = torch.arange(num_classes, device=seg.device).view(1, -1, 1, 1)
    one_hot = (seg.long().unsqueeze(1) == classes).float()                      # [B, K, H, W]
    resampled = F.interpolate(one_hot, size=tuple(grid), mode="bilinear", align_corners=False, antialias=True)
    return (resampled >= threshold).float()


def present_classes(masks: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` bool: class ``k`` has at least one patch in ``M̃_k``."""
    return masks.flatten(2).any(-1)


def _mean_over_present(per_class: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` values -> mean over images of (1/N_b) Σ_{present k}; images with N_b = 0 skipped."""
    n = present.sum(1)
    per_image = torch.where(present, per_class, torch.zeros_like(per_class)).sum(1) / n.clamp_min(1)
    counted = n > 0
    if not counted.any():
        return per_class.sum() * 0.0
    return per_image[counted].mean()


def token_loss(attention: torch.Tensor, masks: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``L_token`` from attention maps ``A [B, K, h, w]`` in (0, 1) and targets ``M̃`` of the same shape."""
    inside = (attention * masks).sum((2, 3))
    total = attention.sum((2, 3))
    return _mean_over_present((1.0 - inside / total) ** 2, present)


def pixel_loss(logits: torch.Tensor, masks: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``L_pixel`` from attention logits ``[B, K, h, w]`` (``A = sigmoid(logits)``) and targets ``M̃``."""
    bce = F.binary_cross_entropy_with_logits(logits, masks, reduction="none").mean((2, 3))
    return _mean_over_present(bce, present)


def stage1_loss(logits: torch.Tensor, seg: torch.Tensor,
                threshold: float = MASK_THRESHOLD) -> Dict[str, torch.Tensor]:
    """``{'loss', 'token', 'pixel'}`` for attention logits ``[B, K, h, w]`` and label maps ``[B, H, W]``."""
    masks = patch_grid_masks(seg, logits.shape[1], tuple(logits.shape[-2:]), threshold)
    present = present_classes(masks)
    token = token_loss(torch.sigmoid(logits), masks, present)
    pixel = pixel_loss(logits, masks, present)
    return {"loss": 0.5 * (token + pixel), "token": token, "pixel": pixel}
