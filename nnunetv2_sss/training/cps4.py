"""``nnUNetTrainerCPS4``: stage 2 of CPS4 (METHOD.md section 2.2), class-prompt-driven Mean Teacher.

Needs the frozen stage-1 vision-text model of the same dataset, plans and fold
(``nnUNetv2_sss_pretrain_cps4``; the training stops at once naming that command if it is
missing). Per unlabeled batch: the stage-1 attention maps of the weak view, bilinearly
up-sampled, Otsu-thresholded per class and stacked, give ``y_text``; the EMA teacher's
probabilities ``p_t`` on the weak view and ``y_text`` give the enhanced soft target
``(p_t + onehot(y_text)) / 2`` (the paper's ``l_ce(y_s, y_t + y_text)`` read as a soft target:
as a hard label ``argmax(p_t + onehot(y_text))`` it would always be ``y_text``). The student on
the strong view is trained with

    L = L_sup + 1/2 [CE(y_s, y_text) + CE(y_s, (p_t + onehot(y_text)) / 2)]

(``L_sup`` = nnU-Net's loss), i.e. ``L_semi^enhance = (CE(y_s, p_t) + CE(y_s, y_text)) / 2``. No
ramp-up (the paper has none; ``unlabeled_rampup_fraction`` > 0 adds the base class's sigmoid
ramp-up over that share of the epochs). 2-D only; ``nnUNetv2_predict`` needs neither encoder
(the exported model is the teacher).
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from nnunetv2_sss.cps4.stage1_io import load_stage1, stage1_output_folder
from nnunetv2_sss.cps4.text_labels import attention_to_label_map
from nnunetv2_sss.errors import UserRuntimeError
from nnunetv2_sss.ssl.soft_targets import enhanced_soft_target, soft_cross_entropy
from nnunetv2_sss.training.semi_supervised import first_output, nnUNetTrainerSemiSupervised


class nnUNetTrainerCPS4(nnUNetTrainerSemiSupervised):
    ema_decay = 0.99
    unlabeled_loss_weight = 1.0
    unlabeled_rampup_fraction = 0.0   # the paper has no ramp-up; > 0 enables the base class's
    num_strong_views = 1
    export_teacher = True
    ssl_figures = {**nnUNetTrainerSemiSupervised.ssl_figures,
                   'ssl_text_teacher_agreement': 'text map = teacher argmax (voxel share)'}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if len(self.configuration_manager.patch_size) != 2:
            raise UserRuntimeError(f"{self.__class__.__name__} is 2-D only (CPS4's stage 1 works on slices); "
                                   f"train the '2d' configuration, not '{configuration}'.")
        self.text_model = None

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        folder = stage1_output_folder(self.plans_manager.dataset_name, self.plans_manager.plans_name, self.fold,
                                      self.configuration_name)
        self.text_model = load_stage1(folder, self.device, num_input_channels=self.num_input_channels,
                                      num_classes=self.label_manager.num_segmentation_heads)
        self.print_to_log_file(f"CPS4 stage-1 model: {folder}")
        super().on_train_start()

    @torch.no_grad()
    def text_labels(self, weak: torch.Tensor) -> torch.Tensor:
        """``y_text`` ``(B, H, W)`` of the weak view from the frozen stage-1 attention maps."""
        return attention_to_label_map(self.text_model(weak), weak.shape[2:]).to(weak.device)

    def unlabeled_loss(self, unlabeled: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        weak = unlabeled['data']
        teacher_probabilities = self.teacher_probabilities(weak)
        text = self.text_labels(weak)
        student = first_output(self.network(unlabeled['strong'][0])).float()
        loss_text = F.cross_entropy(student, text)
        loss_enhance = soft_cross_entropy(student, enhanced_soft_target(teacher_probabilities, text))
        confidence, teacher_label = teacher_probabilities.max(1)
        return 0.5 * (loss_text + loss_enhance), \
            {'ssl_confident_share': float((confidence >= self.confidence_threshold).float().mean()),
             'ssl_text_teacher_agreement': float((teacher_label == text).float().mean())}
