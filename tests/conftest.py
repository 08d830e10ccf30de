"""Session fixture: the tiny dataset, planned and preprocessed once by the real commands."""
from __future__ import annotations

import os
import pathlib
import shutil
from dataclasses import dataclass

import pytest

from helpers import CPU_SHARE, run_cli
from tiny_dataset import build_tiny_dataset

TRAINERS_FOLDER = str(pathlib.Path(__file__).resolve().parents[1] / "trainers")


@dataclass
class NnunetDataset:
    raw: pathlib.Path
    preprocessed: pathlib.Path
    results: pathlib.Path
    dataset_id: int
    dataset_name: str

    def env(self, **overrides) -> dict:
        """Environment for subprocesses: nnU-Net paths, plugin trainers, short schedule."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet_", "nnunet_"))}
        env.update({
            "nnUNet_raw": str(self.raw), "nnUNet_preprocessed": str(self.preprocessed),
            "nnUNet_results": str(self.results), "nnUNet_extTrainer": TRAINERS_FOLDER,
            "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1", "nnUNet_compile": "false",
            "nnUNet_sss_num_epochs": "1", "nnUNet_sss_iterations_per_epoch": "2",
            "nnUNet_sss_val_iterations_per_epoch": "1", "OMP_NUM_THREADS": CPU_SHARE,
            "nnUNet_sss_cpu_threads": CPU_SHARE,
            "PYTHONUNBUFFERED": "1", "MPLBACKEND": "agg",
        })
        env.update({k: str(v) for k, v in overrides.items()})
        return env

    def copy_preprocessed(self, destination: pathlib.Path) -> pathlib.Path:
        """A private copy of the preprocessed dataset (for tests that modify it)."""
        target = destination / "preprocessed"
        shutil.copytree(self.preprocessed, target)
        return target


def pytest_configure(config):
    """The tests that train in this process use this worker's share of the cores too."""
    import torch
    torch.set_num_threads(int(CPU_SHARE))


def pytest_collection_modifyitems(items):
    """A test that uses the planned dataset (nnU-Net's commands run to make it) is an integration test."""
    for item in items:
        if "nnunet_dataset" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def nnunet_dataset(tmp_path_factory) -> NnunetDataset:
    root = tmp_path_factory.mktemp("nnunet")
    dataset = NnunetDataset(root / "raw", root / "preprocessed", root / "results", 901, "Dataset901_Tiny")
    for folder in (dataset.raw, dataset.preprocessed, dataset.results):
        folder.mkdir()
    build_tiny_dataset(str(dataset.raw), dataset.dataset_id)
    env = dataset.env()
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", dataset.dataset_id, "-c", "2d", "3d_fullres", "-np", "1",
             "--verify_dataset_integrity"], dataset.env(nnUNet_n_proc_DA=1))  # 0 breaks nnU-Net's planner
    run_cli(["nnUNetv2_sss_preprocess_unlabeled", "-d", dataset.dataset_id, "-c", "2d", "3d_fullres", "-np", "1"], env)
    return dataset
