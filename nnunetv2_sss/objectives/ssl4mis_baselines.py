"""The SSL4MIS baselines' objectives (Mean Teacher, Entropy Minimisation, ICT, CPS), as the
scripts of github.com/HiLab-git/SSL4MIS ``code/train_*_2D.py`` compute them (docs/trainers.md,
"Baseline settings (SSL4MIS)").

The unlabeled weight (:class:`SSL4MISObjective`): SSL4MIS trains 30000 iterations with
``L = 0.5 (CE + Dice) + w * L_u``, ``w = consistency * sigmoid_rampup(iter_num // 150, 200)``,
``consistency = 0.1``. Here the ramp-up covers the same share of training
(``unlabeled_rampup_fraction = 1``: 200 x 150 = 30000 of SSL4MIS's 30000 iterations) in the same
200 steps, counted in iterations of the nnU-Net run (``num_epochs x num_iterations_per_epoch``,
:func:`~nnunetv2_sss.ssl.ssl4mis.iteration_rampup`); ``unlabeled_loss_weight = 0.2`` because the
labeled loss is nnU-Net's ``CE + Dice``, twice SSL4MIS's ``0.5 (CE + Dice)``;
``consistency_start_fraction``: the unlabeled term is off for this share of the iterations (Mean
Teacher: 1000 of 30000, ``train_mean_teacher_2D.py`` lines 170-171).

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

from typing import Iterator, Tuple

import torch
import torch.nn.functional as F

from nnunetv2_sss.objectives.base import Figures, LossPart, Objective, TeacherObjective, first_output
from nnunetv2_sss.ssl.losses import softmax_mse
from nnunetv2_sss.ssl.mixup import mix_pairs, sample_mixup_factors, split_pairs
from nnunetv2_sss.ssl.ssl4mis import (SSL4MIS_MAX_ITERATIONS, SSL4MIS_RAMPUP_LENGTH, iteration_rampup,
                                      normalised_entropy, teacher_input_noise)


class SSL4MISObjective(Objective):
    """SSL4MIS's unlabeled weight on nnU-Net's schedule (module docstring)."""
    defaults = {'unlabeled_loss_weight': 0.2,            # 2 x SSL4MIS's consistency 0.1
                'unlabeled_rampup_fraction': 1.0,        # share of all training iterations
                'rampup_length': SSL4MIS_RAMPUP_LENGTH,  # steps of the ramp (SSL4MIS's consistency_rampup)
                'consistency_start_fraction': 0.0}       # weight 0 before this share of the iterations

    def unlabeled_weight(self) -> float:
        """``unlabeled_loss_weight * sigmoid_rampup(it // step, rampup_length)`` at iteration ``it``
        (``trainer.ssl_iteration``, iterations done so far), 0 before ``consistency_start_fraction``."""
        trainer = self.trainer
        total = int(trainer.num_epochs) * int(trainer.num_iterations_per_epoch)
        if trainer.ssl_iteration < self.consistency_start_fraction * total - 1e-9:
            return 0.0
        return self.unlabeled_loss_weight * iteration_rampup(trainer.ssl_iteration, total,
                                                             self.unlabeled_rampup_fraction, self.rampup_length)


class MeanTeacherObjective(SSL4MISObjective, TeacherObjective):
    """No unlabeled term for the first 1000 / 30000 of the iterations (SSL4MIS)."""
    defaults = {'ema_decay': 0.99, 'consistency_start_fraction': 1000 / SSL4MIS_MAX_ITERATIONS,
                'teacher_noise_std': 0.1, 'teacher_noise_clip': 0.2, 'teacher_noise_relative_to_range': True}

    def unlabeled_loss(self, unlabeled: dict, labeled_output=None) -> Tuple[torch.Tensor, Figures]:
        inputs = unlabeled['data']
        noisy = teacher_input_noise(inputs, self.teacher_noise_std, self.teacher_noise_clip,
                                    self.teacher_noise_relative_to_range)
        teacher_probabilities = self.teacher_probabilities(noisy)
        student_logits = first_output(self.trainer.network(inputs))
        return softmax_mse(student_logits, teacher_probabilities), \
            {'ssl_confident_share': self.confident_share(teacher_probabilities)}


class EntropyMinObjective(SSL4MISObjective):
    """No teacher: the student is exported. Loss parts: the labeled part carries the labeled patches'
    share of the entropy (their graph is the labeled one), the unlabeled part the rest; both are
    divided by the voxel count of the whole batch, so they sum to SSL4MIS's mean."""
    defaults = {'entropy_num_classes': None,  # None: the dataset's number of classes (SSL4MIS hard-codes 4)
                'entropy_on_labeled': True}   # SSL4MIS: entropy of the whole (labeled + unlabeled) batch

    def loss_parts(self, data: torch.Tensor, target, unlabeled: dict) -> Iterator[LossPart]:
        loss, output, figures = self.supervised_loss(data, target)
        labeled = torch.softmax(first_output(output).float(), 1)
        num_classes = self.entropy_num_classes or labeled.shape[1]
        inputs = unlabeled['data']
        voxels = inputs.shape[0] * inputs[0, 0].numel() + (labeled[:, 0].numel() if self.entropy_on_labeled else 0)
        labeled_share = normalised_entropy(labeled, num_classes).sum() / voxels if self.entropy_on_labeled else None
        yield LossPart(supervised=loss, unlabeled=labeled_share, figures=figures)
        probabilities = torch.softmax(first_output(self.trainer.network(inputs)).float(), 1)
        yield LossPart(unlabeled=normalised_entropy(probabilities, num_classes).sum() / voxels,
                       figures={'ssl_confident_share': self.confident_share(probabilities.detach())})

    def unlabeled_loss(self, unlabeled: dict, labeled_output=None) -> Tuple[torch.Tensor, Figures]:
        probabilities = torch.softmax(first_output(self.trainer.network(unlabeled['data'])).float(), 1)
        num_classes = self.entropy_num_classes or probabilities.shape[1]
        entropies = [normalised_entropy(probabilities, num_classes).flatten()]
        if self.entropy_on_labeled:
            labeled = torch.softmax(first_output(labeled_output).float(), 1)
            entropies.append(normalised_entropy(labeled, num_classes).flatten())
        return torch.cat(entropies).mean(), {'ssl_confident_share': self.confident_share(probabilities.detach())}


class ICTObjective(SSL4MISObjective, TeacherObjective):
    defaults = {'ema_decay': 0.99, 'min_unlabeled_batch_size': 2,  # mixup needs a pair
                'mixup_alpha': 0.2}
    random_generators = ('mixup_rng',)

    def unlabeled_loss(self, unlabeled: dict, labeled_output=None) -> Tuple[torch.Tensor, Figures]:
        u0, u1 = split_pairs(unlabeled['data'])
        mix_factors = sample_mixup_factors(self.mixup_rng, self.mixup_alpha, u0.shape[0])
        teacher_0, teacher_1 = split_pairs(self.teacher_probabilities(torch.cat([u0, u1])))
        student_logits = first_output(self.trainer.network(mix_pairs(u0, u1, mix_factors)))
        loss = softmax_mse(student_logits, mix_pairs(teacher_0, teacher_1, mix_factors))
        return loss, {'ssl_confident_share': self.confident_share(torch.cat([teacher_0, teacher_1]))}


class CPSObjective(SSL4MISObjective):
    """Network 1 is the student ``trainer.network``; network 2 (``network_b``, an extra trained module:
    in the optimiser as a second parameter group, checkpointed as ``network_b_weights``) is built
    like it under ``second_network_seed`` (derived from ``nnUNet_sss_seed`` when set). No teacher;
    network 1 is exported. Both are DDP-wrapped on several GPUs."""
    defaults = {'second_network_seed': 1234}
    figures = {'ssl_cps_agreement': 'networks agree (voxel share)'}

    def build_modules(self) -> None:
        from nnunetv2_sss.training.seeding import derived_seed
        trainer = self.trainer
        seed = trainer.sss_seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.second_network_seed if seed is None else derived_seed(seed, "second_network"))
            network = trainer.build_network_architecture(
                trainer.plans_manager, trainer.configuration_manager, trainer.num_input_channels,
                trainer.label_manager.num_segmentation_heads, trainer.enable_deep_supervision)
        self.trained_modules['network_b'] = network.to(trainer.device)

    @property
    def network_b(self):
        return self.trained_modules['network_b']

    def loss_parts(self, data: torch.Tensor, target, unlabeled: dict) -> Iterator[LossPart]:
        """Four parts, one network's graph each: the labeled loss of network 1, of network 2, then the two
        unlabeled parts (:meth:`unlabeled_parts`)."""
        loss, _, figures = self.supervised_loss(data, target)
        yield LossPart(supervised=loss, figures=figures)
        yield LossPart(supervised=self.trainer.loss(self.network_b(data), target))
        yield from self.unlabeled_parts(unlabeled)

    def unlabeled_parts(self, unlabeled: dict, labeled_output=None) -> Iterator[LossPart]:
        """``CE(f_1, argmax f_2)`` (network 2's pseudo-label from a forward without gradient), then
        ``CE(f_2, argmax f_1)``: SSL4MIS's two terms, one network's graph at a time."""
        inputs = unlabeled['data']
        with torch.no_grad():
            pseudo_label_2 = first_output(self.network_b(inputs)).argmax(1)
        logits_1 = first_output(self.trainer.network(inputs))
        pseudo_label_1 = logits_1.detach().argmax(1)
        yield LossPart(unlabeled=F.cross_entropy(logits_1.float(), pseudo_label_2),
                       figures={'ssl_confident_share': self.confident_share(torch.softmax(logits_1.detach().float(), 1)),
                                'ssl_cps_agreement': (pseudo_label_1 == pseudo_label_2).float().mean()})
        yield LossPart(unlabeled=F.cross_entropy(first_output(self.network_b(inputs)).float(), pseudo_label_1))
