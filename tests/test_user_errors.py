"""One error style for known user errors: ``ERROR: <file or variable>: <what to do>`` on stderr,
non-zero exit, no traceback; a trainer that stops removes the fold folder it created.

The trainer cases run nnUNetv2_train's own ``run_training`` on the tiny dataset, in this process (a
process of their own adds only start-up time), and fail at start-up; one case runs the real
``nnUNetv2_train`` command for its exit code, its one ``ERROR:`` line and the absence of a traceback."""
from __future__ import annotations

import json
import shutil

import pytest

from helpers import run_cli, train_in_process
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


# ---- trainers: nnUNetv2_train ----------------------------------------------------------------------------
def fold_folder(results, dataset, trainer, fold="0", configuration="2d"):
    return results / dataset.dataset_name / f"{trainer}__nnUNetPlans__{configuration}" / f"fold_{fold}"


def assert_trainer_error(message: str, *needles: str) -> None:
    """What a trainer stopped with: one line ``ERROR: ...`` that contains every needle."""
    assert message.startswith("ERROR: ") and "\n" not in message, message
    for needle in needles:
        assert needle in message, message


@integration
def test_bad_schedule_variable_through_the_real_command(nnunet_dataset, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    result = run_cli(["nnUNetv2_train", nnunet_dataset.dataset_id, "2d", 0, "-tr", "nnUNetTrainerPlugin",
                      "-device", "cpu"], nnunet_dataset.env(nnUNet_results=results, nnUNet_sss_num_epochs="abc"),
                     expect_failure=True)
    assert result.returncode == 1
    line = assert_user_error(result, "nnUNet_sss_num_epochs='abc'")
    assert "not an integer" in line
    assert list(results.iterdir()) == []  # the fold folder nnU-Net created is gone


@integration
def test_sam2_checkpoint_unset(nnunet_dataset, monkeypatch, tmp_path):
    env = nnunet_dataset.env(nnUNet_results=tmp_path / "results", nnUNet_sss_sam2_config=write_tiny_config(tmp_path))
    message = train_in_process(monkeypatch, env, nnunet_dataset.dataset_id, "2d", "0", "nnUNetTrainerSAM2")
    assert_trainer_error(message, "nnUNet_sss_sam2_checkpoint is not set")
    assert list((tmp_path / "results").iterdir()) == []


@integration
def test_sam2_checkpoint_missing_keeps_an_existing_fold_folder(nnunet_dataset, monkeypatch, tmp_path):
    results = tmp_path / "results"
    fold = fold_folder(results, nnunet_dataset, "nnUNetTrainerSAM2")
    fold.mkdir(parents=True)
    (fold / "earlier_run.txt").write_text("kept")
    env = nnunet_dataset.env(nnUNet_results=results, nnUNet_sss_sam2_config=write_tiny_config(tmp_path),
                             nnUNet_sss_sam2_checkpoint=tmp_path / "missing.pt")
    message = train_in_process(monkeypatch, env, nnunet_dataset.dataset_id, "2d", "0", "nnUNetTrainerSAM2")
    assert_trainer_error(message, f"nnUNet_sss_sam2_checkpoint='{tmp_path / 'missing.pt'}'", "file not found")
    assert (fold / "earlier_run.txt").read_text() == "kept"  # not created by this run: kept
    logs = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert "ERROR: nnUNet_sss_sam2_checkpoint=" in logs


@integration
def test_semi_supervised_trainer_without_unlabeled_data(nnunet_dataset, monkeypatch, tmp_path):
    preprocessed = nnunet_dataset.copy_preprocessed(tmp_path)
    shutil.rmtree(preprocessed / nnunet_dataset.dataset_name / "nnUNetPlans_2d_unlabeled")
    env = nnunet_dataset.env(nnUNet_preprocessed=preprocessed, nnUNet_results=tmp_path / "results")
    message = train_in_process(monkeypatch, env, nnunet_dataset.dataset_id, "2d", "0", "nnUNetTrainerMeanTeacher")
    assert_trainer_error(message, "nnUNetPlans_2d_unlabeled", "nnUNetv2_sss_preprocess_unlabeled -d Dataset901_Tiny -c 2d")
    assert list((tmp_path / "results").iterdir()) == []


@integration
def test_fold_all_refused_with_label_scarcity_splits(nnunet_dataset, monkeypatch, tmp_path):
    preprocessed = nnunet_dataset.copy_preprocessed(tmp_path)
    splits = preprocessed / nnunet_dataset.dataset_name / "splits_semi_supervised.json"
    splits.write_text(json.dumps([{"labeled": [], "unlabeled": []}]))
    env = nnunet_dataset.env(nnUNet_preprocessed=preprocessed, nnUNet_results=tmp_path / "results")
    message = train_in_process(monkeypatch, env, nnunet_dataset.dataset_id, "2d", "all", "nnUNetTrainerMeanTeacher")
    assert_trainer_error(message, "splits_semi_supervised.json", "fold 'all'")
    assert list((tmp_path / "results").iterdir()) == []


@integration
def test_cps4_without_stage1(nnunet_dataset, monkeypatch, tmp_path):
    env = nnunet_dataset.env(nnUNet_results=tmp_path / "results")
    message = train_in_process(monkeypatch, env, nnunet_dataset.dataset_id, "2d", "0", "nnUNetTrainerCPS4")
    assert_trainer_error(message, "cps4_stage1.pt", "nnUNetv2_sss_pretrain_cps4 -d Dataset901_Tiny -c 2d -f 0")
    assert list((tmp_path / "results").iterdir()) == []


@integration
def test_cps4_on_a_3d_configuration(nnunet_dataset, monkeypatch, tmp_path):
    env = nnunet_dataset.env(nnUNet_results=tmp_path / "results")
    message = train_in_process(monkeypatch, env, nnunet_dataset.dataset_id, "3d_fullres", "0", "nnUNetTrainerCPS4")
    assert_trainer_error(message, "nnUNetTrainerCPS4 is 2-D only", "not '3d_fullres'")
    assert list((tmp_path / "results").iterdir()) == []
