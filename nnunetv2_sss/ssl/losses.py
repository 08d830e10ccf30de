"""Unlabeled losses on logits and pseudo-labels."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_cross_entropy(logits: torch.Tensor, pseudo_label: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Voxel-wise CE summed over valid voxels and divided by ALL voxels of the batch, as UniMatch
    V2 does (``loss.sum() / (ignore_mask != 255).sum()``), so the term grows as the teacher
    becomes confident instead of giving a handful of confident voxels full weight.

    ``logits``: ``(B, K, *spatial)``; ``pseudo_label``: long ``(B, *spatial)``;
    ``valid``: bool ``(B, *spatial)``.
    """
    per_voxel = F.cross_entropy(logits.float(), pseudo_label, reduction="none")
    return (per_voxel * valid.to(per_voxel.dtype)).sum() / per_voxel.numel()


def softmax_mse(student_logits: torch.Tensor, teacher_probabilities: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of class probabilities (Mean Teacher consistency),
    averaged over batch, classes and voxels."""
    return F.mse_loss(torch.softmax(student_logits.float(), 1), teacher_probabilities.float())


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean voxel-wise Shannon entropy (nats) of ``softmax(logits)``, ``(B, K, *spatial)``."""
    log_p = torch.log_softmax(logits.float(), 1)
    return -(log_p.exp() * log_p).sum(1).mean()
