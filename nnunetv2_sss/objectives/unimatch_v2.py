"""UniMatch V2 (Yang et al. 2025) weak-to-strong consistency.

Teacher (EMA) on the weak view gives pseudo-labels and confidences; two strong views, each
with its own CutMix box pasted from the batch reversed (pseudo-labels and confidences pasted
the same way); the student encodes both, the decoder inputs of the two views (the encoder
features; SSS: DFE's outputs, ``fuse_pair``) get complementary channel dropout on every level,
the decoder runs, and the student is trained with CE on voxels whose confidence reaches
``confidence_threshold``, summed and divided by all voxels (UniMatch V2):
``L_u = 1/2 [CE(p_1, y_1) + CE(p_2, y_2)]``. Options: ``cutmix_probability``,
``cutmix_area_range``, ``feature_dropout_probability``, ``confidence_threshold``; generator
``cutmix_rng``.

When the trainer's unlabeled batch is a 2-D slab shared by the ranks of a multi-GPU run
(:meth:`~nnunetv2_sss.training.semi_supervised.nnUNetTrainerSemiSupervised.unlabeled_share`),
pseudo-labels come from the whole slab and the student trains on this rank's share of it.
"""
from __future__ import annotations

from typing import Tuple

import torch

from nnunetv2_sss.objectives.base import Figures, TeacherObjective, first_output
from nnunetv2_sss.ssl.complementary_dropout import dropped_decoder_inputs
from nnunetv2_sss.ssl.cutmix import cutmix_from_reversed_batch, random_box_mask
from nnunetv2_sss.ssl.losses import masked_cross_entropy


class UniMatchV2Objective(TeacherObjective):
    defaults = {'num_strong_views': 2, 'min_unlabeled_batch_size': 2,  # CutMix pastes from another patch
                'cutmix_probability': 0.5, 'cutmix_area_range': (0.02, 0.4), 'feature_dropout_probability': 0.5}
    random_generators = ('cutmix_rng',)

    def cutmix_boxes(self, batch_size: int, spatial_shape) -> torch.Tensor:
        """Bool ``(B, *spatial)``: one random box (or none, prob. 1 - p) per sample."""
        return torch.stack([random_box_mask(spatial_shape, self.cutmix_rng, self.cutmix_probability,
                                            self.cutmix_area_range) for _ in range(batch_size)])

    @torch.no_grad()
    def pseudo_labels(self, weak: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, Figures]:
        """Teacher's ``(pseudo_label, confidence)``, each ``(B, *spatial)``, on the weak view, and figures."""
        confidence, pseudo_label = self.teacher_probabilities(weak).max(1)
        return pseudo_label, confidence, {}

    def fuse_and_drop(self, features_1, features_2):
        """Decoder inputs of the two views: ``fuse_pair`` on the undropped features, then
        complementary dropout."""
        network = self.trainer.network
        return dropped_decoder_inputs(lambda a, b: network(a, b, pass_='fuse_pair'), features_1, features_2,
                                      self.feature_dropout_probability)

    def unlabeled_loss(self, unlabeled: dict, labeled_output=None) -> Tuple[torch.Tensor, Figures]:
        trainer = self.trainer
        pseudo_label, confidence, figures = self.pseudo_labels(unlabeled['data'])
        share = trainer.unlabeled_share()
        pseudo_label, confidence = pseudo_label[share], confidence[share]
        batch_size, spatial_shape = confidence.shape[0], confidence.shape[1:]

        views, labels, valid = [], [], []
        for strong in unlabeled['strong']:
            boxes = self.cutmix_boxes(batch_size, spatial_shape)
            views.append(cutmix_from_reversed_batch(strong[share], boxes))
            labels.append(cutmix_from_reversed_batch(pseudo_label, boxes))
            valid.append(cutmix_from_reversed_batch(confidence, boxes) >= self.confidence_threshold)

        features = trainer.network(torch.cat(views, 0), pass_='encode')
        inputs_1, inputs_2 = self.fuse_and_drop([f[:batch_size] for f in features], [f[batch_size:] for f in features])
        logits = first_output(trainer.network([torch.cat(f, 0) for f in zip(inputs_1, inputs_2)], pass_='decode'))
        loss = 0.5 * (masked_cross_entropy(logits[:batch_size], labels[0], valid[0]) +
                      masked_cross_entropy(logits[batch_size:], labels[1], valid[1]))
        figures['ssl_confident_share'] = float((confidence >= self.confidence_threshold).float().mean())
        return loss, figures
