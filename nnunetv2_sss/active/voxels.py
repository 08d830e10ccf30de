"""Per-voxel uncertainty maps and how a scan's score aggregates them.

Maps (``(*spatial)`` float arrays in ``[0, 1]``, from class probabilities ``(C, *spatial)``):

- :func:`entropy`: ``H(p) = -sum_c p_c ln p_c / ln C`` (1: all classes equally likely, 0: one class sure);
- :func:`mutual_information`: ``H(mean_m p_m) - mean_m H(p_m)`` (BALD) over M predictions of the same
  scan, also divided by ``ln C``: what the predictions disagree on, beyond what each is unsure about.

Aggregations (:data:`AGGREGATIONS`, ``nnUNetv2_sss_suggest --aggregate``), a whole-scan mean being
dominated by background:

- ``top-k``: the mean of the ``ceil(top_fraction * voxels)`` highest values;
- ``foreground-mean``: the mean over the predicted foreground (argmax not background); 0 without any;
- ``mean``: the mean over every voxel.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import xlogy

AGGREGATIONS = ("top-k", "foreground-mean", "mean")


def entropy(probabilities: np.ndarray) -> np.ndarray:
    """``(C, *spatial)`` probabilities -> ``(*spatial)`` entropy divided by ``ln C`` (float32)."""
    return (-xlogy(probabilities, probabilities).sum(0) / math.log(probabilities.shape[0])).astype(np.float32)


def mutual_information(mean_probabilities: np.ndarray, mean_member_entropy: np.ndarray) -> np.ndarray:
    """``(C, *spatial)`` mean of the M predictions' probabilities and ``(*spatial)`` mean of their
    :func:`entropy` -> ``(*spatial)`` mutual information divided by ``ln C`` (float32; rounding below 0
    clipped)."""
    return np.maximum(entropy(mean_probabilities) - mean_member_entropy, 0).astype(np.float32)


def aggregate(values: np.ndarray, segmentation: np.ndarray, how: str, top_fraction: float) -> float:
    """One number for a scan: ``values`` ``(*spatial)`` aggregated as ``how`` (see the module);
    ``segmentation`` ``(*spatial)``: the predicted labels (0 background)."""
    if how == "top-k":
        count = max(1, math.ceil(top_fraction * values.size))
        return float(np.partition(values.ravel(), values.size - count)[values.size - count:].mean(dtype=np.float64))
    if how == "foreground-mean":
        foreground = segmentation > 0
        return float(values[foreground].mean(dtype=np.float64)) if foreground.any() else 0.0
    if how == "mean":
        return float(values.mean(dtype=np.float64))
    raise ValueError(f"unknown aggregation {how!r}; one of {AGGREGATIONS}")
