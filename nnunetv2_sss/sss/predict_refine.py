"""``nnUNetv2_sss_predict_refine``: SSS prediction refined by PCSW and the trained prompt head.

Per case: nnU-Net's preprocessing and sliding-window prediction (``nnUNetPredictor``, the
fold's ``network_weights``), argmax in the preprocessed space, PCSW on that label volume
(slices along the network's slice axis; 2-D configurations: axis 0), and for every
accepted (slice, class) prompt the trained prompt head's mask replaces that class on that
slice (whole slices, the head is not tied to the patch size). The refined segmentation is
exported like nnU-Net's (resampled back to the original geometry) into ``-o``; with
``--plain DIR`` the unrefined prediction of the same logits goes to ``DIR``, so both can be
evaluated side by side. Beyond the paper: it is not part of the SSS method's numbers.

Every input file is checked before the model is loaded (names and channels against the model's
``dataset.json``, headers, complete voxel data, NaN/inf, constant images:
:mod:`nnunetv2_sss.data.image_checks`); ``-device`` defaults to cuda if available, else cpu.
"""
from __future__ import annotations

import argparse
import os
from typing import Dict, List

import numpy as np
import torch

from nnunetv2_sss.data.image_checks import check_cases, find_cases
from nnunetv2_sss.devices import DEVICES, torch_device
from nnunetv2_sss.errors import (UserFileNotFoundError, UserRuntimeError, UserValueError, dataset_name,
                                 nnunet_path, user_errors)
from nnunetv2_sss.sss.pcsw import DEFAULT_TAU
from nnunetv2_sss.sss.refinement import refine_slices
from nnunetv2_sss.version import command_parser


@torch.no_grad()
def refine_segmentation(network, image: torch.Tensor, segmentation: np.ndarray, classes: List[int],
                        tau: float = DEFAULT_TAU) -> np.ndarray:
    """Refined copy of ``segmentation`` ``(Z, Y, X)`` (preprocessed space) of ``image`` ``(C, Z, Y, X)``
    (:func:`~nnunetv2_sss.sss.refinement.refine_slices` on the whole volume; only slices with a
    prompt go through the SAM-2 encoder).

    ``network``: an :class:`~nnunetv2_sss.networks.sss_network.SSSNetwork` with a prompt head.
    """
    sam2 = network.encoder.sam2
    slice_axis = sam2.slice_axis if sam2.conv_dim == 3 else 0
    labels = torch.from_numpy(np.moveaxis(segmentation, slice_axis, 0).astype(np.int64)).to(image.device)  # (S, H, W)
    images = image.movedim(slice_axis + 1, 0)                                                      # (S, C, H, W)
    network.prompt_head.set_slice_size(images.shape[-2:])
    refined = refine_slices(network.prompt_head, lambda rows: sam2.slice_features(images[rows])[:3], labels,
                            torch.ones(labels.shape, device=image.device), labels.shape[0], classes, tau)
    return np.moveaxis(refined.labels.cpu().numpy(), 0, slice_axis).astype(segmentation.dtype)


def _one_hot(segmentation: np.ndarray, num_classes: int) -> torch.Tensor:
    return torch.from_numpy(np.eye(num_classes, dtype=np.float32)[segmentation]).movedim(-1, 0)


def checked_inputs(input_folder: str, model_folder: str) -> Dict[str, List[str]]:
    """Case -> channel files of ``input_folder`` (nnU-Net naming, the model's ``dataset.json``), every file
    checked (:func:`~nnunetv2_sss.data.image_checks.check_cases`: headers, complete voxel data, NaN/inf,
    constant images) before the model is loaded."""
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    cases = find_cases(input_folder, load_json(join(model_folder, "dataset.json")))
    check_cases(cases, PlansManager(join(model_folder, "plans.json")).image_reader_writer_class())
    return cases


def predict_refine(cases: Dict[str, List[str]], output_folder: str, model_folder: str, fold, checkpoint: str,
                   device: str, tau: float, plain_folder: str = None) -> int:
    """Predict and refine every case (case -> channel files, as from :func:`checked_inputs`); returns the
    number of cases."""
    from batchgenerators.utilities.file_and_folder_operations import join
    from nnunetv2.inference.export_prediction import export_prediction_from_logits
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(use_mirroring=False, device=torch.device(device), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, (fold,), checkpoint)
    network = predictor.network
    if getattr(network, "prompt_head", None) is None:
        raise UserRuntimeError(f"{model_folder}: the trainer's network has no SAM-2 prompt head (train "
                               f"nnUNetTrainerSSS or another SSS variant with PCSW)")
    network.load_state_dict(predictor.list_of_parameters[0])
    network.to(predictor.device).eval()
    plans, configuration, dataset_json = predictor.plans_manager, predictor.configuration_manager, \
        predictor.dataset_json
    num_classes = predictor.label_manager.num_segmentation_heads
    preprocessor = configuration.preprocessor_class(verbose=False)
    for folder in (output_folder, plain_folder):
        if folder:
            os.makedirs(folder, exist_ok=True)
    for name, files in cases.items():
        data, _, properties = preprocessor.run_case(files, None, plans, configuration, dataset_json)
        image = torch.from_numpy(data).float()
        logits = predictor.predict_logits_from_preprocessed_data(image)
        segmentation = logits.argmax(0).numpy()
        if plain_folder:
            export_prediction_from_logits(logits, properties, configuration, plans, dataset_json,
                                          join(plain_folder, name), num_threads_torch=1)
        refined = refine_segmentation(network, image.to(predictor.device), segmentation,
                                      predictor.label_manager.foreground_labels, tau)
        export_prediction_from_logits(_one_hot(refined, num_classes), properties, configuration, plans, dataset_json,
                                      join(output_folder, name), num_threads_torch=1)
        print(f"{name}: {int((refined != segmentation).sum())} voxels changed by the prompt head")
    return len(cases)


@user_errors
def main() -> None:
    parser = command_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", required=True, help="input folder (nnU-Net naming, CASE_0000.ext)")
    parser.add_argument("-o", required=True, help="output folder of the refined segmentations")
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("-c", required=True, help="configuration")
    parser.add_argument("-tr", default="nnUNetTrainerSSS")
    parser.add_argument("-p", default="nnUNetPlans")
    parser.add_argument("-f", default="0", help="one fold (the prompt head of that fold refines)")
    parser.add_argument("-chk", default="checkpoint_final.pth")
    parser.add_argument("-device", default=None, choices=DEVICES, help="default: cuda if available, else cpu")
    parser.add_argument("--tau", type=float, default=DEFAULT_TAU)
    parser.add_argument("--plain", default=None, help="also write the unrefined prediction here")
    args = parser.parse_args()

    from batchgenerators.utilities.file_and_folder_operations import join
    from nnunetv2.paths import nnUNet_results

    nnunet_path(nnUNet_results)
    if args.f != "all" and not args.f.isdigit():
        raise UserValueError(f"-f {args.f!r}: give one fold, an integer or 'all'")
    fold = args.f if args.f == "all" else int(args.f)
    device = torch_device(args.device)
    model_folder = join(nnUNet_results, dataset_name(args.d), f"{args.tr}__{args.p}__{args.c}")
    checkpoint = join(model_folder, f"fold_{fold}", args.chk)
    if not os.path.isfile(checkpoint):
        raise UserFileNotFoundError(f"{checkpoint} not found: train that fold first (nnUNetv2_train {args.d} "
                                    f"{args.c} {fold} -tr {args.tr} -p {args.p}) or pick -f / -chk / -tr / -c")
    if not os.path.isdir(args.i):
        raise UserFileNotFoundError(f"input folder {args.i} does not exist")
    predict_refine(checked_inputs(args.i, model_folder), args.o, model_folder, fold, args.chk, device, args.tau,
                   args.plain)
