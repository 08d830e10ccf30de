"""``nnUNetv2_sss_add_labels``: the labels of suggested scans have arrived; make the scans labeled cases.

    nnUNetv2_sss_add_labels -d D -i LABEL_FOLDER [-p PLANS [PLANS ...]]
    nnUNetv2_sss_add_labels -d D --reveal CASE [CASE ...] -f FOLD [FOLD ...]

New labels (``-i``): a folder of label files ``<case><file_ending>``, one per scan of ``imagesUnlabeled``.
Every label is checked before anything changes (the scan is in ``imagesUnlabeled``; the label is readable,
complete, has its image's size, spacing, origin and direction, and only the dataset's label values). Then
per case: the label is copied to ``labelsTr/`` and ``gt_segmentations/``; the case is preprocessed with it
by nnU-Net's preprocessor into every configuration folder of the plans that exists (what
``nnUNetv2_preprocess`` would write; the plans are kept, so every trained model stays usable); its images
move from ``imagesUnlabeled/`` to ``imagesTr/``; it leaves the unlabeled preprocessed folders and every
pseudo-label pool. Last, ``numTraining`` of ``dataset.json`` (raw and preprocessed) and the split files:
each new case joins the training (labeled) cases of every fold; no validation set changes.

Reveal (``--reveal``): training cases whose labels ``splits_semi_supervised.json`` hides in the given folds
(label scarcity simulated on a fully labeled pool) become labeled cases of those folds; only the split
files and the pseudo-label pools of those folds change.

Every step is idempotent: an interrupted run is completed by the same command (a case whose images are in
``imagesTr`` already and whose ``labelsTr`` file equals the given label is finished, not refused).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from typing import List, Optional, Sequence

from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json

from nnunetv2_sss.active.label_checks import check_label, label_files, scan_files
from nnunetv2_sss.atomic_files import write_atomically, write_text_atomically
from nnunetv2_sss.data.splits import SEMI_SUPERVISED_SPLITS_FILE, label_cases
from nnunetv2_sss.data.unlabeled_preprocessing import UNLABELED_SUFFIX
from nnunetv2_sss.errors import UserFileNotFoundError, UserValueError, dataset_name, nnunet_path, user_errors
from nnunetv2_sss.selftraining.pool import POOLS_FOLDER, Manifest, drop_cases
from nnunetv2_sss.version import command_parser

VALIDITY = ("validation sets are unchanged, so the validation results of models trained before stay valid for "
            "those models; they did not learn from the new labels: train again (nnUNetv2_train) to use them")


def copy_atomically(source: str, target: str) -> None:
    """``source`` to ``target``, written whole or not at all."""
    with open(source, "rb") as file:
        write_atomically(target, lambda out: shutil.copyfileobj(file, out))


def preprocess_labeled_case(case: str, images: List[str], label: str, folder: str, plans: dict, configuration: str,
                            dataset_json: dict) -> None:
    """nnU-Net's ``run_case_save`` of the case into ``folder`` (staged, the ``.pkl`` moved last)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    staging = join(folder, f".tmp_{case}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        configuration_manager.preprocessor_class(verbose=False).run_case_save(
            join(staging, case), images, label, plans_manager, configuration_manager, dataset_json)
        for name in (f"{case}.b2nd", f"{case}_seg.b2nd", f"{case}.pkl"):  # .pkl last: marks completion
            os.replace(join(staging, name), join(folder, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def preprocessed_configurations(preprocessed: str, plans_identifiers: Sequence[str]) -> List[tuple]:
    """``(plans, configuration, folder)`` of every configuration whose preprocessed folder exists (one per
    data identifier)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    found, seen = [], set()
    for identifier in plans_identifiers:
        path = join(preprocessed, identifier + ".json")
        if not isfile(path):
            raise UserFileNotFoundError(f"-p {identifier}: {path} not found")
        plans = load_json(path)
        for configuration in plans["configurations"]:
            data_identifier = PlansManager(plans).get_configuration(configuration).data_identifier
            if data_identifier not in seen and isdir(join(preprocessed, data_identifier)):
                seen.add(data_identifier)
                found.append((plans, configuration, join(preprocessed, data_identifier)))
    return found


def remove_from_unlabeled(preprocessed: str, case: str) -> None:
    """The case's files in every ``<data_identifier>_unlabeled`` folder, the ``.pkl`` first."""
    for entry in os.listdir(preprocessed):
        if entry.endswith(UNLABELED_SUFFIX) and isdir(join(preprocessed, entry)):
            for ending in (".pkl", ".b2nd", "_seg.b2nd"):
                if isfile(join(preprocessed, entry, case + ending)):
                    os.remove(join(preprocessed, entry, case + ending))


def drop_from_pools(preprocessed: str, cases: Sequence[str], file_ending: str,
                    folds: Optional[Sequence[int]] = None) -> List[str]:
    """Remove ``cases`` from the pseudo-label pools (of ``folds`` only, if given); the pools changed."""
    changed = []
    pools = join(preprocessed, POOLS_FOLDER)
    for entry in sorted(os.listdir(pools)) if isdir(pools) else []:
        manifest = Manifest.read(join(pools, entry))
        if manifest is None or folds is not None and not {str(f) for f in folds} & \
                {str(f) for f in manifest.teacher.folds}:
            continue
        if drop_cases(join(pools, entry), cases, file_ending):
            changed.append(entry)
    return changed


def set_num_training(raw: str, preprocessed: str, dataset_json: dict) -> int:
    """``numTraining`` = the label files of ``labelsTr``, in the raw and the preprocessed ``dataset.json``."""
    ending = dataset_json["file_ending"]
    count = len([n for n in os.listdir(join(raw, "labelsTr")) if n.endswith(ending)])
    for folder in (raw, preprocessed):
        if isfile(join(folder, "dataset.json")):
            content = load_json(join(folder, "dataset.json"))
            content["numTraining"] = count
            write_text_atomically(join(folder, "dataset.json"), json.dumps(content, indent=4))
    return count


def add_new_labels(dataset, label_folder: str, plans_identifiers: Sequence[str] = ("nnUNetPlans",)) -> List[str]:
    """Make the ``imagesUnlabeled`` scans labeled by ``label_folder`` labeled training cases (the module's
    docstring); returns the cases."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    name = dataset_name(dataset)
    raw, preprocessed = join(nnunet_path(nnUNet_raw), name), join(nnunet_path(nnUNet_preprocessed), name)
    dataset_json = load_json(join(raw, "dataset.json"))
    if "dataset" in dataset_json:
        raise UserValueError(f"{join(raw, 'dataset.json')} lists its files (a 'dataset' entry); add the new cases "
                             f"there and to imagesTr/labelsTr yourself")
    ending = dataset_json["file_ending"]
    labels = label_files(label_folder, ending)
    configurations = preprocessed_configurations(preprocessed, plans_identifiers)
    reader = PlansManager(load_json(join(preprocessed, plans_identifiers[0] + ".json"))).image_reader_writer_class()
    allowed = sorted({int(v) for value in dataset_json["labels"].values()
                      for v in (value if isinstance(value, (list, tuple)) else [value])})
    images = {case: scan_files(raw, case, dataset_json, label) for case, label in labels.items()}
    for case, label in labels.items():
        check_label(label, images[case], reader, allowed)
    for folder in ("labelsTr", "imagesTr"):
        os.makedirs(join(raw, folder), exist_ok=True)
    for index, (case, label) in enumerate(labels.items(), 1):
        copy_atomically(label, join(raw, "labelsTr", case + ending))
        if isdir(join(preprocessed, "gt_segmentations")):
            copy_atomically(label, join(preprocessed, "gt_segmentations", case + ending))
        for plans, configuration, folder in configurations:
            preprocess_labeled_case(case, images[case], label, folder, plans, configuration, dataset_json)
        for path in images[case]:
            if os.path.dirname(path) != join(raw, "imagesTr"):
                os.replace(path, join(raw, "imagesTr", os.path.basename(path)))
        remove_from_unlabeled(preprocessed, case)
        folders = ", ".join(os.path.basename(f) for _, _, f in configurations) or "no configuration folder"
        print(f"[{index}/{len(labels)}] {case}: labeled; preprocessed into {folders}", flush=True)
    pools = drop_from_pools(preprocessed, list(labels), ending)
    count = set_num_training(raw, preprocessed, dataset_json)
    has_splits = any(isfile(join(preprocessed, f)) for f in ("splits_final.json", SEMI_SUPERVISED_SPLITS_FILE))
    folds = label_cases(preprocessed, list(labels))
    joined = (f"they joined the training cases of fold(s) {' '.join(map(str, folds))}" if folds else
              "they are training cases of every fold already" if has_splits else
              "no split file yet: nnU-Net's first training makes one from every case")
    print(f"{len(labels)} new labeled case(s), {count} in all (dataset.json numTraining); {joined}: {VALIDITY}" +
          (f"; removed from the pseudo-label pools {', '.join(pools)} (their other pseudo-labels stay valid)"
           if pools else ""), flush=True)
    return list(labels)


def reveal_labels(preprocessed: str, cases: Sequence[str], folds: Sequence[int]) -> List[int]:
    """Training cases hidden by the semi-supervised split in ``folds`` become labeled there, in the dataset's
    preprocessed folder ``preprocessed`` (any, e.g. a study group's view); returns the folds changed. The
    simulation's step after a query."""
    changed = label_cases(preprocessed, cases, folds)
    pools = drop_from_pools(preprocessed, cases, load_json(join(preprocessed, "dataset.json"))["file_ending"], folds)
    print(f"{len(cases)} case(s) revealed in fold(s) {' '.join(map(str, folds))} ({len(changed)} changed): "
          f"{VALIDITY}; other folds are unchanged" +
          (f"; removed from the pseudo-label pools {', '.join(pools)}" if pools else ""), flush=True)
    return changed


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(prog="nnUNetv2_sss_add_labels", description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", required=True, help="dataset name or id")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("-i", help="folder of the new label files <case><file_ending>, for scans of imagesUnlabeled")
    what.add_argument("--reveal", nargs="+", metavar="CASE",
                      help="training cases whose labels splits_semi_supervised.json hides in the folds -f")
    parser.add_argument("-f", nargs="+", type=int, help="the folds of --reveal")
    parser.add_argument("-p", nargs="+", default=["nnUNetPlans"],
                        help="plans whose preprocessed configuration folders get the new cases (default nnUNetPlans)")
    return parser


@user_errors
def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    if args.reveal:
        if not args.f:
            raise UserValueError("--reveal needs the folds in which to reveal the cases: -f FOLD [FOLD ...]")
        from nnunetv2.paths import nnUNet_preprocessed
        reveal_labels(join(nnunet_path(nnUNet_preprocessed), dataset_name(args.d)), args.reveal, args.f)
    else:
        if args.f:
            raise UserValueError("-f is for --reveal; new labels (-i) join every fold's training cases")
        add_new_labels(args.d, args.i, args.p)


if __name__ == "__main__":
    main()
