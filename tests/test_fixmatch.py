"""FixMatch's unlabeled loss against a transcription of the reference code,
github.com/kekmodel/FixMatch-pytorch ``train.py`` (commit 037b446), ``train()``:

    logits = model(inputs)                          # labeled, weak and strong in one forward
    logits_u_w, logits_u_s = logits[batch_size:].chunk(2)
    pseudo_label = torch.softmax(logits_u_w.detach_(), dim=-1)
    max_probs, targets_u = torch.max(pseudo_label, dim=-1)
    mask = max_probs.ge(args.threshold).float()
    Lu = (F.cross_entropy(logits_u_s, targets_u, reduction='none') * mask).mean()

(classification there: one prediction per image; here per voxel, the class axis is dim 1; ``detach()``
for ``detach_()``, which current torch refuses on the chunk's view, same values)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_sss.training.trainers import nnUNetTrainerFixMatch


def reference_fixmatch_unlabeled_loss(model, inputs_u_w, inputs_u_s, threshold=0.95):
    logits = model(torch.cat((inputs_u_w, inputs_u_s)))
    logits_u_w, logits_u_s = logits.chunk(2)
    pseudo_label = torch.softmax(logits_u_w.detach(), dim=1)
    max_probs, targets_u = torch.max(pseudo_label, dim=1)
    mask = max_probs.ge(threshold).float()
    return (F.cross_entropy(logits_u_s, targets_u, reduction='none') * mask).mean(), mask.mean()


@pytest.mark.parametrize("threshold", [0.95, 0.5])
def test_fixmatch_loss_equals_the_reference(threshold):
    torch.manual_seed(0)
    network = nn.Conv2d(1, 3, 3, padding=1)
    with torch.no_grad():
        network.weight.mul_(20)  # confident enough that some voxels pass 0.95
    weak = torch.randn(4, 1, 8, 8)
    strong = weak * 1.3 + 0.2 * torch.randn_like(weak)
    trainer = object.__new__(nnUNetTrainerFixMatch)
    trainer.network = network
    objective = nnUNetTrainerFixMatch.objective(trainer, confidence_threshold=threshold)
    loss, figures = objective.unlabeled_loss({'data': weak, 'strong': [strong]})
    reference, mask_share = reference_fixmatch_unlabeled_loss(network, weak, strong, threshold)
    assert 0 < float(mask_share) < 1
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    assert figures['ssl_confident_share'] == pytest.approx(float(mask_share))
    loss.backward()
    assert network.weight.grad is not None and network.weight.grad.abs().sum() > 0


def test_fixmatch_declares_no_teacher_and_one_strong_view():
    objective = nnUNetTrainerFixMatch.objective
    assert objective.uses_teacher is False
    trainer = object.__new__(nnUNetTrainerFixMatch)
    assert (objective(trainer).num_strong_views, objective(trainer).unlabeled_loss_weight,
            objective(trainer).confidence_threshold) == (1, 1.0, 0.95)
