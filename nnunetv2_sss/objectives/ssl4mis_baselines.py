"""The SSL4MIS baselines' objectives (Mean Teacher, Entropy Minimisation, ICT, CPS), as the
scripts of github.com/HiLab-git/SSL4MIS ``code/train_*_2D.py`` compute them (README,
"Baseline settings (SSL4MIS)"; the weights and ramp-up are the trainers', see
``training/ssl4mis_baseline.py``).

- Mean Teacher (Tarvainen & Valpola 2017): student on the unlabeled patch as the loaders give
  it, EMA teacher on the same patch plus ``clamp(N(0, 0.1^2), -0.2, 0.2)`` noise (in units of the
  patch's intensity range: SSL4MIS's slices are min-max normalised); mean squared difference of
  the softmax outputs.
- Entropy minimisation (Grandvalet & Bengio 2005): mean over the labeled AND the unlabeled
  patches of the voxel-wise softmax entropy divided by ``log(C)`` (``entropy_num_classes``, by
  default the dataset's; SSL4MIS hard-codes ACDC's 4).
- ICT (Verma et al. 2019): the unlabeled batch split into halves ``u0``, ``u1``, one ``lambda ~
  Beta(0.2, 0.2)`` per pair; the student on the mix, the target the teacher's softmax of ``u0``
  and ``u1`` mixed with the same ``lambda``; mean squared difference.
- CPS (Chen et al. 2021): two networks, each trained on the other's hard pseudo-label (argmax)
  of the unlabeled patch, plus nnU-Net's loss on the labeled batch for both.
"""
from __future__ import annotations

from typing import Tuple

import torch

from nnunetv2_sss.objectives.base import Figures, Objective, first_output
from nnunetv2_sss.ssl.cross_pseudo import cross_pseudo_supervision_loss
from nnunetv2_sss.ssl.losses import softmax_mse
from nnunetv2_sss.ssl.mixup import mix_pairs, sample_mixup_factors, split_pairs
from nnunetv2_sss.ssl.ssl4mis import normalised_entropy, teacher_input_noise


class MeanTeacherObjective(Objective):
    def unlabeled_loss(self, unlabeled: dict, labeled_output=None) -> Tuple[torch.Tensor, Figures]:
        trainer = self.trainer
        inputs = unlabeled['data']
        noisy = teacher_input_noise(inputs, trainer.teacher_noise_std, trainer.teacher_noise_clip,
                                    trainer.teacher_noise_relative_to_range)
        teacher_probabilities = self.teacher_probabilities(noisy)
        student_logits = first_output(trainer.network(inputs))
        return softmax_mse(student_logits, teacher_probabilities), \
            {'ssl_confident_share': self.confident_share(teacher_probabilities)}


class EntropyMinObjective(Objective):
    def unlabeled_loss(self, unlabeled: dict, labeled_output=None) -> Tuple[torch.Tensor, Figures]:
        trainer = self.trainer
        probabilities = torch.softmax(first_output(trainer.network(unlabeled['data'])).float(), 1)
        num_classes = trainer.entropy_num_classes or probabilities.shape[1]
        entropies = [normalised_entropy(probabilities, num_classes).flatten()]
        if trainer.entropy_on_labeled:
            labeled = torch.softmax(first_output(labeled_output).float(), 1)
            entropies.append(normalised_entropy(labeled, num_classes).flatten())
        return torch.cat(entropies).mean(), {'ssl_confident_share': self.confident_share(probabilities.detach())}


class ICTObjective(Objective):
    def unlabeled_loss(self, unlabeled: dict, labeled_output=None) -> Tuple[torch.Tensor, Figures]:
        trainer = self.trainer
        u0, u1 = split_pairs(unlabeled['data'])
        mix_factors = sample_mixup_factors(trainer.mixup_rng, trainer.mixup_alpha, u0.shape[0])
        teacher_0, teacher_1 = split_pairs(self.teacher_probabilities(torch.cat([u0, u1])))
        student_logits = first_output(trainer.network(mix_pairs(u0, u1, mix_factors)))
        loss = softmax_mse(student_logits, mix_pairs(teacher_0, teacher_1, mix_factors))
        return loss, {'ssl_confident_share': self.confident_share(torch.cat([teacher_0, teacher_1]))}


class CPSObjective(Objective):
    """Network 1 is ``trainer.network``, network 2 ``trainer.network_b`` (both DDP-wrapped on
    several GPUs)."""
    figures = {'ssl_cps_agreement': 'networks agree (voxel share)'}

    def supervised_loss(self, data: torch.Tensor, target) -> Tuple[torch.Tensor, object, Figures]:
        loss_1, output, figures = super().supervised_loss(data, target)
        return loss_1 + self.trainer.loss(self.trainer.network_b(data), target), output, figures

    def unlabeled_loss(self, unlabeled: dict, labeled_output=None) -> Tuple[torch.Tensor, Figures]:
        logits_1 = first_output(self.trainer.network(unlabeled['data']))
        logits_2 = first_output(self.trainer.network_b(unlabeled['data']))
        loss = cross_pseudo_supervision_loss(logits_1, logits_2)
        with torch.no_grad():
            agreement = (logits_1.argmax(1) == logits_2.argmax(1)).float().mean()
        return loss, {'ssl_confident_share': self.confident_share(torch.softmax(logits_1.detach().float(), 1)),
                      'ssl_cps_agreement': float(agreement)}
