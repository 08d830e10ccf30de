"""Discriminative Feature Enhancement (DFE) of the SSS paper, docs/method.md 1.2.

DFE sits between the encoder and the decoder. For every encoder scale ``i`` it takes the
features of two strongly augmented views, ``F_a`` and ``F_b`` (each ``(B, C_i, *spatial)``),
and returns the decoder input of view ``a``:

    v_a, v_b = GAP(F_a), GAP(F_b)                       # (B, C_i), mean over all spatial axes
    S        = cos(v_a, v_b)                            # (B,), one value per image
    w        = sigmoid(S)
    F_fused  = w · MLP_i(F_a) + (1 − w) · MLP_i(F_b)    # MLP_i position-wise, shared by both views
    ΔF       = (1 − S) · (F_b − F_a)
    F_adj    = F_fused + ΔF
    out      = Proj_i(concat(F_a, F_adj))               # 1x1 conv, 2·C_i → C_i

With one view (labeled patches, the teacher, inference) DFE is ``DFE(F, F)``: ``S = 1``,
``ΔF = 0`` and ``F_adj = MLP_i(F)``, which is what the single-view path computes directly.
The second view's decoder input is ``DFE(F_b, F_a)``; ``pair`` returns both, computing the
shared MLP and ``S`` once.

Choices where the papers are silent: ``MLP_i`` is 1x1 conv → GELU → 1x1 conv with
``round(mlp_hidden_ratio · C_i)`` hidden channels (default ratio 1); every layer keeps
PyTorch's default initialisation; gradients flow through ``S`` as well (nothing detached);
``S``, ``w``, ``1 - w`` and ``1 - S`` are computed in at least float32, also under autocast
(``similarity_factors``), and cast to the features' dtype only where they multiply them; two
all-zero pooled vectors give ``S = 0`` (torch's ``cosine_similarity`` clamps the norms).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def _conv1x1(dim: int, in_channels: int, out_channels: int) -> nn.Module:
    if dim == 2:
        return nn.Conv2d(in_channels, out_channels, kernel_size=1)
    return nn.Conv3d(in_channels, out_channels, kernel_size=1)


def _pooled(f_a: torch.Tensor, f_b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """GAP of both views, (B, C) in at least float32 (half-precision features under autocast are
    pooled in float32)."""
    dtype = torch.promote_types(f_a.dtype, torch.float32)
    return f_a.to(dtype).flatten(2).mean(dim=2), f_b.to(dtype).flatten(2).mean(dim=2)


def _no_autocast(tensor: torch.Tensor):
    """Autocast off for the block on ``tensor``'s device (where it is on)."""
    device_type = tensor.device.type
    return torch.autocast(device_type, enabled=False) if torch.is_autocast_enabled(device_type) else nullcontext()


def view_similarity(f_a: torch.Tensor, f_b: torch.Tensor) -> torch.Tensor:
    """``S`` = cosine similarity of the globally average-pooled features, shape (B,), computed
    in at least float32, also under autocast (autocast is off for the pooling and the cosine).

    f_a, f_b: (B, C, *spatial) of one scale.
    """
    with _no_autocast(f_a):
        return F.cosine_similarity(*_pooled(f_a, f_b), dim=1)


def similarity_factors(f_a: torch.Tensor, f_b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(w, 1 - S)``, each (B,) in at least float32, also under autocast. ``1 - S`` is taken without
    cancellation where ``S > 1/2``: half the squared distance of the unit pooled vectors, equal to
    ``1 - S`` for non-zero vectors, so near ``S = 1`` it keeps float32's relative precision (``1 - S``
    from a float32 ``S`` would be a multiple of 2^-24; from a float16 ``S``, 0 or a multiple of 2^-11,
    about 5e-4; bfloat16: 2^-8), e.g. 1e-5 for two strong views of one patch. Elsewhere ``1 - S``."""
    with _no_autocast(f_a):
        v_a, v_b = _pooled(f_a, f_b)
        s = F.cosine_similarity(v_a, v_b, dim=1)
        half_distance = 0.5 * (F.normalize(v_a, dim=1) - F.normalize(v_b, dim=1)).square().sum(dim=1)
        return torch.sigmoid(s), torch.where(s > 0.5, half_distance, 1 - s)


class ScaleDFE(nn.Module):
    """DFE at one scale: ``(F_a, F_b) → Proj(concat(F_a, F_adj))``, shapes (B, C, *spatial)."""

    def __init__(self, channels: int, dim: int, mlp_hidden_ratio: float = 1.0):
        super().__init__()
        hidden = max(1, round(mlp_hidden_ratio * channels))
        self.mlp = nn.Sequential(_conv1x1(dim, channels, hidden), nn.GELU(), _conv1x1(dim, hidden, channels))
        self.project = _conv1x1(dim, 2 * channels, channels)

    def _shared(self, f_a: torch.Tensor, f_b: torch.Tensor):
        """MLP of both views (one call: the MLP is shared and position-wise), ``w``, ``1 - w`` and
        ``1 - S`` computed in float32 (``similarity_factors``), then each cast to the dtype of the
        features it multiplies (``w`` to the MLP's, ``1 - S`` to ``F_b - F_a``'s: under autocast the
        half-precision features stay so, and the decoder gets what it would get without DFE) and
        shaped to broadcast over (B, C, *spatial)."""
        mlp_a, mlp_b = self.mlp(torch.cat([f_a, f_b])).chunk(2)
        w, one_minus_s = similarity_factors(f_a, f_b)
        shape = (-1, *([1] * (f_a.dim() - 1)))
        return (mlp_a, mlp_b, w.to(mlp_a.dtype).view(shape), (1 - w).to(mlp_a.dtype).view(shape),
                one_minus_s.to(torch.promote_types(f_a.dtype, f_b.dtype)).view(shape))

    def adjusted(self, f_a: torch.Tensor, f_b: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``F_adj`` (B, C, *spatial); ``f_b`` None (or the same tensor as ``f_a``) is ``DFE(F, F)``."""
        if f_b is None or f_b is f_a:
            return self.mlp(f_a)
        mlp_a, mlp_b, w, one_minus_w, one_minus_s = self._shared(f_a, f_b)
        return w * mlp_a + one_minus_w * mlp_b + one_minus_s * (f_b - f_a)

    def forward(self, f_a: torch.Tensor, f_b: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.project(torch.cat([f_a, self.adjusted(f_a, f_b)], dim=1))

    def pair(self, f_a: torch.Tensor, f_b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(DFE(F_a, F_b), DFE(F_b, F_a))`` with the MLP and ``S`` computed once (``S`` is symmetric)."""
        mlp_a, mlp_b, w, one_minus_w, one_minus_s = self._shared(f_a, f_b)
        delta = one_minus_s * (f_b - f_a)
        adjusted_a = w * mlp_a + one_minus_w * mlp_b + delta
        adjusted_b = w * mlp_b + one_minus_w * mlp_a - delta
        return (self.project(torch.cat([f_a, adjusted_a], dim=1)),
                self.project(torch.cat([f_b, adjusted_b], dim=1)))


class DiscriminativeFeatureEnhancement(nn.Module):
    """DFE over the encoder's scales (finest first), one :class:`ScaleDFE` per enhanced scale.

    channels_per_scale: ``C_i`` of every scale, in the order the encoder returns them.
    dim: 2 or 3, the number of spatial axes of the features.
    mlp_hidden_ratio: hidden width of each ``MLP_i`` relative to ``C_i``.
    scales: indices of the scales that get DFE (default: all). The others are returned
        unchanged (``F_a``), e.g. to leave the large stride-4 maps of 3-D patches alone and
        save memory; their decoder input is then the plain encoder feature.
    """

    def __init__(self, channels_per_scale: Sequence[int], dim: int, mlp_hidden_ratio: float = 1.0,
                 scales: Optional[Sequence[int]] = None):
        super().__init__()
        channels = [int(c) for c in channels_per_scale]
        if not channels or min(channels) < 1:
            raise ValueError(f"DFE: channels_per_scale must be a non-empty list of positive ints, got {channels_per_scale!r}")
        if dim not in (2, 3):
            raise ValueError(f"DFE: dim must be 2 or 3, got {dim!r}")
        if mlp_hidden_ratio <= 0:
            raise ValueError(f"DFE: mlp_hidden_ratio must be > 0, got {mlp_hidden_ratio!r}")
        enhanced = range(len(channels)) if scales is None else sorted(set(int(i) for i in scales))
        if any(not 0 <= i < len(channels) for i in enhanced):
            raise ValueError(f"DFE: scales {scales!r} out of range for {len(channels)} scales")
        self.channels_per_scale = channels
        self.dim = dim
        self.per_scale = nn.ModuleDict({str(i): ScaleDFE(channels[i], dim, mlp_hidden_ratio) for i in enhanced})

    def _check(self, name: str, features: Sequence[torch.Tensor]) -> None:
        if len(features) != len(self.channels_per_scale):
            raise ValueError(f"DFE: {name} has {len(features)} scales, expected {len(self.channels_per_scale)}")
        for i, (f, c) in enumerate(zip(features, self.channels_per_scale)):
            if f.dim() != self.dim + 2 or f.shape[1] != c:
                raise ValueError(f"DFE: {name}[{i}] has shape {tuple(f.shape)}, expected (B, {c}, "
                                 f"{self.dim} spatial axes)")

    def _check_pair(self, features_a: Sequence[torch.Tensor], features_b: Sequence[torch.Tensor]) -> None:
        self._check("features_a", features_a)
        self._check("features_b", features_b)
        for i, (f_a, f_b) in enumerate(zip(features_a, features_b)):
            if f_a.shape != f_b.shape:
                raise ValueError(f"DFE: features_a[{i}] {tuple(f_a.shape)} and features_b[{i}] "
                                 f"{tuple(f_b.shape)} differ in shape")

    def forward(self, features_a: Sequence[torch.Tensor],
                features_b: Optional[Sequence[torch.Tensor]] = None) -> List[torch.Tensor]:
        """Decoder inputs of view ``a``: one (B, C_i, *spatial_i) tensor per scale.

        features_b: the other view's features (same shapes), or None for ``DFE(F, F)``.
        """
        if features_b is None:
            self._check("features_a", features_a)
        else:
            self._check_pair(features_a, features_b)
        return [self.per_scale[str(i)](f_a, None if features_b is None else features_b[i])
                if str(i) in self.per_scale else f_a for i, f_a in enumerate(features_a)]

    def pair(self, features_a: Sequence[torch.Tensor],
             features_b: Sequence[torch.Tensor]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Decoder inputs of both views, ``(DFE(F_a, F_b), DFE(F_b, F_a))``, sharing the MLP work."""
        self._check_pair(features_a, features_b)
        out_a, out_b = [], []
        for i, (f_a, f_b) in enumerate(zip(features_a, features_b)):
            a, b = self.per_scale[str(i)].pair(f_a, f_b) if str(i) in self.per_scale else (f_a, f_b)
            out_a.append(a)
            out_b.append(b)
        return out_a, out_b
