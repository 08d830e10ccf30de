"""The ``-tr`` trainers as ``nnUNetv2_train`` finds them (nnU-Net's trainer folder, then the folders of
``nnUNet_extTrainer``), and what the study asks of their classes: the plugin's base, a SAM-2 recipe."""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from typing import Dict, Iterator, Sequence

from nnunetv2_sss.errors import UserValueError


@contextlib.contextmanager
def _ext_trainer(value: str) -> Iterator[None]:
    """``nnUNet_extTrainer`` set to ``value`` in this process for the block (nnU-Net reads it from there)."""
    previous = os.environ.get("nnUNet_extTrainer")
    os.environ["nnUNet_extTrainer"] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("nnUNet_extTrainer", None)
        else:
            os.environ["nnUNet_extTrainer"] = previous


def trainer_classes(names: Sequence[str], ext_trainer: str) -> Dict[str, type]:
    """``{name: class}`` found the way ``nnUNetv2_train`` finds it, with ``nnUNet_extTrainer=ext_trainer``;
    :class:`UserValueError` naming the first name that is no trainer."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    classes = {}
    with _ext_trainer(ext_trainer), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nnU-Net's search imports every trainer module and tells about it
        for name in names:
            try:
                classes[name] = recursive_find_trainer_class_by_name(name)
            except (RuntimeError, AssertionError):
                raise UserValueError(f"-tr {name}: no such trainer in nnU-Net or nnUNet_extTrainer "
                                     f"({ext_trainer})") from None
    return classes


def check_plugin_trainers(classes: Dict[str, type]) -> None:
    """Every trainer must be the plugin's: nnU-Net's own ignore the schedule and the seed."""
    from nnunetv2_sss.training.base import nnUNetTrainerPlugin

    for name, trainer in classes.items():
        if not issubclass(trainer, nnUNetTrainerPlugin):
            raise UserValueError(f"-tr {name}: not a trainer of the plugin, it would ignore --epochs/--iterations "
                                 "and nnUNet_sss_seed; use nnUNetTrainerPlugin for supervised nnU-Net (or a subclass "
                                 "of it)")


def uses_sam2(trainer: type) -> bool:
    """Whether the trainer's network recipe (its ``recipe``: a class or an instance) is SAM-2's
    (``SAM2Recipe`` or a subclass, e.g. SSS's)."""
    from nnunetv2_sss.networks.recipes import SAM2Recipe

    recipe = getattr(trainer, "recipe", None)
    return issubclass(recipe if isinstance(recipe, type) else type(recipe), SAM2Recipe)
