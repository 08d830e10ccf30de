"""Bad input through the real commands (issue 18): each ends in one ``ERROR: <file or value>: ...`` line,
a non-zero exit, no traceback and nothing partial left behind.

Truncated images (predict_refine, evaluate, check_images, the converters' labels), a malformed SAM-2 config
and a SAM-2 checkpoint that fills none of the encoder's tensors (nnUNetv2_train), ``-device cuda`` without
CUDA, an unknown dataset id (the same message from every command), ``--folds 1`` and case ids in messages."""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
from typing import Dict, List, Tuple

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers import BIN, run_cli
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2_sss.data.conversion import copy_label
from nnunetv2_sss.data.image_checks import ImageFileError, check_cases, find_cases
from nnunetv2_sss.devices import torch_device
from nnunetv2_sss.errors import UserError
from nnunetv2_sss.networks.sam2_checkpoint import load_image_encoder_weights
from nnunetv2_sss.networks.sam2_config import build_image_encoder, load_image_encoder_node
from test_user_errors import assert_user_error
from tiny_sam2 import TINY_IMAGE_ENCODER, write_sam2_checkpoint, write_tiny_config

integration = pytest.mark.integration
DATASET_JSON = {"channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}


def run_all(commands: Dict[str, Tuple[List, dict]], timeout: float = 600) -> Dict[str, subprocess.CompletedProcess]:
    """Start every ``name: (console script + arguments, env)`` at once; their results by name."""
    started = {name: subprocess.Popen([os.path.join(BIN, args[0])] + [str(a) for a in args[1:]], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name, (args, env) in commands.items()}
    results = {}
    for name, process in started.items():
        out, err = process.communicate(timeout=timeout)
        results[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return results


def truncated_copy(source: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
    """``source`` cut to half its bytes: the header is readable, the voxel data is not complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def _write(path: pathlib.Path, array: np.ndarray) -> str:
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.float32)), str(path))
    return str(path)


@pytest.fixture
def test_images(nnunet_dataset):
    return nnunet_dataset.raw / nnunet_dataset.dataset_name / "imagesTs"


# ---- 1: truncated images -------------------------------------------------------------------------------------------
@integration
def test_check_images_command(nnunet_dataset, test_images, tmp_path):
    env = nnunet_dataset.env()
    good = run_cli(["nnUNetv2_sss_check_images", "-i", test_images, "-d", nnunet_dataset.dataset_id], env)
    assert "2 cases OK" in good.stdout
    folder = tmp_path / "images"
    shutil.copytree(test_images, folder)
    bad = truncated_copy(test_images / "test_012_0000.nii.gz", folder / "test_012_0000.nii.gz")
    result = run_cli(["nnUNetv2_sss_check_images", "-i", folder, "-d", nnunet_dataset.dataset_id], env,
                     expect_failure=True)
    assert_user_error(result, f"{bad}: cannot be read")
    assert result.returncode == 2


def test_image_checks_as_check_images_calls_them(tmp_path):
    rng = np.random.default_rng(0)
    _write(tmp_path / "a_0000.nii.gz", rng.normal(size=(4, 5, 6)))
    check_cases(find_cases(str(tmp_path), DATASET_JSON), SimpleITKIO())
    nan = rng.normal(size=(4, 5, 6))
    nan[0, 0, 0] = np.nan
    for name, array, message in (("b", nan, "contains NaN"), ("c", np.zeros((4, 5, 6)), "image is empty")):
        path = _write(tmp_path / f"{name}_0000.nii.gz", array)
        with pytest.raises(ImageFileError, match=f"{path}: {message}"):
            check_cases(find_cases(str(tmp_path), DATASET_JSON), SimpleITKIO())
        os.remove(path)
    (tmp_path / "d_0001.nii.gz").write_bytes(b"")
    with pytest.raises(ImageFileError, match=r"d: has channel files \[1\], the dataset has 1 channel"):
        find_cases(str(tmp_path), DATASET_JSON)


def _model_folder(dataset, results: pathlib.Path) -> pathlib.Path:
    """What predict_refine reads before the model: the results folder's plans/dataset.json and a checkpoint
    file (never loaded: the inputs are refused first)."""
    folder = results / dataset.dataset_name / "nnUNetTrainerSSS__nnUNetPlans__2d"
    (folder / "fold_0").mkdir(parents=True)
    shutil.copy(dataset.preprocessed / dataset.dataset_name / "nnUNetPlans.json", folder / "plans.json")
    shutil.copy(dataset.preprocessed / dataset.dataset_name / "dataset.json", folder / "dataset.json")
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    return folder


@integration
def test_predict_refine_and_evaluate_refuse_truncated_files(nnunet_dataset, test_images, tmp_path):
    results = tmp_path / "results"
    _model_folder(nnunet_dataset, results)
    inputs = tmp_path / "inputs"
    shutil.copytree(test_images, inputs)
    bad_input = truncated_copy(test_images / "test_013_0000.nii.gz", inputs / "test_013_0000.nii.gz")
    references = nnunet_dataset.raw / nnunet_dataset.dataset_name / "labelsTs"
    predictions = tmp_path / "predictions"
    shutil.copytree(references, predictions)
    bad_prediction = truncated_copy(references / "test_012.nii.gz", predictions / "test_012.nii.gz")
    env = nnunet_dataset.env(nnUNet_results=results)
    runs = run_all({
        "refine": (["nnUNetv2_sss_predict_refine", "-i", inputs, "-o", tmp_path / "refined", "-d",
                    nnunet_dataset.dataset_id, "-c", "2d"], env),  # no -device: cuda if available, else cpu
        "evaluate": (["nnUNetv2_sss_evaluate", "-ref", references, "-pred", predictions, "-d",
                      nnunet_dataset.dataset_id, "-np", 1], env)})
    assert_user_error(runs["refine"], f"{bad_input}: cannot be read")
    assert not (tmp_path / "refined").exists()  # refused before the model is loaded
    assert_user_error(runs["evaluate"], f"{bad_prediction}: cannot be read")
    assert not (predictions / "summary_sss.json").exists()


def test_converters_refuse_a_truncated_label(tmp_path):
    whole = _write(tmp_path / "whole.nii.gz", np.random.default_rng(0).integers(0, 3, (8, 32, 32)))
    label = truncated_copy(pathlib.Path(whole), tmp_path / "release" / "case_gt.nii.gz")
    with pytest.raises(ImageFileError, match=f"{label}: cannot be read"):
        copy_label(label, tmp_path / "out" / "case.nii.gz", [0, 1, 2], False)
    assert not (tmp_path / "out").exists()


# ---- 5: the device of predict_refine --------------------------------------------------------------------------------
def test_default_device_is_cuda_if_available(monkeypatch):
    for available, device in ((False, "cpu"), (True, "cuda")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        assert torch_device(None) == device
    assert torch_device("cpu") == "cpu"


@integration
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_predict_refine_cuda_without_cuda(nnunet_dataset, test_images, tmp_path):
    result = run_cli(["nnUNetv2_sss_predict_refine", "-i", test_images, "-o", tmp_path / "out", "-d",
                      nnunet_dataset.dataset_id, "-c", "2d", "-device", "cuda"], nnunet_dataset.env(), expect_failure=True)
    assert_user_error(result, "-device cuda: ", "-device cpu")
    assert not (tmp_path / "out").exists()


# ---- 6: one message for an unknown dataset --------------------------------------------------------------------------
@integration
def test_unknown_dataset_same_message_from_every_command(nnunet_dataset, test_images, tmp_path):
    env = nnunet_dataset.env()
    labels = nnunet_dataset.raw / nnunet_dataset.dataset_name / "labelsTs"
    runs = run_all({
        "preprocess_unlabeled": (["nnUNetv2_sss_preprocess_unlabeled", "-d", 977, "-c", "2d"], env),
        "make_splits": (["nnUNetv2_sss_make_splits", "-d", 977, "--num-labeled", 2], env),
        "evaluate": (["nnUNetv2_sss_evaluate", "-ref", labels, "-pred", labels, "-d", 977], env),
        "predict_refine": (["nnUNetv2_sss_predict_refine", "-i", test_images, "-o", tmp_path / "out", "-d", 977,
                            "-c", "2d", "-device", "cpu"], env),
        "check_images": (["nnUNetv2_sss_check_images", "-i", test_images, "-d", 977], env),
        "results": (["nnUNetv2_sss_results", "-d", 977, "-c", "2d", "-tr", "nnUNetTrainer"], env)})
    lines = {name: assert_user_error(result, "dataset '977': no DatasetXXX_* folder with this id in nnUNet_raw=")
             for name, result in runs.items()}
    assert len(set(lines.values())) == 1, lines
    assert all(result.returncode == 2 for result in runs.values())


# ---- 8: make_splits messages ----------------------------------------------------------------------------------------
@integration
def test_make_splits_one_fold_and_case_ids_as_plain_strings(nnunet_dataset, tmp_path):
    env = nnunet_dataset.env(nnUNet_preprocessed=tmp_path / "preprocessed")
    runs = run_all({
        "folds": (["nnUNetv2_sss_make_splits", "-d", nnunet_dataset.dataset_id, "--num-labeled", 2, "--folds", 1],
                  env),
        "regex": (["nnUNetv2_sss_make_splits", "-d", nnunet_dataset.dataset_id, "--num-labeled", 2,
                   "--group-regex", "patient\\d+"], env)})
    assert_user_error(runs["folds"], "--folds 1: give at least 2 folds")
    line = assert_user_error(runs["regex"], "case 'tiny_000' does not match the group pattern")
    assert "np.str_" not in line
    assert not (tmp_path / "preprocessed").exists()


# ---- 3, 4: SAM-2 config and checkpoint ------------------------------------------------------------------------------
def test_config_without_image_encoder_node(tmp_path):
    path = tmp_path / "no_encoder.yaml"
    path.write_text("model:\n  image_size: 1024\n")
    with pytest.raises(UserError, match=f"{path} has no 'model.image_encoder' node"):
        load_image_encoder_node(str(path))


def test_checkpoint_of_another_config_names_it(tmp_path):
    tiny = build_image_encoder(TINY_IMAGE_ENCODER)
    write_sam2_checkpoint(tmp_path / "demo.pt", build_image_encoder(load_image_encoder_node("sam2_hiera_demo"))
                          .state_dict())
    with pytest.raises(UserError, match="demo.pt.*tensor shapes do not match.*embed_dim 32 and 6 blocks, "
                                        "as in sam2_hiera_demo"):
        load_image_encoder_weights(tiny, tmp_path / "demo.pt")
    half = dict(list(tiny.state_dict().items())[: len(tiny.state_dict()) // 2])
    write_sam2_checkpoint(tmp_path / "half.pt", half)
    with pytest.raises(UserError, match=f"half.pt'?: fills only {len(half)} of the {len(tiny.state_dict())} "
                                        "tensors.*at least 90%"):
        load_image_encoder_weights(tiny, tmp_path / "half.pt")


def _bad_yaml(dataset, root, results):
    path = root / "bad.yaml"
    path.write_text("model:\n  image_encoder:\n    trunk: [1, 2\n")
    return dataset.env(nnUNet_results=results, nnUNet_sss_sam2_config=path, nnUNet_sss_sam2_checkpoint="random")


def _foreign_checkpoint(dataset, root, results):
    """A checkpoint of the tiny encoder whose keys sit one level too deep (a wrapper's state dict)."""
    state = build_image_encoder(TINY_IMAGE_ENCODER).state_dict()
    write_sam2_checkpoint(root / "nested.pt", {f"image_encoder.{k}": v for k, v in state.items()})
    return dataset.env(nnUNet_results=results, nnUNet_sss_sam2_config=write_tiny_config(root),
                       nnUNet_sss_sam2_checkpoint=root / "nested.pt")


SAM2_CASES = {"bad_yaml": _bad_yaml, "foreign_checkpoint": _foreign_checkpoint}


@pytest.fixture(scope="module")
def sam2_runs(nnunet_dataset, tmp_path_factory) -> Dict[str, Tuple[pathlib.Path, subprocess.CompletedProcess]]:
    """``nnUNetv2_train ... -tr nnUNetTrainerSAM2`` for every case of :data:`SAM2_CASES`, all at once."""
    roots, commands = {}, {}
    for name, setup in SAM2_CASES.items():
        roots[name] = tmp_path_factory.mktemp(name)
        (roots[name] / "results").mkdir()
        commands[name] = (["nnUNetv2_train", nnunet_dataset.dataset_id, "2d", 0, "-tr", "nnUNetTrainerSAM2",
                           "-device", "cpu"], setup(nnunet_dataset, roots[name], roots[name] / "results"))
    return {name: (roots[name], result) for name, result in run_all(commands).items()}


@integration
def test_malformed_sam2_config(sam2_runs):
    root, result = sam2_runs["bad_yaml"]
    line = assert_user_error(result, f"nnUNet_sss_sam2_config='{root / 'bad.yaml'}'", "is not valid YAML",
                             "line 4, column 1")
    assert result.returncode == 1, line
    assert list((root / "results").iterdir()) == []  # the fold folder nnU-Net created is gone


@integration
def test_sam2_checkpoint_that_fills_no_encoder_tensor(sam2_runs):
    root, result = sam2_runs["foreign_checkpoint"]
    assert_user_error(result, f"nnUNet_sss_sam2_checkpoint='{root / 'nested.pt'}'", "fills only 0 of the",
                      "image_encoder.image_encoder.trunk", "embed_dim 8 and 5 blocks")
    assert result.returncode == 1
    assert list((root / "results").iterdir()) == []
