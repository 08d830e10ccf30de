"""Mean Teacher (Tarvainen & Valpola 2017) on nnU-Net's network, with the settings of SSL4MIS's
``code/train_mean_teacher_2D.py`` (the BHSD baseline numbers come from it; README, "Baseline
settings (SSL4MIS)"):

- student on the unlabeled patch as the loaders give it (nnU-Net's spatial augmentation, the
  "weak" view), EMA teacher (decay 0.99) on the same patch plus ``clamp(N(0, 0.1^2), -0.2, 0.2)``
  noise (in units of the patch's intensity range: SSL4MIS's slices are min-max normalised);
- consistency = mean squared difference of the softmax outputs (over batch, classes, voxels);
- weight ``0.2 * sigmoid_rampup`` over all of training (:mod:`ssl4mis_baseline`), and no
  unlabeled term during the first 1000 / 30000 of the iterations.

The teacher is exported (``export_teacher``, the plugin's default); SSL4MIS validates and saves
the student (``model``, lines 208-236).
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from nnunetv2_sss.ssl.losses import softmax_mse
from nnunetv2_sss.ssl.ssl4mis import SSL4MIS_MAX_ITERATIONS, teacher_input_noise
from nnunetv2_sss.training.semi_supervised import first_output, nnUNetTrainerSemiSupervised
from nnunetv2_sss.training.ssl4mis_baseline import SSL4MISSchedule


class nnUNetTrainerMeanTeacher(SSL4MISSchedule, nnUNetTrainerSemiSupervised):
    ema_decay = 0.99
    num_strong_views = 0
    consistency_start_fraction = 1000 / SSL4MIS_MAX_ITERATIONS
    teacher_noise_std = 0.1
    teacher_noise_clip = 0.2
    teacher_noise_relative_to_range = True

    def unlabeled_loss(self, unlabeled: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        inputs = unlabeled['data']
        noisy = teacher_input_noise(inputs, self.teacher_noise_std, self.teacher_noise_clip,
                                    self.teacher_noise_relative_to_range)
        teacher_probabilities = self.teacher_probabilities(noisy)
        student_logits = first_output(self.network(inputs))
        confident = teacher_probabilities.max(1).values >= self.confidence_threshold
        return softmax_mse(student_logits, teacher_probabilities), \
            {'ssl_confident_share': float(confident.float().mean())}
