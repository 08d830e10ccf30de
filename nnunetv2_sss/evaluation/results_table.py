"""``nnUNetv2_sss_results``: one table (Markdown + CSV) and a Dice bar chart (PNG) of several
trainers on one dataset/configuration, in the layout of the SSS paper's Tables 1-2.

Rows:

* validation (one per trainer): each fold's ``fold_K/validation/summary_sss.json``
  (``nnUNetv2_sss_evaluate`` output: its headline, with 95HD/ASD/ASSD) if present, otherwise
  nnU-Net's ``summary.json`` (``foreground_mean`` Dice and IoU x 100; no distances).
  Value = mean ± sample std (ddof 1, :mod:`~nnunetv2_sss.evaluation.statistics`) over the folds found
  (one fold: the mean alone); missing folds are listed.
* test (one per ``--test`` entry, in ``-tr`` order): a ``nnUNetv2_sss_evaluate`` json, or a
  prediction folder holding ``summary_sss.json``; value = headline mean ± std over cases.

"unlabeled" = the cases a semi-supervised trainer of this plugin (a subclass of
``nnUNetTrainerSemiSupervised``) draws unlabeled patches from in that fold: preprocessed
``imagesUnlabeled`` cases of the configuration + cases the fold's
``splits_semi_supervised.json`` hides; 0 for every other trainer; ``--unlabeled`` overrides.

ASD is MedPy's directed ``asd(pred, gt)`` (the papers' number), ASSD the symmetric one.
User errors (bad ``-d``, ``--test`` entries, no summaries) print one ``ERROR: ...`` line, exit 2.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_json

from nnunetv2_sss.errors import UserFileNotFoundError, UserRuntimeError, UserValueError, dataset_name, user_errors
from nnunetv2_sss.evaluation.evaluate import DEFAULT_OUTPUT_NAME, load_summary, stats_of
from nnunetv2_sss.evaluation.statistics import mean_std
from nnunetv2_sss.version import command_parser

TABLE_METRICS = (("Dice_pct", "Dice %"), ("Jaccard_pct", "Jaccard %"), ("HD95_vox", "95HD (vox)"),
                 ("ASD_vox", "ASD (vox)"), ("ASSD_vox", "ASSD (vox)"))
STATS = ("mean", "std", "n")


@dataclass
class Row:
    trainer: str
    evaluation: str                               # "validation" or "test"
    unlabeled: str                                # number of unlabeled cases, "?" if unknown
    total: int                                    # folds (validation) or cases (test) found
    stats: Dict[str, Dict[str, float]]            # metric -> mean, std, n (folds/cases it is defined in)

    @property
    def count(self) -> str:
        return f"{self.total} {'folds' if self.evaluation == 'validation' else 'cases'}"


def fold_scores(validation_folder: str) -> Optional[Dict[str, float]]:
    """Headline metrics of one fold's validation, or None if neither summary file exists."""
    ours, nnunet = os.path.join(validation_folder, DEFAULT_OUTPUT_NAME), os.path.join(validation_folder, "summary.json")
    if os.path.isfile(ours):
        result = load_summary(ours)
        return {name: stats["mean"] for name, stats in stats_of(result, result["headline"]).items()}
    if os.path.isfile(nnunet):
        foreground = load_json(nnunet)["foreground_mean"]
        return {"Dice_pct": 100 * foreground["Dice"], "Jaccard_pct": 100 * foreground["IoU"],
                "HD95_vox": float("nan"), "ASD_vox": float("nan"), "ASSD_vox": float("nan")}
    return None


def validation_row(trainer_folder: str, trainer: str, folds: Sequence[str], unlabeled: str) -> Tuple[Row, List[str]]:
    """(validation row over the folds found, validation folders without a summary)."""
    scores, missing = [], []
    for fold in folds:
        folder = os.path.join(trainer_folder, f"fold_{fold}", "validation")
        found = fold_scores(folder)
        if found is None:
            missing.append(folder)
        else:
            scores.append(found)
    stats = {name: mean_std([s[name] for s in scores]) for name, _ in TABLE_METRICS}
    return Row(trainer, "validation", unlabeled, len(scores), stats), missing


def test_row(path: str, trainer: str, unlabeled: str) -> Tuple[Row, List[str]]:
    """(row of one ``nnUNetv2_sss_evaluate`` result (file, or folder holding it), a note naming the
    reference cases it did not evaluate (``--allow-missing``), if any)."""
    file = os.path.join(path, DEFAULT_OUTPUT_NAME) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise UserFileNotFoundError(f"--test {file}: does not exist; run nnUNetv2_sss_evaluate on the test "
                                    f"predictions of {trainer}")
    result = load_summary(file)
    headline = stats_of(result, result["headline"])
    stats = {name: headline[name] for name, _ in TABLE_METRICS}
    unpredicted = result.get("references_without_prediction", [])
    notes = [f"{file}: {len(unpredicted)} reference cases had no prediction and were not evaluated: "
             + ", ".join(unpredicted)] if unpredicted else []
    return Row(trainer, "test", unlabeled, len(result["metric_per_case"]), stats), notes


def uses_unlabeled_data(trainer: str) -> bool:
    """Whether ``trainer`` is one of this plugin's semi-supervised trainers."""
    import nnunetv2_sss.trainers
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    from nnunetv2_sss.training.semi_supervised import nnUNetTrainerSemiSupervised

    found = recursive_find_python_class(os.path.dirname(nnunetv2_sss.trainers.__file__), trainer,
                                        "nnunetv2_sss.trainers")
    return found is not None and issubclass(found, nnUNetTrainerSemiSupervised)


def unlabeled_pool_sizes(dataset_name: str, configuration: str, plans: str, folds: Sequence[str]) -> str:
    """Size of the unlabeled pool per fold ("500", or "134/126" when folds differ; "?" without plans)."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2_sss.data.splits import hidden_label_cases
    from nnunetv2_sss.data.unlabeled_preprocessing import done_cases, unlabeled_folder

    preprocessed = os.path.join(str(nnUNet_preprocessed), dataset_name)
    plans_file = os.path.join(preprocessed, plans + ".json")
    if not os.path.isfile(plans_file):
        return "?"
    identifier = PlansManager(plans_file).get_configuration(configuration).data_identifier
    pool = len(done_cases(unlabeled_folder(preprocessed, identifier)))
    sizes = [pool + len(hidden_label_cases(preprocessed, fold)) for fold in folds]
    return str(sizes[0]) if len(set(sizes)) == 1 else "/".join(map(str, sizes))


def format_cell(stats: Dict[str, float], total: int) -> str:
    """``mean ± std`` (the mean alone without a std: one fold), with ``(n=k)`` when the metric is defined in
    fewer folds/cases than the row has."""
    if not np.isfinite(stats["mean"]):
        return "–"
    return (f"{stats['mean']:.2f}" + (f" ± {stats['std']:.2f}" if np.isfinite(stats["std"]) else "")
            + (f" (n={stats['n']})" if stats["n"] != total else ""))


def to_markdown(rows: Sequence[Row], title: str, notes: Sequence[str]) -> str:
    header = ["Method", "unlabeled", "evaluated on", "n"] + [label for _, label in TABLE_METRICS]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.trainer, row.unlabeled, row.evaluation, row.count] + \
                [format_cell(row.stats[name], row.total) for name, _ in TABLE_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + [f"- {note}" for note in notes]) + "\n"


def write_csv(rows: Sequence[Row], path: str) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trainer", "unlabeled", "evaluated_on", "n"] +
                        [f"{name}_{s}" for name, _ in TABLE_METRICS for s in STATS])
        for row in rows:
            values = [row.stats[name][s] for name, _ in TABLE_METRICS for s in STATS]
            writer.writerow([row.trainer, row.unlabeled, row.evaluation, row.count] +
                            [f"{v:.4f}" if isinstance(v, float) else v for v in values])


def bar_chart(rows: Sequence[Row], trainers: Sequence[str], title: str, path: str) -> None:
    """Dice mean ± std per trainer, one bar per evaluation (validation, test)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evaluations = [e for e in ("validation", "test") if any(r.evaluation == e for r in rows)]
    width = 0.8 / len(evaluations)
    figure, axis = plt.subplots(figsize=(1.6 * len(trainers) + 2, 4.5))
    for offset, evaluation in enumerate(evaluations):
        by_trainer = {r.trainer: r.stats["Dice_pct"] for r in rows if r.evaluation == evaluation}
        means = [by_trainer[t]["mean"] if t in by_trainer else np.nan for t in trainers]
        stds = [by_trainer[t]["std"] if t in by_trainer else np.nan for t in trainers]
        axis.bar(np.arange(len(trainers)) + (offset - (len(evaluations) - 1) / 2) * width, means, width,
                 yerr=stds, capsize=3, label=evaluation)
    axis.set_xticks(np.arange(len(trainers)))
    axis.set_xticklabels([t.replace("nnUNetTrainer", "") or "nnUNetTrainer" for t in trainers], rotation=20)
    axis.set_ylabel("Dice %")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def collect_rows(dataset_name: str, configuration: str, trainers: Sequence[str], plans: str, folds: Sequence[str],
                 tests: Sequence[str], unlabeled_override: Optional[int]) -> Tuple[List[Row], List[str]]:
    """(rows, validation folders without a summary and test results that left cases out)."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    if tests and len(tests) != len(trainers):
        raise UserValueError(f"--test: needs one entry per trainer, in -tr order (-tr has {len(trainers)}, "
                             f"--test has {len(tests)})")
    rows, missing = [], []
    for index, trainer in enumerate(trainers):
        if not uses_unlabeled_data(trainer):
            unlabeled = "0"
        elif unlabeled_override is not None:
            unlabeled = str(unlabeled_override)
        else:
            unlabeled = unlabeled_pool_sizes(dataset_name, configuration, plans, folds)
        row, not_found = validation_row(get_output_folder(dataset_name, trainer, plans, configuration), trainer,
                                        folds, unlabeled)
        rows.append(row)
        missing += not_found
        if tests:
            row, not_evaluated = test_row(tests[index], trainer, unlabeled)
            rows.append(row)
            missing += not_evaluated
    if not tests and all(r.total == 0 for r in rows):
        raise UserFileNotFoundError(f"{missing[0] if missing else '-f'}: no validation summary (summary.json or "
                                    f"{DEFAULT_OUTPUT_NAME}) in any fold asked for; train and validate first, "
                                    "or pass --test")
    return rows, missing


@user_errors
def main(argv: Optional[List[str]] = None) -> None:
    parser = command_parser(prog="nnUNetv2_sss_results", description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("-c", required=True, help="configuration, e.g. 3d_fullres")
    parser.add_argument("-tr", nargs="+", required=True, help="trainers, in table order")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], help="folds (default 0 1 2 3 4)")
    parser.add_argument("--test", nargs="+", default=[],
                        help="per trainer (same order as -tr): nnUNetv2_sss_evaluate json or the folder holding it")
    parser.add_argument("--unlabeled", type=int, default=None,
                        help="unlabeled count to show for the semi-supervised trainers (default: counted)")
    parser.add_argument("-o", default=None, help="output folder (default nnUNet_results/DatasetX/sss_results)")
    args = parser.parse_args(argv)

    from nnunetv2.paths import nnUNet_results

    if not nnUNet_results.is_set():
        raise UserRuntimeError("nnUNet_results: not set; point it to the folder nnUNetv2_train wrote to")
    dataset = dataset_name(args.d)
    rows, missing = collect_rows(dataset, args.c, args.tr, args.p, args.f, args.test, args.unlabeled)
    output = args.o or os.path.join(str(nnUNet_results), dataset, "sss_results")
    os.makedirs(output, exist_ok=True)
    stem = os.path.join(output, f"results_{args.c}_{args.p}")
    title = f"{dataset}, {args.c}, {args.p}"
    notes = ["validation: mean ± sample std (ddof 1) over folds " + " ".join(args.f) +
             "; from summary_sss.json where present, else nnU-Net's summary.json (no 95HD/ASD/ASSD)",
             "test: mean ± std (ddof 0) over cases of the nnUNetv2_sss_evaluate headline (merged foreground if "
             "evaluated with --merge-foreground, else mean over classes)",
             "ASD: mean distance from the prediction's surface to the reference's (MedPy asd(pred, gt), as the "
             "papers); ASSD: the symmetric mean over both directions (MedPy assd)"]
    notes += [f"missing: {m}" for m in missing]
    markdown = to_markdown(rows, title, notes)
    with open(stem + ".md", "w") as handle:
        handle.write(markdown)
    write_csv(rows, stem + ".csv")
    bar_chart(rows, args.tr, title, stem + ".png")
    print(markdown)
    print(f"written {stem}.md, .csv, .png")
