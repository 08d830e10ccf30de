"""Seconds per training step with ``split_backward`` on (a backward pass per loss part, the CUDA default)
and off (one backward of the sum, the default elsewhere), in one process on the same fixed labeled and
unlabeled batch, the two settings alternating in blocks (robust to a noisy machine).

    .venv/bin/python benchmarks/bench_split_backward.py [--trainers nnUNetTrainerUniMatchV2 ...] \
        [--configuration 2d] [--blocks 6] [--steps 3] [--device cpu]

Prints a Markdown table: median seconds per step of each setting and their ratio.
"""
from __future__ import annotations

import argparse
import ast
import os
import statistics
import subprocess
import sys
import time

from bench_trainers import HERE, prepare


def measure(trainer_name: str, configuration: str, blocks: int, steps: int, device: str) -> dict:
    """Median s/step of each setting (fresh process; one warm-up step of each first)."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args("990", configuration, 0, trainer_name, "nnUNetPlans", False, torch.device(device))
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    batch = {**next(trainer.dataloader_train), 'unlabeled': next(trainer.dataloader_unlabeled)}
    times = {True: [], False: []}
    for block in range(-1, blocks):
        for split in ((True, False) if block % 2 == 0 else (False, True)):
            trainer.split_backward = split
            start = time.perf_counter()
            for _ in range(steps if block >= 0 else 1):
                trainer.train_step(dict(batch))
            if device == "cuda":
                torch.cuda.synchronize()
            if block >= 0:  # block -1 is the warm-up
                times[split].append((time.perf_counter() - start) / steps)
    return {"split": statistics.median(times[True]), "one": statistics.median(times[False])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainers", nargs="+", default=["nnUNetTrainerMeanTeacher", "nnUNetTrainerUniMatchV2"])
    parser.add_argument("--configuration", default="2d")
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3, help="steps per block")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", default=os.path.join(HERE, "work"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(repr(measure(args.one, args.configuration, args.blocks, args.steps, args.device)))
        return
    env = {**prepare(os.path.abspath(args.workdir), [args.configuration]), "nnUNet_n_proc_DA": "0"}
    print(f"device: {args.device}, {args.configuration}, {args.blocks} blocks of {args.steps} steps per setting\n")
    print("| trainer | split (s / step) | one backward (s / step) | split / one |")
    print("|---|---|---|---|")
    for trainer in args.trainers:
        output = subprocess.run([sys.executable, __file__, "--one", trainer, "--configuration", args.configuration,
                                 "--blocks", str(args.blocks), "--steps", str(args.steps), "--device", args.device],
                                env=env, capture_output=True, text=True)
        if output.returncode != 0:
            print(f"| {trainer} | failed: {output.stderr.strip().splitlines()[-1]} | | |")
            continue
        result = ast.literal_eval(output.stdout.strip().splitlines()[-1])
        print(f"| {trainer} | {result['split']:.3f} | {result['one']:.3f} | {result['split'] / result['one']:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
