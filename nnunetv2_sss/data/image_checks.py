"""Checks of image files that every plugin command runs before its long work.

Names (nnU-Net's ``CASE_XXXX<file_ending>``, one file per channel of ``dataset.json``), headers
(SimpleITK's ``ReadImageInformation``: readable, channels of one case sharing their geometry) and
voxels (complete, finite, not constant). A NIfTI file is also read whole with nibabel: SimpleITK
silently zero-fills a truncated ``.nii.gz`` and turns stored NaN into 0. Every problem raises
:class:`ImageFileError` naming the file.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence

import numpy as np

from nnunetv2_sss.errors import UserValueError

_CHANNEL_PATTERN = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class ImageFileError(UserValueError):
    """A bad image file or folder of images; the message names it and the problem."""


def find_cases(folder: str, dataset_json: dict) -> Dict[str, List[str]]:
    """Map case identifier -> channel files (sorted by channel) of ``folder`` (nnU-Net naming).

    Raises :class:`ImageFileError` for a file with another ending or without a ``_XXXX`` channel
    suffix, a case with missing/extra channels (``dataset.json``'s ``channel_names``) and a folder
    without images."""
    file_ending = dataset_json["file_ending"]
    num_channels = len(dataset_json["channel_names"])
    channels_per_case: Dict[str, Dict[int, str]] = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or os.path.isdir(path):
            continue
        if not name.endswith(file_ending):
            raise ImageFileError(f"{path}: file ending is not the dataset's '{file_ending}'.")
        match = _CHANNEL_PATTERN.match(name[: -len(file_ending)])
        if match is None:
            raise ImageFileError(f"{path}: name must end with a 4-digit channel index, e.g. CASE_0000{file_ending}.")
        channels_per_case.setdefault(match.group("case"), {})[int(match.group("channel"))] = path
    if not channels_per_case:
        raise ImageFileError(f"{folder} contains no images ending in '{file_ending}'.")
    expected = set(range(num_channels))
    for case, channels in channels_per_case.items():
        if set(channels) != expected:
            raise ImageFileError(
                f"{os.path.join(folder, case)}: has channel files {sorted(channels)}, the dataset "
                f"has {num_channels} channel(s) {sorted(expected)} (dataset.json channel_names).")
    return {case: [channels[c] for c in sorted(channels)] for case, channels in channels_per_case.items()}


# nnU-Net readers whose arrays/spacings follow the file header as SimpleITK reads it (array axes = header axes
# reversed); with the others, a file is read whole to learn its shape and spacing
_HEADER_READERS = ("SimpleITKIO", "NibabelIO")
# readers that bring every image into this orientation themselves (SimpleITK's orientation code)
_REORIENTING_READERS = {"SimpleITKIOWithReorient": "RAS", "NibabelIOWithReorient": "RAS"}
_AXIS_OF_LETTER = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}


@dataclass
class ImageHeader:
    """What nnU-Net's reader will make of an image, from its header.

    ``shape``/``spacing``: spatial, in the reader's array axis order (SimpleITK's axes reversed; a 2-D image
    gets nnU-Net's leading dummy axis); ``orientation``: SimpleITK's orientation code of a 3-D image (e.g.
    ``'LPS'``: array axes x, y, z run towards left, posterior, superior), ``None`` when unknown;
    ``geometry``: what the channels of one case must share (``size``, ``spacing``, ``origin``, ``direction``
    as in the header; ``shape`` for a file read whole)."""
    path: str
    dimension: int
    shape: tuple
    spacing: tuple
    orientation: Optional[str]
    geometry: Dict[str, list]

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


def reads_headers(reader) -> bool:
    """Whether ``reader`` (an nnU-Net reader instance) sees a file as its header says (else: read whole)."""
    return type(reader).__name__ in _HEADER_READERS + tuple(_REORIENTING_READERS)


def orientation_code(direction: Sequence[float]) -> str:
    import SimpleITK as sitk
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(list(direction))


def unreadable(path: str, error: BaseException) -> ImageFileError:
    """The error for a file that cannot be read, with the reader's reason on one line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = next((line.split("ERROR:", 1)[1].strip() for line in lines if "ERROR:" in line),
                  lines[-1] if lines else type(error).__name__)
    return ImageFileError(f"{path}: cannot be read ({reason}); replace the file with a readable copy or remove it.")


def read_header(path: str, reader) -> ImageHeader:
    """Header of one image file (SimpleITK's ``ReadImageInformation``: no voxels are read). A file that
    cannot be read raises :class:`ImageFileError` naming it. ``reader``: the plans' nnU-Net reader
    instance; for a reader other than SimpleITK's/nibabel's, or a format SimpleITK does not know, the
    file is read by ``reader``."""
    import SimpleITK as sitk

    info = sitk.ImageFileReader()
    info.SetFileName(path)
    try:
        if not reads_headers(reader):
            raise RuntimeError(f"{type(reader).__name__} is read whole")
        info.ReadImageInformation()
    except RuntimeError:
        images, properties = read_images(reader, [path])
        return ImageHeader(path, images.ndim - 1, tuple(images.shape[1:]),
                           tuple(float(s) for s in properties["spacing"]), None, {"shape": list(images.shape)})
    dimension = info.GetDimension()
    size, spacing = tuple(info.GetSize())[::-1], tuple(info.GetSpacing())[::-1]
    if dimension == 2:
        shape, nn_spacing = (1, *size), (999 * max(spacing), *spacing)
    elif dimension == 4:
        shape, nn_spacing = size[1:], spacing[1:]
    else:
        shape, nn_spacing = size, spacing
    direction = info.GetDirection()
    geometry = {"size": list(info.GetSize()), "spacing": np.round(info.GetSpacing(), 5).tolist(),
                "origin": np.round(info.GetOrigin(), 3).tolist(), "direction": np.round(direction, 4).tolist()}
    header = ImageHeader(path, dimension, tuple(shape), tuple(float(s) for s in nn_spacing),
                         orientation_code(direction) if dimension == 3 else None, geometry)
    target = reader_orientation(reader)
    return header.reoriented(target) if target else header


def check_case_headers(files: List[str], expected_dimension: Optional[int], reader) -> ImageHeader:
    """Header checks of one case's channel files before any voxel work.

    ``reader``: an nnU-Net image reader/writer instance (``plans_manager.image_reader_writer_class()``).
    Checks that every file can be read, the dimensionality against ``expected_dimension`` (the dataset's;
    ``None``: not checked) and that all channels share size, spacing, origin and direction. Returns the
    first channel's header.
    """
    first = None
    for path in files:
        header = read_header(path, reader)
        if expected_dimension is not None and header.dimension != expected_dimension:
            raise ImageFileError(f"{path}: image is {header.dimension}-D, the dataset's images are "
                                 f"{expected_dimension}-D.")
        if first is None:
            first = header
            continue
        for key, value in header.geometry.items():
            if value != first.geometry.get(key):
                raise ImageFileError(f"{path}: {key} {value} differs from {first.geometry.get(key)} of {files[0]} "
                                     f"(channels of one case must share size, spacing, origin and direction).")
    return first


def read_images(reader, files: List[str], shown: Optional[List[str]] = None):
    """``reader.read_images(files)``; a file that cannot be read raises :class:`ImageFileError` naming it
    (its entry in ``shown``, e.g. the user's file for a reoriented copy; default ``files``)."""
    try:
        return reader.read_images(files)
    except Exception:  # noqa: BLE001 - find the file that cannot be read and name it
        for path, name in zip(files, shown or files):
            try:
                reader.read_images([path])
            except Exception as error:  # noqa: BLE001 - whatever the reader raises, the file is unreadable
                raise unreadable(name, error) from None
        raise


def stored_voxels(path: str) -> Optional[np.ndarray]:
    """Every voxel of a NIfTI file as stored (nibabel reads it whole: a truncated file raises
    :class:`ImageFileError`, where ITK would zero-fill it); ``None`` for other formats."""
    if not path.endswith((".nii", ".nii.gz")):
        return None
    import nibabel
    try:
        return np.asanyarray(nibabel.load(path).dataobj)
    except Exception as error:  # noqa: BLE001 - e.g. a truncated file
        raise unreadable(path, error) from None


def check_complete(path: str, reader) -> None:
    """A readable header and, for NIfTI, complete voxel data (e.g. a segmentation to evaluate)."""
    read_header(path, reader)
    stored_voxels(path)


def check_voxels(images: np.ndarray, files: List[str]) -> None:
    """``images``: ``(C, *spatial)`` as read. Incomplete NIfTI voxel data, NaN/inf voxels (as read, or
    as stored in a NIfTI file) or a constant (empty) channel raise :class:`ImageFileError` naming the file."""
    for channel, path in zip(images, files):
        stored = stored_voxels(path)
        if not np.all(np.isfinite(channel)) or (stored is not None and not np.all(np.isfinite(stored))):
            raise ImageFileError(f"{path}: contains NaN or infinite voxels.")
        if channel.size == 0 or channel.min() == channel.max():
            raise ImageFileError(f"{path}: image is empty (every voxel has the same value).")


def check_cases(cases: Dict[str, List[str]], reader) -> None:
    """Every case's headers (readable, channels sharing their geometry), then its voxels (complete, finite,
    not constant); ``cases`` as from :func:`find_cases`. Raises :class:`ImageFileError` for the first bad file."""
    for files in cases.values():
        check_case_headers(files, None, reader)
    for files in cases.values():
        images, _ = read_images(reader, files)
        check_voxels(images, files)
