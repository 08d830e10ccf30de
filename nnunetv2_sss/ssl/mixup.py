"""Mixup of a batch with a permutation of itself (Interpolation Consistency Training)."""
from __future__ import annotations

import numpy as np
import torch


def sample_mixup_coefficient(rng: np.random.Generator, alpha: float) -> float:
    """``lambda ~ Beta(alpha, alpha)``, one value per batch as in ICT (Verma et al. 2019, Alg. 1)."""
    if not alpha > 0:
        raise ValueError(f"mixup_alpha must be > 0 (Beta(alpha, alpha)), got {alpha}")
    return float(rng.beta(alpha, alpha))


def mix_with_partners(x: torch.Tensor, partners: torch.Tensor, mix_coefficient: float) -> torch.Tensor:
    """``lambda * x + (1 - lambda) * x[partners]``.

    ``x``: ``(B, ...)`` (images ``(B, C, *spatial)`` or class probabilities ``(B, K, *spatial)``);
    ``partners``: long ``(B,)``, sample ``i`` is mixed with sample ``partners[i]``;
    ``mix_coefficient``: ``lambda`` in ``[0, 1]``.
    """
    if not 0.0 <= mix_coefficient <= 1.0:
        raise ValueError(f"mix_coefficient must lie in [0, 1], got {mix_coefficient}")
    if partners.shape != (x.shape[0],):
        raise ValueError(f"partners must have shape ({x.shape[0]},) (one index per sample), got {tuple(partners.shape)}")
    return mix_coefficient * x + (1.0 - mix_coefficient) * x[partners]
