"""Prompts derived from ground truth for training the SAM-2 prompt head on labeled slices.

Per slice and present class: the largest 8-connected component, its box and its deepest
point (the same geometry as PCSW's prompts, :func:`nnunetv2_sss.sss.pcsw.window_prompts`), the box
jittered by up to ``jitter`` of its side (at least 1 voxel) per edge. The target of a prompt
is that component's mask.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import cc3d
import numpy as np

from nnunetv2_sss.sss.pcsw import ClassWindow, SlicePrompt, window_prompts


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Bool mask ``(H, W)`` of the largest 8-connected component of ``mask`` (ties: first label)."""
    components = cc3d.connected_components(mask.astype(np.uint8), connectivity=8)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def ground_truth_prompts(labels: np.ndarray, classes: Sequence[int], max_prompts: int, rng: np.random.Generator,
                         jitter: float = 0.1) -> Tuple[List[SlicePrompt], np.ndarray]:
    """Up to ``max_prompts`` random (slice, class) prompts from label slices ``(N, H, W)``.

    Returns the prompts (boxes jittered, clipped to the slice) and their target masks, bool
    ``(P, H, W)``.
    """
    pairs = [(z, k) for z in range(labels.shape[0]) for k in classes if (labels[z] == k).any()]
    chosen = [pairs[i] for i in rng.permutation(len(pairs))[:max_prompts]]
    prompts, targets = [], []
    height, width = labels.shape[1:]
    for z, k in chosen:
        component = largest_component(labels[z] == k)
        prompt = window_prompts(ClassWindow(k, z, 1, 1.0, component[None], (0, 0)))[0]
        y0, x0, y1, x1 = prompt.box
        dy, dx = max(1, round(jitter * (y1 - y0 + 1))), max(1, round(jitter * (x1 - x0 + 1)))
        shift = rng.integers(-np.array([dy, dx, dy, dx]), np.array([dy, dx, dy, dx]) + 1)
        box = (int(np.clip(y0 + shift[0], 0, height - 1)), int(np.clip(x0 + shift[1], 0, width - 1)),
               int(np.clip(y1 + shift[2], 0, height - 1)), int(np.clip(x1 + shift[3], 0, width - 1)))
        box = (min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3]))
        prompts.append(SlicePrompt(z, k, box, prompt.positive_point))
        targets.append(component)
    return prompts, np.array(targets, dtype=bool).reshape(len(targets), height, width)
