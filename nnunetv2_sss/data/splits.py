"""Label-scarcity splits: nnU-Net's five folds, with only some training cases labeled.

``splits_final.json`` (nnU-Net's file) gets, per fold, ``train`` = the labeled cases only
and ``val`` = the fold's validation cases, so nnU-Net's own ``nnUNetTrainer`` (the
supervised baseline), ``--val`` and ``find_best_configuration`` use the same splits.
``splits_semi_supervised.json`` lists per fold ``labeled`` and ``unlabeled`` cases; the
semi-supervised trainers read only the images of ``unlabeled`` cases, never their labels.
"""
from __future__ import annotations

import json
import os
import re
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, save_json

from nnunetv2_sss.errors import UserFileExistsError, UserValueError

SEMI_SUPERVISED_SPLITS_FILE = "splits_semi_supervised.json"


def _kfold_groups(groups: Sequence[str], num_folds: int, seed: int) -> List[List[str]]:
    """Validation groups of each fold: a seeded shuffle of ``groups`` cut into ``num_folds``."""
    order = np.random.RandomState(seed).permutation(len(groups))
    return [[groups[i] for i in chunk] for chunk in np.array_split(order, num_folds)]


def make_semi_supervised_splits(preprocessed_dataset_folder: str, identifiers: Sequence[str],
                                num_labeled: Optional[int] = None, labeled_fraction: Optional[float] = None,
                                seed: int = 12345, num_folds: int = 5,
                                group_of: Optional[Callable[[str], str]] = None,
                                overwrite: bool = False) -> List[Dict[str, List[str]]]:
    """Write ``splits_final.json`` and ``splits_semi_supervised.json``; return the latter's content.

    ``num_labeled`` / ``labeled_fraction`` count groups (e.g. patients when ``group_of``
    maps an ACDC frame ``patient001_frame01`` to ``patient001``; cases by default). The
    labeled groups are a seeded draw from each fold's training groups.
    """
    if (num_labeled is None) == (labeled_fraction is None):
        raise UserValueError("give exactly one of --num-labeled and --labeled-fraction")
    if num_folds < 2:
        raise UserValueError(f"--folds {num_folds}: give at least 2 folds (each fold validates on one share of the "
                             f"cases and trains on the others)")
    splits_file = join(preprocessed_dataset_folder, "splits_final.json")
    if isfile(splits_file) and not overwrite:
        raise UserFileExistsError(f"{splits_file} exists; pass --force to replace it (models trained on "
                                  f"the old splits no longer match).")
    group_of = group_of or (lambda case: case)
    members: Dict[str, List[str]] = {}
    for case in sorted(identifiers):
        members.setdefault(group_of(case), []).append(case)
    groups = sorted(members)
    if len(groups) < num_folds:
        raise UserValueError(f"{len(groups)} cases/groups cannot be split into {num_folds} folds: "
                             f"lower --folds")

    rng = np.random.RandomState(seed + 1)
    nnunet_splits, semi_splits = [], []
    for validation_groups in _kfold_groups(groups, num_folds, seed):
        training_groups = [g for g in groups if g not in set(validation_groups)]
        n = num_labeled if num_labeled is not None else int(round(labeled_fraction * len(training_groups)))
        if not 1 <= n <= len(training_groups):
            raise UserValueError(f"{n} labeled groups requested, a fold has {len(training_groups)} training "
                                 f"groups: choose --num-labeled / --labeled-fraction between 1 and "
                                 f"{len(training_groups)} groups")
        labeled_groups = set(rng.choice(training_groups, n, replace=False).tolist())
        expand = lambda gs: sorted(c for g in gs for c in members[g])
        labeled = expand(g for g in training_groups if g in labeled_groups)
        unlabeled = expand(g for g in training_groups if g not in labeled_groups)
        nnunet_splits.append({"train": labeled, "val": expand(validation_groups)})
        semi_splits.append({"labeled": labeled, "unlabeled": unlabeled})
    os.makedirs(preprocessed_dataset_folder, exist_ok=True)
    save_json(nnunet_splits, splits_file, sort_keys=False)
    save_json(semi_splits, join(preprocessed_dataset_folder, SEMI_SUPERVISED_SPLITS_FILE), sort_keys=False)
    return semi_splits


def group_by_regex(pattern: Optional[str]) -> Optional[Callable[[str], str]]:
    """``case -> first match of pattern`` (e.g. ``patient\\d+``), or None for no grouping."""
    if pattern is None:
        return None
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise UserValueError(f"--group-regex {pattern!r} is not a valid regular expression ({error})") from None

    def group(case: str) -> str:
        match = compiled.search(case)
        if match is None:
            raise UserValueError(f"case '{case}' does not match the group pattern {pattern!r}: "
                                 f"fix --group-regex")
        return match.group(0)
    return group


def hidden_label_cases(preprocessed_dataset_folder: str, fold) -> List[str]:
    """Training cases used as unlabeled in ``fold`` (empty without the split file).

    Raises for ``fold='all'`` or a fold the file lacks: nnU-Net would then train on every
    case, labels of the hidden ones included.
    """
    path = join(preprocessed_dataset_folder, SEMI_SUPERVISED_SPLITS_FILE)
    if not isfile(path):
        return []
    splits = load_json(path)
    if fold == "all" or not 0 <= int(fold) < len(splits):
        raise UserValueError(f"{path} defines folds 0..{len(splits) - 1}; fold {fold!r} would read the labels of "
                             f"cases that are meant to be unlabeled: train one of folds 0..{len(splits) - 1}.")
    return list(splits[int(fold)]["unlabeled"])


def label_cases(preprocessed_dataset_folder: str, cases: Sequence[str],
                folds: Optional[Sequence[int]] = None) -> List[int]:
    """Make ``cases`` labeled training cases in the split files (those present): ``folds`` None, new cases
    (labels of ``imagesUnlabeled`` scans), join every fold's training set; else cases the semi-supervised
    split hides in ``folds`` move from ``unlabeled`` to ``labeled`` there. No validation set changes.
    Idempotent (a case labeled already stays so). Returns the folds whose training set changed."""
    from nnunetv2_sss.atomic_files import write_text_atomically
    final_file = join(preprocessed_dataset_folder, "splits_final.json")
    semi_file = join(preprocessed_dataset_folder, SEMI_SUPERVISED_SPLITS_FILE)
    final = load_json(final_file) if isfile(final_file) else None
    semi = load_json(semi_file) if isfile(semi_file) else None
    if folds is not None and semi is None:
        raise UserValueError(f"{semi_file} not found: no fold hides labels, there is nothing to reveal")
    chosen = range(len(final if final is not None else semi or [])) if folds is None else [int(f) for f in folds]
    changed = []
    for fold in chosen:
        if semi is not None and not 0 <= fold < len(semi):
            raise UserValueError(f"{semi_file} defines folds 0..{len(semi) - 1}, not fold {fold}")
        for case in cases:
            if final is not None and case in final[fold]["val"]:
                raise UserValueError(f"{final_file}: {case} is a validation case of fold {fold}; it cannot become a "
                                     f"training case there without changing the fold's validation set")
            if folds is not None and case not in semi[fold]["unlabeled"] + semi[fold]["labeled"]:
                raise UserValueError(f"{semi_file}: {case} is not a training case of fold {fold} whose label is "
                                     f"hidden; only those can be revealed")
        new = [case for case in cases if (final is not None and case not in final[fold]["train"]) or
               (semi is not None and case not in semi[fold]["labeled"])]
        if new:
            changed.append(fold)
        if final is not None:
            final[fold]["train"] = sorted(set(final[fold]["train"]) | set(cases))
        if semi is not None:
            semi[fold]["labeled"] = sorted(set(semi[fold]["labeled"]) | set(cases))
            semi[fold]["unlabeled"] = [case for case in semi[fold]["unlabeled"] if case not in set(cases)]
    for path, content in ((final_file, final), (semi_file, semi)):
        if content is not None:
            write_text_atomically(path, json.dumps(content, indent=4))
    return changed
