"""What the study's child processes run with (their environment) and the settings a restart must keep
(``OUT/study.json``)."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
from typing import Iterator, Mapping

from nnunetv2_sss.atomic_files import write_text_atomically
from nnunetv2_sss.errors import UserValueError

FIXED_SETTINGS = ("dataset", "configuration", "plans", "fold", "epochs", "iterations_per_epoch",
                  "val_iterations_per_epoch", "disable_tta")


@contextlib.contextmanager
def environment_of(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` updated with ``values`` for the block (nnU-Net and the plugin read their variables when
    they use them), as it was after."""
    previous = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(previous)


def child_environment(args: argparse.Namespace, raw_root: str) -> dict:
    """This process's environment plus the plugin's trainers first in ``nnUNet_extTrainer``, the schedule
    options as ``nnUNet_sss_*`` variables and, unless set, SAM-2's demo config with random weights."""
    import nnunetv2_sss.trainers
    from nnunetv2_sss import settings

    env = dict(os.environ)
    plugin = os.path.dirname(os.path.abspath(nnunetv2_sss.trainers.__file__))
    paths = [p for p in env.get("nnUNet_extTrainer", "").split(os.pathsep) if p.strip()]
    env["nnUNet_extTrainer"] = os.pathsep.join([plugin] + [p for p in paths if os.path.abspath(p) != plugin])
    env["nnUNet_raw"] = raw_root
    env.setdefault("MPLBACKEND", "agg")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if args.device != "cuda":
        env.setdefault("nnUNet_n_proc_DA", "0")  # loading in the training process: repeatable on CPU
    for option, variable in (("epochs", settings.NUM_EPOCHS), ("iterations", settings.ITERATIONS_PER_EPOCH),
                             ("val_iterations", settings.VAL_ITERATIONS_PER_EPOCH)):
        if getattr(args, option) is not None:
            env[variable] = str(getattr(args, option))
    # as the demo: no SAM-2 checkpoint can be assumed; unless set, the reduced Hiera with random weights
    env.setdefault(settings.SAM2_CONFIG, "sam2_hiera_demo")
    env.setdefault(settings.SAM2_CHECKPOINT, settings.RANDOM_WEIGHTS)
    return env


def settings_record(dataset: str, args: argparse.Namespace, env: dict) -> dict:
    """The settings of a study as ``OUT/study.json`` holds them."""
    from nnunetv2_sss import __version__, settings
    return {"dataset": dataset, "configuration": args.c, "plans": args.p, "fold": args.fold,
            "epochs": env.get(settings.NUM_EPOCHS, "trainer default"),
            "iterations_per_epoch": env.get(settings.ITERATIONS_PER_EPOCH, "trainer default"),
            "val_iterations_per_epoch": env.get(settings.VAL_ITERATIONS_PER_EPOCH, "trainer default"),
            "disable_tta": bool(args.disable_tta),
            "nnUNet_n_proc_DA": env.get("nnUNet_n_proc_DA", "nnU-Net default"),
            "sam2_config": env[settings.SAM2_CONFIG], "sam2_checkpoint": env[settings.SAM2_CHECKPOINT],
            "plugin_version": __version__}


def check_settings(out: str, record: dict) -> None:
    """``OUT/study.json``: written on the first start; a restart must use the same fixed settings."""
    path = os.path.join(out, "study.json")
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        different = [f"{k} {saved.get(k)!r} -> {record[k]!r}" for k in FIXED_SETTINGS if saved.get(k) != record[k]]
        if different:
            raise UserValueError(f"{path}: this folder holds a study with other settings ({'; '.join(different)}); "
                                 "use the same settings to continue it, or another -o")
    write_text_atomically(path, json.dumps(record, indent=2))
