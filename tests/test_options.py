"""Every option resolved through one path (``nnunetv2_sss/training/options.py``): declared defaults
(nnU-Net < trainer bases < recipe < objective), then class attributes, instance attributes and
``nnUNet_sss_*`` variables; the log names every value that differs from its default and its source."""
from __future__ import annotations

import json

import pytest
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2_sss import settings
from nnunetv2_sss.errors import UserValueError
from nnunetv2_sss.networks.recipes import SAM2Recipe, SSSRecipe
from nnunetv2_sss.objectives.unimatch_v2 import UniMatchV2Objective
from nnunetv2_sss.training.options import (class_overrides, declared_defaults, environment_overrides, log_lines,
                                           resolve_options, unknown_class_attributes)
from nnunetv2_sss.training.trainers import (nnUNetTrainerSAM2, nnUNetTrainerSSS, nnUNetTrainerSSS_noDFE,
                                            nnUNetTrainerUniMatchV2)
from tiny_sam2 import write_tiny_config


# ---- the resolution itself ------------------------------------------------------------------------
def test_later_declarations_replace_defaults_and_overrides_win_in_order():
    declarations = [{"lr": (1e-2, "nnU-Net"), "epochs": (1000, "nnU-Net")}, {"lr": (1e-4, "SAM2Recipe")},
                    {"threshold": (0.95, "Objective")}]
    overrides = [{"threshold": (0.9, "class attribute of T"), "undeclared": (1, "class attribute of T")},
                 {"epochs": (50, "instance attribute")}, {"epochs": (5, "nnUNet_sss_num_epochs")}]
    options = resolve_options(declarations, overrides)
    assert set(options) == {"lr", "epochs", "threshold"}  # an undeclared name is no option
    assert (options["lr"].value, options["lr"].source, options["lr"].default) == (1e-4, "SAM2Recipe", 1e-2)
    assert (options["epochs"].value, options["epochs"].source) == (5, "nnUNet_sss_num_epochs")
    assert (options["threshold"].value, options["threshold"].default_source) == (0.9, "Objective")
    assert log_lines(options) == [
        "lr = 0.0001 (SAM2Recipe; default 0.01 from nnU-Net)",
        "epochs = 5 (nnUNet_sss_num_epochs; default 1000 from nnU-Net)",
        "threshold = 0.9 (class attribute of T; default 0.95 from Objective)"]


@pytest.mark.parametrize("value", ["3e-4", True, None])
def test_a_value_of_another_kind_than_the_default_is_refused(value):
    if value is None:  # None is allowed (e.g. sam2_input_size, entropy_num_classes)
        resolve_options([{"lr": (1e-2, "nnU-Net")}], [{"lr": (None, "class attribute of T")}])
        return
    with pytest.raises(UserValueError, match=r"option lr=.*class attribute of T.*not of the kind of its default 0.01"):
        resolve_options([{"lr": (1e-2, "nnU-Net")}], [{"lr": (value, "class attribute of T")}])


def test_declared_defaults_follow_the_mro_with_the_declaring_class():
    defaults = declared_defaults(SSSRecipe)
    assert defaults["use_dfe"] == (True, "SSSRecipe") and defaults["initial_lr"] == (1e-4, "SAM2Recipe")
    objective = declared_defaults(UniMatchV2Objective)
    assert objective["ema_decay"] == (0.996, "TeacherObjective")
    assert objective["num_strong_views"] == (2, "UniMatchV2Objective")   # replaces Objective's 0
    assert objective["confidence_threshold"] == (0.95, "Objective")


class _Conf90(nnUNetTrainerUniMatchV2):
    confidence_threshold = 0.90
    confidence_treshold = 0.8  # misspelt: no option


class _Conf85(_Conf90):
    confidence_threshold = 0.85


def test_class_attributes_most_derived_wins_and_misspelt_ones_are_named():
    names = declared_defaults(UniMatchV2Objective)
    assert class_overrides(_Conf85, names, nnUNetTrainer) == \
        {"confidence_threshold": (0.85, "class attribute of _Conf85")}
    assert unknown_class_attributes(_Conf85, names) == ["_Conf90.confidence_treshold"]
    assert unknown_class_attributes(nnUNetTrainerSSS_noDFE, list(names) + ["use_dfe"]) == []


def test_pseudo_label_folds_variable(monkeypatch):
    """nnUNet_sss_pseudo_label_folds: unset or empty -> [] (the student's own fold); fold numbers or 'all';
    anything else is a user error naming the variable."""
    from nnunetv2_sss.errors import UserValueError
    monkeypatch.delenv(settings.PSEUDO_LABEL_FOLDS, raising=False)
    assert settings.pseudo_label_folds() == []
    monkeypatch.setenv(settings.PSEUDO_LABEL_FOLDS, " ")
    assert settings.pseudo_label_folds() == []
    monkeypatch.setenv(settings.PSEUDO_LABEL_FOLDS, "0 1 2 3 4")
    assert settings.pseudo_label_folds() == [0, 1, 2, 3, 4]
    monkeypatch.setenv(settings.PSEUDO_LABEL_FOLDS, "all")
    assert settings.pseudo_label_folds() == ["all"]
    monkeypatch.setenv(settings.PSEUDO_LABEL_FOLDS, "0,1")
    with pytest.raises(UserValueError, match="nnUNet_sss_pseudo_label_folds"):
        settings.pseudo_label_folds()


def test_recipe_options_come_from_the_class():
    assert nnUNetTrainerSSS.recipe_options()["use_dfe"] is True
    assert nnUNetTrainerSSS_noDFE.recipe_options()["use_dfe"] is False
    assert "initial_lr" not in nnUNetTrainerSAM2.recipe_options()  # nnU-Net's option: the trainer's attribute
    assert SAM2Recipe(encoder_lr_factor=0.5).encoder_lr_factor == 0.5


def test_environment_set_empty_and_unset(monkeypatch):
    for variable in settings.OPTION_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv(settings.NUM_EPOCHS, "7")
    monkeypatch.setenv(settings.ITERATIONS_PER_EPOCH, "")
    overrides, empty = environment_overrides()
    assert overrides == {"num_epochs": (7, settings.NUM_EPOCHS)}
    assert empty == [settings.ITERATIONS_PER_EPOCH]
    options = resolve_options([{"num_iterations_per_epoch": (250, "nnU-Net")}], [])
    assert log_lines(options, empty) == [
        "nnUNet_sss_iterations_per_epoch is set but empty (an undefined shell variable?): it is ignored, "
        "num_iterations_per_epoch = 250 (nnU-Net)"]


# ---- on real trainers (nnU-Net's __init__ and initialize, in this process) -------------------------------
class nnUNetTrainerSAM2_lr3e4(nnUNetTrainerSAM2):
    initial_lr = 3e-4


class nnUNetTrainerUniMatchV2_styles(nnUNetTrainerUniMatchV2):
    """An objective option as a class attribute and one set in __init__ (nnU-Net's own style)."""
    cutmix_probability = 0.25

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.confidence_threshold = 0.8
        self.num_epochs = 40


class nnUNetTrainerSSS_dfeInInit(nnUNetTrainerSSS):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.use_dfe = False


def _trainer(cls, dataset, monkeypatch, tmp_path, **environment):
    for key, value in dataset.env(nnUNet_results=tmp_path / "results", nnUNet_sss_sam2_checkpoint="random",
                                  nnUNet_sss_sam2_config=write_tiny_config(tmp_path), **environment).items():
        monkeypatch.setenv(key, value)
    folder = dataset.preprocessed / dataset.dataset_name
    plans = dict(json.loads((folder / "nnUNetPlans.json").read_text()), continue_training=False)
    return cls(plans, "2d", 0, json.loads((folder / "dataset.json").read_text()), torch.device("cpu"))


def _log(trainer) -> str:
    with open(trainer.log_file) as f:
        return f.read()


@pytest.mark.integration
def test_a_class_attribute_learning_rate_is_used_and_logged(nnunet_dataset, monkeypatch, tmp_path):
    trainer = _trainer(nnUNetTrainerSAM2_lr3e4, nnunet_dataset, monkeypatch, tmp_path, nnUNet_sss_num_epochs="")
    trainer.initialize()
    assert trainer.initial_lr == 3e-4
    assert [group["initial_lr"] for group in trainer.optimizer.param_groups] == [3e-4, 3e-4 * 0.1]
    log = _log(trainer)
    assert "option initial_lr = 0.0003 (class attribute of nnUNetTrainerSAM2_lr3e4; default 0.01 from nnU-Net)" in log
    assert "option weight_decay = 0.01 (SAM2Recipe; default 3e-05 from nnU-Net)" in log
    assert "nnUNet_sss_num_epochs is set but empty (an undefined shell variable?): it is ignored, num_epochs = 1000 " \
           "(nnU-Net)" in log
    assert trainer.num_epochs == 1000


@pytest.mark.integration
def test_objective_options_from_class_and_init_and_the_variable_wins(nnunet_dataset, monkeypatch, tmp_path):
    trainer = _trainer(nnUNetTrainerUniMatchV2_styles, nnunet_dataset, monkeypatch, tmp_path,
                       nnUNet_sss_num_epochs="3")
    trainer.initialize()
    objective = trainer.ssl_objective
    assert (objective.cutmix_probability, objective.confidence_threshold) == (0.25, 0.8)
    assert trainer.num_epochs == 3  # nnUNet_sss_num_epochs beats the __init__ assignment
    log = _log(trainer)
    assert "option cutmix_probability = 0.25 (class attribute of nnUNetTrainerUniMatchV2_styles; default 0.5 from " \
           "UniMatchV2Objective)" in log
    assert "option confidence_threshold = 0.8 (instance attribute (set after nnU-Net's __init__); default 0.95" in log
    assert "option num_epochs = 3 (nnUNet_sss_num_epochs; default 1000 from nnU-Net)" in log


@pytest.mark.integration
def test_a_network_option_set_in_init_is_refused(nnunet_dataset, monkeypatch, tmp_path):
    trainer = _trainer(nnUNetTrainerSSS_dfeInInit, nnunet_dataset, monkeypatch, tmp_path)
    with pytest.raises(SystemExit, match="option use_dfe=False of nnUNetTrainerSSS_dfeInInit shapes the network"):
        trainer.initialize()


@pytest.mark.integration
def test_cpu_threads_variable_sets_torch_threads_on_the_cpu(nnunet_dataset, monkeypatch, tmp_path):
    """nnUNet_sss_cpu_threads replaces the one torch thread per core that nnU-Net's run_training sets (what
    the study's --jobs N gives each CPU training); unset, the trainer leaves torch's threads alone; below 1
    it stops the training with one ERROR line naming the variable."""
    from nnunetv2_sss.training.base import nnUNetTrainerPlugin
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        trainer = _trainer(nnUNetTrainerPlugin, nnunet_dataset, monkeypatch, tmp_path, nnUNet_sss_cpu_threads="")
        assert torch.get_num_threads() == 2 and "CPU threads" not in _log(trainer)
        trainer = _trainer(nnUNetTrainerPlugin, nnunet_dataset, monkeypatch, tmp_path, nnUNet_sss_cpu_threads="1")
        assert torch.get_num_threads() == 1
        assert "CPU threads: 1 (nnUNet_sss_cpu_threads)" in _log(trainer)
        with pytest.raises(SystemExit, match="ERROR: environment variable nnUNet_sss_cpu_threads='0' must be >= 1"):
            _trainer(nnUNetTrainerPlugin, nnunet_dataset, monkeypatch, tmp_path, nnUNet_sss_cpu_threads="0")
    finally:
        torch.set_num_threads(before)
