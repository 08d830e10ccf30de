"""Discovery and validation of ``nnUNet_raw/DatasetXXX/imagesUnlabeled``.

Layout (same naming as ``imagesTr``): ``CASE_0000<file_ending>``, one file per channel
(``_0000``, ``_0001`` ... as in ``dataset.json``'s ``channel_names``).
Everything here reads headers only (SimpleITK's ``ReadImageInformation``); voxel checks happen when a
case is preprocessed.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunetv2_sss.errors import UserValueError

UNLABELED_FOLDER = "imagesUnlabeled"
_CHANNEL_PATTERN = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class UnlabeledDataError(UserValueError):
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


# nnU-Net readers whose arrays/spacings follow the file header as SimpleITK reads it (array axes = header axes
# reversed); with the others, a file is read whole to learn its shape and spacing
_HEADER_READERS = ("SimpleITKIO", "NibabelIO")
# readers that bring every image into this orientation themselves (SimpleITK's orientation code)
_REORIENTING_READERS = {"SimpleITKIOWithReorient": "RAS", "NibabelIOWithReorient": "RAS"}
MAX_SPACING_RATIO = 10.0
_AXIS_OF_LETTER = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}


@dataclass
class ImageHeader:
    """What nnU-Net's reader will make of an image, from its header.

    ``shape``/``spacing``: spatial, in the reader's array axis order (SimpleITK's axes reversed; a 2-D image
    gets nnU-Net's leading dummy axis); ``orientation``: SimpleITK's orientation code of a 3-D image (e.g.
    ``'LPS'``: array axes x, y, z run towards left, posterior, superior), ``None`` when unknown."""
    path: str
    dimension: int
    shape: Tuple[int, ...]
    spacing: Tuple[float, ...]
    orientation: Optional[str]
    geometry: tuple

    def reoriented(self, orientation: str) -> "ImageHeader":
        """The header after ``SimpleITK.DICOMOrient(image, orientation)`` (axes permuted and flipped)."""
        if self.orientation is None or self.orientation == orientation:
            return self
        source = [_AXIS_OF_LETTER[letter] for letter in self.orientation]
        order = [source.index(_AXIS_OF_LETTER[letter]) for letter in orientation]  # SimpleITK axis order
        shape, spacing = self.shape[::-1], self.spacing[::-1]
        return replace(self, shape=tuple(shape[i] for i in order)[::-1],
                       spacing=tuple(spacing[i] for i in order)[::-1], orientation=orientation)


def reader_orientation(reader) -> Optional[str]:
    """The orientation a reorienting nnU-Net reader brings every image into, else ``None``."""
    return _REORIENTING_READERS.get(type(reader).__name__)


def _reads_headers(reader) -> bool:
    return type(reader).__name__ in _HEADER_READERS + tuple(_REORIENTING_READERS)


def orientation_code(direction: Sequence[float]) -> str:
    import SimpleITK as sitk
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(list(direction))


def unreadable(path: str, error: BaseException) -> UnlabeledDataError:
    """The error for a file that cannot be read, with the reader's reason on one line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = next((line.split("ERROR:", 1)[1].strip() for line in lines if "ERROR:" in line),
                  lines[-1] if lines else type(error).__name__)
    return UnlabeledDataError(f"{path}: cannot be read ({reason}); replace the file with a readable copy or "
                              f"remove it.")


def read_header(path: str, reader) -> ImageHeader:
    """Header of one image file (SimpleITK's ``ReadImageInformation``: no voxels are read). A file that
    cannot be read raises :class:`UnlabeledDataError` naming it. ``reader``: the plans' nnU-Net reader
    instance; for a reader other than SimpleITK's/nibabel's, or a format SimpleITK does not know, the
    file is read by ``reader``."""
    import SimpleITK as sitk

    info = sitk.ImageFileReader()
    info.SetFileName(path)
    try:
        if not _reads_headers(reader):
            raise RuntimeError(f"{type(reader).__name__} is read whole")
        info.ReadImageInformation()
    except RuntimeError:
        try:
            images, properties = reader.read_images([path])
        except Exception as error:  # noqa: BLE001 - whatever the reader raises, the file is unreadable
            raise unreadable(path, error) from None
        return ImageHeader(path, images.ndim - 1, tuple(images.shape[1:]),
                           tuple(float(s) for s in properties["spacing"]), None, (tuple(images.shape),))
    dimension = info.GetDimension()
    size, spacing = tuple(info.GetSize())[::-1], tuple(info.GetSpacing())[::-1]
    if dimension == 2:
        shape, nn_spacing = (1, *size), (999 * max(spacing), *spacing)
    elif dimension == 4:
        shape, nn_spacing = size[1:], spacing[1:]
    else:
        shape, nn_spacing = size, spacing
    direction = info.GetDirection()
    header = ImageHeader(path, dimension, tuple(shape), tuple(float(s) for s in nn_spacing),
                         orientation_code(direction) if dimension == 3 else None,
                         (info.GetSize(), np.round(info.GetSpacing(), 5).tolist(),
                          np.round(info.GetOrigin(), 3).tolist(), np.round(direction, 4).tolist()))
    target = reader_orientation(reader)
    return header.reoriented(target) if target else header


def check_case_headers(files: List[str], expected_dimension: int, reader) -> ImageHeader:
    """Header checks of one case's channel files before any voxel work.

    ``reader``: an nnU-Net image reader/writer instance (``plans_manager.image_reader_writer_class()``).
    Checks that every file can be read, the dimensionality against the dataset's and that all channels
    share size, spacing, origin and direction. Returns the first channel's header.
    """
    first = None
    for path in files:
        header = read_header(path, reader)
        if header.dimension != expected_dimension:
            raise UnlabeledDataError(f"{path}: image is {header.dimension}-D, the dataset's images are "
                                     f"{expected_dimension}-D.")
        if first is None:
            first = header
        elif header.geometry != first.geometry:
            raise UnlabeledDataError(f"{path}: size/spacing/origin/orientation differ from {files[0]} "
                                     f"(channels of one case must share their geometry).")
    return first


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
    if not _reads_headers(reader):
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


def _stored_non_finite(path: str) -> bool:
    """NaN/inf in a NIfTI file as stored (ITK's reader silently turns NaN into 0)."""
    if not path.endswith((".nii", ".nii.gz")):
        return False
    import nibabel
    try:
        stored = np.asanyarray(nibabel.load(path).dataobj)
    except Exception as error:  # noqa: BLE001 - e.g. a truncated file, which ITK reads zero-filled
        raise unreadable(path, error) from None
    return not np.all(np.isfinite(stored))


def check_voxels(images: np.ndarray, files: List[str]) -> None:
    """``images``: ``(C, *spatial)`` as read. NaN/inf voxels (as read, or as stored in a NIfTI
    file) or a constant (empty) channel raise :class:`UnlabeledDataError` naming the file."""
    for channel, path in zip(images, files):
        if not np.all(np.isfinite(channel)) or _stored_non_finite(path):
            raise UnlabeledDataError(f"{path}: contains NaN or infinite voxels.")
        if channel.size == 0 or channel.min() == channel.max():
            raise UnlabeledDataError(f"{path}: image is empty (every voxel has the same value).")
