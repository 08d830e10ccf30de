"""The labels that arrived for ``nnUNetv2_sss_add_labels -i``: found and checked, all of them before anything
changes; each problem one user error naming the file."""
from __future__ import annotations

import filecmp
import os
from typing import Dict, List, Sequence

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join

from nnunetv2_sss.data.image_checks import ImageFileError, check_complete, read_header, read_images
from nnunetv2_sss.data.unlabeled_raw import UNLABELED_FOLDER
from nnunetv2_sss.errors import UserFileNotFoundError, UserValueError


def label_files(folder: str, file_ending: str) -> Dict[str, str]:
    """``case -> label file`` of ``folder``; a user error for another file or an empty folder."""
    if not isdir(folder):
        raise UserFileNotFoundError(f"-i {folder}: folder does not exist")
    found = {}
    for name in sorted(os.listdir(folder)):
        if name.startswith("."):
            continue
        if not name.endswith(file_ending):
            raise ImageFileError(f"{join(folder, name)}: not a label file <case>{file_ending} (the dataset's ending)")
        found[name[:-len(file_ending)]] = join(folder, name)
    if not found:
        raise ImageFileError(f"{folder}: holds no label file <case>{file_ending}")
    return found


def scan_files(raw: str, case: str, dataset_json: dict, label: str) -> List[str]:
    """The case's channel files, in ``imagesUnlabeled`` or, for a case this command moved already (its
    ``labelsTr`` file equals ``label``), in ``imagesTr``; a user error otherwise."""
    ending = dataset_json["file_ending"]
    files = []
    for channel in range(len(dataset_json["channel_names"])):
        name = f"{case}_{channel:04d}{ending}"
        unlabeled, training = join(raw, UNLABELED_FOLDER, name), join(raw, "imagesTr", name)
        if isfile(unlabeled):
            files.append(unlabeled)
            continue
        if not isfile(training):
            raise UserValueError(f"{label}: {join(raw, UNLABELED_FOLDER, name)} does not exist: a label must be for a "
                                 f"scan of {UNLABELED_FOLDER} (to label training cases hidden by the split, use "
                                 f"--reveal)")
        given = join(raw, "labelsTr", case + ending)
        if not (isfile(given) and filecmp.cmp(given, label, shallow=False)):
            raise UserValueError(f"{label}: {case} is a labeled case already ({training}); remove the file from -i")
        files.append(training)
    return files


def check_label(label: str, images: Sequence[str], reader, allowed: Sequence[int]) -> None:
    """A user error naming ``label`` when it is unreadable, incomplete, of another geometry than its image
    or holds a value that is not one of ``allowed``."""
    check_complete(label, reader)
    own, image = read_header(label, reader).geometry, read_header(images[0], reader).geometry
    for key, value in own.items():
        if value != image.get(key):
            raise ImageFileError(f"{label}: {key} {value} differs from {image.get(key)} of its image {images[0]}; "
                                 f"a label must have its image's size, spacing, origin and direction")
    values = np.unique(read_images(reader, [label])[0])
    wrong = [int(v) if float(v).is_integer() else v for v in values.tolist() if v not in allowed]
    if wrong:
        raise ImageFileError(f"{label}: holds the values {wrong}, the dataset's labels are {sorted(allowed)} "
                             f"(dataset.json)")
