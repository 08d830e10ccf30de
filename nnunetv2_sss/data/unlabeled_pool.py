"""The unlabeled pool of a fold: which preprocessed images a method may use without their labels.

Two sources: the configuration's ``<data_identifier>_unlabeled`` folder (``imagesUnlabeled``,
``nnUNetv2_sss_preprocess_unlabeled``) and the training cases that ``splits_semi_supervised.json``
marks unlabeled in the fold (their labels are never opened). Shared by the semi-supervised trainers
and ``nnUNetv2_sss_pseudo_label``.
"""
from __future__ import annotations

import os
from typing import List, Sequence, Tuple

from batchgenerators.utilities.file_and_folder_operations import join

from nnunetv2_sss.data.splits import SEMI_SUPERVISED_SPLITS_FILE, hidden_label_cases
from nnunetv2_sss.data.unlabeled_preprocessing import done_cases, unlabeled_folder
from nnunetv2_sss.errors import UserRuntimeError


def unlabeled_sources(preprocessed_base: str, data_identifier: str, folds: Sequence) -> List[Tuple[str, List[str]]]:
    """``(folder, case ids)`` of the pool; with several folds (a fold ensemble) the hidden-label cases are
    those hidden in every one of them. Sources without cases are left out."""
    hidden = [set(hidden_label_cases(preprocessed_base, fold)) for fold in folds]
    hidden_everywhere = sorted(set.intersection(*hidden)) if hidden else []
    sources = [(unlabeled_folder(preprocessed_base, data_identifier), done_cases(unlabeled_folder(
        preprocessed_base, data_identifier))), (join(preprocessed_base, data_identifier), hidden_everywhere)]
    return [(folder, cases) for folder, cases in sources if cases]


def require_unlabeled_sources(preprocessed_base: str, data_identifier: str, folds: Sequence, who: str,
                              configuration: str, plans: str) -> List[Tuple[str, List[str]]]:
    """:func:`unlabeled_sources`, or a user error naming what to run when the pool is empty."""
    sources = unlabeled_sources(preprocessed_base, data_identifier, folds)
    if not sources:
        dataset = os.path.basename(os.path.normpath(preprocessed_base))
        folder = unlabeled_folder(preprocessed_base, data_identifier)
        raise UserRuntimeError(
            f"{who} needs unlabeled data but {folder} holds no preprocessed case and "
            f"{join(preprocessed_base, SEMI_SUPERVISED_SPLITS_FILE)} marks no case of fold "
            f"{' '.join(map(str, folds))} as unlabeled. Put scans into nnUNet_raw/{dataset}/imagesUnlabeled and run "
            f"'nnUNetv2_sss_preprocess_unlabeled -d {dataset} -c {configuration} -p {plans}', or simulate label "
            f"scarcity with 'nnUNetv2_sss_make_splits'.")
    return sources
