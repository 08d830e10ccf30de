"""Entropy minimisation (Grandvalet & Bengio 2005) on nnU-Net's network.

``L_u`` = mean voxel-wise entropy of the student's softmax on the weak view of unlabeled
patches, weight ``unlabeled_loss_weight = 0.1`` (the usual setting of the medical SSL
baselines, e.g. SSL4MIS) ramped up over the first 10 % of training, so that a still random
network is not pushed into confident wrong predictions.

Exports the student (``export_teacher = False``): the method has no teacher; the base's EMA
copy is kept in the checkpoint but would turn the baseline into an EM + weight-averaging
hybrid if it were what ``nnUNetv2_predict`` loads.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from nnunetv2_sss.ssl.losses import entropy
from nnunetv2_sss.training.semi_supervised import first_output, nnUNetTrainerSemiSupervised


class nnUNetTrainerEntropyMin(nnUNetTrainerSemiSupervised):
    unlabeled_loss_weight = 0.1
    unlabeled_rampup_fraction = 0.1
    num_strong_views = 0
    export_teacher = False

    def unlabeled_loss(self, unlabeled: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        logits = first_output(self.network(unlabeled['data']))
        confident = torch.softmax(logits.detach().float(), 1).max(1).values >= self.confidence_threshold
        return entropy(logits), {'ssl_confident_share': float(confident.float().mean())}
