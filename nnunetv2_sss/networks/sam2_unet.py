"""U-Net with SAM-2's image encoder: conv stem + per-slice SAM-2 encoder, nnU-Net-style decoder.

Network contract (shared with nnU-Net's PlainConvUNet, relied on by the semi-supervised
trainers): ``network.encoder(x)`` returns a list of feature maps, finest first, the first
at the input's spatial size; ``network.decoder(features)`` returns logits at exactly the
input's size, or with ``decoder.deep_supervision`` the list of logits at every decoder
level, finest first; ``network(x) == network.decoder(network.encoder(x))``.

Levels (in-plane stride; 1 along the slice axis of 3-D patches):
    0: stem, stride 1     1: stem, stride 2     2..: SAM-2 FPN levels, strides 4, 8, 16, 32
The decoder has one stage (and one segmentation head) per level except the deepest.
Level ``k`` has ``round(n * scale_k)`` voxels along an axis of input size ``n`` (the sizes
nnU-Net's ``DownsampleSegForDSTransform`` gives the deep-supervision targets), so odd patch
sizes work: up-sampled maps and skips are cropped / edge-padded to that size.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.helper import (
    convert_dim_to_conv_op, get_matching_convtransp, get_matching_instancenorm)
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn

from nnunetv2_sss.networks.sam2_config import SAM2NetworkSpec, build_image_encoder
from nnunetv2_sss.networks.sam2_encoder import PATCH_EMBED_STRIDE, SAM2SliceEncoder

STEM_STRIDES = (1, 2)
BASE_WIDTH = 32  # decoder width at full resolution, doubled per level up to the SAM-2 width


def level_strides(conv_dim: int, slice_axis: int, num_hiera_levels: int) -> list[tuple[int, ...]]:
    """Per-axis stride of every encoder level: the two stem levels, then the Hiera levels."""
    in_plane = list(STEM_STRIDES) + [PATCH_EMBED_STRIDE * 2 ** i for i in range(num_hiera_levels)]
    return [tuple(1 if conv_dim == 3 and axis == slice_axis else s for axis in range(conv_dim))
            for s in in_plane]


def deep_supervision_scales(strides: Sequence[Sequence[int]]) -> list[list[float]]:
    """nnU-Net's ``deep_supervision_scales`` for the decoder outputs (all levels but the deepest)."""
    return [[1.0 / s for s in stride] for stride in strides[:-1]]


def _level_size(full_size: Sequence[int], stride: Sequence[int]) -> list[int]:
    """Voxels of a level along each axis, rounded as nnU-Net rounds deep-supervision targets."""
    return [round(n * (1.0 / s)) for n, s in zip(full_size, stride)]


def _fit(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Crop (at the end) or edge-pad (at the end) the spatial axes of ``x`` to ``size``."""
    x = x[(Ellipsis, *(slice(0, n) for n in size))]
    pad = [n - m for n, m in zip(size, x.shape[2:])]
    if any(pad):
        x = F.pad(x, [p for d in reversed(pad) for p in (0, d)], mode="replicate")
    return x


def _conv_blocks(conv_dim: int, in_channels: int, out_channels: int, stride=1) -> StackedConvBlocks:
    """Two (conv 3, instance norm, leaky ReLU) blocks, nnU-Net's defaults."""
    conv_op = convert_dim_to_conv_op(conv_dim)
    return StackedConvBlocks(2, conv_op, in_channels, out_channels, 3, stride, conv_bias=True,
                             norm_op=get_matching_instancenorm(conv_op), norm_op_kwargs={"eps": 1e-5, "affine": True},
                             nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})


class SAM2UNetEncoder(nn.Module):
    """Full- and half-resolution conv stem plus the per-slice SAM-2 encoder.

    forward: ``(B, C, *spatial)`` -> ``[stem1, stem2, sam4, sam8, sam16, sam32]`` with
    ``output_channels[k]`` channels and ``ceil(n / stride)`` voxels per axis.
    """

    def __init__(self, image_encoder: nn.Module, in_channels: int, conv_dim: int, slice_axis: int,
                 stem_widths: Sequence[int], encoder_input_size: Optional[int] = None):
        super().__init__()
        self.sam2 = SAM2SliceEncoder(image_encoder, in_channels, conv_dim, slice_axis, encoder_input_size)
        self.strides = level_strides(conv_dim, slice_axis, len(self.sam2.level_strides))
        self.stem = nn.ModuleList()
        previous = in_channels
        for width, stride in zip(stem_widths, self.strides):
            self.stem.append(_conv_blocks(conv_dim, previous, width, stride))
            previous = width
        self.output_channels = list(stem_widths) + self.sam2.channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for block in self.stem:
            features.append(block(features[-1] if features else x))
        return features + self.sam2(x)


class UNetDecoder(nn.Module):
    """nnU-Net-style decoder: transposed-conv up-sampling, skip concatenation, two convs, 1x1 heads.

    forward: encoder features (finest first) -> logits ``(B, num_classes, *input size)``,
    or with ``deep_supervision`` a list of logits per level, finest first.
    """

    def __init__(self, skip_channels: Sequence[int], strides: Sequence[Sequence[int]], widths: Sequence[int],
                 num_classes: int, conv_dim: int, deep_supervision: bool = True):
        super().__init__()
        if len(widths) != len(skip_channels) - 1 or len(strides) != len(skip_channels):
            raise ValueError("need one width per decoder level and one stride per encoder level")
        conv_op = convert_dim_to_conv_op(conv_dim)
        transp_op = get_matching_convtransp(conv_op)
        self.deep_supervision = deep_supervision
        self.strides = [tuple(s) for s in strides]
        self.up, self.stages, self.heads = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for k, width in enumerate(widths):
            below = skip_channels[k + 1] if k + 1 == len(widths) else widths[k + 1]
            ratio = [b // a for a, b in zip(self.strides[k], self.strides[k + 1])]
            self.up.append(transp_op(below, width, ratio, ratio, bias=True))
            self.stages.append(_conv_blocks(conv_dim, width + skip_channels[k], width))
            self.heads.append(conv_op(width, num_classes, 1, 1, 0, bias=True))

    def forward(self, features: Sequence[torch.Tensor]):
        full_size = features[0].shape[2:]
        x = features[-1]
        outputs = []
        for k in reversed(range(len(self.stages))):
            size = _level_size(full_size, self.strides[k])
            x = _fit(self.up[k](x), size)
            x = self.stages[k](torch.cat((x, _fit(features[k], size)), dim=1))
            if self.deep_supervision or k == 0:
                outputs.append(self.heads[k](x))
        outputs.reverse()
        return outputs if self.deep_supervision else outputs[0]


class SAM2UNet(nn.Module):
    """Segmentation network with SAM-2's image encoder; 2-D (``conv_dim=2``) or 3-D (``conv_dim=3``).

    x: ``(B, input_channels, *spatial)`` -> logits ``(B, num_classes, *spatial)`` (or the
    deep-supervision list). ``slice_axis``: spatial axis along which 3-D patches are sliced.
    """

    def __init__(self, image_encoder_node: dict, input_channels: int, num_classes: int, conv_dim: int,
                 slice_axis: int = 0, encoder_input_size: Optional[int] = None, deep_supervision: bool = True,
                 base_width: int = BASE_WIDTH):
        super().__init__()
        image_encoder = build_image_encoder(image_encoder_node)
        d_model = image_encoder.neck.d_model
        num_levels = len(STEM_STRIDES) + len(image_encoder.neck.backbone_channel_list)
        widths = [min(base_width * 2 ** k, d_model) for k in range(num_levels - 1)]
        self.encoder = SAM2UNetEncoder(image_encoder, input_channels, conv_dim, slice_axis,
                                       widths[: len(STEM_STRIDES)], encoder_input_size)
        self.decoder = UNetDecoder(self.encoder.output_channels, self.encoder.strides, widths, num_classes,
                                   conv_dim, deep_supervision)
        init = InitWeights_He(1e-2)
        self.encoder.stem.apply(init)
        self.decoder.apply(init)

    @property
    def pretrained_encoder(self) -> nn.Module:
        """SAM-2's ``ImageEncoder`` (trunk + neck): the part a SAM-2 checkpoint initialises."""
        return self.encoder.sam2.image_encoder

    @property
    def deep_supervision_scales(self) -> list[list[float]]:
        return deep_supervision_scales(self.encoder.strides)

    def forward(self, x: torch.Tensor):
        return self.decoder(self.encoder(x))

    def to_slices(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` -> the SAM-2 encoder's slices ``(B * S, C, H, W)``, slice-major per case."""
        return self.encoder.sam2.to_slices(x)

    def from_slices(self, slices: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Inverse of :meth:`to_slices`."""
        return self.encoder.sam2.from_slices(slices, batch_size)


def configuration_layout(configuration_manager) -> tuple[int, int]:
    """``(conv_dim, slice_axis)`` of an nnU-Net configuration: 2-D or 3-D from its patch size;
    3-D patches are sliced along the largest-spacing axis (axis 0 after nnU-Net's transpose)."""
    conv_dim = len(configuration_manager.patch_size)
    return conv_dim, int(np.argmax(configuration_manager.spacing)) if conv_dim == 3 else 0


def configuration_level_strides(spec: SAM2NetworkSpec, configuration_manager) -> list[tuple[int, ...]]:
    """Encoder level strides of the network :func:`build_sam2_unet` makes for a configuration."""
    return level_strides(*configuration_layout(configuration_manager), spec.num_hiera_levels)


def build_sam2_unet(spec: SAM2NetworkSpec, configuration_manager, num_input_channels: int,
                    num_output_channels: int, enable_deep_supervision: bool = True) -> SAM2UNet:
    """The network for an nnU-Net configuration."""
    conv_dim, slice_axis = configuration_layout(configuration_manager)
    return SAM2UNet(spec.image_encoder, num_input_channels, num_output_channels, conv_dim, slice_axis,
                    encoder_input_size=spec.encoder_input_size, deep_supervision=enable_deep_supervision)
