"""One scan's :class:`~nnunetv2_sss.active.records.CaseRecord` from its prediction: the strategy's voxel
map aggregated (``voxels``), the predicted foreground per class, the encoder features and the slices the
montage shows. Arrays in, record out: the same code scores the command's predictions and any other
probabilities of the scan (e.g. those ``nnUNetv2_predict --save_probabilities`` writes)."""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np

from nnunetv2_sss.active.members import CasePrediction
from nnunetv2_sss.active.records import CaseRecord
from nnunetv2_sss.active.voxels import aggregate

MONTAGE_SLICES = 3
MONTAGE_SIDE = 256


def voxel_volume_ml(properties: dict, transpose_forward: Sequence[int],
                    configuration_spacing: Sequence[float]) -> float:
    """Volume of a voxel of the preprocessed image in mL: the configuration's spacing (mm); a 2d
    configuration keeps the case's own spacing between slices, as nnU-Net's preprocessor does."""
    original = [properties["spacing"][i] for i in transpose_forward]
    spacing = list(configuration_spacing)
    if len(spacing) < len(original):
        spacing = [original[0]] + spacing
    return float(np.prod(spacing)) / 1000.0


def montage_slices(image: np.ndarray, segmentation: np.ndarray, uncertainty: np.ndarray
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The :data:`MONTAGE_SLICES` slices of the first axis with the highest mean uncertainty (ascending),
    subsampled to at most :data:`MONTAGE_SIDE` pixels a side: ``(indices, image, segmentation,
    uncertainty)``, the last three ``(S, h, w)`` uint8. ``image`` ``(C, *spatial)``, the others ``(*spatial)``."""
    per_slice = uncertainty.reshape(uncertainty.shape[0], -1).mean(1)
    indices = np.sort(np.argsort(-per_slice, kind="stable")[:MONTAGE_SLICES])
    step = max(1, math.ceil(max(uncertainty.shape[1:]) / MONTAGE_SIDE))

    def pick(volume: np.ndarray) -> np.ndarray:  # nnU-Net's preprocessed arrays are 3-D, 2d configurations too
        return volume[indices][:, ::step, ::step]

    shown = pick(np.asarray(image[0], dtype=np.float32))
    low, high = np.percentile(shown, (0.5, 99.5))
    shown = np.clip((shown - low) / max(high - low, 1e-6), 0, 1)
    return (indices.astype(np.int64), np.round(shown * 255).astype(np.uint8), pick(segmentation).astype(np.uint8),
            np.round(np.clip(pick(uncertainty), 0, 1) * 255).astype(np.uint8))


def score_case(case: str, prediction: CasePrediction, image: np.ndarray, strategy, how: str, top_fraction: float,
               voxel_ml: float, seconds: float = 0.0) -> CaseRecord:
    """The record of one scan: ``prediction`` and ``image`` ``(C_in, *spatial)`` in the same geometry;
    ``strategy`` gives the voxel map, aggregated ``how`` (``voxels.aggregate``)."""
    segmentation = prediction.probabilities.argmax(0)
    uncertainty = strategy.voxel_map(prediction)
    counts = np.bincount(segmentation.ravel(), minlength=prediction.probabilities.shape[0])[1:].astype(np.int64)
    indices, shown, labels, shown_uncertainty = montage_slices(image, segmentation, uncertainty)
    return CaseRecord(case, aggregate(uncertainty, segmentation, how, top_fraction), counts, voxel_ml, seconds,
                      indices, shown, labels, shown_uncertainty, prediction.features)
