""":class:`Study`: the checked settings and plan of one ``nnUNetv2_sss_study`` command, what its jobs do (one run:
nnUNetv2_train, nnUNetv2_predict, evaluation, done marker; one pretraining) and its outputs. The order the jobs
run in is the coordinator's (``coordinator.py``), where they run the executor's."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from typing import List, Optional, Tuple

from nnunetv2_sss import __version__
from nnunetv2_sss.atomic_files import write_text_atomically
from nnunetv2_sss.errors import UserRuntimeError, UserValueError, dataset_name, nnunet_path
from nnunetv2_sss.evaluation.study.active_plot import plot_active_learning
from nnunetv2_sss.evaluation.study.active_rounds import query_round
from nnunetv2_sss.evaluation.study.active_summary import active_learning_markdown
from nnunetv2_sss.evaluation.study.environment import child_environment, settings_record
from nnunetv2_sss.evaluation.study.inputs import check_dataset
from nnunetv2_sss.evaluation.study.plan import ALL, ActiveLearning, Run, parse_counts, plan_runs
from nnunetv2_sss.evaluation.study.plot import plot_learning_curve
from nnunetv2_sss.evaluation.study.pretraining import (SUFFIX, is_pretrained, nnunet_trainer, pretrain,
                                                       pretraining_seconds, results_folder_name, weights_file,
                                                       with_pretrained_rows)
from nnunetv2_sss.evaluation.study.processes import run_logged
from nnunetv2_sss.evaluation.study.rows import METRICS, class_names_of, number, runs_csv
from nnunetv2_sss.evaluation.study.summary import format_seconds, summary_markdown
from nnunetv2_sss.evaluation.study.trainers import (check_plugin_trainers, self_training_round, self_training_teachers,
                                                    trainer_classes, uses_sam2)
from nnunetv2_sss.evaluation.study.workspace import Workspace

SUPERVISED_DEFAULTS = ("nnUNetTrainerPlugin", "nnUNetTrainer")
ROUND_STUDENTS = ("nnUNetTrainerSelfTraining", "nnUNetTrainerSelfTraining_round2")
CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")  # what nnU-Net's --c loads


def has_checkpoint(fold_folder: str) -> bool:
    return any(os.path.isfile(os.path.join(fold_folder, name)) for name in CHECKPOINTS)


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


def active_learning(args: argparse.Namespace, counts: List[int]) -> Optional[ActiveLearning]:
    """``--active-learning S ... --budget K --al-rounds R``, checked (one user error naming the option), from
    the smallest labeled count; ``None`` without ``--active-learning``."""
    if not args.active_learning:
        given = [flag for flag, value in (("--budget", args.budget), ("--al-rounds", args.al_rounds))
                 if value is not None]
        if given:
            raise UserValueError(f"{given[0]}: an option of --active-learning (give the strategies to simulate)")
        return None
    from nnunetv2_sss.active import strategies
    known = strategies.available()
    unknown = [name for name in args.active_learning if name not in known]
    if unknown:
        raise UserValueError(f"--active-learning {unknown[0]}: not a strategy; one of {', '.join(known)}")
    if len(set(args.active_learning)) != len(args.active_learning):
        raise UserValueError(f"--active-learning {' '.join(args.active_learning)}: a strategy is listed twice")
    for flag, value, what in (("--budget", args.budget, "the scans revealed per round"),
                              ("--al-rounds", args.al_rounds, "the rounds")):
        if value is None:
            raise UserValueError(f"--active-learning needs {flag} ({what})")
        if value < 1:
            raise UserValueError(f"{flag} {value}: must be >= 1")
    several = [name for name in args.active_learning if known[name].min_predictions > 1]
    if several and args.disable_tta:
        raise UserValueError(f"--active-learning {several[0]} needs several predictions of each scan, and a study's "
                             f"model is one fold: leave out --disable-tta (its mirrored passes are the predictions)")
    return ActiveLearning(tuple(args.active_learning), args.budget, args.al_rounds, min(counts))


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
        self.active = active_learning(args, self.counts)
        self.runs = plan_runs(self.trainers, self.counts, self.seeds, self.supervised, self.ceiling, self.active)
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
        if self.active and self.teachers:
            raise UserValueError(f"--active-learning with -tr {' '.join(self.teachers)}: a self-training student "
                                 f"learns from its teacher's pseudo-labels on the same split, and each active-learning "
                                 f"row has a split of its own; leave the student out of this study")
        self.rounds = {t: self_training_round(classes[t]) for t in self.teachers}
        raw = os.path.join(raw_root, self.dataset)
        shared = os.path.join(nnunet_path(nnUNet_preprocessed), self.dataset)
        self.dataset_json = check_dataset(raw, shared, args, self.counts,
                                          self.active.rounds * self.active.budget if self.active else 0)
        self.workspace = Workspace(self.out, self.dataset, raw, shared, args.fold, self.dataset_json["file_ending"],
                                   self.env)
        self.record = settings_record(self.dataset, args, self.env)

    # -- one job -------------------------------------------------------------------------------------------
    def execute(self, run: Run, preprocessed_root: str, resume: bool = False) -> dict:
        """Train, predict and evaluate one run (an active-learning round queries its scans first:
        ``active_rounds.query_round``); its row, also written as its done marker. From scratch, or with
        ``resume`` (its job was requeued by the scheduler) from the training's last checkpoint if it has one."""
        from nnunetv2_sss.evaluation.evaluate import FOREGROUND_MEAN, evaluate_folders, stats_of

        args, group, trainer = self.args, self.workspace.group_folder(run), nnunet_trainer(run.trainer)
        results = os.path.join(group, results_folder_name(run.trainer))
        trainer_folder = os.path.join(results, self.dataset, f"{trainer}__{args.p}__{args.c}")
        predictions = os.path.join(group, "predictions", run.trainer)
        logs = os.path.join(group, "logs")
        continued = resume and has_checkpoint(os.path.join(trainer_folder, f"fold_{args.fold}"))
        for folder in (predictions,) if continued else (trainer_folder, predictions):  # half-written: from scratch
            shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(results, exist_ok=True)
        env = {**self.env, "nnUNet_preprocessed": preprocessed_root, "nnUNet_results": results,
               "nnUNet_sss_seed": str(run.seed)}
        started = time.time()
        if run.strategy:
            times = query_round(self, run, os.path.join(logs, f"{run.trainer}_suggest.log"), clean=not continued)
        elif run.trainer in self.teachers:
            times = self.make_pseudo_labels(run, env, logs, clean=not continued)
        else:
            times = {}
        start_from = ["--c"] if continued else []
        if is_pretrained(run.trainer):
            weights, seconds = self.pretrained_start(run)
            times["pretrain_seconds"] = seconds  # 0 but in the first row of the trainer
            started -= seconds
            if run.trainer in self.sam2_trainers:
                env["nnUNet_sss_sam2_checkpoint"] = weights
            elif not continued:
                start_from = ["-pretrained_weights", weights]
        if (args.gpus_per_job or 1) > 1:  # a SLURM job with several GPUs: nnU-Net's DDP training on them
            start_from.extend(["-num_gpus", str(args.gpus_per_job)])
        train_seconds = run_logged(["nnUNetv2_train", self.dataset, args.c, str(args.fold), "-tr", trainer,
                                    "-p", args.p, "-device", args.device] + start_from,
                                   env, os.path.join(logs, f"{run.trainer}_train.log"))
        images, labels, evaluated = self.workspace.evaluation_folders(run, preprocessed_root)
        # on the CPU nnU-Net's preprocessing and export processes only add their start-up (5 of 13 s for a
        # tiny test set): its sequential prediction there, one process each beside the GPU
        workers = "0" if args.device == "cpu" else "1"
        run_logged(["nnUNetv2_predict", "-i", images, "-o", predictions, "-d", self.dataset, "-c", args.c,
                    "-f", str(args.fold), "-tr", trainer, "-p", args.p, "-device", args.device,
                    "-npp", workers, "-nps", workers, "--disable_progress_bar"] +
                   (["--disable_tta"] if args.disable_tta else []),
                   env, os.path.join(logs, f"{run.trainer}_predict.log"))
        result = evaluate_folders(labels, predictions, self.dataset_json, num_processes=1)
        split = self.workspace.split_of(preprocessed_root)
        row = {"trainer": run.trainer, "num_labeled": run.labeled, "seed": run.seed, "fold": args.fold,
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
                    "device": args.device, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "plugin_version": __version__})
        self.workspace.write_marker(run, row)
        return row

    def pretrain(self, first: Run) -> None:
        """The pretrained weights of the network of ``first``'s trainer for the study's ``--pretrained`` rows
        (``first``: the first of them, in whose group it runs; seed: the study's first)."""
        pretrain(self.out, self.dataset, nnunet_trainer(first.trainer), self.args,
                 {**self.env, "nnUNet_sss_seed": str(self.seeds[0])}, self.workspace.preprocessed_root(first),
                 first.trainer in self.sam2_trainers)

    def pretrained_weights(self, trainer: str) -> str:
        return weights_file(os.path.join(self.out, "pretraining", "nnUNet_results"), self.dataset, trainer, self.args.p,
                            self.args.c, trainer + SUFFIX in self.sam2_trainers)

    def has_pretrained_weights(self, trainer: str) -> bool:
        return os.path.isfile(self.pretrained_weights(trainer))

    def pretrained_start(self, run: Run) -> Tuple[str, float]:
        """(weights, seconds of the pretraining): the first row of the trainer carries the seconds, the others 0."""
        weights = self.pretrained_weights(nnunet_trainer(run.trainer))
        if not os.path.isfile(weights):
            raise UserRuntimeError(f"{weights} not found: the pretraining of {nnunet_trainer(run.trainer)} has not "
                                   "finished; run the study again")
        first = next(r for r in self.runs if r.trainer == run.trainer)
        return weights, pretraining_seconds(weights) if run == first else 0.0

    def make_pseudo_labels(self, run: Run, env: dict, logs: str, clean: bool = True) -> dict:
        """A self-training student's pseudo-labels, by its teacher's run of the same group (done before it);
        the seconds of teacher and pseudo-labelling for the row. ``clean=False`` (a student's training that
        continues): the pool its training started with is kept."""
        args, teacher = self.args, self.teachers[run.trainer]
        seconds = run_logged(["nnUNetv2_sss_pseudo_label", "-d", self.dataset, "-c", args.c, "-p", args.p, "-tr", teacher,
                              "-f", str(args.fold), "--round", str(self.rounds[run.trainer]), "-device", args.device]
                             + (["--clean"] if clean else []) + (["--disable-tta"] if args.disable_tta else []),
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
    @property
    def evaluated_on(self) -> str:
        return (f"test (imagesTs + labelsTs of {self.dataset})" if self.workspace.has_test else
                f"validation cases of fold {self.args.fold} (the dataset has no imagesTs + labelsTs)")

    def write_outputs(self) -> None:
        """``runs.csv``, ``summary.md`` and ``learning_curve.png`` (with ``--active-learning``:
        ``active_learning.png`` and its sections of ``summary.md``) of the runs completed so far."""
        evaluated_on = self.evaluated_on
        rows = self.workspace.completed_rows(self.runs)
        write_text_atomically(os.path.join(self.out, "runs.csv"), runs_csv(rows))
        ordinary = [row for row in rows if not row.get("strategy")]
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
                  f"(training {format_seconds(sum(number(r['train_seconds']) for r in rows))})",
                  f"- nnunetv2-sss: {', '.join(sorted({str(r.get('plugin_version', 'before 0.2.0')) for r in rows}))} "
                  f"(the runs); {record['plugin_version']} (this command)"]
        if self.sam2_trainers:
            header.append(f"- SAM-2: {record['sam2_config']}, weights {record['sam2_checkpoint']}"
                          + (" (random: says nothing about SSS with a pretrained SAM-2)"
                             if record['sam2_checkpoint'] == "random" else ""))
        text = summary_markdown(ordinary, self.trainers, self.counts, self.seeds, self.supervised,
                                class_names_of(rows), header)
        if self.active:
            text += "\n".join(active_learning_markdown(rows, self.trainers, self.active, self.supervised))
        write_text_atomically(os.path.join(self.out, "summary.md"), text)
        evaluated = evaluated_on.split(" (")[0]
        title = f"{self.dataset} {self.args.c}: mean ± std over {len(self.seeds)} seeds ({evaluated})"
        plot_learning_curve(ordinary, self.trainers, self.counts, self.supervised,
                            os.path.join(self.out, "learning_curve.png"), title)
        if self.active:
            plot_active_learning(rows, self.trainers, self.active, os.path.join(self.out, "active_learning.png"),
                                 f"{title}\nactive learning: {self.active.budget} scans per round, "
                                 f"{self.active.rounds} rounds")
