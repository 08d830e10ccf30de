"""Stage-1 data of CPS4: the fold's labeled cases as augmented 2-D patches, and fixed validation slices.

Cases: ``splits_final.json`` of the preprocessed folder (nnU-Net's default split is written
when it is missing, as ``nnUNetv2_train`` does) gives the fold's training and
validation cases; when ``splits_semi_supervised.json`` is there too, its ``labeled`` list of
the fold replaces the training cases (format: list over folds of
``{"labeled": [...], "unlabeled": [...]}``). Patches come from nnU-Net's own dataset class
(``infer_dataset_class``), ``nnUNetDataLoader`` (33 % foreground oversampling) and nnU-Net's
2-D training augmentation, exactly as the 2-D trainers sample them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd

from nnunetv2_sss.errors import UserFileNotFoundError, UserValueError

SPLITS_FILE = "splits_final.json"
SEMI_SPLITS_FILE = "splits_semi_supervised.json"
OVERSAMPLE_FOREGROUND = 0.33


def _fold_entry(path: Path, fold: int, keys: Sequence[str]) -> dict:
    splits = json.loads(path.read_text())
    if not isinstance(splits, list) or fold >= len(splits) or fold < 0:
        raise UserValueError(f"{path}: fold {fold} not there (the file lists {len(splits)} folds)")
    entry = splits[fold]
    missing = [k for k in keys if not isinstance(entry.get(k), list)]
    if missing:
        raise UserValueError(f"{path}: fold {fold} has no list {missing}")
    return entry


def fold_cases(preprocessed_base: Path, data_folder: Path, fold: int) -> Tuple[List[str], List[str]]:
    """(labeled training cases, validation cases) of ``fold``.

    Without ``splits_final.json`` nnU-Net's default split (5 folds, seed 12345, over the cases
    of ``data_folder``) is written first, as ``nnUNetv2_train`` would do.
    """
    splits_path = preprocessed_base / SPLITS_FILE
    if not splits_path.is_file():
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        from nnunetv2.utilities.crossval_split import generate_crossval_split  # imports scikit-learn

        cases = sorted(infer_dataset_class(str(data_folder)).get_identifiers(str(data_folder)))
        splits_path.write_text(json.dumps(generate_crossval_split(cases, seed=12345, n_splits=5), indent=4))
        print(f"created nnU-Net's default 5-fold split {splits_path}")
    entry = _fold_entry(splits_path, fold, ("train", "val"))
    train, val = entry["train"], entry["val"]
    semi_path = preprocessed_base / SEMI_SPLITS_FILE
    if semi_path.is_file():
        train = _fold_entry(semi_path, fold, ("labeled",))["labeled"]
    if not train:
        raise UserValueError(f"fold {fold} has no labeled training case ({semi_path if semi_path.is_file() else splits_path})")
    return list(train), list(val)


def check_cases_exist(data_folder: Path, cases: Sequence[str], dataset_class) -> None:
    present = set(dataset_class.get_identifiers(str(data_folder)))
    missing = sorted(set(cases) - present)
    if missing:
        raise UserFileNotFoundError(f"{data_folder}: preprocessed data missing for cases {missing[:10]} "
                                    f"(run nnUNetv2_plan_and_preprocess for this configuration)")


def augmentation_2d(patch_size: Sequence[int]):
    """(initial patch size, nnU-Net's 2-D rotation range, mirror axes) as nnUNetTrainer chooses them."""
    from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size

    rotation = np.pi if max(patch_size) / min(patch_size) <= 1.5 else 15. / 360 * 2. * np.pi
    rotation_range = (-rotation, rotation)
    initial = get_patch_size(patch_size, rotation_range, rotation_range, rotation_range, (0.85, 1.25))
    return initial, rotation_range, (0, 1)


def training_batches(data_folder: Path, cases: Sequence[str], batch_size: int, patch_size: Sequence[int],
                     label_manager, configuration_manager, pin_memory: bool):
    """An nnU-Net augmenter yielding ``{'data': [B, C, H, W], 'target': [B, 1, H, W]}`` forever."""
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    dataset_class = infer_dataset_class(str(data_folder))
    dataset = dataset_class(str(data_folder), list(cases))
    initial_patch_size, rotation, mirror_axes = augmentation_2d(patch_size)
    transforms = nnUNetTrainer.get_training_transforms(
        patch_size, rotation, None, mirror_axes, False,
        use_mask_for_norm=configuration_manager.use_mask_for_norm,
        foreground_labels=label_manager.foreground_labels, ignore_label=label_manager.ignore_label)
    loader = nnUNetDataLoader(dataset, batch_size, initial_patch_size, patch_size, label_manager,
                              oversample_foreground_percent=OVERSAMPLE_FOREGROUND, transforms=transforms)
    n_proc = get_allowed_n_proc_DA()
    if n_proc == 0:
        return SingleThreadedAugmenter(loader, None)
    return NonDetMultiThreadedAugmenter(data_loader=loader, transform=None, num_processes=n_proc,
                                        num_cached=max(6, n_proc // 2), seeds=None,
                                        pin_memory=pin_memory, wait_time=0.002)


@dataclass
class FixedSlices:
    """Validation slices: ``images [N, C, H, W]`` float, ``segs [N, H, W]`` int (-1 = padding), names."""
    images: torch.Tensor
    segs: torch.Tensor
    names: List[str]


def fixed_slices(data_folder: Path, cases: Sequence[str], patch_size: Sequence[int], max_cases: int) -> FixedSlices:
    """Per case (first ``max_cases``), the slice with the most foreground, cropped to ``patch_size``
    around that foreground's bounding-box centre (padded with 0 / -1 where the image ends)."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    dataset = infer_dataset_class(str(data_folder))(str(data_folder), list(cases)[:max_cases])
    images, segs, names = [], [], []
    for case in dataset.identifiers:
        data, seg, _, _ = dataset.load_case(case)
        seg = np.asarray(seg[0])                                         # [Z, Y, X]
        z = int(np.argmax((seg > 0).sum((1, 2))))
        fg = np.argwhere(seg[z] > 0)
        centre = (fg.min(0) + fg.max(0)) // 2 if len(fg) else np.array(seg.shape[1:]) // 2
        lower = [int(c) - p // 2 for c, p in zip(centre, patch_size)]
        bbox = [[lo, lo + p] for lo, p in zip(lower, patch_size)]
        images.append(torch.from_numpy(crop_and_pad_nd(np.asarray(data[:, z]), bbox, 0)).float())
        segs.append(torch.from_numpy(crop_and_pad_nd(seg[z], bbox, -1).astype(np.int64)))
        names.append(f"{case}_z{z:03d}")
    return FixedSlices(torch.stack(images), torch.stack(segs), names)
