"""nnUNetv2_sss_results on validation summaries written by nnU-Net's own
compute_metrics_on_folder (and by nnUNetv2_sss_evaluate) for predictions made up here."""
import csv
import os

import numpy as np
import pytest
import SimpleITK as sitk
from batchgenerators.utilities.file_and_folder_operations import save_json

from helpers import run_cli
from nnunetv2_sss.errors import UserError
from nnunetv2_sss.evaluation.evaluate import evaluate_folders, stats_of
from nnunetv2_sss.evaluation.results_table import main as results_main

CONFIG, PLANS = "3d_fullres", "nnUNetPlans"


def write_prediction(reference_file, target_file, shift):
    reference = sitk.ReadImage(str(reference_file))
    array = np.roll(sitk.GetArrayFromImage(reference), shift, axis=2)
    prediction = sitk.GetImageFromArray(array)
    prediction.CopyInformation(reference)
    sitk.WriteImage(prediction, str(target_file))
    return sitk.GetArrayFromImage(reference), array


def dice_by_hand(pairs):
    """nnU-Net's validation Dice x 100: per class mean over cases (NaN cases left out), then over classes."""
    per_class = []
    for label in (1, 2):
        values = []
        for ref, pred in pairs:
            a, b = ref == label, pred == label
            if a.any() or b.any():
                values.append(2 * np.sum(a & b) / (a.sum() + b.sum()))
        per_class.append(np.mean(values))
    return 100 * np.mean(per_class)


def test_results_table_from_real_summaries(nnunet_dataset, tmp_path):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    raw = nnunet_dataset.raw / nnunet_dataset.dataset_name
    cases = sorted(os.listdir(raw / "labelsTr"))
    results = tmp_path / "results" / nnunet_dataset.dataset_name
    expected = {}
    for trainer, shift in (("nnUNetTrainer", 2), ("nnUNetTrainerMeanTeacher", 1)):
        dices = []
        for fold, fold_cases in ((0, cases[:4]), (1, cases[4:])):
            validation = results / f"{trainer}__{PLANS}__{CONFIG}" / f"fold_{fold}" / "validation"
            validation.mkdir(parents=True)
            pairs = [write_prediction(raw / "labelsTr" / c, validation / c, shift + fold) for c in fold_cases]
            compute_metrics_on_folder(str(raw / "labelsTr"), str(validation), str(validation / "summary.json"),
                                      SimpleITKIO(), ".nii.gz", [1, 2], None, num_processes=1)
            dices.append(dice_by_hand(pairs))
        expected[trainer] = dices
    # the Mean Teacher's fold 1 was also evaluated with our command: its 95HD/ASD/ASSD enter the table
    mt_fold1 = results / f"nnUNetTrainerMeanTeacher__{PLANS}__{CONFIG}" / "fold_1" / "validation"
    dataset_json = {"labels": {"background": 0, "tissue_a": 1, "tissue_b": 2}, "file_ending": ".nii.gz"}
    with pytest.raises(UserError, match="no prediction for 4 of 8 reference cases.*--allow-missing"):
        evaluate_folders(str(raw / "labelsTr"), str(mt_fold1), dataset_json)
    ours = evaluate_folders(str(raw / "labelsTr"), str(mt_fold1), dataset_json, allow_missing=True)
    assert ours["references_without_prediction"] == cases[:4]
    save_json(ours, str(mt_fold1 / "summary_sss.json"), sort_keys=False)
    # test set: our evaluation of made-up test predictions, one folder per trainer
    # (the nnUNetTrainer folder lacks the last test case, evaluated with allow_missing: the table names it)
    test_dirs, test_cases = [], sorted(os.listdir(raw / "labelsTs"))
    for trainer, shift, predicted in (("nnUNetTrainer", 3, test_cases[:-1]),
                                      ("nnUNetTrainerMeanTeacher", 0, test_cases)):
        folder = tmp_path / f"test_{trainer}"
        folder.mkdir()
        for case in predicted:
            write_prediction(raw / "labelsTs" / case, folder / case, shift)
        save_json(evaluate_folders(str(raw / "labelsTs"), str(folder), dataset_json, merge_foreground=True,
                                   allow_missing=True), str(folder / "summary_sss.json"), sort_keys=False)
        test_dirs.append(str(folder))

    out = tmp_path / "tables"
    done = run_cli(["nnUNetv2_sss_results", "-d", nnunet_dataset.dataset_id, "-c", CONFIG,
                    "-tr", "nnUNetTrainer", "nnUNetTrainerMeanTeacher", "-f", "0", "1", "2",
                    "--test", *test_dirs, "-o", out], nnunet_dataset.env(nnUNet_results=tmp_path / "results"))
    rows = list(csv.DictReader(open(out / f"results_{CONFIG}_{PLANS}.csv")))
    assert [(r["trainer"], r["evaluated_on"]) for r in rows] == [
        ("nnUNetTrainer", "validation"), ("nnUNetTrainer", "test"),
        ("nnUNetTrainerMeanTeacher", "validation"), ("nnUNetTrainerMeanTeacher", "test")]
    validation = {r["trainer"]: r for r in rows if r["evaluated_on"] == "validation"}
    for trainer, dices in expected.items():
        assert float(validation[trainer]["Dice_pct_mean"]) == pytest.approx(np.mean(dices), abs=1e-3)
        assert float(validation[trainer]["Dice_pct_std"]) == pytest.approx(np.std(dices, ddof=1), abs=1e-3)
        assert validation[trainer]["n"] == "2 folds"
    # unlabeled: nnU-Net's trainer none, Mean Teacher the 4 preprocessed imagesUnlabeled cases
    assert validation["nnUNetTrainer"]["unlabeled"] == "0"
    assert validation["nnUNetTrainerMeanTeacher"]["unlabeled"] == "4"
    # distances only where summary_sss.json exists (Mean Teacher fold 1)
    assert validation["nnUNetTrainer"]["HD95_vox_mean"] == "nan"
    hd95 = stats_of(ours, ours["headline"])["HD95_vox"]["mean"]
    assert float(validation["nnUNetTrainerMeanTeacher"]["HD95_vox_mean"]) == pytest.approx(hd95, abs=1e-3)
    assert validation["nnUNetTrainerMeanTeacher"]["HD95_vox_n"] == "1"
    for name in ("ASD_vox", "ASSD_vox"):
        value = stats_of(ours, ours["headline"])[name]["mean"]
        assert float(validation["nnUNetTrainerMeanTeacher"][f"{name}_mean"]) == pytest.approx(value, abs=1e-3)
        assert validation["nnUNetTrainer"][f"{name}_mean"] == "nan"
    test = {r["trainer"]: r for r in rows if r["evaluated_on"] == "test"}
    for trainer, folder in zip(("nnUNetTrainer", "nnUNetTrainerMeanTeacher"), test_dirs):
        from batchgenerators.utilities.file_and_folder_operations import load_json
        result = load_json(os.path.join(folder, "summary_sss.json"))
        merged = stats_of(result, "(1, 2)")
        assert float(test[trainer]["Dice_pct_mean"]) == pytest.approx(merged["Dice_pct"]["mean"], abs=1e-3)
        assert float(test[trainer]["ASD_vox_std"]) == pytest.approx(merged["ASD_vox"]["std"], abs=1e-3)
        assert float(test[trainer]["ASSD_vox_mean"]) == pytest.approx(merged["ASSD_vox"]["mean"], abs=1e-3)
    assert float(test["nnUNetTrainerMeanTeacher"]["Dice_pct_mean"]) == pytest.approx(100)

    markdown = (out / f"results_{CONFIG}_{PLANS}.md").read_text()
    assert ("| Method | unlabeled | evaluated on | n | Dice % | Jaccard % | 95HD (vox) | ASD (vox) | ASSD (vox) |"
            in markdown)
    assert "fold_2" in markdown and "missing" in markdown  # fold 2 was asked for and is absent
    assert f"1 reference cases had no prediction and were not evaluated: {test_cases[-1]}" in markdown
    assert "nnUNetTrainerMeanTeacher/summary_sss.json: " not in markdown
    assert f"| {hd95:.2f} (n=1) |" in markdown  # defined in one of the two folds: no std (ddof 1)
    assert (out / f"results_{CONFIG}_{PLANS}.png").read_bytes()[:4] == b"\x89PNG"
    assert "nnUNetTrainerMeanTeacher" in done.stdout


def test_results_table_errors(nnunet_dataset, tmp_path, monkeypatch, capsys):
    for name, value in nnunet_dataset.env(nnUNet_results=tmp_path).items():
        if name.startswith("nnUNet_"):
            monkeypatch.setenv(name, value)
    arguments = ["-d", str(nnunet_dataset.dataset_id), "-c", CONFIG, "-tr", "nnUNetTrainer"]
    old_summary = tmp_path / "old.json"  # written before ASSD existed: its "ASD" was the symmetric one
    save_json({"definitions": {"ASD": "mean of the pooled surface distances"}}, str(old_summary))

    def user_error(argv, *fragments):
        with pytest.raises(SystemExit) as stop:
            results_main(argv)
        stderr = capsys.readouterr().err
        assert stop.value.code == 2, stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ERROR: "), stderr
        for fragment in fragments:
            assert fragment in lines[0], (fragment, stderr)

    user_error(arguments, "fold_0", "no validation summary")
    user_error(arguments + ["--test", str(tmp_path / "a"), str(tmp_path / "b")], "--test", "one entry per trainer")
    user_error(arguments + ["--test", str(tmp_path)], "--test", "summary_sss.json: does not exist")
    user_error(arguments + ["--test", str(old_summary)], "old.json", "older nnUNetv2_sss_evaluate")
    user_error(["-d", "987"] + arguments[2:], "dataset '987'", "no DatasetXXX_* folder with this id")
    monkeypatch.delenv("nnUNet_results")
    user_error(arguments, "nnUNet_results: not set")
