"""``nnUNetTrainerSSS``: Semi-Supervised SAM-2 (METHOD.md section 1) and its ablations.

UniMatch V2's objective (``nnUNetTrainerUniMatchV2``) on the SAM-2 network
(``nnUNetTrainerSAM2``: encoder weights, AdamW, warm-up + cosine), plus

- DFE (``use_dfe``): the two strong views' undropped SAM-2 features fused by
  :class:`~nnunetv2_sss.sss.dfe.DiscriminativeFeatureEnhancement`; UniMatch V2's complementary
  dropout then acts on DFE's outputs, the decoder inputs. One view (labeled patches, teacher,
  prediction) goes through ``DFE(F, F)``;
- PCSW (``use_pcsw``): SAM-2's prompt encoder + mask decoder. On labeled slices it learns
  from ground-truth prompts (box + deepest point of a class's largest component, jittered;
  BCE + soft Dice against that component, weight ``prompt_loss_weight``). On unlabeled
  patches the teacher's pseudo-labels and confidences are refined by
  :func:`~nnunetv2_sss.sss.refinement.refine_slices` (PCSW windows -> the teacher's prompt
  head -> each decided voxel gets the head's label and confidence), so the confidence
  threshold applies to teacher and prompt-head voxels alike. Refinement starts at iteration 0
  when the prompt head was loaded from a SAM-2 checkpoint (as in the paper); with a randomly
  initialised head it starts after the first ``pcsw_warmup_fraction`` of the epochs, while
  the head learns from labeled slices. PCSW telemetry is logged from the start.

All four trainers (SSS and the Table 3 ablations) draw the same unlabeled batches: in 2-D a
slab of consecutive slices of one case (PCSW needs a slice axis), in 3-D patches sliced
along the SAM-2 slice axis. Telemetry per epoch (log and progress.png): PCSW acceptance
rate (share of unlabeled volumes with at least one prompt), prompts per volume, share of
pseudo-label voxels changed by the prompt head, share of the confident unlabeled voxels
that the prompt head decided, prompt-head loss on labeled slices.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from nnunetv2_sss import settings
from nnunetv2_sss.networks.prompt_head import load_prompt_head_weights
from nnunetv2_sss.networks.sam2_config import SAM2NetworkSpec
from nnunetv2_sss.networks.sam2_unet import configuration_layout
from nnunetv2_sss.networks.sss_network import SSSNetwork, prompt_slice_size
from nnunetv2_sss.sss.ground_truth_prompts import ground_truth_prompts
from nnunetv2_sss.sss.pcsw import DEFAULT_TAU
from nnunetv2_sss.sss.refinement import prompt_coordinates, refine_slices
from nnunetv2_sss.training.base import unwrap
from nnunetv2_sss.training.sam2_trainer import nnUNetTrainerSAM2
from nnunetv2_sss.training.semi_supervised import first_output
from nnunetv2_sss.training.unimatch_v2 import nnUNetTrainerUniMatchV2


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
    pcsw_warmup_fraction = 0.1   # only while the prompt head has random weights
    prompt_loss_weight = 1.0
    max_prompts_per_step = 16  # ground-truth prompts per iteration for the prompt head
    unlabeled_slabs_in_2d = True
    ssl_figures = {**nnUNetTrainerUniMatchV2.ssl_figures, 'ssl_pcsw_acceptance': 'PCSW acceptance rate',
                   'ssl_prompts_per_volume': 'prompts per volume / 10', 'ssl_pseudo_label_changed':
                       'pseudo-label voxels changed', 'ssl_confident_from_head': 'confident voxels from prompt head',
                   'ssl_prompt_loss': 'prompt head loss'}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.prompt_rng = np.random.default_rng()
        self.prompt_head_pretrained = False  # set when a SAM-2 checkpoint provided the prompt head

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
            self.prompt_head_pretrained = not missing
            self.print_to_log_file(f"SAM-2 prompt head from {checkpoint}: missing keys {missing or 'none'}, "
                                   f"unexpected keys {unexpected or 'none'}")

    def extra_checkpoint_state(self) -> dict:
        return {**super().extra_checkpoint_state(), 'prompt_head_pretrained': self.prompt_head_pretrained}

    def load_extra_checkpoint_state(self, checkpoint: dict) -> None:
        super().load_extra_checkpoint_state(checkpoint)
        self.prompt_head_pretrained = checkpoint.get('prompt_head_pretrained', False)

    # ---- views -----------------------------------------------------------------------------
    def fuse_views(self, features_1, features_2):
        return unwrap(self.network).fuse_pair(features_1, features_2)

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
        rows = torch.tensor([p.slice_index for p in prompts], device=data.device)
        logits = network.prompt_head(network.prompt_levels(features), rows, *prompt_coordinates(prompts, data.device))
        prompt_loss = mask_loss(logits, torch.from_numpy(masks).to(data.device))
        self.step_figures['ssl_prompt_loss'] = float(prompt_loss.detach())
        return loss + self.prompt_loss_weight * prompt_loss

    # ---- PCSW refinement of pseudo-labels ------------------------------------------------------
    def refinement_active(self) -> bool:
        """Refine from iteration 0 with a pretrained prompt head, after the warm-up with a random one."""
        return self.prompt_head_pretrained or self.current_epoch >= self.pcsw_warmup_fraction * self.num_epochs

    @torch.no_grad()
    def pseudo_labels(self, weak: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        features = self.teacher.encoder(weak)
        probabilities = torch.softmax(first_output(self.teacher.decoder(self.teacher.fuse(features))).float(), 1)
        confidence, pseudo_label = probabilities.max(1)
        if self.teacher.prompt_head is None:
            return pseudo_label, confidence
        sam2 = self.teacher.encoder.sam2
        label_slices = sam2.to_slices(pseudo_label[:, None])[:, 0]                   # (B * S, H, W)
        confidence_slices = sam2.to_slices(confidence[:, None])[:, 0]
        # one PCSW volume per 3-D patch, or the whole 2-D slab
        per_volume = label_slices.shape[0] // (1 if pseudo_label.ndim == 3 else pseudo_label.shape[0])
        levels = self.teacher.prompt_levels(features)
        refined = refine_slices(self.teacher.prompt_head, lambda rows: [level[rows] for level in levels],
                                label_slices, confidence_slices, per_volume, self.label_manager.foreground_labels,
                                self.pcsw_tau, decode=self.refinement_active())
        confident = refined.confidence >= self.confidence_threshold
        num_volumes = label_slices.shape[0] // per_volume
        self.step_figures.update(
            ssl_pcsw_acceptance=refined.accepted_volumes / num_volumes,
            ssl_prompts_per_volume=refined.num_prompts / num_volumes / 10,
            ssl_pseudo_label_changed=float((refined.labels != label_slices).float().mean()),
            ssl_confident_from_head=float((confident & refined.from_head).sum() / confident.sum().clamp_min(1)))
        batch = pseudo_label.shape[0]
        return (sam2.from_slices(refined.labels[:, None], batch)[:, 0],
                sam2.from_slices(refined.confidence[:, None], batch)[:, 0])


class nnUNetTrainerSSS_noDFE(nnUNetTrainerSSS):
    use_dfe = False


class nnUNetTrainerSSS_noPCSW(nnUNetTrainerSSS):
    use_pcsw = False


class nnUNetTrainerSSS_baseline(nnUNetTrainerSSS):
    """UniMatch V2 on the SAM-2 network (the paper's Table 3 baseline row)."""
    use_dfe = False
    use_pcsw = False
