"""What the study needs before its first run: the raw dataset with enough training cases for the
labeled counts, the plans and the preprocessed data (and the unlabeled data, if the dataset has any)."""
from __future__ import annotations

import argparse
import math
import os
from typing import Sequence

from nnunetv2_sss.errors import UserFileNotFoundError, UserValueError

FOLDS = 5  # nnUNetv2_sss_make_splits' k-fold


def check_dataset(raw: str, shared: str, args: argparse.Namespace, counts: Sequence[int], revealed: int = 0) -> dict:
    """The raw dataset's ``dataset.json``, after checking the dataset in ``raw`` and its preprocessed folder
    ``shared`` against ``-c``, ``-p``, the labeled ``counts`` and the scans active learning reveals beyond the
    smallest count (``revealed``; one :class:`UserError` naming what to do)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    if not os.path.isfile(os.path.join(raw, "dataset.json")):
        raise UserFileNotFoundError(f"{os.path.join(raw, 'dataset.json')} not found: the study reads the raw "
                                    "dataset's training and test cases")
    dataset_json = load_json(os.path.join(raw, "dataset.json"))
    plans_file = os.path.join(shared, f"{args.p}.json")
    hint = f"run 'nnUNetv2_plan_and_preprocess -d {args.d} -c {args.c}' first"
    if not os.path.isfile(plans_file):
        raise UserFileNotFoundError(f"{plans_file} not found: {hint}")
    plans = load_json(plans_file)
    if args.c not in plans.get("configurations", {}):
        raise UserValueError(f"-c {args.c}: not a configuration of {plans_file} "
                             f"({', '.join(plans.get('configurations', {}))})")
    identifier = PlansManager(plans).get_configuration(args.c).data_identifier
    if not os.path.isdir(os.path.join(shared, identifier)):
        raise UserFileNotFoundError(f"{os.path.join(shared, identifier)} not found: {hint}")
    if os.path.isdir(os.path.join(raw, "imagesUnlabeled")) and \
            not os.path.isdir(os.path.join(shared, f"{identifier}_unlabeled")):
        raise UserFileNotFoundError(
            f"{os.path.join(shared, identifier + '_unlabeled')} not found but {raw}/imagesUnlabeled exists: "
            f"run 'nnUNetv2_sss_preprocess_unlabeled -d {args.d} -c {args.c}' first")
    cases = sorted(get_filenames_of_train_images_and_targets(raw, dataset_json))
    if len(cases) < FOLDS:
        raise UserValueError(f"{raw}: {len(cases)} training cases, the study's splits need at least {FOLDS}")
    trainable = len(cases) - math.ceil(len(cases) / FOLDS)  # fold 0's training cases (make_splits' k-fold)
    too_many = [n for n in counts if n > trainable]
    if too_many:
        raise UserValueError(f"--num-labeled {' '.join(map(str, too_many))}: fold {args.fold} has "
                             f"{trainable} training cases ({len(cases)} in imagesTr, {FOLDS} folds); "
                             f"choose counts between 1 and {trainable}")
    hidden = trainable - min(counts)
    if revealed > hidden:
        raise UserValueError(f"--budget {args.budget} --al-rounds {args.al_rounds}: reveal {revealed} scans, and with "
                             f"--num-labeled {min(counts)} fold {args.fold} hides {hidden} of its {trainable} training "
                             f"cases" + (" (none to query)" if hidden == 0 else "") +
                             "; choose a smaller budget, fewer rounds or fewer initial labels")
    return dataset_json
