"""UniMatch V2 (Yang et al. 2025) weak-to-strong consistency on nnU-Net's network.

Teacher (EMA) on the weak view gives pseudo-labels and confidences; two strong views,
each with its own CutMix box pasted from the batch reversed (pseudo-labels and
confidences pasted the same way); the student encodes both, the decoder inputs of the two
views (the encoder features; SSS: DFE's outputs) get complementary channel dropout on every
level, the decoder runs, and the student is trained with CE on voxels whose confidence
reaches ``confidence_threshold``, summed and divided by all voxels (UniMatch V2):
``L_u = 1/2 [CE(p_1, y_1) + CE(p_2, y_2)]``.
This is the SSS objective without SAM-2, DFE and PCSW (METHOD.md section 1.1).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import torch

from nnunetv2_sss.ssl.complementary_dropout import dropped_decoder_inputs
from nnunetv2_sss.ssl.cutmix import cutmix_from_reversed_batch, random_box_mask
from nnunetv2_sss.ssl.losses import masked_cross_entropy
from nnunetv2_sss.training.base import unwrap
from nnunetv2_sss.training.semi_supervised import first_output, nnUNetTrainerSemiSupervised


class nnUNetTrainerUniMatchV2(nnUNetTrainerSemiSupervised):
    num_strong_views = 2
    min_unlabeled_batch_size = 2  # CutMix pastes from another patch of the batch
    cutmix_probability = 0.5
    cutmix_area_range = (0.02, 0.4)
    feature_dropout_probability = 0.5

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.cutmix_rng = np.random.default_rng()

    def cutmix_boxes(self, batch_size: int, spatial_shape) -> torch.Tensor:
        """Bool ``(B, *spatial)``: one random box (or none, prob. 1 - p) per sample."""
        return torch.stack([random_box_mask(spatial_shape, self.cutmix_rng, self.cutmix_probability,
                                            self.cutmix_area_range) for _ in range(batch_size)])

    def fuse_views(self, features_1: List[torch.Tensor], features_2: List[torch.Tensor]
                   ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Decoder inputs of the two strong views from their undropped encoder features (here the
        features themselves; SSS fuses them with DFE)."""
        return features_1, features_2

    def decode_two_views(self, features_1: List[torch.Tensor], features_2: List[torch.Tensor]
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Full-resolution logits of both views from their (dropped-out) decoder inputs."""
        batch_size = features_1[0].shape[0]
        output = first_output(unwrap(self.network).decoder([torch.cat(f, 0) for f in zip(features_1, features_2)]))
        return output[:batch_size], output[batch_size:]

    def pseudo_labels(self, weak: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Teacher's ``(pseudo_label, confidence)``, each ``(B, *spatial)``, on the weak view."""
        confidence, pseudo_label = self.teacher_probabilities(weak).max(1)
        return pseudo_label, confidence

    def unlabeled_loss(self, unlabeled: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        pseudo_label, confidence = self.pseudo_labels(unlabeled['data'])
        batch_size, spatial_shape = confidence.shape[0], confidence.shape[1:]

        views, labels, valid = [], [], []
        for strong in unlabeled['strong']:
            boxes = self.cutmix_boxes(batch_size, spatial_shape)
            views.append(cutmix_from_reversed_batch(strong, boxes))
            labels.append(cutmix_from_reversed_batch(pseudo_label, boxes))
            valid.append(cutmix_from_reversed_batch(confidence, boxes) >= self.confidence_threshold)

        features = unwrap(self.network).encoder(torch.cat(views, 0))
        inputs_1, inputs_2 = dropped_decoder_inputs(self.fuse_views, [f[:batch_size] for f in features],
                                                    [f[batch_size:] for f in features],
                                                    self.feature_dropout_probability)
        logits_1, logits_2 = self.decode_two_views(inputs_1, inputs_2)
        loss = 0.5 * (masked_cross_entropy(logits_1, labels[0], valid[0]) +
                      masked_cross_entropy(logits_2, labels[1], valid[1]))
        return loss, {'ssl_confident_share': float((confidence >= self.confidence_threshold).float().mean())}
