"""CPS4 stage 2 (docs/method.md section 2.2): class-prompt-driven Mean Teacher.

Per unlabeled batch: the frozen stage-1 attention maps of the weak view, bilinearly up-sampled,
Otsu-thresholded per class and stacked, give ``y_text`` (``trainer.text_labels``); the EMA
teacher's probabilities ``p_t`` on the weak view and ``y_text`` give the enhanced soft target
``(p_t + onehot(y_text)) / 2`` (the paper's ``l_ce(y_s, y_t + y_text)`` read as a soft target: as a
hard label ``argmax(p_t + onehot(y_text))`` it would always be ``y_text``). The student on the
strong view is trained with ``1/2 [CE(y_s, y_text) + CE(y_s, (p_t + onehot(y_text)) / 2)]``, i.e.
``L_semi^enhance = (CE(y_s, p_t) + CE(y_s, y_text)) / 2``.

The frozen stage-1 vision-text model of the same dataset, plans and fold
(``nnUNetv2_sss_pretrain_cps4``) is loaded when training starts; without it the training stops at
once naming that command. 2-D only (stage 1 works on slices). Weight 1, no ramp-up (the paper has
none; ``unlabeled_rampup_fraction`` > 0 adds the sigmoid ramp-up). ``nnUNetv2_predict`` needs
neither encoder (the exported model is the teacher).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from nnunetv2_sss.errors import UserRuntimeError
from nnunetv2_sss.objectives.base import Figures, TeacherObjective, first_output
from nnunetv2_sss.ssl.soft_targets import enhanced_soft_target, soft_cross_entropy


class CPS4Objective(TeacherObjective):
    defaults = {'ema_decay': 0.99, 'num_strong_views': 1}
    figures = {'ssl_text_teacher_agreement': 'text map = teacher argmax (voxel share)'}

    def __init__(self, trainer, **options):
        super().__init__(trainer, **options)
        self.text_model = None

    def check_configuration(self) -> None:
        trainer = self.trainer
        if len(trainer.configuration_manager.patch_size) != 2:
            raise UserRuntimeError(f"{type(trainer).__name__} is 2-D only (CPS4's stage 1 works on slices); "
                                   f"train the '2d' configuration, not '{trainer.configuration_name}'.")

    def before_training(self) -> None:
        """Load the frozen stage-1 model (a user error naming ``nnUNetv2_sss_pretrain_cps4`` if missing)."""
        from nnunetv2_sss.cps4.stage1_io import load_stage1, stage1_output_folder
        trainer = self.trainer
        folder = stage1_output_folder(trainer.plans_manager.dataset_name, trainer.plans_manager.plans_name,
                                      trainer.fold, trainer.configuration_name)
        self.text_model = load_stage1(folder, trainer.device, num_input_channels=trainer.num_input_channels,
                                      num_classes=trainer.label_manager.num_segmentation_heads)
        trainer.print_to_log_file(f"CPS4 stage-1 model: {folder}")

    @torch.no_grad()
    def text_labels(self, weak: torch.Tensor) -> torch.Tensor:
        """``y_text`` ``(B, H, W)`` of the weak view from the frozen stage-1 attention maps."""
        from nnunetv2_sss.cps4.text_labels import attention_to_label_map
        return attention_to_label_map(self.text_model(weak), weak.shape[2:]).to(weak.device)

    def unlabeled_loss(self, unlabeled: dict, labeled_output=None) -> Tuple[torch.Tensor, Figures]:
        weak = unlabeled['data']
        teacher_probabilities = self.teacher_probabilities(weak)
        text = self.text_labels(weak)
        student = first_output(self.trainer.network(unlabeled['strong'][0])).float()
        loss_text = F.cross_entropy(student, text)
        loss_enhance = soft_cross_entropy(student, enhanced_soft_target(teacher_probabilities, text))
        confidence, teacher_label = teacher_probabilities.max(1)
        return 0.5 * (loss_text + loss_enhance), \
            {'ssl_confident_share': (confidence >= self.confidence_threshold).float().mean(),
             'ssl_text_teacher_agreement': (teacher_label == text).float().mean()}
