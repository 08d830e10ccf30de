"""UniMatch V2 (Yang et al. 2025) weak-to-strong consistency.

Teacher (EMA) on the weak view gives pseudo-labels and confidences; two strong views, each
with its own CutMix box pasted from the batch reversed (pseudo-labels and confidences pasted
the same way); the student encodes both, the decoder inputs of the two views (the encoder
features; SSS: DFE's outputs, ``fuse_pair``) get complementary channel dropout on every level,
the decoder runs, and the student is trained with CE on voxels whose confidence reaches
``confidence_threshold``, summed and divided by all voxels (UniMatch V2):
``L_u = 1/2 [CE(p_1, y_1) + CE(p_2, y_2)]``. Options: ``cutmix_probability``,
``cutmix_area_range``, ``feature_dropout_probability``, ``confidence_threshold``; generator
``cutmix_rng``. Loss parts (``objectives/base.py``): the labeled part, then, where the views are
independent (no fusion module: nnU-Net's network, the SAM-2 U-Net), one part per view (view 1's
backward pass runs before view 2 is encoded, so one view's activations are alive at a time; both
views' complementary masks are drawn before), else (SSS's DFE couples the views) one part.

When the trainer's unlabeled batch is a 2-D slab shared by the ranks of a multi-GPU run
(:meth:`~nnunetv2_sss.training.semi_supervised.nnUNetTrainerSemiSupervised.unlabeled_share`),
pseudo-labels come from the whole slab and the student trains on this rank's share of it.
"""
from __future__ import annotations

from typing import Iterator, List, Tuple

import torch

from nnunetv2_sss.networks.passes import unwrap
from nnunetv2_sss.objectives.base import Figures, LossPart, TeacherObjective, first_output
from nnunetv2_sss.ssl.complementary_dropout import apply_channel_masks, draw_complementary_masks, dropped_decoder_inputs
from nnunetv2_sss.ssl.cutmix import cutmix_from_reversed_batch, random_box_mask
from nnunetv2_sss.ssl.losses import masked_cross_entropy


class UniMatchV2Objective(TeacherObjective):
    defaults = {'num_strong_views': 2, 'min_unlabeled_batch_size': 2,  # CutMix pastes from another patch
                'cutmix_probability': 0.5, 'cutmix_area_range': (0.02, 0.4), 'feature_dropout_probability': 0.5}
    random_generators = ('cutmix_rng',)

    def cutmix_boxes(self, batch_size: int, spatial_shape, device) -> torch.Tensor:
        """Bool ``(B, *spatial)`` on ``device``: one random box (or none, prob. 1 - p) per sample."""
        return torch.stack([random_box_mask(spatial_shape, self.cutmix_rng, self.cutmix_probability,
                                            self.cutmix_area_range, device=device) for _ in range(batch_size)])

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

    def views_are_independent(self) -> bool:
        """Whether the student's decoder inputs of one view do not depend on the other view's features
        (no fusion module such as SSS's DFE): then each view is a loss part of its own."""
        return getattr(unwrap(self.trainer.network), 'fusion', None) is None

    def strong_views(self, unlabeled: dict) -> Tuple[List[tuple], torch.Tensor, Figures]:
        """Per strong view ``(image, pseudo-label, valid)`` with its own CutMix box (this rank's share of
        the batch), the confidences and the teacher's figures."""
        pseudo_label, confidence, figures = self.pseudo_labels(unlabeled['data'])
        share = self.trainer.unlabeled_share()
        pseudo_label, confidence = pseudo_label[share], confidence[share]
        views = []
        for strong in unlabeled['strong']:
            boxes = self.cutmix_boxes(confidence.shape[0], confidence.shape[1:], confidence.device)
            views.append((cutmix_from_reversed_batch(strong[share], boxes),
                          cutmix_from_reversed_batch(pseudo_label, boxes),
                          cutmix_from_reversed_batch(confidence, boxes) >= self.confidence_threshold))
        figures['ssl_confident_share'] = (confidence >= self.confidence_threshold).float().mean()
        return views, confidence, figures

    def unlabeled_parts(self, unlabeled: dict, labeled_output=None) -> Iterator[LossPart]:
        """``L_u = 1/2 [CE(p_1, y_1) + CE(p_2, y_2)]``: one part per view where the views are independent
        and the trainer splits its backward pass (the complementary masks of both are drawn with view
        1's features), else one part (``split_backward = False``: both views encoded as one batch of
        ``2B``, faster where memory allows)."""
        network = self.trainer.network
        views, _, figures = self.strong_views(unlabeled)
        (image_1, label_1, valid_1), (image_2, label_2, valid_2) = views
        if not (self.views_are_independent() and self.trainer.split_backward):
            batch_size = image_1.shape[0]
            if self.trainer.split_backward:  # the encoder keeps the labeled batch's shape (one compiled graph)
                features_1, features_2 = network(image_1, pass_='encode'), network(image_2, pass_='encode')
            else:
                features = network(torch.cat([image_1, image_2], 0), pass_='encode')
                features_1, features_2 = [f[:batch_size] for f in features], [f[batch_size:] for f in features]
            inputs_1, inputs_2 = self.fuse_and_drop(features_1, features_2)
            logits = first_output(network([torch.cat(f, 0) for f in zip(inputs_1, inputs_2)], pass_='decode'))
            yield LossPart(unlabeled=0.5 * (masked_cross_entropy(logits[:batch_size], label_1, valid_1) +
                                            masked_cross_entropy(logits[batch_size:], label_2, valid_2)),
                           figures=figures)
            return
        features_1 = network(image_1, pass_='encode')
        masks_1, masks_2 = draw_complementary_masks(image_1.shape[0], [f.shape[1] for f in features_1],
                                                    self.feature_dropout_probability, device=image_1.device)
        logits_1 = first_output(network(apply_channel_masks(features_1, masks_1), pass_='decode'))
        yield LossPart(unlabeled=0.5 * masked_cross_entropy(logits_1, label_1, valid_1), figures=figures)
        features_2 = network(image_2, pass_='encode')
        logits_2 = first_output(network(apply_channel_masks(features_2, masks_2), pass_='decode'))
        yield LossPart(unlabeled=0.5 * masked_cross_entropy(logits_2, label_2, valid_2))
