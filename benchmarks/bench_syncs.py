"""Device-to-host round-trips per training step of every plugin trainer (and nnU-Net's nnUNetTrainer)
on the built-in demo dataset, in-process, data loading left out (batches drawn before each step, as
nnU-Net's loader workers do on a GPU).

    .venv/bin/python benchmarks/bench_syncs.py [--configs 2d] [--trainers ...] [--steps 3] [--device cpu]

CPU: ``nnunetv2_sss.training.host_syncs.HostSyncCounter`` counts the host reads of tensor values a GPU
would wait for (reads inside torch.optim excluded: the optimisers' step counters are host tensors).
CUDA: additionally ``torch.cuda.set_sync_debug_mode('warn')`` counts the synchronising calls torch
reports. Prints a Markdown table: syncs per step (min-max over the steps after the first) and by call.
SAM-2 trainers use ``nnUNet_sss_sam2_config`` (default here sam2.1_hiera_t) with random weights.
"""
from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
import warnings

from bench_trainers import HERE, REPO, prepare

DEFAULT_TRAINERS = ["nnUNetTrainer", "nnUNetTrainerPlugin", "nnUNetTrainerMeanTeacher", "nnUNetTrainerEntropyMin",
                    "nnUNetTrainerICT", "nnUNetTrainerCPS", "nnUNetTrainerFixMatch", "nnUNetTrainerUniMatchV2",
                    "nnUNetTrainerSAM2", "nnUNetTrainerSSS", "nnUNetTrainerSSS_noDFE", "nnUNetTrainerSSS_noPCSW",
                    "nnUNetTrainerSSS_baseline"]


def count(trainer_name: str, configuration: str, steps: int, device: str) -> dict:
    """Syncs of ``steps`` train steps after one warm-up step (fresh process)."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2_sss.training.host_syncs import HostSyncCounter

    trainer = get_trainer_from_args("990", configuration, 0, trainer_name, "nnUNetPlans", False, torch.device(device))
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    if hasattr(trainer, "split_backward"):
        trainer.split_backward = True  # the step as it runs on CUDA (the CPU's default is one backward)
    counts, by_call, reported = [], {}, []
    for step in range(steps + 1):
        batch = next(trainer.dataloader_train)
        if getattr(trainer, "dataloader_unlabeled", None) is not None:
            batch["unlabeled"] = next(trainer.dataloader_unlabeled)
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught, HostSyncCounter() as counter:
            warnings.simplefilter("always")
            trainer.train_step(batch)
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
        if step:  # the first step is a warm-up
            counts.append(counter.count)
            reported.append(sum("synchroniz" in str(w.message) for w in caught))
            for name, n in counter.by_call.items():
                by_call[name] = by_call.get(name, 0) + n
    return {"counts": counts, "by_call": {k: v / steps for k, v in by_call.items()}, "cuda_reported": reported}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["2d"])
    parser.add_argument("--trainers", nargs="+", default=DEFAULT_TRAINERS)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", default=os.path.join(HERE, "work"))
    parser.add_argument("--one", nargs=2, metavar=("TRAINER", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # child process
        print(repr(count(args.one[0], args.one[1], args.steps, args.device)))
        return
    env = {**prepare(os.path.abspath(args.workdir), args.configs), "nnUNet_n_proc_DA": "0",
           "nnUNet_sss_sam2_checkpoint": os.environ.get("nnUNet_sss_sam2_checkpoint", "random"),
           "nnUNet_sss_sam2_config": os.environ.get("nnUNet_sss_sam2_config", "sam2.1_hiera_t"),
           "nnUNet_extTrainer": os.path.join(REPO, "trainers")}
    print(f"device {args.device}; {args.steps} steps after one warm-up; data loading not counted\n")
    print("| configuration | trainer | host syncs / step | by call (per step) |" +
          (" torch-reported syncs / step |" if args.device == "cuda" else ""))
    print("|---|---|---|---|" + ("---|" if args.device == "cuda" else ""))
    for configuration in args.configs:
        for trainer in args.trainers:
            output = subprocess.run([sys.executable, __file__, "--one", trainer, configuration, "--steps",
                                     str(args.steps), "--device", args.device], env=env, capture_output=True, text=True)
            if output.returncode != 0:
                print(f"| {configuration} | {trainer} | failed: {output.stderr.strip().splitlines()[-1]} | |")
                continue
            result = ast.literal_eval(output.stdout.strip().splitlines()[-1])
            low, high = min(result["counts"]), max(result["counts"])
            calls = ", ".join(f"{k} {v:g}" for k, v in sorted(result["by_call"].items()))
            row = f"| {configuration} | {trainer} | {low}" + (f"-{high}" if high != low else "") + f" | {calls} |"
            if args.device == "cuda":
                row += f" {max(result['cuda_reported'])} |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
