"""``nnUNetv2_sss_demo``: supervised nnU-Net vs a semi-supervised trainer on a label-scarce split, on CPU.

    nnUNetv2_sss_demo [--workdir demo_work] [-tr nnUNetTrainerSSS ...] [--task lesion|brain] [-c 2d]
        [--num-labeled N] [--seed S] [--epochs E] [--iterations I] [--val-iterations V] [-device cpu]

Runs the real commands, in order: build the built-in dataset (``nnUNetv2_sss_make_demo_dataset``)
-> ``nnUNetv2_plan_and_preprocess`` -> ``nnUNetv2_sss_preprocess_unlabeled`` -> a one-seed,
one-labeled-count ``nnUNetv2_sss_study`` (:mod:`nnunetv2_sss.evaluation.study`) of the supervised
``nnUNetTrainerPlugin`` and the ``-tr`` trainers: the same split (``nnUNetv2_sss_make_splits
--num-labeled N --seed S``), the same seed and schedule for every trainer, each through
``nnUNetv2_train``, ``nnUNetv2_predict`` on ``imagesTs`` and the plugin's evaluation on ``labelsTs``.
Then it prints the rows side by side (test Dice per class and mean, seconds per run) with what one
short run cannot tell. Everything lives in ``--workdir``; starting the demo again reuses what is
done (dataset, preprocessing, finished runs: the study is resumable).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import time
from typing import List, Optional, Sequence

from nnunetv2_sss.errors import UserRuntimeError, UserValueError, user_errors
from nnunetv2_sss.evaluation.study.processes import run_child
from nnunetv2_sss.evaluation.study.rows import class_names_of, number
from nnunetv2_sss.evaluation.study.trainers import trainer_classes, uses_sam2
from nnunetv2_sss.version import command_parser

SUPERVISED = "nnUNetTrainerPlugin"
TASKS = {  # --task: (dataset id, dataset folder, what it is, default labeled count, counts for a study)
    "lesion": (991, "Dataset991_DemoLesion", "CT-like haemorrhage cores (label 1) with oedema rims (label 2)", 4,
               "2 4 8"),
    "brain": (990, "Dataset990_DemoBrain", "grey matter (label 1) and white matter (label 2)", 2, "1 2 4"),
}
DEFAULTS = {"task": "brain", "seed": 0, "epochs": 12, "iterations": 20, "val_iterations": 2}


def _run(command, env) -> None:
    print("\n$ " + " ".join(str(c) for c in command), flush=True)
    completed = run_child(command, env)
    if completed.returncode < 0:
        raise UserRuntimeError(f"demo stopped: {command[0]} was killed by signal {-completed.returncode}; run the "
                               "same command again to continue (finished steps and runs are kept)")
    if completed.returncode != 0:
        # the command printed its own message (ERROR: ... or a traceback) above
        raise UserRuntimeError(f"demo stopped: {command[0]} failed with exit code {completed.returncode} "
                               f"(its message is above)")


def demo_environment(workdir: str) -> dict:
    """nnU-Net's folders inside ``workdir``, the plugin's trainers, CPU-friendly defaults."""
    import nnunetv2_sss.trainers

    env = dict(os.environ)
    for variable, folder in (("nnUNet_raw", "nnUNet_raw"), ("nnUNet_preprocessed", "nnUNet_preprocessed"),
                             ("nnUNet_results", "nnUNet_results")):
        env[variable] = os.path.join(workdir, folder)
        os.makedirs(env[variable], exist_ok=True)
    env.update({"nnUNet_extTrainer": os.path.dirname(os.path.abspath(nnunetv2_sss.trainers.__file__)),
                "MPLBACKEND": "agg", "PYTHONUNBUFFERED": "1"})
    env.setdefault("nnUNet_def_n_proc", "1")
    env.setdefault("nnUNet_compile", "false")
    # no SAM-2 checkpoint can be downloaded at run time: unless the user set them, the reduced Hiera
    # config shipped with the plugin, with random weights (the study sets the same defaults)
    env.setdefault("nnUNet_sss_sam2_config", "sam2_hiera_demo")
    env.setdefault("nnUNet_sss_sam2_checkpoint", "random")
    return env


def demo_trainers(trainers: Sequence[str]) -> List[str]:
    """The supervised row first, then the ``-tr`` trainers (each once)."""
    ordered = [SUPERVISED] + [t for t in trainers if t != SUPERVISED]
    if len(set(ordered)) != len(ordered):
        raise UserValueError(f"-tr {' '.join(trainers)}: a trainer is listed twice")
    if len(ordered) < 2:
        raise UserValueError(f"-tr {' '.join(trainers)}: give at least one trainer to compare with the supervised "
                             f"{SUPERVISED} (e.g. -tr nnUNetTrainerSSS)")
    return ordered


def study_folder(workdir: str, task: str, configuration: str, num_labeled: int, seed: int, epochs: int,
                 iterations: int, val_iterations: int) -> str:
    """One study folder per setting that the study refuses to change between restarts."""
    return os.path.join(workdir, f"study_{task}_{configuration}_n{num_labeled}_seed{seed}_{epochs}x{iterations}"
                                 f"v{val_iterations}")


def read_rows(folder: str) -> List[dict]:
    with open(os.path.join(folder, "runs.csv")) as f:
        return list(csv.DictReader(f))


def results_table(rows: Sequence[dict], trainers: Sequence[str]) -> str:
    """Markdown table, one row per trainer in ``trainers`` order: test Dice % per class and mean, seconds."""
    by_trainer = {r["trainer"]: r for r in rows}
    missing = [t for t in trainers if t not in by_trainer]
    if missing:
        raise UserRuntimeError(f"runs.csv has no row for {', '.join(missing)}")
    classes = class_names_of([by_trainer[t] for t in trainers])
    lines = ["| trainer | " + " | ".join(f"Dice {c} %" for c in classes) + " | mean Dice % | seconds (training) |",
             "|---|" + "---:|" * (len(classes) + 2)]
    for trainer in trainers:
        row = by_trainer[trainer]
        name = f"{trainer} (supervised)" if trainer == SUPERVISED else trainer
        cells = [f"{number(row[f'dice_{c}']):.2f}" for c in classes] + [f"{number(row['dice_mean']):.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) +
                     f" | {number(row['seconds']):.0f} ({number(row['train_seconds']):.0f}) |")
    return "\n".join(lines)


def caveats(sam2: Sequence[str], record: dict, command: str) -> List[str]:
    """What the demo's numbers cannot say; ``sam2``: the trainers with a SAM-2 network."""
    notes = []
    if sam2:
        if record.get("sam2_checkpoint") == "random":
            notes.append(f"SAM-2 in {', '.join(sam2)} runs with RANDOM weights ({record.get('sam2_config')}; no "
                         "checkpoint can be downloaded here): its numbers say nothing about SSS with a pretrained "
                         "SAM-2 (set nnUNet_sss_sam2_config / nnUNet_sss_sam2_checkpoint for one).")
        else:
            notes.append(f"SAM-2: {record.get('sam2_config')}, weights {record.get('sam2_checkpoint')}.")
    notes.append("One short run per trainer, on one seed and one split: the difference between the rows says "
                 "nothing conclusive (from seed to seed, the labeled cases and the result change, often by more "
                 "than the gap between trainers; these schedules are far shorter than nnU-Net's 1000 x 250 "
                 "iterations). To compare trainers, run several seeds and labeled counts with nnUNetv2_sss_study, "
                 f"e.g.\n  {command}")
    return notes


def run_demo(workdir: str, trainers: Sequence[str] = ("nnUNetTrainerSSS",), configuration: str = "2d",
             epochs: int = DEFAULTS["epochs"], iterations: int = DEFAULTS["iterations"], device: str = "cpu",
             task: str = DEFAULTS["task"], num_labeled: Optional[int] = None, seed: int = DEFAULTS["seed"],
             val_iterations: int = DEFAULTS["val_iterations"]) -> List[dict]:
    """Run the demo in ``workdir``; returns the runs.csv rows (supervised first)."""
    if isinstance(trainers, str):
        trainers = [trainers]
    trainers = demo_trainers(trainers)
    if task not in TASKS:
        raise UserValueError(f"--task {task}: one of {', '.join(TASKS)}")
    dataset_id, dataset_name, description, default_labeled, study_counts = TASKS[task]
    num_labeled = default_labeled if num_labeled is None else num_labeled
    for option, value in (("--epochs", epochs), ("--iterations", iterations), ("--val-iterations", val_iterations),
                          ("--num-labeled", num_labeled)):
        if value < 1:
            raise UserValueError(f"{option} {value}: must be >= 1")
    workdir = os.path.abspath(workdir)
    env = demo_environment(workdir)
    classes = trainer_classes(trainers, env["nnUNet_extTrainer"])
    raw, preprocessed = env["nnUNet_raw"], env["nnUNet_preprocessed"]
    started = time.time()

    if not os.path.isfile(os.path.join(raw, dataset_name, "dataset.json")):
        _run(["nnUNetv2_sss_make_demo_dataset", "--task", task, "-d", dataset_id], env)
    planned = os.path.isfile(os.path.join(preprocessed, dataset_name, "nnUNetPlans.json")) and \
        os.path.isdir(os.path.join(preprocessed, dataset_name, f"nnUNetPlans_{configuration}"))
    if not planned:
        # nnUNet_n_proc_DA=0 breaks nnU-Net's planner: planning runs without it
        plan_env = {k: v for k, v in env.items() if k != "nnUNet_n_proc_DA"}
        _run(["nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", configuration, "-np", 2, "-npfp", 2,
              "--verify_dataset_integrity"], plan_env)
    _run(["nnUNetv2_sss_preprocess_unlabeled", "-d", dataset_id, "-c", configuration, "-np", 2], env)
    prepared = time.time() - started

    out = study_folder(workdir, task, configuration, num_labeled, seed, epochs, iterations, val_iterations)
    _run(["nnUNetv2_sss_study", "-d", dataset_id, "-c", configuration, "--num-labeled", num_labeled,
          "--seeds", 1, "--first-seed", seed, "-tr", *trainers, "--supervised", SUPERVISED, "--epochs", epochs,
          "--iterations", iterations, "--val-iterations", val_iterations, "-device", device, "--no-ceiling",
          "-o", out], env)
    rows = read_rows(out)
    with open(os.path.join(out, "study.json")) as f:
        record = json.load(f)
    by_trainer = {r["trainer"]: r for r in rows}
    rows = [by_trainer[t] for t in trainers if t in by_trainer]

    first = rows[0] if rows else {}
    labeled = first.get("labeled_cases", "").split()
    print(f"\nDemo: {dataset_name}, {description}; configuration {configuration}, fold 0.\n"
          f"Label scarcity: {len(labeled)} labeled training cases (split seed {seed}: {' '.join(labeled)}); the "
          f"fold's other training cases and imagesUnlabeled are the semi-supervised trainers' unlabeled pool.\n"
          f"Every trainer: the same split, {epochs} epochs x {iterations} iterations, nnUNet_sss_seed={seed}, "
          f"{device}.\nTest Dice on the {first.get('evaluated_cases', '?')} held-out cases (imagesTs + labelsTs); "
          f"seconds per run = training + prediction + evaluation:\n")
    print(results_table(rows, trainers))
    example = (f"nnUNet_raw={raw} nnUNet_preprocessed={preprocessed} nnUNet_results={env['nnUNet_results']} "
               f"nnUNetv2_sss_study -d {dataset_id} -c {configuration} --num-labeled {study_counts} --seeds 5 "
               f"-tr {' '.join(trainers)} [--epochs E --iterations I] -o {os.path.join(workdir, 'study')}")
    print("\nCaveats:")
    for note in caveats([t for t in trainers if uses_sam2(classes[t])], record, example):
        print(f"- {note}")
    print(f"\nFolders: {workdir} (nnUNet_raw, nnUNet_preprocessed); runs, logs, runs.csv, summary.md: {out}")
    print(f"Demo wall time: {time.time() - started:.0f} s (dataset and preprocessing {prepared:.0f} s; "
          f"runs done earlier in this folder are not counted again).", flush=True)
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        prog="nnUNetv2_sss_demo",
        description="End-to-end demo (CPU, about 15 minutes on 2 cores): builds a built-in dataset, runs "
                    "nnUNetv2_plan_and_preprocess and nnUNetv2_sss_preprocess_unlabeled, then trains the supervised "
                    f"{SUPERVISED} and the -tr trainer(s) on the same label-scarce split with the same seed "
                    "(a one-seed nnUNetv2_sss_study), predicts the held-out cases and prints their test Dice side "
                    "by side. One short run on one seed is a demonstration, not a comparison: use "
                    "nnUNetv2_sss_study with several seeds for that. Starting it again reuses what is done.")
    parser.add_argument("--workdir", default="demo_work",
                        help="folder for nnUNet_raw, nnUNet_preprocessed and the study (default demo_work)")
    parser.add_argument("-tr", nargs="+", default=["nnUNetTrainerSSS"],
                        help=f"trainer(s) compared with the supervised {SUPERVISED} (default nnUNetTrainerSSS)")
    parser.add_argument("--task", choices=tuple(TASKS), default=DEFAULTS["task"],
                        help="built-in dataset: brain = Dataset990_DemoBrain, grey/white matter (both trainers learn "
                             "it within the demo's schedule); lesion = Dataset991_DemoLesion, small CT-like lesions, "
                             "the task meant to need unlabeled data (needs longer schedules: with the defaults, "
                             "supervised nnU-Net only starts to find the lesion cores and SSS with a random SAM-2 "
                             f"does not; default {DEFAULTS['task']})")
    parser.add_argument("-c", default="2d", help="configuration (default 2d)")
    parser.add_argument("--num-labeled", type=int, default=None,
                        help="labeled training cases of fold 0, the rest of the fold's training cases are unlabeled "
                             "(default " + ", ".join(f"{v[3]} for {k}" for k, v in TASKS.items()) + ")")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"],
                        help=f"seed of the split and of the training (nnUNet_sss_seed; default {DEFAULTS['seed']})")
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"],
                        help=f"epochs per trainer (default {DEFAULTS['epochs']})")
    parser.add_argument("--iterations", type=int, default=DEFAULTS["iterations"],
                        help=f"training iterations per epoch (default {DEFAULTS['iterations']})")
    parser.add_argument("--val-iterations", type=int, default=DEFAULTS["val_iterations"],
                        help=f"validation iterations per epoch (default {DEFAULTS['val_iterations']})")
    parser.add_argument("-device", default="cpu", choices=("cpu", "cuda", "mps"),
                        help="device for training and prediction (default cpu; on cuda runs are not bit-repeatable)")
    return parser


@user_errors
def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    run_demo(args.workdir, args.tr, args.c, args.epochs, args.iterations, args.device, args.task, args.num_labeled,
             args.seed, args.val_iterations)


if __name__ == "__main__":
    main()
