"""FixMatch (Sohn et al. 2020) as github.com/kekmodel/FixMatch-pytorch ``train.py`` (commit 037b446)
computes it, per voxel: the student's own softmax on the weak view gives the pseudo-label and its
confidence (no gradient); the student on the strong view is trained with CE against the
pseudo-label on the voxels whose confidence reaches ``confidence_threshold`` (0.95), averaged over
all voxels (``(CE * mask).mean()``); ``L = L_l + lambda_u L_u``, ``lambda_u = 1``. No teacher: the
student is exported. The strong view is the unlabeled loader's (intensity transforms of the weak
view, ``ssl/views.py``), not RandAugment + Cutout.
"""
from __future__ import annotations

from typing import Tuple

import torch

from nnunetv2_sss.objectives.base import Figures, Objective, first_output
from nnunetv2_sss.ssl.losses import masked_cross_entropy


class FixMatchObjective(Objective):
    defaults = {'num_strong_views': 1}

    def unlabeled_loss(self, unlabeled: dict, labeled_output=None) -> Tuple[torch.Tensor, Figures]:
        network = self.trainer.network
        with torch.no_grad():
            weak = torch.softmax(first_output(network(unlabeled['data'])).float(), 1)
        confidence, pseudo_label = weak.max(1)
        valid = confidence >= self.confidence_threshold
        strong_logits = first_output(network(unlabeled['strong'][0]))
        return masked_cross_entropy(strong_logits, pseudo_label, valid), \
            {'ssl_confident_share': valid.float().mean()}
