"""CPS4 stage 1 end to end: the real command on the tiny dataset, then the stage-2 APIs on its output."""
import csv
import json
import math

import pytest
import torch

from helpers import run_cli
from nnunetv2_sss.cps4.stage1_io import load_stage1, read_stage1_metadata, stage1_output_folder
from nnunetv2_sss.cps4.text_labels import attention_to_label_map
from nnunetv2_sss.data.splits import make_semi_supervised_splits
from nnunetv2_sss.ssl.soft_targets import enhanced_soft_target

pytestmark = pytest.mark.integration

SMALL_VIT = ["--vit-patch-size", "8", "--vit-dim", "32", "--vit-depth", "2", "--vit-heads", "2", "--embed-dim", "16"]


@pytest.fixture
def stage1_env(nnunet_dataset, tmp_path):
    """A private preprocessed copy with 3 labeled cases per fold, and a private results folder."""
    preprocessed = nnunet_dataset.copy_preprocessed(tmp_path)
    base = preprocessed / nnunet_dataset.dataset_name
    cases = sorted(p.name[:-len(".pkl")] for p in (base / "nnUNetPlans_2d").glob("*.pkl"))
    (base / "splits_final.json").unlink(missing_ok=True)
    splits = make_semi_supervised_splits(str(base), cases, num_labeled=3)
    env = nnunet_dataset.env(nnUNet_preprocessed=preprocessed, nnUNet_results=tmp_path / "results",
                             HF_HUB_OFFLINE=1, nnUNet_sss_iterations_per_epoch=3)
    return env, splits, tmp_path


def test_stage1_command_writes_a_model_stage2_can_use(nnunet_dataset, stage1_env):
    env, splits, tmp_path = stage1_env
    (tmp_path / "names.json").write_text(json.dumps({"tissue_a": "bright ellipsoid"}))
    run_cli(["nnUNetv2_sss_pretrain_cps4", "-d", nnunet_dataset.dataset_id, "-c", "2d", "-f", 0, "--device", "cpu",
             "--template", "An MRI of a {class name}", "--class-names", tmp_path / "names.json", *SMALL_VIT], env)

    folder = stage1_output_folder(nnunet_dataset.dataset_name, "nnUNetPlans", 0, results_root=tmp_path / "results")
    metadata = read_stage1_metadata(folder)
    assert metadata["labeled_cases"] == splits[0]["labeled"]
    assert metadata["prompts"] == ["An MRI of a background", "An MRI of a bright ellipsoid", "An MRI of a tissue b"]
    assert json.loads((folder / "cps4_stage1.json").read_text())["iterations_per_epoch"] == 3
    rows = list(csv.DictReader((folder / "training_log.csv").open()))
    assert len(rows) == 1 and all(math.isfinite(float(rows[0][k])) for k in ("train_loss", "val_loss"))
    assert sorted(p.name for p in (folder / "attention_maps").glob("*.png")) == \
        ["class_00_background.png", "class_01_tissue_a.png", "class_02_tissue_b.png"]

    model = load_stage1(folder, "cpu")
    images = torch.randn(2, 1, 48, 48)
    attention = model(images)
    assert attention.shape == (2, 3, 6, 6)
    text = attention_to_label_map(attention, (48, 48))
    assert text.shape == (2, 48, 48) and 0 <= int(text.min()) and int(text.max()) <= 2
    teacher = torch.softmax(torch.randn(2, 3, 48, 48), 1)
    target = enhanced_soft_target(teacher, text)
    assert target.shape == (2, 3, 48, 48) and torch.allclose(target.sum(1), torch.ones(2, 48, 48))


def test_stage1_command_rejects_bad_input_before_training(nnunet_dataset, stage1_env):
    env, _, tmp_path = stage1_env
    result = run_cli(["nnUNetv2_sss_pretrain_cps4", "-d", nnunet_dataset.dataset_id, "-c", "2d", "-f", 0,
                      "--device", "cpu", "--vit-patch-size", "7"], env, expect_failure=True)
    assert "not a multiple of the ViT patch size 7" in result.stderr
    result = run_cli(["nnUNetv2_sss_pretrain_cps4", "-d", nnunet_dataset.dataset_id, "-c", "2d", "-f", 0,
                      "--device", "cpu", "--template", "An MRI of {organ}"], env, expect_failure=True)
    assert "must contain '{class name}'" in result.stderr
    assert not (tmp_path / "results").exists()


def test_stage2_trainer_after_stage1_then_predict(nnunet_dataset, stage1_env):
    """nnUNetTrainerCPS4 stops naming the stage-1 command when stage 1 is missing, trains after it,
    and nnUNetv2_predict needs neither encoder."""
    env, splits, tmp_path = stage1_env
    train = ["nnUNetv2_train", nnunet_dataset.dataset_id, "2d", 0, "-tr", "nnUNetTrainerCPS4", "-device", "cpu"]
    missing = run_cli(train, env, expect_failure=True)
    assert "nnUNetv2_sss_pretrain_cps4 -d" in missing.stderr
    run_cli(["nnUNetv2_sss_pretrain_cps4", "-d", nnunet_dataset.dataset_id, "-c", "2d", "-f", 0, "--device", "cpu",
             *SMALL_VIT], env)
    run_cli(train, env)
    fold = tmp_path / "results" / nnunet_dataset.dataset_name / "nnUNetTrainerCPS4__nnUNetPlans__2d" / "fold_0"
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    for key in ("ssl_unlabeled_loss", "ssl_text_teacher_agreement"):
        assert math.isfinite(checkpoint["logging"][key][0]), key
    pool = len(splits[0]["unlabeled"]) + 4  # hidden-label cases + imagesUnlabeled
    logs = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))  # the refused run wrote one too
    assert f"Unlabeled pool: {pool} cases" in logs
    stage1 = stage1_output_folder(nnunet_dataset.dataset_name, "nnUNetPlans", 0, results_root=tmp_path / "results")
    for weights in stage1.glob("*.pt"):
        weights.unlink()  # prediction must not need the stage-1 model
    run_cli(["nnUNetv2_predict", "-i", nnunet_dataset.raw / nnunet_dataset.dataset_name / "imagesTs", "-o",
             tmp_path / "predictions", "-d", nnunet_dataset.dataset_id, "-c", "2d", "-f", 0, "-tr",
             "nnUNetTrainerCPS4", "-device", "cpu", "--disable_tta", "-npp", 0, "-nps", 0], env)
    assert len(list((tmp_path / "predictions").glob("*.nii.gz"))) == 2
