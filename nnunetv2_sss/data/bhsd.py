"""``nnUNetv2_sss_convert_bhsd``: the BHSD release -> an nnU-Net v2 raw dataset.

Input (the release, nnU-Net v1 task layout): a folder with ``imagesTr/`` and ``labelsTr/``
(and, depending on the copy, ``imagesTs/`` / ``labelsTs/``) holding the 192 labeled volumes
named ``ID_xxxxxxxx_ID_yyyyyyyyyy[_0000].nii.gz``, plus a folder of unlabeled volumes.
The official case lists (96 ``training``, 96 ``test``) and label names come from the
release's own ``dataset.json``, shipped in ``resources/bhsd_dataset.json``; each case is
looked up in the folder its list names first, then in the other (``imagesTr``/``imagesTs``).

Output ``nnUNet_raw/DatasetXXX_BHSD``: ``imagesTr``/``labelsTr`` = official training list,
``imagesTs``/``labelsTs`` = official test list, ``imagesUnlabeled`` = N volumes drawn with
``random.Random(seed).sample`` from the sorted unlabeled files (cases whose identifier is
also a labeled case are left out), written as ``CASE_0000.nii.gz``; the draw is recorded in
``unlabeled_selection.json`` in the dataset folder. Labels 0-5 as in the release, or 0/1
with ``--merge-foreground`` (the paper's Table 2 setting: all hemorrhage types as one).
"""
from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from batchgenerators.utilities.file_and_folder_operations import save_json

from nnunetv2_sss.data.conversion import (copy_image, copy_label, new_raw_dataset_folder, relative_listing,
                                          removed_on_error, require_files, strip_suffixes)
from nnunetv2_sss.errors import UserFileNotFoundError, UserValueError, user_errors
from nnunetv2_sss.version import command_parser

FILE_ENDING = ".nii.gz"
SELECTION_FILE = "unlabeled_selection.json"
MERGED_LABELS = {"background": 0, "hemorrhage": 1}


def official_release_json() -> dict:
    """The BHSD release's ``dataset.json`` (labels, 96 training and 96 test cases)."""
    return json.loads(resources.files("nnunetv2_sss.data").joinpath("resources/bhsd_dataset.json").read_text())


def official_case_lists() -> Tuple[List[str], List[str]]:
    """(training case ids, test case ids) of the release, in its order."""
    release = official_release_json()
    training = [strip_suffixes(Path(entry["image"]).name) for entry in release["training"]]
    test = [strip_suffixes(Path(path).name) for path in release["test"]]
    return training, test


def official_labels() -> Dict[str, int]:
    """Label name -> value of the release (0 background, 1 epidural ... 5 subdural)."""
    return {name: int(value) for value, name in official_release_json()["labels"].items()}


def check_release_json(path: Path, training: List[str], test: List[str]) -> None:
    """If the release folder has its ``dataset.json``, its case lists must be the official ones."""
    if not path.is_file():
        return
    release = json.loads(path.read_text())
    found_training = sorted(strip_suffixes(Path(e["image"]).name) for e in release.get("training", []))
    found_test = sorted(strip_suffixes(Path(p).name) for p in release.get("test", []))
    if (found_training, found_test) != (sorted(training), sorted(test)):
        raise UserValueError(f"{path}: its training/test lists ({len(found_training)}/{len(found_test)} cases) "
                             "differ from the official BHSD lists shipped in "
                             "nnunetv2_sss/data/resources/bhsd_dataset.json")


def _first_existing(candidates: List[Path]) -> Path:
    return next((c for c in candidates if c.is_file()), candidates[0])


def locate_case(release_folder: Path, case: str, official_split: str) -> Tuple[Path, Path]:
    """(image, label) paths of one labeled case; the folders of its official split first.
    Missing files come back as the first candidate, so the caller can report them."""
    order = ("Tr", "Ts") if official_split == "training" else ("Ts", "Tr")
    images = [release_folder / f"images{s}" / f"{case}{suffix}{FILE_ENDING}" for s in order for suffix in ("_0000", "")]
    labels = [release_folder / f"labels{s}" / f"{case}{FILE_ENDING}" for s in order]
    return _first_existing(images), _first_existing(labels)


def select_unlabeled(unlabeled_folder: Path, num_unlabeled: int, seed: int, exclude: set) -> dict:
    """The seeded draw of unlabeled files, as recorded in ``unlabeled_selection.json``."""
    if not unlabeled_folder.is_dir():
        raise UserFileNotFoundError(f"unlabeled folder {unlabeled_folder} does not exist (-u)")
    candidates = [n for n in relative_listing(unlabeled_folder, FILE_ENDING) if strip_suffixes(n) not in exclude]
    identifiers = [strip_suffixes(n) for n in candidates]
    if len(set(identifiers)) != len(identifiers):
        raise UserValueError(f"{unlabeled_folder}: two files map to the same case identifier "
                             "(e.g. X.nii.gz and X_0000.nii.gz)")
    if num_unlabeled > len(candidates):
        raise UserValueError(f"{num_unlabeled} unlabeled volumes requested (-n), {unlabeled_folder} has "
                             f"{len(candidates)} '*{FILE_ENDING}' files that are not labeled cases")
    return {"source_folder": str(unlabeled_folder.resolve()), "seed": seed, "num_available": len(candidates),
            "rule": "random.Random(seed).sample(sorted candidate file names, n)",
            "files": sorted(random.Random(seed).sample(candidates, num_unlabeled))}


def _write_dataset(output: Path, pairs: Dict[str, Tuple[Path, Path]], training: List[str], test: List[str],
                   selection: Optional[dict], merge_foreground: bool) -> None:
    allowed = sorted(official_labels().values())
    for cases, split in ((training, "Tr"), (test, "Ts")):
        for case in cases:
            image, label = pairs[case]
            copy_image(image, output / f"images{split}" / f"{case}_0000{FILE_ENDING}")
            copy_label(label, output / f"labels{split}" / f"{case}{FILE_ENDING}", allowed, merge_foreground)
    if selection:
        for name in selection["files"]:
            copy_image(Path(selection["source_folder"]) / name,
                       output / "imagesUnlabeled" / f"{strip_suffixes(name)}_0000{FILE_ENDING}")
        save_json(selection, str(output / SELECTION_FILE), sort_keys=False)
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    generate_dataset_json(str(output), {0: "CT"}, dict(MERGED_LABELS if merge_foreground else official_labels()),
                          len(training), FILE_ENDING, dataset_name=output.name, numTest=len(test),
                          description="BHSD (Wu et al., MLMI 2023): official 96 training / 96 test split"
                                      + (", hemorrhage types merged into one label" if merge_foreground else ""),
                          reference="https://github.com/White65534/BHSD", license="see the BHSD release",
                          converted_by="nnUNetv2_sss_convert_bhsd")


def convert_bhsd(release_folder: str, unlabeled_folder: Optional[str], dataset_id: int,
                 num_unlabeled: int = 500, seed: int = 0, merge_foreground: bool = False,
                 dataset_name: str = "BHSD") -> Path:
    """Write the raw dataset (see module docstring); returns its folder. Every input file is
    checked to exist before anything is written; a failure while writing removes the folder."""
    release = Path(release_folder)
    if not release.is_dir():
        raise UserFileNotFoundError(f"BHSD release folder {release} does not exist (-i)")
    if num_unlabeled < 0:
        raise UserValueError(f"-n {num_unlabeled}: the number of unlabeled volumes must be >= 0")
    training, test = official_case_lists()
    check_release_json(release / "dataset.json", training, test)
    pairs = {case: locate_case(release, case, "training") for case in training}
    pairs.update({case: locate_case(release, case, "test") for case in test})
    require_files([image for image, _ in pairs.values()], f"BHSD images (looked in {release}/imagesTr|imagesTs)")
    require_files([label for _, label in pairs.values()], f"BHSD labels (looked in {release}/labelsTr|labelsTs)")
    selection = None
    if num_unlabeled:
        if unlabeled_folder is None:
            raise UserValueError(f"{num_unlabeled} unlabeled volumes requested (-n) but no unlabeled folder (-u) "
                                 f"given: pass -u FOLDER or -n 0")
        selection = select_unlabeled(Path(unlabeled_folder), num_unlabeled, seed, set(pairs))
    output = new_raw_dataset_folder(dataset_id, dataset_name)
    with removed_on_error(output):
        _write_dataset(output, pairs, training, test, selection, merge_foreground)
    return output


@user_errors
def main(argv: Optional[List[str]] = None) -> None:
    parser = command_parser(prog="nnUNetv2_sss_convert_bhsd", description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", required=True, help="BHSD release folder (imagesTr/, labelsTr/, ...)")
    parser.add_argument("-u", default=None, help="folder of unlabeled BHSD volumes (*.nii.gz)")
    parser.add_argument("-d", type=int, required=True, help="nnU-Net dataset id of the output")
    parser.add_argument("-n", type=int, default=500, help="number of unlabeled volumes to draw (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the unlabeled draw (default 0)")
    parser.add_argument("--merge-foreground", action="store_true",
                        help="write all hemorrhage labels 1-5 as label 1 (paper's Table 2 setting)")
    parser.add_argument("--name", default=None, help="dataset name (default BHSD, BHSDMerged with --merge-foreground)")
    args = parser.parse_args(argv)
    name = args.name or ("BHSDMerged" if args.merge_foreground else "BHSD")
    output = convert_bhsd(args.i, args.u, args.d, args.n, args.seed, args.merge_foreground, name)
    print(f"written {output}")
