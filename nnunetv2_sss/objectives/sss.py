"""SSS (docs/method.md section 1): UniMatch V2's objective on the SSS network plus SAM-2's prompt path.

- DFE: the network's ``fuse_pair`` pass (UniMatch V2's complementary dropout then acts on DFE's
  outputs); one view (labeled patches, teacher) goes through ``DFE(F, F)`` (the ``segment`` pass).
- PCSW: on labeled slices the prompt head learns from ground-truth prompts (box + deepest point of
  a class's largest component, jittered; BCE + soft Dice against that component, weight
  ``prompt_loss_weight``). On unlabeled patches the teacher's pseudo-labels and confidences are
  refined by :func:`~nnunetv2_sss.sss.refinement.refine_slices` (PCSW windows -> the teacher's
  prompt head -> each decided voxel gets the head's label and confidence), so the confidence
  threshold applies to teacher and prompt-head voxels alike. Refinement starts at iteration 0 when
  the prompt head was loaded from a SAM-2 checkpoint; with a random head after the first
  ``pcsw_warmup_fraction`` of the epochs. PCSW telemetry is logged from the start.
- The prompt head's weights: when training starts from a SAM-2 checkpoint, the objective loads
  SAM-2's prompt encoder and mask decoder into the network's prompt head
  (:meth:`SSSObjective.build_modules`) and records whether it did (``prompt_head_pretrained``,
  part of the objective's checkpoint state, so ``--c`` keeps it).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from nnunetv2_sss.networks.passes import unwrap
from nnunetv2_sss.objectives.base import Figures, first_output
from nnunetv2_sss.objectives.unimatch_v2 import UniMatchV2Objective
from nnunetv2_sss.sss.ground_truth_prompts import ground_truth_prompts
from nnunetv2_sss.sss.pcsw import DEFAULT_TAU
from nnunetv2_sss.sss.refinement import prompt_coordinates, refine_slices
from nnunetv2_sss.transfer import to_device


def mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice of mask logits ``(P, H, W)`` against bool targets ``(P, H, W)``."""
    target = target.float()
    probabilities = torch.sigmoid(logits.float())
    dice = 1 - (2 * (probabilities * target).sum((1, 2)) + 1) / (probabilities.sum((1, 2)) + target.sum((1, 2)) + 1)
    return F.binary_cross_entropy_with_logits(logits.float(), target) + dice.mean()


class SSSObjective(UniMatchV2Objective):
    defaults = {'unlabeled_slabs_in_2d': True,
                'pcsw_tau': DEFAULT_TAU,
                'pcsw_warmup_fraction': 0.1,   # only while the prompt head has random weights
                'prompt_loss_weight': 1.0,
                'max_prompts_per_step': 16}    # ground-truth prompts per iteration for the prompt head
    random_generators = ('cutmix_rng', 'prompt_rng')
    figures = {'ssl_pcsw_acceptance': 'PCSW acceptance rate', 'ssl_prompts_per_volume': 'prompts per volume',
               'ssl_pseudo_label_changed': 'pseudo-label voxels changed',
               'ssl_confident_from_head': 'confident voxels from prompt head', 'ssl_prompt_loss': 'prompt head loss'}
    count_figures = ('ssl_prompts_per_volume',)

    def __init__(self, trainer, **options):
        super().__init__(trainer, **options)
        self.prompt_head_pretrained = False

    # ---- the prompt head's weights and state -------------------------------------------------------
    def build_modules(self) -> None:
        """Starting from a SAM-2 checkpoint: SAM-2's prompt encoder and mask decoder into the prompt head."""
        from nnunetv2_sss import settings
        from nnunetv2_sss.networks.prompt_head import load_prompt_head_weights
        head = unwrap(self.trainer.network).prompt_head
        checkpoint = getattr(self.trainer, 'sam2_checkpoint', None)  # None: weights from an nnU-Net checkpoint
        if head is None or checkpoint in (None, settings.RANDOM_WEIGHTS):
            return
        missing, unexpected = load_prompt_head_weights(head, checkpoint)
        self.prompt_head_pretrained = not missing
        self.trainer.print_to_log_file(f"SAM-2 prompt head from {checkpoint}: missing keys {missing or 'none'}, "
                                       f"unexpected keys {unexpected or 'none'}")

    def checkpoint_state(self) -> dict:
        return {'prompt_head_pretrained': self.prompt_head_pretrained}

    def load_checkpoint_state(self, checkpoint: dict) -> None:
        self.prompt_head_pretrained = checkpoint.get('prompt_head_pretrained', False)

    # ---- prompt head on labeled slices ---------------------------------------------------------
    def label_slices(self, target) -> np.ndarray:
        """Full-resolution labels as slices ``(B * S, H, W)`` in the encoder's slice order."""
        labels = (target[0] if isinstance(target, list) else target)[:, 0]
        return unwrap(self.trainer.network).to_slices(labels[:, None])[:, 0].cpu().numpy()

    def supervised_loss(self, data: torch.Tensor, target) -> Tuple[torch.Tensor, object, Figures]:
        trainer = self.trainer
        features = trainer.network(data, pass_='encode')
        output = trainer.network(features, pass_='segment')
        loss = trainer.loss(output, target)
        if unwrap(trainer.network).prompt_head is None:
            return loss, output, {}
        prompts, masks = ground_truth_prompts(self.label_slices(target), trainer.label_manager.foreground_labels,
                                              self.max_prompts_per_step, self.prompt_rng)
        if not prompts:
            return loss, output, {'ssl_prompt_loss': torch.full((), float('nan'), device=data.device)}
        rows = to_device(torch.tensor([p.slice_index for p in prompts]), data.device)
        logits = trainer.network(features, rows, *prompt_coordinates(prompts, data.device), pass_='prompt')
        prompt_loss = mask_loss(logits, to_device(torch.from_numpy(masks), data.device))
        return loss + self.prompt_loss_weight * prompt_loss, output, {'ssl_prompt_loss': prompt_loss.detach()}

    # ---- PCSW refinement of pseudo-labels ------------------------------------------------------
    def refinement_active(self) -> bool:
        """Refine from iteration 0 with a pretrained prompt head, after the warm-up with a random one."""
        trainer = self.trainer
        return self.prompt_head_pretrained or trainer.current_epoch >= self.pcsw_warmup_fraction * trainer.num_epochs

    @torch.no_grad()
    def pseudo_labels(self, weak: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, Figures]:
        trainer, teacher = self.trainer, self.trainer.teacher
        features = teacher(weak, pass_='encode')
        probabilities = torch.softmax(first_output(teacher(features, pass_='segment')).float(), 1)
        confidence, pseudo_label = probabilities.max(1)
        if teacher.prompt_head is None:
            return pseudo_label, confidence, {}
        label_slices = teacher.to_slices(pseudo_label[:, None])[:, 0]                   # (B * S, H, W)
        confidence_slices = teacher.to_slices(confidence[:, None])[:, 0]
        # one PCSW volume per 3-D patch, or the whole 2-D slab
        per_volume = label_slices.shape[0] // (1 if pseudo_label.ndim == 3 else pseudo_label.shape[0])
        levels = teacher.prompt_levels(features)
        refined = refine_slices(teacher.prompt_head, lambda rows: [level[rows] for level in levels],
                                label_slices, confidence_slices, per_volume, trainer.label_manager.foreground_labels,
                                self.pcsw_tau, decode=self.refinement_active())
        confident = refined.confidence >= self.confidence_threshold
        num_volumes = label_slices.shape[0] // per_volume
        figures = dict(
            ssl_pcsw_acceptance=refined.accepted_volumes / num_volumes,
            ssl_prompts_per_volume=refined.num_prompts / num_volumes,
            ssl_pseudo_label_changed=(refined.labels != label_slices).float().mean(),
            ssl_confident_from_head=(confident & refined.from_head).sum() / confident.sum().clamp_min(1))
        batch = pseudo_label.shape[0]
        return (teacher.from_slices(refined.labels[:, None], batch)[:, 0],
                teacher.from_slices(refined.confidence[:, None], batch)[:, 0], figures)
