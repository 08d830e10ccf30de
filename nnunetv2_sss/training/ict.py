"""Interpolation Consistency Training (Verma et al., IJCAI 2019) on nnU-Net's network.

Unlabeled weak views ``u`` are mixed with a random permutation of the batch,
``lambda ~ Beta(mixup_alpha, mixup_alpha)`` (one per batch); the EMA teacher predicts the
unmixed ``u`` and its probabilities are mixed with the same ``lambda`` and partners;
``L_u`` = softmax MSE between the student on the mixed input and the mixed teacher
probabilities, weight ramped up over the first 10 % of training (as Mean Teacher here).
The EMA teacher is part of the method and is exported, as for Mean Teacher.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch

from nnunetv2_sss.ssl.losses import softmax_mse
from nnunetv2_sss.ssl.mixup import mix_with_partners, sample_mixup_coefficient
from nnunetv2_sss.training.semi_supervised import first_output, nnUNetTrainerSemiSupervised


class nnUNetTrainerICT(nnUNetTrainerSemiSupervised):
    ema_decay = 0.99
    unlabeled_rampup_fraction = 0.1
    num_strong_views = 0
    min_unlabeled_batch_size = 2  # mixup needs a partner patch
    mixup_alpha = 1.0

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mixup_rng = np.random.default_rng()

    def unlabeled_loss(self, unlabeled: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        inputs = unlabeled['data']
        teacher_probabilities = self.teacher_probabilities(inputs)
        mix_coefficient = sample_mixup_coefficient(self.mixup_rng, self.mixup_alpha)
        partners = torch.as_tensor(self.mixup_rng.permutation(inputs.shape[0]), device=inputs.device)
        student_logits = first_output(self.network(mix_with_partners(inputs, partners, mix_coefficient)))
        loss = softmax_mse(student_logits, mix_with_partners(teacher_probabilities, partners, mix_coefficient))
        confident = teacher_probabilities.max(1).values >= self.confidence_threshold
        return loss, {'ssl_confident_share': float(confident.float().mean())}
