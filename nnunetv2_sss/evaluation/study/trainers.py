"""The ``-tr`` trainers as ``nnUNetv2_train`` finds them (nnU-Net's trainer folder, then the folders of
``nnUNet_extTrainer``), and what the study asks of their classes: the plugin's base, a SAM-2 recipe, the
teacher of a self-training student."""
from __future__ import annotations

import contextlib
import io
import warnings
from typing import Dict, Optional, Sequence

from nnunetv2_sss.errors import UserValueError
from nnunetv2_sss.evaluation.study.environment import environment_of


def trainer_classes(names: Sequence[str], ext_trainer: str) -> Dict[str, type]:
    """``{name: class}`` found the way ``nnUNetv2_train`` finds it, with ``nnUNet_extTrainer=ext_trainer``;
    :class:`UserValueError` naming the first name that is no trainer."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    classes = {}
    with environment_of({"nnUNet_extTrainer": ext_trainer}), contextlib.redirect_stdout(io.StringIO()), \
            warnings.catch_warnings():
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


def self_training_round(trainer: type) -> Optional[int]:
    """The round of a self-training student (``nnUNetTrainerSelfTraining`` or a subclass), else ``None``."""
    from nnunetv2_sss.training.options import class_option
    from nnunetv2_sss.training.self_training import nnUNetTrainerSelfTraining

    return class_option(trainer, "self_training_round") if issubclass(trainer, nnUNetTrainerSelfTraining) else None


def self_training_teachers(classes: Dict[str, type], order: Sequence[str], supervised: str) -> Dict[str, str]:
    """``{student: teacher}``: round 1's teacher is the supervised row, round K's the round K-1 student;
    the teacher must be listed before its student (it is trained first in every group)."""
    rounds = {name: self_training_round(classes[name]) for name in order}
    teachers = {}
    for position, name in enumerate(order):
        if rounds[name] is None:
            continue
        earlier = [t for t in order[:position] if rounds[t] == rounds[name] - 1] if rounds[name] > 1 else \
            ([supervised] if supervised in order[:position] else [])
        if len(earlier) != 1:
            wanted = f"the supervised row {supervised}" if rounds[name] == 1 else f"one round {rounds[name] - 1} student"
            raise UserValueError(f"-tr {name}: a round {rounds[name]} self-training student needs its teacher, "
                                 f"{wanted}, listed before it in -tr")
        teachers[name] = earlier[0]
    return teachers
