"""``nnUNetv2_sss_study``: does learning from unlabeled scans beat supervised nnU-Net here?

    nnUNetv2_sss_study -d D -c 2d --num-labeled 2 4 8 --seeds 3 \\
        -tr nnUNetTrainerPlugin nnUNetTrainerMeanTeacher nnUNetTrainerUniMatchV2 nnUNetTrainerSSS \\
        [--epochs E --iterations I --val-iterations V] [-device cpu|cuda] [-o OUT] [--no-ceiling] [--max-runs K]

For every seed and labeled count N (a *group*): ``nnUNetv2_sss_make_splits --num-labeled N --seed S``
(so the labeled cases differ between seeds), then every trainer on that split, fold 0, through
nnU-Net's own ``nnUNetv2_train`` and ``nnUNetv2_predict`` with ``nnUNet_sss_seed=S``, then the
plugin's evaluation (:func:`nnunetv2_sss.evaluation.evaluate.evaluate_folders`) on the dataset's
held-out cases (``imagesTs`` + ``labelsTs``; without them on fold 0's validation cases, which the
output says). The *ceiling* is the supervised trainer with every training case of fold 0 labeled
(``--num-labeled all``, ``--labeled-fraction 1``), one run per seed.

Each group has its own folder ``OUT/runs/n{N}_s{S}/`` (``nall_s{S}`` for the ceiling) with its own
``nnUNet_results`` and its own view of the preprocessed dataset: ``nnUNet_preprocessed/<dataset>/``
holds symbolic links to the shared preprocessed data (plans, ``nnUNetPlans_2d``, ``..._unlabeled``,
...) next to the group's own ``splits_final.json`` / ``splits_semi_supervised.json``. Runs of
different splits never overwrite each other's models or splits, and the dataset's own split file
in ``nnUNet_preprocessed`` is never touched. The split files are written again whenever a group
starts (deterministic for the seed), and every row records the labeled cases it was trained on.

Resuming: a run is complete when its marker ``OUT/runs/<group>/done/<trainer>.json`` exists; it
is written atomically (temporary file, then rename) after the evaluation and holds the run's row.
A run without marker is redone from scratch (its results, predictions and logs are deleted
first), so a study killed at any point continues where it stopped when started again and never
counts a half-written run. Child processes die with the study (``PR_SET_PDEATHSIG`` on Linux).
``OUT/study.json`` keeps the settings that must not change between restarts (dataset,
configuration, plans, fold, schedule); another value stops the study with an error.

Outputs (rewritten after every run, atomically): ``runs.csv`` (one row per completed run),
``summary.md`` (see :func:`summary_markdown`) and ``learning_curve.png``.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import io
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from nnunetv2_sss.errors import UserFileNotFoundError, UserRuntimeError, UserValueError, nnunet_path, user_errors

ALL = "all"
SPLIT_FILES = ("splits_final.json", "splits_semi_supervised.json")
FIXED_SETTINGS = ("dataset", "configuration", "plans", "fold", "epochs", "iterations_per_epoch",
                  "val_iterations_per_epoch", "disable_tta")
METRICS = (("dice", "Dice_pct"), ("hd95", "HD95_mm"), ("asd", "ASD_mm"))
SUPERVISED_DEFAULTS = ("nnUNetTrainerPlugin", "nnUNetTrainer")


# ---- small helpers -------------------------------------------------------------------------------
def write_atomically(path: str, text: str) -> None:
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def group_name(num_labeled, seed: int) -> str:
    return f"n{num_labeled}_s{seed}"


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGKILL when the study process dies (Linux only)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: children may outlive a killed study
        pass


class StudyLock:
    """``flock`` on ``OUT/.study.lock``: one study per output folder; released when the process ends."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, ".study.lock")
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 100, 0).decode(errors="replace").strip() or "unknown pid"
            os.close(self.fd)
            raise UserRuntimeError(f"{os.path.dirname(self.path)}: another nnUNetv2_sss_study ({holder}) is running "
                                   "in this folder; wait for it or stop it, then run this command again") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"pid {os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc):
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


# ---- the plan --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    trainer: str
    num_labeled: object  # int or ALL
    seed: int

    @property
    def group(self) -> str:
        return group_name(self.num_labeled, self.seed)


def plan_runs(trainers: Sequence[str], counts: Sequence[int], seeds: Sequence[int], supervised: str,
              ceiling: bool) -> List[Run]:
    """Seed by seed (a whole learning curve per seed), the ceiling after each seed's counts."""
    runs = []
    for seed in seeds:
        for count in counts:
            runs.extend(Run(t, count, seed) for t in trainers)
        if ceiling:
            runs.append(Run(supervised, ALL, seed))
    return runs


def parse_counts(values: Sequence[str]) -> List[object]:
    counts = []
    for value in values:
        if value == ALL:
            counts.append(ALL)
            continue
        try:
            count = int(value)
        except ValueError:
            raise UserValueError(f"--num-labeled {value}: give whole numbers >= 1 or '{ALL}'") from None
        if count < 1:
            raise UserValueError(f"--num-labeled {value}: must be >= 1")
        counts.append(count)
    return counts


# ---- statistics (pure functions, unit-tested) ----------------------------------------------------
def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def values_by_seed(rows: Sequence[dict], trainer: str, num_labeled, column: str = "dice_mean") -> Dict[int, float]:
    return {int(r["seed"]): _float(r[column]) for r in rows
            if r["trainer"] == trainer and str(r["num_labeled"]) == str(num_labeled)}


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    """mean and sample std (ddof 1; NaN with one value) of the finite values, and their count."""
    finite = np.asarray([v for v in values if np.isfinite(v)], float)
    if finite.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std(ddof=1)) if finite.size > 1 else float("nan"),
            "n": int(finite.size)}


def paired_comparison(trainer_values: Dict[int, float], supervised_values: Dict[int, float],
                      min_seeds_for_test: int = 5) -> Dict[str, object]:
    """Differences trainer - supervised over the seeds both have (same split, same seed): mean,
    sample std, wins (difference > 0) of n, and the two-sided paired Wilcoxon signed-rank p-value
    (``scipy.stats.wilcoxon`` of the differences) when at least ``min_seeds_for_test`` pairs exist."""
    seeds = sorted(s for s in trainer_values if s in supervised_values
                   and np.isfinite(trainer_values[s]) and np.isfinite(supervised_values[s]))
    differences = np.array([trainer_values[s] - supervised_values[s] for s in seeds], float)
    result = {"seeds": seeds, "differences": differences.tolist(), **mean_std(differences),
              "wins": int((differences > 0).sum()), "p_wilcoxon": float("nan")}
    if len(seeds) >= min_seeds_for_test and np.any(differences != 0):  # all zero: no test (NaN)
        from scipy.stats import wilcoxon
        result["p_wilcoxon"] = float(wilcoxon(differences).pvalue)
    return result


def gap_closed(trainer_values: Dict[int, float], supervised_values: Dict[int, float],
               ceiling_values: Dict[int, float]) -> Dict[str, float]:
    """``(mean trainer - mean supervised) / (mean ceiling - mean supervised)`` over the seeds all three
    have; NaN when there is no gap (the ceiling's mean is not above the supervised one's)."""
    seeds = [s for s in trainer_values if s in supervised_values and s in ceiling_values
             and all(np.isfinite(v[s]) for v in (trainer_values, supervised_values, ceiling_values))]
    if not seeds:
        return {"share": float("nan"), "n": 0, "trainer": float("nan"), "supervised": float("nan"),
                "ceiling": float("nan")}
    trainer, supervised, ceiling = (float(np.mean([v[s] for s in seeds]))
                                    for v in (trainer_values, supervised_values, ceiling_values))
    gap = ceiling - supervised
    return {"share": (trainer - supervised) / gap if gap > 0 else float("nan"), "n": len(seeds),
            "trainer": trainer, "supervised": supervised, "ceiling": ceiling}


def class_names_of(rows: Sequence[dict]) -> List[str]:
    """Class names of the per-class Dice columns (``dice_<name>``), in column order."""
    names = []
    for row in rows:
        names.extend(k[5:] for k in row if k.startswith("dice_") and k != "dice_mean" and k[5:] not in names)
    return names


def _cell(stats: Dict[str, float], expected: int, digits: int = 1) -> str:
    if stats["n"] == 0:
        return "–"
    text = f"{stats['mean']:.{digits}f}"
    if np.isfinite(stats["std"]):
        text += f" ± {stats['std']:.{digits}f}"
    if stats["n"] != expected:
        text += f" ({stats['n']} of {expected} seeds)"
    return text


def _signed(value: float, digits: int = 1) -> str:
    return "–" if not np.isfinite(value) else f"{value:+.{digits}f}"


def summary_markdown(rows: Sequence[dict], trainers: Sequence[str], counts: Sequence[int], seeds: Sequence[int],
                     supervised: str, class_names: Sequence[str], header: Sequence[str] = ()) -> str:
    """The study's summary: mean ± std per trainer x labeled count (Dice, per class, HD95, ASD), the
    ceiling, paired differences to the supervised trainer with wins and Wilcoxon p, and the share
    of the supervised-to-ceiling gap each semi-supervised trainer closes."""
    lines = [*header, ""]
    expected = len(seeds)
    ceiling_rows = [r for r in rows if str(r["num_labeled"]) == ALL and r["trainer"] == supervised]
    ceiling_label = ""
    if ceiling_rows:
        sizes = sorted({len(r["labeled_cases"].split()) for r in ceiling_rows})
        ceiling_label = f"ceiling: {supervised}, all {'/'.join(map(str, sizes))} training cases labeled"
    for prefix, title, digits in (("dice", "Dice % (mean over classes)", 1), ("hd95", "HD95 mm (mean over classes)", 2),
                                  ("asd", "ASD mm, MedPy asd(pred, gt) (mean over classes)", 2)):
        lines += [f"## {title}: mean ± std over seeds", "",
                  "| trainer | " + " | ".join(f"{n} labeled" for n in counts) + " |",
                  "|---|" + "---|" * len(counts)]
        for trainer in trainers:
            cells = [_cell(mean_std(list(values_by_seed(rows, trainer, n, f"{prefix}_mean").values())), expected, digits)
                     for n in counts]
            lines.append(f"| {trainer} | " + " | ".join(cells) + " |")
        if ceiling_rows:
            stats = mean_std(list(values_by_seed(rows, supervised, ALL, f"{prefix}_mean").values()))
            lines.append(f"| {ceiling_label} | " + " | ".join([_cell(stats, expected, digits)] * len(counts)) + " |")
        lines.append("")

    lines += ["## Dice % per class: mean ± std over seeds", "",
              "| trainer | labeled | " + " | ".join(class_names) + " |", "|---|---|" + "---|" * len(class_names)]
    for trainer, n in [(t, n) for n in counts for t in trainers] + ([(supervised, ALL)] if ceiling_rows else []):
        cells = [_cell(mean_std(list(values_by_seed(rows, trainer, n, f"dice_{c}").values())), expected)
                 for c in class_names]
        lines.append(f"| {trainer} | {n} | " + " | ".join(cells) + " |")
    lines.append("")

    others = [t for t in trainers if t != supervised]
    if others:
        lines += [f"## Paired difference to {supervised} (same split, same seed)", "",
                  "Δ = trainer − supervised mean Dice (percentage points), mean ± std over seeds; wins = seeds where "
                  "Δ > 0; p = two-sided paired Wilcoxon signed-rank test (scipy.stats.wilcoxon), only with ≥ 5 seeds.",
                  "", "| trainer | labeled | Δ Dice | wins | Wilcoxon p |", "|---|---|---|---|---|"]
        for n in counts:
            reference = values_by_seed(rows, supervised, n)
            for trainer in others:
                result = paired_comparison(values_by_seed(rows, trainer, n), reference)
                if result["n"] == 0:
                    lines.append(f"| {trainer} | {n} | – | – | – |")
                    continue
                delta = _signed(result["mean"]) + (f" ± {result['std']:.1f}" if np.isfinite(result["std"]) else "")
                p = f"{result['p_wilcoxon']:.3g}" if np.isfinite(result["p_wilcoxon"]) else \
                    ("– (< 5 seeds)" if result["n"] < 5 else "– (all Δ = 0)")
                lines.append(f"| {trainer} | {n} | {delta} | {result['wins']}/{result['n']} | {p} |")
        lines.append("")
        if ceiling_rows:
            ceiling = values_by_seed(rows, supervised, ALL)
            lines += [f"## Share of the gap to the ceiling closed", "",
                      f"(trainer − supervised) / (ceiling − supervised), mean Dice over the seeds all three have; "
                      f"{ceiling_label}. 100 % = as good as all labels, 0 % = no better than supervised "
                      f"with the same labels, negative = worse.", "",
                      "| trainer | labeled | supervised | trainer | ceiling | gap closed |", "|---|---|---|---|---|---|"]
            for n in counts:
                reference = values_by_seed(rows, supervised, n)
                for trainer in others:
                    g = gap_closed(values_by_seed(rows, trainer, n), reference, ceiling)
                    if g["n"] == 0:
                        lines.append(f"| {trainer} | {n} | – | – | – | – |")
                        continue
                    share = f"{100 * g['share']:.0f} %" if np.isfinite(g["share"]) else "– (no gap)"
                    lines.append(f"| {trainer} | {n} | {g['supervised']:.1f} | {g['trainer']:.1f} | "
                                 f"{g['ceiling']:.1f} | {share} |")
            lines.append("")
    return "\n".join(lines)


def plot_learning_curve(rows: Sequence[dict], trainers: Sequence[str], counts: Sequence[int], supervised: str,
                        path: str, title: str) -> None:
    """Mean Dice against the labeled count, one line per trainer, error bars = std over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    for index, trainer in enumerate(trainers):
        points = [(n, mean_std(list(values_by_seed(rows, trainer, n).values()))) for n in counts]
        points = [(n, s) for n, s in points if s["n"]]
        if not points:
            continue
        offset = 1 + 0.02 * (index - (len(trainers) - 1) / 2)  # keep error bars apart
        axis.errorbar([n * offset for n, _ in points], [s["mean"] for _, s in points],
                      yerr=[s["std"] if np.isfinite(s["std"]) else 0 for _, s in points],
                      marker="o", capsize=3, label=trainer)
    ceiling = mean_std(list(values_by_seed(rows, supervised, ALL).values()))
    if ceiling["n"]:
        axis.axhline(ceiling["mean"], color="grey", linestyle="--", label=f"{supervised}, all labeled")
        if np.isfinite(ceiling["std"]):
            axis.axhspan(ceiling["mean"] - ceiling["std"], ceiling["mean"] + ceiling["std"], color="grey", alpha=0.15)
    axis.set_xscale("log", base=2)
    axis.set_xlim(min(counts) / 1.5, max(counts) * 1.5)
    axis.set_xticks(list(counts))
    axis.set_xticklabels([str(n) for n in counts])
    axis.set_xlabel("labeled training cases")
    axis.set_ylabel("mean Dice % (test)")
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    temporary = path + ".tmp.png"
    figure.savefig(temporary, dpi=120)
    plt.close(figure)
    os.replace(temporary, path)


# ---- the study -------------------------------------------------------------------------------------
class Study:
    def __init__(self, args: argparse.Namespace):
        from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
        from nnunetv2_sss.errors import dataset_name

        self.args = args
        self.raw_root = nnunet_path(nnUNet_raw)
        self.preprocessed_root = nnunet_path(nnUNet_preprocessed)
        self.dataset = dataset_name(args.d)
        self.raw = os.path.join(self.raw_root, self.dataset)
        self.shared = os.path.join(self.preprocessed_root, self.dataset)
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
        self.trainers = list(args.tr)
        self.supervised = args.supervised or next((t for t in SUPERVISED_DEFAULTS if t in self.trainers),
                                                  self.trainers[0])
        if self.supervised not in self.trainers:
            raise UserValueError(f"--supervised {self.supervised}: not one of -tr {' '.join(self.trainers)}")
        for option in ("epochs", "iterations", "val_iterations", "max_runs"):
            value = getattr(args, option)
            if value is not None and value < 1:
                raise UserValueError(f"--{option.replace('_', '-')} {value}: must be >= 1")
        self.runs = plan_runs(self.trainers, self.counts, self.seeds, self.supervised, self.ceiling)
        self.env = self._environment()
        self.check_inputs()

    # -- set-up -------------------------------------------------------------------------------
    def _environment(self) -> dict:
        import nnunetv2_sss.trainers
        from nnunetv2_sss import settings

        env = dict(os.environ)
        plugin = os.path.dirname(os.path.abspath(nnunetv2_sss.trainers.__file__))
        paths = [p for p in env.get("nnUNet_extTrainer", "").split(os.pathsep) if p.strip()]
        env["nnUNet_extTrainer"] = os.pathsep.join([plugin] + [p for p in paths if os.path.abspath(p) != plugin])
        env["nnUNet_raw"] = self.raw_root
        env.setdefault("MPLBACKEND", "agg")
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self.args.device != "cuda":
            env.setdefault("nnUNet_n_proc_DA", "0")  # loading in the training process: repeatable on CPU
        for option, variable in (("epochs", settings.NUM_EPOCHS), ("iterations", settings.ITERATIONS_PER_EPOCH),
                                 ("val_iterations", settings.VAL_ITERATIONS_PER_EPOCH)):
            if getattr(self.args, option) is not None:
                env[variable] = str(getattr(self.args, option))
        # as the demo: no SAM-2 checkpoint can be assumed; unless set, the reduced Hiera with random weights
        env.setdefault(settings.SAM2_CONFIG, "sam2_hiera_demo")
        env.setdefault(settings.SAM2_CHECKPOINT, settings.RANDOM_WEIGHTS)
        return env

    def settings_record(self) -> dict:
        from nnunetv2_sss import settings
        return {"dataset": self.dataset, "configuration": self.args.c, "plans": self.args.p, "fold": self.args.fold,
                "epochs": self.env.get(settings.NUM_EPOCHS, "trainer default"),
                "iterations_per_epoch": self.env.get(settings.ITERATIONS_PER_EPOCH, "trainer default"),
                "val_iterations_per_epoch": self.env.get(settings.VAL_ITERATIONS_PER_EPOCH, "trainer default"),
                "disable_tta": bool(self.args.disable_tta),
                "nnUNet_n_proc_DA": self.env.get("nnUNet_n_proc_DA", "nnU-Net default"),
                "sam2_config": self.env[settings.SAM2_CONFIG], "sam2_checkpoint": self.env[settings.SAM2_CHECKPOINT]}

    def check_inputs(self) -> None:
        from batchgenerators.utilities.file_and_folder_operations import load_json
        from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

        if not os.path.isfile(os.path.join(self.raw, "dataset.json")):
            raise UserFileNotFoundError(f"{os.path.join(self.raw, 'dataset.json')} not found: the study reads the raw "
                                        "dataset's training and test cases")
        self.dataset_json = load_json(os.path.join(self.raw, "dataset.json"))
        plans_file = os.path.join(self.shared, f"{self.args.p}.json")
        hint = f"run 'nnUNetv2_plan_and_preprocess -d {self.args.d} -c {self.args.c}' first"
        if not os.path.isfile(plans_file):
            raise UserFileNotFoundError(f"{plans_file} not found: {hint}")
        plans = load_json(plans_file)
        if self.args.c not in plans.get("configurations", {}):
            raise UserValueError(f"-c {self.args.c}: not a configuration of {plans_file} "
                                 f"({', '.join(plans.get('configurations', {}))})")
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
        identifier = PlansManager(plans).get_configuration(self.args.c).data_identifier
        if not os.path.isdir(os.path.join(self.shared, identifier)):
            raise UserFileNotFoundError(f"{os.path.join(self.shared, identifier)} not found: {hint}")
        if os.path.isdir(os.path.join(self.raw, "imagesUnlabeled")) and \
                not os.path.isdir(os.path.join(self.shared, f"{identifier}_unlabeled")):
            raise UserFileNotFoundError(
                f"{os.path.join(self.shared, identifier + '_unlabeled')} not found but {self.raw}/imagesUnlabeled exists: "
                f"run 'nnUNetv2_sss_preprocess_unlabeled -d {self.args.d} -c {self.args.c}' first")
        cases = sorted(get_filenames_of_train_images_and_targets(self.raw, self.dataset_json))
        folds = 5
        if len(cases) < folds:
            raise UserValueError(f"{self.raw}: {len(cases)} training cases, the study's splits need at least {folds}")
        trainable = len(cases) - math.ceil(len(cases) / folds)  # fold 0's training cases (make_splits' k-fold)
        too_many = [n for n in self.counts if n > trainable]
        if too_many:
            raise UserValueError(f"--num-labeled {' '.join(map(str, too_many))}: fold {self.args.fold} has "
                                 f"{trainable} training cases ({len(cases)} in imagesTr, {folds} folds); "
                                 f"choose counts between 1 and {trainable}")
        self.check_trainers()
        self.test_images = os.path.join(self.raw, "imagesTs")
        self.test_labels = os.path.join(self.raw, "labelsTs")
        ending = self.dataset_json["file_ending"]
        self.has_test = os.path.isdir(self.test_images) and os.path.isdir(self.test_labels) and \
            any(f.endswith(ending) for f in os.listdir(self.test_labels))

    def check_trainers(self) -> None:
        """Every -tr must be a trainer of the plugin: nnU-Net's own ignore the schedule and the seed."""
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        from nnunetv2_sss.training.base import nnUNetTrainerPlugin

        previous = os.environ.get("nnUNet_extTrainer")
        os.environ["nnUNet_extTrainer"] = self.env["nnUNet_extTrainer"]
        try:
            for trainer in self.trainers:
                with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        found = recursive_find_trainer_class_by_name(trainer)
                    except (RuntimeError, AssertionError):
                        found = None
                if found is None:
                    raise UserValueError(f"-tr {trainer}: no such trainer in nnU-Net or nnUNet_extTrainer "
                                         f"({self.env['nnUNet_extTrainer']})")
                if not issubclass(found, nnUNetTrainerPlugin):
                    raise UserValueError(
                        f"-tr {trainer}: not a trainer of the plugin, it would ignore --epochs/--iterations and "
                        f"nnUNet_sss_seed; use nnUNetTrainerPlugin for supervised nnU-Net (or a subclass of it)")
        finally:
            if previous is None:
                os.environ.pop("nnUNet_extTrainer", None)
            else:
                os.environ["nnUNet_extTrainer"] = previous

    def check_settings(self) -> None:
        """``OUT/study.json``: written on the first start; a restart must use the same fixed settings."""
        path = os.path.join(self.out, "study.json")
        record = self.settings_record()
        if os.path.isfile(path):
            with open(path) as f:
                saved = json.load(f)
            different = [f"{k} {saved.get(k)!r} -> {record[k]!r}" for k in FIXED_SETTINGS if saved.get(k) != record[k]]
            if different:
                raise UserValueError(f"{path}: this folder holds a study with other settings ({'; '.join(different)}); "
                                     "use the same settings to continue it, or another -o")
        write_atomically(path, json.dumps(record, indent=2))

    # -- folders of a group -------------------------------------------------------------------------
    def group_folder(self, run: Run) -> str:
        return os.path.join(self.out, "runs", run.group)

    def marker(self, run: Run) -> str:
        return os.path.join(self.group_folder(run), "done", f"{run.trainer}.json")

    def prepare_group(self, run: Run) -> str:
        """The group's preprocessed view (links to the shared data) with its own split files, written
        again now; returns the view's nnUNet_preprocessed root."""
        root = os.path.join(self.group_folder(run), "nnUNet_preprocessed")
        view = os.path.join(root, self.dataset)
        os.makedirs(view, exist_ok=True)
        for entry in sorted(os.listdir(self.shared)):
            if entry in SPLIT_FILES or entry.startswith("."):
                continue
            link = os.path.join(view, entry)
            if not os.path.lexists(link):
                os.symlink(os.path.join(self.shared, entry), link)
        amount = ["--labeled-fraction", "1.0"] if run.num_labeled == ALL else ["--num-labeled", str(run.num_labeled)]
        self.command(["nnUNetv2_sss_make_splits", "-d", self.dataset, *amount, "--seed", str(run.seed), "--force"],
                     {**self.env, "nnUNet_preprocessed": root}, os.path.join(self.group_folder(run), "make_splits.log"))
        return root

    def split_of(self, preprocessed_root: str) -> dict:
        with open(os.path.join(preprocessed_root, self.dataset, "splits_final.json")) as f:
            return json.load(f)[self.args.fold]

    # -- one run ----------------------------------------------------------------------------------------
    def command(self, command: List[str], env: dict, log: str) -> float:
        """Run a console script of this environment, output to ``log``; seconds. A failure stops the study."""
        binary = os.path.join(os.path.dirname(sys.executable), command[0])
        os.makedirs(os.path.dirname(log), exist_ok=True)
        started = time.time()
        with open(log, "w") as f:
            f.write("$ " + " ".join(shlex.quote(c) for c in [binary] + command[1:]) + "\n")
            f.flush()
            completed = subprocess.run([binary] + command[1:], env=env, stdout=f, stderr=subprocess.STDOUT,
                                       preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        if completed.returncode != 0:
            with open(log, errors="replace") as f:
                text = f.read()
            errors = [line for line in text.splitlines() if line.startswith("ERROR")]
            last = errors[-1] if errors else (text.strip().splitlines() or [""])[-1]
            raise UserRuntimeError(f"{command[0]} exited with code {completed.returncode} ({last.strip()[:300]}); "
                                   f"full output: {log}")
        return time.time() - started

    def evaluation_folders(self, run: Run, preprocessed_root: str):
        """(images to predict, reference labels, name of the evaluated set)."""
        if self.has_test:
            count = len([f for f in os.listdir(self.test_labels) if f.endswith(self.dataset_json["file_ending"])])
            return self.test_images, self.test_labels, f"test ({count} held-out cases, imagesTs + labelsTs)"
        # no held-out set: the fold's validation cases, linked into the group folder
        validation = self.split_of(preprocessed_root)["val"]
        images = os.path.join(self.group_folder(run), "validation_images")
        labels = os.path.join(self.group_folder(run), "validation_labels")
        for folder in (images, labels):
            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder)
        ending = self.dataset_json["file_ending"]
        for case in validation:
            for f in os.listdir(os.path.join(self.raw, "imagesTr")):
                if f.startswith(case + "_") and f.endswith(ending) and len(f) == len(case) + 5 + len(ending):
                    os.symlink(os.path.join(self.raw, "imagesTr", f), os.path.join(images, f))
            os.symlink(os.path.join(self.raw, "labelsTr", case + ending), os.path.join(labels, case + ending))
        return images, labels, (f"validation ({len(validation)} validation cases of fold {self.args.fold}; "
                                "the dataset has no imagesTs + labelsTs)")

    def execute(self, run: Run, preprocessed_root: str) -> dict:
        from nnunetv2_sss.evaluation.evaluate import FOREGROUND_MEAN, evaluate_folders, stats_of

        group = self.group_folder(run)
        results = os.path.join(group, "nnUNet_results")
        trainer_folder = os.path.join(results, self.dataset, f"{run.trainer}__{self.args.p}__{self.args.c}")
        predictions = os.path.join(group, "predictions", run.trainer)
        logs = os.path.join(group, "logs")
        for folder in (trainer_folder, predictions):  # a half-written run is redone from scratch
            shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(results, exist_ok=True)
        env = {**self.env, "nnUNet_preprocessed": preprocessed_root, "nnUNet_results": results,
               "nnUNet_sss_seed": str(run.seed)}
        started = time.time()
        train_seconds = self.command(["nnUNetv2_train", self.dataset, self.args.c, str(self.args.fold), "-tr",
                                      run.trainer, "-p", self.args.p, "-device", self.args.device],
                                     env, os.path.join(logs, f"{run.trainer}_train.log"))
        images, labels, evaluated = self.evaluation_folders(run, preprocessed_root)
        self.command(["nnUNetv2_predict", "-i", images, "-o", predictions, "-d", self.dataset, "-c", self.args.c,
                      "-f", str(self.args.fold), "-tr", run.trainer, "-p", self.args.p, "-device", self.args.device,
                      "-npp", "1", "-nps", "1", "--disable_progress_bar"] +
                     (["--disable_tta"] if self.args.disable_tta else []),
                     env, os.path.join(logs, f"{run.trainer}_predict.log"))
        result = evaluate_folders(labels, predictions, self.dataset_json, num_processes=1)
        split = self.split_of(preprocessed_root)
        row = {"trainer": run.trainer, "num_labeled": run.num_labeled, "seed": run.seed, "fold": self.args.fold,
               "labeled_cases": " ".join(split["train"]),
               "split_file": os.path.relpath(os.path.join(preprocessed_root, self.dataset, "splits_final.json"),
                                             self.out),
               "evaluated_on": evaluated.split(" ")[0], "evaluated_cases": len(result["metric_per_case"])}
        foreground = stats_of(result, FOREGROUND_MEAN)
        for prefix, metric in METRICS:
            row[f"{prefix}_mean"] = foreground[metric]["mean"]
        for key in result["class_keys"]:
            stats = stats_of(result, key)
            for prefix, metric in METRICS:
                row[f"{prefix}_{result['label_names'][key]}"] = stats[metric]["mean"]
        epochs, iterations = self.schedule(trainer_folder)
        row.update({"train_seconds": round(train_seconds, 1), "seconds": round(time.time() - started, 1),
                    "epochs": epochs, "iterations_per_epoch": iterations,
                    "iterations": epochs * iterations if epochs and iterations else "",
                    "device": self.args.device, "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
        os.makedirs(os.path.dirname(self.marker(run)), exist_ok=True)
        write_atomically(self.marker(run), json.dumps(row, indent=1))
        return row

    def schedule(self, trainer_folder: str):
        """(epochs, iterations per epoch) of the run: the trainer's values in nnU-Net's debug.json."""
        try:
            with open(os.path.join(trainer_folder, f"fold_{self.args.fold}", "debug.json")) as f:
                debug = json.load(f)
            return int(debug["num_epochs"]), int(debug["num_iterations_per_epoch"])
        except (OSError, KeyError, ValueError):
            return None, None

    # -- outputs --------------------------------------------------------------------------------------------
    def completed_rows(self) -> List[dict]:
        rows = []
        for run in self.runs:
            if os.path.isfile(self.marker(run)):
                with open(self.marker(run)) as f:
                    rows.append(json.load(f))
        return rows

    def write_outputs(self, evaluated_on: str) -> None:
        rows = self.completed_rows()
        columns = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_atomically(os.path.join(self.out, "runs.csv"), buffer.getvalue())
        record = self.settings_record()
        header = [f"# nnUNetv2_sss_study: {self.dataset}, {self.args.c}", "",
                  f"- command: `{' '.join(shlex.quote(a) for a in ['nnUNetv2_sss_study'] + sys.argv[1:])}`",
                  f"- runs completed: {len(rows)} of {len(self.runs)}; seeds {' '.join(map(str, self.seeds))}; "
                  f"fold {self.args.fold}; supervised row: {self.supervised}",
                  f"- evaluated on: {evaluated_on}",
                  f"- schedule: {record['epochs']} epochs x {record['iterations_per_epoch']} iterations "
                  f"(validation iterations {record['val_iterations_per_epoch']}); device {self.args.device}; "
                  f"nnUNet_n_proc_DA {record['nnUNet_n_proc_DA']}",
                  f"- time: {format_seconds(sum(_float(r['seconds']) for r in rows))} of runs "
                  f"(training {format_seconds(sum(_float(r['train_seconds']) for r in rows))})"]
        if any(t in self.trainers for t in ("nnUNetTrainerSSS", "nnUNetTrainerSSS_noDFE", "nnUNetTrainerSSS_noPCSW",
                                            "nnUNetTrainerSSS_baseline", "nnUNetTrainerSAM2")):
            header.append(f"- SAM-2: {record['sam2_config']}, weights {record['sam2_checkpoint']}"
                          + (" (random: says nothing about SSS with a pretrained SAM-2)"
                             if record['sam2_checkpoint'] == "random" else ""))
        text = summary_markdown(rows, self.trainers, self.counts, self.seeds, self.supervised, class_names_of(rows),
                                header)
        write_atomically(os.path.join(self.out, "summary.md"), text)
        plot_learning_curve(rows, self.trainers, self.counts, self.supervised,
                            os.path.join(self.out, "learning_curve.png"),
                            f"{self.dataset} {self.args.c}: mean ± std over {len(self.seeds)} seeds ({evaluated_on.split(' (')[0]})")

    # -- main loop -------------------------------------------------------------------------------------------
    def run(self) -> None:
        os.makedirs(self.out, exist_ok=True)
        with StudyLock(self.out):
            self.check_settings()
            evaluated_on = (f"test (imagesTs + labelsTs of {self.dataset})" if self.has_test else
                            f"validation cases of fold {self.args.fold} (the dataset has no imagesTs + labelsTs)")
            pending = [r for r in self.runs if not os.path.isfile(self.marker(r))]
            print(f"nnUNetv2_sss_study: {len(self.runs)} runs ({len(self.trainers)} trainers x {len(self.counts)} "
                  f"labeled counts x {len(self.seeds)} seeds" + (f" + {len(self.seeds)} ceiling runs" if self.ceiling
                                                                  else "") +
                  f"), {len(self.runs) - len(pending)} already done; evaluated on {evaluated_on}; output {self.out}",
                  flush=True)
            done_before = {r: self._seconds(r) for r in self.runs if r not in pending}
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
                    prepared[run.group] = self.prepare_group(run)
                row = self.execute(run, prepared[run.group])
                this_session[run] = _float(row["seconds"])
                self.write_outputs(evaluated_on)
                left = [r for r in pending if r not in this_session]
                estimate = sum(self._estimate(r, {**done_before, **this_session}) for r in left)
                print(f"[{index}/{len(self.runs)}] {label}: mean Dice {row['dice_mean']:.2f} % ("
                      + ", ".join(f"{c} {_float(row[f'dice_{c}']):.2f}" for c in class_names_of([row]))
                      + f"), {row['seconds']:.0f} s; elapsed {format_seconds(time.time() - started)}, "
                      f"{len(left)} runs left, about {format_seconds(estimate)}", flush=True)
            self.write_outputs(evaluated_on)
            print(f"written {os.path.join(self.out, 'runs.csv')}, summary.md, learning_curve.png", flush=True)

    def _seconds(self, run: Run) -> float:
        with open(self.marker(run)) as f:
            return _float(json.load(f).get("seconds"))

    def _estimate(self, run: Run, seconds: Dict[Run, float]) -> float:
        """Mean seconds of the trainer's completed runs, else of all completed runs."""
        same = [s for r, s in seconds.items() if r.trainer == run.trainer and np.isfinite(s)]
        every = [s for s in seconds.values() if np.isfinite(s)]
        return float(np.mean(same)) if same else (float(np.mean(every)) if every else 0.0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    parser.add_argument("--supervised", default=None,
                        help="the reference trainer (default: nnUNetTrainerPlugin if listed, else the first -tr)")
    parser.add_argument("--epochs", type=int, default=None, help="nnUNet_sss_num_epochs (default: trainer's)")
    parser.add_argument("--iterations", type=int, default=None, help="nnUNet_sss_iterations_per_epoch")
    parser.add_argument("--val-iterations", type=int, default=None, help="nnUNet_sss_val_iterations_per_epoch")
    parser.add_argument("-device", default=None, choices=("cpu", "cuda", "mps"),
                        help="device for nnUNetv2_train / nnUNetv2_predict (default cuda if available, else cpu)")
    parser.add_argument("--fold", type=int, default=0, choices=range(5), help="fold of the splits (default 0)")
    parser.add_argument("--disable-tta", action="store_true", help="predict without mirroring (faster)")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the all-labeled supervised runs")
    parser.add_argument("--max-runs", type=int, default=None,
                        help="stop after this many runs (the same command continues the study)")
    parser.add_argument("-o", default=None, help="output folder (default ./study_<dataset>_<configuration>)")
    return parser


@user_errors
def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        Study(args).run()
    except KeyboardInterrupt:
        print("\ninterrupted: the runs finished so far are kept; run the same command again to continue",
              file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
