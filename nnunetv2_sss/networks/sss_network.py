"""The SSS network: SAM-2 U-Net with DFE between encoder and decoder, plus the SAM-2 prompt head.

``forward(x) = decoder(DFE(encoder(x)))`` with the single-view DFE (``DFE(F, F)``), so
training on labeled patches, the teacher and ``nnUNetv2_predict`` share one path; the
semi-supervised trainer calls ``encoder``, ``fuse(features_a, features_b)`` and ``decoder``
itself for the two strong views. DFE acts on the SAM-2 levels (strides 4..32), not on the
full/half-resolution conv stem, which is not part of SAM-2's encoder. The prompt head is
only used during training (and by ``nnUNetv2_sss_predict_refine``); it is part of the
network so that its weights travel in nnU-Net's checkpoint.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from nnunetv2_sss.sss.dfe import DiscriminativeFeatureEnhancement
from nnunetv2_sss.networks.prompt_head import SAM2PromptHead
from nnunetv2_sss.networks.sam2_unet import STEM_STRIDES, SAM2UNet, configuration_layout

SAM_LEVELS_FOR_PROMPTS = 3  # strides 4, 8, 16 feed the mask decoder


class SSSNetwork(SAM2UNet):
    def __init__(self, image_encoder_node: dict, input_channels: int, num_classes: int, conv_dim: int,
                 slice_axis: int = 0, encoder_input_size: Optional[int] = None, deep_supervision: bool = True,
                 use_dfe: bool = True, prompt_slice_size: Optional[Sequence[int]] = None):
        super().__init__(image_encoder_node, input_channels, num_classes, conv_dim, slice_axis, encoder_input_size,
                         deep_supervision)
        self.first_sam_level = len(STEM_STRIDES)
        levels = range(self.first_sam_level, len(self.encoder.output_channels))
        self.fusion = DiscriminativeFeatureEnhancement(self.encoder.output_channels, conv_dim, scales=list(levels)) \
            if use_dfe else None
        d_model = self.encoder.output_channels[self.first_sam_level]
        self.prompt_head = SAM2PromptHead(d_model, prompt_slice_size) if prompt_slice_size is not None else None

    def fuse(self, features_a: List[torch.Tensor], features_b: Optional[List[torch.Tensor]] = None):
        """Decoder inputs of view ``a`` (``DFE(F_a, F_b)``; without DFE, ``F_a``)."""
        return features_a if self.fusion is None else self.fusion(features_a, features_b)

    def fuse_pair(self, features_a: List[torch.Tensor], features_b: List[torch.Tensor]):
        """``(DFE(F_a, F_b), DFE(F_b, F_a))`` sharing the MLP work."""
        return (features_a, features_b) if self.fusion is None else self.fusion.pair(features_a, features_b)

    def forward(self, x: torch.Tensor):
        return self.decoder(self.fuse(self.encoder(x)))

    def prompt_levels(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        """Per-slice SAM-2 levels at strides 4, 8, 16: ``(B * S, d_model, h, w)``, slice-major per case
        (slice ``s`` of case ``b`` is row ``b * S + s``); 2-D patches: one slice per case."""
        levels = features[self.first_sam_level: self.first_sam_level + SAM_LEVELS_FOR_PROMPTS]
        return [self.encoder.sam2.to_slices(level) for level in levels]


def prompt_slice_size(configuration_manager) -> List[int]:
    """In-plane (H, W) of a configuration's patches as the SAM-2 encoder slices them."""
    conv_dim, slice_axis = configuration_layout(configuration_manager)
    patch = list(configuration_manager.patch_size)
    return patch if conv_dim == 2 else [n for axis, n in enumerate(patch) if axis != slice_axis]
