"""``nnUNetTrainerSSS``: Semi-Supervised SAM-2 (METHOD.md section 1) and its ablations.

UniMatch V2's objective (``nnUNetTrainerUniMatchV2``) on the SAM-2 network
(``nnUNetTrainerSAM2``: encoder weights, AdamW, warm-up + cosine), plus

- DFE (``use_dfe``): the two strong views' SAM-2 features fused by
  :class:`~nnunetv2_sss.dfe.DiscriminativeFeatureEnhancement` before the decoder; one view
  (labeled patches, teacher, prediction) goes through ``DFE(F, F)``;
- PCSW (``use_pcsw``): SAM-2's prompt encoder + mask decoder. On labeled slices it learns
  from ground-truth prompts (box + deepest point of a class's largest component, jittered;
  BCE + soft Dice against that component, weight ``prompt_loss_weight``). On unlabeled
  patches PCSW (:mod:`nnunetv2_sss.pcsw`) picks slice windows of the teacher's argmax; the
  teacher's prompt head decodes a mask per prompt and the mask replaces the pseudo-label of
  that class on that slice (voxels of the class outside the mask become background); the
  confidence mask stays the teacher's. The replacement starts after the first
  ``pcsw_warmup_fraction`` of the epochs, while the prompt head learns from labeled slices
  (with random SAM-2 weights an untrained head would rewrite large parts of the
  pseudo-labels); PCSW telemetry is logged from the start.

In 2-D configurations the unlabeled batch is a slab of consecutive slices of one case, so
PCSW has a slice axis; in 3-D each patch is a volume sliced along the SAM-2 slice axis.
Telemetry per epoch (log and progress.png): PCSW acceptance rate (share of unlabeled
volumes with at least one valid window), prompts per volume, share of pseudo-label
voxels changed by the prompt head, prompt-head loss on labeled slices.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from nnunetv2_sss import settings
from nnunetv2_sss.ground_truth_prompts import ground_truth_prompts
from nnunetv2_sss.networks.prompt_head import load_prompt_head_weights
from nnunetv2_sss.networks.sam2_config import SAM2NetworkSpec
from nnunetv2_sss.networks.sam2_unet import configuration_layout
from nnunetv2_sss.networks.sss_network import SSSNetwork, prompt_slice_size
from nnunetv2_sss.pcsw import DEFAULT_TAU, SlicePrompt, pcsw_prompts
from nnunetv2_sss.training.base import unwrap
from nnunetv2_sss.training.sam2_trainer import nnUNetTrainerSAM2
from nnunetv2_sss.training.semi_supervised import first_output
from nnunetv2_sss.training.unimatch_v2 import nnUNetTrainerUniMatchV2


def prompt_tensors(prompts: List[SlicePrompt], rows: List[int], device) -> Tuple[torch.Tensor, ...]:
    """``(slice_row, boxes xyxy, points xy)`` tensors of prompts; ``rows[i]`` = feature row of prompt i."""
    boxes = torch.tensor([[p.box[1], p.box[0], p.box[3], p.box[2]] for p in prompts], dtype=torch.float32)
    points = torch.tensor([[p.positive_point[1], p.positive_point[0]] for p in prompts], dtype=torch.float32)
    return torch.tensor(rows, dtype=torch.long, device=device), boxes.to(device), points.to(device)


def mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice of mask logits ``(P, H, W)`` against bool targets ``(P, H, W)``."""
    target = target.float()
    probabilities = torch.sigmoid(logits.float())
    dice = 1 - (2 * (probabilities * target).sum((1, 2)) + 1) / (probabilities.sum((1, 2)) + target.sum((1, 2)) + 1)
    return F.binary_cross_entropy_with_logits(logits.float(), target) + dice.mean()


class nnUNetTrainerSSS(nnUNetTrainerUniMatchV2, nnUNetTrainerSAM2):
    use_dfe = True
    use_pcsw = True
    pcsw_tau = DEFAULT_TAU
    pcsw_warmup_fraction = 0.1
    prompt_loss_weight = 1.0
    max_prompts_per_step = 16  # ground-truth prompts per iteration for the prompt head
    ssl_figures = {**nnUNetTrainerUniMatchV2.ssl_figures, 'ssl_pcsw_acceptance': 'PCSW acceptance rate',
                   'ssl_prompts_per_volume': 'prompts per volume / 10', 'ssl_pseudo_label_changed':
                       'pseudo-label voxels changed', 'ssl_prompt_loss': 'prompt head loss'}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.unlabeled_slabs_in_2d = self.use_pcsw
        self.prompt_rng = np.random.default_rng()

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        spec = SAM2NetworkSpec.from_configuration(configuration_manager.configuration)
        conv_dim, slice_axis = configuration_layout(configuration_manager)
        return SSSNetwork(spec.image_encoder, num_input_channels, num_output_channels, conv_dim, slice_axis,
                          spec.encoder_input_size, enable_deep_supervision, cls.use_dfe,
                          prompt_slice_size(configuration_manager) if cls.use_pcsw else None)

    def load_sam2_weights(self, checkpoint: str) -> None:
        super().load_sam2_weights(checkpoint)
        head = unwrap(self.network).prompt_head
        if head is not None and checkpoint != settings.RANDOM_WEIGHTS:
            missing, unexpected = load_prompt_head_weights(head, checkpoint)
            self.print_to_log_file(f"SAM-2 prompt head from {checkpoint}: missing keys {missing or 'none'}, "
                                   f"unexpected keys {unexpected or 'none'}")

    # ---- views -----------------------------------------------------------------------------
    def decode_two_views(self, features_1, features_2):
        network = unwrap(self.network)
        fused_1, fused_2 = network.fuse_pair(features_1, features_2)
        return super().decode_two_views(fused_1, fused_2)

    # ---- prompt head on labeled slices ---------------------------------------------------------
    def label_slices(self, target) -> np.ndarray:
        """Full-resolution labels as slices ``(B * S, H, W)`` in the encoder's slice order."""
        labels = (target[0] if isinstance(target, list) else target)[:, 0]
        network = unwrap(self.network)
        return network.encoder.sam2.to_slices(labels[:, None])[:, 0].cpu().numpy()

    def supervised_loss(self, data: torch.Tensor, target) -> torch.Tensor:
        network = unwrap(self.network)
        features = network.encoder(data)
        loss = self.loss(network.decoder(network.fuse(features)), target)
        if network.prompt_head is None:
            return loss
        prompts, masks = ground_truth_prompts(self.label_slices(target), self.label_manager.foreground_labels,
                                              self.max_prompts_per_step, self.prompt_rng)
        if not prompts:
            self.step_figures['ssl_prompt_loss'] = float('nan')
            return loss
        rows, boxes, points = prompt_tensors(prompts, [p.slice_index for p in prompts], data.device)
        logits = network.prompt_head(network.prompt_levels(features), rows, boxes, points)
        prompt_loss = mask_loss(logits, torch.from_numpy(masks).to(data.device))
        self.step_figures['ssl_prompt_loss'] = float(prompt_loss.detach())
        return loss + self.prompt_loss_weight * prompt_loss

    # ---- PCSW refinement of pseudo-labels ------------------------------------------------------
    def pcsw_volumes(self, pseudo_label: torch.Tensor) -> Tuple[np.ndarray, int]:
        """Pseudo-labels as PCSW volumes ``(V, S, H, W)`` and slices per volume ``S``: one volume per
        3-D patch, or the whole 2-D slab."""
        network = unwrap(self.network)
        slices = network.encoder.sam2.to_slices(pseudo_label[:, None])[:, 0].cpu().numpy()  # (B * S, H, W)
        per_volume = slices.shape[0] if pseudo_label.ndim == 3 else slices.shape[0] // pseudo_label.shape[0]
        return slices.reshape(-1, per_volume, *slices.shape[1:]), per_volume

    @torch.no_grad()
    def pseudo_labels(self, weak: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        features = self.teacher.encoder(weak)
        probabilities = torch.softmax(first_output(self.teacher.decoder(self.teacher.fuse(features))).float(), 1)
        confidence, pseudo_label = probabilities.max(1)
        if self.teacher.prompt_head is None:
            return pseudo_label, confidence
        volumes, per_volume = self.pcsw_volumes(pseudo_label)
        prompts, rows = [], []
        accepted = 0
        for v, volume in enumerate(volumes):
            found = pcsw_prompts(volume, self.label_manager.foreground_labels, self.pcsw_tau)
            accepted += bool(found)
            prompts += found
            rows += [v * per_volume + p.slice_index for p in found]
        changed = 0.0
        if prompts and self.current_epoch >= self.pcsw_warmup_fraction * self.num_epochs:
            row_index, boxes, points = prompt_tensors(prompts, rows, weak.device)
            masks = self.teacher.prompt_head(self.teacher.prompt_levels(features), row_index, boxes, points) > 0
            pseudo_label, changed = self.apply_refined_masks(pseudo_label, prompts, rows, masks)
        self.step_figures.update(ssl_pcsw_acceptance=accepted / len(volumes),
                                 ssl_prompts_per_volume=len(prompts) / len(volumes) / 10,
                                 ssl_pseudo_label_changed=changed)
        return pseudo_label, confidence

    def apply_refined_masks(self, pseudo_label, prompts, rows, masks):
        """Replace each prompt's class on its slice by the decoded mask; returns the new pseudo-label
        and the share of its voxels changed."""
        sam2 = self.teacher.encoder.sam2
        label_slices = sam2.to_slices(pseudo_label[:, None].clone())[:, 0]      # (B * S, H, W) copy
        before = label_slices.clone()
        for prompt, row, mask in zip(prompts, rows, masks):
            slice_labels = label_slices[row]
            slice_labels[(slice_labels == prompt.label) & ~mask] = 0
            slice_labels[mask] = prompt.label
        changed = float((label_slices != before).float().mean())
        batch = pseudo_label.shape[0]
        return sam2.from_slices(label_slices[:, None], batch)[:, 0], changed


class nnUNetTrainerSSS_noDFE(nnUNetTrainerSSS):
    use_dfe = False


class nnUNetTrainerSSS_noPCSW(nnUNetTrainerSSS):
    use_pcsw = False


class nnUNetTrainerSSS_baseline(nnUNetTrainerSSS):
    """UniMatch V2 on the SAM-2 network (the paper's Table 3 baseline row)."""
    use_dfe = False
    use_pcsw = False
