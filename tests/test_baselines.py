"""The SSL4MIS baselines (Mean Teacher, Entropy Minimisation, ICT, CPS) against line-for-line
transcriptions of the reference code: github.com/HiLab-git/SSL4MIS, folder ``code/``:

- ``utils/ramps.py`` (commit a4dddaf3) ``sigmoid_rampup``, lines 19-26;
- ``utils/losses.py`` (commit efaf4ba7) ``entropy_loss``, lines 30-36;
- ``train_mean_teacher_2D.py`` (commit 7fc395de) ``get_current_consistency_weight`` lines 80-82,
  the training step lines 154-175;
- ``train_entropy_minimization_2D.py`` (commit f5b9b38c) lines 139-150;
- ``train_interpolation_consistency_training_2D.py`` (commit 7fc395de) lines 158-188;
- ``train_cross_pseudo_supervision_2D.py`` (commit 9a74d155) lines 179-195.

The transcriptions keep SSL4MIS's names and expressions (``.cuda()`` dropped, ``args.*`` passed
in); the trainers' objectives (``unlabeled_loss`` / ``unlabeled_weight``) run with their default
options on a trainer instance made without nnU-Net's ``__init__`` (tiny conv networks, no dataset).
"""
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules.loss import CrossEntropyLoss

from nnunetv2_sss.ssl.mixup import mix_pairs, sample_mixup_factors, split_pairs
from nnunetv2_sss.ssl.ssl4mis import iteration_rampup, normalised_entropy, sigmoid_rampup, teacher_input_noise
from nnunetv2_sss.training.options import declared_defaults
from nnunetv2_sss.training.trainers import (nnUNetTrainerCPS, nnUNetTrainerEntropyMin, nnUNetTrainerICT,
                                             nnUNetTrainerMeanTeacher)

BASELINES = [nnUNetTrainerMeanTeacher, nnUNetTrainerEntropyMin, nnUNetTrainerICT, nnUNetTrainerCPS]


# ---- transcriptions of SSL4MIS --------------------------------------------------------------------
# code/utils/ramps.py lines 19-26
def ssl4mis_sigmoid_rampup(current, rampup_length):
    """Exponential rampup from https://arxiv.org/abs/1610.02242"""
    if rampup_length == 0:
        return 1.0
    else:
        current = np.clip(current, 0.0, rampup_length)
        phase = 1.0 - current / rampup_length
        return float(np.exp(-5.0 * phase * phase))


def ssl4mis_get_current_consistency_weight(epoch, consistency=0.1, consistency_rampup=200.0):
    """code/train_mean_teacher_2D.py lines 80-82 (same in the EM, ICT and CPS scripts)."""
    # Consistency ramp-up from https://arxiv.org/abs/1610.02242
    return consistency * ssl4mis_sigmoid_rampup(epoch, consistency_rampup)


def ssl4mis_entropy_loss(p, C=2):
    """code/utils/losses.py lines 30-36."""
    # p N*C*W*H*D
    y1 = -1*torch.sum(p*torch.log(p+1e-6), dim=1) / \
        torch.tensor(np.log(C))
    ent = torch.mean(y1)

    return ent


def ssl4mis_mean_teacher_consistency(model, ema_model, unlabeled_volume_batch, iter_num):
    """code/train_mean_teacher_2D.py lines 154-174, the unlabeled part (the student's unlabeled
    outputs are ``outputs_soft[args.labeled_bs:]``, i.e. ``model`` on the unlabeled slices)."""
    noise = torch.clamp(torch.randn_like(
        unlabeled_volume_batch) * 0.1, -0.2, 0.2)
    ema_inputs = unlabeled_volume_batch + noise

    outputs = model(unlabeled_volume_batch)
    outputs_soft = torch.softmax(outputs, dim=1)
    with torch.no_grad():
        ema_output = ema_model(ema_inputs)
        ema_output_soft = torch.softmax(ema_output, dim=1)
    if iter_num < 1000:
        consistency_loss = 0.0
    else:
        consistency_loss = torch.mean(
            (outputs_soft-ema_output_soft)**2)
    return consistency_loss


def ssl4mis_ict_consistency(model, ema_model, unlabeled_volume_batch, ict_mix_factors, labeled_bs):
    """code/train_interpolation_consistency_training_2D.py lines 158-188, the unlabeled part
    (``ict_mix_factors`` is what line 158-159's ``np.random.beta(...)`` drew)."""
    ict_mix_factors = torch.tensor(
        ict_mix_factors, dtype=torch.float)
    unlabeled_volume_batch_0 = unlabeled_volume_batch[0:labeled_bs//2, ...]
    unlabeled_volume_batch_1 = unlabeled_volume_batch[labeled_bs//2:, ...]

    # Mix images
    batch_ux_mixed = unlabeled_volume_batch_0 * \
        (1.0 - ict_mix_factors) + \
        unlabeled_volume_batch_1 * ict_mix_factors
    outputs = model(batch_ux_mixed)
    outputs_soft = torch.softmax(outputs, dim=1)
    with torch.no_grad():
        ema_output_ux0 = torch.softmax(
            ema_model(unlabeled_volume_batch_0), dim=1)
        ema_output_ux1 = torch.softmax(
            ema_model(unlabeled_volume_batch_1), dim=1)
        batch_pred_mixed = ema_output_ux0 * \
            (1.0 - ict_mix_factors) + ema_output_ux1 * ict_mix_factors
    consistency_loss = torch.mean(
        (outputs_soft - batch_pred_mixed) ** 2)
    return consistency_loss


def ssl4mis_cps_pseudo_supervision(outputs1, outputs2):
    """code/train_cross_pseudo_supervision_2D.py lines 186-190 on the unlabeled slices (their
    ``[args.labeled_bs:]``); the trainer's unlabeled term is the sum of the two."""
    ce_loss = CrossEntropyLoss()
    outputs_soft1 = torch.softmax(outputs1, dim=1)
    outputs_soft2 = torch.softmax(outputs2, dim=1)
    pseudo_outputs1 = torch.argmax(outputs_soft1.detach(), dim=1, keepdim=False)
    pseudo_outputs2 = torch.argmax(outputs_soft2.detach(), dim=1, keepdim=False)

    pseudo_supervision1 = ce_loss(outputs1, pseudo_outputs2)
    pseudo_supervision2 = ce_loss(outputs2, pseudo_outputs1)
    return pseudo_supervision1, pseudo_supervision2


# ---- helpers -------------------------------------------------------------------------------------
def _conv(seed, in_channels=1, classes=3):
    torch.manual_seed(seed)
    return nn.Conv2d(in_channels, classes, 3, padding=1)


def _bare_trainer(cls, **attributes):
    """An instance of the trainer class without nnU-Net's __init__ (no plans, no dataset)."""
    trainer = object.__new__(cls)
    for key, value in attributes.items():
        setattr(trainer, key, value)
    return trainer


def _objective(trainer, **options):
    """The trainer's objective (``nnunetv2_sss/objectives``) on the bare trainer, with its default
    options except ``options``."""
    trainer.ssl_objective = type(trainer).objective(trainer, **options)
    return trainer.ssl_objective


def _images(batch, seed=0, channels=1, size=8):
    """Images min-max normalised per sample and channel to [0, 1], as SSL4MIS's slices."""
    x = torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))
    flat = x.flatten(2)
    low, high = flat.min(2).values[..., None, None], flat.max(2).values[..., None, None]
    return (x - low) / (high - low)


# ---- ramp-up --------------------------------------------------------------------------------------
@pytest.mark.parametrize("rampup_length", [0, 1, 5, 200.0, 37.5])
def test_sigmoid_rampup_equals_ssl4mis(rampup_length):
    for current in [-3, 0, 0.5, 1, 2, 4.9, 5, 17, 100, 199, 200, 201, 1e6]:
        assert sigmoid_rampup(current, rampup_length) == pytest.approx(
            ssl4mis_sigmoid_rampup(current, rampup_length), rel=1e-12, abs=0)


def test_iteration_rampup_reproduces_ssl4mis_schedule():
    # SSL4MIS: sigmoid_rampup(iter_num // 150, 200) over its 30000 iterations ...
    for iteration in range(0, 30001):
        assert iteration_rampup(iteration, 30000) == pytest.approx(
            ssl4mis_sigmoid_rampup(iteration // 150, 200.0), rel=1e-12), iteration
    # ... on nnU-Net's default schedule (1000 x 250): the same 200 steps, of 1250 iterations each
    for iteration in range(0, 250001, 7):
        assert iteration_rampup(iteration, 250000) == pytest.approx(
            ssl4mis_sigmoid_rampup(iteration // 1250, 200.0), rel=1e-12), iteration
    assert iteration_rampup(5, 0) == 1.0 and iteration_rampup(5, 100, rampup_fraction=0.0) == 1.0


@pytest.mark.parametrize("cls", BASELINES)
def test_unlabeled_weight_equals_ssl4mis_consistency_weight(cls):
    """30000 iterations (120 epochs x 250): the trainer's weight is 2 x SSL4MIS's (nnU-Net's CE + Dice
    is twice SSL4MIS's 0.5 (CE + Dice)); Mean Teacher's is 0 for the first 1000 iterations (SSL4MIS
    sets the consistency loss to 0 there)."""
    trainer = _bare_trainer(cls, num_epochs=120, num_iterations_per_epoch=250)
    _objective(trainer)
    for iteration in list(range(0, 2000)) + list(range(2000, 30001, 13)):
        trainer.ssl_iteration = iteration
        expected = 2 * ssl4mis_get_current_consistency_weight(iteration // 150)
        if cls is nnUNetTrainerMeanTeacher and iteration < 1000:
            expected = 0.0
        assert trainer.unlabeled_weight() == pytest.approx(expected, rel=1e-12, abs=0), iteration


def test_ssl4mis_defaults():
    defaults = {cls: {name: value for name, (value, _) in declared_defaults(cls.objective).items()}
                for cls in BASELINES}
    for cls in BASELINES:
        assert defaults[cls]["unlabeled_loss_weight"] == 2 * 0.1 and defaults[cls]["unlabeled_rampup_fraction"] == 1.0
        assert defaults[cls]["rampup_length"] == 200.0
    assert defaults[nnUNetTrainerMeanTeacher]["ema_decay"] == defaults[nnUNetTrainerICT]["ema_decay"] == 0.99
    assert defaults[nnUNetTrainerICT]["mixup_alpha"] == 0.2
    assert defaults[nnUNetTrainerMeanTeacher]["consistency_start_fraction"] == 1000 / 30000
    assert defaults[nnUNetTrainerEntropyMin]["consistency_start_fraction"] == \
        defaults[nnUNetTrainerICT]["consistency_start_fraction"] == defaults[nnUNetTrainerCPS]["consistency_start_fraction"] == 0.0
    # no teacher where the method has none
    assert [cls.objective.uses_teacher for cls in BASELINES] == [True, False, True, False]


# ---- Mean Teacher ---------------------------------------------------------------------------------
def test_mean_teacher_loss_equals_ssl4mis():
    student, teacher = _conv(1), _conv(2)
    unlabeled = _images(4)
    trainer = _bare_trainer(nnUNetTrainerMeanTeacher, network=student, teacher=teacher)
    torch.manual_seed(7)
    loss, figures = _objective(trainer).unlabeled_loss({'data': unlabeled})
    torch.manual_seed(7)
    reference = ssl4mis_mean_teacher_consistency(student, teacher, unlabeled, iter_num=1000)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    assert 0 <= figures['ssl_confident_share'] <= 1
    # the student's gradient flows, the teacher's does not
    loss.backward()
    assert student.weight.grad is not None and teacher.weight.grad is None


def test_teacher_noise_is_in_units_of_the_intensity_range():
    x = _images(3, channels=2)
    torch.manual_seed(3)
    noisy = teacher_input_noise(x)
    torch.manual_seed(3)
    reference = x + torch.clamp(torch.randn_like(x) * 0.1, -0.2, 0.2)  # SSL4MIS, [0, 1] images
    assert torch.allclose(noisy, reference, atol=1e-6)
    # z-scored (nnU-Net) intensities: the same perturbation relative to each sample's range
    scaled = 4.0 * x - 1.5
    torch.manual_seed(3)
    assert torch.allclose(teacher_input_noise(scaled), 4.0 * reference - 1.5, atol=1e-5)
    torch.manual_seed(3)
    assert torch.allclose(teacher_input_noise(scaled, relative_to_range=False), scaled + (reference - x), atol=1e-6)


# ---- Entropy minimisation -----------------------------------------------------------------------
@pytest.mark.parametrize("num_classes", [None, 4])
def test_entropy_min_loss_equals_ssl4mis(num_classes):
    network = _conv(3)
    labeled, unlabeled = _images(2, seed=1), _images(3, seed=2)
    trainer = _bare_trainer(nnUNetTrainerEntropyMin, network=network, loss=lambda output, target: output.sum() * 0)
    objective = _objective(trainer, entropy_num_classes=num_classes)
    # the trainer's loss parts: the labeled patches' share of the entropy in the labeled part, the rest after it
    parts = list(objective.loss_parts(labeled, None, {'data': unlabeled}))
    assert len(parts) == 2 and parts[0].supervised is not None and parts[1].supervised is None
    loss = parts[0].unlabeled + parts[1].unlabeled
    # SSL4MIS: outputs_soft of the whole batch (labeled + unlabeled), C = 4 in the script
    outputs_soft = torch.softmax(network(torch.cat([labeled, unlabeled])), dim=1)
    reference = ssl4mis_entropy_loss(outputs_soft, C=num_classes or 3)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    loss.backward()
    assert network.weight.grad is not None


def test_normalised_entropy_of_known_distribution():
    p = torch.tensor([0.7, 0.2, 0.1]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    expected = -sum(q * math.log(q + 1e-6) for q in (0.7, 0.2, 0.1)) / math.log(3)
    assert torch.allclose(normalised_entropy(p, 3), torch.full((2, 2, 2), expected))
    assert normalised_entropy(torch.full((1, 4, 1), 0.25), 4).item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="num_classes"):
        normalised_entropy(p, 1)


# ---- ICT ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [2, 6, 7])
def test_ict_loss_equals_ssl4mis(batch):
    student, teacher = _conv(4), _conv(5)
    unlabeled = _images(batch, seed=3)
    trainer = _bare_trainer(nnUNetTrainerICT, network=student, teacher=teacher)
    objective = _objective(trainer)
    objective.mixup_rng = np.random.default_rng(11)
    loss, _ = objective.unlabeled_loss({'data': unlabeled})
    pairs = batch // 2
    # SSL4MIS: labeled_bs // 2 pairs from an unlabeled batch of labeled_bs; np.random.beta(a, a, size=(n, 1, 1, 1))
    mix_factors = np.random.default_rng(11).beta(0.2, 0.2, size=(pairs, 1, 1, 1))
    reference = ssl4mis_ict_consistency(student, teacher, unlabeled[:2 * pairs], mix_factors, labeled_bs=2 * pairs)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)


def test_ict_mix_by_hand():
    x = torch.tensor([[[1.0, 2.0]], [[10.0, 20.0]], [[-4.0, 0.0]], [[3.0, 3.0]]])  # (B=4, C=1, 2 voxels)
    x0, x1 = split_pairs(x)
    mixed = mix_pairs(x0, x1, [0.25, 1.0])
    assert torch.allclose(mixed, torch.tensor([[[0.75 * 1 + 0.25 * -4, 0.75 * 2 + 0.25 * 0]], [[3.0, 3.0]]]))
    p = torch.tensor([[[0.9], [0.1]], [[0.2], [0.8]]])  # teacher probabilities (B=2, K=2, 1 voxel)
    mixed = mix_pairs(*split_pairs(p), [0.7])
    assert torch.allclose(mixed, torch.tensor([[[0.3 * 0.9 + 0.7 * 0.2], [0.3 * 0.1 + 0.7 * 0.8]]]))
    assert torch.allclose(mixed.sum(1), torch.ones(1, 1))  # still a distribution


def test_mixup_bad_input():
    x = torch.zeros(2, 1, 3)
    with pytest.raises(ValueError, match="mix factors"):
        mix_pairs(x[:1], x[1:], [1.5])
    with pytest.raises(ValueError, match="one mix factor per pair"):
        mix_pairs(x[:1], x[1:], [0.5, 0.5])
    with pytest.raises(ValueError, match="at least 2"):
        split_pairs(x[:1])
    with pytest.raises(ValueError, match="mixup_alpha"):
        sample_mixup_factors(np.random.default_rng(0), 0.0, 2)


def test_mixup_factors_are_beta_distributed():
    samples = sample_mixup_factors(np.random.default_rng(0), 0.2, 20000)
    assert samples.min() >= 0 and samples.max() <= 1
    assert samples.mean() == pytest.approx(0.5, abs=0.01)
    assert samples.var() == pytest.approx(0.2 * 0.2 / (0.4 ** 2 * 1.4), abs=0.01)  # ab / ((a+b)^2 (a+b+1))


# ---- CPS ------------------------------------------------------------------------------------------------
def test_cps_loss_equals_ssl4mis():
    network_1, network_2 = _conv(6), _conv(7)
    unlabeled = _images(3, seed=4)
    trainer = _bare_trainer(nnUNetTrainerCPS, network=network_1)
    objective = _objective(trainer)
    objective.trained_modules['network_b'] = network_2
    part_1, part_2 = objective.unlabeled_parts({'data': unlabeled})
    supervision_1, supervision_2 = ssl4mis_cps_pseudo_supervision(network_1(unlabeled), network_2(unlabeled))
    assert part_1.unlabeled.item() == pytest.approx(supervision_1.item(), rel=1e-6)
    assert part_2.unlabeled.item() == pytest.approx(supervision_2.item(), rel=1e-6)
    agreement = (network_1(unlabeled).argmax(1) == network_2(unlabeled).argmax(1)).float().mean()
    assert part_1.figures['ssl_cps_agreement'].item() == pytest.approx(agreement.item())


class _FixedLogits(nn.Module):
    """A 'network' whose output is its one parameter (``(B, K, voxels)`` logits), whatever the input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, x):
        return self.logits


def test_cps_cross_losses_by_hand():
    # (B=1, K=2, 2 voxels); network 1: voxel 0 -> class 1, voxel 1 -> class 0; network 2: 0 -> 0, 1 -> 1
    network_1, network_2 = _FixedLogits([[[0.0, 1.0], [2.0, 0.0]]]), _FixedLogits([[[3.0, 0.0], [0.0, 1.0]]])
    objective = _objective(_bare_trainer(nnUNetTrainerCPS, network=network_1))
    objective.trained_modules['network_b'] = network_2
    part_1, part_2 = objective.unlabeled_parts({'data': torch.zeros(1)})
    ce_1_on_label_2 = 0.5 * (math.log(1 + math.e ** 2) + math.log(1 + math.e))  # targets (0, 1)
    ce_2_on_label_1 = 0.5 * (math.log(1 + math.e ** 3) + math.log(1 + math.e))  # targets (1, 0)
    assert part_1.unlabeled.item() == pytest.approx(ce_1_on_label_2, rel=1e-6)
    assert part_2.unlabeled.item() == pytest.approx(ce_2_on_label_1, rel=1e-6)
    assert part_1.figures['ssl_cps_agreement'].item() == 0.0

    # the pseudo-labels carry no gradient: d part / d logits_1 = (softmax(logits_1) - onehot(argmax logits_2)) / N
    part_1.unlabeled.backward()
    assert network_2.logits.grad is None
    onehot_label_2 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert torch.allclose(network_1.logits.grad, (torch.softmax(network_1.logits.detach(), 1) - onehot_label_2) / 2)
    part_2.unlabeled.backward()
    onehot_label_1 = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    assert torch.allclose(network_2.logits.grad, (torch.softmax(network_2.logits.detach(), 1) - onehot_label_1) / 2)
