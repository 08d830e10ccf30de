"""Preprocess ``imagesUnlabeled`` with the dataset's own plans and nnU-Net's preprocessor.

Output: ``nnUNet_preprocessed/DatasetXXX/<data_identifier>_unlabeled/`` holding, per case,
``CASE.b2nd`` (image), ``CASE_seg.b2nd`` (nnU-Net's non-zero mask, -1 outside; never a
label) and ``CASE.pkl`` (properties). A case counts as done when its ``.pkl`` exists; the
files are first written to a hidden temporary folder and moved into place ``.pkl`` last,
so an interrupted run never leaves a case that looks complete.
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
from typing import Dict, List, Sequence

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import join, load_json
from tqdm import tqdm

from nnunetv2_sss.data.unlabeled_raw import (UnlabeledDataError, check_case_headers, check_voxels,
                                             find_unlabeled_cases)

UNLABELED_SUFFIX = "_unlabeled"


def unlabeled_folder(preprocessed_dataset_folder: str, data_identifier: str) -> str:
    """Where the preprocessed unlabeled cases of one configuration live."""
    return join(preprocessed_dataset_folder, data_identifier + UNLABELED_SUFFIX)


def done_cases(folder: str) -> List[str]:
    """Identifiers of complete cases in ``folder`` (those with a ``.pkl``)."""
    if not os.path.isdir(folder):
        return []
    return sorted(n[:-4] for n in os.listdir(folder) if n.endswith(".pkl"))


def _dataset_dimension(raw_dataset_folder: str, dataset_json: dict, reader) -> int:
    """Dimensionality of the dataset's images, read from the first ``imagesTr`` file."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    first = next(iter(get_filenames_of_train_images_and_targets(raw_dataset_folder, dataset_json).values()))
    import SimpleITK as sitk
    info = sitk.ImageFileReader()
    info.SetFileName(first["images"][0])
    try:
        info.ReadImageInformation()
        return info.GetDimension()
    except RuntimeError:
        return reader.read_images(first["images"][:1])[0].ndim - 1


def _preprocess_case(case: str, files: List[str], output_folder: str, plans: dict,
                     configuration: str, dataset_json: dict) -> str:
    """Preprocess one case into ``output_folder`` atomically; returns the case id."""
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    preprocessor = configuration_manager.preprocessor_class(verbose=False)

    images, properties = plans_manager.image_reader_writer_class().read_images(files)
    check_voxels(images, files)
    data, mask, properties = preprocessor.run_case_npy(images, None, properties, plans_manager,
                                                       configuration_manager, dataset_json)
    data = data.astype(np.float32, copy=False)
    mask = mask.astype(np.int8, copy=False)
    patch_size = tuple(configuration_manager.patch_size)
    blocks, chunks = comp_blosc2_params(data.shape, patch_size, data.itemsize)
    blocks_seg, chunks_seg = comp_blosc2_params(mask.shape, patch_size, mask.itemsize)

    staging = join(output_folder, f".tmp_{case}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    nnUNetDatasetBlosc2.save_case(data, mask, properties, join(staging, case), chunks=chunks, blocks=blocks,
                                  chunks_seg=chunks_seg, blocks_seg=blocks_seg)
    for name in (f"{case}.b2nd", f"{case}_seg.b2nd", f"{case}.pkl"):  # .pkl last: marks completion
        os.replace(join(staging, name), join(output_folder, name))
    os.rmdir(staging)
    return case


def _preprocess_case_star(arguments: tuple) -> str:
    return _preprocess_case(*arguments)


def preprocess_unlabeled(dataset_name_or_id, configurations: Sequence[str], plans_identifier: str = "nnUNetPlans",
                         num_processes: int = 4, clean: bool = False) -> Dict[str, List[str]]:
    """Preprocess every ``imagesUnlabeled`` case for each configuration.

    Validates all cases' names and headers first (errors before any long work), skips
    cases already done unless ``clean``. Returns, per configuration, the cases processed now.
    """
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_name = maybe_convert_to_dataset_name(dataset_name_or_id)
    raw_folder = join(nnUNet_raw, dataset_name)
    preprocessed_folder = join(nnUNet_preprocessed, dataset_name)
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
    dimension = _dataset_dimension(raw_folder, dataset_json, reader)
    for files in cases.values():
        check_case_headers(files, dimension, reader)

    processed = {}
    for configuration in configurations:
        data_identifier = plans_manager.get_configuration(configuration).data_identifier
        output_folder = unlabeled_folder(preprocessed_folder, data_identifier)
        if clean:
            shutil.rmtree(output_folder, ignore_errors=True)
        os.makedirs(output_folder, exist_ok=True)
        finished = set(done_cases(output_folder))
        todo = [c for c in sorted(cases) if c not in finished]
        print(f"{configuration}: {len(cases)} unlabeled cases, {len(finished)} already done, "
              f"{len(todo)} to preprocess into {output_folder}")
        arguments = [(c, cases[c], output_folder, plans, configuration, dataset_json) for c in todo]
        progress = tqdm(total=len(todo), desc=f"unlabeled {configuration}", unit="case")
        if num_processes <= 1 or len(todo) <= 1:
            for a in arguments:
                _preprocess_case(*a)
                progress.update()
        else:
            with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
                for _ in pool.imap_unordered(_preprocess_case_star, arguments):
                    progress.update()
        progress.close()
        processed[configuration] = todo
    return processed
