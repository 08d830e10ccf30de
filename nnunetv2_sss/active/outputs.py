"""The suggestion folder (``nnUNetv2_sss_suggest -o``): its settings, and the outputs written once the
pool is scored, each whole or not at all.

- ``scoring.json``: the settings the scores in ``cases/`` were made with (a resumed run must keep them);
- ``suggestions.csv``, ``montages/<rank>_<case>.png``, ``command.json`` (``suggest.py``'s docstring).
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import join

from nnunetv2_sss.active.records import CaseRecord
from nnunetv2_sss.atomic_files import write_text_atomically
from nnunetv2_sss.errors import UserRuntimeError
from nnunetv2_sss.trained_model import DatasetPlans, TrainedModel

CASES, MONTAGES = "cases", "montages"
SCORING, SUGGESTIONS, RECORD = "scoring.json", "suggestions.csv", "command.json"
Pool = Sequence[Tuple[str, Sequence[str]]]  # (preprocessed folder, case ids), as data/unlabeled_pool.py gives it


@dataclass
class Suggestion:
    rank: int            # 1: label first
    case: str
    score: float         # what the strategy ranked by (random strategies: the probability of the first draw)
    record: CaseRecord


def prepare_output(output: str, settings: dict, clean: bool) -> None:
    """``output/scoring.json`` holds ``settings``; a user error if it holds others (``--clean``: start over)."""
    path = join(output, SCORING)
    if clean:
        shutil.rmtree(output, ignore_errors=True)
    elif os.path.isfile(path):
        with open(path) as file:
            existing = json.load(file)
        if existing != settings:
            changed = [key for key in settings if existing.get(key) != settings[key]]
            model, stored = dict(settings["model"]), dict(existing.get("model", {}))
            if changed == ["model"] and {**model, "checkpoints_sha256": None} == {**stored, "checkpoints_sha256": None}:
                raise UserRuntimeError(f"{output}: these scores are older than the model's checkpoint (it changed "
                                       f"since); run the command again with --clean to replace them")
            raise UserRuntimeError(f"{output}: holds scores made with other settings ({', '.join(changed)} differ); "
                                   f"run the command with --clean to replace them, or give another -o")
    os.makedirs(output, exist_ok=True)
    write_text_atomically(path, json.dumps(settings, indent=1))


def class_names(members) -> List[str]:
    """Names of the model's foreground classes (labels 1, 2, ...)."""
    label_manager = members.predictor.label_manager
    names = {value: name for name, value in members.predictor.dataset_json["labels"].items()}
    return [names[value] for value in label_manager.foreground_labels]


def write_outputs(output: str, suggestions: List[Suggestion], members, dataset: DatasetPlans, model: TrainedModel,
                  strategy, options, command: str, pool: Pool, records: Dict[str, CaseRecord]) -> None:
    """The montages, ``suggestions.csv`` and ``command.json`` (each written whole); ``members``: the
    model's ``members.ModelMembers``, ``options``: ``suggest.Options``."""
    from nnunetv2_sss.active.montage import save_montage
    names = class_names(members)
    montages = join(output, MONTAGES)
    os.makedirs(montages, exist_ok=True)
    keep = set()
    for suggestion in suggestions:
        record = suggestion.record
        keep.add(f"{suggestion.rank:03d}_{suggestion.case}.png")
        volumes = ", ".join(f"{name} {volume:.2f} mL" for name, volume in zip(names, record.volumes_ml))
        save_montage(join(montages, f"{suggestion.rank:03d}_{suggestion.case}.png"), record,
                     f"{suggestion.rank}. {suggestion.case} ({strategy.name} score {suggestion.score:.4g}; {volumes})",
                     names)
    for stale in set(os.listdir(montages)) - keep:
        os.remove(join(montages, stale))
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["rank", "case", "score", "uncertainty"] + [f"volume_ml_{name}" for name in names] +
                    ["strategy", "model", "folds"])
    model_name = f"{os.path.basename(model.folder(dataset.results_base))}/{model.checkpoint}"
    for s in suggestions:
        writer.writerow([s.rank, s.case, f"{s.score:.6g}", f"{s.record.uncertainty:.6g}"] +
                        [f"{v:.4f}" for v in s.record.volumes_ml] + [strategy.name, model_name,
                                                                      " ".join(map(str, model.folds))])
    write_text_atomically(join(output, SUGGESTIONS), table.getvalue())
    seconds = [record.seconds for record in records.values()]
    write_text_atomically(join(output, RECORD), json.dumps({
        "command": command, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "dataset": dataset.name,
        "model": asdict(model), "predictions": members.description(), "strategy": strategy.name,
        "k": len(suggestions), "options": asdict(options),
        "pool": {"scans": sum(len(cases) for _, cases in pool),
                 "sources": {folder: len(cases) for folder, cases in pool}},
        "scored_scans": len(records), "seconds_per_scan": float(np.mean(seconds)),
        "suggestions": [s.case for s in suggestions], "versions": versions()}, indent=1))


def versions() -> Dict[str, str]:
    from importlib.metadata import version
    return {package: version(package) for package in ("nnunetv2", "nnunetv2-sss", "torch")}
