"""CPS4 vision–text model: class-specific attention maps of an image.

``A_k[j] = sigmoid(<v_j, t_k> / T)`` with ``v_j`` the projected, L2-normalised ViT token of
patch ``j`` and ``t_k`` the projected, L2-normalised prompt embedding of class ``k`` (so the
inner product is a cosine in [-1, 1]). ``1/T = exp(logit_scale)`` is learned (initial
``T = init_temperature``, ``1/T`` capped at 100 as in CLIP). The frozen text encoder's
prompt embeddings are a buffer: only the linear text projection is trained on the text side.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_sss.cps4.vision import PatchViT, ViTConfig

MAX_INVERSE_TEMPERATURE = 100.0


@dataclass
class ClassPromptConfig:
    vit: ViTConfig = field(default_factory=ViTConfig)
    text_dim: int = 384
    embed_dim: int = 128
    init_temperature: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ClassPromptConfig":
        vit = dict(d["vit"], grid_size=tuple(d["vit"]["grid_size"]))
        return cls(**dict(d, vit=ViTConfig(**vit)))


class ClassPromptModel(nn.Module):
    """Image ``[B, C, H, W]`` -> attention logits/maps ``[B, K, H/p, W/p]`` for ``K`` classes."""

    def __init__(self, cfg: ClassPromptConfig, text_embeddings: torch.Tensor):
        super().__init__()
        if text_embeddings.ndim != 2 or text_embeddings.shape[1] != cfg.text_dim:
            raise ValueError(f"text embeddings of shape {tuple(text_embeddings.shape)} do not match "
                             f"text_dim={cfg.text_dim}")
        self.cfg = cfg
        self.vision = PatchViT(cfg.vit)
        self.vision_proj = nn.Linear(cfg.vit.dim, cfg.embed_dim)
        self.text_proj = nn.Linear(cfg.text_dim, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))
        self.register_buffer("text_embeddings", text_embeddings.detach().float().clone())

    @property
    def num_classes(self) -> int:
        return self.text_embeddings.shape[0]

    def class_tokens(self) -> torch.Tensor:
        """``t_k``: ``[K, E]``, unit length."""
        return F.normalize(self.text_proj(self.text_embeddings), dim=-1)

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``v_j``: ``[B, h, w, E]``, unit length."""
        return F.normalize(self.vision_proj(self.vision(x)), dim=-1)

    def attention_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``<v_j, t_k> / T`` as ``[B, K, h, w]`` (the sigmoid's argument)."""
        scale = self.logit_scale.exp().clamp(max=MAX_INVERSE_TEMPERATURE)
        return scale * torch.einsum("bhwe,ke->bkhw", self.patch_tokens(x), self.class_tokens())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attention maps ``A [B, K, h, w]`` in (0, 1)."""
        return torch.sigmoid(self.attention_logits(x))
