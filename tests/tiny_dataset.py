"""A tiny synthetic nnU-Net raw dataset for the tests (ellipsoids in noise, 3-D, 1 channel)."""
from __future__ import annotations

import json
import os

import numpy as np
import SimpleITK as sitk

SHAPE = (14, 48, 48)          # (z, y, x) voxels; z is the low-resolution axis
SPACING_ZYX = (3.0, 1.0, 1.0)  # mm
LABELS = {"background": 0, "tissue_a": 1, "tissue_b": 2}


def _write(array: np.ndarray, path: str) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in SPACING_ZYX[::-1]))
    sitk.WriteImage(image, path)


def make_case(rng: np.random.Generator):
    """``(image float32, label uint8)`` of shape ``SHAPE``: two ellipsoids at random places."""
    z, y, x = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in SHAPE], indexing="ij")
    label = np.zeros(SHAPE, np.uint8)
    for value in (1, 2):
        center = [rng.uniform(0.35, 0.65) * s for s in SHAPE]
        radii = [rng.uniform(3, 5), rng.uniform(6, 11), rng.uniform(6, 11)]
        inside = ((z - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2 + \
                 ((x - center[2]) / radii[2]) ** 2 <= 1
        label[inside] = value
    image = np.choose(label, [100.0, 180.0, 260.0]).astype(np.float32)
    image += rng.normal(0, 20, SHAPE).astype(np.float32) + 50 * (x / SHAPE[2]).astype(np.float32)
    return image, label


def build_tiny_dataset(raw_root: str, dataset_id: int = 901, num_labeled: int = 8, num_unlabeled: int = 4,
                       num_test: int = 2, seed: int = 0) -> str:
    """Write ``Dataset{id}_Tiny`` with imagesTr/labelsTr, imagesUnlabeled, imagesTs/labelsTs."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(raw_root, f"Dataset{dataset_id:03d}_Tiny")
    for sub in ("imagesTr", "labelsTr", "imagesUnlabeled", "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for i in range(num_labeled + num_unlabeled + num_test):
        image, label = make_case(rng)
        if i < num_labeled:
            images, labels, name = "imagesTr", "labelsTr", f"tiny_{i:03d}"
        elif i < num_labeled + num_unlabeled:
            images, labels, name = "imagesUnlabeled", None, f"unl_{i:03d}"
        else:
            images, labels, name = "imagesTs", "labelsTs", f"test_{i:03d}"
        _write(image, os.path.join(folder, images, f"{name}_0000.nii.gz"))
        if labels:
            _write(label, os.path.join(folder, labels, f"{name}.nii.gz"))
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump({"channel_names": {"0": "MRI"}, "labels": LABELS, "numTraining": num_labeled,
                   "file_ending": ".nii.gz", "name": "Tiny"}, f, indent=2)
    return folder
