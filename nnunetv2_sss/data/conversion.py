"""Pieces shared by the dataset converters (BHSD, ACDC): the output folder in nnUNet_raw,
checked label copies, and the "all files present" check before any copying starts."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, List, Sequence

import numpy as np

from nnunetv2_sss.data.image_checks import stored_voxels
from nnunetv2_sss.errors import UserFileExistsError, UserFileNotFoundError, UserValueError, nnunet_path


def new_raw_dataset_folder(dataset_id: int, dataset_name: str) -> Path:
    """``nnUNet_raw/DatasetXXX_name`` (created); error if nnUNet_raw is unset, the id is out of
    range, or any ``DatasetXXX_*`` folder with this id already exists there."""
    from nnunetv2.paths import nnUNet_raw

    if not 1 <= dataset_id <= 999:
        raise UserValueError(f"-d {dataset_id}: a dataset id must be in 1..999")
    raw = Path(nnunet_path(nnUNet_raw))
    prefix = f"Dataset{dataset_id:03d}_"
    taken = sorted(p.name for p in raw.glob(prefix + "*")) if raw.is_dir() else []
    if taken:
        raise UserFileExistsError(f"{raw / taken[0]} already exists: remove it or choose another dataset id")
    folder = raw / f"{prefix}{dataset_name}"
    folder.mkdir(parents=True)
    return folder


@contextmanager
def removed_on_error(folder: Path):
    """Delete ``folder`` if the block raises, so no half-written dataset is left behind."""
    try:
        yield folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def require_files(paths: Iterable[Path], what: str) -> None:
    """Raise one FileNotFoundError listing every missing path (first ten) of ``what``."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        shown = ", ".join(missing[:10])
        raise UserFileNotFoundError(f"{len(missing)} {what} missing, e.g.: {shown}")


def copy_image(source: Path, target: Path) -> None:
    """Copy one image file (creating the target folder)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def copy_label(source: Path, target: Path, allowed_labels: Sequence[int], merge_foreground: bool) -> List[int]:
    """Copy a label map, checking that it is complete (a truncated NIfTI file raises, where SimpleITK
    would zero-fill it) and that its values are in ``allowed_labels``; with ``merge_foreground`` every
    value > 0 becomes 1 (geometry kept). Returns the values found."""
    import SimpleITK as sitk

    stored_voxels(str(source))
    image = sitk.ReadImage(str(source))
    array = sitk.GetArrayViewFromImage(image)
    values = np.unique(array)
    if not np.all(values == np.round(values)) or not set(values.astype(int).tolist()) <= set(allowed_labels):
        raise UserValueError(f"{source}: label values {values.tolist()} are not all in {list(allowed_labels)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    if merge_foreground:
        merged = sitk.GetImageFromArray((array > 0).astype(np.uint8))
        merged.CopyInformation(image)
        sitk.WriteImage(merged, str(target), True)
    else:
        shutil.copyfile(source, target)
    return values.astype(int).tolist()


def strip_suffixes(file_name: str, file_ending: str = ".nii.gz") -> str:
    """Case identifier of an image file name: without the file ending and a ``_0000`` channel suffix."""
    stem = file_name[: -len(file_ending)] if file_name.endswith(file_ending) else file_name
    return stem[:-5] if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit() else stem


def relative_listing(folder: Path, file_ending: str = ".nii.gz") -> List[str]:
    """Sorted file names in ``folder`` ending in ``file_ending`` (no sub-folders)."""
    return sorted(n for n in os.listdir(folder) if n.endswith(file_ending) and (folder / n).is_file())
