"""CPS4 stage 2's unlabeled loss (docs/method.md 2.2): ``1/2 [CE(y_s, y_text) + CE(y_s, (p_t + onehot(y_text)) / 2)]``,
against PyTorch's own cross-entropy with probability targets (``F.cross_entropy(logits, probabilities)``,
an independent implementation), and the teacher's part in it."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_sss.ssl.soft_targets import enhanced_soft_target, soft_cross_entropy
from nnunetv2_sss.training.trainers import nnUNetTrainerCPS4


def _conv(seed, classes=3):
    torch.manual_seed(seed)
    return nn.Conv2d(1, classes, 3, padding=1)


def _cps4(student, teacher, text):
    """The trainer's objective (default options) on the trainer without nnU-Net's __init__; its
    ``text_labels`` returns the given ``y_text``."""
    trainer = object.__new__(nnUNetTrainerCPS4)
    trainer.network, trainer.teacher = student, teacher
    objective = trainer.ssl_objective = nnUNetTrainerCPS4.objective(trainer)
    objective.text_labels = lambda weak: text
    return objective


def test_soft_cross_entropy_equals_pytorch_probability_targets():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=generator)
    target = torch.softmax(3 * torch.randn(2, 4, 5, 6, generator=generator), 1)
    assert soft_cross_entropy(logits, target).item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)
    # a one-hot target gives the hard-label CE
    labels = torch.randint(0, 4, (2, 5, 6), generator=generator)
    one_hot = F.one_hot(labels, 4).movedim(-1, 1).float()
    assert soft_cross_entropy(logits, one_hot).item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        soft_cross_entropy(logits, target[:, :3])


def test_enhanced_target_is_the_mean_of_teacher_and_text():
    generator = torch.Generator().manual_seed(1)
    teacher = torch.softmax(torch.randn(2, 3, 4, 4, generator=generator), 1)
    text = torch.randint(0, 3, (2, 4, 4), generator=generator)
    target = enhanced_soft_target(teacher, text)
    assert torch.allclose(target, (teacher + F.one_hot(text, 3).movedim(-1, 1)) / 2)
    assert torch.allclose(target.sum(1), torch.ones(2, 4, 4))
    # by linearity of CE in its target: CE(y_s, target) = (CE(y_s, p_t) + CE(y_s, y_text)) / 2
    logits = torch.randn(2, 3, 4, 4, generator=generator)
    assert soft_cross_entropy(logits, target).item() == pytest.approx(
        0.5 * (F.cross_entropy(logits, teacher) + F.cross_entropy(logits, text)).item(), rel=1e-6)
    with pytest.raises(ValueError, match="do not match"):
        enhanced_soft_target(teacher, text[:, :3])
    with pytest.raises(ValueError, match="0..2"):
        enhanced_soft_target(teacher, torch.full((2, 4, 4), 3))


def test_trainer_loss_equals_reference():
    student, teacher = _conv(0), _conv(1)
    generator = torch.Generator().manual_seed(2)
    weak, strong = torch.randn(2, 1, 8, 8, generator=generator), torch.randn(2, 1, 8, 8, generator=generator)
    text = torch.randint(0, 3, (2, 8, 8), generator=generator)
    loss, figures = _cps4(student, teacher, text).unlabeled_loss({'data': weak, 'strong': [strong]})

    y_s = student(strong)
    p_t = torch.softmax(teacher(weak), 1).detach()
    soft_target = (p_t + F.one_hot(text, 3).movedim(-1, 1).float()) / 2
    reference = 0.5 * (F.cross_entropy(y_s, text) + F.cross_entropy(y_s, soft_target))
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    assert figures['ssl_text_teacher_agreement'] == pytest.approx(float((p_t.argmax(1) == text).float().mean()))
    loss.backward()
    assert student.weight.grad is not None and teacher.weight.grad is None


def test_the_teacher_changes_the_loss():
    """With the hard label argmax(p_t + onehot(y_text)) (= y_text) two different teachers gave the same loss."""
    student = _conv(0)
    generator = torch.Generator().manual_seed(3)
    weak, strong = torch.randn(2, 1, 8, 8, generator=generator), torch.randn(2, 1, 8, 8, generator=generator)
    text = torch.randint(0, 3, (2, 8, 8), generator=generator)
    batch = {'data': weak, 'strong': [strong]}
    loss_1, _ = _cps4(student, _conv(1), text).unlabeled_loss(batch)
    loss_2, _ = _cps4(student, _conv(2), text).unlabeled_loss(batch)
    assert abs(loss_1.item() - loss_2.item()) > 1e-3
    # a teacher that agrees with the text map (one-hot y_text) lowers the enhance term to CE(y_s, y_text)
    agreeing = _cps4(student, lambda x: 50.0 * F.one_hot(text, 3).movedim(-1, 1).float(), text)
    loss_agree, figures = agreeing.unlabeled_loss(batch)
    assert loss_agree.item() == pytest.approx(F.cross_entropy(student(strong), text).item(), rel=1e-4)
    assert figures['ssl_text_teacher_agreement'] == 1.0


def test_no_rampup_by_default_and_optional_rampup():
    trainer = object.__new__(nnUNetTrainerCPS4)
    trainer.num_epochs = 100
    trainer.ssl_objective = nnUNetTrainerCPS4.objective(trainer)
    for epoch in (0, 1, 50, 99):
        trainer.current_epoch = epoch
        assert trainer.unlabeled_weight() == 1.0
    # the option: the base objective's sigmoid ramp-up over 10 epochs
    trainer.ssl_objective = nnUNetTrainerCPS4.objective(trainer, unlabeled_rampup_fraction=0.1)
    trainer.current_epoch = 5
    assert trainer.unlabeled_weight() == pytest.approx(torch.exp(torch.tensor(-5 * 0.5 ** 2)).item())
    assert not hasattr(nnUNetTrainerCPS4.objective(trainer), 'text_weight')
