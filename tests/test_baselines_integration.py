"""The baseline trainers through the real commands: nnUNetv2_train (2 iterations, 2d) and
nnUNetv2_predict; for CPS, restoring both networks and the shared optimizer from the checkpoint."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import run_cli

pytestmark = pytest.mark.integration

CPS_RESTORE_SCRIPT = """
import sys, torch
from nnunetv2.run.run_training import get_trainer_from_args
trainer = get_trainer_from_args('901', '2d', 0, 'nnUNetTrainerCPS', 'nnUNetPlans', True, torch.device('cpu'))
checkpoint = torch.load(sys.argv[1], map_location='cpu', weights_only=False)
trainer.load_checkpoint(sys.argv[1])
same = lambda a, b: a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)
network_b = trainer.ssl_objective.trained_modules['network_b']
assert same(trainer.network.state_dict(), checkpoint['network_weights']), 'network 1 not restored'
assert same(network_b.state_dict(), checkpoint['network_b_weights']), 'network 2 not restored'
assert trainer.teacher is None, 'CPS keeps no EMA teacher'
groups = trainer.optimizer.param_groups
assert len(groups) == 2 and all(p is q for p, q in zip(groups[1]['params'], network_b.parameters()))
state = trainer.optimizer.state_dict()
momentum = state['state']
assert momentum.keys() == checkpoint['optimizer_state']['state'].keys()
assert all(any(i in momentum for i in g['params']) for g in state['param_groups']), 'a network has no momentum'
assert all(torch.equal(momentum[i]['momentum_buffer'], checkpoint['optimizer_state']['state'][i]['momentum_buffer'])
           for i in momentum)
print('restored', trainer.current_epoch)
"""


def _train_and_predict(dataset, tmp_path, trainer):
    """Train ``trainer`` on fold 0 of the 2d configuration, predict imagesTs; return the final checkpoint."""
    env = dataset.env(nnUNet_results=tmp_path / "results")
    run_cli(["nnUNetv2_train", dataset.dataset_id, "2d", 0, "-tr", trainer, "-device", "cpu"], env)
    fold = tmp_path / "results" / dataset.dataset_name / f"{trainer}__nnUNetPlans__2d" / "fold_0"
    predictions = tmp_path / "predictions"
    run_cli(["nnUNetv2_predict", "-i", dataset.raw / dataset.dataset_name / "imagesTs", "-o", predictions,
             "-d", dataset.dataset_id, "-c", "2d", "-f", 0, "-tr", trainer, "-device", "cpu", "--disable_tta",
             "-npp", 0, "-nps", 0], env)
    assert sorted(p.name for p in predictions.glob("*.nii.gz")) == ["test_012.nii.gz", "test_013.nii.gz"]
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["ssl_iteration"] == 2
    assert np.isfinite(checkpoint["logging"]["ssl_unlabeled_loss"][0])
    assert 0 <= checkpoint["logging"]["ssl_confident_share"][0] <= 1
    return fold, checkpoint


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("trainer, kept", [("nnUNetTrainerEntropyMin", None), ("nnUNetTrainerICT", "student_weights")])
def test_single_network_baseline_train_and_predict(nnunet_dataset, tmp_path, trainer, kept):
    _, checkpoint = _train_and_predict(nnunet_dataset, tmp_path, trainer)
    # the exported model is network_weights and is stored once; ICT's student is kept beside its exported
    # teacher; Entropy Minimisation has no teacher: the student alone
    assert "teacher_weights" not in checkpoint
    if kept is None:
        assert "student_weights" not in checkpoint
    else:
        assert not _same_state(checkpoint["network_weights"], checkpoint[kept])


def test_cps_train_predict_and_restore_both_networks(nnunet_dataset, tmp_path):
    fold, checkpoint = _train_and_predict(nnunet_dataset, tmp_path, "nnUNetTrainerCPS")
    # prediction uses network 1; network 2 is a differently initialised, separately trained copy
    assert "student_weights" not in checkpoint and "teacher_weights" not in checkpoint  # no teacher
    assert checkpoint["network_b_weights"].keys() == checkpoint["network_weights"].keys()
    assert not _same_state(checkpoint["network_b_weights"], checkpoint["network_weights"])
    assert 0 <= checkpoint["logging"]["ssl_cps_agreement"][0] <= 1

    restored = subprocess.run([sys.executable, "-c", CPS_RESTORE_SCRIPT, str(fold / "checkpoint_final.pth")],
                              env=nnunet_dataset.env(nnUNet_results=tmp_path / "results"),
                              capture_output=True, text=True)
    assert restored.returncode == 0, restored.stderr[-3000:]
