"""nnUNetTrainerSAM2 through the real nnU-Net commands (tiny Hiera, CPU, 1 epoch of 2 iterations)."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers import run_cli
from nnunetv2_sss.networks.sam2_config import build_image_encoder
from tiny_sam2 import TINY_IMAGE_ENCODER, random_encoder_state, write_sam2_checkpoint, write_tiny_config

pytestmark = pytest.mark.integration
TRAINER = "nnUNetTrainerSAM2"


def fold_folder(results, dataset, configuration):
    return results / dataset.dataset_name / f"{TRAINER}__nnUNetPlans__{configuration}" / "fold_0"


def training_log(fold) -> str:
    return "\n".join(p.read_text() for p in sorted(fold.glob("training_log_*.txt")))


def predict_and_check(dataset, results, configuration, tmp_path):
    """nnUNetv2_predict (one test image) with neither SAM-2 variable set: labels of the image's shape."""
    env = dataset.env(nnUNet_results=results)
    assert not any(k.startswith("nnUNet_sss_sam2") for k in env)
    image = sorted((dataset.raw / dataset.dataset_name / "imagesTs").glob("*_0000.nii.gz"))[0]
    (tmp_path / "input").mkdir()
    shutil.copy(image, tmp_path / "input" / image.name)
    run_cli(["nnUNetv2_predict", "-i", tmp_path / "input", "-o", tmp_path / "predicted", "-d", dataset.dataset_id,
             "-c", configuration, "-f", 0, "-tr", TRAINER, "-device", "cpu", "-npp", 0, "-nps", 0, "--disable_tta"],
            env, timeout=600)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "predicted" / image.name.replace("_0000", ""))))
    assert labels.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(image))).shape
    assert set(np.unique(labels)) <= {0, 1, 2}


def test_2d_training_from_a_sam2_checkpoint_then_val_and_predict(nnunet_dataset, tmp_path):
    config = write_tiny_config(tmp_path)
    state = random_encoder_state(build_image_encoder(TINY_IMAGE_ENCODER))
    checkpoint = tmp_path / "tiny_sam2.pt"
    write_sam2_checkpoint(checkpoint, state, extra={"sam_mask_decoder.iou_token.weight": torch.ones(1, 16)})
    results = tmp_path / "results"
    env = nnunet_dataset.env(nnUNet_results=results, nnUNet_sss_sam2_config=config,
                             nnUNet_sss_sam2_checkpoint=checkpoint)
    run_cli(["nnUNetv2_train", nnunet_dataset.dataset_id, "2d", 0, "-tr", TRAINER, "-device", "cpu"], env)

    fold = fold_folder(results, nnunet_dataset, "2d")
    assert (fold / "checkpoint_final.pth").is_file()
    record = json.loads((fold / "sam2_weights.json").read_text())
    assert record["config"] == str(config) and record["checkpoint"] == str(checkpoint)
    assert record["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert record["loaded_tensors"] == len(state) and record["ignored_tensors"] == 1
    assert record["missing_keys"] == [] and record["unexpected_keys"] == []
    assert f"loaded {len(state)} image-encoder tensors" in training_log(fold)
    plans = json.loads((fold.parent / "plans.json").read_text())
    assert plans["configurations"]["2d"]["sam2_network"]["image_encoder"] == TINY_IMAGE_ENCODER

    # the SAM-2 files and variables are gone: weights and config come from the results folder
    config.unlink()
    checkpoint.unlink()
    predict_and_check(nnunet_dataset, results, "2d", tmp_path)


def test_3d_training_with_random_weights_then_val_and_predict(nnunet_dataset, tmp_path):
    config = write_tiny_config(tmp_path)
    results = tmp_path / "results"
    env = nnunet_dataset.env(nnUNet_results=results, nnUNet_sss_sam2_config=config,
                             nnUNet_sss_sam2_checkpoint="random")
    run_cli(["nnUNetv2_train", nnunet_dataset.dataset_id, "3d_fullres", 0, "-tr", TRAINER, "-device", "cpu"], env)

    fold = fold_folder(results, nnunet_dataset, "3d_fullres")
    assert (fold / "checkpoint_final.pth").is_file()
    assert "WARNING: nnUNet_sss_sam2_checkpoint=random" in training_log(fold)
    record = json.loads((fold / "sam2_weights.json").read_text())
    assert record["checkpoint"] == "random" and record["sha256"] is None

    # --val: SAM-2 config and weights come from the nnU-Net checkpoint (no SAM-2 variables, no YAML)
    config.unlink()
    (fold / "validation").rename(fold / "validation_first")
    run_cli(["nnUNetv2_train", nnunet_dataset.dataset_id, "3d_fullres", 0, "-tr", TRAINER, "-device", "cpu",
             "--val"], nnunet_dataset.env(nnUNet_results=results))
    assert (fold / "validation" / "summary.json").is_file()
    predict_and_check(nnunet_dataset, results, "3d_fullres", tmp_path)


def test_training_without_the_checkpoint_variable_stops_with_its_name(nnunet_dataset, tmp_path):
    env = nnunet_dataset.env(nnUNet_results=tmp_path, nnUNet_sss_sam2_config=write_tiny_config(tmp_path))
    result = run_cli(["nnUNetv2_train", nnunet_dataset.dataset_id, "2d", 0, "-tr", TRAINER, "-device", "cpu"], env,
                     expect_failure=True)
    assert "nnUNet_sss_sam2_checkpoint is not set" in result.stderr
    assert not list(tmp_path.rglob("checkpoint_*.pth"))


PROBE = """
import json, sys, torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2_sss.training.base import unwrap
from nnunetv2_sss.training.trainers import nnUNetTrainerSAM2

class nnUNetTrainerSAM2Frozen(nnUNetTrainerSAM2):
    freeze_encoder = True

def probe(trainer_class):
    folder = join(nnUNet_preprocessed, sys.argv[1])
    plans = dict(load_json(join(folder, 'nnUNetPlans.json')), continue_training=False)
    trainer = trainer_class(plans, '3d_fullres', 0, load_json(join(folder, 'dataset.json')), torch.device('cpu'))
    trainer.initialize()
    network = unwrap(trainer.network)
    encoder = {id(p) for p in network.pretrained_encoder.parameters()}
    groups = [{'lr': g['lr'], 'encoder': sum(id(p) in encoder for p in g['params']), 'size': len(g['params'])}
              for g in trainer.optimizer.param_groups]
    patch = trainer.configuration_manager.patch_size
    outputs = network(torch.randn(1, 1, *patch))
    trainer.set_deep_supervision_enabled(False)
    single = network(torch.randn(1, 1, *patch))
    return {'type': type(trainer.optimizer).__name__, 'groups': groups, 'num_encoder': len(encoder),
            'num_parameters': len(list(network.parameters())), 'scales': trainer._get_deep_supervision_scales(),
            'network_scales': network.deep_supervision_scales, 'patch': patch,
            'output_shapes': [list(o.shape[2:]) for o in outputs], 'single_shape': list(single.shape[2:]),
            'trainable_encoder': sum(p.requires_grad for p in network.pretrained_encoder.parameters())}

print(json.dumps({'trainable': probe(nnUNetTrainerSAM2), 'frozen': probe(nnUNetTrainerSAM2Frozen)}))
"""


def test_trainer_optimizer_freezing_and_deep_supervision(nnunet_dataset, tmp_path):
    env = nnunet_dataset.env(nnUNet_results=tmp_path, nnUNet_sss_sam2_config=write_tiny_config(tmp_path),
                             nnUNet_sss_sam2_checkpoint="random")
    result = subprocess.run([sys.executable, "-c", PROBE, nnunet_dataset.dataset_name], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    probes = json.loads(result.stdout.strip().splitlines()[-1])
    for mode, probe in probes.items():
        assert probe["type"] == "AdamW"
        new = {"lr": pytest.approx(1e-4), "encoder": 0, "size": probe["num_parameters"] - probe["num_encoder"]}
        if mode == "trainable":
            assert probe["groups"] == [new, {"lr": pytest.approx(1e-5), "encoder": probe["num_encoder"],
                                             "size": probe["num_encoder"]}]
            assert probe["trainable_encoder"] == probe["num_encoder"]
        else:
            assert probe["groups"] == [new] and probe["trainable_encoder"] == 0
        assert probe["scales"] == probe["network_scales"]
        assert probe["scales"][:3] == [[1.0, 1.0, 1.0], [1.0, 0.5, 0.5], [1.0, 0.25, 0.25]]
        assert probe["output_shapes"][0] == probe["single_shape"] == probe["patch"]
        assert probe["output_shapes"] == [[round(n * s) for n, s in zip(probe["patch"], scale)]
                                          for scale in probe["scales"]]
