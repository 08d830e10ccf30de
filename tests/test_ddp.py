"""Multi-GPU correctness of every trainer, on the CPU: two processes on the gloo backend run the
real trainer classes' ``train_step`` with their networks wrapped in DistributedDataParallel
(``tests/ddp_worker.py``). After 3 steps the ranks hold the same student, teacher and second
network; in the checked step the gradient each optimiser received equals the mean of the two
ranks' local gradients (clipped as the trainer clips); the ranks drew different batches."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from plugin_trainers import stepped_trainer_names
from tiny_sam2 import write_tiny_config

TRAINERS = stepped_trainer_names()
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_worker.py")


@pytest.fixture(scope="module")
def ddp_results(nnunet_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    env = nnunet_dataset.env(nnUNet_results=folder / "results", nnUNet_sss_sam2_config=write_tiny_config(folder),
                             nnUNet_sss_sam2_checkpoint="random")
    processes = [subprocess.Popen([sys.executable, WORKER, "--rank", str(rank), "--world-size", "2",
                                   "--init", str(folder / "init"), "--out", str(folder / f"rank{rank}.json"),
                                   "-d", str(nnunet_dataset.dataset_id), "--trainers", *TRAINERS],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for rank in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for rank, (process, output) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, f"rank {rank} failed:\n{output[-6000:]}"
    results = [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(2)]
    for trainer, result in results[0].items():  # shown with pytest -s
        print(f"{trainer}: {result['seconds']} s, gradients {result['gradients']}")
    return results


@pytest.mark.parametrize("trainer", TRAINERS)
def test_ranks_stay_identical_and_gradients_are_averaged(ddp_results, trainer):
    rank_0 = ddp_results[0][trainer]  # its checksums and gradients are the gathered ones of both ranks
    for model, checksums in rank_0["checksums"].items():
        assert np.allclose(checksums[0], checksums[1], rtol=1e-12, atol=0), (model, checksums)
    for module, figures in rank_0["gradients"].items():
        tolerance = 1e-5 * max(1.0, figures["scale"])
        assert figures["max_abs_difference"] <= tolerance, (module, figures)
        # DDP changed something: the gradient received is not this rank's own
        assert figures["differs_from_local"] > tolerance, (module, figures)
    # each rank drew its own labeled (and unlabeled) patches
    sums_0, sums_1 = (np.array(s) for s in rank_0["batch_sums"])
    assert not np.allclose(sums_0, sums_1), rank_0["batch_sums"]


def test_batches_are_split_across_ranks(ddp_results, nnunet_dataset):
    """nnU-Net splits the labeled batch over the ranks; the unlabeled one follows (2-D SSS slabs keep
    the global length, the student trains on every second slice of it)."""
    plans = json.loads((nnunet_dataset.preprocessed / nnunet_dataset.dataset_name / "nnUNetPlans.json").read_text())
    global_batch = plans["configurations"]["2d"]["batch_size"]
    for rank in range(2):
        results = ddp_results[rank]
        assert sum(ddp_results[r]["nnUNetTrainerPlugin"]["batch_size"] for r in range(2)) == global_batch
        for trainer in ("nnUNetTrainerUniMatchV2", "nnUNetTrainerMeanTeacher"):
            assert results[trainer]["unlabeled_batch_size"] == max(results[trainer]["batch_size"], 2 if
                                                                   trainer == "nnUNetTrainerUniMatchV2" else 1)
        assert results["nnUNetTrainerSSS"]["unlabeled_batch_size"] == max(global_batch, 2)
