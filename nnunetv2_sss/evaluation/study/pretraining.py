"""Rows from a pretrained start (``nnUNetv2_sss_study --pretrained T ...``): the trainer ``T`` again, its
network first pretrained by masked image modelling (``nnUNetv2_sss_pretrain``) on the dataset's own images.

- Rows: ``T+pretrained`` right after ``T`` (the same trainer, splits and seeds; its own results folder in
  each group, ``nnUNet_results+pretrained``).
- Pretraining: once per study and trainer, a job of its own that the trainer's pretrained rows wait for (it
  runs in the group of the first of them, whose row carries its seconds), on the study's preprocessed data:
  the training cases' images and the unlabeled pool, labels never read, the test images
  (``imagesTs``, never preprocessed) never seen. Every split of the study sees these same images, so
  every group starts from the same pretrained weights. Schedule: ``--pretrain-epochs`` (default the
  study's ``--epochs``) of ``--iterations`` (the runs' own), seed: the study's first seed. It is resumable: a finished
  pretraining (its weights file) is reused, an interrupted one continues (``--c``).
- The start: nnU-Net's networks through ``nnUNetv2_train -pretrained_weights`` (the plugin brings the EMA
  teacher and CPS's second network along, ``training/pretrained_start.py``); SAM-2 networks through
  ``nnUNet_sss_sam2_checkpoint`` (the image encoder).
"""
from __future__ import annotations

import datetime
import json
import os
from typing import List, Optional, Sequence

from nnunetv2_sss.errors import UserValueError

SUFFIX = "+pretrained"


def nnunet_trainer(row: str) -> str:
    """The trainer ``nnUNetv2_train`` runs for a row (``T+pretrained`` -> ``T``)."""
    return row[:-len(SUFFIX)] if row.endswith(SUFFIX) else row


def is_pretrained(row: str) -> bool:
    return row.endswith(SUFFIX)


def with_pretrained_rows(trainers: List[str], pretrained: Optional[Sequence[str]]) -> List[str]:
    """``trainers`` with ``T+pretrained`` after each ``T`` of ``pretrained`` (each must be in ``trainers``)."""
    if not pretrained:
        return trainers
    missing = [t for t in pretrained if t not in trainers]
    if missing:
        raise UserValueError(f"--pretrained {' '.join(missing)}: not in -tr; the pretrained rows are compared with "
                             f"the same trainer from scratch, so list it in -tr too")
    rows = []
    for trainer in trainers:
        rows.append(trainer)
        if trainer in pretrained:
            rows.append(trainer + SUFFIX)
    return rows


def results_folder_name(row: str) -> str:
    """A group's results folder of the row: pretrained rows train the same trainer, in a folder of their own."""
    return "nnUNet_results" + (SUFFIX if is_pretrained(row) else "")


def weights_file(results: str, dataset: str, trainer: str, plans: str, configuration: str, sam2: bool) -> str:
    from nnunetv2_sss.pretraining.export import CNN_WEIGHTS, SAM2_WEIGHTS
    folder = os.path.join(results, dataset, f"Pretrain{trainer}__{plans}__{configuration}")
    return os.path.join(folder, SAM2_WEIGHTS if sam2 else CNN_WEIGHTS)


def pretraining_seconds(weights: str) -> float:
    """Seconds from the start of the pretraining to its weights file (its ``pretraining.json``)."""
    from nnunetv2_sss.pretraining.export import RECORD
    with open(os.path.join(os.path.dirname(weights), RECORD)) as f:
        record = json.load(f)
    span = datetime.datetime.fromisoformat(record["written"]) - datetime.datetime.fromisoformat(record["started"])
    return round(span.total_seconds(), 1)


def pretrain(out: str, dataset: str, trainer: str, args, env: dict, preprocessed_root: str, sam2: bool) -> None:
    """The pretrained weights of ``trainer``'s network for this study, made now if missing (an interrupted
    pretraining continues from its last checkpoint)."""
    from nnunetv2_sss.evaluation.study.processes import run_logged
    results = os.path.join(out, "pretraining", "nnUNet_results")
    weights = weights_file(results, dataset, trainer, args.p, args.c, sam2)
    if os.path.isfile(weights):
        return
    interrupted = os.path.isfile(os.path.join(os.path.dirname(weights), "checkpoint_latest.pth"))
    command = ["nnUNetv2_sss_pretrain", "-d", dataset, "-c", args.c, "-tr", trainer, "-p", args.p,
               "-device", args.device] + (["--c"] if interrupted else [])
    schedule = {"--epochs": args.pretrain_epochs if args.pretrain_epochs is not None else args.epochs,
                "--iterations": args.iterations, "--val-iterations": args.val_iterations}
    command += [str(part) for flag, value in schedule.items() if value is not None for part in (flag, value)]
    run_logged(command, {**env, "nnUNet_results": results, "nnUNet_preprocessed": preprocessed_root},
               os.path.join(out, "pretraining", f"{trainer}.log"))
