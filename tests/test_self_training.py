"""Self-training with nnU-Net pseudo-labels (issue 20) through the real commands on the tiny dataset:
a teacher (``nnUNetTrainerPlugin``) trained with ``nnUNetv2_train``, ``nnUNetv2_sss_pseudo_label``, the
student ``nnUNetTrainerSelfTraining`` through ``nnUNetv2_train`` and ``nnUNetv2_predict``.

- the pool's segmentations equal ``nnUNetv2_predict``'s of the same cases by the same model and settings,
  voxel for voxel, and its preprocessed label carries the ignore label exactly where the confidence is
  below the threshold;
- a pseudo-labelling killed with SIGKILL and started again leaves no half-written case and gives the
  result of an uninterrupted run;
- the student's loss (nnU-Net's own, with the ignore label) leaves out exactly the ignored voxels
  (against a hand computation of CE + soft Dice on a small batch); its validation never sees a
  pseudo-labeled case; every training batch holds labeled and pseudo-labeled cases;
- one clear error each for a missing teacher, a teacher of other plans, stale pseudo-labels (also at the
  student's start), an empty unlabeled pool.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers import kill_at_first_output, run_cli, train_in_process
from test_user_errors import assert_user_error

pytestmark = pytest.mark.integration
TEACHER = "nnUNetTrainerPlugin"
STUDENT = "nnUNetTrainerSelfTraining"


def pool_of(preprocessed, dataset, round_=1, folds="0"):
    return preprocessed / dataset.dataset_name / "pseudo_labels" / f"nnUNetPlans_2d__round{round_}__folds{folds}"


def pseudo_label_command(dataset, *extra):
    return ["nnUNetv2_sss_pseudo_label", "-d", dataset.dataset_id, "-c", "2d", "-tr", TEACHER, "-f", 0,
            "--disable-tta", "-device", "cpu", *extra]


@pytest.fixture(scope="module")
def teacher(nnunet_dataset, tmp_path_factory):
    """A trained teacher (1 epoch x 2 iterations) in a results folder of its own, and a private copy of the
    preprocessed dataset for the pools."""
    root = tmp_path_factory.mktemp("self_training")
    preprocessed = nnunet_dataset.copy_preprocessed(root)
    env = nnunet_dataset.env(nnUNet_results=root / "results", nnUNet_preprocessed=preprocessed)
    run_cli(["nnUNetv2_train", nnunet_dataset.dataset_id, "2d", 0, "-tr", TEACHER, "-device", "cpu"], env)
    return root, preprocessed, env


@pytest.fixture(scope="module")
def pool(nnunet_dataset, teacher):
    root, preprocessed, env = teacher
    run_cli(pseudo_label_command(nnunet_dataset, "--min-confidence", "0.6"), env)
    return pool_of(preprocessed, nnunet_dataset)


def test_pseudo_labels_are_nnunet_predictions_and_ignore_the_unsure_voxels(nnunet_dataset, teacher, pool, tmp_path):
    root, preprocessed, env = teacher
    predicted = tmp_path / "predicted"
    run_cli(["nnUNetv2_predict", "-i", nnunet_dataset.raw / nnunet_dataset.dataset_name / "imagesUnlabeled",
             "-o", predicted, "-d", nnunet_dataset.dataset_id, "-c", "2d", "-f", 0, "-tr", TEACHER, "-device", "cpu",
             "--disable_tta", "-npp", 0, "-nps", 0], env)
    cases = sorted(p.name for p in predicted.glob("*.nii.gz"))
    assert len(cases) == 4
    for name in cases:
        ours = sitk.GetArrayFromImage(sitk.ReadImage(str(pool / "segmentations" / name)))
        theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(predicted / name)))
        assert np.array_equal(ours, theirs), name
    manifest = json.loads((pool / "pseudo_labels.json").read_text())
    assert manifest["teacher"]["trainer"] == TEACHER and manifest["min_confidence"] == 0.6
    ignore = manifest["ignore_label"]
    import blosc2
    ignored = 0
    for case in manifest["cases"]:
        seg = np.asarray(blosc2.open(str(pool / "preprocessed" / f"{case}_seg.b2nd"), mode="r"))[0]
        confidence = np.load(pool / "preprocessed" / f"{case}_confidence.npy")
        assert np.array_equal(seg == ignore, confidence < np.float16(0.6)), case
        ignored += int((seg == ignore).sum())
        properties = pickle.loads((pool / "preprocessed" / f"{case}.pkl").read_bytes())
        # nnU-Net's annotated-voxels key: -1, then every label, background included (nnUNetDataLoader)
        assert len(properties["class_locations"][(-1, 0, 1, 2)]) > 0
    assert ignored > 0  # the threshold matters on this teacher


def _pool_contents(folder):
    """Every file of a pool (links by target), name -> bytes / array."""
    contents = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            contents[str(path.relative_to(folder))] = os.readlink(path)
        elif path.is_file() and path.name != "pseudo_labels.json":
            contents[str(path.relative_to(folder))] = path.read_bytes()
    return contents


def test_killed_pseudo_labelling_resumes_to_the_same_result(nnunet_dataset, teacher, pool, tmp_path):
    root, preprocessed, env = teacher
    second = tmp_path / "preprocessed"
    shutil.copytree(preprocessed, second, symlinks=True, ignore=shutil.ignore_patterns("pseudo_labels"))
    env = {**env, "nnUNet_preprocessed": str(second)}
    killed_pool = pool_of(second, nnunet_dataset)
    done_at_kill = kill_at_first_output(pseudo_label_command(nnunet_dataset, "--min-confidence", "0.6"), env,
                                        killed_pool / "preprocessed", "*.pkl")
    assert 1 <= done_at_kill < 4
    result = run_cli(pseudo_label_command(nnunet_dataset, "--min-confidence", "0.6"), env)
    assert f"({done_at_kill} already done)" in result.stdout
    assert not list(killed_pool.rglob(".tmp_*"))
    assert _pool_contents(killed_pool).keys() == _pool_contents(pool).keys()
    for name, content in _pool_contents(killed_pool).items():
        if not os.path.islink(pool / name):
            assert content == _pool_contents(pool)[name], name


def test_student_loss_leaves_out_exactly_the_ignored_voxels(nnunet_dataset, teacher, pool, monkeypatch):
    from nnunetv2.run.run_training import get_trainer_from_args
    root, preprocessed, env = teacher
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    trainer = get_trainer_from_args(str(nnunet_dataset.dataset_id), "2d", 0, STUDENT, device=torch.device("cpu"))
    trainer.initialize()
    assert trainer.label_manager.ignore_label == 3 and trainer.label_manager.num_segmentation_heads == 3
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=generator)
    target = torch.randint(0, 3, (2, 1, 8, 8), generator=generator)
    target[:, :, :3] = 3  # ignored voxels
    loss = trainer.loss.loss(logits, target)  # nnU-Net's DC_and_CE_loss inside the deep-supervision wrapper
    # by hand: CE over the voxels that are not ignored; nnU-Net's batch soft Dice of the foreground classes with
    # those voxels masked out (smooth 1e-5), as -dice
    keep = target[:, 0] != 3
    log_p = torch.log_softmax(logits, 1)
    labels = torch.where(keep, target[:, 0], 0)
    ce = -(log_p.gather(1, labels[:, None])[:, 0][keep]).mean()
    p = torch.softmax(logits, 1)[:, 1:] * keep[:, None]
    onehot = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1)[:, 1:] * keep[:, None]
    dice = (2 * (p * onehot).sum((0, 2, 3)) + 1e-5) / ((p + onehot).sum((0, 2, 3)) + 1e-5)
    assert loss.item() == pytest.approx((ce - dice.mean()).item(), rel=1e-5)
    # and the ignored voxels' logits do not matter
    changed = logits.clone()
    changed[:, :, :3] = 100 * torch.randn(2, 3, 3, 8, generator=generator)
    assert trainer.loss.loss(changed, target).item() == pytest.approx(loss.item(), rel=1e-6)


def test_student_trains_validates_on_labeled_cases_only_and_predicts(nnunet_dataset, teacher, pool, tmp_path):
    root, preprocessed, env = teacher
    run_cli(["nnUNetv2_train", nnunet_dataset.dataset_id, "2d", 0, "-tr", STUDENT, "-device", "cpu"], env)
    fold = root / "results" / nnunet_dataset.dataset_name / f"{STUDENT}__nnUNetPlans__2d" / "fold_0"
    split = json.loads((preprocessed / nnunet_dataset.dataset_name / "splits_final.json").read_text())[0]
    validated = sorted(p.name[:-len(".nii.gz")] for p in (fold / "validation").glob("*.nii.gz"))
    assert validated == sorted(split["val"])
    manifest = json.loads((pool / "pseudo_labels.json").read_text())
    assert not set(validated) & set(manifest["cases"])
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert f"Self-training round 1: {len(manifest['cases'])} pseudo-labeled cases" in log
    predictions = tmp_path / "predictions"
    run_cli(["nnUNetv2_predict", "-i", nnunet_dataset.raw / nnunet_dataset.dataset_name / "imagesTs", "-o", predictions,
             "-d", nnunet_dataset.dataset_id, "-c", "2d", "-f", 0, "-tr", STUDENT, "-device", "cpu", "--disable_tta",
             "-npp", 0, "-nps", 0], env)
    assert len(list(predictions.glob("*.nii.gz"))) == 2


def test_every_training_batch_holds_both_kinds(nnunet_dataset, teacher, pool, monkeypatch):
    from nnunetv2.run.run_training import get_trainer_from_args
    root, preprocessed, env = teacher
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    trainer = get_trainer_from_args(str(nnunet_dataset.dataset_id), "2d", 0, STUDENT, device=torch.device("cpu"))
    trainer.on_train_start()  # nnUNet_n_proc_DA=0: the loaders run in this process
    loader = trainer.dataloader_train.data_loader
    pseudo = set(trainer.pseudo_labels.cases)
    for _ in range(5):
        keys = loader.get_indices()
        assert any(k in pseudo for k in keys) and any(k not in pseudo for k in keys), keys
    assert not set(trainer.dataloader_val.data_loader.indices) & pseudo


# ---- bad input -----------------------------------------------------------------------------------------
def test_missing_teacher(nnunet_dataset, teacher):
    root, preprocessed, env = teacher
    result = run_cli(["nnUNetv2_sss_pseudo_label", "-d", nnunet_dataset.dataset_id, "-c", "2d", "-tr",
                      "nnUNetTrainerMeanTeacher", "-f", 0, "-device", "cpu"], env, expect_failure=True)
    assert_user_error(result, "checkpoint_final.pth", "nnUNetv2_train Dataset901_Tiny 2d 0 -tr nnUNetTrainerMeanTeacher")


def test_teacher_of_other_plans(nnunet_dataset, teacher, tmp_path):
    root, preprocessed, env = teacher
    results = tmp_path / "results"
    shutil.copytree(root / "results", results)
    plans = results / nnunet_dataset.dataset_name / f"{TEACHER}__nnUNetPlans__2d" / "plans.json"
    content = json.loads(plans.read_text())
    content["configurations"]["2d"]["spacing"] = [2.0, 2.0]
    plans.write_text(json.dumps(content))
    result = run_cli(pseudo_label_command(nnunet_dataset), {**env, "nnUNet_results": str(results)}, expect_failure=True)
    assert_user_error(result, "spacing = [2.0, 2.0]", "re-train the teacher")


def test_empty_unlabeled_pool(nnunet_dataset, teacher, tmp_path):
    root, preprocessed, env = teacher
    empty = tmp_path / "preprocessed"
    shutil.copytree(preprocessed, empty, symlinks=True,
                    ignore=shutil.ignore_patterns("*_unlabeled", "pseudo_labels", "splits_semi_supervised.json"))
    result = run_cli(pseudo_label_command(nnunet_dataset), {**env, "nnUNet_preprocessed": str(empty)},
                     expect_failure=True)
    assert_user_error(result, "needs unlabeled data", "nnUNetv2_sss_preprocess_unlabeled")


def test_student_without_pool_names_the_command_to_run(nnunet_dataset, teacher, tmp_path, monkeypatch):
    root, preprocessed, env = teacher
    without = tmp_path / "preprocessed"
    shutil.copytree(preprocessed, without, symlinks=True, ignore=shutil.ignore_patterns("pseudo_labels"))
    message = train_in_process(monkeypatch, {**env, "nnUNet_preprocessed": str(without)}, nnunet_dataset.dataset_id,
                               "2d", "0", STUDENT)
    assert message.startswith("ERROR: ") and "nnUNetv2_sss_pseudo_label -d Dataset901_Tiny -c 2d" in message, message


def test_stale_pseudo_labels_are_refused(nnunet_dataset, teacher, pool, tmp_path, monkeypatch):
    root, preprocessed, env = teacher
    results, stale = tmp_path / "results", tmp_path / "preprocessed"
    shutil.copytree(root / "results", results)
    shutil.copytree(preprocessed, stale, symlinks=True)
    env = {**env, "nnUNet_results": str(results), "nnUNet_preprocessed": str(stale)}
    checkpoint = results / nnunet_dataset.dataset_name / f"{TEACHER}__nnUNetPlans__2d" / "fold_0" / "checkpoint_final.pth"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    saved["current_epoch"] += 1  # the teacher changed (e.g. trained on) after the pseudo-labels were made
    torch.save(saved, checkpoint)
    result = run_cli(pseudo_label_command(nnunet_dataset, "--min-confidence", "0.6"), env, expect_failure=True)
    assert_user_error(result, "older than the teacher", "--clean")
    message = train_in_process(monkeypatch, env, nnunet_dataset.dataset_id, "2d", "0", STUDENT)
    assert message.startswith("ERROR: ") and "older than the teacher" in message


def test_self_train_two_rounds_reuses_finished_steps(nnunet_dataset, teacher, pool):
    """``nnUNetv2_sss_self_train --rounds 2``: the teacher and round 1 already done are skipped, round 1's
    student pseudo-labels round 2's pool, ``nnUNetTrainerSelfTraining_round2`` trains on it."""
    root, preprocessed, env = teacher
    result = run_cli(["nnUNetv2_sss_self_train", "-d", nnunet_dataset.dataset_id, "-c", "2d", "-f", 0, "--rounds", 2,
                      "--teacher", TEACHER, "--min-confidence", "0.6", "--disable-tta", "-device", "cpu"], env)
    assert f"{TEACHER} fold 0: trained already" in result.stdout
    round_2 = json.loads((pool_of(preprocessed, nnunet_dataset, round_=2) / "pseudo_labels.json").read_text())
    assert round_2["teacher"]["trainer"] == STUDENT and round_2["round"] == 2
    fold = root / "results" / nnunet_dataset.dataset_name / f"{STUDENT}_round2__nnUNetPlans__2d" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert f"Self-training round 2: {len(round_2['cases'])} pseudo-labeled cases" in log


def test_study_orders_rounds_and_names_each_students_teacher():
    """``nnUNetv2_sss_study --rounds``: round 2's student follows round 1's; round 1's teacher is the
    supervised row, round 2's is round 1's student; a student listed without its teacher is refused."""
    from nnunetv2_sss.errors import UserValueError
    from nnunetv2_sss.evaluation.study.runner import with_self_training_rounds
    from nnunetv2_sss.evaluation.study.trainers import self_training_round, self_training_teachers
    from nnunetv2_sss.training.base import nnUNetTrainerPlugin
    from nnunetv2_sss.training.self_training import nnUNetTrainerSelfTraining, nnUNetTrainerSelfTraining_round2

    listed = ["nnUNetTrainerPlugin", STUDENT, "nnUNetTrainerMeanTeacher"]
    assert with_self_training_rounds(listed, None) == listed
    assert with_self_training_rounds(listed, 2) == ["nnUNetTrainerPlugin", STUDENT, f"{STUDENT}_round2",
                                                    "nnUNetTrainerMeanTeacher"]
    with pytest.raises(UserValueError, match="add nnUNetTrainerSelfTraining"):
        with_self_training_rounds(["nnUNetTrainerPlugin"], 2)
    classes = {"nnUNetTrainerPlugin": nnUNetTrainerPlugin, STUDENT: nnUNetTrainerSelfTraining,
               f"{STUDENT}_round2": nnUNetTrainerSelfTraining_round2}
    assert [self_training_round(c) for c in classes.values()] == [None, 1, 2]
    assert self_training_teachers(classes, list(classes), "nnUNetTrainerPlugin") == \
        {STUDENT: "nnUNetTrainerPlugin", f"{STUDENT}_round2": STUDENT}
    with pytest.raises(UserValueError, match="listed before it"):
        self_training_teachers(classes, [f"{STUDENT}_round2", "nnUNetTrainerPlugin"], "nnUNetTrainerPlugin")
