"""PCSW -> prompts -> SAM-2 prompt head -> refined labels and confidences (docs/method.md 1.3).

The one implementation used by the SSS trainer (teacher pseudo-labels of unlabeled
patches) and by ``nnUNetv2_sss_predict_refine`` (predicted volumes).

Input: label slices ``(V * S, H, W)``, ``V`` volumes of ``S`` consecutive slices each
(slice-major: slice ``s`` of volume ``v`` is row ``v * S + s``), and their confidences.
PCSW (:func:`~nnunetv2_sss.sss.pcsw.pcsw_prompts`) runs on every volume; each accepted
(slice, class) prompt is decoded by the prompt head from that slice's SAM-2 features into
mask logits, and on that slice

- a voxel inside the mask (logit > 0, SAM-2's mask threshold) gets the prompt's class and
  the confidence ``p = sigmoid(logit)``;
- a voxel of the prompt's class outside the mask becomes background with confidence
  ``1 - p``;
- every other voxel keeps its label and confidence.

So one confidence threshold applies to teacher and prompt-head voxels alike, and a prompt
head that knows nothing (``p`` near 0.5) cannot push its edits into the training signal.
Prompts of one slice are applied in PCSW's order (classes ascending); a later class wins
where masks overlap.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import numpy as np
import torch

from nnunetv2_sss.sss.pcsw import SlicePrompt, pcsw_prompts
from nnunetv2_sss.transfer import to_device


@dataclass
class Refinement:
    labels: torch.Tensor        # long (N, H, W), refined label slices
    confidence: torch.Tensor    # float (N, H, W), in [0, 1]
    from_head: torch.Tensor     # bool (N, H, W), voxels whose label and confidence the prompt head set
    accepted_volumes: int       # volumes with at least one PCSW prompt
    num_prompts: int


def prompt_coordinates(prompts: Sequence[SlicePrompt], device) -> Tuple[torch.Tensor, torch.Tensor]:
    """SAM-2 prompt coordinates of ``prompts`` on ``device`` (one asynchronous copy): boxes ``(P, 4)`` as
    (x0, y0, x1, y1) and positive points ``(P, 2)`` as (x, y), float pixels (PCSW's are (row, column))."""
    rows = [[p.box[1], p.box[0], p.box[3], p.box[2], p.positive_point[1], p.positive_point[0]] for p in prompts]
    coordinates = to_device(torch.tensor(rows, dtype=torch.float32).reshape(-1, 6), device)
    return coordinates[:, :4], coordinates[:, 4:]


def find_prompts(label_slices: np.ndarray, slices_per_volume: int, classes: Sequence[int], tau: float
                 ) -> Tuple[List[SlicePrompt], List[int], int]:
    """PCSW on each volume of ``label_slices`` ``(V * S, H, W)``; returns the prompts, the row of
    ``label_slices`` each one belongs to, and the number of volumes with a prompt."""
    volumes = label_slices.reshape(-1, slices_per_volume, *label_slices.shape[1:])
    prompts, rows, accepted = [], [], 0
    for v, volume in enumerate(volumes):
        found = pcsw_prompts(volume, classes, tau)
        accepted += bool(found)
        prompts += found
        rows += [v * slices_per_volume + p.slice_index for p in found]
    return prompts, rows, accepted


def apply_prompt_masks(labels: torch.Tensor, confidence: torch.Tensor, prompts: Sequence[SlicePrompt],
                       rows: Sequence[int], logits: torch.Tensor
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Refined copies of ``labels`` / ``confidence`` ``(N, H, W)`` and the bool map of voxels the
    head decided, given each prompt's mask logits ``(P, H, W)`` on row ``rows[i]`` (element-wise
    selections on the device: no host round-trip per prompt)."""
    labels, confidence = labels.clone(), confidence.clone()
    from_head = torch.zeros_like(labels, dtype=torch.bool)
    probability = torch.sigmoid(logits.float()).to(confidence.dtype)
    for prompt, row, p in zip(prompts, rows, probability):
        inside = p > 0.5
        removed = (labels[row] == prompt.label) & ~inside
        confidence[row] = torch.where(inside, p, torch.where(removed, 1 - p, confidence[row]))
        labels[row] = torch.where(inside, prompt.label, torch.where(removed, 0, labels[row]))
        from_head[row] |= inside | removed
    return labels, confidence, from_head


@torch.no_grad()
def refine_slices(head, slice_levels: Callable[[List[int]], List[torch.Tensor]], labels: torch.Tensor,
                  confidence: torch.Tensor, slices_per_volume: int, classes: Sequence[int], tau: float,
                  decode: bool = True) -> Refinement:
    """PCSW prompts on ``labels`` ``(V * S, H, W)`` decoded by ``head`` into refined labels and
    confidences (module docstring).

    head: :class:`~nnunetv2_sss.networks.prompt_head.SAM2PromptHead`;
    slice_levels: rows -> the SAM-2 levels (strides 4, 8, 16) of those slices, ``(len(rows), C, h, w)``;
    decode: False runs PCSW only (telemetry) and returns the input unchanged.
    """
    prompts, rows, accepted = find_prompts(labels.cpu().numpy(), slices_per_volume, classes, tau)
    if not (prompts and decode):
        return Refinement(labels, confidence, torch.zeros_like(labels, dtype=torch.bool), accepted, len(prompts))
    unique_rows = sorted(set(rows))
    position = {row: i for i, row in enumerate(unique_rows)}
    boxes, points = prompt_coordinates(prompts, labels.device)
    logits = head(slice_levels(unique_rows), to_device(torch.tensor([position[r] for r in rows]), labels.device),
                  boxes, points)
    refined, refined_confidence, from_head = apply_prompt_masks(labels, confidence, prompts, rows, logits)
    return Refinement(refined, refined_confidence, from_head, accepted, len(prompts))
