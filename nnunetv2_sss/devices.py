"""The torch device of the plugin's commands (``-device`` / ``--device``)."""
from __future__ import annotations

from typing import Optional

from nnunetv2_sss.errors import UserRuntimeError

DEVICES = ("cpu", "cuda", "mps")


def torch_device(requested: Optional[str], option: str = "-device") -> str:
    """``requested`` (one of :data:`DEVICES`), or for ``None`` cuda when torch sees a GPU, else cpu. A
    requested device that torch cannot use raises :class:`UserRuntimeError` naming ``option``."""
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[requested]:
        raise UserRuntimeError(f"{option} {requested}: torch {torch.__version__} cannot use this device on this "
                               f"machine; use {option} cpu, or leave {option} out (cuda if available, else cpu)")
    return requested
