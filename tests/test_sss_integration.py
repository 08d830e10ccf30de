"""nnUNetTrainerSSS through the real commands (tiny Hiera, CPU, 1 epoch of 2 iterations)."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers import run_cli
from nnunetv2_sss.networks.prompt_head import SAM2PromptHead
from nnunetv2_sss.networks.sam2_config import build_image_encoder
from tiny_sam2 import TINY_IMAGE_ENCODER, random_encoder_state, write_sam2_checkpoint, write_tiny_config

pytestmark = pytest.mark.integration
TELEMETRY = ("ssl_pcsw_acceptance", "ssl_prompts_per_volume", "ssl_pseudo_label_changed", "ssl_prompt_loss",
             "ssl_confident_share", "ssl_unlabeled_loss")


def _train(dataset, tmp_path, trainer, configuration, checkpoint="random"):
    results = tmp_path / "results"
    env = dataset.env(nnUNet_results=results, nnUNet_sss_sam2_config=write_tiny_config(tmp_path),
                      nnUNet_sss_sam2_checkpoint=checkpoint)
    run_cli(["nnUNetv2_train", dataset.dataset_id, configuration, 0, "-tr", trainer, "-device", "cpu"], env)
    fold = results / dataset.dataset_name / f"{trainer}__nnUNetPlans__{configuration}" / "fold_0"
    return results, fold, torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)


def test_sss_2d_with_sam2_checkpoint_then_predict_without_it(nnunet_dataset, tmp_path):
    encoder_state = random_encoder_state(build_image_encoder(TINY_IMAGE_ENCODER))
    head_state = {k: torch.full_like(v, 0.01) for k, v in SAM2PromptHead(16, (48, 48)).state_dict().items()}
    checkpoint = tmp_path / "sam2.pt"
    write_sam2_checkpoint(checkpoint, encoder_state, extra=head_state)
    results, fold, saved = _train(nnunet_dataset, tmp_path, "nnUNetTrainerSSS", "2d", str(checkpoint))
    log = "\n".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert "SAM-2 prompt head from" in log and "missing keys none, unexpected keys none" in log
    assert "Unlabeled pool: 4 cases" in log
    for key in TELEMETRY:
        assert np.isfinite(saved["logging"][key][0]), key
    assert 0 <= saved["logging"]["ssl_pcsw_acceptance"][0] <= 1
    assert any(k.startswith("prompt_head.") for k in saved["network_weights"])
    assert any(k.startswith("fusion.") for k in saved["network_weights"])

    checkpoint.unlink()
    predictions = tmp_path / "predictions"
    run_cli(["nnUNetv2_predict", "-i", nnunet_dataset.raw / nnunet_dataset.dataset_name / "imagesTs", "-o",
             predictions, "-d", nnunet_dataset.dataset_id, "-c", "2d", "-f", 0, "-tr", "nnUNetTrainerSSS",
             "-device", "cpu", "--disable_tta", "-npp", 0, "-nps", 0], nnunet_dataset.env(nnUNet_results=results))
    assert len(list(predictions.glob("*.nii.gz"))) == 2

    # beyond the paper: PCSW + prompt-head refinement of the prediction, plain output alongside
    refined, plain = tmp_path / "refined", tmp_path / "plain"
    run_cli(["nnUNetv2_sss_predict_refine", "-i", nnunet_dataset.raw / nnunet_dataset.dataset_name / "imagesTs",
             "-o", refined, "--plain", plain, "-d", nnunet_dataset.dataset_id, "-c", "2d", "-f", 0, "-device", "cpu"],
            nnunet_dataset.env(nnUNet_results=results))
    for case in predictions.glob("*.nii.gz"):
        ours = sitk.GetArrayFromImage(sitk.ReadImage(str(plain / case.name)))
        assert np.array_equal(ours, sitk.GetArrayFromImage(sitk.ReadImage(str(case))))  # same as nnUNetv2_predict
        assert sitk.GetArrayFromImage(sitk.ReadImage(str(refined / case.name))).shape == ours.shape


def test_sss_baseline_ablation_3d_has_neither_dfe_nor_prompt_head_and_resumes(nnunet_dataset, tmp_path):
    results, fold, saved = _train(nnunet_dataset, tmp_path, "nnUNetTrainerSSS_baseline", "3d_fullres")
    assert not any(k.startswith(("fusion.", "prompt_head.")) for k in saved["network_weights"])
    assert np.isfinite(saved["logging"]["ssl_unlabeled_loss"][0])
    # --c and --val take the SAM-2 config and weights from the nnU-Net checkpoint, no SAM-2 variables
    train = ["nnUNetv2_train", nnunet_dataset.dataset_id, "3d_fullres", 0, "-tr", "nnUNetTrainerSSS_baseline",
             "-device", "cpu"]
    run_cli(train + ["--c"], nnunet_dataset.env(nnUNet_results=results, nnUNet_sss_num_epochs=2))
    resumed = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert resumed["ssl_iteration"] == 4 and resumed["current_epoch"] == 2
    run_cli(train + ["--val"], nnunet_dataset.env(nnUNet_results=results))
    assert (fold / "validation" / "summary.json").is_file()
