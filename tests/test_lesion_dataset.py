"""The lesion benchmark (``nnUNetv2_sss_make_demo_dataset --task lesion``) is what its docstring
and docs/demo.md say: layout, geometry, label model, intensities, determinism for ``--seed``."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from helpers import run_cli

pytestmark = pytest.mark.integration  # builds the datasets with the real command

VOXEL_CM3 = 6 * 3 * 3 / 1000.0


def _build(root, seed: int) -> str:
    env = dict(os.environ, nnUNet_raw=str(root), nnUNet_preprocessed=str(root / "pre"),
               nnUNet_results=str(root / "res"))
    result = run_cli(["nnUNetv2_sss_make_demo_dataset", "--task", "lesion", "--labeled", 3, "--unlabeled", 2,
                      "--test", 2, "--seed", seed], env, timeout=300)
    return result.stdout.strip().splitlines()[-1]


def _arrays(folder: str, sub: str):
    names = sorted(os.listdir(os.path.join(folder, sub)))
    return names, [sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, sub, n))) for n in names]


@pytest.fixture(scope="module")
def lesion_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("lesion")
    return {name: _build(root / name, seed) for name, seed in (("a", 3), ("b", 3), ("c", 4))}


def test_layout_and_dataset_json(lesion_datasets):
    folder = lesion_datasets["a"]
    assert os.path.basename(folder) == "Dataset991_DemoLesion"
    counts = {sub: len(os.listdir(os.path.join(folder, sub)))
              for sub in ("imagesTr", "labelsTr", "imagesUnlabeled", "imagesTs", "labelsTs")}
    assert counts == {"imagesTr": 3, "labelsTr": 3, "imagesUnlabeled": 2, "imagesTs": 2, "labelsTs": 2}
    description = json.load(open(os.path.join(folder, "dataset.json")))
    assert description["labels"] == {"background": 0, "lesion_core": 1, "lesion_rim": 2}
    assert description["channel_names"] == {"0": "CT"} and description["numTraining"] == 3
    image = sitk.ReadImage(os.path.join(folder, "imagesTr", "lesion_000_0000.nii.gz"))
    assert image.GetSpacing() == (3.0, 3.0, 6.0)  # x, y in-plane 3 mm; 6 mm slices


def test_same_seed_same_data_other_seed_other_data(lesion_datasets):
    for sub in ("imagesTr", "labelsTr", "imagesUnlabeled", "imagesTs", "labelsTs"):
        names_a, arrays_a = _arrays(lesion_datasets["a"], sub)
        names_b, arrays_b = _arrays(lesion_datasets["b"], sub)
        _, arrays_c = _arrays(lesion_datasets["c"], sub)
        assert names_a == names_b
        assert all(np.array_equal(x, y) for x, y in zip(arrays_a, arrays_b))
        assert not any(np.array_equal(x, z) for x, z in zip(arrays_a, arrays_c))


def test_label_model_and_intensities(lesion_datasets):
    """Cores of 7-30 cm^3 (the documented 5-95 % range; an irregular surface may leave a few
    detached voxels): the largest core of a case is over 3 cm^3, all of them under 70; cores are
    hyperdense (+20 to +50 HU before noise), rims hypodense (-10 to -20 HU) against the brain
    tissue around them, and every rim touches a core."""
    for folder in (lesion_datasets["a"], lesion_datasets["c"]):
        for labels_sub, images_sub in (("labelsTr", "imagesTr"), ("labelsTs", "imagesTs")):
            names, labels = _arrays(folder, labels_sub)
            for name, label in zip(names, labels):
                image = sitk.GetArrayFromImage(sitk.ReadImage(
                    os.path.join(folder, images_sub, name.replace(".nii.gz", "_0000.nii.gz"))))
                assert set(np.unique(label)) == {0, 1, 2}, name
                cores, count = ndimage.label(label == 1)
                volumes = ndimage.sum(np.ones_like(label), cores, range(1, count + 1)) * VOXEL_CM3
                assert volumes.max() >= 3.0 and volumes.sum() <= 70.0, (name, volumes)  # 1 or 2 lesions
                rim = label == 2
                assert (ndimage.binary_dilation(label == 1, iterations=2) & rim).any(), name
                around = ndimage.binary_dilation(label > 0, iterations=3) & (label == 0) & (image > 0) & (image < 60)
                tissue = np.median(image[around])
                assert 12 <= np.median(image[label == 1]) - tissue <= 55, name
                assert -22 <= np.median(image[rim]) - tissue <= -4, name
