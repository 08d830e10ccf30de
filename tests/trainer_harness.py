"""Run plugin trainers in-process for a few training iterations and record their numbers.

The trainer is built as ``nnUNetv2_train`` builds it (``get_trainer_from_args``, found through
``nnUNet_extTrainer``) and driven as nnU-Net's ``run_training`` drives it: ``on_train_start``
(which initialises it), ``on_epoch_start``, ``on_train_epoch_start``, then
``train_step(next(trainer.dataloader_train))`` ``steps`` times. Recorded per trainer:

- ``losses``: the step's ``loss``; ``unlabeled_losses``: its ``ssl_unlabeled_loss`` (semi-supervised
  trainers only, else empty); ``figures``: every other scalar of the step outputs, per step;
- ``split_gradient_difference`` (semi-supervised trainers): on the first batch, before the first step,
  the relative difference (2-norm over every trained parameter) between the gradients computed part by
  part (a backward pass per loss part, the trainers' default) and with one backward pass of the summed
  parts (``split_backward = False``); the trainer's random generators are put back afterwards, so the
  recorded steps are unchanged;
- ``host_syncs``: per step, the device-to-host round-trips the step would make on a GPU
  (``nnunetv2_sss.training.host_syncs.HostSyncCounter``: host reads of tensor values), data loading
  left out (the batches are drawn before the step, as nnU-Net's loader workers do on a GPU);
- ``weights``: after the last step, count, sum and sum of squares (float64) of the parameters of every
  model the trainer holds (``plugin_trainers.trainer_models``: the student, the EMA ``teacher`` and the
  objective's extra modules, e.g. CPS's ``network_b``), and sum and sum of squares of their change since
  the first step (``delta_*``).

Settings that make the numbers repeatable are fixed here (``harness_environment``): data loading
in the training process (``nnUNet_n_proc_DA=0``), no ``torch.compile``, ``nnUNet_sss_seed``,
one epoch of ``steps`` iterations, one torch thread (``--threads``). The SAM-2 trainers get the tiny
Hiera of ``tiny_sam2.py`` with random weights unless ``nnUNet_sss_sam2_config`` /
``nnUNet_sss_sam2_checkpoint`` are set. ``nnUNetTrainerCPS4`` needs its stage-1 model: the harness
trains it first (``run_stage1``, small ViT, seeded) into ``nnUNet_results``. ``nnUNet_raw``,
``nnUNet_preprocessed``, ``nnUNet_results`` and ``nnUNet_extTrainer`` come from the caller.

Script::

    python tests/trainer_harness.py --out FILE.json --trainers T1 T2 ... --steps 3 [-d 901]

writes ``{"header": {...}, "trainers": {trainer: {"losses": [...], "unlabeled_losses": [...],
"figures": [...], "weights": {...}}}}``. ``tests/test_same_numbers.py`` compares such a recording
with ``tests/data/reference_losses.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pathlib
import platform
import sys
import tempfile
import time
from typing import Dict, List, Optional

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from plugin_trainers import stepped_trainer_names, trainer_models  # noqa: E402

DEFAULT_SEED = 0
DEFAULT_STEPS = 3
# CPS4 stage 1 as tests/test_cps4_stage1.py runs it (small ViT); length: 1 epoch of `steps` iterations
CPS4_STAGE1_OPTIONS = {"vit_patch_size": 8, "vit_dim": 32, "vit_depth": 2, "vit_heads": 2, "embed_dim": 16}


def harness_environment(seed: int = DEFAULT_SEED, steps: int = DEFAULT_STEPS, threads: int = 1) -> Dict[str, str]:
    """The variables that fix the numbers (besides code, data and torch version)."""
    return {
        "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1", "nnUNet_compile": "false",
        "nnUNet_sss_seed": str(seed), "nnUNet_sss_num_epochs": "1", "nnUNet_sss_iterations_per_epoch": str(steps),
        "nnUNet_sss_val_iterations_per_epoch": "1", "nnUNet_sss_save_every": "1",
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
        "MPLBACKEND": "agg",
    }


def configure(seed: int = DEFAULT_SEED, steps: int = DEFAULT_STEPS, threads: int = 1,
              scratch: Optional[pathlib.Path] = None) -> Dict[str, str]:
    """Put ``harness_environment`` into ``os.environ`` (before torch is used), limit torch's threads,
    and point the SAM-2 variables at the tiny Hiera (written into ``scratch``) unless already set."""
    environment = harness_environment(seed, steps, threads)
    os.environ.update(environment)
    import torch
    torch.set_num_threads(threads)
    if not os.environ.get("nnUNet_sss_sam2_config"):
        from tiny_sam2 import write_tiny_config
        folder = pathlib.Path(scratch or tempfile.mkdtemp(prefix="trainer_harness_"))
        os.environ["nnUNet_sss_sam2_config"] = str(write_tiny_config(folder))
    os.environ.setdefault("nnUNet_sss_sam2_checkpoint", "random")
    return environment


def _finish_loaders(trainer) -> None:
    """Stop the worker processes of every augmenter the trainer holds (none with nnUNet_n_proc_DA=0)."""
    for name in ("dataloader_train", "dataloader_val", "dataloader_unlabeled"):
        finish = getattr(getattr(trainer, name, None), "_finish", None)
        if finish is not None:
            with contextlib.suppress(Exception):
                finish()


def weight_statistics(module, initial: Optional[list] = None) -> Dict[str, float]:
    """Count, sum and sum of squares (float64) of a module's parameters; with ``initial`` (the
    parameters before training, ``parameter_snapshot``) also sum and sum of squares of the change
    (``delta_*``: a few optimiser steps move the weights by far less than the sums' rounding noise)."""
    import torch
    with torch.no_grad():
        values = [p.detach().double().reshape(-1) for p in module.parameters()]
        flat = torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)
        statistics = {"count": int(flat.numel()), "sum": float(flat.sum()), "sum_sq": float((flat * flat).sum())}
        if initial is not None:
            delta = flat - (torch.cat(initial) if initial else torch.zeros(0, dtype=torch.float64))
            statistics.update(delta_sum=float(delta.sum()), delta_sum_sq=float((delta * delta).sum()))
        return statistics


def parameter_snapshot(module) -> list:
    """A float64 copy of a module's parameters (for the ``delta_*`` statistics)."""
    return [p.detach().double().reshape(-1).clone() for p in module.parameters()]


def _scalar(value) -> Optional[float]:
    """A step output as a float, ``None`` if it is not one number."""
    try:
        import numpy as np
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return float(array) if array.size == 1 else None


def prepare_cps4_stage1(dataset: str, configuration: str, fold: int, seed: int) -> float:
    """Train CPS4's stage-1 model (small ViT, seeded) into ``nnUNet_results``; returns its seconds."""
    import numpy as np
    import random
    import torch
    from nnunetv2_sss.cps4.pretrain import Stage1Options, run_stage1
    started = time.perf_counter()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    run_stage1(dataset, configuration, fold, device="cpu", options=Stage1Options(**CPS4_STAGE1_OPTIONS))
    return time.perf_counter() - started


def split_gradient_difference(trainer, batch: dict) -> float:
    """``|g_split - g_one| / |g_one|`` over every trained parameter for one ``compute_gradients`` of ``batch``
    with ``split_backward`` on and off, from the same random state; the state is restored afterwards."""
    import torch
    from nnunetv2_sss.training.checkpoint_io import capture_rng_state, restore_rng_state
    from nnunetv2_sss.training.seeding import trainer_generators
    generators = trainer_generators(trainer)
    state = capture_rng_state(trainer.device, generators)
    parameters = [p for module in trainer.trained_modules() for p in module.parameters() if p.requires_grad]
    gradients, default = {}, trainer.split_backward
    for split in (True, False):
        restore_rng_state(state, trainer.device, generators)
        trainer.split_backward = split
        trainer.compute_gradients(dict(batch))
        gradients[split] = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).double().reshape(-1)
                                      for p in parameters])
    restore_rng_state(state, trainer.device, generators)
    trainer.split_backward = default
    trainer.optimizer.zero_grad(set_to_none=True)
    return float((gradients[True] - gradients[False]).norm() / gradients[False].norm())


def run_trainer(dataset: str, trainer_name: str, steps: int = DEFAULT_STEPS, configuration: str = "2d",
                fold: int = 0, device: str = "cpu") -> dict:
    """``steps`` training iterations of ``trainer_name`` on ``device``; its losses, figures and weights."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(str(dataset), configuration, fold, trainer_name, device=torch.device(device))
    from nnunetv2_sss.training.host_syncs import HostSyncCounter
    record = {"losses": [], "unlabeled_losses": [], "figures": [], "host_syncs": []}
    try:
        trainer.on_train_start()
        trainer.on_epoch_start()
        trainer.on_train_epoch_start()
        if hasattr(trainer, "split_backward"):
            trainer.split_backward = True  # the step as it runs on CUDA (the CPU's default is one backward)
        models = trainer_models(trainer)
        initial = {name: parameter_snapshot(model) for name, model in models.items()}
        for step in range(steps):
            batch = next(trainer.dataloader_train)
            if hasattr(trainer, "compute_gradients"):
                batch["unlabeled"] = next(trainer.dataloader_unlabeled)  # the draw train_step would make
            if step == 0 and hasattr(trainer, "compute_gradients"):
                record["split_gradient_difference"] = split_gradient_difference(trainer, batch)
            with HostSyncCounter() as syncs:
                outputs = trainer.train_step(batch)
            record["host_syncs"].append(syncs.count)
            record["losses"].append(_scalar(outputs["loss"]))
            if "ssl_unlabeled_loss" in outputs:
                record["unlabeled_losses"].append(_scalar(outputs["ssl_unlabeled_loss"]))
            record["figures"].append({k: _scalar(v) for k, v in sorted(outputs.items())
                                      if k not in ("loss", "ssl_unlabeled_loss") and _scalar(v) is not None})
        record["weights"] = {name: weight_statistics(model, initial[name]) for name, model in models.items()}
    finally:
        _finish_loaders(trainer)
    return record


def record_trainers(dataset: str, trainers: List[str], steps: int = DEFAULT_STEPS, configuration: str = "2d",
                    fold: int = 0, seed: int = DEFAULT_SEED, log=sys.stderr) -> Dict[str, dict]:
    """``run_trainer`` for each trainer (CPS4's stage 1 first when CPS4 is asked for), with timings."""
    results = {}
    for name in trainers:
        started = time.perf_counter()
        stage1 = None
        if name == "nnUNetTrainerCPS4":
            stage1 = prepare_cps4_stage1(dataset, configuration, fold, seed)
        results[name] = run_trainer(dataset, name, steps, configuration, fold)
        seconds = time.perf_counter() - started
        results[name]["seconds"] = round(seconds, 2)
        print(f"[harness] {name}: {seconds:.1f} s" + (f" (CPS4 stage 1 {stage1:.1f} s)" if stage1 else "")
              + f", losses {results[name]['losses']}", file=log, flush=True)
    return results


def source_commit(package_folder: pathlib.Path) -> Dict[str, object]:
    """Git commit of the checkout that holds ``package_folder``, and whether the plugin's code
    (``nnunetv2_sss``, ``trainers``) differs from it (best effort: ``None`` outside a git checkout)."""
    import subprocess
    root = package_folder.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=30, check=True).stdout.strip()
        changes = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "nnunetv2_sss", "trainers"],
                                 capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "modified": None}
    return {"commit": commit, "modified": bool(changes)}


def header(seed: int, steps: int, configuration: str, fold: int, threads: int, dataset: str) -> dict:
    import torch
    import nnunetv2_sss
    package = pathlib.Path(nnunetv2_sss.__file__).resolve().parent
    return {"seed": seed, "steps": steps, "configuration": configuration, "fold": fold, "threads": threads,
            "dataset": dataset, "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "environment": harness_environment(seed, steps, threads),
            "plugin_path": str(package), "plugin_source": source_commit(package),
            "cps4_stage1_options": CPS4_STAGE1_OPTIONS}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--trainers", nargs="+", default=None, help="default: every trainer of trainers/")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (OMP_NUM_THREADS), default 1")
    parser.add_argument("-d", "--dataset", default="901", help="dataset id or name (default 901, the test dataset)")
    parser.add_argument("-c", "--configuration", default="2d")
    parser.add_argument("-f", "--fold", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="trainer_harness_") as scratch:
        configure(args.seed, args.steps, args.threads, pathlib.Path(scratch))
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # nnU-Net's console output
            trainers = record_trainers(args.dataset, args.trainers or stepped_trainer_names(), args.steps, args.configuration, args.fold,
                                       args.seed)
        result = {"header": header(args.seed, args.steps, args.configuration, args.fold, args.threads, args.dataset),
                  "trainers": trainers}
        result["header"]["seconds"] = round(time.perf_counter() - started, 1)
    for name, record in trainers.items():
        if not all(math.isfinite(v) for v in record["losses"] + record["unlabeled_losses"]):
            print(f"[harness] WARNING: {name} has non-finite losses", file=sys.stderr)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"[harness] wrote {args.out} ({result['header']['seconds']} s)")


if __name__ == "__main__":
    main()
