"""Discovery and validation of ``nnUNet_raw/DatasetXXX/imagesUnlabeled``.

Layout (same naming as ``imagesTr``): ``CASE_0000<file_ending>``, one file per channel
(``_0000``, ``_0001`` ... as in ``dataset.json``'s ``channel_names``).
Everything here reads headers only; voxel checks happen when a case is preprocessed.
"""
from __future__ import annotations

import os
import re
from typing import Dict, List

import numpy as np

UNLABELED_FOLDER = "imagesUnlabeled"
_CHANNEL_PATTERN = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class UnlabeledDataError(ValueError):
    """Bad unlabeled input; the message names the file and the problem."""


def find_unlabeled_cases(raw_dataset_folder: str, dataset_json: dict) -> Dict[str, List[str]]:
    """Map case identifier -> channel files (sorted by channel) of ``imagesUnlabeled``.

    Raises :class:`UnlabeledDataError` for a missing or empty folder, a file with another
    ending or without a ``_XXXX`` channel suffix, a case with missing/extra channels, and
    a case identifier that also exists in ``imagesTr`` (the case would be listed twice).
    """
    folder = os.path.join(raw_dataset_folder, UNLABELED_FOLDER)
    if not os.path.isdir(folder):
        raise UnlabeledDataError(
            f"{folder} does not exist: put the unlabeled scans there, named like imagesTr "
            f"(CASE_0000{dataset_json['file_ending']}).")
    file_ending = dataset_json["file_ending"]
    num_channels = len(dataset_json["channel_names"])
    channels_per_case: Dict[str, Dict[int, str]] = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or os.path.isdir(path):
            continue
        if not name.endswith(file_ending):
            raise UnlabeledDataError(f"{path}: file ending is not the dataset's '{file_ending}'.")
        match = _CHANNEL_PATTERN.match(name[: -len(file_ending)])
        if match is None:
            raise UnlabeledDataError(f"{path}: name must end with a 4-digit channel index, e.g. "
                                     f"CASE_0000{file_ending}.")
        case, channel = match.group("case"), int(match.group("channel"))
        channels_per_case.setdefault(case, {})[channel] = path
    if not channels_per_case:
        raise UnlabeledDataError(f"{folder} contains no images ending in '{file_ending}'.")

    expected = set(range(num_channels))
    cases = {}
    for case, channels in channels_per_case.items():
        if set(channels) != expected:
            raise UnlabeledDataError(
                f"{os.path.join(folder, case)}: has channel files {sorted(channels)}, the dataset "
                f"has {num_channels} channel(s) {sorted(expected)} (dataset.json channel_names).")
        cases[case] = [channels[c] for c in sorted(channels)]

    labeled_folder = os.path.join(raw_dataset_folder, "imagesTr")
    if os.path.isdir(labeled_folder):
        labeled = {n[: -len(file_ending) - 5] for n in os.listdir(labeled_folder) if n.endswith(file_ending)}
        duplicates = sorted(set(cases) & labeled)
        if duplicates:
            raise UnlabeledDataError(
                f"{folder}: case(s) {duplicates} are also in imagesTr; a case must be listed once "
                f"(rename the unlabeled copy or remove it).")
    return cases


def check_case_headers(files: List[str], expected_dimension: int, reader) -> None:
    """Header checks of one case's channel files before any voxel work.

    ``reader``: an nnU-Net image reader/writer instance (``plans_manager.image_reader_writer_class()``).
    Checks the dimensionality against the dataset's and that all channels share
    size, spacing, origin and direction.
    """
    import SimpleITK as sitk

    geometry = None
    for path in files:
        info = sitk.ImageFileReader()
        info.SetFileName(path)
        try:
            info.ReadImageInformation()
        except RuntimeError:
            # not a SimpleITK format (e.g. png/tif): let nnU-Net's own reader decide
            images, _ = reader.read_images([path])
            dimension = images.ndim - 1
            this = (images.shape,)
        else:
            dimension = info.GetDimension()
            this = (info.GetSize(), np.round(info.GetSpacing(), 5).tolist(),
                    np.round(info.GetOrigin(), 3).tolist(), np.round(info.GetDirection(), 4).tolist())
        if dimension != expected_dimension:
            raise UnlabeledDataError(f"{path}: image is {dimension}-D, the dataset's images are "
                                     f"{expected_dimension}-D.")
        if geometry is None:
            geometry = this
        elif this != geometry:
            raise UnlabeledDataError(f"{path}: size/spacing/origin/orientation differ from {files[0]} "
                                     f"(channels of one case must share their geometry).")


def _stored_non_finite(path: str) -> bool:
    """NaN/inf in a NIfTI file as stored (ITK's reader silently turns NaN into 0)."""
    if not path.endswith((".nii", ".nii.gz")):
        return False
    import nibabel
    return not np.all(np.isfinite(np.asanyarray(nibabel.load(path).dataobj)))


def check_voxels(images: np.ndarray, files: List[str]) -> None:
    """``images``: ``(C, *spatial)`` as read. NaN/inf voxels (as read, or as stored in a NIfTI
    file) or a constant (empty) channel raise :class:`UnlabeledDataError` naming the file."""
    for channel, path in zip(images, files):
        if not np.all(np.isfinite(channel)) or _stored_non_finite(path):
            raise UnlabeledDataError(f"{path}: contains NaN or infinite voxels.")
        if channel.size == 0 or channel.min() == channel.max():
            raise UnlabeledDataError(f"{path}: image is empty (every voxel has the same value).")
