"""The built-in demo dataset: pseudo-subjects made from one real brain template.

Source: the MNI152 (ICBM 2009a symmetric) T1 template and its grey/white-matter
probability maps, shipped inside the ``nilearn`` package (no download). Every
pseudo-subject is the template under a random affine + smooth elastic deformation, a
multiplicative bias field, a gamma contrast change and Gaussian noise; its label map
(1 = grey matter, 2 = white matter: tissue probability > 0.5) follows the same
deformation. This is one anatomy seen through random deformations, not a population: it
exercises the full pipeline on real-looking MR structure, it says nothing about clinical
accuracy.

Geometry: resampled to 3 x 3 mm in-plane and 6 mm slices (axial slices, the
low-resolution axis, as in clinical MR/CT), about 26 x 64 x 56 voxels.
"""
from __future__ import annotations

import json
import os
from typing import Tuple

import numpy as np
from scipy import ndimage

IN_PLANE_MM = 3.0
SLICE_MM = 6.0
LABELS = {"background": 0, "grey_matter": 1, "white_matter": 2}


def _template() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T1, grey-matter and white-matter probability arrays in (z, y, x) at 1 mm (nilearn's files)."""
    import nibabel
    from nilearn.datasets import load_mni152_gm_template, load_mni152_template, load_mni152_wm_template
    arrays = []
    for loader in (load_mni152_template, load_mni152_gm_template, load_mni152_wm_template):
        image = loader(resolution=1)
        arrays.append(np.asarray(nibabel.as_closest_canonical(image).get_fdata(), np.float32).transpose(2, 1, 0))
    return tuple(arrays)


def _crop_and_resample(t1, grey, white):
    """Crop to the head's bounding box and resample (trilinear) to the demo's voxel size."""
    box = ndimage.find_objects((t1 > 0.05 * t1.max()).astype(np.uint8))[0]
    zoom = (1.0 / SLICE_MM, 1.0 / IN_PLANE_MM, 1.0 / IN_PLANE_MM)
    return [ndimage.zoom(a[box], zoom, order=1) for a in (t1, grey, white)]


def _random_coordinates(shape, rng: np.random.Generator) -> np.ndarray:
    """Sampling grid ``(3, *shape)``: random affine (rotation up to 8 degrees in-plane, scale
    0.9-1.1, shift up to 2 voxels) plus a smooth elastic field (up to ~2 in-plane voxels)."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    center = (np.array(shape, np.float32) - 1) / 2
    angle = np.deg2rad(rng.uniform(-8, 8))
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    matrix = rotation * rng.uniform(0.9, 1.1)
    shift = rng.uniform(-2, 2, 3) * np.array([0.5, 1, 1])
    coordinates = np.einsum("ij,j...->i...", matrix, grid - center[:, None, None, None]) \
        + (center + shift)[:, None, None, None]
    for axis, amplitude in ((1, 2.0), (2, 2.0), (0, 0.5)):
        field = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma=4)
        coordinates[axis] += amplitude * field / (np.abs(field).max() + 1e-6)
    return coordinates.astype(np.float32)


def make_subject(t1, grey, white, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """One pseudo-subject ``(image float32, label uint8)`` from the resampled template."""
    coordinates = _random_coordinates(t1.shape, rng)
    warp = lambda a: ndimage.map_coordinates(a, coordinates, order=1, mode="constant")
    image, grey_w, white_w = warp(t1), warp(grey), warp(white)
    label = np.zeros(t1.shape, np.uint8)
    label[grey_w > 0.5] = 1
    label[white_w > 0.5] = 2
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in t1.shape], indexing="ij")
    coefficients = rng.uniform(-0.25, 0.25, 4)
    bias = np.exp(coefficients[0] * x + coefficients[1] * y + coefficients[2] * z + coefficients[3] * x * y)
    image = np.clip(image * bias / image.max(), 0, None) ** rng.uniform(0.8, 1.25)
    image = 1000 * image + rng.normal(0, rng.uniform(10, 30), image.shape)
    return image.astype(np.float32), label


def write_template_dataset(raw_root: str, dataset_id: int, name: str, make, counts: Tuple[int, int, int], seed: int,
                           spacing_xyz: Tuple[float, float, float], dataset_json: dict) -> str:
    """Write ``Dataset{id}_{name}`` into ``raw_root``: ``counts`` = (labeled, unlabeled, test) pseudo-subjects
    ``make(t1, grey, white, rng) -> (image, label)`` of the resampled template, in that order, into
    imagesTr/labelsTr, imagesUnlabeled and imagesTs/labelsTs, plus ``dataset_json`` (with ``name`` and
    ``numTraining`` added); deterministic for ``seed``. Returns the dataset folder."""
    import SimpleITK as sitk

    folder = os.path.join(raw_root, f"Dataset{dataset_id:03d}_{name}")
    t1, grey, white = _crop_and_resample(*_template())
    rng = np.random.default_rng(seed)
    num_labeled, num_unlabeled, num_test = counts
    plan = [("imagesTr", "labelsTr", dataset_json["case_prefix"])] * num_labeled + \
        [("imagesUnlabeled", None, "unlabeled")] * num_unlabeled + [("imagesTs", "labelsTs", "test")] * num_test
    for sub in {p[0] for p in plan} | {p[1] for p in plan if p[1]}:
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for index, (images, labels, prefix) in enumerate(plan):
        image, label = make(t1, grey, white, rng)
        case = f"{prefix}_{index:03d}"
        for array, path in ((image, os.path.join(folder, images, f"{case}_0000.nii.gz")),
                            (label, os.path.join(folder, labels, f"{case}.nii.gz") if labels else None)):
            if path is not None:
                itk = sitk.GetImageFromArray(array)
                itk.SetSpacing(tuple(float(s) for s in spacing_xyz))
                sitk.WriteImage(itk, path)
    description = {k: v for k, v in dataset_json.items() if k != "case_prefix"}
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump({"channel_names": description.pop("channel_names"), "labels": description.pop("labels"),
                   "numTraining": num_labeled, "file_ending": ".nii.gz", "name": name, **description}, f, indent=2)
    return folder


def build_demo_dataset(raw_root: str, dataset_id: int = 990, num_labeled: int = 8, num_unlabeled: int = 12,
                       num_test: int = 4, seed: int = 0) -> str:
    """Write ``Dataset{id}_DemoBrain`` (imagesTr/labelsTr, imagesUnlabeled, imagesTs/labelsTs)
    into ``raw_root``; deterministic for ``seed``. Returns the dataset folder."""
    return write_template_dataset(
        raw_root, dataset_id, "DemoBrain", make_subject, (num_labeled, num_unlabeled, num_test), seed,
        (IN_PLANE_MM, IN_PLANE_MM, SLICE_MM),
        {"case_prefix": "brain", "channel_names": {"0": "T1"}, "labels": LABELS,
         "description": "Pseudo-subjects deformed from the MNI152 2009a template (nilearn); see "
                        "nnunetv2_sss.data.demo_dataset"})
