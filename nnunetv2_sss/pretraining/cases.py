"""The images pretraining learns from: every preprocessed image of the dataset's configuration.

- ``imagesTr``: the cases in ``nnUNet_preprocessed/<dataset>/<data_identifier>/`` (file names only:
  nnU-Net's ``get_identifiers``; the ``_seg`` files beside them are never opened);
- the unlabeled pool: the finished cases of ``<data_identifier>_unlabeled/``
  (``nnUNetv2_sss_preprocess_unlabeled``), if it exists.

Validation is the reconstruction loss on held-out cases: ``VALIDATION_SHARE`` of the cases (at least one),
chosen by a fixed shuffle of the sorted case list, when there are at least ``MIN_CASES_TO_HOLD_OUT``; with
fewer cases nothing is held out and the validation loss is measured on the training cases (the log and
``pretraining.json`` say so). ``imagesTs`` is not used.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np

from nnunetv2_sss.data.unlabeled_preprocessing import done_cases, unlabeled_folder
from nnunetv2_sss.errors import UserRuntimeError
from nnunetv2_sss.record_paths import record_path

VALIDATION_SHARE = 0.05
MIN_CASES_TO_HOLD_OUT = 5
SPLIT_SEED = 12345

Source = Tuple[str, List[str]]  # (folder, case ids)


@dataclass
class PretrainingCases:
    training: List[Source] = field(default_factory=list)
    validation: List[Source] = field(default_factory=list)
    held_out: bool = False  # False: validation = the training cases

    def count(self, which: str = 'training') -> int:
        return sum(len(cases) for _, cases in getattr(self, which))

    def describe(self) -> dict:
        """For ``pretraining.json``: case ids per folder (``$nnUNet_preprocessed/...``, record_paths.py)."""
        return {'training': {record_path(folder): cases for folder, cases in self.training},
                'validation': {record_path(folder): cases for folder, cases in self.validation},
                'validation_held_out': self.held_out}


def image_cases(preprocessed_folder: str) -> List[str]:
    """Case ids of nnU-Net's preprocessed training images (file names only)."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    if not os.path.isdir(preprocessed_folder):
        return []
    try:
        dataset_class = infer_dataset_class(preprocessed_folder)
    except (RuntimeError, AssertionError, ValueError):
        return []
    return sorted(dataset_class.get_identifiers(preprocessed_folder))


def pretraining_cases(preprocessed_base: str, data_identifier: str, dataset: str, configuration: str,
                      plans: str) -> PretrainingCases:
    """imagesTr + unlabeled pool, split into training and validation cases."""
    training_folder = os.path.join(preprocessed_base, data_identifier)
    pool_folder = unlabeled_folder(preprocessed_base, data_identifier)
    sources = [(training_folder, image_cases(training_folder)), (pool_folder, done_cases(pool_folder))]
    sources = [(folder, cases) for folder, cases in sources if cases]
    if not sources:
        raise UserRuntimeError(f"{training_folder}: no preprocessed image of configuration {configuration} and no "
                               f"unlabeled pool in {pool_folder}: run 'nnUNetv2_plan_and_preprocess -d {dataset} -c "
                               f"{configuration} -p {plans}' (and 'nnUNetv2_sss_preprocess_unlabeled' for imagesUnlabeled)")
    pairs = [(folder, case) for folder, cases in sources for case in cases]
    if len(pairs) < MIN_CASES_TO_HOLD_OUT:
        return PretrainingCases(training=sources, validation=sources, held_out=False)
    order = np.random.RandomState(SPLIT_SEED).permutation(len(pairs))
    held_out = {pairs[i] for i in order[:max(1, round(VALIDATION_SHARE * len(pairs)))]}

    def grouped(selected) -> List[Source]:
        return [(folder, [case for case in cases if ((folder, case) in held_out) == selected])
                for folder, cases in sources if any(((folder, case) in held_out) == selected for case in cases)]

    return PretrainingCases(training=grouped(False), validation=grouped(True), held_out=True)
