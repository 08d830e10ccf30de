"""``nnUNetv2_sss_pretrain``: masked image modelling on every image of a dataset, on a trainer's network.

    nnUNetv2_sss_pretrain -d D -c C -tr TRAINER [-p PLANS] [--epochs E --iterations I --val-iterations V]
                          [--mask-ratio R] [-device cuda|cpu|mps] [--c]

Output folder ``nnUNet_results/<dataset>/Pretrain<TRAINER>__<PLANS>__<C>/``: nnU-Net's training log,
``progress.png``, ``checkpoint_latest.pth`` (every epoch) / ``checkpoint_final.pth``, and at the end
``pretrained_weights.pth`` (nnU-Net's networks: ``nnUNetv2_train ... -pretrained_weights``) or
``sam2_image_encoder.pt`` (SAM-2 networks: ``nnUNet_sss_sam2_checkpoint``), plus ``pretraining.json``.
``--c`` continues from the latest checkpoint (with more ``--epochs``, also from the final one). Without
``--c`` a folder that holds a checkpoint is refused, so a long pretraining is never overwritten by mistake.
"""
from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
from typing import List, Optional

import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json

from nnunetv2_sss.errors import (UserFileExistsError, UserFileNotFoundError, UserRuntimeError, UserValueError,
                                 dataset_name, nnunet_path, user_errors)
from nnunetv2_sss.pretraining.masking import DEFAULT_MASK_RATIO
from nnunetv2_sss.version import command_parser

COMMAND = "nnUNetv2_sss_pretrain"


def parser() -> argparse.ArgumentParser:
    from nnunetv2_sss.pretraining.export import TRANSFERS
    p = command_parser(prog=COMMAND, description=(
        "Masked image modelling on every image of a dataset (imagesTr and the unlabeled pool; labels are never "
        "read) on the network a trainer builds; writes weights for nnUNetv2_train -pretrained_weights (nnU-Net's "
        "networks) or nnUNet_sss_sam2_checkpoint (SAM-2 networks)."))
    p.add_argument('-d', dest='dataset', required=True, help="dataset name or id")
    p.add_argument('-c', dest='configuration', required=True, help="configuration, e.g. 2d or 3d_fullres")
    p.add_argument('-tr', dest='trainer', default='nnUNetTrainer',
                   help="the trainer whose network is pretrained (default nnUNetTrainer)")
    p.add_argument('-p', dest='plans', default='nnUNetPlans', help="plans identifier (default nnUNetPlans)")
    p.add_argument('--epochs', type=int, default=None, help="epochs (default: the trainer's, nnU-Net: 1000)")
    p.add_argument('--iterations', type=int, default=None,
                   help="iterations per epoch (default: the trainer's, nnU-Net: 250)")
    p.add_argument('--val-iterations', type=int, default=None,
                   help="validation iterations per epoch (default: the trainer's, nnU-Net: 50)")
    p.add_argument('--mask-ratio', type=float, default=None,
                   help=f"share of the blocks masked (default {DEFAULT_MASK_RATIO}; --c: the run's)")
    p.add_argument('--transfer', choices=TRANSFERS, default='encoder',
                   help="nnU-Net's networks: what the weights file carries pretrained: 'encoder' (default; the decoder "
                        "as nnU-Net initialises it) or 'all' (encoder and decoder). SAM-2 networks: the image encoder")
    p.add_argument('-device', default='cuda', help="cuda (default), cpu or mps")
    p.add_argument('--c', dest='continue_training', action='store_true', help="continue from the latest checkpoint")
    return p


def _positive(name: str, value: Optional[int]) -> None:
    if value is not None and value < 1:
        raise UserValueError(f"{name} {value}: must be at least 1")


def _device(name: str) -> torch.device:
    if name not in ('cuda', 'cpu', 'mps'):
        raise UserValueError(f"-device {name}: must be cuda, cpu or mps")
    if name == 'cuda' and not torch.cuda.is_available():
        raise UserRuntimeError("-device cuda: no CUDA device is available to torch; use -device cpu")
    if name == 'cpu' and 'OMP_NUM_THREADS' not in os.environ:
        torch.set_num_threads(multiprocessing.cpu_count())  # as nnUNetv2_train -device cpu
    return torch.device(name)


def _trainer_class(name: str) -> type:
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    try:
        return recursive_find_trainer_class_by_name(name)
    except (RuntimeError, AssertionError) as error:
        raise UserValueError(f"-tr {name}: {' '.join(str(error).split())}") from None


def _schedule_overrides(epochs, iterations, val_iterations) -> dict:
    """The schedule given on the command line: attribute -> value; also set as ``nnUNet_sss_*`` variables,
    which the plugin's trainers read last (they would override an attribute)."""
    values = {'num_epochs': epochs, 'num_iterations_per_epoch': iterations,
              'num_val_iterations_per_epoch': val_iterations}
    values = {k: v for k, v in values.items() if v is not None}
    for name, value in values.items():
        os.environ[f"nnUNet_sss_{name}"] = str(value)
    return values


def run_pretraining(dataset, configuration: str, trainer_name: str = 'nnUNetTrainer', plans: str = 'nnUNetPlans',
                    epochs: Optional[int] = None, iterations: Optional[int] = None,
                    val_iterations: Optional[int] = None, mask_ratio: Optional[float] = None,
                    device: str = 'cuda', continue_training: bool = False, transfer: str = 'encoder') -> str:
    """Pretrain and export; returns the path of the weights file (``transfer``: ``--transfer``)."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results
    from nnunetv2_sss import settings
    from nnunetv2_sss.pretraining.cases import pretraining_cases
    from nnunetv2_sss.pretraining.export import RECORD, export_pretrained, pretraining_record
    from nnunetv2_sss.pretraining.trainer import pretraining_trainer_class

    for flag, value in (('--epochs', epochs), ('--iterations', iterations), ('--val-iterations', val_iterations)):
        _positive(flag, value)
    if mask_ratio is not None and not 0 < mask_ratio < 1:
        raise UserValueError(f"--mask-ratio {mask_ratio}: must be between 0 and 1 (exclusive), e.g. 0.6")
    torch_device = _device(device)
    name = dataset_name(dataset)
    preprocessed_base = join(nnunet_path(nnUNet_preprocessed), name)
    plans_file = join(preprocessed_base, plans + '.json')
    if not isfile(plans_file):
        raise UserFileNotFoundError(f"{plans_file}: not found; run 'nnUNetv2_plan_and_preprocess -d {dataset} -c "
                                    f"{configuration}' (or give the plans with -p)")
    plans_dict = load_json(plans_file)
    if configuration not in plans_dict.get('configurations', {}):
        raise UserValueError(f"-c {configuration}: not a configuration of {plans_file} "
                             f"({', '.join(plans_dict.get('configurations', {}))})")
    trainer_class = _trainer_class(trainer_name)
    pretrain_class = pretraining_trainer_class(trainer_class)
    folder = join(nnunet_path(nnUNet_results), name, f"{pretrain_class.__name__}__{plans}__{configuration}")
    record_file = join(folder, RECORD)
    checkpoints = [join(folder, f) for f in ('checkpoint_latest.pth', 'checkpoint_final.pth') if isfile(join(folder, f))]
    previous = load_json(record_file) if isfile(record_file) else {}
    if checkpoints and not continue_training:
        raise UserFileExistsError(f"{folder}: holds a pretraining ({os.path.basename(checkpoints[0])}); continue it "
                                  f"with --c, or delete the folder to start again")
    if continue_training and not checkpoints:
        print(f"WARNING: --c: no checkpoint in {folder}; starting a new pretraining")
    if continue_training and checkpoints and mask_ratio is not None and previous.get('mask_ratio') is not None \
            and abs(previous['mask_ratio'] - mask_ratio) > 1e-9:
        raise UserValueError(f"--mask-ratio {mask_ratio}: the pretraining in {folder} runs with "
                             f"{previous['mask_ratio']}; continue it without --mask-ratio or start a new one")

    schedule = _schedule_overrides(epochs, iterations, val_iterations)
    recipe = getattr(trainer_class, 'recipe', None)
    if recipe is not None and hasattr(recipe, 'load_weights') and settings.sam2_checkpoint() is None:
        os.environ[settings.SAM2_CHECKPOINT] = settings.RANDOM_WEIGHTS  # SAM-2 networks: Hiera from random weights
        print(f"{settings.SAM2_CHECKPOINT} is not set: the SAM-2 image encoder starts from random weights")

    plans_dict['continue_training'] = bool(continue_training and checkpoints)
    trainer = pretrain_class(plans=plans_dict, configuration=configuration, fold='all',
                             dataset_json=load_json(join(preprocessed_base, 'dataset.json')), device=torch_device)
    for attribute, value in schedule.items():
        setattr(trainer, attribute, value)
    if mask_ratio is None:  # --c: the run's own
        mask_ratio = previous.get('mask_ratio', DEFAULT_MASK_RATIO) if continue_training and checkpoints \
            else DEFAULT_MASK_RATIO
    trainer.mask_ratio = mask_ratio
    trainer.pretraining_cases = pretraining_cases(preprocessed_base, trainer.configuration_manager.data_identifier,
                                                  name, configuration, plans)
    if continue_training and checkpoints:
        checkpoint = join(folder, 'checkpoint_latest.pth') if isfile(join(folder, 'checkpoint_latest.pth')) \
            else join(folder, 'checkpoint_final.pth')
        trainer.load_checkpoint(checkpoint)
        trainer.print_to_log_file(f"Continuing the pretraining from {checkpoint} (epoch {trainer.current_epoch})")
    else:
        trainer.initialize()
    started = previous.get('started') if continue_training and checkpoints else None
    started = started or datetime.datetime.now().isoformat(timespec='seconds')
    from nnunetv2_sss.atomic_files import write_text_atomically

    def record() -> dict:
        made = pretraining_record(trainer, name, plans, configuration, started)
        if 'sam2_start' in made and made['sam2_start'] is None:  # --c: the weights came from the checkpoint
            made['sam2_start'] = previous.get('sam2_start')
        return made

    write_text_atomically(record_file, json.dumps(record(), indent=2) + "\n")
    trainer.run_training()
    path = export_pretrained(trainer, folder, record(), transfer)
    use = (f"nnUNetv2_train {dataset} {configuration} FOLD -tr {trainer_name} -p {plans} -pretrained_weights {path}"
           if path.endswith('.pth') else
           f"{settings.SAM2_CHECKPOINT}={path} (with {settings.SAM2_CONFIG} as for this pretraining) "
           f"nnUNetv2_train {dataset} {configuration} FOLD -tr {trainer_name} -p {plans}")
    trainer.print_to_log_file(f"Pretrained weights: {path}\nUse them with: {use}")
    return path


@user_errors
def main(argv: Optional[List[str]] = None) -> None:
    args = parser().parse_args(argv)
    run_pretraining(args.dataset, args.configuration, args.trainer, args.plans, args.epochs, args.iterations,
                    args.val_iterations, args.mask_ratio, args.device, args.continue_training, args.transfer)


if __name__ == '__main__':
    main()
