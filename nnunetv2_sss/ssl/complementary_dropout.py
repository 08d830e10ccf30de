"""Complementary channel dropout of UniMatch V2 on multi-scale features of two views."""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import torch

from nnunetv2_sss.transfer import to_device


def complementary_masks(num_pairs: int, channels: int, kept_pairs: torch.Tensor,
                        device=None, generator: torch.Generator = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Channel masks for one feature level.

    Returns ``(m1, m2)``, each ``(num_pairs, channels)``: ``m1`` in {0, 2} (Bernoulli(0.5) * 2),
    ``m2 = 2 - m1`` so every channel is kept in exactly one view at scale 2; rows of
    ``kept_pairs`` (bool, ``(num_pairs,)``) are all ones in both (undropped pairs).
    """
    m1 = torch.bernoulli(torch.full((num_pairs, channels), 0.5), generator=generator).mul_(2.0)
    m1[kept_pairs] = 1.0
    m1 = to_device(m1, device) if device is not None else m1
    return m1, 2.0 - m1


def choose_kept_pairs(num_pairs: int, drop_probability: float = 0.5,
                      generator: torch.Generator = None) -> torch.Tensor:
    """Bool ``(num_pairs,)``: ``int(num_pairs * (1 - p))`` randomly chosen pairs stay undropped."""
    kept = torch.zeros(num_pairs, dtype=torch.bool)
    num_kept = int(num_pairs * (1.0 - drop_probability))
    kept[torch.randperm(num_pairs, generator=generator)[:num_kept]] = True
    return kept


def draw_complementary_masks(num_pairs: int, channels: Sequence[int], drop_probability: float = 0.5,
                             generator: torch.Generator = None, device=None) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Masks of views 1 and 2 for feature levels of ``channels[i]`` channels: each level draws its own,
    the set of undropped pairs is drawn once and shared by all levels."""
    kept = choose_kept_pairs(num_pairs, drop_probability, generator)
    masks = [complementary_masks(num_pairs, c, kept, device, generator) for c in channels]
    return [m1 for m1, _ in masks], [m2 for _, m2 in masks]


def apply_channel_masks(features: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """``features[i] * masks[i]`` broadcast over the spatial axes (``(B, C_i, *spatial)`` times ``(B, C_i)``)."""
    return [f * m.view(*m.shape, *([1] * (f.ndim - 2))).to(f.dtype) for f, m in zip(features, masks)]


def apply_complementary_dropout(features_1: Sequence[torch.Tensor], features_2: Sequence[torch.Tensor],
                                drop_probability: float = 0.5, generator: torch.Generator = None
                                ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Drop complementary channels of two views' features.

    ``features_1[i]``, ``features_2[i]``: ``(B, C_i, *spatial)`` features of view 1 and 2 of
    the same ``B`` images at level ``i`` (:func:`draw_complementary_masks`).
    """
    masks_1, masks_2 = draw_complementary_masks(features_1[0].shape[0], [f.shape[1] for f in features_1],
                                                drop_probability, generator, features_1[0].device)
    return apply_channel_masks(features_1, masks_1), apply_channel_masks(features_2, masks_2)


def dropped_decoder_inputs(fuse: Callable, features_1: Sequence[torch.Tensor], features_2: Sequence[torch.Tensor],
                           drop_probability: float = 0.5, generator: torch.Generator = None
                           ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Decoder inputs of two strong views: ``fuse(features_1, features_2)`` (identity, or SSS's DFE)
    on the UNDROPPED encoder features, then complementary dropout on its outputs (UniMatch V2 drops
    what enters its decoder head; dropping before DFE would make DFE's ``S`` 0 for every dropped
    pair and let its ``delta F`` hand the dropped channels back)."""
    inputs_1, inputs_2 = fuse(features_1, features_2)
    return apply_complementary_dropout(inputs_1, inputs_2, drop_probability, generator)
