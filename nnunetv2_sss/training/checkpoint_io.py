"""Atomic checkpoint files: a crash while saving never leaves a truncated ``.pth``."""
from __future__ import annotations

import os

import torch


def save_atomically(checkpoint: dict, filename: str) -> None:
    """``torch.save`` to ``filename + '.tmp'``, then ``os.replace`` onto ``filename``."""
    temporary = filename + ".tmp"
    torch.save(checkpoint, temporary)
    os.replace(temporary, filename)
