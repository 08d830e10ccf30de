"""The built-in lesion benchmark: small CT-like haemorrhages with oedema in a deformed head.

``nnUNetv2_sss_make_demo_dataset --task lesion`` (``Dataset991_DemoLesion``). Not clinical data.
Every pseudo-subject starts as the demo dataset's head (:mod:`nnunetv2_sss.data.demo_dataset`:
the MNI152 2009a template and its grey/white-matter maps from ``nilearn``, cropped and resampled
to 3 x 3 mm in-plane and 6 mm slices, about 26 x 60 x 48 voxels, then a random affine + elastic
deformation), rendered as a non-contrast head CT:

- Hounsfield-like intensities from the deformed tissue maps: grey matter ~40 HU, white matter
  ~30 HU, CSF ~8 HU, air -1000 HU, a skull of ~700-1100 HU (two voxels around the head);
  a per-subject calibration offset (+-3 HU), correlated noise (sigma 3-6 HU) and a slight blur;
- 1 or 2 lesions (one in 3 subjects has two) at random places in the brain (away from its
  border), each an irregular blob: an ellipsoid of random radii (core 9-24 mm in-plane,
  8-18 mm along the slices) whose surface is pushed in and out by smooth random noise;
- label 1 = the lesion core, hyperdense like a fresh haemorrhage: +20 to +50 HU over the
  tissue, with internal heterogeneity (so some lesions are faint);
- label 2 = a rim around the core (4-10 mm wide, also irregular), hypodense like perilesional
  oedema: -10 to -20 HU; the rim only exists inside the brain;
- partial volume: the lesion intensities are blurred before they are added, the labels are the
  sharp shapes; intensities and labels are written at the anisotropic CT-like voxel size.

Splits: ``imagesTr``/``labelsTr`` (20 labeled), ``imagesUnlabeled`` (20), ``imagesTs``/``labelsTs``
(10 held out); deterministic for ``seed``. The cores are about 7-30 cm^3 (5 %-95 %
of lesions; 3-6 of the 26 slices), the size of a small to mid-sized haematoma, and vary in
position, size, shape and contrast; the rim is faint against the noise: a task where few labeled
cases can fall short of what all labels reach, so unlabeled scans can matter. Still one anatomy
seen through deformations and a simple lesion model: a benchmark for the methods, not a clinical
claim.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
from scipy import ndimage

from nnunetv2_sss.data.demo_dataset import IN_PLANE_MM, SLICE_MM, _random_coordinates, write_template_dataset

DATASET_ID = 991
DATASET_NAME = "DemoLesion"
LABELS = {"background": 0, "lesion_core": 1, "lesion_rim": 2}
SPACING_ZYX = np.array([SLICE_MM, IN_PLANE_MM, IN_PLANE_MM])


def _smooth_noise(shape, rng: np.random.Generator, sigma_voxels) -> np.ndarray:
    """Gaussian-filtered white noise scaled to [-1, 1]."""
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma=sigma_voxels)
    return field / (np.abs(field).max() + 1e-8)


def _blob_level(shape, center_vox, radii_mm, rng: np.random.Generator, roughness: float) -> np.ndarray:
    """``f(x) = |(x - c) / r| + roughness * noise(x)``: the blob is ``f <= 1``, ``f <= 1 + w`` a shell."""
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    distance = np.sqrt(sum(((g - c) * s / r) ** 2 for g, c, s, r in zip(grid, center_vox, SPACING_ZYX, radii_mm)))
    sigma = np.maximum(np.asarray(radii_mm) / SPACING_ZYX * 0.4, 0.5)  # bumps smaller than the blob
    return distance + roughness * _smooth_noise(shape, rng, sigma)


def _head_ct(t1, grey, white, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """CT-like HU image (without noise) and the brain mask of one deformed pseudo-subject."""
    coordinates = _random_coordinates(t1.shape, rng)
    warp = lambda a: ndimage.map_coordinates(a, coordinates, order=1, mode="constant")  # noqa: E731
    t1_w, grey_w, white_w = warp(t1), warp(grey), warp(white)
    head = t1_w > 0.05 * t1.max()
    head = ndimage.binary_fill_holes(head)
    csf = np.clip(1.0 - grey_w - white_w, 0, 1)
    image = np.where(head, 40.0 * grey_w + 30.0 * white_w + 8.0 * csf, -1000.0)
    in_plane = np.zeros((1, 3, 3), bool)
    in_plane[0] = True
    skull = ndimage.binary_dilation(head, in_plane, iterations=2) & ~head
    image[skull] = rng.uniform(700, 1100)
    brain = (grey_w + white_w) > 0.5
    return image.astype(np.float32), brain


def add_lesion(image: np.ndarray, label: np.ndarray, brain: np.ndarray, rng: np.random.Generator) -> None:
    """One haemorrhage-like core (label 1) with an oedema-like rim (label 2), in place."""
    interior = ndimage.binary_erosion(brain, iterations=2)
    candidates = np.argwhere(interior if interior.any() else brain)
    center = candidates[rng.integers(len(candidates))].astype(np.float32) + rng.uniform(-0.5, 0.5, 3)
    radii = np.array([rng.uniform(8, 18), rng.uniform(9, 24), rng.uniform(9, 24)])
    level = _blob_level(image.shape, center, radii, rng, roughness=rng.uniform(0.3, 0.7))
    rim_width = rng.uniform(4.0, 10.0) / radii[1:].mean()
    rim_level = level + 0.25 * rim_width * _smooth_noise(image.shape, rng, 1.0)
    core = (level <= 1.0) & brain
    if not core.any():  # a tiny blob that missed the brain: keep its central voxel
        core[tuple(np.clip(np.round(center).astype(int), 0, np.array(image.shape) - 1))] = True
    rim = (rim_level <= 1.0 + rim_width) & brain & ~core & (label != 1)
    core_contrast = rng.uniform(20, 50)
    heterogeneity = 1.0 + 0.25 * _smooth_noise(image.shape, rng, 0.8)
    change = np.zeros(image.shape, np.float32)
    change[core] = core_contrast * heterogeneity[core]
    change[rim] = -rng.uniform(10, 20)
    image += ndimage.gaussian_filter(change, sigma=(0.3, 0.6, 0.6))  # partial volume
    label[rim & (label == 0)] = 2
    label[core] = 1


def make_lesion_subject(t1, grey, white, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """One pseudo-subject ``(image float32 in HU, label uint8)`` from the resampled template."""
    image, brain = _head_ct(t1, grey, white, rng)
    label = np.zeros(image.shape, np.uint8)
    for _ in range(1 + int(rng.uniform() < 1 / 3)):
        add_lesion(image, label, brain, rng)
    image += rng.uniform(-3, 3)
    noise = ndimage.gaussian_filter(rng.normal(size=image.shape), sigma=(0.0, 0.7, 0.7))
    image += rng.uniform(3, 6) * noise / (noise.std() + 1e-8)
    return image.astype(np.float32), label


def build_lesion_dataset(raw_root: str, dataset_id: int = DATASET_ID, num_labeled: int = 20,
                         num_unlabeled: int = 20, num_test: int = 10, seed: int = 0) -> str:
    """Write ``Dataset{id}_DemoLesion`` (imagesTr/labelsTr, imagesUnlabeled, imagesTs/labelsTs)
    into ``raw_root``; deterministic for ``seed``. Returns the dataset folder."""
    return write_template_dataset(
        raw_root, dataset_id, DATASET_NAME, make_lesion_subject, (num_labeled, num_unlabeled, num_test), seed,
        tuple(float(s) for s in SPACING_ZYX[::-1]),
        {"case_prefix": "lesion", "channel_names": {"0": "CT"}, "labels": LABELS,
         "description": "Synthetic haemorrhage-like lesions (core) with oedema-like rims in CT-like "
                        "pseudo-subjects deformed from the MNI152 2009a template (nilearn); see "
                        "nnunetv2_sss.data.lesion_dataset"})
