"""Mixup of unlabeled pairs for Interpolation Consistency Training, as SSL4MIS does it
(``code/train_interpolation_consistency_training_2D.py`` lines 158-167): the first half of the
unlabeled batch is mixed with the second half, one ``lambda ~ Beta(alpha, alpha)`` per pair."""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from nnunetv2_sss.transfer import to_device


def sample_mixup_factors(rng: np.random.Generator, alpha: float, num_pairs: int) -> np.ndarray:
    """``num_pairs`` independent ``lambda ~ Beta(alpha, alpha)`` (SSL4MIS: ``np.random.beta(ict_alpha,
    ict_alpha, size=(labeled_bs // 2, 1, 1, 1))``)."""
    if not alpha > 0:
        raise ValueError(f"mixup_alpha must be > 0 (Beta(alpha, alpha)), got {alpha}")
    if num_pairs < 1:
        raise ValueError(f"mixup needs at least one pair (an unlabeled batch of >= 2 patches), got {num_pairs} pairs")
    return rng.beta(alpha, alpha, size=num_pairs)


def split_pairs(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(x[:n], x[n:2n])`` with ``n = B // 2`` (an odd last sample is left out)."""
    n = x.shape[0] // 2
    if n < 1:
        raise ValueError(f"mixup needs a batch of at least 2 samples, got {x.shape[0]}")
    return x[:n], x[n:2 * n]


def mix_pairs(x0: torch.Tensor, x1: torch.Tensor, mix_factors) -> torch.Tensor:
    """``x0 * (1 - lambda) + x1 * lambda``, one ``lambda`` per sample (broadcast over the other axes).

    ``x0``, ``x1``: ``(n, ...)`` (images or class probabilities); ``mix_factors``: ``n`` values in [0, 1].
    """
    if x0.shape != x1.shape:
        raise ValueError(f"the two halves differ in shape: {tuple(x0.shape)} vs {tuple(x1.shape)}")
    factors = np.asarray(mix_factors, dtype=np.float32)  # checked on the host, then copied once
    if factors.shape != (x0.shape[0],):
        raise ValueError(f"one mix factor per pair expected ({x0.shape[0]}), got shape {tuple(factors.shape)}")
    if ((factors < 0) | (factors > 1)).any():
        raise ValueError(f"mix factors must lie in [0, 1], got {factors.tolist()}")
    factors = to_device(torch.from_numpy(factors), x0.device).view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return x0 * (1.0 - factors) + x1 * factors
