"""Metrics of nnunetv2_sss.evaluation.metrics against MedPy (the code the papers' numbers come
from: SSL4MIS's test script calls medpy.metric.binary dc, jc, hd95 and asd(pred, gt)) and
hand-computed cases, and the nnUNetv2_sss_evaluate command on tiny NIfTI files."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from medpy.metric import binary as medpy_binary  # test-only dependency (setup.cfg extra "test")

from nnunetv2_sss.evaluation.evaluate import main as evaluate_main
from nnunetv2_sss.evaluation.metrics import METRIC_NAMES, binary_metrics, surface


# ---------------------------------------------------------------- MedPy, the reference code
def medpy_metrics(reference, prediction, spacing):
    """Our metric names computed by MedPy (>= 0.5); the prediction is MedPy's ``result``."""
    result = {"Dice_pct": 100 * medpy_binary.dc(prediction, reference),
              "Jaccard_pct": 100 * medpy_binary.jc(prediction, reference)}
    for unit, voxelspacing in (("vox", None), ("mm", spacing)):
        result[f"HD95_{unit}"] = medpy_binary.hd95(prediction, reference, voxelspacing=voxelspacing)
        result[f"ASD_{unit}"] = medpy_binary.asd(prediction, reference, voxelspacing=voxelspacing)
        result[f"ASSD_{unit}"] = medpy_binary.assd(prediction, reference, voxelspacing=voxelspacing)
    return result


def assert_matches_medpy(reference, prediction, spacing):
    ours, medpy = binary_metrics(reference, prediction, spacing), medpy_metrics(reference, prediction, spacing)
    assert set(medpy) == set(METRIC_NAMES)
    for name, value in medpy.items():
        assert ours[name] == pytest.approx(value, rel=1e-9, abs=1e-9), name
    return ours


def random_blob(shape, rng, fill=0.35, smooth=1):
    from scipy import ndimage
    noise = ndimage.uniform_filter(rng.random(shape), size=2 * smooth + 1)
    mask = noise > np.quantile(noise, 1 - fill)
    return mask if mask.any() else np.ones(shape, bool)


SHAPES = [((7, 9, 8), (3.0, 0.7, 1.1)), ((11, 13), (0.5, 2.0)), ((12, 20, 17), (5.0, 0.6, 0.9))]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("shape,spacing", SHAPES)
def test_matches_medpy_random(seed, shape, spacing):
    rng = np.random.default_rng(seed)
    reference, prediction = random_blob(shape, rng), random_blob(shape, rng, fill=0.25)
    assert_matches_medpy(reference, prediction, spacing)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("shape,spacing", SHAPES)
def test_matches_medpy_one_voxel_object(seed, shape, spacing):
    # a one-voxel reference (and, swapped, a one-voxel prediction) against a random blob
    rng = np.random.default_rng(100 + seed)
    blob = random_blob(shape, rng, fill=0.2)
    single = np.zeros(shape, bool)
    single[tuple(int(rng.integers(0, n)) for n in shape)] = True
    assert_matches_medpy(single, blob, spacing)
    assert_matches_medpy(blob, single, spacing)
    assert_matches_medpy(single, single, spacing)


@pytest.mark.parametrize("seed", range(3))
def test_matches_medpy_extra_far_blob(seed):
    # prediction = reference shifted a little + a small false-positive blob far away: ASD (from the
    # prediction's surface) counts the blob's surface, the reference->prediction direction barely does
    rng = np.random.default_rng(200 + seed)
    shape, spacing = (14, 40, 36), (4.0, 0.7, 0.8)
    reference = np.zeros(shape, bool)
    reference[3:10, 4:16, 5:17] = random_blob((7, 12, 12), rng, fill=0.6)
    prediction = np.roll(reference, 1, axis=int(rng.integers(0, 3)))
    prediction[5:8, 30:34, 28:32] = True
    ours = assert_matches_medpy(reference, prediction, spacing)
    for unit, voxelspacing in (("vox", None), ("mm", spacing)):
        other_direction = medpy_binary.asd(reference, prediction, voxelspacing=voxelspacing)
        assert ours[f"ASD_{unit}"] > ours[f"ASSD_{unit}"] > other_direction  # the direction matters


def test_small_objects_in_large_volume_match_medpy():
    # objects far from the border of a large empty volume: our cropped computation = MedPy's full one
    reference = np.zeros((20, 30, 30), bool)
    prediction = np.zeros_like(reference)
    reference[8:12, 10:15, 12:16] = True
    prediction[9:13, 12:18, 11:14] = True
    prediction[0:2, 28:30, 0:3] = True  # and one touching the image border
    assert_matches_medpy(reference, prediction, (2.5, 0.8, 0.8))


def test_surface_of_cube_excludes_interior_only():
    mask = np.zeros((5, 5, 5), bool)
    mask[1:4, 1:4, 1:4] = True
    assert surface(mask).sum() == 26 and not surface(mask)[2, 2, 2]


def test_shifted_cube_by_hand():
    # A = 3x3x3 cube, B = A shifted by 2 voxels along axis 0 (spacing 3 mm there).
    # A->B: face x=0: 9 points at 2, ring x=1: 8 points at 1, face x=2: 9 points at 0; B->A mirrored.
    # pooled 52 values: 18 x 0, 16 x 1, 18 x 2 -> HD95 = 2 vox, ASSD = (16 + 36) / 52 = 1 vox;
    # B->A alone: 9 x 0, 8 x 1, 9 x 2 -> ASD = 26 / 26 = 1 vox.
    reference = np.zeros((8, 5, 5), bool)
    reference[0:3, 1:4, 1:4] = True
    prediction = np.roll(reference, 2, axis=0)
    m = binary_metrics(reference, prediction, (3.0, 1.0, 1.0))
    assert m["Dice_pct"] == pytest.approx(100 * 2 * 9 / 54)
    assert m["Jaccard_pct"] == pytest.approx(100 * 9 / 45)
    assert (m["HD95_vox"], m["ASD_vox"], m["ASSD_vox"]) == pytest.approx((2.0, 1.0, 1.0))
    assert (m["HD95_mm"], m["ASD_mm"], m["ASSD_mm"]) == pytest.approx((6.0, 3.0, 3.0))
    # the same shift along an axis of spacing 1 mm gives the voxel values in mm
    m = binary_metrics(reference.transpose(1, 0, 2), prediction.transpose(1, 0, 2), (3.0, 1.0, 1.0))
    assert (m["HD95_mm"], m["ASD_mm"], m["ASSD_mm"]) == pytest.approx((2.0, 1.0, 1.0))


def test_asd_is_directed_by_hand():
    # A = one voxel, B = A plus a voxel 3 away along axis 1 (spacing 2 mm): surfaces are the voxels.
    # A->B: {0}; B->A: {0, 3} -> ASD (B->A) = 1.5, ASSD = (0 + 0 + 3) / 3 = 1 vox; in mm 3 and 2.
    reference = np.zeros((3, 7, 3), bool)
    reference[1, 1, 1] = True
    prediction = reference.copy()
    prediction[1, 4, 1] = True
    m = binary_metrics(reference, prediction, (1.0, 2.0, 1.0))
    assert (m["ASD_vox"], m["ASSD_vox"], m["ASD_mm"], m["ASSD_mm"]) == pytest.approx((1.5, 1.0, 3.0, 2.0))
    swapped = binary_metrics(prediction, reference, (1.0, 2.0, 1.0))
    assert (swapped["ASD_vox"], swapped["ASSD_vox"]) == pytest.approx((0.0, 1.0))


def test_two_voxel_cube_shifted_by_one():
    # every voxel is surface; each direction: 4 distances 0 and 4 distances 1
    reference = np.zeros((4, 4, 4), bool)
    reference[0:2, 0:2, 0:2] = True
    prediction = np.roll(reference, 1, axis=2)
    m = binary_metrics(reference, prediction, (3.0, 2.0, 0.5))
    assert (m["HD95_vox"], m["ASD_vox"], m["HD95_mm"], m["ASD_mm"]) == pytest.approx((1.0, 0.5, 0.5, 0.25))
    assert (m["ASSD_vox"], m["ASSD_mm"]) == pytest.approx((0.5, 0.25))


def test_single_voxels_anisotropic():
    reference = np.zeros((4, 4, 4), bool)
    prediction = np.zeros_like(reference)
    reference[0, 0, 0] = prediction[2, 1, 0] = True
    m = binary_metrics(reference, prediction, (3.0, 1.0, 1.0))
    assert m["Dice_pct"] == 0 and m["Jaccard_pct"] == 0
    assert m["HD95_vox"] == pytest.approx(math.sqrt(5)) and m["ASD_vox"] == pytest.approx(math.sqrt(5))
    assert m["HD95_mm"] == pytest.approx(math.sqrt(37)) and m["ASD_mm"] == pytest.approx(math.sqrt(37))
    assert m["ASSD_vox"] == pytest.approx(math.sqrt(5)) and m["ASSD_mm"] == pytest.approx(math.sqrt(37))


def test_identical_masks():
    mask = np.zeros((6, 6, 6), bool)
    mask[1:5, 2:4, 1:3] = True
    m = binary_metrics(mask, mask, (1.0, 1.0, 1.0))
    assert m["Dice_pct"] == 100 and m["Jaccard_pct"] == 100
    assert m["HD95_mm"] == 0 and m["ASD_vox"] == 0 and m["ASSD_mm"] == 0


def test_empty_masks():
    empty, full = np.zeros((4, 4, 4), bool), np.zeros((4, 4, 4), bool)
    full[1:3, 1:3, 1:3] = True
    both = binary_metrics(empty, empty, (1, 1, 1))
    assert all(math.isnan(both[k]) for k in METRIC_NAMES)
    for reference, prediction in ((empty, full), (full, empty)):
        one = binary_metrics(reference, prediction, (1, 1, 1))
        assert one["Dice_pct"] == 0 and one["Jaccard_pct"] == 0
        assert all(math.isnan(one[k]) for k in METRIC_NAMES[2:])


def test_singleton_axis_is_measured_in_2d():
    rng = np.random.default_rng(3)
    reference, prediction = random_blob((12, 10), rng), random_blob((12, 10), rng)
    flat = binary_metrics(reference[None], prediction[None], (999.0, 0.5, 2.0))
    plane = binary_metrics(reference, prediction, (0.5, 2.0))
    assert flat == pytest.approx(plane)


def test_bad_arguments():
    with pytest.raises(ValueError, match="shape"):
        binary_metrics(np.zeros((3, 3), bool), np.zeros((3, 4), bool), (1, 1))
    with pytest.raises(ValueError, match="spacing"):
        binary_metrics(np.zeros((3, 3), bool), np.zeros((3, 3), bool), (1, 1, 1))


# ---------------------------------------------------------------- the command on NIfTI files
def write_nifti(path, array, spacing_xyz):
    image = sitk.GetImageFromArray(array.astype(np.uint8))  # array axes (z, y, x)
    image.SetSpacing(spacing_xyz)
    sitk.WriteImage(image, str(path))


@pytest.fixture
def evaluation_dataset(tmp_path):
    """Dataset950 with labels {a: 1, b: 2}; two reference/prediction pairs, spacing (x,y,z) = (1, 1, 3)."""
    raw = tmp_path / "raw"
    dataset = raw / "Dataset950_Eval"
    (dataset / "labelsTs").mkdir(parents=True)
    pred = tmp_path / "pred"
    pred.mkdir()
    json.dump({"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1, "b": 2},
               "numTraining": 0, "file_ending": ".nii.gz"}, open(dataset / "dataset.json", "w"))
    cube = np.zeros((8, 5, 5), np.uint8)
    cube[0:3, 1:4, 1:4] = 1
    case1_ref, case1_pred = cube.copy(), np.roll(cube, 2, axis=0)  # label 1 shifted 2 slices (z, 3 mm)
    case1_ref[6:8, 0:2, 0:2] = 2
    case1_pred[6:8, 0:2, 1:3] = 2                                    # label 2 shifted 1 voxel in x
    case2_ref, case2_pred = cube.copy(), cube.copy()                 # label 1 perfect, label 2 absent in both
    arrays = {"case1": (case1_ref, case1_pred), "case2": (case2_ref, case2_pred)}
    for case, (ref, prd) in arrays.items():
        write_nifti(dataset / "labelsTs" / f"{case}.nii.gz", ref, (1.0, 1.0, 3.0))
        write_nifti(pred / f"{case}.nii.gz", prd, (1.0, 1.0, 3.0))
    return raw, dataset, pred, arrays


def run_evaluate(args, raw, expect_ok=True):
    env = {**os.environ, "nnUNet_raw": str(raw)}
    cmd = [os.path.join(os.path.dirname(sys.executable), "nnUNetv2_sss_evaluate"), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if expect_ok and done.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


@pytest.mark.integration
def test_cli_writes_per_case_and_summary(evaluation_dataset, tmp_path):
    raw, dataset, pred, arrays = evaluation_dataset
    out = tmp_path / "eval.json"
    done = run_evaluate(["-ref", str(dataset / "labelsTs"), "-pred", str(pred), "-d", "950",
                         "--merge-foreground", "-o", str(out), "-np", "2"], raw)
    assert "foreground (all labels > 0)" in done.stdout
    result = json.load(open(out))
    per_case = {os.path.basename(c["prediction_file"])[:5]: c for c in result["metric_per_case"]}
    assert per_case["case1"]["spacing_mm"] == [3.0, 1.0, 1.0]
    label_a = per_case["case1"]["metrics"]["1"]
    assert (label_a["HD95_vox"], label_a["HD95_mm"], label_a["ASD_mm"], label_a["ASSD_mm"]) == \
        pytest.approx((2.0, 6.0, 3.0, 3.0))
    assert result["references_without_prediction"] == [] and result["num_references_without_prediction"] == 0
    assert math.isnan(per_case["case2"]["metrics"]["2"]["Dice_pct"])
    # every stored number equals a direct computation on the arrays
    for case, (ref, prd) in arrays.items():
        for key, mask in (("1", lambda s: s == 1), ("2", lambda s: s == 2), ("(1, 2)", lambda s: s > 0)):
            expected = binary_metrics(mask(ref), mask(prd), (3.0, 1.0, 1.0))
            stored = per_case[case]["metrics"][key]
            for name, value in expected.items():
                assert stored[name] == pytest.approx(value, nan_ok=True), (case, key, name)
    # label 2 is empty in case2: its mean uses case1 only
    assert result["n"]["2"]["Dice_pct"] == 1
    assert result["mean"]["2"]["Dice_pct"] == pytest.approx(per_case["case1"]["metrics"]["2"]["Dice_pct"])
    dice_a = [per_case[c]["metrics"]["1"]["Dice_pct"] for c in ("case1", "case2")]
    assert result["mean"]["1"]["Dice_pct"] == pytest.approx(np.mean(dice_a))
    assert result["std"]["1"]["Dice_pct"] == pytest.approx(np.std(dice_a))
    assert result["headline"] == "(1, 2)"
    # foreground mean: per case mean over the classes defined there, then over cases
    per_case_fg = [np.nanmean([per_case[c]["metrics"][k]["Dice_pct"] for k in ("1", "2")]) for c in per_case]
    assert result["foreground_mean"]["Dice_pct"]["mean"] == pytest.approx(np.mean(per_case_fg))


@pytest.mark.integration
def test_cli_default_output(evaluation_dataset):
    raw, dataset, pred, _ = evaluation_dataset
    done = run_evaluate(["-ref", str(dataset / "labelsTs"), "-pred", str(pred), "-d", "Dataset950_Eval",
                         "-np", "1"], raw)
    result = json.load(open(pred / "summary_sss.json"))
    assert result["headline"] == "foreground_mean" and "(1, 2)" not in result["mean"]
    assert "mean over classes *" in done.stdout


def assert_user_error(done_or_capsys, code, *fragments):
    """One ``ERROR: ...`` line on stderr naming every fragment, exit code 2, no traceback."""
    stderr = done_or_capsys if isinstance(done_or_capsys, str) else done_or_capsys.readouterr().err
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, stderr)


def evaluate_exit(argv):
    with pytest.raises(SystemExit) as stop:
        evaluate_main(argv)
    return stop.value.code


@pytest.mark.parametrize("bad_file,array,message", [
    ("case3.nii.gz", np.zeros((8, 5, 5)), "no reference"),
    ("case2.nii.gz", np.zeros((8, 5, 6)), "shape"),
    ("case2.nii.gz", np.full((8, 5, 5), 7), "labels [7] are not in dataset.json"),
])
def test_bad_prediction_is_named(evaluation_dataset, monkeypatch, capsys, bad_file, array, message):
    raw, dataset, pred, _ = evaluation_dataset
    monkeypatch.setenv("nnUNet_raw", str(raw))
    write_nifti(pred / bad_file, array, (1.0, 1.0, 3.0))
    code = evaluate_exit(["-ref", str(dataset / "labelsTs"), "-pred", str(pred), "-d", "950", "-np", "1"])
    assert_user_error(capsys, code, message, bad_file)


@pytest.mark.integration
def test_missing_prediction_is_named_and_fails(evaluation_dataset, tmp_path):
    # the real console command: a reference without prediction fails (exit 2) naming the case,
    # and with --allow-missing the case is named in the json and on stderr
    raw, dataset, pred, _ = evaluation_dataset
    (pred / "case2.nii.gz").unlink()
    arguments = ["-ref", str(dataset / "labelsTs"), "-pred", str(pred), "-d", "950", "-np", "1"]
    done = run_evaluate(arguments, raw, expect_ok=False)
    assert_user_error(done.stderr, done.returncode, "case2.nii.gz", "--allow-missing", str(pred))
    assert "Traceback" not in done.stderr and not (pred / "summary_sss.json").exists()
    out = tmp_path / "partial.json"
    done = run_evaluate(arguments + ["--allow-missing", "-o", str(out)], raw)
    assert "case2.nii.gz" in done.stderr
    result = json.load(open(out))
    assert result["references_without_prediction"] == ["case2.nii.gz"]
    assert result["num_references_without_prediction"] == 1
    assert [os.path.basename(c["prediction_file"]) for c in result["metric_per_case"]] == ["case1.nii.gz"]


def test_user_errors_are_one_line(evaluation_dataset, monkeypatch, capsys, tmp_path):
    raw, dataset, pred, _ = evaluation_dataset
    monkeypatch.setenv("nnUNet_raw", str(raw))
    ref = str(dataset / "labelsTs")
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv, fragments in [
        (["-ref", str(tmp_path / "nope"), "-pred", str(pred), "-d", "950"], ["-ref", "nope", "does not exist"]),
        (["-ref", ref, "-pred", str(tmp_path / "nope"), "-d", "950"], ["-pred", "nope", "does not exist"]),
        (["-ref", ref, "-pred", str(empty), "-d", "950"], ["-pred", str(empty), "no '*.nii.gz' files"]),
        (["-ref", ref, "-pred", str(pred), "-d", "951"], ["dataset '951'", "no DatasetXXX_* folder with this id"]),
        (["-ref", ref, "-pred", str(pred), "-d", "ACDC"], ["dataset 'ACDC'", "not a dataset id or name"]),
        (["-ref", ref, "-pred", str(pred), "-d", "Dataset951_X"], ["dataset 'Dataset951_X'", "no Dataset951_X/dataset.json"]),
        (["-ref", ref, "-pred", str(pred), "-d", "950", "-np", "0"], ["-np 0", ">= 1"]),
        (["-ref", ref, "-pred", str(pred), "-d", "950", "-o", str(tmp_path / "x.txt")], ["-o", "must end with .json"]),
        (["-ref", ref, "-pred", str(pred), "-d", "950", "-o", str(tmp_path / "no" / "x.json")], ["-o", "folder"]),
    ]:
        assert_user_error(capsys, evaluate_exit(argv + ["-np", "1"] if "-np" not in argv else argv), *fragments)
