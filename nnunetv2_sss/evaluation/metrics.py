"""Overlap and surface-distance metrics of one binary reference / prediction pair.

Definitions (the same numbers as MedPy >= 0.5 ``medpy.metric.binary`` ``dc``, ``jc``,
``hd95``, ``asd(prediction, reference)`` and ``assd``; the papers follow SSL4MIS, whose test
script reports ``dc``, ``jc``, ``hd95`` and ``asd(pred, gt)``):

* Dice % = 100 * 2|A∩B| / (|A| + |B|),  Jaccard % = 100 * |A∩B| / |A∪B|
  (A = reference voxels, B = predicted voxels).
* Surface ∂X = voxels of X with at least one 6-neighbour (face neighbour) outside X;
  voxels on the image border count as surface (``binary_erosion`` with ``border_value=0``).
* d(x, ∂Y) = Euclidean distance from voxel centre x to the nearest voxel centre of ∂Y,
  computed with ``scipy.ndimage.distance_transform_edt(~∂Y, sampling=spacing)``.
* D = the pooled multiset {d(a, ∂B) : a ∈ ∂A} ∪ {d(b, ∂A) : b ∈ ∂B} (|∂A| + |∂B| values).
* HD95 = 95th percentile of D (``numpy.percentile``, linear interpolation) — MedPy's
  ``hd95``. (MONAI instead takes the larger of the two directed 95th percentiles.)
* ASD = mean of {d(b, ∂A) : b ∈ ∂B}: the average distance from the PREDICTION's surface to
  the reference's, one direction — MedPy's ``asd(pred, gt)``, as SSL4MIS and the papers.
* ASSD = mean of D = (Σ_a d(a, ∂B) + Σ_b d(b, ∂A)) / (|∂A| + |∂B|): the average symmetric
  surface distance — MedPy >= 0.5 ``assd``. (MedPy <= 0.4 ``assd`` averaged the two directed
  means instead, which differs when |∂A| ≠ |∂B|.)
* Units: "vox" uses spacing 1 on every axis (the papers' unit), "mm" the image spacing.
* Axes of length 1 are dropped before the surface is taken, so a single-slice image is
  measured as the 2-D image it is (otherwise every voxel would lie on the border; MedPy
  does not drop them).

Empty masks (decided here, reported by the evaluation as counts):

* both empty: Dice, Jaccard, HD95, ASD and ASSD are NaN (nnU-Net also writes NaN Dice);
  the case is left out of that class's mean.
* exactly one empty: Dice = Jaccard = 0; HD95, ASD and ASSD are NaN (no surface to measure
  to), so they are left out of the mean — the Dice of 0 still counts.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
from scipy import ndimage

VOXEL = "vox"
MILLIMETRE = "mm"
METRIC_NAMES = ("Dice_pct", "Jaccard_pct", "HD95_vox", "HD95_mm", "ASD_vox", "ASD_mm", "ASSD_vox", "ASSD_mm")


def overlap_scores(reference: np.ndarray, prediction: np.ndarray) -> Dict[str, float]:
    """Dice % and Jaccard % of two boolean arrays of the same shape, plus the voxel counts."""
    tp = int(np.count_nonzero(reference & prediction))
    n_ref = int(np.count_nonzero(reference))
    n_pred = int(np.count_nonzero(prediction))
    fp, fn = n_pred - tp, n_ref - tp
    if n_ref == 0 and n_pred == 0:
        dice = jaccard = float("nan")
    else:
        dice = 100.0 * 2 * tp / (2 * tp + fp + fn)
        jaccard = 100.0 * tp / (tp + fp + fn)
    return {"Dice_pct": dice, "Jaccard_pct": jaccard, "TP": tp, "FP": fp, "FN": fn,
            "n_ref": n_ref, "n_pred": n_pred}


def surface(mask: np.ndarray) -> np.ndarray:
    """Boolean array (shape of ``mask``): voxels of ``mask`` with a face neighbour outside it."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def directed_surface_distances(from_surface: np.ndarray, to_surface: np.ndarray,
                               spacing: Sequence[float]) -> np.ndarray:
    """1-D array: for every voxel of ``from_surface``, the distance to the nearest voxel of
    ``to_surface`` (which must not be empty), in the units of ``spacing`` (one per axis)."""
    distance_map = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return distance_map[from_surface]


def _crop_to_union(reference: np.ndarray, prediction: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Both arrays cut to the bounding box of their union grown by one voxel (clipped to the
    image); surfaces and distances inside are unchanged, the transforms get much cheaper."""
    coordinates = np.nonzero(reference | prediction)
    box = tuple(slice(max(int(c.min()) - 1, 0), int(c.max()) + 2) for c in coordinates)
    return reference[box], prediction[box]


def surface_distances(reference: np.ndarray, prediction: np.ndarray,
                      spacing: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """(d(a, ∂B) for a ∈ ∂A, d(b, ∂A) for b ∈ ∂B): the directed surface distances reference ->
    prediction and prediction -> reference (see module docstring) of two non-empty boolean
    arrays of the same shape, in the units of ``spacing``."""
    reference, prediction = _crop_to_union(reference, prediction)
    kept_axes = [axis for axis, size in enumerate(reference.shape) if size > 1] or [reference.ndim - 1]
    reference = reference.reshape([reference.shape[a] for a in kept_axes])
    prediction = prediction.reshape([prediction.shape[a] for a in kept_axes])
    spacing = [float(spacing[a]) for a in kept_axes]
    surface_ref, surface_pred = surface(reference), surface(prediction)
    return (directed_surface_distances(surface_ref, surface_pred, spacing),
            directed_surface_distances(surface_pred, surface_ref, spacing))


def distance_scores(reference: np.ndarray, prediction: np.ndarray,
                    spacing: Sequence[float]) -> Dict[str, float]:
    """HD95, ASD and ASSD in voxels and in the units of ``spacing`` (mm); NaN when a mask is empty."""
    if not reference.any() or not prediction.any():
        return {name: float("nan") for name in METRIC_NAMES[2:]}
    scores = {}
    for unit, unit_spacing in ((VOXEL, [1.0] * reference.ndim), (MILLIMETRE, spacing)):
        reference_to_prediction, prediction_to_reference = surface_distances(reference, prediction, unit_spacing)
        pooled = np.concatenate([reference_to_prediction, prediction_to_reference])
        scores[f"HD95_{unit}"] = float(np.percentile(pooled, 95))
        scores[f"ASD_{unit}"] = float(prediction_to_reference.mean())
        scores[f"ASSD_{unit}"] = float(pooled.mean())
    return {name: scores[name] for name in METRIC_NAMES[2:]}


def binary_metrics(reference: np.ndarray, prediction: np.ndarray,
                   spacing: Sequence[float]) -> Dict[str, float]:
    """All metrics of one class of one case: boolean arrays of equal shape (any dimension),
    ``spacing`` in mm per axis of the arrays."""
    if reference.shape != prediction.shape:
        raise ValueError(f"reference shape {reference.shape} != prediction shape {prediction.shape}")
    if len(spacing) != reference.ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} entries for a {reference.ndim}-D array")
    return {**overlap_scores(reference, prediction), **distance_scores(reference, prediction, spacing)}
