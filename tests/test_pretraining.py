"""nnUNetv2_sss_pretrain (masked image modelling) and -pretrained_weights for the plugin's trainers.

Hand checks of the mask, the masked input, the target and the loss; then the real commands on the tiny
dataset (2d, CPU, 2 + 1 epochs of 3 iterations): pretraining with labelsTr and the preprocessed
segmentations deleted, --c, the loss against a fresh network on fixed batches, the CNN output through
nnU-Net's -pretrained_weights (student, EMA teacher and CPS's second network equal it), mismatching files
refused with one ERROR line, the SAM-2 output through nnUNet_sss_sam2_checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from helpers import run_cli
from nnunetv2_sss.pretraining.masking import block_mask, blocks_masked, masked_input, masked_mse, total_stride
from tiny_sam2 import TINY_IMAGE_ENCODER, write_tiny_config

torch.set_num_threads(1)
SCHEDULE = ["--iterations", 3, "--val-iterations", 1, "-device", "cpu"]
PRETRAINED = "PretrainnnUNetTrainer__nnUNetPlans__2d"


# ---- hand checks ---------------------------------------------------------------------------------------
def test_block_mask_masks_whole_blocks_at_the_ratio():
    generator = torch.Generator().manual_seed(0)
    mask = block_mask(3, (5, 6), (2, 3), 0.6, generator)  # grid 3 x 2 blocks, the last row cut to 1 voxel
    assert mask.shape == (3, 1, 5, 6) and mask.dtype == torch.bool
    for sample in mask[:, 0]:
        blocks = [sample[r:r + 2, c:c + 3] for r in range(0, 5, 2) for c in range(0, 6, 3)]
        assert all(bool(b.all()) or not bool(b.any()) for b in blocks)  # a block is masked whole or not at all
        assert sum(bool(b.all()) for b in blocks) == round(0.6 * 6) == 4
    assert blocks_masked(4, 0.01) == 1 and blocks_masked(4, 0.99) == 3 and blocks_masked(1, 0.6) == 1
    again = block_mask(3, (5, 6), (2, 3), 0.6, torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)


def test_masked_voxels_get_the_token_and_their_target_is_the_unmasked_input():
    data = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., :2, 2:] = True   # top-right block
    mask[..., 2:, :2] = True   # bottom-left block
    token = torch.tensor([-7.0, 9.0])
    masked = masked_input(data, mask, token)
    for channel in range(2):
        assert torch.all(masked[0, channel][mask[0, 0]] == token[channel])
        assert torch.equal(masked[0, channel][~mask[0, 0]], data[0, channel][~mask[0, 0]])

    # the target is the unmasked input: a network that returns it exactly has loss 0, one that returns the
    # masked input has the squared distance of the masked voxels to the token, per channel mean
    assert masked_mse(data, data, mask) == 0
    by_hand = np.mean([np.mean([(float(data[0, c, y, x]) - float(token[c])) ** 2
                                for y in range(4) for x in range(4) if mask[0, 0, y, x]]) for c in range(2)])
    assert masked_mse(masked, data, mask).item() == pytest.approx(by_hand)
    # unmasked voxels do not count
    off = data.clone()
    off[..., ~mask[0, 0]] += 100.0
    assert masked_mse(off, data, mask) == 0


def test_record_paths_are_relative_to_nnunet_folders(monkeypatch, tmp_path):
    """Folders in records: ``$<variable>/...`` inside nnU-Net's folders (the innermost one), else unchanged."""
    from nnunetv2_sss.record_paths import record_path
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "pre" / "results"))
    monkeypatch.delenv("nnUNet_raw", raising=False)
    assert record_path(str(tmp_path / "pre" / "Dataset1_A" / "nnUNetPlans_2d")) == \
        "$nnUNet_preprocessed/Dataset1_A/nnUNetPlans_2d"
    assert record_path(str(tmp_path / "pre" / "results" / "Dataset1_A" / "x.pt")) == "$nnUNet_results/Dataset1_A/x.pt"
    assert record_path(str(tmp_path / "pre")) == "$nnUNet_preprocessed"
    assert record_path(str(tmp_path / "pre2" / "x")) == str(tmp_path / "pre2" / "x")  # a sibling, not inside
    assert record_path("random") == "random"


def test_total_stride_of_the_networks():
    from nnunetv2_sss.networks.sam2_unet import SAM2UNet

    class Encoder(torch.nn.Module):
        strides = [[1, 1, 1], [1, 2, 2], 2, [2, 2, 2]]

    network = torch.nn.Module()
    network.encoder = Encoder()
    assert total_stride(network, 3) == (4, 8, 8)
    sam2 = SAM2UNet(TINY_IMAGE_ENCODER, 1, 1, 3, slice_axis=0)
    assert total_stride(sam2, 3) == (1, 32, 32)


# ---- the command on the tiny dataset -------------------------------------------------------------------
def use_env(monkeypatch, env: dict) -> None:
    """``env``'s nnU-Net variables in this process (nnU-Net and the plugin read them when used)."""
    for key in [k for k in os.environ if k.startswith(("nnUNet_", "nnunet_"))]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith(("nnUNet_", "nnunet_")):
            monkeypatch.setenv(key, str(value))


def unlabeled_copy(dataset, root):
    """The dataset without any label: raw without labelsTr / labelsTs, preprocessed without segmentations."""
    raw = root / "raw"
    shutil.copytree(dataset.raw, raw, ignore=shutil.ignore_patterns("labelsTr", "labelsTs"))
    preprocessed = dataset.copy_preprocessed(root)
    removed = [p for p in preprocessed.rglob("*") if p.is_file() and (p.name.endswith(("_seg.b2nd", "_seg.npy"))
                                                                       or "gt_segmentations" in p.parts)]
    for path in removed:
        path.unlink()
    assert removed and not (raw / dataset.dataset_name / "labelsTr").exists()
    return raw, preprocessed


def log_of(folder) -> str:
    return "\n".join(p.read_text() for p in sorted(folder.glob("training_log_*.txt")))


@pytest.fixture(scope="module")
def pretrained_cnn(nnunet_dataset, tmp_path_factory):
    """nnUNetTrainer's network pretrained on the tiny dataset without labels: 2 epochs, then --c to 3."""
    root = tmp_path_factory.mktemp("pretrain_cnn")
    raw, preprocessed = unlabeled_copy(nnunet_dataset, root)
    env = nnunet_dataset.env(nnUNet_raw=raw, nnUNet_preprocessed=preprocessed, nnUNet_results=root / "results")
    run_cli(["nnUNetv2_sss_pretrain", "-d", nnunet_dataset.dataset_id, "-c", "2d", "--epochs", 2] + SCHEDULE, env)
    folder = root / "results" / nnunet_dataset.dataset_name / PRETRAINED
    first = json.loads((folder / "pretraining.json").read_text())
    run_cli(["nnUNetv2_sss_pretrain", "-d", nnunet_dataset.dataset_id, "-c", "2d", "--epochs", 3, "--c"] + SCHEDULE,
            env)
    return folder, first, env


def test_pretraining_without_labels_then_resume(pretrained_cnn):
    folder, first, _ = pretrained_cnn
    for name in ("checkpoint_final.pth", "progress.png", "pretrained_weights.pth", "pretraining.json"):
        assert (folder / name).is_file(), name
    assert not (folder / "checkpoint_latest.pth").exists()
    record = json.loads((folder / "pretraining.json").read_text())
    assert record["trainer"] == "nnUNetTrainer" and record["network_class"] == "PlainConvUNet"
    assert record["dataset"] == "Dataset901_Tiny" and record["input_channels"] == 1 and record["mask_ratio"] == 0.6
    assert record["num_training_cases"] + record["num_validation_cases"] == 8 + 4  # imagesTr + unlabeled pool
    assert any(f.endswith("_unlabeled") for f in record["cases"]["training"])
    # folders relative to nnUNet_preprocessed (no path of this machine), and the software that made it
    assert all(f.startswith("$nnUNet_preprocessed/Dataset901_Tiny/nnUNetPlans_2d") for f in record["cases"]["training"])
    assert record["software"].startswith("nnunetv2-sss ") and "nnunetv2 " in record["software"]
    # --c continued: the first two epochs are those of the first run, the third is new
    assert first["epochs_done"] == 2 and record["epochs_done"] == 3 and record["iterations"] == 9
    assert record["train_loss_per_epoch"][:2] == pytest.approx(first["train_loss_per_epoch"])
    log = log_of(folder)
    assert "Continuing the pretraining from" in log and "Epoch 2" in log
    weights = torch.load(folder / "pretrained_weights.pth", weights_only=False)
    assert weights["pretraining"]["iterations"] == 9
    assert not any("mask_token" in k for k in weights["network_weights"])
    # without --c a folder that holds a pretraining is refused
    result = run_cli(["nnUNetv2_sss_pretrain", "-d", 901, "-c", "2d", "--epochs", 1] + SCHEDULE, pretrained_cnn[2],
                     expect_failure=True)
    assert result.stderr.strip().startswith("ERROR: ") and "--c" in result.stderr


def test_cnn_output_carries_the_pretrained_encoder_and_a_fresh_decoder(pretrained_cnn):
    """--transfer encoder (the default): every encoder tensor is the pretraining's, every decoder convolution
    is another (newly initialised) one; the record says so."""
    from nnunetv2_sss.pretraining.export import is_decoder_key
    folder, _, _ = pretrained_cnn
    final = torch.load(folder / "checkpoint_final.pth", weights_only=False)["network_weights"]
    exported = torch.load(folder / "pretrained_weights.pth", weights_only=False)
    weights = exported["network_weights"]
    assert exported["pretraining"]["transferred"] == "encoder (decoder: nnU-Net initialisation)"
    assert json.loads((folder / "pretraining.json").read_text())["transferred"] == exported["pretraining"]["transferred"]
    encoder = [k for k in weights if not is_decoder_key(k)]
    decoder_convs = [k for k in weights if is_decoder_key(k) and weights[k].ndim >= 3]
    assert any(k.startswith("encoder.") for k in encoder) and any(k.startswith("decoder.encoder.") for k in encoder)
    assert len(decoder_convs) >= 6  # two convolutions per decoder stage, transposed convolutions, seg layers
    assert all(torch.equal(weights[k], final[k]) for k in encoder)
    assert not any(torch.equal(weights[k], final[k]) for k in decoder_convs)


def test_reconstruction_loss_falls(pretrained_cnn, nnunet_dataset, monkeypatch, tmp_path):
    """The pretrained weights against a fresh network of the same class on the same batches and masks."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2_sss.pretraining.cases import pretraining_cases
    from nnunetv2_sss.pretraining.trainer import pretraining_trainer_class
    folder, _, env = pretrained_cnn
    use_env(monkeypatch, {**env, "nnUNet_results": tmp_path})
    base = os.path.join(env["nnUNet_preprocessed"], nnunet_dataset.dataset_name)
    plans = load_json(os.path.join(base, "nnUNetPlans.json"))
    plans["continue_training"] = False
    trainer = pretraining_trainer_class(recursive_find_trainer_class_by_name("nnUNetTrainer"))(
        plans=plans, configuration="2d", fold="all", dataset_json=load_json(os.path.join(base, "dataset.json")),
        device=torch.device("cpu"))
    torch.manual_seed(0)
    np.random.seed(0)
    trainer.initialize()
    trainer.pretraining_cases = pretraining_cases(base, "nnUNetPlans_2d", nnunet_dataset.dataset_name, "2d",
                                                  "nnUNetPlans")
    loader = trainer.get_dataloaders()[0]
    batches = [next(loader)["data"] for _ in range(4)]

    def loss() -> float:
        trainer.network.eval()
        with torch.no_grad():
            return float(np.mean([trainer.reconstruction_loss(b, torch.Generator().manual_seed(i))[0].item()
                                  for i, b in enumerate(batches)]))

    fresh = loss()
    checkpoint = torch.load(folder / "checkpoint_final.pth", weights_only=False)
    trainer.network.load_state_dict(checkpoint["network_weights"])
    pretrained = loss()
    assert pretrained < 0.9 * fresh, (fresh, pretrained)


@pytest.mark.parametrize("loader", ["with the plugin's check", "nnU-Net's own"])
def test_cnn_output_starts_every_model(pretrained_cnn, nnunet_dataset, monkeypatch, tmp_path, loader):
    """nnU-Net's -pretrained_weights path (run_training's maybe_load_checkpoint, then the trainer's on_train_start,
    in this process): the student, the EMA teacher and CPS's second network all hold the pretrained tensors
    (segmentation layers aside), with the plugin's wrap of maybe_load_checkpoint and with nnU-Net's function alone
    (the models start through the trainer's own on_train_start; the wrap only checks the file)."""
    from nnunetv2.run import run_training as nnunet_run_training
    from nnunetv2_sss.networks.passes import unwrap
    folder, _, _ = pretrained_cnn
    path = str(folder / "pretrained_weights.pth")
    pretrained = torch.load(path, weights_only=False)["network_weights"]
    use_env(monkeypatch, nnunet_dataset.env(nnUNet_results=tmp_path))
    maybe_load_checkpoint = nnunet_run_training.maybe_load_checkpoint
    if loader == "nnU-Net's own":
        maybe_load_checkpoint = maybe_load_checkpoint.__wrapped__

    def holds_pretrained(module) -> bool:
        state = unwrap(module).state_dict()
        return all(torch.equal(v.cpu(), pretrained[k]) for k, v in state.items() if ".seg_layers." not in k)

    for trainer_name in ("nnUNetTrainerMeanTeacher", "nnUNetTrainerCPS"):
        trainer = nnunet_run_training.get_trainer_from_args(str(nnunet_dataset.dataset_id), "2d", 0, trainer_name,
                                                            device=torch.device("cpu"))
        maybe_load_checkpoint(trainer, False, False, path)
        trainer.on_train_start()
        try:
            assert holds_pretrained(trainer.network), trainer_name
            others = [trainer.teacher] if trainer.teacher is not None else []
            others += list(trainer.ssl_objective.trained_modules.values())
            assert others, trainer_name
            assert all(holds_pretrained(m) for m in others), trainer_name
        finally:
            trainer.on_train_end()


def test_nnunet_train_starts_from_the_cnn_output(pretrained_cnn, nnunet_dataset, tmp_path):
    folder, _, _ = pretrained_cnn
    path = folder / "pretrained_weights.pth"
    env = nnunet_dataset.env(nnUNet_results=tmp_path)
    run_cli(["nnUNetv2_train", nnunet_dataset.dataset_id, "2d", 0, "-tr", "nnUNetTrainerMeanTeacher", "-device", "cpu",
             "-pretrained_weights", path], env)
    fold = tmp_path / nnunet_dataset.dataset_name / "nnUNetTrainerMeanTeacher__nnUNetPlans__2d" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    log = log_of(fold)
    assert f"-pretrained_weights {path}: fits the network" in log and "EMA teacher: a copy of the student" in log
    assert "nnunetv2-sss " in log  # the plugin's version in every training log


def refused(monkeypatch, env, dataset_id, trainer, path) -> str:
    """``run_training`` with -pretrained_weights in this process; the ERROR line it exits with."""
    from nnunetv2.run.run_training import run_training
    use_env(monkeypatch, env)
    with pytest.raises(SystemExit) as exit_info:
        run_training(str(dataset_id), "2d", 0, trainer, pretrained_weights=str(path), device=torch.device("cpu"))
    message = str(exit_info.value.code)
    assert message.startswith("ERROR: ") and "\n" not in message, message
    return message


def test_mismatching_checkpoints_are_refused(pretrained_cnn, nnunet_dataset, monkeypatch, tmp_path):
    folder, _, _ = pretrained_cnn
    original = torch.load(folder / "pretrained_weights.pth", weights_only=False)
    env = nnunet_dataset.env(nnUNet_results=tmp_path / "results")

    channels = {**original, "pretraining": {**original["pretraining"], "input_channels": 2}}
    first = "encoder.stages.0.0.convs.0.conv.weight"
    channels["network_weights"] = {**original["network_weights"],
                                   first: original["network_weights"][first].repeat(1, 2, 1, 1)}
    torch.save(channels, tmp_path / "two_channels.pth")
    message = refused(monkeypatch, env, nnunet_dataset.dataset_id, "nnUNetTrainerMeanTeacher", tmp_path / "two_channels.pth")
    assert "other input channels" in message and "2 input channel" in message and "1 input channel" in message

    # no record (e.g. another tool's file): the tensor that differs is named
    del channels["pretraining"]
    torch.save(channels, tmp_path / "no_record.pth")
    message = refused(monkeypatch, env, nnunet_dataset.dataset_id, "nnUNetTrainerCPS", tmp_path / "no_record.pth")
    assert first in message and "(32, 2, 3, 3)" in message and "(32, 1, 3, 3)" in message

    network = {**original, "pretraining": {**original["pretraining"], "network_class": "ResidualEncoderUNet"}}
    torch.save(network, tmp_path / "other_network.pth")
    message = refused(monkeypatch, env, nnunet_dataset.dataset_id, "nnUNetTrainerPlugin", tmp_path / "other_network.pth")
    assert "another network" in message and "ResidualEncoderUNet" in message and "PlainConvUNet" in message

    torch.save({"model": {"image_encoder.x": torch.zeros(1)}}, tmp_path / "sam2.pt")
    message = refused(monkeypatch, env, nnunet_dataset.dataset_id, "nnUNetTrainerPlugin", tmp_path / "sam2.pt")
    assert "nnUNet_sss_sam2_checkpoint" in message


def test_sam2_output_loads_as_a_sam2_checkpoint(nnunet_dataset, monkeypatch, tmp_path):
    """Pretraining the SSS network (tiny Hiera, random start) writes a SAM-2-format file that fills the image
    encoder completely through nnUNet_sss_sam2_checkpoint (sam2_weights.json: no missing key)."""
    from nnunetv2.run import run_training as nnunet_run_training
    from nnunetv2_sss.networks.passes import unwrap
    config = write_tiny_config(tmp_path)
    env = nnunet_dataset.env(nnUNet_results=tmp_path / "results", nnUNet_sss_sam2_config=config)
    run_cli(["nnUNetv2_sss_pretrain", "-d", nnunet_dataset.dataset_id, "-c", "2d", "-tr", "nnUNetTrainerSSS",
             "--epochs", 1] + SCHEDULE, env)
    folder = tmp_path / "results" / nnunet_dataset.dataset_name / "PretrainnnUNetTrainerSSS__nnUNetPlans__2d"
    path = folder / "sam2_image_encoder.pt"
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"model", "pretraining"} and all(k.startswith("image_encoder.") for k in saved["model"])
    assert saved["pretraining"]["network_class"] == "SSSNetwork" and saved["pretraining"]["sam2_config"] == str(config)

    use_env(monkeypatch, {**env, "nnUNet_sss_sam2_checkpoint": path})
    trainer = nnunet_run_training.get_trainer_from_args(str(nnunet_dataset.dataset_id), "2d", 0, "nnUNetTrainerSAM2",
                                                        device=torch.device("cpu"))
    trainer.initialize()
    encoder = unwrap(trainer.network).pretrained_encoder.state_dict()
    record = json.loads((tmp_path / "results" / nnunet_dataset.dataset_name / "nnUNetTrainerSAM2__nnUNetPlans__2d" /
                         "fold_0" / "sam2_weights.json").read_text())
    assert record["missing_keys"] == [] and record["unexpected_keys"] == [] and record["ignored_tensors"] == 0
    assert record["loaded_tensors"] == len(encoder) == len(saved["model"])
    assert all(torch.equal(encoder[k], saved["model"]["image_encoder." + k]) for k in encoder)


def test_study_adds_a_pretrained_row_after_its_trainer():
    """``nnUNetv2_sss_study --pretrained T``: a row ``T+pretrained`` right after ``T``, run as ``T`` in a results
    folder of its own; a trainer not in -tr is refused."""
    from nnunetv2_sss.errors import UserValueError
    from nnunetv2_sss.evaluation.study.pretraining import nnunet_trainer, results_folder_name, with_pretrained_rows
    rows = with_pretrained_rows(["nnUNetTrainerPlugin", "nnUNetTrainerMeanTeacher", "nnUNetTrainerSSS"],
                                ["nnUNetTrainerSSS", "nnUNetTrainerPlugin"])
    assert rows == ["nnUNetTrainerPlugin", "nnUNetTrainerPlugin+pretrained", "nnUNetTrainerMeanTeacher",
                    "nnUNetTrainerSSS", "nnUNetTrainerSSS+pretrained"]
    assert [nnunet_trainer(r) for r in rows[:2]] == ["nnUNetTrainerPlugin"] * 2
    assert results_folder_name(rows[0]) != results_folder_name(rows[1])
    assert with_pretrained_rows(["nnUNetTrainerPlugin"], None) == ["nnUNetTrainerPlugin"]
    with pytest.raises(UserValueError, match="not in -tr"):
        with_pretrained_rows(["nnUNetTrainerPlugin"], ["nnUNetTrainerSSS"])
