"""Training-length overrides shared by every plugin trainer (``nnUNet_sss_*`` variables)."""
from __future__ import annotations

from nnunetv2_sss import settings


def apply_schedule_overrides(trainer) -> None:
    """Set ``num_epochs``, ``num_iterations_per_epoch`` and ``num_val_iterations_per_epoch``
    of an nnU-Net trainer from the environment, where the variables are set."""
    overrides = {
        "num_epochs": settings.num_epochs(),
        "num_iterations_per_epoch": settings.iterations_per_epoch(),
        "num_val_iterations_per_epoch": settings.val_iterations_per_epoch(),
    }
    for attribute, value in overrides.items():
        if value is not None:
            setattr(trainer, attribute, value)
