"""The pieces of the SSL4MIS training scripts (github.com/HiLab-git/SSL4MIS, ``code/``) that the
BHSD / ACDC baselines take over: the consistency ramp-up, Mean Teacher's input noise and the
entropy-minimisation loss. Line references are to the files of that repository (docs/trainers.md,
section "Baseline settings (SSL4MIS)").
"""
from __future__ import annotations

import math
import torch

# code/train_*_2D.py: --max_iterations 30000, --consistency_rampup 200.0, and the ramp is read at
# ``iter_num // 150``, so the ramp-up ends at 200 x 150 = 30000 iterations = all of training.
SSL4MIS_MAX_ITERATIONS = 30000
SSL4MIS_RAMPUP_LENGTH = 200.0


def sigmoid_rampup(current: float, rampup_length: float) -> float:
    """``exp(-5 (1 - t)^2)``, ``t = clip(current, 0, rampup_length) / rampup_length``; 1 when
    ``rampup_length`` is 0 (SSL4MIS ``code/utils/ramps.py``, ``sigmoid_rampup``)."""
    if rampup_length == 0:
        return 1.0
    current = min(max(float(current), 0.0), float(rampup_length))
    phase = 1.0 - current / rampup_length
    return math.exp(-5.0 * phase * phase)


def iteration_rampup(iteration: int, total_iterations: int, rampup_fraction: float = 1.0,
                     rampup_length: float = SSL4MIS_RAMPUP_LENGTH) -> float:
    """SSL4MIS's ramp-up on any schedule: ``sigmoid_rampup(iteration // step, rampup_length)`` with
    ``step = rampup_fraction * total_iterations / rampup_length`` iterations.

    SSL4MIS calls ``sigmoid_rampup(iter_num // 150, 200)`` for 30000 iterations: the ramp covers
    ``rampup_fraction = 1`` (200 x 150 = 30000 iterations) in 200 steps of 150 iterations. Here the
    same share of the training, in the same 200 steps, for ``total_iterations`` (nnU-Net: epochs x
    iterations per epoch). ``rampup_fraction <= 0`` (or no iterations) means no ramp-up (1.0).
    """
    span = rampup_fraction * total_iterations
    if span <= 0 or rampup_length <= 0:
        return 1.0
    return sigmoid_rampup(math.floor(iteration * rampup_length / span + 1e-9), rampup_length)


def teacher_input_noise(x: torch.Tensor, std: float = 0.1, clip: float = 0.2,
                        relative_to_range: bool = True) -> torch.Tensor:
    """Mean Teacher's teacher input ``x + clamp(N(0, std^2), -clip, clip)``
    (``code/train_mean_teacher_2D.py`` lines 154-156).

    SSL4MIS's slices are min-max normalised to [0, 1] (``code/dataloaders/acdc_data_processing.py``
    line 21), so its noise is in units of the intensity range. nnU-Net's images are z-scored (or
    CT-clipped and z-scored); with ``relative_to_range`` the noise is multiplied by each sample's and
    channel's intensity range (max - min over the patch), which is the SSL4MIS perturbation on
    nnU-Net's intensities.
    """
    noise = torch.clamp(torch.randn_like(x, dtype=torch.float32) * std, -clip, clip)
    if relative_to_range:
        flat = x.detach().float().flatten(2)
        intensity_range = (flat.max(2).values - flat.min(2).values).view(*x.shape[:2], *([1] * (x.ndim - 2)))
        noise = noise * intensity_range
    return x + noise.to(x.dtype)


def normalised_entropy(probabilities: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-voxel ``-sum_k p_k log(p_k + 1e-6) / log(C)``, ``(B, K, *spatial)`` -> ``(B, *spatial)``
    (SSL4MIS ``code/utils/losses.py`` ``entropy_loss`` lines 30-36, before its mean)."""
    if num_classes < 2:
        raise ValueError(f"the entropy is normalised by log(num_classes); num_classes must be >= 2, got {num_classes}")
    p = probabilities.float()
    return -(p * torch.log(p + 1e-6)).sum(1) / math.log(num_classes)
