"""Preprocess ``imagesUnlabeled`` with the dataset's own plans and nnU-Net's preprocessor.

Output: ``nnUNet_preprocessed/DatasetXXX/<data_identifier>_unlabeled/`` holding, per case,
``CASE.b2nd`` (image), ``CASE_seg.b2nd`` (nnU-Net's non-zero mask, -1 outside; never a
label) and ``CASE.pkl`` (properties). A case counts as done when its ``.pkl`` exists; the
files are first written to a hidden temporary folder and moved into place ``.pkl`` last,
so an interrupted run never leaves a case that looks complete. A run holds a lock on each output
folder (:mod:`nnunetv2_sss.data.folder_lock`): a second run on the same folder stops at once.
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
from contextlib import ExitStack
from typing import Dict, List, Optional, Sequence

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import join, load_json
from tqdm import tqdm

from nnunetv2_sss.data.folder_lock import LOCK_FILE, lock_folders
from nnunetv2_sss.data.image_checks import ImageHeader, check_case_headers, check_voxels, read_images, unreadable
from nnunetv2_sss.data.unlabeled_raw import (DatasetGeometry, UnlabeledDataError, check_against_dataset,
                                             dataset_geometry, find_unlabeled_cases)
from nnunetv2_sss.errors import dataset_name, nnunet_path

UNLABELED_SUFFIX = "_unlabeled"


def unlabeled_folder(preprocessed_dataset_folder: str, data_identifier: str) -> str:
    """Where the preprocessed unlabeled cases of one configuration live."""
    return join(preprocessed_dataset_folder, data_identifier + UNLABELED_SUFFIX)


def done_cases(folder: str) -> List[str]:
    """Identifiers of complete cases in ``folder`` (those with a ``.pkl``)."""
    if not os.path.isdir(folder):
        return []
    return sorted(n[:-4] for n in os.listdir(folder) if n.endswith(".pkl"))


def _dataset_geometry(raw_dataset_folder: str, dataset_json: dict, plans_manager, reader) -> DatasetGeometry:
    """Dimensionality and orientation of the training images (their headers) and the dataset's median
    spacing (the plans', in the reader's axis order)."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    training = get_filenames_of_train_images_and_targets(raw_dataset_folder, dataset_json)
    files = [f for case in training.values() for f in case["images"]]
    median = plans_manager.plans["original_median_spacing_after_transp"]
    median = [median[i] for i in plans_manager.transpose_backward]
    return dataset_geometry(files, reader, median)


def _check_target_shape(header: ImageHeader, plans_manager, configuration: str) -> None:
    """The shape nnU-Net's preprocessor would resample the case to must have no zero axis."""
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
    transpose = plans_manager.transpose_forward
    shape = [header.shape[i] for i in transpose]
    spacing = [header.spacing[i] for i in transpose]
    target = list(plans_manager.get_configuration(configuration).spacing)
    if len(target) < len(shape):  # 2d: the spacing between slices is kept (as nnU-Net's preprocessor does)
        target = [spacing[0]] + target
    new_shape = compute_new_shape(shape, spacing, target)
    if min(new_shape) < 1:
        raise UnlabeledDataError(
            f"{header.path}: configuration '{configuration}' would resample it to shape "
            f"{tuple(int(s) for s in new_shape)}, "
            f"an axis of size zero (shape {tuple(shape)} at spacing {tuple(round(s, 4) for s in spacing)} mm, the "
            f"configuration's spacing {tuple(round(s, 4) for s in target)} mm): remove the file, or leave "
            f"'{configuration}' out of -c.")


def _read_case(reader, files: List[str], reorient_to: Optional[str], staging: str):
    """``reader.read_images`` of the case's files, reoriented first when ``reorient_to`` (SimpleITK's
    ``DICOMOrient``, written into ``staging``: the user's files are never changed). A file that cannot
    be read raises :class:`~nnunetv2_sss.data.image_checks.ImageFileError` naming it."""
    import SimpleITK as sitk
    read = []
    for path in files:
        if reorient_to is None:
            read.append(path)
            continue
        try:
            image = sitk.DICOMOrient(sitk.ReadImage(path), reorient_to)
        except RuntimeError as error:
            raise unreadable(path, error) from None
        read.append(join(staging, "reoriented_" + os.path.basename(path)))
        sitk.WriteImage(image, read[-1], useCompression=False)
    return read_images(reader, read, files)


def _preprocess_case(case: str, files: List[str], output_folder: str, plans: dict,
                     configuration: str, dataset_json: dict, reorient_to: Optional[str] = None) -> str:
    """Preprocess one case into ``output_folder`` atomically; returns the case id. ``reorient_to``: an
    orientation code the case is brought into before preprocessing (``--reorient``)."""
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    preprocessor = configuration_manager.preprocessor_class(verbose=False)

    staging = join(output_folder, f".tmp_{case}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        images, properties = _read_case(plans_manager.image_reader_writer_class(), files, reorient_to, staging)
        for name in os.listdir(staging):  # reoriented copies: read, no longer needed
            os.remove(join(staging, name))
        check_voxels(images, files)
        data, mask, properties = preprocessor.run_case_npy(images, None, properties, plans_manager,
                                                           configuration_manager, dataset_json)
        data = data.astype(np.float32, copy=False)
        mask = mask.astype(np.int8, copy=False)
        patch_size = tuple(configuration_manager.patch_size)
        blocks, chunks = comp_blosc2_params(data.shape, patch_size, data.itemsize)
        blocks_seg, chunks_seg = comp_blosc2_params(mask.shape, patch_size, mask.itemsize)
        nnUNetDatasetBlosc2.save_case(data, mask, properties, join(staging, case), chunks=chunks, blocks=blocks,
                                      chunks_seg=chunks_seg, blocks_seg=blocks_seg)
        for name in (f"{case}.b2nd", f"{case}_seg.b2nd", f"{case}.pkl"):  # .pkl last: marks completion
            os.replace(join(staging, name), join(output_folder, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return case


def _preprocess_case_star(arguments: tuple) -> str:
    return _preprocess_case(*arguments)


def preprocess_unlabeled(dataset_name_or_id, configurations: Sequence[str], plans_identifier: str = "nnUNetPlans",
                         num_processes: int = 4, clean: bool = False, reorient: bool = False) -> Dict[str, List[str]]:
    """Preprocess every ``imagesUnlabeled`` case for each configuration.

    Before any work: checks every case's names and headers (readable, dimensionality, channels, orientation
    against the training images', spacing against the dataset's median, a non-empty resampled shape per
    configuration) and locks the configurations' output folders (:mod:`folder_lock`: a concurrent run on
    the same folder stops at once). Cases in another orientation are refused unless ``reorient`` (then
    they are preprocessed reoriented to the training images'). Skips cases already done unless ``clean``.
    Returns, per configuration, the cases processed now.
    """
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    name = dataset_name(dataset_name_or_id)
    raw_folder = join(nnunet_path(nnUNet_raw), name)
    preprocessed_folder = join(nnunet_path(nnUNet_preprocessed), name)
    plans_file = join(preprocessed_folder, plans_identifier + ".json")
    if not os.path.isfile(plans_file):
        raise UnlabeledDataError(f"{plans_file} not found: run nnUNetv2_plan_and_preprocess -d "
                                 f"{dataset_name_or_id} first.")
    plans = load_json(plans_file)
    dataset_json = load_json(join(raw_folder, "dataset.json"))
    plans_manager = PlansManager(plans)
    for configuration in configurations:
        if configuration not in plans["configurations"]:
            raise UnlabeledDataError(f"{plans_file}: has no configuration '{configuration}' "
                                     f"(available: {sorted(plans['configurations'])}).")

    cases = find_unlabeled_cases(raw_folder, dataset_json)
    reader = plans_manager.image_reader_writer_class()
    dataset = _dataset_geometry(raw_folder, dataset_json, plans_manager, reader)
    reorient_to: Dict[str, Optional[str]] = {}
    for case, files in cases.items():
        header = check_case_headers(files, dataset.dimension, reader)
        checked = check_against_dataset(header, dataset, reorient)
        reorient_to[case] = checked.orientation if checked.orientation != header.orientation else None
        for configuration in configurations:
            _check_target_shape(checked, plans_manager, configuration)
    if any(reorient_to.values()):
        print(f"{sum(map(bool, reorient_to.values()))} case(s) in another orientation are preprocessed reoriented "
              f"to the training images' '{dataset.orientation}' (--reorient)")

    output_folders = {c: unlabeled_folder(preprocessed_folder, plans_manager.get_configuration(c).data_identifier)
                      for c in configurations}
    processed = {}
    with ExitStack() as locks:
        lock_folders(output_folders.values(), locks)
        for configuration in configurations:
            output_folder = output_folders[configuration]
            if clean:
                for name in os.listdir(output_folder):
                    if name != LOCK_FILE:
                        path = join(output_folder, name)
                        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            finished = set(done_cases(output_folder))
            todo = [c for c in sorted(cases) if c not in finished]
            print(f"{configuration}: {len(cases)} unlabeled cases, {len(finished)} already done, "
                  f"{len(todo)} to preprocess into {output_folder}")
            arguments = [(c, cases[c], output_folder, plans, configuration, dataset_json, reorient_to[c])
                         for c in todo]
            # closed also on an error, so that the error starts on a line of its own
            with tqdm(total=len(todo), desc=f"unlabeled {configuration}", unit="case") as progress:
                if num_processes <= 1 or len(todo) <= 1:
                    for a in arguments:
                        _preprocess_case(*a)
                        progress.update()
                else:
                    with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
                        for _ in pool.imap_unordered(_preprocess_case_star, arguments):
                            progress.update()
            processed[configuration] = todo
    return processed
