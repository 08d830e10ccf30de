"""A scored scan: :class:`CaseRecord`, one ``.npz`` per case in the suggestion folder's ``cases/``, written
whole or not at all (``atomic_files``): a case is done when its file exists, so a killed run continues
where it stopped."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Optional, Set

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import join

from nnunetv2_sss.atomic_files import write_atomically

ENDING = ".npz"


@dataclass
class CaseRecord:
    """What the strategies, ``suggestions.csv`` and the montages need of one scan (preprocessed geometry).
    The ``S`` slices are the scan's most uncertain ones along its first axis, at most 256 pixels a side."""
    case: str
    uncertainty: float              # the strategy's voxel map aggregated over the scan (voxels.aggregate)
    foreground_voxels: np.ndarray   # (C - 1,) int64: predicted voxels of each foreground class
    voxel_ml: float                 # volume of one voxel in mL
    seconds: float                  # time its prediction and scoring took
    slice_indices: np.ndarray       # (S,) int64, ascending
    image: np.ndarray               # (S, h, w) uint8: the first channel, 0.5-99.5 percentile window
    segmentation: np.ndarray        # (S, h, w) uint8: predicted labels
    uncertainty_map: np.ndarray     # (S, h, w) uint8: the voxel map, 0..255 for 0..1
    features: Optional[np.ndarray] = None  # (F,) float32: encoder features (strategies that need them)

    @property
    def volumes_ml(self) -> np.ndarray:
        """(C - 1,) predicted volume of each foreground class in mL."""
        return self.foreground_voxels * self.voxel_ml


def write_record(folder: str, record: CaseRecord) -> None:
    values = {f.name: getattr(record, f.name) for f in fields(CaseRecord) if getattr(record, f.name) is not None}
    os.makedirs(folder, exist_ok=True)
    write_atomically(join(folder, record.case + ENDING), lambda file: np.savez_compressed(file, **values))


def read_record(folder: str, case: str) -> CaseRecord:
    with np.load(join(folder, case + ENDING), allow_pickle=False) as stored:
        values = {name: stored[name] for name in stored.files}
    scalars = {"case": str, "uncertainty": float, "voxel_ml": float, "seconds": float}
    return CaseRecord(**{name: scalars[name](value) if name in scalars else value for name, value in values.items()})


def done_cases(folder: str) -> Set[str]:
    """Cases whose record exists."""
    if not os.path.isdir(folder):
        return set()
    return {name[:-len(ENDING)] for name in os.listdir(folder) if name.endswith(ENDING)}
