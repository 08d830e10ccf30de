"""EMA, complementary dropout, CutMix and unlabeled losses against hand computations."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from nnunetv2_sss.ssl.complementary_dropout import apply_complementary_dropout
from nnunetv2_sss.ssl.cutmix import cutmix_from_reversed_batch, random_box_mask
from nnunetv2_sss.ssl.ema import ema_momentum, ema_update, make_teacher
from nnunetv2_sss.ssl.losses import entropy, masked_cross_entropy, softmax_mse


def test_ema_momentum_schedule():
    assert ema_momentum(0, 0.996) == 0.0
    assert ema_momentum(1, 0.996) == 0.5
    assert ema_momentum(9, 0.996) == pytest.approx(0.9)
    assert ema_momentum(10_000, 0.996) == 0.996


def test_ema_update_parameters_and_buffers_by_hand():
    student = nn.BatchNorm1d(2)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([1.0, 2.0]))
        student.running_mean.copy_(torch.tensor([4.0, 8.0]))
        student.num_batches_tracked.fill_(7)
    teacher = make_teacher(student)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    with torch.no_grad():
        student.weight.copy_(torch.tensor([3.0, 6.0]))
        student.running_mean.copy_(torch.tensor([0.0, 0.0]))
        student.num_batches_tracked.fill_(9)
    ema_update(teacher, student, alpha=0.75)
    # 0.75 * old + 0.25 * new
    assert torch.allclose(teacher.weight, torch.tensor([1.5, 3.0]))
    assert torch.allclose(teacher.running_mean, torch.tensor([3.0, 6.0]))
    assert int(teacher.num_batches_tracked) == 9  # integer buffers are copied


def test_complementary_dropout_masks():
    torch.manual_seed(0)
    pairs, levels = 8, [(5, 4, 4), (11, 2, 2), (3, 1, 1)]
    f1 = [torch.ones(pairs, c, h, w) for c, h, w in levels]
    f2 = [torch.ones(pairs, c, h, w) * 3 for c, h, w in levels]
    d1, d2 = apply_complementary_dropout(f1, f2, 0.5)
    kept_pairs = None
    for (c, h, w), a, b in zip(levels, d1, d2):
        m1, m2 = a[:, :, 0, 0], b[:, :, 0, 0] / 3
        assert set(m1.unique().tolist()) <= {0.0, 1.0, 2.0}
        assert torch.equal(m1 + m2, torch.full_like(m1, 2.0))  # each channel kept in exactly one view (x2) or both (x1)
        undropped = (m1 == 1).all(1)
        assert torch.equal((m1 == 1).any(1), undropped)  # a pair is either fully undropped or fully 0/2
        assert int(undropped.sum()) == pairs // 2        # half the pairs undropped
        kept_pairs = undropped if kept_pairs is None else kept_pairs
        assert torch.equal(undropped, kept_pairs)         # same pairs at every level
        assert a.shape == (pairs, c, h, w)
    dropped = ~kept_pairs
    # independent masks per level: masks of the dropped pairs differ between the two 5- and 11-channel levels' prefixes
    level0 = d1[0][dropped][:, :3, 0, 0]
    level2 = d1[2][dropped][:, :3, 0, 0]
    assert not torch.equal(level0, level2)


def test_cutmix_pastes_image_label_and_confidence_consistently():
    rng = np.random.default_rng(3)
    boxes = torch.stack([random_box_mask((6, 10, 10), rng, p=1.0) for _ in range(4)])
    fractions = boxes.float().mean((1, 2, 3))
    assert ((fractions >= 0.02 - 1e-6) & (fractions <= 0.45)).all()
    image = torch.arange(4).float().view(4, 1, 1, 1, 1).expand(4, 2, 6, 10, 10).clone()
    label = torch.arange(4).view(4, 1, 1, 1).expand(4, 6, 10, 10).clone()
    confidence = label.float() / 10
    mixed_image = cutmix_from_reversed_batch(image, boxes)
    mixed_label = cutmix_from_reversed_batch(label, boxes)
    mixed_confidence = cutmix_from_reversed_batch(confidence, boxes)
    for b in range(4):
        expected = torch.where(boxes[b], 3 - b, b)
        assert torch.equal(mixed_label[b], expected)
        assert torch.equal(mixed_image[b, 1], expected.float())
        assert torch.allclose(mixed_confidence[b], expected.float() / 10)
    assert not random_box_mask((6, 10, 10), np.random.default_rng(0), p=0.0).any()


def test_masked_cross_entropy_by_hand():
    logits = torch.tensor([[[0.0, 2.0]], [[0.0, 0.0]]]).permute(1, 0, 2)  # (1, 2 classes, 2 voxels)
    label = torch.tensor([[1, 0]])
    valid = torch.tensor([[True, False]])
    # voxel 0: logits (0, 0), label 1; divided by both voxels (UniMatch V2), not by the valid one
    expected = -math.log(math.exp(0) / (math.exp(0) + math.exp(0))) / 2
    assert masked_cross_entropy(logits, label, valid).item() == pytest.approx(expected)
    assert masked_cross_entropy(logits, label, torch.zeros_like(valid)).item() == 0.0


def test_softmax_mse_and_entropy_by_hand():
    logits = torch.zeros(1, 2, 3)
    target = torch.tensor([[[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]])
    assert softmax_mse(logits, target).item() == pytest.approx(0.25)
    assert entropy(logits).item() == pytest.approx(math.log(2))
