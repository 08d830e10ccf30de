"""Checkpoint files and the state that makes ``--c`` continue where a run stopped.

- :func:`save_atomically`: a crash (or ``kill -9``) while saving never leaves a truncated
  ``.pth``: the file is written to ``<name>.tmp``, flushed to disk, then renamed onto
  ``<name>``, so the previous checkpoint stays intact until the new one is complete; a full
  disk removes the partial file and stops with one error line
  (:func:`nnunetv2_sss.atomic_files.write_atomically`).
- :func:`capture_rng_state` / :func:`restore_rng_state`: Python's ``random``, NumPy's global
  generator, torch's CPU generator, the CUDA generator of the training device, and the
  trainer's own generators (``seeding.trainer_generators``: attributes holding a
  ``numpy.random.Generator`` / ``RandomState`` or a ``torch.Generator``, e.g.
  ``nnUNetTrainerSSS.prompt_rng``). On ``--c`` they replace what ``nnUNet_sss_seed`` set.
  nnU-Net's loaders draw from the global generators; with ``nnUNet_n_proc_DA=0`` (loading
  in the training process) a resumed run therefore draws the same patches and
  augmentations as an uninterrupted one. Data-augmentation worker processes have
  generators of their own that no checkpoint can capture.
"""
from __future__ import annotations

import random
from typing import Dict, Optional

import numpy as np
import torch

from nnunetv2_sss.atomic_files import write_atomically


def save_atomically(checkpoint: dict, filename: str) -> None:
    """``torch.save`` through :func:`~nnunetv2_sss.atomic_files.write_atomically`."""
    write_atomically(filename, lambda f: torch.save(checkpoint, f),
                     then="continue the training with nnU-Net's --c (the same nnUNetv2_train command plus --c)")


def _generator_state(generator):
    if isinstance(generator, np.random.Generator):
        return generator.bit_generator.state
    return generator.get_state()  # numpy RandomState, torch.Generator


def _set_generator_state(generator, state) -> None:
    if isinstance(generator, np.random.Generator):
        generator.bit_generator.state = state
    else:  # a torch state loaded with map_location='cuda' must go back to the CPU first
        generator.set_state(state.cpu() if torch.is_tensor(state) else state)


def capture_rng_state(device: Optional[torch.device] = None, generators: Optional[Dict[str, object]] = None) -> dict:
    """Every random generator's state (see the module docstring)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "cuda": None, "generators": {name: _generator_state(g) for name, g in (generators or {}).items()}}
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict, device: Optional[torch.device] = None,
                      generators: Optional[Dict[str, object]] = None) -> None:
    """Put back what :func:`capture_rng_state` returned (generators missing on either side are skipped)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and device is not None and device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    saved = state.get("generators", {})
    for name, generator in (generators or {}).items():
        if name in saved:
            _set_generator_state(generator, saved[name])
