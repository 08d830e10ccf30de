"""``nnUNetv2_sss_pseudo_label``: pseudo-labels of the unlabeled pool from a trained nnU-Net model.

    nnUNetv2_sss_pseudo_label -d D -c C -tr TEACHER [-p PLANS] -f FOLDS [-chk checkpoint_final.pth]
        [--min-confidence 0.9] [--round K] [-device cuda|cpu] [--disable-tta] [--clean]

Predicts every case of the fold's unlabeled pool (``imagesUnlabeled`` preprocessed with
``nnUNetv2_sss_preprocess_unlabeled``, plus the training cases ``splits_semi_supervised.json`` marks
unlabeled in the fold; with several folds, those hidden in all of them) with nnU-Net's own predictor
(sliding window, Gaussian weighting, mirroring, the fold ensemble: the logits of the folds averaged),
from the preprocessed images the trainers use, and writes each case into the pool
(``selftraining/pool.py``): the label and the voxel-wise confidence (top softmax probability) in the
preprocessed geometry, voxels below ``--min-confidence`` set to the ignore label, and the segmentation
in the original geometry exactly as ``nnUNetv2_predict`` writes it. Each case is written to a
temporary folder and moved into place, its ``.pkl`` last: a killed run leaves no half-written case,
and the same command continues it. Refused before any prediction: a teacher that does not exist, a
teacher of another dataset, plans or configuration (the differing entry named), pseudo-labels of
another teacher or settings in the pool, pseudo-labels older than the teacher's checkpoint (unless
``--clean``), an empty pool.
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from typing import List, Sequence

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isdir, join, write_pickle

from nnunetv2_sss.errors import UserRuntimeError, UserValueError, user_errors
from nnunetv2_sss.selftraining.pool import PREPROCESSED, SEGMENTATIONS, Manifest, complete_cases, pool_folder
from nnunetv2_sss.trained_model import (TrainedModel, add_model_arguments, check_model, dataset_plans,
                                        load_preprocessed_case, make_predictor, with_ignore_label)
from nnunetv2_sss.version import command_parser


def write_pool_case(pool: str, case: str, image_folder: str, label: np.ndarray, confidence: np.ndarray,
                    properties: dict, manifest: Manifest, label_manager, patch_size: Sequence[int]) -> None:
    """One case into ``pool/preprocessed`` (staged in a temporary folder, the ``.pkl`` moved last)."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
    target = join(pool, PREPROCESSED)
    staging = join(target, f".tmp_{case}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    confidence = confidence.astype(np.float16)  # as stored: the stored confidence decides, to the voxel
    seg = np.where(confidence >= np.float16(manifest.min_confidence), label, manifest.ignore_label).astype(np.int16)[None]
    properties = dict(properties)
    properties["class_locations"] = DefaultPreprocessor._sample_foreground_locations(
        seg, list(label_manager.foreground_labels) + [[-1] + list(label_manager.all_labels)])
    blocks, chunks = comp_blosc2_params(seg.shape, tuple(patch_size), seg.itemsize)
    nnUNetDatasetBlosc2.save_seg(seg, join(staging, case + "_seg"), chunks_seg=chunks, blocks_seg=blocks)
    np.save(join(staging, case + "_confidence.npy"), confidence)
    os.symlink(os.path.abspath(join(image_folder, case + ".b2nd")), join(staging, case + ".b2nd"))
    write_pickle(properties, join(staging, case + ".pkl"))
    for name in (f"{case}.b2nd", f"{case}_seg.b2nd", f"{case}_confidence.npy", f"{case}.pkl"):  # .pkl last
        os.replace(join(staging, name), join(target, name))
    shutil.rmtree(staging, ignore_errors=True)


def export_segmentation(pool: str, case: str, logits: np.ndarray, properties: dict, predictor) -> None:
    """The segmentation in the original geometry, as ``nnUNetv2_predict`` writes it (written under a
    temporary name, then renamed)."""
    from nnunetv2.inference.export_prediction import export_prediction_from_logits
    folder = join(pool, SEGMENTATIONS)
    os.makedirs(folder, exist_ok=True)
    ending = predictor.dataset_json["file_ending"]
    export_prediction_from_logits(logits, properties, predictor.configuration_manager, predictor.plans_manager,
                                  predictor.dataset_json, join(folder, f".tmp_{case}"), num_threads_torch=1)
    os.replace(join(folder, f".tmp_{case}{ending}"), join(folder, case + ending))


def make_pseudo_labels(dataset: str, configuration: str, teacher_trainer: str, folds: List, plans_identifier: str =
                       "nnUNetPlans", checkpoint: str = "checkpoint_final.pth", min_confidence: float = 0.9,
                       round_: int = 1, device: str = "cpu", use_mirroring: bool = True, clean: bool = False) -> str:
    """Write (or complete) the pool; returns its folder."""
    import torch
    from nnunetv2_sss.data.unlabeled_pool import require_unlabeled_sources

    planned = dataset_plans(dataset, configuration, plans_identifier)
    if not 0 < min_confidence <= 1:
        raise UserValueError(f"--min-confidence {min_confidence}: give a probability in (0, 1]")
    if round_ < 1:
        raise UserValueError(f"--round {round_}: rounds count from 1")
    teacher = TrainedModel(teacher_trainer, plans_identifier, configuration, list(folds), checkpoint)
    check_model(teacher, planned, "teacher")
    teacher = teacher.with_checksums(planned.results_base)
    name, data_identifier = planned.name, planned.data_identifier
    sources = require_unlabeled_sources(planned.preprocessed_base, data_identifier, folds, "nnUNetv2_sss_pseudo_label",
                                        configuration, plans_identifier)
    student_labels = with_ignore_label(planned.dataset_json)["labels"]
    manifest = Manifest(name, data_identifier, round_, teacher, float(min_confidence), int(student_labels["ignore"]),
                        bool(use_mirroring), 0.5, sorted(c for _, cases in sources for c in cases))
    pool = pool_folder(planned.preprocessed_base, data_identifier, round_, folds)
    existing = Manifest.read(pool)
    if clean and isdir(pool):
        shutil.rmtree(pool)
    elif existing is not None and existing.settings() != manifest.settings():
        changed = [k for k, v in manifest.settings().items() if existing.settings().get(k) != v]
        if changed == ["teacher"] and existing.teacher.checkpoints_sha256 != teacher.checkpoints_sha256 and \
                {**vars(existing.teacher), "checkpoints_sha256": None} == {**vars(teacher), "checkpoints_sha256": None}:
            raise UserRuntimeError(f"{pool}: these pseudo-labels are older than the teacher's checkpoint (it changed "
                                   f"since they were made); run the command again with --clean to replace them")
        raise UserRuntimeError(f"{pool}: holds pseudo-labels made with other settings ({', '.join(changed)} differ); "
                               f"run the command with --clean to replace them")
    manifest.write(pool)
    done = set(complete_cases(pool))
    todo = [(folder, case) for folder, cases in sources for case in cases if case not in done]
    print(f"nnUNetv2_sss_pseudo_label: {len(manifest.cases)} cases ({len(done)} already done) of {name} {configuration}, "
          f"teacher {teacher_trainer} folds {' '.join(map(str, folds))} ({checkpoint}), round {round_}, confidence >= "
          f"{min_confidence}; pool {pool}", flush=True)
    if not todo:
        return pool
    predictor = make_predictor(teacher, planned.results_base, device, use_mirroring, manifest.tile_step_size)
    label_manager = predictor.plans_manager.get_label_manager(with_ignore_label(planned.dataset_json))
    started = time.perf_counter()
    for index, (folder, case) in enumerate(todo, 1):
        data, properties = load_preprocessed_case(folder, case)
        logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).float()
        confidence, label = torch.softmax(logits, 0).max(0)
        export_segmentation(pool, case, logits.numpy(), properties, predictor)  # before the .pkl marks it done
        write_pool_case(pool, case, folder, label.numpy(), confidence.numpy(), properties, manifest, label_manager,
                        predictor.configuration_manager.patch_size)
        print(f"[{index}/{len(todo)}] {case}: {float((confidence >= min_confidence).float().mean()):.1%} of the voxels "
              f"confident; {time.perf_counter() - started:.0f} s", flush=True)
    return pool


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(prog="nnUNetv2_sss_pseudo_label", description=__doc__.split("\n\n")[0])
    add_model_arguments(parser, "the teacher's", trainer_help="the teacher's trainer (a trained nnU-Net model)",
                        folds_help="the teacher's folds: one fold (its own students' default) or several (an ensemble)")
    parser.add_argument("--min-confidence", type=float, default=0.9,
                        help="voxels whose top probability is below this get the ignore label (default 0.9)")
    parser.add_argument("--round", type=int, default=1, help="self-training round these pseudo-labels are for")
    parser.add_argument("-device", default=None, choices=("cpu", "cuda", "mps"),
                        help="default: cuda if available, else cpu")
    parser.add_argument("--disable-tta", action="store_true", help="predict without mirroring")
    parser.add_argument("--clean", action="store_true", help="replace the pool's pseudo-labels")
    return parser


@user_errors
def main(argv=None) -> None:
    from nnunetv2_sss.devices import torch_device
    args = build_parser().parse_args(argv)
    folds = [f if f == "all" else int(f) for f in args.f]
    make_pseudo_labels(args.d, args.c, args.tr, folds, args.p, args.chk, args.min_confidence, args.round,
                       torch_device(args.device), not args.disable_tta, args.clean)


if __name__ == "__main__":
    main()
