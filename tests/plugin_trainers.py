"""The plugin's trainers, in one place for every test: derived from the ``trainers/`` folder that
``nnUNet_extTrainer`` points at (one module per trainer, named after the class it imports)."""
from __future__ import annotations

import importlib.util
import pathlib
from typing import Dict, List

TRAINERS_FOLDER = pathlib.Path(__file__).resolve().parents[1] / "trainers"


def plugin_trainer_names() -> List[str]:
    """Names of the trainers in ``trainers/``, sorted; each module must define the class it is named after."""
    names = sorted(p.stem for p in TRAINERS_FOLDER.glob("nnUNetTrainer*.py"))
    for name in names:
        spec = importlib.util.spec_from_file_location(f"_plugin_trainer_{name}", TRAINERS_FOLDER / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert isinstance(getattr(module, name, None), type), f"trainers/{name}.py does not define {name}"
    return names


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
