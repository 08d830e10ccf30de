"""A trained nnU-Net model as the plugin's commands use it (the pseudo-labelling's teacher, the model that
``nnUNetv2_sss_suggest`` scores the pool with): ``nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>``,
some folds, one checkpoint name.

- :func:`add_model_arguments`: ``-d -c -tr -p -f -chk``, the options that name the model in a command;
- :func:`dataset_plans`: the dataset's current plans and ``dataset.json`` (``-d -c -p`` of a command);
- :func:`check_model`: a user error when the model is missing or was trained on another dataset, plans,
  configuration or labels (the differing entry named), before any prediction;
- :func:`make_predictor`: nnU-Net's own predictor of the model (sliding window, Gaussian weighting);
- :func:`load_preprocessed_case`: a case's preprocessed image, as the trainers read it.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, load_pickle

from nnunetv2_sss.errors import UserFileNotFoundError, UserValueError, dataset_name, nnunet_path

# plans entries that decide how a case is preprocessed: the model must have been trained on the same
PREPROCESSING_KEYS = ("data_identifier", "spacing", "normalization_schemes", "use_mask_for_norm",
                      "resampling_fn_data", "resampling_fn_data_kwargs", "preprocessor_name")
IGNORE = "ignore"


@dataclass
class TrainedModel:
    """``nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>``, the folds used, the checkpoint name."""
    trainer: str
    plans: str
    configuration: str
    folds: List
    checkpoint: str
    checkpoints_sha256: Dict[str, str] = field(default_factory=dict)  # fold -> SHA-256 of its checkpoint

    def folder(self, results_base: str) -> str:
        return join(results_base, f"{self.trainer}__{self.plans}__{self.configuration}")

    def checkpoint_files(self, results_base: str) -> Dict[str, str]:
        return {str(f): join(self.folder(results_base), f"fold_{f}", self.checkpoint) for f in self.folds}

    def with_checksums(self, results_base: str) -> "TrainedModel":
        """A copy with the SHA-256 of every fold's checkpoint (what was used, to recognise a changed model)."""
        from nnunetv2_sss.checksums import sha256_of_file
        checksums = {fold: sha256_of_file(path) for fold, path in self.checkpoint_files(results_base).items()}
        return TrainedModel(self.trainer, self.plans, self.configuration, list(self.folds), self.checkpoint, checksums)


def add_model_arguments(parser: argparse.ArgumentParser, whose: str, trainer_help: str, folds_help: str) -> None:
    """``-d -c -tr -p -f -chk`` (nnU-Net's names) of the trained model a command uses; ``whose``: "the
    model's", "the teacher's"."""
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("-c", required=True, help=f"configuration (as {whose})")
    parser.add_argument("-tr", required=True, help=trainer_help)
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-f", nargs="+", required=True, help=folds_help)
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint name (default checkpoint_final.pth)")


@dataclass
class DatasetPlans:
    """A dataset's current plans and ``dataset.json`` (nnUNet_preprocessed) for one configuration."""
    name: str                 # DatasetXXX_Name
    preprocessed_base: str    # nnUNet_preprocessed/DatasetXXX_Name
    results_base: str         # nnUNet_results/DatasetXXX_Name
    plans_identifier: str
    configuration: str
    plans: dict
    dataset_json: dict

    @property
    def data_identifier(self) -> str:
        return self.plans["configurations"][self.configuration]["data_identifier"]


def dataset_plans(dataset, configuration: str, plans_identifier: str = "nnUNetPlans") -> DatasetPlans:
    """The plans of ``-d -c -p`` in nnU-Net's folders; a user error when they are not there."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results
    name = dataset_name(dataset)
    return plans_in(join(nnunet_path(nnUNet_preprocessed), name), join(nnunet_path(nnUNet_results), name),
                    configuration, plans_identifier)


def plans_in(preprocessed_base: str, results_base: str, configuration: str,
             plans_identifier: str = "nnUNetPlans") -> DatasetPlans:
    """The plans of a dataset's preprocessed folder (any folder, e.g. a study group's view), its models in
    ``results_base``; a user error when they are not there."""
    name = os.path.basename(os.path.normpath(preprocessed_base))
    plans_file = join(preprocessed_base, plans_identifier + ".json")
    if not isfile(plans_file):
        number = name[len("Dataset"):].split("_")[0]  # nnUNetv2_plan_and_preprocess takes the id
        raise UserFileNotFoundError(f"{plans_file} not found: run nnUNetv2_plan_and_preprocess -d {number} first")
    plans = load_json(plans_file)
    if configuration not in plans["configurations"]:
        raise UserValueError(f"{plans_file} has no configuration {configuration!r}")
    return DatasetPlans(name, preprocessed_base, results_base, plans_identifier, configuration, plans,
                        load_json(join(preprocessed_base, "dataset.json")))


def with_ignore_label(dataset_json: dict) -> dict:
    """A copy of ``dataset_json`` whose labels include nnU-Net's ignore label (the highest label + 1), as
    the self-training student trains with it; unchanged if it has one."""
    labels = dict(dataset_json["labels"])
    if IGNORE not in labels:
        values = [v for value in labels.values() for v in (value if isinstance(value, (list, tuple)) else [value])]
        labels[IGNORE] = int(max(values)) + 1
    return {**dataset_json, "labels": labels}


def check_model(model: TrainedModel, dataset: DatasetPlans, role: str = "model") -> None:
    """A user error if the model is missing, or was trained on another dataset, plans, configuration or
    labels; ``role`` names it in the message (``teacher``, ``model``)."""
    folder = model.folder(dataset.results_base)
    train = f"nnUNetv2_train {dataset.name} {model.configuration} FOLD -tr {model.trainer} -p {model.plans}"
    for fold, path in model.checkpoint_files(dataset.results_base).items():
        if not isfile(path):
            raise UserFileNotFoundError(f"{path}: the {role} has no {model.checkpoint} for fold {fold}; train it "
                                        f"first ({train.replace('FOLD', fold)})")
    trained_plans, trained_dataset = load_json(join(folder, "plans.json")), load_json(join(folder, "dataset.json"))
    if trained_plans.get("dataset_name") != dataset.name:
        raise UserValueError(f"{folder}: the {role} was trained on {trained_plans.get('dataset_name')}, "
                             f"not {dataset.name}")
    if trained_plans.get("plans_name") != dataset.plans["plans_name"]:
        raise UserValueError(f"{folder}: the {role} was trained with plans {trained_plans.get('plans_name')!r}, "
                             f"not {dataset.plans['plans_name']!r}")
    trained = trained_plans["configurations"].get(model.configuration)
    current = dataset.plans["configurations"][model.configuration]
    if trained is None:
        raise UserValueError(f"{folder}: the {role}'s plans have no configuration {model.configuration!r}")
    for key in PREPROCESSING_KEYS:
        if trained.get(key) != current.get(key):
            raise UserValueError(f"{folder}: the {role} was trained with {key} = {trained.get(key)!r}, the dataset's "
                                 f"plans now say {current.get(key)!r}: re-train the {role} on these plans")
    if with_ignore_label(trained_dataset)["labels"] != with_ignore_label(dataset.dataset_json)["labels"]:
        raise UserValueError(f"{folder}: the {role}'s labels {trained_dataset['labels']} are not the dataset's "
                             f"{dataset.dataset_json['labels']}")


def make_predictor(model: TrainedModel, results_base: str, device: str, use_mirroring: bool,
                   tile_step_size: float = 0.5, predictor_class=None):
    """nnU-Net's predictor (``predictor_class``, default ``nnUNetPredictor``) initialised from the model's folds."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    predictor = (predictor_class or nnUNetPredictor)(
        tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
        perform_everything_on_device=device == "cuda", device=torch.device(device), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model.folder(results_base), model.folds, model.checkpoint)
    return predictor


def load_preprocessed_case(folder: str, case: str) -> Tuple[np.ndarray, dict]:
    """The preprocessed image ``(C, *spatial)`` and its properties, without the class locations (for a
    training case whose labels are hidden they were derived from its labels, which are never used)."""
    from nnunetv2_sss.data.unlabeled_loader import load_image
    properties = load_pickle(join(folder, case + ".pkl"))
    properties.pop("class_locations", None)
    return np.asarray(load_image(folder, case)), properties
