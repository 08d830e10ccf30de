"""nnUNetv2_sss_convert_acdc on a fake ACDC release (the release's folder and file naming,
tiny volumes) and the Table-1 split files it writes."""
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import run_cli
from nnunetv2_sss.data.acdc import convert_acdc
from nnunetv2_sss.data.splits import hidden_label_cases


def write_volume(path, array):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.5, 1.5, 10.0))
    sitk.WriteImage(image, str(path))


@pytest.fixture(scope="module")
def fake_acdc(tmp_path_factory):
    """``ACDC/database/training/patientXXX/``: Info.cfg, the 4-D cine, and two frames
    (ED = frame01, ES = a patient-specific frame) with ``_gt`` labels; 100 patients."""
    root = tmp_path_factory.mktemp("acdc") / "ACDC"
    rng = np.random.default_rng(1)
    for number in range(1, 101):
        patient = f"patient{number:03d}"
        folder = root / "database" / "training" / patient
        folder.mkdir(parents=True)
        es_frame = 8 + number % 7
        (folder / "Info.cfg").write_text(f"ED: 1\nES: {es_frame}\n")
        write_volume(folder / f"{patient}_4d.nii.gz", rng.normal(size=(3, 2, 4, 4)).astype(np.float32))
        for frame in (1, es_frame):
            write_volume(folder / f"{patient}_frame{frame:02d}.nii.gz", rng.normal(size=(2, 4, 4)).astype(np.float32))
            write_volume(folder / f"{patient}_frame{frame:02d}_gt.nii.gz",
                         rng.integers(0, 4, size=(2, 4, 4)).astype(np.uint8))
    return root


@pytest.mark.integration
def test_cli_converts_and_writes_table1_splits(fake_acdc, tmp_path):
    raw, preprocessed = tmp_path / "raw", tmp_path / "preprocessed"
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(preprocessed)}
    run_cli(["nnUNetv2_sss_convert_acdc", "-i", fake_acdc, "-d", 27], env, timeout=300)
    out = raw / "Dataset027_ACDC"
    patients = lambda folder: sorted({n[:10] for n in os.listdir(out / folder)})  # noqa: E731
    assert len(os.listdir(out / "imagesTr")) == 160 and len(os.listdir(out / "labelsTr")) == 160
    assert len(os.listdir(out / "imagesTs")) == 40 and len(os.listdir(out / "labelsTs")) == 40
    assert "patient001" in patients("imagesTs") and "patient001" not in patients("imagesTr")  # SSL4MIS test patient
    assert "patient099_frame01_0000.nii.gz" in os.listdir(out / "imagesTr")
    es = f"patient099_frame{8 + 99 % 7:02d}"
    assert (out / "labelsTr" / f"{es}.nii.gz").read_bytes() == \
        (fake_acdc / "database" / "training" / "patient099" / f"{es}_gt.nii.gz").read_bytes()
    assert json.load(open(out / "dataset.json"))["labels"] == {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}

    splits = json.load(open(preprocessed / "Dataset027_ACDC" / "splits_final.json"))
    semi = json.load(open(preprocessed / "Dataset027_ACDC" / "splits_semi_supervised.json"))
    frames = lambda *numbers: sorted(c[:-12] for c in os.listdir(out / "imagesTr")  # noqa: E731
                                     if int(c[7:10]) in numbers)
    assert splits[0]["train"] == semi[0]["labeled"] == frames(99, 38, 50)
    assert splits[1]["train"] == semi[1]["labeled"] == frames(99, 38, 50, 100, 58, 21, 49)
    validation = frames(28, 85, 82, 87, 19, 30, 78, 45, 2, 39)
    assert splits[0]["val"] == splits[1]["val"] == validation
    all_cases = sorted(c[:-12] for c in os.listdir(out / "imagesTr"))
    for fold, num_labeled in ((0, 3), (1, 7)):
        unlabeled = semi[fold]["unlabeled"]
        assert len(unlabeled) == 2 * (70 - num_labeled)
        assert sorted(unlabeled + semi[fold]["labeled"] + validation) == all_cases
        # the lead's reader of the split file sees the same hidden cases
        assert hidden_label_cases(str(preprocessed / "Dataset027_ACDC"), fold) == unlabeled


def test_bad_release_is_named(fake_acdc, tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    with pytest.raises(FileNotFoundError, match="training/"):
        convert_acdc(str(tmp_path), 28)
    broken = tmp_path / "ACDC"
    shutil.copytree(fake_acdc / "database" / "training", broken / "training")
    os.remove(broken / "training" / "patient042" / "patient042_frame01_gt.nii.gz")
    with pytest.raises(FileNotFoundError, match="patient042_frame01_gt.nii.gz"):
        convert_acdc(str(broken), 28)
    os.remove(broken / "training" / "patient042" / "patient042_frame01.nii.gz")
    with pytest.raises(ValueError, match="patient042: expected 2 annotated frames"):
        convert_acdc(str(broken), 28)
    shutil.rmtree(broken / "training" / "patient042")
    with pytest.raises(FileNotFoundError, match="patient042 is missing"):
        convert_acdc(str(broken), 28)
    assert not (tmp_path / "raw").exists()

    first = convert_acdc(str(fake_acdc), 29)
    shutil.rmtree(first)  # converting again: the split files of the first run are still there
    with pytest.raises(FileExistsError, match="splits_final.json exists"):
        convert_acdc(str(fake_acdc), 29)
    assert not (tmp_path / "raw" / "Dataset029_ACDC").exists()  # refused before writing
    convert_acdc(str(fake_acdc), 29, overwrite_splits=True)
