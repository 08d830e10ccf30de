"""The command line of ``nnUNetv2_sss_study``: its options (:func:`build_parser`), the executor they ask for
(:func:`make_executor`) and the entry point (:func:`main`)."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import List, Optional, Sequence

from nnunetv2_sss.devices import DEVICES, torch_device
from nnunetv2_sss.errors import UserValueError, user_errors
from nnunetv2_sss.evaluation.study.coordinator import coordinate
from nnunetv2_sss.evaluation.study.executor import Executor, LocalExecutor, visible_gpus
from nnunetv2_sss.evaluation.study.runner import Study
from nnunetv2_sss.evaluation.study.slurm_options import SLURM_ONLY, add_slurm_options, slurm_options
from nnunetv2_sss.version import command_parser


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        prog="nnUNetv2_sss_study",
        description="Supervised vs semi-supervised trainers over labeled counts and seeds: splits, nnUNetv2_train, "
                    "nnUNetv2_predict and evaluation per run, resumable; writes runs.csv, summary.md and "
                    "learning_curve.png. The dataset must be planned and preprocessed (and its imagesUnlabeled "
                    "preprocessed with nnUNetv2_sss_preprocess_unlabeled).")
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("-c", default="2d", help="configuration (default 2d)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("--num-labeled", nargs="+", required=True,
                        help="labeled counts of fold 0 (e.g. 2 4 8); 'all' = the ceiling (on by default)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3): splits and training seed")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed ... (default 0)")
    parser.add_argument("-tr", nargs="+", required=True, help="trainers (plugin trainers, e.g. nnUNetTrainerPlugin "
                                                              "for supervised nnU-Net)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="self-training rounds: with nnUNetTrainerSelfTraining in -tr, adds the students of rounds "
                             "2 .. ROUNDS after it (nnUNetTrainerSelfTraining_round2); each round's teacher is the "
                             "previous round's student, round 1's the supervised row")
    parser.add_argument("--pretrained", nargs="+", default=None, metavar="T",
                        help="trainers of -tr that also run from a masked-image pretrained start (rows 'T+pretrained'): "
                             "nnUNetv2_sss_pretrain once per study and trainer on the images the runs see (training "
                             "cases and unlabeled pool, never the test images), same schedule as the runs unless "
                             "--pretrain-epochs")
    parser.add_argument("--pretrain-epochs", type=int, default=None, metavar="E",
                        help="epochs of the --pretrained pretraining (default: --epochs), --iterations each")
    parser.add_argument("--supervised", default=None,
                        help="the reference trainer (default: nnUNetTrainerPlugin if listed, else the first -tr)")
    parser.add_argument("--epochs", type=int, default=None, help="nnUNet_sss_num_epochs (default: trainer's)")
    parser.add_argument("--iterations", type=int, default=None, help="nnUNet_sss_iterations_per_epoch")
    parser.add_argument("--val-iterations", type=int, default=None, help="nnUNet_sss_val_iterations_per_epoch")
    parser.add_argument("-device", default=None, choices=DEVICES,
                        help="device for nnUNetv2_train / nnUNetv2_predict (default cuda if available, else cpu)")
    parser.add_argument("--fold", type=int, default=0, choices=range(5), help="fold of the splits (default 0)")
    parser.add_argument("--disable-tta", action="store_true", help="predict without mirroring (faster)")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the all-labeled supervised runs")
    parser.add_argument("--max-runs", type=int, default=None,
                        help="stop after this many runs (the same command continues the study)")
    parser.add_argument("-o", default=None, help="output folder (default ./study_<dataset>_<configuration>)")
    active = parser.add_argument_group("active learning (docs/active_learning.md)")
    active.add_argument("--active-learning", nargs="+", default=None, metavar="S",
                        help="simulate active learning with these nnUNetv2_sss_suggest strategies (e.g. random "
                             "foreground-random entropy mutual-information): from each seed's split of the smallest "
                             "--num-labeled count, every -tr row queries --budget of the scans the split hides with its "
                             "latest model, their labels are revealed and it trains again from scratch, --al-rounds "
                             "times; writes active_learning.png and the simulation's tables in summary.md")
    active.add_argument("--budget", type=int, default=None, metavar="K", help="scans revealed per round")
    active.add_argument("--al-rounds", type=int, default=None, metavar="R", help="active-learning rounds")
    parser.add_argument("--executor", choices=("local", "slurm"), default="local",
                        help="where the runs run: 'local' (default; this machine, --jobs at once) or 'slurm' (a SLURM "
                             "job each, through submitit; docs/cluster.md)")
    local = parser.add_argument_group("--executor local")
    local.add_argument("--jobs", type=int, default=None, metavar="N",
                       help="runs at once on this machine (default 1: one after the other, in this process)")
    local.add_argument("--gpus", default=None, metavar="IDS",
                       help="GPUs for the runs, e.g. 0,1,2,3: each run at once on its own (CUDA_VISIBLE_DEVICES, "
                            "round robin); default with -device cuda and --jobs > 1: every visible GPU")
    add_slurm_options(parser)
    return parser


def check_executor(args: argparse.Namespace) -> None:
    """The executor options, before the study is read: options of the other executor are refused; SLURM's
    cluster and paths are checked (``slurm.check_cluster``)."""
    if args.executor == "slurm":
        for option in ("jobs", "gpus"):
            if getattr(args, option) is not None:
                raise UserValueError(f"--{option}: an option of --executor local; with --executor slurm each run is a "
                                     f"job of its own (--gpus-per-job, --array-parallelism)")
        from nnunetv2_sss.evaluation.study.slurm import check_cluster
        check_cluster(slurm_options(args), args.o if args.o is not None else os.getcwd())
        return
    given = [flag for dest, flag in SLURM_ONLY.items() if getattr(args, dest) not in (None, False)]
    if given:
        raise UserValueError(f"{given[0]}: an option of --executor slurm")
    if args.jobs is not None and args.jobs < 1:
        raise UserValueError(f"--jobs {args.jobs}: must be >= 1")
    if args.gpus is not None and (args.device != "cuda" or not args.gpus.strip(", ")):
        raise UserValueError(f"--gpus {args.gpus}: GPU ids such as 0,1 with -device cuda (the runs use -device "
                             f"{args.device})")


def make_executor(study: Study, args: argparse.Namespace) -> Executor:
    """The executor of ``--executor`` (its options checked by :func:`check_executor`)."""
    if args.executor == "slurm":
        from nnunetv2_sss.evaluation.study.slurm import SlurmExecutor
        return SlurmExecutor(study, slurm_options(args))
    jobs = args.jobs or 1
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus is not None else None
    if gpus is None and args.device == "cuda" and jobs > 1:
        gpus = visible_gpus()
    return LocalExecutor(study, jobs, gpus)


def recorded_command(argv: Sequence[str]) -> str:
    """The command line as ``summary.md`` records it: ``-o`` relative to the current folder (no path of
    the machine it ran on), everything else as given."""
    words, output_next = ["nnUNetv2_sss_study"], False
    for word in argv:
        if output_next:
            word = os.path.relpath(word)
        elif word.startswith("-o") and len(word) > 2:  # -oOUT, -o=OUT
            option = "-o=" if word[2] == "=" else "-o"
            word = option + os.path.relpath(word[len(option):])
        output_next = word == "-o"
        words.append(word)
    return " ".join(shlex.quote(w) for w in words)


@user_errors
def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = build_parser().parse_args(argv)
    args.device = torch_device(args.device)
    check_executor(args)
    study = Study(args, recorded_command(argv))
    executor = make_executor(study, args)
    try:
        coordinate(study, executor, wait=not args.no_wait)
    except KeyboardInterrupt:
        print("\n" + executor.interrupted, file=sys.stderr)
        sys.exit(130)
