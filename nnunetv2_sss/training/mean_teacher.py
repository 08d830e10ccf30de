"""Mean Teacher (Tarvainen & Valpola 2017) on nnU-Net's network.

Student on a strong (intensity-perturbed) view, teacher on the weak view, consistency =
mean squared difference of the softmax outputs, weight ramped up over the first 10 % of
training (the usual sigmoid ramp-up).
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from nnunetv2_sss.ssl.losses import softmax_mse
from nnunetv2_sss.training.semi_supervised import first_output, nnUNetTrainerSemiSupervised


class nnUNetTrainerMeanTeacher(nnUNetTrainerSemiSupervised):
    ema_decay = 0.99
    unlabeled_rampup_fraction = 0.1
    num_strong_views = 1

    def unlabeled_loss(self, unlabeled: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        teacher_probabilities = self.teacher_probabilities(unlabeled['data'])
        student_logits = first_output(self.network(unlabeled['strong'][0]))
        confident = teacher_probabilities.max(1).values >= self.confidence_threshold
        return softmax_mse(student_logits, teacher_probabilities), \
            {'ssl_confident_share': float(confident.float().mean())}
