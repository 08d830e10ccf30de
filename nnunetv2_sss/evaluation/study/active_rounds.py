"""An active-learning round of the study (``--active-learning S ... --budget K --al-rounds R``): its split,
rebuilt; its query; the annotation cost of the scans it reveals.

Round R of row T with strategy S (seed s, initial count N) has a group of its own,
``OUT/runs/n{N}_s{s}_{S}_b{K}_r{R}_{T}/``. Its job's first step, before the training (:func:`query_round`):

1. the group's view gets the seeded initial split (``nnUNetv2_sss_make_splits --num-labeled N --seed s``:
   the split of the ordinary group ``n{N}_s{s}``), and the cases that rounds 1 .. R-1 revealed (their
   groups' ``suggestions/suggestions.csv``) are revealed in it (``add_labels.reveal_labels``, what
   ``nnUNetv2_sss_add_labels --reveal`` does): round R-1's split;
2. round R-1's model (round 0: the row's ordinary run in ``n{N}_s{s}``) chooses K of the training cases
   this split hides (``suggest.suggest`` with ``nnUNetv2_sss_suggest --hidden-only``'s pool, seed
   ``1000 s + R``) into ``suggestions/``;
3. those K are revealed: round R's split, the one its training reads.

No round changes a file another round reads: every split comes from the seed and the earlier rounds'
``suggestions.csv`` (written whole), so a round redone after a kill repeats the same query.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import time
from typing import Dict, List, Sequence, Tuple

from nnunetv2_sss.evaluation.study.environment import environment_of
from nnunetv2_sss.evaluation.study.plan import Run
from nnunetv2_sss.evaluation.study.pretraining import nnunet_trainer, results_folder_name

SUGGESTIONS = "suggestions"  # a round's query, in its group folder (nnUNetv2_sss_suggest's output)


def suggestion_folder(workspace, run: Run) -> str:
    return os.path.join(workspace.group_folder(run), SUGGESTIONS)


def revealed_by(workspace, run: Run) -> List[str]:
    """The cases round ``run`` revealed: its ``suggestions.csv``, first to label first."""
    with open(os.path.join(suggestion_folder(workspace, run), "suggestions.csv")) as f:
        return [row["case"] for row in csv.DictReader(f)]


def earlier_rounds(run: Run) -> List[Run]:
    """Rounds 1 .. R-1 of ``run``'s row and strategy."""
    return [Run(run.trainer, run.num_labeled, run.seed, run.strategy, r, run.budget) for r in range(1, run.round)]


def query_seed(run: Run) -> int:
    """The seed of a round's query (the random strategies' draw): ``1000 * seed + round``."""
    return 1000 * run.seed + run.round


def label_voxels(raw: str, cases: Sequence[str], dataset_json: dict, plans: dict) -> Tuple[int, int]:
    """(voxels, foreground voxels) of the cases' labels in ``raw/labelsTr``, as the dataset's reader reads
    them: what annotating them means (foreground: any label but background and an ignore label)."""
    import numpy as np
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    reader = PlansManager(plans).image_reader_writer_class()
    ignore = dataset_json["labels"].get("ignore")
    voxels = foreground = 0
    for case in cases:
        segmentation, _ = reader.read_seg(os.path.join(raw, "labelsTr", case + dataset_json["file_ending"]))
        voxels += int(segmentation.size)
        foreground += int(np.count_nonzero(segmentation if ignore is None else segmentation[segmentation != ignore]))
    return voxels, foreground


def query_round(study, run: Run, log: str, clean: bool = True) -> Dict[str, object]:
    """Steps 1-3 of the module's docstring in ``run``'s group view (``clean=False``: a requeued job keeps the
    scores its query made); the row's active-learning columns."""
    from nnunetv2_sss.active import strategies
    from nnunetv2_sss.active.add_labels import reveal_labels
    from nnunetv2_sss.active.suggest import Options, suggest
    from nnunetv2_sss.data.splits import hidden_label_cases
    from nnunetv2_sss.trained_model import TrainedModel, plans_in

    workspace, args, fold = study.workspace, study.args, study.args.fold
    view = os.path.join(workspace.prepare_group(run), study.dataset)
    previous = run.previous_round()
    results = os.path.join(workspace.group_folder(previous), results_folder_name(run.trainer), study.dataset)
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "w") as output, contextlib.redirect_stdout(output), environment_of(study.env):
        for earlier in earlier_rounds(run):
            reveal_labels(view, revealed_by(workspace, earlier), [fold])
        dataset = plans_in(view, results, args.c, args.p)
        pool = [(os.path.join(view, dataset.data_identifier), hidden_label_cases(view, fold))]
        model = TrainedModel(nnunet_trainer(run.trainer), args.p, args.c, [fold], "checkpoint_final.pth")
        command = (f"nnUNetv2_sss_suggest -d {study.dataset} -c {args.c} -p {args.p} -tr {model.trainer} -f {fold} "
                   f"-n {run.budget} --strategy {run.strategy} --seed {query_seed(run)} --hidden-only"
                   + (" --disable-tta" if args.disable_tta else "") + f" (nnUNetv2_sss_study, {run.group})")
        started = time.time()
        chosen = suggest(dataset, model, pool, strategies.get(run.strategy), run.budget,
                         suggestion_folder(workspace, run),
                         Options(seed=query_seed(run), device=args.device, use_mirroring=not args.disable_tta),
                         clean=clean, command=command)
        seconds = time.time() - started
        cases = [s.case for s in chosen]
        reveal_labels(view, cases, [fold])
    voxels, foreground = label_voxels(workspace.raw, cases, study.dataset_json, dataset.plans)
    return {"strategy": run.strategy, "round": run.round, "initial_labeled": run.num_labeled,
            "budget": run.budget, "revealed_cases": " ".join(cases), "revealed_voxels": voxels,
            "revealed_foreground_voxels": foreground, "query_seconds": round(seconds, 1),
            "scoring_seconds_per_scan": round(seconds_per_scan(suggestion_folder(workspace, run)), 3)}


def seconds_per_scan(folder: str) -> float:
    """The query's scoring time per scored scan (its ``command.json``; ``random`` scores only the chosen)."""
    with open(os.path.join(folder, "command.json")) as f:
        return float(json.load(f)["seconds_per_scan"])
