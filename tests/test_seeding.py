"""``nnUNet_sss_seed``: the setting and the seeding helpers (training/seeding.py)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from nnunetv2_sss import settings
from nnunetv2_sss.errors import UserValueError
from nnunetv2_sss.training.seeding import derived_seed, seed_augmenter_workers, seed_trainer


class _Owner:
    def __init__(self):
        self.cutmix_rng = np.random.default_rng()
        self.legacy_rng = np.random.RandomState()
        self.torch_rng = torch.Generator()
        self.not_a_generator = 3


def _draws(owner):
    return (random.random(), float(np.random.rand()), float(torch.rand(1)), float(owner.cutmix_rng.random()),
            float(owner.legacy_rng.rand()), float(torch.rand(1, generator=owner.torch_rng)))


def test_same_seed_same_streams_other_seed_other_streams():
    first, second, other = _Owner(), _Owner(), _Owner()
    kept = first.cutmix_rng
    seed_trainer(first, 7)
    a = _draws(first)
    seed_trainer(second, 7)
    b = _draws(second)
    seed_trainer(other, 8)
    c = _draws(other)
    assert a == b
    assert all(x != y for x, y in zip(a, c))
    assert first.cutmix_rng is kept  # reseeded in place: whoever holds it keeps working


def test_streams_are_independent_of_each_other():
    assert len({derived_seed(0, "generator", name) for name in ("a", "b", "c")}) == 3
    assert derived_seed(0, "workers", "x", 0, 0) != derived_seed(0, "workers", "x", 1, 0)
    assert derived_seed(0, "workers", "x", 0, 0) != derived_seed(0, "workers", "x", 0, 5)


def test_augmenter_workers_get_seeds_before_they_start():
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

    class Owner:
        pass
    owner = Owner()
    owner.dataloader_train = NonDetMultiThreadedAugmenter(iter([]), None, 3)
    seeded = seed_augmenter_workers(owner, 11, epoch=2)
    assert len(set(seeded["dataloader_train"])) == 3 and owner.dataloader_train.seeds == seeded["dataloader_train"]
    assert seed_augmenter_workers(owner, 11, epoch=2) == seeded  # deterministic
    owner.dataloader_train.initialized = True
    assert seed_augmenter_workers(owner, 12) == {}  # a running augmenter is left alone


@pytest.mark.parametrize("value, expected", [("", None), ("0", 0), (" 42 ", 42)])
def test_seed_setting(monkeypatch, value, expected):
    monkeypatch.setenv(settings.SEED, value)
    assert settings.seed() == expected


@pytest.mark.parametrize("value", ["x", "-1", "1.5", str(2 ** 32)])
def test_bad_seed_setting_is_a_user_error(monkeypatch, value):
    monkeypatch.setenv(settings.SEED, value)
    with pytest.raises(UserValueError, match=settings.SEED):
        settings.seed()
