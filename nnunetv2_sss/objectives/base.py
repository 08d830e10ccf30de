"""``Objective``: a semi-supervised method's losses for one training step.

An objective is built by the trainer (``objective = MeanTeacherObjective`` on the trainer class)
and holds it: the student ``trainer.network`` (wrapped in DDP when training on several GPUs;
every student computation is a call of it, :mod:`nnunetv2_sss.networks.passes`), the EMA
``trainer.teacher``, nnU-Net's loss ``trainer.loss``, the label manager, the trainer's random
generators and its settings (class attributes such as ``confidence_threshold``). It returns
losses and figures; the trainer does the optimisation, the EMA update and the logging.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

Figures = Dict[str, float]


def first_output(output):
    """Full-resolution logits of a network output (deep supervision returns a list)."""
    return output[0] if isinstance(output, (list, tuple)) else output


class Objective:
    # logger key -> legend of the figures this objective adds to the trainer's
    figures: Dict[str, str] = {}

    def __init__(self, trainer):
        self.trainer = trainer

    def supervised_loss(self, data: torch.Tensor, target) -> Tuple[torch.Tensor, object, Figures]:
        """nnU-Net's own loss (Dice + CE, deep supervision) on the labeled batch ``data``
        ``(B, C, *spatial)``; returns ``(loss, network output, figures)``."""
        output = self.trainer.network(data)
        return self.trainer.loss(output, target), output, {}

    def unlabeled_loss(self, unlabeled: dict, labeled_output=None) -> Tuple[torch.Tensor, Figures]:
        """The method's loss on one unlabeled batch (already on the device: ``data`` = weak view
        ``(B, C, *spatial)``, ``strong`` = list of strong views) and its figures, at least
        ``ssl_confident_share``. ``labeled_output``: the student's output on the labeled batch."""
        raise NotImplementedError

    @torch.no_grad()
    def teacher_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher's softmax ``(B, K, *spatial)`` on ``x`` (full resolution output)."""
        return torch.softmax(first_output(self.trainer.teacher(x)).float(), 1)

    def confident_share(self, probabilities: torch.Tensor) -> float:
        """Share of voxels whose top probability reaches the trainer's ``confidence_threshold``."""
        return float((probabilities.max(1).values >= self.trainer.confidence_threshold).float().mean())
