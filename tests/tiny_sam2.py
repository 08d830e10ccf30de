"""A tiny SAM-2 image encoder config (real ``sam2`` classes, few blocks, narrow) and checkpoints
in SAM-2's file format, written by the tests."""
from __future__ import annotations

import pathlib

import torch
import yaml

TINY_IMAGE_ENCODER = {
    "_target_": "sam2.modeling.backbones.image_encoder.ImageEncoder",
    "scalp": 1,
    "trunk": {
        "_target_": "sam2.modeling.backbones.hieradet.Hiera",
        "embed_dim": 8,
        "num_heads": 1,
        "stages": [1, 1, 2, 1],
        "global_att_blocks": [3],
        "window_pos_embed_bkg_spatial_size": [4, 4],
        "window_spec": [4, 4, 4, 4],
    },
    "neck": {
        "_target_": "sam2.modeling.backbones.image_encoder.FpnNeck",
        "position_encoding": {
            "_target_": "sam2.modeling.position_encoding.PositionEmbeddingSine",
            "num_pos_feats": 16, "normalize": True, "scale": None, "temperature": 10000,
        },
        "d_model": 16,
        "backbone_channel_list": [64, 32, 16, 8],
        "fpn_top_down_levels": [2, 3],
        "fpn_interp_model": "nearest",
    },
}


def write_tiny_config(folder: pathlib.Path) -> pathlib.Path:
    """A SAM-2-schema YAML (``model.image_encoder``) with the tiny Hiera."""
    path = pathlib.Path(folder) / "tiny_hiera.yaml"
    path.write_text(yaml.safe_dump({"model": {"image_encoder": TINY_IMAGE_ENCODER}}))
    return path


def write_sam2_checkpoint(path: pathlib.Path, encoder_state: dict, extra: dict = None) -> dict:
    """``torch.save({"model": ...})`` as SAM-2 publishes checkpoints: the encoder tensors under
    ``image_encoder.`` plus ``extra`` keys (e.g. mask decoder). Returns the ``model`` dict."""
    model = {f"image_encoder.{k}": v.clone() for k, v in encoder_state.items()}
    model.update(extra or {})
    torch.save({"model": model}, path)
    return model


def random_encoder_state(image_encoder: torch.nn.Module, seed: int = 0) -> dict:
    """Random tensors with the shapes of ``image_encoder``'s state dict (distinct from its init)."""
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=generator) for k, v in image_encoder.state_dict().items()}
