""":class:`Study`: the checked settings and plan of one ``nnUNetv2_sss_study`` command, and its main loop:
one run after the other (make_splits for a new group, nnUNetv2_train, nnUNetv2_predict, evaluation, done
marker), the outputs rewritten after every run, progress and an estimate of what is left."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from typing import Dict, List, Optional

import numpy as np

from nnunetv2_sss.atomic_files import write_text_atomically
from nnunetv2_sss.data.folder_lock import FolderLock
from nnunetv2_sss.errors import UserValueError, dataset_name, nnunet_path
from nnunetv2_sss.evaluation.study.environment import check_settings, child_environment, settings_record
from nnunetv2_sss.evaluation.study.inputs import check_dataset
from nnunetv2_sss.evaluation.study.plan import ALL, Run, parse_counts, plan_runs
from nnunetv2_sss.evaluation.study.plot import plot_learning_curve
from nnunetv2_sss.evaluation.study.pretraining import (is_pretrained, nnunet_trainer, pretrain, results_folder_name,
                                                       with_pretrained_rows)
from nnunetv2_sss.evaluation.study.processes import run_logged
from nnunetv2_sss.evaluation.study.rows import METRICS, class_names_of, number, runs_csv
from nnunetv2_sss.evaluation.study.summary import format_seconds, summary_markdown
from nnunetv2_sss.evaluation.study.trainers import (check_plugin_trainers, self_training_round, self_training_teachers,
                                                    trainer_classes, uses_sam2)
from nnunetv2_sss.evaluation.study.workspace import Workspace

LOCK_FILE = ".study.lock"  # one study per output folder (data/folder_lock.py)
SUPERVISED_DEFAULTS = ("nnUNetTrainerPlugin", "nnUNetTrainer")
ROUND_STUDENTS = ("nnUNetTrainerSelfTraining", "nnUNetTrainerSelfTraining_round2")


def with_self_training_rounds(trainers: List[str], rounds: Optional[int]) -> List[str]:
    """``trainers`` with the self-training students of rounds 2 .. ``rounds`` after round 1's
    (``--rounds``); unchanged without ``--rounds``."""
    if rounds is None:
        return trainers
    if rounds not in (1, 2):
        raise UserValueError(f"--rounds {rounds}: 1 or 2 (the plugin's students: nnUNetTrainerSelfTraining, "
                             f"nnUNetTrainerSelfTraining_round2)")
    if ROUND_STUDENTS[0] not in trainers:
        raise UserValueError(f"--rounds {rounds}: add {ROUND_STUDENTS[0]} to -tr (the rounds are its)")
    position = trainers.index(ROUND_STUDENTS[0]) + 1
    added = [t for t in ROUND_STUDENTS[1:rounds] if t not in trainers]
    return trainers[:position] + added + trainers[position:]


class Study:
    def __init__(self, args: argparse.Namespace, command: str):
        """``args``: the parsed options (``-device`` resolved); ``command``: the command line summary.md records.
        Every option, the trainers and the dataset are checked here, before any run."""
        from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

        self.args, self.command = args, command
        raw_root = nnunet_path(nnUNet_raw)
        self.dataset = dataset_name(args.d)
        self.out = os.path.abspath(args.o or f"study_{self.dataset}_{args.c}")
        counts = parse_counts(args.num_labeled)
        if ALL in counts and args.no_ceiling:
            raise UserValueError(f"--num-labeled {ALL} asks for the ceiling, --no-ceiling forbids it: drop one")
        self.ceiling = not args.no_ceiling
        self.counts = sorted(set(c for c in counts if c != ALL))
        if not self.counts:
            raise UserValueError("--num-labeled: give at least one labeled count (e.g. 2 4 8)")
        if args.seeds < 1:
            raise UserValueError(f"--seeds {args.seeds}: must be >= 1")
        self.seeds = list(range(args.first_seed, args.first_seed + args.seeds))
        if len(set(args.tr)) != len(args.tr):
            raise UserValueError(f"-tr {' '.join(args.tr)}: a trainer is listed twice")
        self.trainers = with_pretrained_rows(with_self_training_rounds(list(args.tr), args.rounds), args.pretrained)
        self.supervised = args.supervised or next((t for t in SUPERVISED_DEFAULTS if t in self.trainers),
                                                  self.trainers[0])
        if self.supervised not in self.trainers:
            raise UserValueError(f"--supervised {self.supervised}: not one of -tr {' '.join(self.trainers)}")
        for option in ("epochs", "iterations", "val_iterations", "max_runs"):
            value = getattr(args, option)
            if value is not None and value < 1:
                raise UserValueError(f"--{option.replace('_', '-')} {value}: must be >= 1")
        self.runs = plan_runs(self.trainers, self.counts, self.seeds, self.supervised, self.ceiling)
        self.env = child_environment(args, raw_root)
        found = trainer_classes(sorted({nnunet_trainer(t) for t in self.trainers}), self.env["nnUNet_extTrainer"])
        check_plugin_trainers(found)
        classes = {t: found[nnunet_trainer(t)] for t in self.trainers}  # by row
        students = [nnunet_trainer(t) for t in self.trainers if is_pretrained(t) and self_training_round(classes[t])]
        if students:
            raise UserValueError(f"--pretrained {' '.join(students)}: a self-training student starts from its teacher's "
                                 f"pseudo-labels, not from pretrained weights; leave it out of --pretrained")
        self.sam2_trainers = [t for t in self.trainers if uses_sam2(classes[t])]
        self.teachers = self_training_teachers(classes, self.trainers, self.supervised)
        self.rounds = {t: self_training_round(classes[t]) for t in self.teachers}
        raw = os.path.join(raw_root, self.dataset)
        shared = os.path.join(nnunet_path(nnUNet_preprocessed), self.dataset)
        self.dataset_json = check_dataset(raw, shared, args, self.counts)
        self.workspace = Workspace(self.out, self.dataset, raw, shared, args.fold, self.dataset_json["file_ending"],
                                   self.env)
        self.record = settings_record(self.dataset, args, self.env)

    # -- one run ----------------------------------------------------------------------------------------
    def execute(self, run: Run, preprocessed_root: str) -> dict:
        """Train, predict and evaluate one run (from scratch); its row, also written as its done marker."""
        from nnunetv2_sss.evaluation.evaluate import FOREGROUND_MEAN, evaluate_folders, stats_of

        args, group, trainer = self.args, self.workspace.group_folder(run), nnunet_trainer(run.trainer)
        results = os.path.join(group, results_folder_name(run.trainer))
        trainer_folder = os.path.join(results, self.dataset, f"{trainer}__{args.p}__{args.c}")
        predictions = os.path.join(group, "predictions", run.trainer)
        logs = os.path.join(group, "logs")
        for folder in (trainer_folder, predictions):  # a half-written run is redone from scratch
            shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(results, exist_ok=True)
        env = {**self.env, "nnUNet_preprocessed": preprocessed_root, "nnUNet_results": results,
               "nnUNet_sss_seed": str(run.seed)}
        started = time.time()
        times = self.make_pseudo_labels(run, env, logs) if run.trainer in self.teachers else {}
        start_from = []
        if is_pretrained(run.trainer):
            weights, seconds = pretrain(self.out, self.dataset, trainer, args, {**env, "nnUNet_sss_seed": str(self.seeds[0])},
                                        preprocessed_root, run.trainer in self.sam2_trainers)
            times["pretrain_seconds"] = round(seconds, 1)  # 0 where an earlier run made them
            if run.trainer in self.sam2_trainers:
                env["nnUNet_sss_sam2_checkpoint"] = weights
            else:
                start_from = ["-pretrained_weights", weights]
        train_seconds = run_logged(["nnUNetv2_train", self.dataset, args.c, str(args.fold), "-tr", trainer,
                                    "-p", args.p, "-device", args.device] + start_from,
                                   env, os.path.join(logs, f"{run.trainer}_train.log"))
        images, labels, evaluated = self.workspace.evaluation_folders(run, preprocessed_root)
        run_logged(["nnUNetv2_predict", "-i", images, "-o", predictions, "-d", self.dataset, "-c", args.c,
                    "-f", str(args.fold), "-tr", trainer, "-p", args.p, "-device", args.device,
                    "-npp", "1", "-nps", "1", "--disable_progress_bar"] +
                   (["--disable_tta"] if args.disable_tta else []),
                   env, os.path.join(logs, f"{run.trainer}_predict.log"))
        result = evaluate_folders(labels, predictions, self.dataset_json, num_processes=1)
        split = self.workspace.split_of(preprocessed_root)
        row = {"trainer": run.trainer, "num_labeled": run.num_labeled, "seed": run.seed, "fold": args.fold,
               "labeled_cases": " ".join(split["train"]),
               "split_file": os.path.relpath(self.workspace.split_file(preprocessed_root), self.out),
               "evaluated_on": evaluated.split(" ")[0], "evaluated_cases": len(result["metric_per_case"])}
        foreground = stats_of(result, FOREGROUND_MEAN)
        for prefix, metric in METRICS:
            row[f"{prefix}_mean"] = foreground[metric]["mean"]
        for key in result["class_keys"]:
            stats = stats_of(result, key)
            for prefix, metric in METRICS:
                row[f"{prefix}_{result['label_names'][key]}"] = stats[metric]["mean"]
        epochs, iterations = self.schedule(trainer_folder)
        row.update({"train_seconds": round(train_seconds, 1), **times, "seconds": round(time.time() - started, 1),
                    "epochs": epochs, "iterations_per_epoch": iterations,
                    "iterations": epochs * iterations if epochs and iterations else "",
                    "device": args.device, "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
        self.workspace.write_marker(run, row)
        return row

    def make_pseudo_labels(self, run: Run, env: dict, logs: str) -> dict:
        """A self-training student's pseudo-labels, by its teacher's run of the same group (done before it);
        the seconds of teacher and pseudo-labelling for the row."""
        args, teacher = self.args, self.teachers[run.trainer]
        seconds = run_logged(["nnUNetv2_sss_pseudo_label", "-d", self.dataset, "-c", args.c, "-p", args.p, "-tr", teacher,
                              "-f", str(args.fold), "--round", str(self.rounds[run.trainer]), "-device", args.device,
                              "--clean"] + (["--disable-tta"] if args.disable_tta else []),
                             env, os.path.join(logs, f"{run.trainer}_pseudo_label.log"))
        teacher_row = self.workspace.row(Run(teacher, run.num_labeled, run.seed))
        return {"teacher": teacher, "teacher_seconds": teacher_row["train_seconds"],
                "pseudo_label_seconds": round(seconds, 1)}

    def schedule(self, trainer_folder: str):
        """(epochs, iterations per epoch) of the run: the trainer's values in nnU-Net's debug.json."""
        try:
            with open(os.path.join(trainer_folder, f"fold_{self.args.fold}", "debug.json")) as f:
                debug = json.load(f)
            return int(debug["num_epochs"]), int(debug["num_iterations_per_epoch"])
        except (OSError, KeyError, ValueError):
            return None, None

    # -- outputs --------------------------------------------------------------------------------------------
    def write_outputs(self, evaluated_on: str) -> None:
        """``runs.csv``, ``summary.md`` and ``learning_curve.png`` of the runs completed so far."""
        rows = self.workspace.completed_rows(self.runs)
        write_text_atomically(os.path.join(self.out, "runs.csv"), runs_csv(rows))
        record = self.record
        header = [f"# nnUNetv2_sss_study: {self.dataset}, {self.args.c}", "",
                  f"- command: `{self.command}`",
                  f"- runs completed: {len(rows)} of {len(self.runs)}; seeds {' '.join(map(str, self.seeds))}; "
                  f"fold {self.args.fold}; supervised row: {self.supervised}",
                  f"- evaluated on: {evaluated_on}",
                  f"- schedule: {record['epochs']} epochs x {record['iterations_per_epoch']} iterations "
                  f"(validation iterations {record['val_iterations_per_epoch']}); device {self.args.device}; "
                  f"nnUNet_n_proc_DA {record['nnUNet_n_proc_DA']}",
                  f"- time: {format_seconds(sum(number(r['seconds']) for r in rows))} of runs "
                  f"(training {format_seconds(sum(number(r['train_seconds']) for r in rows))})"]
        if self.sam2_trainers:
            header.append(f"- SAM-2: {record['sam2_config']}, weights {record['sam2_checkpoint']}"
                          + (" (random: says nothing about SSS with a pretrained SAM-2)"
                             if record['sam2_checkpoint'] == "random" else ""))
        text = summary_markdown(rows, self.trainers, self.counts, self.seeds, self.supervised, class_names_of(rows),
                                header)
        write_text_atomically(os.path.join(self.out, "summary.md"), text)
        evaluated = evaluated_on.split(" (")[0]
        title = f"{self.dataset} {self.args.c}: mean ± std over {len(self.seeds)} seeds ({evaluated})"
        plot_learning_curve(rows, self.trainers, self.counts, self.supervised,
                            os.path.join(self.out, "learning_curve.png"), title)

    # -- main loop -------------------------------------------------------------------------------------------
    def run(self) -> None:
        with FolderLock(self.out, "nnUNetv2_sss_study", LOCK_FILE):
            check_settings(self.out, self.record)
            evaluated_on = (f"test (imagesTs + labelsTs of {self.dataset})" if self.workspace.has_test else
                            f"validation cases of fold {self.args.fold} (the dataset has no imagesTs + labelsTs)")
            pending = [r for r in self.runs if not self.workspace.is_done(r)]
            print(f"nnUNetv2_sss_study: {len(self.runs)} runs ({len(self.trainers)} trainers x {len(self.counts)} "
                  f"labeled counts x {len(self.seeds)} seeds" + (f" + {len(self.seeds)} ceiling runs" if self.ceiling
                                                                  else "") +
                  f"), {len(self.runs) - len(pending)} already done; evaluated on {evaluated_on}; output {self.out}",
                  flush=True)
            done_before = {r: number(self.workspace.row(r).get("seconds")) for r in self.runs if r not in pending}
            started, this_session = time.time(), {}
            prepared = {}
            for index, run in enumerate(self.runs, 1):
                if run not in pending:
                    continue
                if self.args.max_runs is not None and len(this_session) >= self.args.max_runs:
                    print(f"stopped after {len(this_session)} runs (--max-runs); run the same command again to "
                          f"continue", flush=True)
                    break
                label = f"{run.trainer}, {run.num_labeled} labeled, seed {run.seed}"
                print(f"[{index}/{len(self.runs)}] {label}: training ...", flush=True)
                if run.group not in prepared:  # split files of this group, written again now
                    prepared[run.group] = self.workspace.prepare_group(run)
                row = self.execute(run, prepared[run.group])
                this_session[run] = number(row["seconds"])
                self.write_outputs(evaluated_on)
                left = [r for r in pending if r not in this_session]
                estimate = sum(self._estimate(r, {**done_before, **this_session}) for r in left)
                print(f"[{index}/{len(self.runs)}] {label}: mean Dice {row['dice_mean']:.2f} % ("
                      + ", ".join(f"{c} {number(row[f'dice_{c}']):.2f}" for c in class_names_of([row]))
                      + f"), {row['seconds']:.0f} s; elapsed {format_seconds(time.time() - started)}, "
                      f"{len(left)} runs left, about {format_seconds(estimate)}", flush=True)
            self.write_outputs(evaluated_on)
            print(f"written {os.path.join(self.out, 'runs.csv')}, summary.md, learning_curve.png", flush=True)

    def _estimate(self, run: Run, seconds: Dict[Run, float]) -> float:
        """Mean seconds of the trainer's completed runs, else of all completed runs."""
        same = [s for r, s in seconds.items() if r.trainer == run.trainer and np.isfinite(s)]
        every = [s for s in seconds.values() if np.isfinite(s)]
        return float(np.mean(same)) if same else (float(np.mean(every)) if every else 0.0)
