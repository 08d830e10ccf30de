"""Loading SAM-2 / SAM-2.1 / MedSAM-2 checkpoint weights into the SAM-2 image encoder.

SAM-2 publishes checkpoints as ``torch.save({"model": state_dict})`` of ``SAM2Base``; the
image encoder's tensors are the keys under ``image_encoder.``. Only those are used here
(the prompt encoder / mask decoder keys belong to the SSS prompt head).
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nnunetv2_sss import settings
from nnunetv2_sss.checksums import sha256_of_file
from nnunetv2_sss.errors import UserFileNotFoundError, UserValueError

IMAGE_ENCODER_PREFIX = "image_encoder."
# share of the encoder's tensors a checkpoint must fill: a released checkpoint of the right config fills all of
# them; fewer means another key layout or another Hiera, and the encoder would train from mostly random weights
MIN_LOADED_SHARE = 0.9


@dataclass
class EncoderWeightsReport:
    """What a checkpoint contributed to the image encoder (keys relative to the encoder)."""

    checkpoint: str
    sha256: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: int = 0  # checkpoint tensors outside image_encoder.*

    def summary(self) -> str:
        return (f"SAM-2 checkpoint {self.checkpoint} (sha256 {self.sha256}): loaded {len(self.loaded)} "
                f"image-encoder tensors, ignored {self.ignored} other tensors; "
                f"missing keys: {self.missing or 'none'}; unexpected keys: {self.unexpected or 'none'}")


def read_sam2_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``model`` state dict of a SAM-2 checkpoint file; clear errors for other files."""
    path = Path(path)
    where = f"{settings.SAM2_CHECKPOINT}={str(path)!r}"
    if not path.is_file():
        raise UserFileNotFoundError(f"{where}: file not found; set it to the path of a SAM-2 checkpoint (.pt) "
                                    f"or to '{settings.RANDOM_WEIGHTS}'")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserValueError(f"{where}: cannot be read as a PyTorch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        found = list(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise UserValueError(f"{where}: expected a dict with a 'model' state dict (SAM-2 checkpoint format), "
                             f"found {found}")
    return checkpoint["model"]


def _hiera_size(trunk: dict) -> tuple[int, int]:
    """(embed_dim, number of blocks) of a ``Hiera`` trunk node (``sam2``'s defaults where it sets none)."""
    from sam2.modeling.backbones.hieradet import Hiera
    defaults = inspect.signature(Hiera).parameters
    return (int(trunk.get("embed_dim", defaults["embed_dim"].default)),
            int(sum(trunk.get("stages", defaults["stages"].default))))


def probable_config(encoder_state: dict[str, torch.Tensor]) -> str:
    """Which known SAM-2 config a checkpoint's image encoder was made for, from its Hiera's width (the patch
    embedding's output channels) and number of blocks; in words, for an error message."""
    from nnunetv2_sss.networks.sam2_config import available_config_names, load_image_encoder_node
    widths = [v.shape[0] for k, v in encoder_state.items() if k.endswith("trunk.patch_embed.proj.weight")]
    blocks = {m.group(1) for m in (re.search(r"(?:^|\.)trunk\.blocks\.(\d+)\.", k) for k in encoder_state) if m}
    if not widths or not blocks:
        return "its tensors are not those of a Hiera trunk (no trunk.patch_embed / trunk.blocks)"
    size = (int(widths[0]), len(blocks))
    names = [n for n in available_config_names() if _hiera_size(load_image_encoder_node(n)["trunk"]) == size]
    found = f"as in {' / '.join(names)}" if names else "as in none of the known configs " \
        f"({', '.join(available_config_names())})"
    return f"its Hiera has embed_dim {size[0]} and {size[1]} blocks, {found}"


def load_image_encoder_weights(image_encoder: nn.Module, path: str | Path) -> EncoderWeightsReport:
    """Copy the ``image_encoder.*`` tensors of a SAM-2 checkpoint into ``image_encoder`` in place.

    Missing and unexpected keys are reported, not fatal, as long as the checkpoint fills at least
    :data:`MIN_LOADED_SHARE` of the encoder's tensors; a smaller share (e.g. keys under another prefix)
    or a tensor whose shape differs from the encoder's (checkpoint of another Hiera size) raises
    ``ValueError`` naming the checkpoint and the config it was probably made for.
    """
    state = read_sam2_state_dict(path)
    encoder_state = {k[len(IMAGE_ENCODER_PREFIX):]: v for k, v in state.items()
                     if k.startswith(IMAGE_ENCODER_PREFIX)}
    where = f"{settings.SAM2_CHECKPOINT}={str(path)!r}"
    if not encoder_state:
        raise UserValueError(f"{where}: no '{IMAGE_ENCODER_PREFIX}*' tensors in the checkpoint's 'model' dict")
    config = f"{settings.SAM2_CONFIG}={settings.sam2_config()!r}"
    own = image_encoder.state_dict()
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs encoder {tuple(own[k].shape)}"
                  for k, v in encoder_state.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        raise UserValueError(f"{where}: tensor shapes do not match the encoder built from {config} "
                             f"({probable_config(encoder_state)}; set the config of the checkpoint's Hiera size): "
                             + "; ".join(mismatched[:5]))
    loaded = sorted(k for k in encoder_state if k in own)
    if len(loaded) < MIN_LOADED_SHARE * len(own):
        extra = next((IMAGE_ENCODER_PREFIX + k for k in encoder_state if k not in own), "none")
        unfilled = next(IMAGE_ENCODER_PREFIX + k for k in own if k not in encoder_state)
        raise UserValueError(
            f"{where}: fills only {len(loaded)} of the {len(own)} tensors of the image encoder built from {config} "
            f"(at least {MIN_LOADED_SHARE:.0%} must match by name; first unmatched key of the checkpoint: {extra}, "
            f"of the encoder: {unfilled}); {probable_config(encoder_state)}: set {settings.SAM2_CONFIG} to the "
            f"config the checkpoint was made for, or use a SAM-2 checkpoint of this config")
    result = image_encoder.load_state_dict(encoder_state, strict=False)
    return EncoderWeightsReport(
        checkpoint=str(path),
        sha256=sha256_of_file(path),
        loaded=loaded,
        missing=sorted(result.missing_keys),
        unexpected=sorted(result.unexpected_keys),
        ignored=len(state) - len(encoder_state),
    )
