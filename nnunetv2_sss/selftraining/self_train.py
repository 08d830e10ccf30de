"""``nnUNetv2_sss_self_train``: self-training rounds with nnU-Net's own commands.

    nnUNetv2_sss_self_train -d D -c C -f F [F ...] [--rounds 1|2] [--teacher nnUNetTrainer] [-p PLANS]
        [--min-confidence 0.9] [-device cuda|cpu] [--disable-tta]

For every fold and round K: the teacher (round 1: ``--teacher``, trained with ``nnUNetv2_train`` on the
fold's labeled cases if its ``checkpoint_final.pth`` is missing; round K > 1: round K-1's student)
pseudo-labels the fold's unlabeled pool (``nnUNetv2_sss_pseudo_label ... --round K``, resumable),
then the round's student trains with ``nnUNetv2_train`` (``nnUNetTrainerSelfTraining``, round 2
``nnUNetTrainerSelfTraining_round2``; ``--c`` when a ``checkpoint_latest.pth`` of an interrupted
run exists). Each fold's student learns from its own fold's teacher only. Every step prints the
command it runs; finished steps are skipped when the command is started again.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import List

from batchgenerators.utilities.file_and_folder_operations import isfile, join

from nnunetv2_sss.errors import UserRuntimeError, UserValueError, dataset_name, nnunet_path, user_errors
from nnunetv2_sss.version import command_parser

STUDENTS = {1: "nnUNetTrainerSelfTraining", 2: "nnUNetTrainerSelfTraining_round2"}


def teacher_of_round(round_: int, first_teacher: str) -> str:
    return first_teacher if round_ == 1 else STUDENTS[round_ - 1]


def _train(dataset: str, configuration: str, fold: int, trainer: str, plans: str, device: str, results: str) -> None:
    """``nnUNetv2_train`` unless the fold's ``checkpoint_final.pth`` exists (``--c`` after an interruption)."""
    folder = join(results, f"{trainer}__{plans}__{configuration}", f"fold_{fold}")
    if isfile(join(folder, "checkpoint_final.pth")):
        print(f"{trainer} fold {fold}: trained already ({folder})", flush=True)
        return
    command = [os.path.join(os.path.dirname(sys.executable), "nnUNetv2_train"), dataset, configuration, str(fold),
               "-tr", trainer, "-p", plans, "-device", device] + \
              (["--c"] if isfile(join(folder, "checkpoint_latest.pth")) else [])
    print("running: nnUNetv2_train " + " ".join(command[1:]), flush=True)
    if subprocess.run(command).returncode != 0:
        raise UserRuntimeError(f"{' '.join(command[1:])}: nnUNetv2_train failed (its output is above); fix the cause "
                               f"and run nnUNetv2_sss_self_train again")


def self_train(dataset: str, configuration: str, folds: List[int], rounds: int = 1, teacher: str = "nnUNetTrainer",
               plans: str = "nnUNetPlans", min_confidence: float = 0.9, device: str = "cpu",
               use_mirroring: bool = True) -> None:
    from nnunetv2.paths import nnUNet_results
    from nnunetv2_sss.selftraining.pseudo_label import make_pseudo_labels
    if rounds not in STUDENTS:
        raise UserValueError(f"--rounds {rounds}: 1 or 2 (a round 3 student is a subclass of nnUNetTrainerSelfTraining "
                             f"with self_training_round = 3; see docs/self_training.md)")
    name = dataset_name(dataset)
    results = join(nnunet_path(nnUNet_results), name)
    for fold in folds:
        _train(name, configuration, fold, teacher, plans, device, results)
        for round_ in range(1, rounds + 1):
            make_pseudo_labels(name, configuration, teacher_of_round(round_, teacher), [fold], plans,
                               min_confidence=min_confidence, round_=round_, device=device, use_mirroring=use_mirroring)
            _train(name, configuration, fold, STUDENTS[round_], plans, device, results)


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(prog="nnUNetv2_sss_self_train", description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("-c", required=True, help="configuration")
    parser.add_argument("-f", nargs="+", type=int, required=True, help="folds")
    parser.add_argument("--rounds", type=int, default=1, help="self-training rounds (1 or 2, default 1)")
    parser.add_argument("--teacher", default="nnUNetTrainer", help="round 1's teacher (default nnUNetTrainer)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("--min-confidence", type=float, default=0.9, help="pseudo-label confidence threshold")
    parser.add_argument("-device", default=None, choices=("cpu", "cuda", "mps"), help="default: cuda if available")
    parser.add_argument("--disable-tta", action="store_true", help="pseudo-labels without mirroring")
    return parser


@user_errors
def main(argv=None) -> None:
    from nnunetv2_sss.devices import torch_device
    args = build_parser().parse_args(argv)
    self_train(args.d, args.c, args.f, args.rounds, args.teacher, args.p, args.min_confidence,
               torch_device(args.device), not args.disable_tta)


if __name__ == "__main__":
    main()
