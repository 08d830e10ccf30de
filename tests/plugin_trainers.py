"""The plugin's trainers, in one place for every test: derived from the ``trainers/`` folder that
``nnUNet_extTrainer`` points at (one module per trainer, named after the class it imports)."""
from __future__ import annotations

import importlib.util
import pathlib
from typing import Dict, List

TRAINERS_FOLDER = pathlib.Path(__file__).resolve().parents[1] / "trainers"


def _trainer_classes() -> Dict[str, type]:
    classes = {}
    for path in sorted(TRAINERS_FOLDER.glob("nnUNetTrainer*.py")):
        spec = importlib.util.spec_from_file_location(f"_plugin_trainer_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert isinstance(getattr(module, path.stem, None), type), f"trainers/{path.name} does not define {path.stem}"
        classes[path.stem] = getattr(module, path.stem)
    return classes


def plugin_trainer_names() -> List[str]:
    """Names of the trainers in ``trainers/``, sorted; each module must define the class it is named after."""
    return list(_trainer_classes())


def stepped_trainer_names() -> List[str]:
    """The trainers whose training steps the per-step tests run (harness, DDP, compile, precision): all but
    the self-training students, which first need a trained teacher's pseudo-labels; their step is nnU-Net's
    own (that of ``nnUNetTrainerPlugin``, which the per-step tests run) and ``tests/test_self_training.py``
    trains them."""
    from nnunetv2_sss.training.self_training import nnUNetTrainerSelfTraining
    return [name for name, cls in _trainer_classes().items() if not issubclass(cls, nnUNetTrainerSelfTraining)]


def trainer_models(trainer) -> Dict[str, object]:
    """Every model a trainer holds, by name: ``student`` (the network behind DDP), the EMA ``teacher``
    and the objective's extra trained modules (CPS: ``network_b``), where it has them."""
    from nnunetv2_sss.networks.passes import unwrap
    models = {"student": unwrap(trainer.network)}
    if getattr(trainer, "teacher", None) is not None:
        models["teacher"] = trainer.teacher
    objective = getattr(trainer, "ssl_objective", None)
    if objective is not None:
        models.update({name: unwrap(module) for name, module in objective.trained_modules.items()})
    return models
