"""Complementary channel dropout of UniMatch V2 on multi-scale features of two views."""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import torch


def complementary_masks(num_pairs: int, channels: int, kept_pairs: torch.Tensor,
                        device=None, generator: torch.Generator = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Channel masks for one feature level.

    Returns ``(m1, m2)``, each ``(num_pairs, channels)``: ``m1`` in {0, 2} (Bernoulli(0.5) * 2),
    ``m2 = 2 - m1`` so every channel is kept in exactly one view at scale 2; rows of
    ``kept_pairs`` (bool, ``(num_pairs,)``) are all ones in both (undropped pairs).
    """
    m1 = torch.bernoulli(torch.full((num_pairs, channels), 0.5), generator=generator).mul_(2.0)
    m1[kept_pairs] = 1.0
    m1 = m1.to(device)
    return m1, 2.0 - m1


def choose_kept_pairs(num_pairs: int, drop_probability: float = 0.5,
                      generator: torch.Generator = None) -> torch.Tensor:
    """Bool ``(num_pairs,)``: ``int(num_pairs * (1 - p))`` randomly chosen pairs stay undropped."""
    kept = torch.zeros(num_pairs, dtype=torch.bool)
    num_kept = int(num_pairs * (1.0 - drop_probability))
    kept[torch.randperm(num_pairs, generator=generator)[:num_kept]] = True
    return kept


def apply_complementary_dropout(features_1: Sequence[torch.Tensor], features_2: Sequence[torch.Tensor],
                                drop_probability: float = 0.5, generator: torch.Generator = None
                                ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Drop complementary channels of two views' features.

    ``features_1[i]``, ``features_2[i]``: ``(B, C_i, *spatial)`` features of view 1 and 2 of
    the same ``B`` images at level ``i``. Each level draws its own masks; the set of
    undropped pairs is drawn once and shared by all levels.
    """
    num_pairs = features_1[0].shape[0]
    kept = choose_kept_pairs(num_pairs, drop_probability, generator)
    out_1, out_2 = [], []
    for f1, f2 in zip(features_1, features_2):
        m1, m2 = complementary_masks(num_pairs, f1.shape[1], kept, f1.device, generator)
        shape = (num_pairs, f1.shape[1]) + (1,) * (f1.ndim - 2)
        out_1.append(f1 * m1.view(shape).to(f1.dtype))
        out_2.append(f2 * m2.view(shape).to(f2.dtype))
    return out_1, out_2


def dropped_decoder_inputs(fuse: Callable, features_1: Sequence[torch.Tensor], features_2: Sequence[torch.Tensor],
                           drop_probability: float = 0.5, generator: torch.Generator = None
                           ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Decoder inputs of two strong views: ``fuse(features_1, features_2)`` (identity, or SSS's DFE)
    on the UNDROPPED encoder features, then complementary dropout on its outputs (UniMatch V2 drops
    what enters its decoder head; dropping before DFE would make DFE's ``S`` 0 for every dropped
    pair and let its ``delta F`` hand the dropped channels back)."""
    inputs_1, inputs_2 = fuse(features_1, features_2)
    return apply_complementary_dropout(inputs_1, inputs_2, drop_probability, generator)
