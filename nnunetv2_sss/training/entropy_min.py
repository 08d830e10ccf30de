"""Entropy minimisation (Grandvalet & Bengio 2005) on nnU-Net's network, as SSL4MIS's
``code/train_entropy_minimization_2D.py`` does it (README, "Baseline settings (SSL4MIS)"):

``L_u`` = mean over the labeled AND the unlabeled patches of the voxel-wise entropy of the
softmax, divided by ``log(C)`` (``losses.entropy_loss(outputs_soft, C=4)`` on the whole batch,
line 149); weight ``0.2 * sigmoid_rampup`` over all of training (:mod:`ssl4mis_baseline`).
``C`` is ``entropy_num_classes``, by default the dataset's number of classes (SSL4MIS hard-codes
4, ACDC's number; set ``entropy_num_classes = 4`` for the literal script).

Exports the student (``export_teacher = False``, as SSL4MIS, which has no teacher here); the
base's EMA copy is kept in the checkpoint only.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from nnunetv2_sss.ssl.ssl4mis import normalised_entropy
from nnunetv2_sss.training.semi_supervised import first_output, nnUNetTrainerSemiSupervised
from nnunetv2_sss.training.ssl4mis_baseline import SSL4MISSchedule


class nnUNetTrainerEntropyMin(SSL4MISSchedule, nnUNetTrainerSemiSupervised):
    num_strong_views = 0
    export_teacher = False
    entropy_num_classes: Optional[int] = None   # None: the dataset's number of classes
    entropy_on_labeled = True                   # SSL4MIS: entropy of the whole (labeled + unlabeled) batch

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.labeled_logits = None

    def supervised_loss(self, data: torch.Tensor, target) -> torch.Tensor:
        output = self.network(data)
        self.labeled_logits = first_output(output) if self.entropy_on_labeled else None
        return self.loss(output, target)

    def unlabeled_loss(self, unlabeled: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        logits = first_output(self.network(unlabeled['data']))
        probabilities = torch.softmax(logits.float(), 1)
        num_classes = self.entropy_num_classes or probabilities.shape[1]
        entropies = [normalised_entropy(probabilities, num_classes).flatten()]
        if self.labeled_logits is not None:
            entropies.append(normalised_entropy(torch.softmax(self.labeled_logits.float(), 1), num_classes).flatten())
            self.labeled_logits = None
        confident = probabilities.detach().max(1).values >= self.confidence_threshold
        return torch.cat(entropies).mean(), {'ssl_confident_share': float(confident.float().mean())}
