"""Cross Pseudo Supervision loss (Chen et al., CVPR 2021)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_pseudo_supervision_loss(logits_1: torch.Tensor, logits_2: torch.Tensor) -> torch.Tensor:
    """``CE(logits_1, argmax logits_2) + CE(logits_2, argmax logits_1)``, each CE the mean over
    batch and voxels; the hard pseudo-labels carry no gradient.

    ``logits_1``, ``logits_2``: ``(B, K, *spatial)`` of the two networks on the same input.
    """
    if logits_1.shape != logits_2.shape:
        raise ValueError(f"the two networks' logits differ in shape: {tuple(logits_1.shape)} vs {tuple(logits_2.shape)}")
    pseudo_label_1 = logits_1.detach().argmax(1)
    pseudo_label_2 = logits_2.detach().argmax(1)
    return F.cross_entropy(logits_1.float(), pseudo_label_2) + F.cross_entropy(logits_2.float(), pseudo_label_1)
