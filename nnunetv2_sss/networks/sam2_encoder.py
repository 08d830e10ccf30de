"""SAM-2's image encoder (Hiera trunk + FPN neck) applied to every slice of an nnU-Net patch.

2-D patches ``(B, C, H, W)`` are one image each; 3-D patches ``(B, C, D0, D1, D2)`` are cut
into slices along ``slice_axis`` (the lowest-resolution axis, as MedSAM-2 treats a volume
as video frames), every slice goes through the encoder, and the per-slice features are
stacked back into 3-D maps. A learned 1x1 adapter maps the input channels to the 3 that
Hiera expects. Slices are padded (zeros, at the end of each axis) to a multiple of Hiera's
total stride, or resampled to a square ``input_size``; features are cropped / resampled
back so that level ``i`` has ``ceil(n / stride_i)`` voxels along each in-plane axis.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

PATCH_EMBED_STRIDE = 4  # Hiera's PatchEmbed (kernel 7, stride 4); not configurable in SAM-2 configs


def hiera_total_stride(trunk: nn.Module) -> int:
    """Smallest side length multiple that Hiera accepts (pixels).

    The last stage is at ``4 * 2**q_pool``; the windowed positional embedding tiles
    ``window_spec[0]`` tokens at stride 4, so both must divide the side length.
    """
    q_pool = len(trunk.q_pool_blocks)
    return PATCH_EMBED_STRIDE * math.lcm(2 ** q_pool, trunk.window_spec[0])


def check_hiera_layout(image_encoder: nn.Module) -> None:
    """Refuse Hiera layouts the network does not support (all SAM-2 configs are supported)."""
    trunk = image_encoder.trunk
    problems = []
    if tuple(trunk.patch_embed.proj.stride) != (PATCH_EMBED_STRIDE, PATCH_EMBED_STRIDE):
        problems.append(f"patch embedding stride {tuple(trunk.patch_embed.proj.stride)} != (4, 4)")
    if tuple(trunk.q_stride) != (2, 2):
        problems.append(f"q_stride {tuple(trunk.q_stride)} != (2, 2)")
    if len(trunk.q_pool_blocks) != len(trunk.stage_ends) - 1:
        problems.append("q_pool must downsample between every pair of stages")
    if not trunk.return_interm_layers:
        problems.append("return_interm_layers must be true")
    if problems:
        raise ValueError("unsupported SAM-2 image encoder config: " + "; ".join(problems))


class SAM2SliceEncoder(nn.Module):
    """Per-slice SAM-2 image encoder with channel adapter, padding and optional resampling.

    forward: ``(B, C, *spatial)`` -> list over Hiera levels (strides 4, 8, 16, 32 in-plane,
    1 along ``slice_axis``) of ``(B, d_model, *ceil(spatial / stride))`` float tensors.
    """

    def __init__(self, image_encoder: nn.Module, in_channels: int, conv_dim: int, slice_axis: int = 0,
                 input_size: Optional[int] = None):
        super().__init__()
        if conv_dim not in (2, 3):
            raise ValueError(f"conv_dim must be 2 or 3, got {conv_dim}")
        if conv_dim == 3 and slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
        check_hiera_layout(image_encoder)
        self.conv_dim = conv_dim
        self.slice_axis = slice_axis
        self.image_encoder = image_encoder
        self.total_stride = hiera_total_stride(image_encoder.trunk)
        if input_size is not None and (input_size < self.total_stride or input_size % self.total_stride):
            raise ValueError(f"encoder input size {input_size} must be a positive multiple of Hiera's total "
                             f"stride {self.total_stride}")
        self.input_size = input_size
        num_levels = len(image_encoder.neck.backbone_channel_list)
        self.level_strides = [PATCH_EMBED_STRIDE * 2 ** i for i in range(num_levels)]
        self.channels = [image_encoder.neck.d_model] * num_levels
        self.adapter = nn.Conv2d(in_channels, 3, kernel_size=1)
        with torch.no_grad():  # every output channel starts as the mean of the inputs (= repeat for 1 channel)
            self.adapter.weight.fill_(1.0 / in_channels)
            self.adapter.bias.zero_()

    def to_slices(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` unchanged; ``(B, C, D0, D1, D2)`` -> ``(B * S, C, P, Q)``, S = slice axis."""
        if x.ndim != self.conv_dim + 2:
            raise ValueError(f"expected a {self.conv_dim}-D patch (B, C, ...), got shape {tuple(x.shape)}")
        if self.conv_dim == 2:
            return x
        x = x.movedim(self.slice_axis + 2, 1)  # (B, S, C, P, Q)
        return x.reshape(-1, *x.shape[2:])

    def from_slices(self, features: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Inverse of :meth:`to_slices` for a feature map ``(B * S, F, p, q)``."""
        if self.conv_dim == 2:
            return features
        features = features.reshape(batch_size, -1, *features.shape[1:])  # (B, S, F, p, q)
        return features.movedim(1, self.slice_axis + 2)

    def prepare_slices(self, slices: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, 3, H', W')`` with H', W' accepted by Hiera."""
        images = self.adapter(slices)
        if self.input_size is not None:
            return F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                                 align_corners=False)
        pad = [(-n) % self.total_stride for n in images.shape[-2:]]
        return F.pad(images, (0, pad[1], 0, pad[0])) if any(pad) else images

    def slice_features(self, slices: torch.Tensor) -> list[torch.Tensor]:
        """All FPN levels (strides s = 4, 8, ...) of ``(N, C, H, W)`` slices:
        ``(N, d_model, ceil(H/s), ceil(W/s))`` each."""
        height, width = slices.shape[-2:]
        features, _ = self.image_encoder.neck(self.image_encoder.trunk(self.prepare_slices(slices)))
        out = []
        for stride, level in zip(self.level_strides, features):
            size = (math.ceil(height / stride), math.ceil(width / stride))
            if self.input_size is not None:
                level = F.interpolate(level, size=size, mode="bilinear", align_corners=False)
            out.append(level[..., : size[0], : size[1]])
        return out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.from_slices(f, x.shape[0]) for f in self.slice_features(self.to_slices(x))]

    def image_encoder_output(self, x: torch.Tensor) -> dict:
        """SAM-2's own ``ImageEncoder`` output for every slice of ``x`` (slice-major within each case).

        Returns the dict of ``sam2.modeling.backbones.image_encoder.ImageEncoder.forward``
        (``vision_features``, ``vision_pos_enc``, ``backbone_fpn``; the config's ``scalp``
        applied), computed on the adapted, padded/resampled slices: the input a SAM-2
        prompt encoder / mask decoder expects.
        """
        return self.image_encoder(self.prepare_slices(self.to_slices(x)))
