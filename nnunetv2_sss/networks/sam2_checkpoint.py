"""Loading SAM-2 / SAM-2.1 / MedSAM-2 checkpoint weights into the SAM-2 image encoder.

SAM-2 publishes checkpoints as ``torch.save({"model": state_dict})`` of ``SAM2Base``; the
image encoder's tensors are the keys under ``image_encoder.``. Only those are used here
(the prompt encoder / mask decoder keys belong to the SSS prompt head).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nnunetv2_sss import settings
from nnunetv2_sss.errors import UserFileNotFoundError, UserValueError

IMAGE_ENCODER_PREFIX = "image_encoder."


def sha256_of_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


def load_image_encoder_weights(image_encoder: nn.Module, path: str | Path) -> EncoderWeightsReport:
    """Copy the ``image_encoder.*`` tensors of a SAM-2 checkpoint into ``image_encoder`` in place.

    Missing and unexpected keys are reported, not fatal; tensors whose shape differs from
    the encoder's (checkpoint of another Hiera size) raise ``ValueError``.
    """
    state = read_sam2_state_dict(path)
    encoder_state = {k[len(IMAGE_ENCODER_PREFIX):]: v for k, v in state.items()
                     if k.startswith(IMAGE_ENCODER_PREFIX)}
    where = f"{settings.SAM2_CHECKPOINT}={str(path)!r}"
    if not encoder_state:
        raise UserValueError(f"{where}: no '{IMAGE_ENCODER_PREFIX}*' tensors in the checkpoint's 'model' dict")
    own = image_encoder.state_dict()
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs encoder {tuple(own[k].shape)}"
                  for k, v in encoder_state.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        raise UserValueError(f"{where}: tensor shapes do not match the encoder built from "
                             f"{settings.SAM2_CONFIG}={settings.sam2_config()!r} (set the config of the "
                             f"checkpoint's Hiera size): " + "; ".join(mismatched[:5]))
    result = image_encoder.load_state_dict(encoder_state, strict=False)
    return EncoderWeightsReport(
        checkpoint=str(path),
        sha256=sha256_of_file(path),
        loaded=sorted(k for k in encoder_state if k in own),
        missing=sorted(result.missing_keys),
        unexpected=sorted(result.unexpected_keys),
        ignored=len(state) - len(encoder_state),
    )
