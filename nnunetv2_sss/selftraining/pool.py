"""Pseudo-label pools: what ``nnUNetv2_sss_pseudo_label`` writes and the self-training student reads.

One pool per (configuration, round, teacher folds), in the preprocessed dataset:
``nnUNet_preprocessed/<dataset>/pseudo_labels/<data_identifier>__round<K>__folds<F>/``

- ``pseudo_labels.json``: the manifest (teacher trainer, plans, configuration, folds, checkpoint, the
  SHA-256 of each fold's checkpoint, round, confidence threshold, prediction settings, cases);
- ``preprocessed/``: every pseudo-labeled scan in nnU-Net's preprocessed format, which nnU-Net's
  dataset class and data loader read as they are: ``<case>.b2nd`` (a link to the preprocessed
  image, not a copy), ``<case>_seg.b2nd`` (the teacher's label; voxels whose confidence is below the
  threshold carry the ignore label, so nnU-Net's loss leaves them out), ``<case>_confidence.npy``
  (float16, the teacher's top softmax probability), ``<case>.pkl`` (the image's properties with the
  class locations of the pseudo-label; written last: a case is complete when its ``.pkl`` exists);
- ``segmentations/``: the pseudo-labels in the original image geometry, exactly as ``nnUNetv2_predict``
  writes them (same predictor, same export), for inspection.

The labeled data are never written to: the pool is a folder of its own.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence

from batchgenerators.utilities.file_and_folder_operations import join, load_json

from nnunetv2_sss.atomic_files import write_text_atomically
from nnunetv2_sss.checksums import sha256_of_file
from nnunetv2_sss.errors import UserRuntimeError
from nnunetv2_sss.trained_model import TrainedModel

POOLS_FOLDER = "pseudo_labels"
MANIFEST = "pseudo_labels.json"
PREPROCESSED = "preprocessed"
SEGMENTATIONS = "segmentations"


def folds_name(folds: Sequence) -> str:
    """``0`` for fold 0, ``0-1-2-3-4`` for a fold ensemble."""
    return "-".join(str(f) for f in folds)


def pool_folder(preprocessed_base: str, data_identifier: str, round_: int, folds: Sequence) -> str:
    return join(preprocessed_base, POOLS_FOLDER, f"{data_identifier}__round{round_}__folds{folds_name(folds)}")


@dataclass
class Manifest:
    dataset: str
    data_identifier: str
    round: int
    teacher: TrainedModel
    min_confidence: float
    ignore_label: int
    use_mirroring: bool
    tile_step_size: float
    cases: List[str]

    @staticmethod
    def read(folder: str) -> Optional["Manifest"]:
        path = join(folder, MANIFEST)
        if not os.path.isfile(path):
            return None
        content = load_json(path)
        return Manifest(**{**content, "teacher": TrainedModel(**content["teacher"])})

    def write(self, folder: str) -> None:
        import json
        os.makedirs(folder, exist_ok=True)
        write_text_atomically(join(folder, MANIFEST), json.dumps(asdict(self), indent=1))

    def settings(self) -> dict:
        """What must not change between a run and its resumption (everything but the cases)."""
        return {k: v for k, v in asdict(self).items() if k != "cases"}


def complete_cases(folder: str) -> List[str]:
    """Cases of the pool whose ``.pkl`` (written last) exists."""
    preprocessed = join(folder, PREPROCESSED)
    if not os.path.isdir(preprocessed):
        return []
    return sorted(n[:-4] for n in os.listdir(preprocessed) if n.endswith(".pkl"))


def check_pool_is_current(folder: str, manifest: Manifest, results_base: str) -> None:
    """A user error when the teacher's checkpoint changed after the pseudo-labels were made (they are
    stale), or is gone."""
    for fold, path in manifest.teacher.checkpoint_files(results_base).items():
        if not os.path.isfile(path):
            raise UserRuntimeError(f"{path}: the checkpoint of the teacher that made the pseudo-labels in {folder} "
                                   f"is gone; make the pseudo-labels again with nnUNetv2_sss_pseudo_label --clean")
        if sha256_of_file(path) != manifest.teacher.checkpoints_sha256.get(fold):
            raise UserRuntimeError(
                f"{folder}: the pseudo-labels are older than the teacher: {path} changed after they were made "
                f"(SHA-256 {manifest.teacher.checkpoints_sha256.get(fold, 'unknown')[:12]}... then, "
                f"{sha256_of_file(path)[:12]}... now); make them again with 'nnUNetv2_sss_pseudo_label ... --clean'")


def require_complete_pool(folder: str, results_base: str, command: str) -> Manifest:
    """The manifest of a complete, current pool; a user error naming ``command`` otherwise."""
    manifest = Manifest.read(folder)
    if manifest is None:
        raise UserRuntimeError(f"{folder}: no pseudo-labels; make them first: {command}")
    missing = sorted(set(manifest.cases) - set(complete_cases(folder)))
    if missing:
        raise UserRuntimeError(f"{folder}: the pseudo-labelling stopped before {len(missing)} of {len(manifest.cases)} "
                               f"cases were done (e.g. {missing[0]}); run the same command again to finish it: {command}")
    check_pool_is_current(folder, manifest, results_base)
    return manifest


def drop_cases(folder: str, cases: Sequence[str], file_ending: str) -> List[str]:
    """Remove ``cases`` (now labeled) from the pool: their files (the ``.pkl`` first: the case is no longer
    complete), then the manifest's list; returns those it held. ``file_ending``: the dataset's."""
    manifest = Manifest.read(folder)
    held = [case for case in cases if manifest is not None and case in manifest.cases]
    for case in held:
        for name in (join(PREPROCESSED, case + ending) for ending in (".pkl", ".b2nd", "_seg.b2nd", "_confidence.npy")):
            if os.path.lexists(join(folder, name)):
                os.remove(join(folder, name))
        if os.path.isfile(join(folder, SEGMENTATIONS, case + file_ending)):
            os.remove(join(folder, SEGMENTATIONS, case + file_ending))
    if held:
        manifest.cases = [case for case in manifest.cases if case not in held]
        manifest.write(folder)
    return held
