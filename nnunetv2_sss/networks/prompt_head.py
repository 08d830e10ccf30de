"""SAM-2's prompt encoder and mask decoder on the per-slice features of the SAM-2 encoder.

The head decodes one mask per prompt (a box plus one positive point, SAM-2's prompt
format) from one slice's FPN features exactly as ``sam2.sam2_image_predictor.SAM2ImagePredictor``
does for an image (``predict(box=..., point_coords=..., multimask_output=False)``):

- decoder inputs as ``SAM2Base.forward_image`` / ``SAM2ImagePredictor.set_image`` prepare them:
  the stride-16 level plus SAM-2's learned ``no_mem_embed`` (``directly_add_no_mem_embed``,
  true in every released config) is the image embedding; the stride-4 and stride-8 levels,
  projected by the decoder's ``conv_s0`` / ``conv_s1``, are its high-resolution features;
- prompts as ``SAM2ImagePredictor._predict`` encodes them: the box corners as two points
  with labels 2 and 3, then the point(s) (label 1 = positive), through the prompt encoder's
  point path with ``boxes=None`` -- so SAM-2's padding point is appended (4 sparse tokens
  for a box and one point);
- the mask decoder built with ``SAM2Base._build_sam_heads``'s arguments, including the
  ``dynamic_multimask_via_stability`` settings that ``sam2.build_sam.build_sam2`` adds
  (``apply_postprocessing``): with ``multimask_output=False`` and the decoder in eval mode,
  an unstable single-mask output falls back to the best of the three multimask outputs
  (in train mode SAM-2 always uses the single-mask token; so does this head).

The ``sam_prompt_encoder.*``, ``sam_mask_decoder.*`` and ``no_mem_embed`` tensors of a SAM-2
checkpoint load into it (:func:`load_prompt_head_weights`).

Coordinates are pixels of the slice the encoder saw (before padding to Hiera's stride, or
in the slice's own frame when the encoder resamples slices: its levels are resampled back
to ``ceil(n / stride)``); SAM-2's model input frame here is the slice zero-padded to
``16 * ceil(n / 16)``, which the prompt encoder's ``input_image_size`` is set to.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

HEAD_PREFIXES = ("sam_prompt_encoder.", "sam_mask_decoder.", "no_mem_embed")

# ``SAM2Base`` arguments that shape the prompt head, as every released SAM-2 / SAM-2.1 config
# (configs/sam2{,.1}/*_hiera_{t,s,b+,l}.yaml) sets them ...
SAM2_MODEL_SETTINGS = {
    "directly_add_no_mem_embed": True,
    "iou_prediction_use_sigmoid": True,
    "pred_obj_scores": True,
    "pred_obj_scores_mlp": True,
    "use_multimask_token_for_obj_ptr": True,
}
# ... and the mask decoder's extra arguments that ``build_sam2(..., apply_postprocessing=True)``
# (its default; also used by SAM2ImagePredictor.from_pretrained) adds to them.
SAM2_DECODER_EXTRA_ARGS = {
    "dynamic_multimask_via_stability": True,
    "dynamic_multimask_stability_delta": 0.05,
    "dynamic_multimask_stability_thresh": 0.98,
}
POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = 1, 2, 3  # SAM-2 point labels


def head_settings_from_config(name_or_path: str) -> dict:
    """The :class:`SAM2PromptHead` keyword arguments of a SAM-2 config (name or YAML path, as for
    ``nnUNet_sss_sam2_config``): the ``model`` node's values where it sets them, its
    ``sam_mask_decoder_extra_args`` over ``build_sam2``'s post-processing values, and the
    SAM-2.1 values for what it does not set. The plugin's reduced ``sam2_hiera_demo`` config
    has no SAM-head settings (random weights only), so it gets the SAM-2.1 values."""
    from omegaconf import OmegaConf

    from nnunetv2_sss.networks.sam2_config import read_config

    model = OmegaConf.to_container(read_config(name_or_path), resolve=True).get("model") or {}
    settings = {k: model.get(k, v) for k, v in SAM2_MODEL_SETTINGS.items()}
    settings.update({k: (model.get("sam_mask_decoder_extra_args") or {}).get(k, v)
                     for k, v in SAM2_DECODER_EXTRA_ARGS.items()})
    return settings


class SAM2PromptHead(nn.Module):
    """Box + point prompts -> mask logits for slices of ``slice_size`` pixels.

    ``d_model``: the FPN width (SAM-2's ``hidden_dim``); ``slice_size``: (H, W) of the slices
    the encoder saw (before padding to Hiera's stride). The keyword arguments are the
    ``SAM2Base`` / mask-decoder settings (defaults: every released SAM-2.1 config as built by
    ``build_sam2``; :func:`head_settings_from_config` reads them from a config).
    """

    def __init__(self, d_model: int, slice_size: Sequence[int], *,
                 directly_add_no_mem_embed: bool = True, iou_prediction_use_sigmoid: bool = True,
                 pred_obj_scores: bool = True, pred_obj_scores_mlp: bool = True,
                 use_multimask_token_for_obj_ptr: bool = True, dynamic_multimask_via_stability: bool = True,
                 dynamic_multimask_stability_delta: float = 0.05, dynamic_multimask_stability_thresh: float = 0.98):
        super().__init__()
        from sam2.modeling.sam.mask_decoder import MaskDecoder
        from sam2.modeling.sam.prompt_encoder import PromptEncoder
        from sam2.modeling.sam.transformer import TwoWayTransformer

        # as SAM2Base._build_sam_heads (use_high_res_features_in_sam=True: this head always uses
        # the stride-4/8 levels, as every released config does)
        self.sam_prompt_encoder = PromptEncoder(embed_dim=d_model, image_embedding_size=(1, 1),
                                                input_image_size=(16, 16), mask_in_chans=16)
        self.set_slice_size(slice_size)
        self.sam_mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=d_model, mlp_dim=2048, num_heads=8),
            transformer_dim=d_model, iou_head_depth=3, iou_head_hidden_dim=256, use_high_res_features=True,
            iou_prediction_use_sigmoid=iou_prediction_use_sigmoid, pred_obj_scores=pred_obj_scores,
            pred_obj_scores_mlp=pred_obj_scores_mlp, use_multimask_token_for_obj_ptr=use_multimask_token_for_obj_ptr,
            dynamic_multimask_via_stability=dynamic_multimask_via_stability,
            dynamic_multimask_stability_delta=dynamic_multimask_stability_delta,
            dynamic_multimask_stability_thresh=dynamic_multimask_stability_thresh)
        self.directly_add_no_mem_embed = directly_add_no_mem_embed
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

    def image_features(self, levels: Sequence[torch.Tensor], slice_index: torch.Tensor
                       ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The decoder's image inputs for each prompt, as ``SAM2ImagePredictor.set_image`` makes them:
        ``(image_embed (P, d, h, w), [conv_s0(stride 4) (P, d/8, 4h, 4w), conv_s1(stride 8) (P, d/4, 2h, 2w)])``."""
        s4, s8, s16 = (self._padded(level[slice_index], stride) for level, stride in zip(levels, (4, 8, 16)))
        if self.directly_add_no_mem_embed:
            s16 = s16 + self.no_mem_embed.view(1, -1, 1, 1)
        return s16, [self.sam_mask_decoder.conv_s0(s4), self.sam_mask_decoder.conv_s1(s8)]

    def encode_prompts(self, boxes: Optional[torch.Tensor], points: Optional[torch.Tensor],
                       point_labels: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(sparse (P, T, d), dense (P, d, h, w))`` prompt embeddings as ``SAM2ImagePredictor._predict``
        computes them: box corners as points labelled 2, 3, then the points, padding point appended
        (T = 4 for a box and one point).

        boxes: ``(P, 4)`` (x0, y0, x1, y1) or None; points: ``(P, 2)`` or ``(P, K, 2)`` (x, y) or None;
        point_labels: ``(P, K)`` (1 positive, 0 negative), default all positive.
        """
        coords, labels = [], []
        if boxes is not None:
            coords.append(boxes.float().reshape(-1, 2, 2))
            labels.append(torch.tensor([[BOX_TOP_LEFT, BOX_BOTTOM_RIGHT]], dtype=torch.int32,
                                       device=boxes.device).expand(len(boxes), 2))
        if points is not None:
            points = points.float().reshape(len(points), -1, 2)
            coords.append(points)
            labels.append(torch.full(points.shape[:2], POSITIVE, dtype=torch.int32, device=points.device)
                          if point_labels is None else point_labels.to(torch.int32).reshape(points.shape[:2]))
        if not coords:
            raise ValueError("a prompt needs a box or points")
        return self.sam_prompt_encoder(points=(torch.cat(coords, 1), torch.cat(labels, 1)), boxes=None, masks=None)

    def decode(self, levels: Sequence[torch.Tensor], slice_index: torch.Tensor, boxes: Optional[torch.Tensor],
               points: Optional[torch.Tensor], point_labels: Optional[torch.Tensor] = None
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SAM-2's mask decoder, one mask per prompt (``multimask_output=False``): ``(low-res mask logits
        (P, 4h, 4w), predicted IoU (P,), object-score logits (P,))`` with ``h, w = ceil(H / 16), ceil(W / 16)``.
        The logits are not clamped (``SAM2ImagePredictor`` clamps its returned low-res logits to ±32)."""
        image_embed, high_res = self.image_features(levels, slice_index)
        sparse, dense = self.encode_prompts(boxes, points, point_labels)
        masks, iou, _, object_score = self.sam_mask_decoder(
            image_embeddings=image_embed, image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
            repeat_image=False, high_res_features=high_res)
        return masks[:, 0], iou[:, 0], object_score[:, 0]

    def low_res_logits(self, levels: Sequence[torch.Tensor], slice_index: torch.Tensor,
                       boxes: Optional[torch.Tensor], points: Optional[torch.Tensor],
                       point_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The decoder's low-resolution mask logits ``(P, 4 * ceil(H / 16), 4 * ceil(W / 16))`` (stride 4,
        covering the slice padded to a multiple of 16)."""
        return self.decode(levels, slice_index, boxes, points, point_labels)[0]

    def upsample(self, low_res: torch.Tensor) -> torch.Tensor:
        """Low-res logits ``(P, h', w')`` -> ``(P, H, W)`` slice logits (bilinear to the padded input size as
        ``SAM2Transforms.postprocess_masks`` does to the model input, then cropped to the slice)."""
        masks = F.interpolate(low_res[:, None].float(), size=[16 * e for e in self.embedding_size],
                              mode="bilinear", align_corners=False)
        return masks[:, 0, : self.slice_size[0], : self.slice_size[1]]

    def forward(self, levels: Sequence[torch.Tensor], slice_index: torch.Tensor, boxes: Optional[torch.Tensor],
                points: Optional[torch.Tensor], point_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mask logits ``(P, H, W)`` for ``P`` prompts.

        levels: SAM-2 FPN levels at strides 4, 8, 16 of ``N`` slices, ``(N, d_model, ceil(H/s), ceil(W/s))``
        (raw neck outputs: no ``conv_s0/1``, no ``no_mem_embed``); slice_index: long ``(P,)``, the slice of
        each prompt; boxes: ``(P, 4)`` as (x0, y0, x1, y1) pixel coordinates; points: ``(P, 2)`` positive
        points as (x, y) (or ``(P, K, 2)`` with ``point_labels`` ``(P, K)``).
        """
        return self.upsample(self.low_res_logits(levels, slice_index, boxes, points, point_labels))


def load_prompt_head_weights(head: SAM2PromptHead, path: str | Path) -> Tuple[list, list]:
    """Copy a SAM-2 checkpoint's prompt-encoder / mask-decoder / ``no_mem_embed`` tensors into ``head``.

    Returns ``(missing, unexpected)`` key lists (reported by the caller, not fatal).
    """
    from nnunetv2_sss.networks.sam2_checkpoint import read_sam2_state_dict

    state = {k: v for k, v in read_sam2_state_dict(path).items() if k.startswith(HEAD_PREFIXES)}
    result = head.load_state_dict(state, strict=False)
    return sorted(result.missing_keys), sorted(result.unexpected_keys)
