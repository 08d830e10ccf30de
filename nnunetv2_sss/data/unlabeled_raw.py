"""Discovery and validation of ``nnUNet_raw/DatasetXXX/imagesUnlabeled``.

Layout (same naming as ``imagesTr``): ``CASE_0000<file_ending>``, one file per channel
(``_0000``, ``_0001`` ... as in ``dataset.json``'s ``channel_names``).
Everything here reads headers only (SimpleITK's ``ReadImageInformation``); the checks of single files
(:mod:`nnunetv2_sss.data.image_checks`, shared with the other commands) and of the voxels happen when a
case is preprocessed.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from nnunetv2_sss.data.image_checks import ImageFileError, ImageHeader, find_cases, read_header, \
    reader_orientation, reads_headers

UNLABELED_FOLDER = "imagesUnlabeled"


class UnlabeledDataError(ImageFileError):
    """Bad unlabeled input; the message names the file and the problem."""


def find_unlabeled_cases(raw_dataset_folder: str, dataset_json: dict) -> Dict[str, List[str]]:
    """Map case identifier -> channel files (sorted by channel) of ``imagesUnlabeled``.

    Raises :class:`UnlabeledDataError` for a missing folder and a case identifier that also exists in
    ``imagesTr`` (the case would be listed twice), :class:`ImageFileError` for an empty folder, bad file
    names and missing/extra channels (:func:`~nnunetv2_sss.data.image_checks.find_cases`).
    """
    folder = os.path.join(raw_dataset_folder, UNLABELED_FOLDER)
    file_ending = dataset_json["file_ending"]
    if not os.path.isdir(folder):
        raise UnlabeledDataError(
            f"{folder} does not exist: put the unlabeled scans there, named like imagesTr "
            f"(CASE_0000{file_ending}).")
    cases = find_cases(folder, dataset_json)
    labeled_folder = os.path.join(raw_dataset_folder, "imagesTr")
    if os.path.isdir(labeled_folder):
        labeled = {n[: -len(file_ending) - 5] for n in os.listdir(labeled_folder) if n.endswith(file_ending)}
        duplicates = sorted(set(cases) & labeled)
        if duplicates:
            raise UnlabeledDataError(
                f"{folder}: case(s) {duplicates} are also in imagesTr; a case must be listed once "
                f"(rename the unlabeled copy or remove it).")
    return cases


MAX_SPACING_RATIO = 10.0


@dataclass
class DatasetGeometry:
    """What unlabeled cases are compared with: the training images' dimensionality and orientation(s)
    (from their headers) and the dataset's median spacing (nnU-Net's, reader axis order)."""
    dimension: int
    orientation: Optional[str]          # the training images' (most common) orientation; None: not checked
    orientations: Tuple[str, ...]       # every orientation among the training images
    median_spacing: Tuple[float, ...]


def dataset_geometry(training_files: List[str], reader, median_spacing: Sequence[float]) -> DatasetGeometry:
    """Headers of the training images (``training_files``: one file per training case and channel; with a
    reader that reads files whole, only the first one is read: its dimensionality is all that is used)."""
    if not reads_headers(reader):
        training_files = training_files[:1]
    headers = [read_header(path, reader) for path in training_files]
    if not headers:
        raise UnlabeledDataError("the dataset has no training images (imagesTr) to compare the unlabeled ones with.")
    codes = Counter(h.orientation for h in headers if h.orientation is not None)
    orientation = None if reader_orientation(reader) or not codes else codes.most_common(1)[0][0]
    return DatasetGeometry(headers[0].dimension, orientation, tuple(sorted(codes)),
                           tuple(float(s) for s in median_spacing))


def _format(values: Sequence[float]) -> str:
    return " x ".join(f"{v:.3g}" for v in values)


def check_against_dataset(header: ImageHeader, dataset: DatasetGeometry, reorient: bool) -> ImageHeader:
    """Orientation and spacing of one unlabeled case (its first channel's header) against the dataset.

    Another orientation than the training images' is refused unless ``reorient`` (then the returned header
    is the reoriented one: check and preprocess that); a spacing more than :data:`MAX_SPACING_RATIO` times
    away from the dataset's median on any axis is refused. Raises :class:`UnlabeledDataError`."""
    if dataset.orientation is not None and header.orientation is not None \
            and header.orientation not in dataset.orientations:
        if not reorient:
            found = "', '".join(dataset.orientations)
            raise UnlabeledDataError(
                f"{header.path}: orientation '{header.orientation}', the dataset's training images are '{found}' "
                f"(SimpleITK orientation codes): nnU-Net would read its voxel axes in another order or direction "
                f"than the training images. Rerun with --reorient to preprocess it reoriented to "
                f"'{dataset.orientation}' (your file is not changed), or reorient the file yourself.")
        header = header.reoriented(dataset.orientation)
    axes = range(1 if header.dimension == 2 else 0, len(header.spacing))  # a 2-D image's dummy axis aside
    if len(header.spacing) == len(dataset.median_spacing):
        for axis in axes:
            spacing, median = header.spacing[axis], dataset.median_spacing[axis]
            if not (spacing > 0 and spacing / median <= MAX_SPACING_RATIO and median / spacing <= MAX_SPACING_RATIO):
                raise UnlabeledDataError(
                    f"{header.path}: spacing {spacing:.3g} mm on array axis {axis} is more than "
                    f"{MAX_SPACING_RATIO:g}x away from the dataset's median spacing {median:.3g} mm there "
                    f"(spacing {_format(header.spacing)} mm, median spacing {_format(dataset.median_spacing)} mm): "
                    f"fix the spacing in the file's header (a wrong unit?) or remove the file.")
    return header
