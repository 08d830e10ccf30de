"""CPS4 stage 2 (METHOD.md section 2.2): class-prompt-driven Mean Teacher.

Per unlabeled batch: the frozen stage-1 attention maps of the weak view, bilinearly up-sampled,
Otsu-thresholded per class and stacked, give ``y_text`` (``trainer.text_labels``); the EMA
teacher's probabilities ``p_t`` on the weak view and ``y_text`` give the enhanced soft target
``(p_t + onehot(y_text)) / 2`` (the paper's ``l_ce(y_s, y_t + y_text)`` read as a soft target: as a
hard label ``argmax(p_t + onehot(y_text))`` it would always be ``y_text``). The student on the
strong view is trained with ``1/2 [CE(y_s, y_text) + CE(y_s, (p_t + onehot(y_text)) / 2)]``, i.e.
``L_semi^enhance = (CE(y_s, p_t) + CE(y_s, y_text)) / 2``.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from nnunetv2_sss.objectives.base import Figures, Objective, first_output
from nnunetv2_sss.ssl.soft_targets import enhanced_soft_target, soft_cross_entropy


class CPS4Objective(Objective):
    figures = {'ssl_text_teacher_agreement': 'text map = teacher argmax (voxel share)'}

    def unlabeled_loss(self, unlabeled: dict, labeled_output=None) -> Tuple[torch.Tensor, Figures]:
        trainer = self.trainer
        weak = unlabeled['data']
        teacher_probabilities = self.teacher_probabilities(weak)
        text = trainer.text_labels(weak)
        student = first_output(trainer.network(unlabeled['strong'][0])).float()
        loss_text = F.cross_entropy(student, text)
        loss_enhance = soft_cross_entropy(student, enhanced_soft_target(teacher_probabilities, text))
        confidence, teacher_label = teacher_probabilities.max(1)
        return 0.5 * (loss_text + loss_enhance), \
            {'ssl_confident_share': float((confidence >= trainer.confidence_threshold).float().mean()),
             'ssl_text_teacher_agreement': float((teacher_label == text).float().mean())}
