"""The foundation through the real commands: preprocess unlabeled, train, --c, --val, predict,
find_best_configuration, label hiding, bad input, pip install."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers import run_cli

pytestmark = pytest.mark.integration
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fold_dir(results, dataset, trainer, configuration, fold=0):
    return results / dataset.dataset_name / f"{trainer}__nnUNetPlans__{configuration}" / f"fold_{fold}"


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


RESTORE_SCRIPT = """
import sys, torch
from nnunetv2.run.run_training import get_trainer_from_args
trainer = get_trainer_from_args('901', '2d', 0, 'nnUNetTrainerMeanTeacher', 'nnUNetPlans', True, torch.device('cpu'))
checkpoint = torch.load(sys.argv[1], map_location='cpu', weights_only=False)
trainer.load_checkpoint(sys.argv[1])
same = lambda a, b: all(torch.equal(a[k], b[k]) for k in b)
assert same(trainer.teacher.state_dict(), checkpoint['network_weights']), 'teacher not restored'
assert same(trainer.network.state_dict(), checkpoint['student_weights']), 'student not restored'
assert trainer.ssl_iteration == checkpoint['ssl_iteration']
assert trainer.optimizer.state_dict()['state'].keys() == checkpoint['optimizer_state']['state'].keys()
print('restored', trainer.ssl_iteration, trainer.current_epoch)
"""


def test_mean_teacher_2d_resume_val_predict(nnunet_dataset, tmp_path):
    results = tmp_path / "results"
    env = nnunet_dataset.env(nnUNet_results=results)
    run_cli(["nnUNetv2_train", nnunet_dataset.dataset_id, "2d", 0, "-tr", "nnUNetTrainerMeanTeacher", "-device", "cpu"], env)
    fold = _fold_dir(results, nnunet_dataset, "nnUNetTrainerMeanTeacher", "2d")
    first = _load(fold / "checkpoint_final.pth")
    # the teacher is what nnUNetv2_predict loads (stored once, as network_weights); the student is kept for --c
    assert "teacher_weights" not in first
    assert not _same_state(first["network_weights"], first["student_weights"])
    assert first["ssl_iteration"] == 2 and first["current_epoch"] == 1
    assert len(first["logging"]["ssl_unlabeled_loss"]) == 1
    assert np.isfinite(first["logging"]["ssl_unlabeled_loss"][0])
    assert not list(fold.glob("*.tmp"))
    progress = sitk.ReadImage(str(fold / "progress.png"))
    assert progress.GetSize()[1] > 5400  # nnU-Net's three panels (5400 px) plus the semi-supervised one

    # --c restores student, teacher, optimizer and counters exactly ...
    restored = subprocess.run([sys.executable, "-c", RESTORE_SCRIPT, str(fold / "checkpoint_final.pth")],
                              env=env, capture_output=True, text=True)
    assert restored.returncode == 0, restored.stderr[-3000:]
    # ... and continues the schedule
    run_cli(["nnUNetv2_train", nnunet_dataset.dataset_id, "2d", 0, "-tr", "nnUNetTrainerMeanTeacher", "-device", "cpu",
             "--c"], nnunet_dataset.env(nnUNet_results=results, nnUNet_sss_num_epochs=2))
    second = _load(fold / "checkpoint_final.pth")
    assert second["ssl_iteration"] == 4 and second["current_epoch"] == 2
    assert second["logging"]["ssl_unlabeled_loss"][0] == first["logging"]["ssl_unlabeled_loss"][0]

    run_cli(["nnUNetv2_train", nnunet_dataset.dataset_id, "2d", 0, "-tr", "nnUNetTrainerMeanTeacher", "-device", "cpu",
             "--val"], env)
    assert json.loads((fold / "validation" / "summary.json").read_text())["foreground_mean"]["Dice"] >= 0

    run_cli(["nnUNetv2_find_best_configuration", nnunet_dataset.dataset_id, "-c", "2d", "-tr",
             "nnUNetTrainerMeanTeacher", "-f", "0"], env)
    assert (results / nnunet_dataset.dataset_name / "inference_information.json").is_file()

    predictions = tmp_path / "predictions"
    run_cli(["nnUNetv2_predict", "-i", nnunet_dataset.raw / nnunet_dataset.dataset_name / "imagesTs", "-o", predictions,
             "-d", nnunet_dataset.dataset_id, "-c", "2d", "-f", 0, "-tr", "nnUNetTrainerMeanTeacher", "-device", "cpu",
             "--disable_tta", "-npp", 1, "-nps", 1], env)
    assert sorted(p.name for p in predictions.glob("*.nii.gz")) == ["test_012.nii.gz", "test_013.nii.gz"]


def test_unimatch_3d_train_and_predict(nnunet_dataset, tmp_path):
    results = tmp_path / "results"
    env = nnunet_dataset.env(nnUNet_results=results)
    run_cli(["nnUNetv2_train", nnunet_dataset.dataset_id, "3d_fullres", 0, "-tr", "nnUNetTrainerUniMatchV2",
             "-device", "cpu"], env)
    fold = _fold_dir(results, nnunet_dataset, "nnUNetTrainerUniMatchV2", "3d_fullres")
    checkpoint = _load(fold / "checkpoint_final.pth")
    assert np.isfinite(checkpoint["logging"]["ssl_unlabeled_loss"][0])
    assert 0 <= checkpoint["logging"]["ssl_confident_share"][0] <= 1
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "Unlabeled pool: 4 cases, batch size 2" in log
    predictions = tmp_path / "predictions"
    run_cli(["nnUNetv2_predict", "-i", nnunet_dataset.raw / nnunet_dataset.dataset_name / "imagesTs", "-o", predictions,
             "-d", nnunet_dataset.dataset_id, "-c", "3d_fullres", "-f", 0, "-tr", "nnUNetTrainerUniMatchV2",
             "-device", "cpu", "--disable_tta", "-npp", 0, "-nps", 0], env)  # sequential (Mean Teacher's: workers)
    run_cli(["nnUNetv2_evaluate_simple", nnunet_dataset.raw / nnunet_dataset.dataset_name / "labelsTs", predictions,
             "-l", 1, 2], env)
    summary = json.loads((predictions / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2"}


def test_hidden_labels_are_never_read(nnunet_dataset, tmp_path):
    """Labels of the cases made unlabeled by nnUNetv2_sss_make_splits are deleted: training still works."""
    preprocessed = nnunet_dataset.copy_preprocessed(tmp_path)
    dataset_folder = preprocessed / nnunet_dataset.dataset_name
    for split_file in ("splits_final.json",):
        (dataset_folder / split_file).unlink(missing_ok=True)
    shutil.rmtree(dataset_folder / "nnUNetPlans_2d_unlabeled")  # the pool is the hidden cases only
    env = nnunet_dataset.env(nnUNet_preprocessed=preprocessed, nnUNet_results=tmp_path / "results")
    run_cli(["nnUNetv2_sss_make_splits", "-d", nnunet_dataset.dataset_id, "--num-labeled", 2, "--seed", 7], env)
    split = json.loads((dataset_folder / "splits_semi_supervised.json").read_text())[0]
    assert len(split["labeled"]) == 2 and len(split["unlabeled"]) == 4
    for case in split["unlabeled"]:
        (dataset_folder / "nnUNetPlans_2d" / f"{case}_seg.b2nd").unlink()
        (dataset_folder / "gt_segmentations" / f"{case}.nii.gz").unlink()
    run_cli(["nnUNetv2_train", nnunet_dataset.dataset_id, "2d", 0, "-tr", "nnUNetTrainerMeanTeacher", "-device", "cpu"],
            env)
    fold = _fold_dir(tmp_path / "results", nnunet_dataset, "nnUNetTrainerMeanTeacher", "2d")
    assert "Unlabeled pool: 4 cases" in next(fold.glob("training_log_*.txt")).read_text()
    # fold 'all' would train on the hidden cases' labels: refused
    refused = run_cli(["nnUNetv2_train", nnunet_dataset.dataset_id, "2d", "all", "-tr", "nnUNetTrainerMeanTeacher",
                       "-device", "cpu"], env, expect_failure=True)
    assert "meant to be unlabeled" in refused.stderr


def test_no_unlabeled_data_fails_fast(nnunet_dataset, tmp_path):
    preprocessed = nnunet_dataset.copy_preprocessed(tmp_path)
    shutil.rmtree(preprocessed / nnunet_dataset.dataset_name / "nnUNetPlans_2d_unlabeled")
    env = nnunet_dataset.env(nnUNet_preprocessed=preprocessed, nnUNet_results=tmp_path / "results")
    failed = run_cli(["nnUNetv2_train", nnunet_dataset.dataset_id, "2d", 0, "-tr", "nnUNetTrainerUniMatchV2",
                      "-device", "cpu"], env, expect_failure=True)
    assert "nnUNetv2_sss_preprocess_unlabeled -d Dataset901_Tiny -c 2d" in failed.stderr
    assert not list((tmp_path / "results").rglob("checkpoint_*.pth"))


def test_preprocess_unlabeled_skips_done_and_rejects_nan(nnunet_dataset, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(nnunet_dataset.raw, raw)
    preprocessed = nnunet_dataset.copy_preprocessed(tmp_path)
    env = nnunet_dataset.env(nnUNet_raw=raw, nnUNet_preprocessed=preprocessed)
    again = run_cli(["nnUNetv2_sss_preprocess_unlabeled", "-d", nnunet_dataset.dataset_id, "-c", "2d", "-np", 1], env)
    assert "4 already done, 0 to preprocess" in again.stdout

    images = raw / nnunet_dataset.dataset_name / "imagesUnlabeled"
    image = sitk.ReadImage(str(images / "unl_008_0000.nii.gz"))
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = np.nan
    broken = sitk.GetImageFromArray(array)
    broken.CopyInformation(image)
    sitk.WriteImage(broken, str(images / "bad_0000.nii.gz"))
    failed = run_cli(["nnUNetv2_sss_preprocess_unlabeled", "-d", nnunet_dataset.dataset_id, "-c", "2d", "-np", 1,
                      "--clean"], env, expect_failure=True)
    assert "bad_0000.nii.gz: contains NaN or infinite voxels" in failed.stderr
    out = preprocessed / nnunet_dataset.dataset_name / "nnUNetPlans_2d_unlabeled"
    assert not (out / "bad.pkl").exists() and not (out / "bad.b2nd").exists()


def test_pip_install_non_editable(tmp_path):
    """``pip install .`` ships the trainers folder inside the package, one import line per trainer."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), REPO], check=True, capture_output=True)
    trainers = target / "nnunetv2_sss" / "trainers"
    assert (trainers / "nnUNetTrainerMeanTeacher.py").is_file()
    assert (trainers / "nnUNetTrainerUniMatchV2.py").is_file()
    printed = subprocess.run([sys.executable, "-c", "from nnunetv2_sss.cli import trainers_path_entry as t; t()"],
                             env={**os.environ, "PYTHONPATH": str(target)}, cwd=tmp_path, capture_output=True,
                             text=True, check=True).stdout.strip()
    assert printed == str(trainers)
