"""Exponential-moving-average teacher (Mean Teacher / UniMatch V2 schedule)."""
from __future__ import annotations

import copy

import torch
from torch import nn


def ema_momentum(iteration: int, max_decay: float) -> float:
    """``alpha = min(1 - 1 / (iteration + 1), max_decay)``; ``iteration`` counts from 0."""
    return min(1.0 - 1.0 / (iteration + 1), max_decay)


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen deep copy of ``student`` in eval mode."""
    teacher = copy.deepcopy(student)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """``theta_t <- alpha * theta_t + (1 - alpha) * theta_s`` for parameters and floating
    point buffers (e.g. BatchNorm running statistics); integer buffers are copied."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
    for t, s in zip(teacher.buffers(), student.buffers()):
        if t.dtype.is_floating_point:
            t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
        else:
            t.copy_(s)
