"""Interpolation Consistency Training (Verma et al., IJCAI 2019) on nnU-Net's network, as SSL4MIS's
``code/train_interpolation_consistency_training_2D.py`` does it (README, "Baseline settings
(SSL4MIS)"):

- the unlabeled batch is split into halves ``u0 = u[:n]``, ``u1 = u[n:2n]``, ``n = B // 2``;
  one ``lambda ~ Beta(0.2, 0.2)`` per pair; the student sees ``u0 (1 - lambda) + u1 lambda``;
- the EMA teacher (decay 0.99) predicts ``u0`` and ``u1`` unmixed; the target is their softmax
  mixed with the same ``lambda``; ``L_u`` = mean squared difference of the student's softmax
  and that target;
- weight ``0.2 * sigmoid_rampup`` over all of training (:mod:`ssl4mis_baseline`).

The teacher is exported (the plugin's default); SSL4MIS validates and saves the student.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch

from nnunetv2_sss.ssl.losses import softmax_mse
from nnunetv2_sss.ssl.mixup import mix_pairs, sample_mixup_factors, split_pairs
from nnunetv2_sss.training.semi_supervised import first_output, nnUNetTrainerSemiSupervised
from nnunetv2_sss.training.ssl4mis_baseline import SSL4MISSchedule


class nnUNetTrainerICT(SSL4MISSchedule, nnUNetTrainerSemiSupervised):
    ema_decay = 0.99
    num_strong_views = 0
    min_unlabeled_batch_size = 2  # mixup needs a pair
    mixup_alpha = 0.2

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mixup_rng = np.random.default_rng()

    def unlabeled_loss(self, unlabeled: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        u0, u1 = split_pairs(unlabeled['data'])
        mix_factors = sample_mixup_factors(self.mixup_rng, self.mixup_alpha, u0.shape[0])
        teacher_0, teacher_1 = split_pairs(self.teacher_probabilities(torch.cat([u0, u1])))
        student_logits = first_output(self.network(mix_pairs(u0, u1, mix_factors)))
        loss = softmax_mse(student_logits, mix_pairs(teacher_0, teacher_1, mix_factors))
        confident = torch.cat([teacher_0, teacher_1]).max(1).values >= self.confidence_threshold
        return loss, {'ssl_confident_share': float(confident.float().mean())}
