"""One error style for known user errors: ``ERROR: <file or variable>: <what to do>`` on stderr,
non-zero exit, no traceback; a trainer that stops removes the fold folder it created.

The trainer cases run the real ``nnUNetv2_train`` on the tiny dataset and fail at start-up."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
from dataclasses import dataclass
from typing import Dict

import pytest

from helpers import BIN, run_cli
from nnunetv2_sss.errors import UserError, UserFileNotFoundError, UserValueError, user_errors
from nnunetv2_sss.training.base import first_new_folder
from tiny_sam2 import write_tiny_config

integration = pytest.mark.integration


def assert_user_error(result, *needles: str) -> str:
    """Non-zero exit, no traceback, one ``ERROR:`` line on stderr that contains every needle."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("ERROR: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---- in-process --------------------------------------------------------------------------------------
def test_user_errors_decorator_prints_one_line_and_exits_2(capsys):
    @user_errors
    def entry():
        raise UserFileNotFoundError("x.json: not\nfound; run something")

    with pytest.raises(SystemExit) as exit_info:
        entry()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "ERROR: x.json: not found; run something\n"

    @user_errors
    def bug():
        raise KeyError("a bug keeps its traceback")

    with pytest.raises(KeyError):
        bug()
    assert issubclass(UserValueError, ValueError) and issubclass(UserValueError, UserError)


def test_first_new_folder(tmp_path):
    results = tmp_path / "results"
    fold = results / "Dataset1_X" / "Trainer__nnUNetPlans__2d" / "fold_0"
    assert first_new_folder(str(fold), str(results)) == str(results / "Dataset1_X")
    fold.parent.mkdir(parents=True)
    assert first_new_folder(str(fold), str(results)) == str(fold)
    fold.mkdir()
    assert first_new_folder(str(fold), str(results)) is None


# ---- plugin commands -------------------------------------------------------------------------------------
@integration
def test_make_splits_unknown_dataset_and_bad_regex(nnunet_dataset, tmp_path):
    env = nnunet_dataset.env()
    assert_user_error(run_cli(["nnUNetv2_sss_make_splits", "-d", 977, "--num-labeled", 2], env, expect_failure=True),
                      "dataset '977'")
    bad = run_cli(["nnUNetv2_sss_make_splits", "-d", nnunet_dataset.dataset_id, "--num-labeled", 2, "--group-regex",
                   "case(", "--force"], env, expect_failure=True)
    assert_user_error(bad, "--group-regex 'case('")
    assert bad.returncode == 2


@integration
def test_converters_with_a_missing_folder(nnunet_dataset, tmp_path):
    env = nnunet_dataset.env(nnUNet_raw=tmp_path / "raw", nnUNet_preprocessed=tmp_path / "preprocessed")
    missing = tmp_path / "not_there"
    assert_user_error(run_cli(["nnUNetv2_sss_convert_bhsd", "-i", missing, "-d", 950, "-n", 0], env,
                              expect_failure=True), f"BHSD release folder {missing} does not exist")
    assert_user_error(run_cli(["nnUNetv2_sss_convert_acdc", "-i", missing, "-d", 951], env, expect_failure=True),
                      f"{missing}: neither training/ nor database/training/ exists")
    assert not (tmp_path / "raw").exists()


@integration
def test_pretrain_cps4_without_preprocessed_data(nnunet_dataset, tmp_path):
    env = nnunet_dataset.env(nnUNet_preprocessed=tmp_path / "empty", nnUNet_results=tmp_path / "results")
    result = run_cli(["nnUNetv2_sss_pretrain_cps4", "-d", nnunet_dataset.dataset_id, "-c", "2d", "-f", 0,
                      "--device", "cpu"], env, expect_failure=True)
    assert_user_error(result, "nnUNetPlans.json does not exist", "nnUNetv2_plan_and_preprocess")
    assert not (tmp_path / "results").exists()


# ---- trainers: nnUNetv2_train (all cases start at once: each run is mostly start-up time) -----------------
def _schedule(dataset, root, results):
    return dataset.env(nnUNet_results=results, nnUNet_sss_num_epochs="abc"), "nnUNetTrainerPlugin", "0"


def _sam2_unset(dataset, root, results):
    return (dataset.env(nnUNet_results=results, nnUNet_sss_sam2_config=write_tiny_config(root)),
            "nnUNetTrainerSAM2", "0")


def _sam2_missing(dataset, root, results):
    fold = fold_folder(results, dataset, "nnUNetTrainerSAM2")
    fold.mkdir(parents=True)
    (fold / "earlier_run.txt").write_text("kept")
    return (dataset.env(nnUNet_results=results, nnUNet_sss_sam2_config=write_tiny_config(root),
                        nnUNet_sss_sam2_checkpoint=root / "missing.pt"), "nnUNetTrainerSAM2", "0")


def _no_unlabeled(dataset, root, results):
    preprocessed = dataset.copy_preprocessed(root)
    shutil.rmtree(preprocessed / dataset.dataset_name / "nnUNetPlans_2d_unlabeled")
    return dataset.env(nnUNet_preprocessed=preprocessed, nnUNet_results=results), "nnUNetTrainerMeanTeacher", "0"


def _fold_all(dataset, root, results):
    preprocessed = dataset.copy_preprocessed(root)
    splits = preprocessed / dataset.dataset_name / "splits_semi_supervised.json"
    splits.write_text(json.dumps([{"labeled": [], "unlabeled": []}]))
    return dataset.env(nnUNet_preprocessed=preprocessed, nnUNet_results=results), "nnUNetTrainerMeanTeacher", "all"


def _cps4(dataset, root, results):
    return dataset.env(nnUNet_results=results), "nnUNetTrainerCPS4", "0"


TRAINER_CASES = {"schedule": _schedule, "sam2_unset": _sam2_unset, "sam2_missing": _sam2_missing,
                 "no_unlabeled": _no_unlabeled, "fold_all": _fold_all, "cps4": _cps4}


def fold_folder(results, dataset, trainer, fold="0", configuration="2d"):
    return results / dataset.dataset_name / f"{trainer}__nnUNetPlans__{configuration}" / f"fold_{fold}"


@dataclass
class TrainerRun:
    root: pathlib.Path
    results: pathlib.Path
    result: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def trainer_runs(nnunet_dataset, tmp_path_factory) -> Dict[str, TrainerRun]:
    started = {}
    for name, setup in TRAINER_CASES.items():
        root = tmp_path_factory.mktemp(name)
        results = root / "results"
        results.mkdir()
        env, trainer, fold = setup(nnunet_dataset, root, results)
        command = [os.path.join(BIN, "nnUNetv2_train"), str(nnunet_dataset.dataset_id), "2d", fold, "-tr", trainer,
                   "-device", "cpu"]
        with open(root / "stdout.txt", "w") as out, open(root / "stderr.txt", "w") as err:
            started[name] = (root, results, command, subprocess.Popen(command, env=env, stdout=out, stderr=err))
    runs = {}
    for name, (root, results, command, process) in started.items():
        try:
            process.wait(timeout=600)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        runs[name] = TrainerRun(root, results, subprocess.CompletedProcess(
            command, process.returncode, (root / "stdout.txt").read_text(), (root / "stderr.txt").read_text()))
    return runs


@integration
def test_bad_schedule_variable(trainer_runs):
    run = trainer_runs["schedule"]
    line = assert_user_error(run.result, "nnUNet_sss_num_epochs='abc'")
    assert "not an integer" in line
    assert list(run.results.iterdir()) == []  # the fold folder nnU-Net created is gone


@integration
def test_sam2_checkpoint_unset(trainer_runs):
    run = trainer_runs["sam2_unset"]
    assert_user_error(run.result, "nnUNet_sss_sam2_checkpoint is not set")
    assert list(run.results.iterdir()) == []


@integration
def test_sam2_checkpoint_missing_keeps_an_existing_fold_folder(nnunet_dataset, trainer_runs):
    run = trainer_runs["sam2_missing"]
    assert_user_error(run.result, f"nnUNet_sss_sam2_checkpoint='{run.root / 'missing.pt'}'", "file not found")
    fold = fold_folder(run.results, nnunet_dataset, "nnUNetTrainerSAM2")
    assert (fold / "earlier_run.txt").read_text() == "kept"  # not created by this run: kept
    logs = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert "ERROR: nnUNet_sss_sam2_checkpoint=" in logs


@integration
def test_semi_supervised_trainer_without_unlabeled_data(trainer_runs):
    run = trainer_runs["no_unlabeled"]
    assert_user_error(run.result, "nnUNetPlans_2d_unlabeled",
                      "nnUNetv2_sss_preprocess_unlabeled -d Dataset901_Tiny -c 2d")
    assert list(run.results.iterdir()) == []


@integration
def test_fold_all_refused_with_label_scarcity_splits(trainer_runs):
    run = trainer_runs["fold_all"]
    assert_user_error(run.result, "splits_semi_supervised.json", "fold 'all'")
    assert list(run.results.iterdir()) == []


@integration
def test_cps4_without_stage1(trainer_runs):
    run = trainer_runs["cps4"]
    assert_user_error(run.result, "cps4_stage1.pt", "nnUNetv2_sss_pretrain_cps4 -d Dataset901_Tiny -c 2d -f 0")
    assert list(run.results.iterdir()) == []
