"""nnUNetv2_sss_convert_bhsd on a fake BHSD release (official case names, tiny volumes)."""
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import run_cli
from nnunetv2_sss.data.bhsd import SELECTION_FILE, convert_bhsd, official_case_lists, official_release_json

SPACING_XYZ = (0.45, 0.45, 5.0)


def write_volume(path, array):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin((1.0, -2.0, 3.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


@pytest.fixture(scope="module")
def fake_release(tmp_path_factory):
    """Release in the v1 task layout: every case as imagesTr/X_0000 + labelsTr/X, except the
    first five test cases, which sit in imagesTs/X + labelsTs/X (the other copy's layout).
    Twelve unlabeled volumes, one of which carries a labeled case's name."""
    root = tmp_path_factory.mktemp("bhsd")
    release, unlabeled = root / "release", root / "unlabeled"
    rng = np.random.default_rng(0)
    training, test = official_case_lists()
    for index, case in enumerate(training + test):
        in_ts = case in test[:5]
        image = rng.normal(size=(3, 4, 5)).astype(np.float32)
        label = rng.integers(0, 6, size=(3, 4, 5)).astype(np.uint8)
        image_name = f"{case}.nii.gz" if in_ts else f"{case}_0000.nii.gz"
        write_volume(release / ("imagesTs" if in_ts else "imagesTr") / image_name, image)
        write_volume(release / ("labelsTs" if in_ts else "labelsTr") / f"{case}.nii.gz", label)
    (release / "dataset.json").write_text(json.dumps(official_release_json()))
    for i in range(11):
        write_volume(unlabeled / f"ID_unl{i:03d}_ID_x.nii.gz", rng.normal(size=(3, 4, 5)).astype(np.float32))
    write_volume(unlabeled / f"{training[0]}.nii.gz", rng.normal(size=(3, 4, 5)).astype(np.float32))
    return release, unlabeled


def raw_env(raw):
    return {**os.environ, "nnUNet_raw": str(raw)}


@pytest.mark.integration
def test_cli_converts_official_split(fake_release, tmp_path):
    release, unlabeled = fake_release
    raw = tmp_path / "raw"
    run_cli(["nnUNetv2_sss_convert_bhsd", "-i", release, "-u", unlabeled, "-d", 610, "-n", 5, "--seed", 3],
            raw_env(raw), timeout=300)
    out = raw / "Dataset610_BHSD"
    training, test = official_case_lists()
    assert sorted(os.listdir(out / "imagesTr")) == sorted(f"{c}_0000.nii.gz" for c in training)
    assert sorted(os.listdir(out / "labelsTr")) == sorted(f"{c}.nii.gz" for c in training)
    assert sorted(os.listdir(out / "imagesTs")) == sorted(f"{c}_0000.nii.gz" for c in test)
    assert sorted(os.listdir(out / "labelsTs")) == sorted(f"{c}.nii.gz" for c in test)
    dataset_json = json.load(open(out / "dataset.json"))
    assert dataset_json["labels"] == {"background": 0, "epidural": 1, "intraparenchymal": 2,
                                      "intraventricular": 3, "subarachnoid": 4, "subdural": 5}
    assert dataset_json["numTraining"] == 96 and dataset_json["channel_names"] == {"0": "CT"}
    # the files are the release's, untouched (one from each source layout)
    for source, target in ((release / "labelsTs" / f"{test[0]}.nii.gz", out / "labelsTs" / f"{test[0]}.nii.gz"),
                           (release / "imagesTr" / f"{training[1]}_0000.nii.gz",
                            out / "imagesTr" / f"{training[1]}_0000.nii.gz")):
        assert source.read_bytes() == target.read_bytes()
    # unlabeled: 5 of the 11 that are not labeled cases, recorded next to the data
    selection = json.load(open(out / SELECTION_FILE))
    chosen = sorted(os.listdir(out / "imagesUnlabeled"))
    assert len(chosen) == 5 and all(n.startswith("ID_unl") and n.endswith("_ID_x_0000.nii.gz") for n in chosen)
    assert [f[:-7] + "_0000.nii.gz" for f in selection["files"]] == chosen
    assert selection["seed"] == 3 and selection["num_available"] == 11
    # nnU-Net's own dataset check accepts the result
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    verify_dataset_integrity(str(out), num_processes=1)


def test_seeded_draw_and_merged_labels(fake_release, tmp_path, monkeypatch):
    release, unlabeled = fake_release
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    first = convert_bhsd(str(release), str(unlabeled), 611, num_unlabeled=4, seed=7, merge_foreground=True)
    again = convert_bhsd(str(release), str(unlabeled), 612, num_unlabeled=4, seed=7, merge_foreground=True)
    other = convert_bhsd(str(release), str(unlabeled), 613, num_unlabeled=4, seed=8, dataset_name="BHSD8")
    draws = [json.load(open(d / SELECTION_FILE))["files"] for d in (first, again, other)]
    assert draws[0] == draws[1] and draws[0] != draws[2]
    assert json.load(open(first / "dataset.json"))["labels"] == {"background": 0, "hemorrhage": 1}
    case = official_case_lists()[0][2]
    source = sitk.ReadImage(str(release / "labelsTr" / f"{case}.nii.gz"))
    merged = sitk.ReadImage(str(first / "labelsTr" / f"{case}.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(merged), sitk.GetArrayFromImage(source) > 0)
    assert merged.GetSpacing() == pytest.approx(SPACING_XYZ) and merged.GetOrigin() == source.GetOrigin()


def test_missing_and_bad_files_are_named(fake_release, tmp_path, monkeypatch):
    release, unlabeled = fake_release
    broken = tmp_path / "release"
    shutil.copytree(release, broken)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    training, _ = official_case_lists()
    os.remove(broken / "labelsTr" / f"{training[4]}.nii.gz")
    with pytest.raises(FileNotFoundError, match=f"labelsTr/{training[4]}.nii.gz"):
        convert_bhsd(str(broken), str(unlabeled), 620, num_unlabeled=2)
    assert not (tmp_path / "raw").exists()  # nothing written before the check

    write_volume(broken / "labelsTr" / f"{training[4]}.nii.gz", np.full((3, 4, 5), 9, np.uint8))
    with pytest.raises(ValueError, match=f"{training[4]}.nii.gz: label values \\[9\\]"):
        convert_bhsd(str(broken), str(unlabeled), 620, num_unlabeled=2)
    assert not (tmp_path / "raw" / "Dataset620_BHSD").exists()  # removed after the failure

    with pytest.raises(ValueError, match="20 unlabeled volumes requested"):
        convert_bhsd(str(release), str(unlabeled), 621, num_unlabeled=20)
    with pytest.raises(ValueError, match="no unlabeled folder"):
        convert_bhsd(str(release), None, 621, num_unlabeled=2)
    convert_bhsd(str(release), None, 621, num_unlabeled=0)
    with pytest.raises(FileExistsError, match="Dataset621_BHSD already exists"):
        convert_bhsd(str(release), None, 621, num_unlabeled=0, dataset_name="Other")

    edited = official_release_json()
    edited["test"] = edited["test"][1:]
    (broken / "dataset.json").write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="differ from the official BHSD lists"):
        convert_bhsd(str(broken), None, 622, num_unlabeled=0)
