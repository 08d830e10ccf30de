"""SAM-2's prompt encoder and mask decoder on the per-slice features of the SAM-2 encoder.

The head decodes one binary mask per prompt (a box plus one positive point, SAM-2's
prompt format) from one slice's FPN features: the stride-16 level (plus SAM-2's learned
``no_mem_embed``, as SAM-2 does for a frame without memory) is the image embedding, the
stride-4 and stride-8 levels are the decoder's high-resolution features. The modules are
built exactly as ``SAM2Base._build_sam_heads`` builds them for the released configs
(high-res features, object-score head, sigmoid IoU), so the ``sam_prompt_encoder.*``,
``sam_mask_decoder.*`` and ``no_mem_embed`` tensors of a SAM-2 checkpoint load into them.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

HEAD_PREFIXES = ("sam_prompt_encoder.", "sam_mask_decoder.", "no_mem_embed")


class SAM2PromptHead(nn.Module):
    """Box + point prompts -> mask logits for slices of ``slice_size`` pixels.

    ``slice_size``: (H, W) of the slices the encoder saw (before padding to Hiera's stride).
    """

    def __init__(self, d_model: int, slice_size: Sequence[int]):
        super().__init__()
        from sam2.modeling.sam.mask_decoder import MaskDecoder
        from sam2.modeling.sam.prompt_encoder import PromptEncoder
        from sam2.modeling.sam.transformer import TwoWayTransformer

        self.sam_prompt_encoder = PromptEncoder(embed_dim=d_model, image_embedding_size=(1, 1),
                                                input_image_size=(16, 16), mask_in_chans=16)
        self.set_slice_size(slice_size)
        self.sam_mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=d_model, mlp_dim=2048, num_heads=8),
            transformer_dim=d_model, iou_head_depth=3, iou_head_hidden_dim=256, use_high_res_features=True,
            iou_prediction_use_sigmoid=True, pred_obj_scores=True, pred_obj_scores_mlp=True,
            use_multimask_token_for_obj_ptr=True)
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, d_model))
        nn.init.trunc_normal_(self.no_mem_embed, std=0.02)

    def set_slice_size(self, slice_size: Sequence[int]) -> None:
        """Decode slices of ``(H, W)`` pixels (no parameter depends on it: whole slices of any size
        can be refined by a head trained on patches)."""
        self.slice_size = tuple(int(s) for s in slice_size)
        self.embedding_size = tuple(math.ceil(s / 16) for s in self.slice_size)
        encoder = self.sam_prompt_encoder
        encoder.image_embedding_size = self.embedding_size
        encoder.input_image_size = tuple(16 * e for e in self.embedding_size)
        encoder.mask_input_size = tuple(4 * e for e in self.embedding_size)

    def _padded(self, level: torch.Tensor, stride: int) -> torch.Tensor:
        """Zero-pad a level cropped to ``ceil(n / stride)`` back to ``embedding * 16 / stride``."""
        size = [e * 16 // stride for e in self.embedding_size]
        return F.pad(level, (0, size[1] - level.shape[-1], 0, size[0] - level.shape[-2]))

    def forward(self, levels: Sequence[torch.Tensor], slice_index: torch.Tensor, boxes: torch.Tensor,
                points: torch.Tensor) -> torch.Tensor:
        """Mask logits ``(P, H, W)`` for ``P`` prompts.

        levels: SAM-2 FPN levels at strides 4, 8, 16 of ``N`` slices, ``(N, d_model, ceil(H/s), ceil(W/s))``;
        slice_index: long ``(P,)``, the slice of each prompt; boxes: ``(P, 4)`` as (x0, y0, x1, y1)
        pixel coordinates; points: ``(P, 2)`` positive points as (x, y).
        """
        s4, s8, s16 = (self._padded(level[slice_index], stride) for level, stride in zip(levels, (4, 8, 16)))
        s16 = s16 + self.no_mem_embed.view(1, -1, 1, 1)
        high_res = [self.sam_mask_decoder.conv_s0(s4), self.sam_mask_decoder.conv_s1(s8)]
        sparse, dense = self.sam_prompt_encoder(
            points=(points[:, None].float(), torch.ones(len(points), 1, dtype=torch.int32, device=points.device)),
            boxes=boxes.float(), masks=None)
        masks, _, _, _ = self.sam_mask_decoder(
            image_embeddings=s16, image_pe=self.sam_prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, multimask_output=False, repeat_image=False, high_res_features=high_res)
        masks = F.interpolate(masks.float(), size=[4 * e * 4 for e in self.embedding_size], mode="bilinear",
                              align_corners=False)
        return masks[:, 0, : self.slice_size[0], : self.slice_size[1]]


def load_prompt_head_weights(head: SAM2PromptHead, path: str | Path) -> Tuple[list, list]:
    """Copy a SAM-2 checkpoint's prompt-encoder / mask-decoder / ``no_mem_embed`` tensors into ``head``.

    Returns ``(missing, unexpected)`` key lists (reported by the caller, not fatal).
    """
    from nnunetv2_sss.networks.sam2_checkpoint import read_sam2_state_dict

    state = {k: v for k, v in read_sam2_state_dict(path).items() if k.startswith(HEAD_PREFIXES)}
    result = head.load_state_dict(state, strict=False)
    return sorted(result.missing_keys), sorted(result.unexpected_keys)
