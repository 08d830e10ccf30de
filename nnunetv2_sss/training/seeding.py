"""The training seed ``nnUNet_sss_seed``: every random generator of a training from one number.

``nnUNetTrainerPlugin`` applies it (``seed_everything``) when the trainer is initialised, before the
network is built, and seeds the data-augmentation workers before they start:

- Python's ``random``, NumPy's global generator (nnU-Net's data loader draws cases, crops and
  foreground oversampling from it; the unlabeled loader too), torch's CPU generator and the
  CUDA generators (weight initialisation, batchgeneratorsv2's transforms draw from torch and
  NumPy, dropout, the SSL methods' noise);
- the trainer's own generators (every attribute of the trainer or of its objective that holds a
  ``numpy.random.Generator`` / ``RandomState`` or a ``torch.Generator``, e.g. ``cutmix_rng``,
  ``prompt_rng``, ``mixup_rng``),
  each from ``(seed, attribute name)``, so adding a generator changes no other stream;
- the worker processes of nnU-Net's ``NonDetMultiThreadedAugmenter`` (``nnUNet_n_proc_DA > 0``),
  which nnU-Net starts with ``seeds=None`` (NumPy from OS entropy, torch's state inherited by
  fork): each worker gets ``(seed, loader name, worker index, epoch at start)``.

With ``nnUNet_n_proc_DA=0`` (loading in the training process) a CPU training is then repeatable
bit for bit. What stays nondeterministic is listed in docs/environment_variables.md.
Unset, nothing is seeded (nnU-Net's behaviour).
"""
from __future__ import annotations

import random
import zlib
from typing import Dict, Optional

import numpy as np
import torch


def trainer_generators(owner) -> Dict[str, object]:
    """The random generators an object holds as attributes, by attribute name, with those of the
    objective it holds (``ssl_objective``, e.g. ``cutmix_rng``)."""
    kinds = (np.random.Generator, np.random.RandomState, torch.Generator)
    holders = [owner, getattr(owner, 'ssl_objective', None)]
    return {name: value for holder in holders if holder is not None
            for name, value in vars(holder).items() if isinstance(value, kinds)}


def derived_seed(seed: int, *names) -> int:
    """A 32-bit seed of its own for the stream ``names`` (strings / ints) under ``seed``."""
    words = [int(seed)] + [zlib.crc32(str(n).encode()) if not isinstance(n, int) else int(n) for n in names]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def seed_global_generators(seed: int) -> None:
    """Python ``random``, NumPy's global generator, torch CPU and every CUDA device."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def reseed_generators(generators: Dict[str, object], seed: int) -> None:
    """Reseed each generator in place from ``(seed, its name)`` (objects that hold it keep working)."""
    for name, generator in generators.items():
        stream = derived_seed(seed, "generator", name)
        if isinstance(generator, np.random.Generator):
            bit_generator = generator.bit_generator
            bit_generator.state = type(bit_generator)(np.random.SeedSequence(stream)).state
        elif isinstance(generator, np.random.RandomState):
            generator.seed(stream)
        elif isinstance(generator, torch.Generator):
            generator.manual_seed(stream)


def seed_trainer(trainer, seed: int) -> None:
    """Global generators plus the trainer's own (attributes holding a generator)."""
    seed_global_generators(seed)
    reseed_generators(trainer_generators(trainer), seed)


def seed_augmenter_workers(owner, seed: int, epoch: int = 0) -> Dict[str, list]:
    """Give every not yet started multi-process augmenter held by ``owner`` (an attribute)
    worker seeds from ``(seed, attribute name, worker, epoch)``; returns them by attribute name."""
    from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

    seeded = {}
    for name, augmenter in vars(owner).items():
        if isinstance(augmenter, NonDetMultiThreadedAugmenter) and not augmenter.initialized:
            count = augmenter.num_processes
        elif isinstance(augmenter, MultiThreadedAugmenter) and not augmenter.was_initialized:
            count = augmenter.num_processes
        else:
            continue
        augmenter.seeds = [derived_seed(seed, "workers", name, i, epoch) for i in range(count)]
        seeded[name] = augmenter.seeds
    return seeded


def describe(seed: Optional[int]) -> str:
    """One log line about the seed."""
    if seed is None:
        return "nnUNet_sss_seed not set: random generators are not seeded"
    return (f"nnUNet_sss_seed={seed}: Python, NumPy, torch, the trainer's generators and the augmentation "
            f"workers are seeded")
