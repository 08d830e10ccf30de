"""Every ``nnUNet_sss_*`` environment variable of the plugin, read in one place.

Trainers and commands never read ``os.environ`` themselves; they call the functions here. The variables and
what they do: docs/environment_variables.md (tests/test_docs.py checks that it lists exactly the variables
named here).
"""
from __future__ import annotations

import os
from typing import Optional

from nnunetv2_sss.errors import UserFileNotFoundError, UserRuntimeError, UserValueError

NUM_EPOCHS = "nnUNet_sss_num_epochs"
ITERATIONS_PER_EPOCH = "nnUNet_sss_iterations_per_epoch"
VAL_ITERATIONS_PER_EPOCH = "nnUNet_sss_val_iterations_per_epoch"
SAVE_EVERY = "nnUNet_sss_save_every"
SAM2_CONFIG = "nnUNet_sss_sam2_config"
SAM2_CHECKPOINT = "nnUNet_sss_sam2_checkpoint"
TEXT_ENCODER = "nnUNet_sss_text_encoder"
SEED = "nnUNet_sss_seed"
PSEUDO_LABEL_FOLDS = "nnUNet_sss_pseudo_label_folds"
CPU_THREADS = "nnUNet_sss_cpu_threads"

DEFAULT_SAM2_CONFIG = "sam2.1_hiera_s"
DEFAULT_SAVE_EVERY = 1
RANDOM_WEIGHTS = "random"


# the option each variable overrides (training/options.py: the variable wins over every other source)
OPTION_VARIABLES = {NUM_EPOCHS: "num_epochs", ITERATIONS_PER_EPOCH: "num_iterations_per_epoch",
                    VAL_ITERATIONS_PER_EPOCH: "num_val_iterations_per_epoch", SAVE_EVERY: "save_every"}
EMPTY = object()  # a variable that is set to "" (an undefined shell variable): the default applies


def option_variable(name: str):
    """The value of the option variable ``name`` as a whole number >= 1; ``None`` when unset,
    :data:`EMPTY` when set but empty."""
    if name not in os.environ:
        return None
    raw = os.environ[name].strip()
    if not raw:
        return EMPTY
    try:
        value = int(raw)
    except ValueError:
        raise UserValueError(f"environment variable {name}={raw!r} is not an integer: set it to a whole "
                             f"number >= 1 or unset it") from None
    if value < 1:
        raise UserValueError(f"environment variable {name}={raw!r} must be >= 1: set it to a whole number "
                             f">= 1 or unset it")
    return value


def _positive_int(name: str) -> Optional[int]:
    """The value of ``name`` as a positive int, ``None`` when unset or empty."""
    value = option_variable(name)
    return None if value is EMPTY else value


def num_epochs() -> Optional[int]:
    return _positive_int(NUM_EPOCHS)


def iterations_per_epoch() -> Optional[int]:
    return _positive_int(ITERATIONS_PER_EPOCH)


def cpu_threads() -> Optional[int]:
    """torch's CPU threads of a plugin training on the CPU (``None``: nnU-Net's, one per core)."""
    return _positive_int(CPU_THREADS)


def sam2_config() -> str:
    return os.environ.get(SAM2_CONFIG, "").strip() or DEFAULT_SAM2_CONFIG


def sam2_checkpoint() -> Optional[str]:
    """Path of the SAM-2 checkpoint, the string ``random``, or ``None`` when unset."""
    return os.environ.get(SAM2_CHECKPOINT, "").strip() or None


def require_sam2_checkpoint() -> str:
    """``random`` or the path of an existing SAM-2 checkpoint file; a clear error otherwise.

    Called when a SAM-2 trainer starts training (not at prediction, where the weights come
    from the nnU-Net checkpoint).
    """
    value = sam2_checkpoint()
    if value is None:
        raise UserRuntimeError(
            f"{SAM2_CHECKPOINT} is not set. Set it to the path of a SAM-2 / SAM-2.1 / MedSAM-2 checkpoint "
            f"(.pt, a dict with a 'model' state dict) that matches {SAM2_CONFIG}={sam2_config()!r}, "
            f"or to '{RANDOM_WEIGHTS}' to start the SAM-2 encoder from random weights.")
    if value != RANDOM_WEIGHTS and not os.path.isfile(os.path.expanduser(value)):
        raise UserFileNotFoundError(f"{SAM2_CHECKPOINT}={value!r}: file not found; set it to the path of a "
                                    f"SAM-2 checkpoint (.pt) or to '{RANDOM_WEIGHTS}'")
    return value if value == RANDOM_WEIGHTS else os.path.expanduser(value)


def text_encoder() -> Optional[str]:
    """Local folder of a Hugging Face text encoder, ``None`` for the offline default."""
    return os.environ.get(TEXT_ENCODER, "").strip() or None


def seed() -> Optional[int]:
    """The training seed (a whole number >= 0), ``None`` when unset or empty (unseeded, nnU-Net's default)."""
    raw = os.environ.get(SEED, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise UserValueError(f"environment variable {SEED}={raw!r} is not an integer: set it to a whole number "
                             f">= 0 or unset it") from None
    if not 0 <= value < 2 ** 32:
        raise UserValueError(f"environment variable {SEED}={raw!r} must be between 0 and 2**32 - 1: set it to a "
                             f"whole number in that range or unset it")
    return value


def pseudo_label_folds() -> list:
    """The folds of the teacher ensemble whose pseudo-labels a self-training student reads (``'all'`` or
    whole numbers); ``[]`` when unset or empty (the student's own fold)."""
    raw = os.environ.get(PSEUDO_LABEL_FOLDS, "").split()
    try:
        return [f if f == 'all' else int(f) for f in raw]
    except ValueError:
        raise UserValueError(f"{PSEUDO_LABEL_FOLDS}={os.environ[PSEUDO_LABEL_FOLDS]!r}: give fold numbers, e.g. "
                             f"'0 1 2 3 4'") from None
