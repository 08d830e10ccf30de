"""Unit tests of the checkpoint helpers: atomic write, random-generator state, cadence variable."""
import os
import random

import numpy as np
import pytest
import torch

from nnunetv2_sss import settings
from nnunetv2_sss.training.checkpoint_io import capture_rng_state, restore_rng_state, save_atomically
from nnunetv2_sss.training.seeding import trainer_generators


def _draw(owner):
    return (random.random(), float(np.random.rand()), float(torch.rand(1)), float(owner.prompt_rng.random()),
            float(owner.legacy.rand()), float(torch.rand(1, generator=owner.torch_generator)))


class _Owner:
    def __init__(self):
        self.prompt_rng = np.random.default_rng()
        self.legacy = np.random.RandomState()
        self.torch_generator = torch.Generator()
        self.not_a_generator = 3


def test_rng_state_round_trip_through_a_checkpoint_file(tmp_path):
    owner = _Owner()
    generators = trainer_generators(owner)
    assert sorted(generators) == ["legacy", "prompt_rng", "torch_generator"]
    state = capture_rng_state(torch.device("cpu"), generators)
    expected = _draw(owner)
    save_atomically({"rng_state": state}, str(tmp_path / "c.pth"))
    _draw(owner), _draw(owner)  # move every generator on
    loaded = torch.load(tmp_path / "c.pth", weights_only=False)["rng_state"]
    restore_rng_state(loaded, torch.device("cpu"), trainer_generators(owner))
    assert _draw(owner) == expected


def test_restore_skips_generators_the_checkpoint_lacks():
    owner = _Owner()
    state = capture_rng_state(None, {})
    expected_global = (random.random(), float(np.random.rand()))
    before = owner.prompt_rng.bit_generator.state
    restore_rng_state(state, None, trainer_generators(owner))
    assert (random.random(), float(np.random.rand())) == expected_global
    assert owner.prompt_rng.bit_generator.state == before


def test_save_atomically_replaces_and_leaves_no_temporary(tmp_path):
    target = str(tmp_path / "checkpoint_latest.pth")
    save_atomically({"a": torch.zeros(2)}, target)
    save_atomically({"a": torch.ones(2)}, target)
    assert torch.equal(torch.load(target)["a"], torch.ones(2))
    assert os.listdir(tmp_path) == ["checkpoint_latest.pth"]


def test_save_every_variable(monkeypatch):
    monkeypatch.delenv(settings.SAVE_EVERY, raising=False)
    assert settings.option_variable(settings.SAVE_EVERY) is None
    monkeypatch.setenv(settings.SAVE_EVERY, "5")
    assert settings.option_variable(settings.SAVE_EVERY) == 5
    monkeypatch.setenv(settings.SAVE_EVERY, " ")
    assert settings.option_variable(settings.SAVE_EVERY) is settings.EMPTY
    monkeypatch.setenv(settings.SAVE_EVERY, "0")
    with pytest.raises(ValueError, match=settings.SAVE_EVERY):
        settings.option_variable(settings.SAVE_EVERY)
