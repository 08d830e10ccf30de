"""PCSW — Physical Constraints with a Sliding Window, the SSS prompt generator (docs/method.md 1.3).

Input: a predicted label volume ``labels`` of shape (S, H, W), slice axis first, integer
labels (0 = background). For every foreground class ``k`` on its own:

* window lengths ``N`` from ``max(1, ⌊S/2⌋)`` down to ``min(⌈S/3⌉, that)``; for each ``N``
  the windows ``labels[i : i+N]`` with ``i = 0 … S−N`` ascending; the first valid window is
  adopted for ``k``;
* a window is valid for ``k`` when (a) the set of labels present in a slice (background
  included) is the same on every slice of the window and contains ``k``, and (b) the largest
  26-connected component of class ``k`` in the window (8-connectivity in-plane, linked across
  neighbouring slices where the 3×3 neighbourhoods overlap) holds at least ``τ`` of the
  window's class-``k`` voxels;
* prompts, for every slice of the window that the largest component touches: the inclusive
  box ``(y0, x0, y1, x1)`` of the component's voxels in that slice and one positive point
  ``(y, x)``, the component voxel farthest (Euclidean, in voxels) from any voxel outside the
  component in that slice — voxels beyond the image edge count as outside; optionally one
  negative point, the voxel inside the box and outside the component farthest from it.

Choices where the papers are silent: the label set of condition (a) holds every label of the
slice, also labels not in ``classes``; among equally large components the one whose first
voxel comes first in C order (z, y, x) is "the largest"; ties of the farthest point go to the
first voxel in C order; slices of the window that the largest component does not touch (its
share is ≥ τ, not 1) get no prompt. Coordinates are (row, column) = (y, x) voxel indices of
the slice; SAM-2's prompt encoder wants (x, y) pixel coordinates, so its caller swaps them.

Speed: a component of a window lies inside one component of any window containing it. Per
class, one connected-component labelling (``cc3d``) of the whole slice range bounds the
largest component of every window at once; a window is labelled on its own only while its
bound still reaches ``τ``, and each such labelling tightens the bounds of its sub-windows.
No Python loops over voxels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import cc3d
import numpy as np
from scipy import ndimage

DEFAULT_TAU = 0.8
MAX_LABEL = 65535


@dataclass(frozen=True)
class SlicePrompt:
    """SAM-2 prompt for one class in one slice; coordinates are voxel indices in the slice."""
    slice_index: int
    label: int
    box: Tuple[int, int, int, int]          # (y0, x0, y1, x1), inclusive
    positive_point: Tuple[int, int]         # (y, x)
    negative_point: Optional[Tuple[int, int]] = None


@dataclass(frozen=True, eq=False)
class ClassWindow:
    """The adopted window of one class.

    component: bool (length, h, w), the largest component, cropped in-plane; its voxel
    ``[z, y, x]`` is ``labels[start + z, offset[0] + y, offset[1] + x]``.
    """
    label: int
    start: int
    length: int
    connectivity: float                     # C = |largest component| / |class voxels in window|
    component: np.ndarray
    offset: Tuple[int, int]


def window_lengths(num_slices: int) -> range:
    """Window lengths in search order: ``⌊S/2⌋`` (at least 1) down to ``⌈S/3⌉``."""
    longest = max(1, num_slices // 2)
    shortest = min(math.ceil(num_slices / 3), longest)
    return range(longest, shortest - 1, -1)


def _check_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"PCSW: labels must have shape (S, H, W), got shape {labels.shape}")
    if labels.dtype.kind not in "biu":
        raise ValueError(f"PCSW: labels must hold integer labels, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > MAX_LABEL):
        raise ValueError(f"PCSW: labels must be in 0..{MAX_LABEL}, found {labels.min()}..{labels.max()}")
    return labels


def _slice_presence(labels: np.ndarray) -> np.ndarray:
    """bool (S, max label + 1): label ``v`` occurs in slice ``s``."""
    num_values = int(labels.max()) + 1
    offsets = (np.arange(labels.shape[0]) * num_values)[:, None, None]
    counts = np.bincount((labels + offsets).ravel(), minlength=labels.shape[0] * num_values)
    return counts.reshape(labels.shape[0], num_values) > 0


def _consistent_starts(presence: np.ndarray, length: int) -> np.ndarray:
    """bool (S − length + 1,): windows ``[i, i+length)`` whose slices all share one label set.

    presence: bool (S, V), label ``v`` present in slice ``s``.
    """
    changes = np.concatenate([[0], np.cumsum(np.any(presence[1:] != presence[:-1], axis=1))])
    return changes[length - 1:] == changes[:len(changes) - length + 1]


def _inplane_box(mask: np.ndarray) -> Tuple[slice, slice]:
    """Rows and columns of the in-plane bounding box of a non-empty bool (Z, Y, X) mask."""
    rows, cols = np.flatnonzero(mask.any(axis=(0, 2))), np.flatnonzero(mask.any(axis=(0, 1)))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _label_components(mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """26-connected components of a bool (Z, Y, X) mask.

    Returns the component labels (Z, Y, X), 1..n, and the voxel counts of each component
    per slice, cumulated over slices: int (Z + 1, n + 1), row 0 and column 0 zero.
    """
    components, n = cc3d.connected_components(np.ascontiguousarray(mask), connectivity=26, return_N=True)
    voxels = np.flatnonzero(mask)
    slices = voxels // (mask.shape[1] * mask.shape[2])
    per_slice = np.bincount(components.ravel()[voxels].astype(np.intp) + slices * (n + 1),
                            minlength=mask.shape[0] * (n + 1)).reshape(mask.shape[0], n + 1)
    return components, np.concatenate([np.zeros((1, n + 1), np.intp), np.cumsum(per_slice, axis=0)])


def _largest(components: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """bool mask of the largest component; among equal sizes, the one whose first voxel comes
    first in C order. sizes: (n + 1,) voxel counts, index 0 = background."""
    tied = np.flatnonzero(sizes[1:] == sizes[1:].max()) + 1
    flat = components.ravel()
    first = min(tied, key=lambda c: np.argmax(flat == c)) if len(tied) > 1 else tied[0]
    return components == first


def _select_class_window(class_mask: np.ndarray, starts_by_length, label: int, tau: float,
                         offset: Tuple[int, int]) -> Optional[ClassWindow]:
    """First valid window for one class, or None.

    class_mask: bool (S, h, w), the class's voxels inside its in-plane bounding box.
    starts_by_length: (N, bool (S − N + 1,)) in search order — windows passing condition (a).

    ``bounds[N][i]`` ≥ the largest component of window ``[i, i+N)``: the smallest, over the
    windows labelled so far that contain it, of the most voxels one of their components has
    inside it (exact once the window itself is labelled).
    """
    num_slices = class_mask.shape[0]
    bounds = {n: np.full(num_slices - n + 1, np.iinfo(np.intp).max) for n, _ in starts_by_length}

    def label_window(start: int, length: int) -> Tuple[np.ndarray, np.ndarray]:
        components, cumulated = _label_components(class_mask[start:start + length])
        for n, bound in bounds.items():
            if n <= length:
                sub = bound[start:start + length - n + 1]
                np.minimum(sub, (cumulated[n:] - cumulated[:-n]).max(axis=1), out=sub)
        return components, cumulated

    _, cumulated = label_window(0, num_slices)
    class_voxels = cumulated.sum(axis=1)                                    # (S + 1,), cumulated
    for length, starts_ok in starts_by_length:
        total = class_voxels[length:] - class_voxels[:-length]
        for start in np.flatnonzero(starts_ok):
            if bounds[length][start] < tau * total[start]:
                continue
            components, cumulated = label_window(start, length)            # bound is now exact
            if bounds[length][start] >= tau * total[start]:
                component = _largest(components, cumulated[-1])
                rows, cols = _inplane_box(component)
                return ClassWindow(label, int(start), length, float(bounds[length][start] / total[start]),
                                   component[:, rows, cols], (offset[0] + rows.start, offset[1] + cols.start))
    return None


def select_windows(labels, classes: Optional[Sequence[int]] = None, tau: float = DEFAULT_TAU) -> List[ClassWindow]:
    """The adopted window of every class that has a valid one, in the order of ``classes``.

    labels: (S, H, W) integer label volume, slice axis first.
    classes: foreground labels to consider (default: every label > 0 present in ``labels``).
    tau: connectivity threshold in (0, 1].
    """
    labels = _check_labels(labels)
    if not 0 < tau <= 1:
        raise ValueError(f"PCSW: tau must be in (0, 1], got {tau!r}")
    if labels.size == 0:
        return []
    if classes is not None and any(int(k) < 1 for k in classes):
        raise ValueError(f"PCSW: classes must be foreground labels >= 1, got {list(classes)!r}")
    presence = _slice_presence(labels)                                                  # (S, V)
    if classes is None:
        classes = np.flatnonzero(presence[:, 1:].any(axis=0)) + 1
    num_slices = labels.shape[0]
    consistent = [(n, _consistent_starts(presence, n)) for n in window_lengths(num_slices)]
    windows = []
    for label in map(int, classes):
        if label >= presence.shape[1] or not presence[:, label].any():
            continue
        starts_by_length = [(n, ok & presence[:num_slices - n + 1, label]) for n, ok in consistent]
        if not any(ok.any() for _, ok in starts_by_length):
            continue
        mask = labels == label
        rows, cols = _inplane_box(mask)
        window = _select_class_window(mask[:, rows, cols], starts_by_length, label, tau, (rows.start, cols.start))
        if window is not None:
            windows.append(window)
    return windows


def _deepest_per_slice(component: np.ndarray) -> np.ndarray:
    """Per slice, the (y, x) of the component voxel farthest (Euclidean) from every voxel
    outside it, voxels beyond the in-plane edge counted as outside; first in C order among
    ties. component: bool (Z, h, w); returns int (Z, 2), meaningless for empty slices.

    The slices, each padded with a ring of outside voxels, are stacked into one 2-D image:
    a voxel's nearest outside voxel is then always in its own slice (the pad row between
    slices is at least as close as anything beyond it), so one transform serves all slices.
    """
    z, h, w = component.shape
    stacked = np.pad(component, ((0, 0), (1, 1), (1, 1))).reshape(z * (h + 2), w + 2)
    distance = ndimage.distance_transform_edt(stacked).reshape(z, h + 2, w + 2)[:, 1:-1, 1:-1]
    return np.stack(np.unravel_index(distance.reshape(z, -1).argmax(axis=1), (h, w)), axis=1)


def _farthest_outside(inside: np.ndarray) -> Optional[Tuple[int, int]]:
    """(y, x) of the False voxel of a 2-D mask farthest from every True voxel, None if none."""
    if inside.all():
        return None
    distance = ndimage.distance_transform_edt(~inside)
    y, x = np.unravel_index(np.argmax(distance), inside.shape)
    return int(y), int(x)


def window_prompts(window: ClassWindow, negative_point: bool = False) -> List[SlicePrompt]:
    """Box + positive point (+ optional negative point) for each slice the component touches."""
    component = window.component                                        # (N, h, w)
    rows, cols = component.any(axis=2), component.any(axis=1)           # (N, h), (N, w)
    y0, x0 = rows.argmax(axis=1), cols.argmax(axis=1)
    y1, x1 = rows.shape[1] - 1 - rows[:, ::-1].argmax(axis=1), cols.shape[1] - 1 - cols[:, ::-1].argmax(axis=1)
    deepest = _deepest_per_slice(component)
    oy, ox = window.offset
    prompts = []
    for z in np.flatnonzero(rows.any(axis=1)):
        negative = None
        if negative_point:   # inside the slice's box, outside the component
            negative = _farthest_outside(component[z, y0[z]:y1[z] + 1, x0[z]:x1[z] + 1])
            negative = None if negative is None else (int(oy + y0[z] + negative[0]), int(ox + x0[z] + negative[1]))
        prompts.append(SlicePrompt(
            slice_index=window.start + int(z), label=window.label,
            box=(int(oy + y0[z]), int(ox + x0[z]), int(oy + y1[z]), int(ox + x1[z])),
            positive_point=(int(oy + deepest[z, 0]), int(ox + deepest[z, 1])),
            negative_point=negative))
    return prompts


def pcsw_prompts(labels, classes: Optional[Sequence[int]] = None, tau: float = DEFAULT_TAU,
                 negative_point: bool = False) -> List[SlicePrompt]:
    """All PCSW prompts of a label volume (S, H, W): per adopted class window, per slice."""
    return [p for w in select_windows(labels, classes, tau) for p in window_prompts(w, negative_point)]
