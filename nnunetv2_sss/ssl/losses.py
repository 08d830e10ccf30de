"""Unlabeled losses on logits and pseudo-labels."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_cross_entropy(logits: torch.Tensor, pseudo_label: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean voxel-wise CE over valid voxels (0 when none is valid).

    ``logits``: ``(B, K, *spatial)``; ``pseudo_label``: long ``(B, *spatial)``;
    ``valid``: bool ``(B, *spatial)``.
    """
    per_voxel = F.cross_entropy(logits.float(), pseudo_label, reduction="none")
    valid = valid.to(per_voxel.dtype)
    return (per_voxel * valid).sum() / valid.sum().clamp_min(1.0)


def softmax_mse(student_logits: torch.Tensor, teacher_probabilities: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of class probabilities (Mean Teacher consistency),
    averaged over batch, classes and voxels."""
    return F.mse_loss(torch.softmax(student_logits.float(), 1), teacher_probabilities.float())


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean voxel-wise Shannon entropy (nats) of ``softmax(logits)``, ``(B, K, *spatial)``."""
    log_p = torch.log_softmax(logits.float(), 1)
    return -(log_p.exp() * log_p).sum(1).mean()
