"""Vision encoder of CPS4: a small ViT that returns one token per image patch.

Non-overlapping ``patch_size`` x ``patch_size`` patches -> linear embedding -> learned
position embedding -> pre-norm transformer blocks -> LayerNorm. No class token: the
patch tokens are what CPS4 compares with the class prompts. The position embedding is
learned for ``grid_size`` and resized bicubically for other grids.
Trained from scratch by default; ``load_vision_weights`` loads a local state dict.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_sss.errors import UserFileNotFoundError, UserValueError


@dataclass
class ViTConfig:
    in_channels: int = 1
    patch_size: int = 16
    grid_size: Tuple[int, int] = (32, 32)  # patch grid the position embedding is learned for
    dim: int = 192
    depth: int = 6
    heads: int = 3
    mlp_ratio: float = 4.0


class PatchViT(nn.Module):
    """``x [B, C, H, W]`` -> patch tokens ``[B, H/p, W/p, dim]``; H and W multiples of p."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Conv2d(cfg.in_channels, cfg.dim, cfg.patch_size, stride=cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.dim, *cfg.grid_size))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, int(cfg.dim * cfg.mlp_ratio), dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.cfg.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of the ViT patch size {p}")
        tokens = self.patch_embed(x)                                    # [B, dim, h, w]
        h, w = tokens.shape[-2:]
        pos = self.pos_embed
        if (h, w) != tuple(pos.shape[-2:]):
            pos = F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False)
        tokens = (tokens + pos).flatten(2).transpose(1, 2)              # [B, h*w, dim]
        tokens = self.norm(self.blocks(tokens))
        return tokens.reshape(x.shape[0], h, w, -1)


def load_vision_weights(model: PatchViT, path: Union[str, Path]) -> None:
    """Load a local state dict (a plain one, or under ``state_dict``/``model``) into ``model``."""
    path = Path(path)
    if not path.is_file():
        raise UserFileNotFoundError(f"vision encoder weights {path} do not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise UserValueError(f"vision encoder weights {path} do not fit the ViT {model.cfg}: {e}") from None
    if result.missing_keys or result.unexpected_keys:
        raise UserValueError(f"vision encoder weights {path} do not fit the ViT {model.cfg}: "
                             f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
