"""Defining computations of the baseline trainers, against hand computations:
ICT's mixup of inputs and teacher targets, CPS's cross losses, EM's entropy."""
import math

import numpy as np
import pytest
import torch

from nnunetv2_sss.ssl.cross_pseudo import cross_pseudo_supervision_loss
from nnunetv2_sss.ssl.losses import entropy
from nnunetv2_sss.ssl.mixup import mix_with_partners, sample_mixup_coefficient


def test_ict_mix_of_inputs_by_hand():
    x = torch.tensor([[[1.0, 2.0]], [[10.0, 20.0]], [[-4.0, 0.0]]])  # (B=3, C=1, 2 voxels)
    partners = torch.tensor([2, 0, 1])
    mixed = mix_with_partners(x, partners, 0.25)
    expected = torch.tensor([[[0.25 * 1 + 0.75 * -4, 0.25 * 2 + 0.75 * 0]],
                             [[0.25 * 10 + 0.75 * 1, 0.25 * 20 + 0.75 * 2]],
                             [[0.25 * -4 + 0.75 * 10, 0.25 * 0 + 0.75 * 20]]])
    assert torch.allclose(mixed, expected)
    assert torch.equal(mix_with_partners(x, partners, 1.0), x)


def test_ict_mix_of_teacher_targets_by_hand():
    # teacher probabilities (B=2, K=2 classes, 1 voxel), mixed with the same lambda and partners
    p = torch.tensor([[[0.9], [0.1]], [[0.2], [0.8]]])
    mixed = mix_with_partners(p, torch.tensor([1, 0]), 0.7)
    assert torch.allclose(mixed, torch.tensor([[[0.7 * 0.9 + 0.3 * 0.2], [0.7 * 0.1 + 0.3 * 0.8]],
                                               [[0.7 * 0.2 + 0.3 * 0.9], [0.7 * 0.8 + 0.3 * 0.1]]]))
    assert torch.allclose(mixed.sum(1), torch.ones(2, 1))  # still a distribution


def test_mixup_bad_input():
    x = torch.zeros(2, 1, 3)
    with pytest.raises(ValueError, match="mix_coefficient"):
        mix_with_partners(x, torch.tensor([1, 0]), 1.5)
    with pytest.raises(ValueError, match="partners"):
        mix_with_partners(x, torch.tensor([1, 0, 0]), 0.5)
    with pytest.raises(ValueError, match="mixup_alpha"):
        sample_mixup_coefficient(np.random.default_rng(0), 0.0)


def test_mixup_coefficient_is_beta_distributed():
    rng = np.random.default_rng(0)
    samples = np.array([sample_mixup_coefficient(rng, 0.5) for _ in range(4000)])
    assert samples.min() >= 0 and samples.max() <= 1
    assert samples.mean() == pytest.approx(0.5, abs=0.02)
    assert samples.var() == pytest.approx(0.5 * 0.5 / (1.0 ** 2 * 2.0), abs=0.01)  # ab / ((a+b)^2 (a+b+1)) = 1/8


def test_cps_cross_losses_by_hand():
    # (B=1, K=2, 2 voxels); network 1: voxel 0 -> class 1, voxel 1 -> class 0; network 2: 0 -> 0, 1 -> 1
    logits_1 = torch.tensor([[[0.0, 1.0], [2.0, 0.0]]], requires_grad=True)
    logits_2 = torch.tensor([[[3.0, 0.0], [0.0, 1.0]]], requires_grad=True)
    loss = cross_pseudo_supervision_loss(logits_1, logits_2)
    ce_1_on_label_2 = 0.5 * (math.log(1 + math.e ** 2) + math.log(1 + math.e))  # targets (0, 1)
    ce_2_on_label_1 = 0.5 * (math.log(1 + math.e ** 3) + math.log(1 + math.e))  # targets (1, 0)
    assert loss.item() == pytest.approx(ce_1_on_label_2 + ce_2_on_label_1, rel=1e-6)

    # the pseudo-labels carry no gradient: d loss / d logits_1 = (softmax(logits_1) - onehot(argmax logits_2)) / N
    loss.backward()
    onehot_label_2 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert torch.allclose(logits_1.grad, (torch.softmax(logits_1.detach(), 1) - onehot_label_2) / 2)
    onehot_label_1 = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    assert torch.allclose(logits_2.grad, (torch.softmax(logits_2.detach(), 1) - onehot_label_1) / 2)


def test_cps_agreeing_confident_networks_give_small_loss():
    logits = torch.tensor([[[2.0, -2.0], [-2.0, 2.0]]])
    assert cross_pseudo_supervision_loss(logits, logits.clone()).item() == pytest.approx(2 * math.log(1 + math.e ** -4), rel=1e-5)
    with pytest.raises(ValueError, match="shape"):
        cross_pseudo_supervision_loss(logits, logits[..., :1])


def test_entropy_of_known_distribution():
    p = torch.tensor([0.7, 0.2, 0.1])
    logits = torch.log(p).view(1, 3, 1, 1).expand(2, 3, 2, 2)  # (B, K, H, W), same distribution everywhere
    expected = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert entropy(logits).item() == pytest.approx(expected, rel=1e-6)
    one_hot_like = torch.tensor([50.0, 0.0, 0.0]).view(1, 3, 1)
    assert entropy(one_hot_like).item() == pytest.approx(0.0, abs=1e-12)
