"""Per-iteration training time and peak memory of plugin trainers vs nnU-Net's ``nnUNetTrainer``
on the built-in demo dataset, measured in-process on the real trainers (data loading included,
``nnUNet_n_proc_DA=0``: loading and augmentation run in the same process).

    .venv/bin/python benchmarks/bench_trainers.py [--configs 2d 3d_fullres] \
        [--trainers nnUNetTrainer nnUNetTrainerMeanTeacher nnUNetTrainerUniMatchV2] [--iterations 5] [--device cpu]

Prints a Markdown table: seconds per iteration (mean over ``--iterations`` after one warm-up
iteration), ratio to ``nnUNetTrainer``, peak resident memory (CPU) or peak CUDA memory.
"""
from __future__ import annotations

import argparse
import ast
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def prepare(workdir: str, configs) -> dict:
    """Demo dataset planned/preprocessed (labeled and unlabeled) under ``workdir``; returns the env."""
    env = {**os.environ, "nnUNet_raw": os.path.join(workdir, "nnUNet_raw"),
           "nnUNet_preprocessed": os.path.join(workdir, "nnUNet_preprocessed"),
           "nnUNet_results": os.path.join(workdir, "nnUNet_results"), "nnUNet_def_n_proc": "1",
           "nnUNet_extTrainer": os.path.join(REPO, "trainers"), "nnUNet_compile": "false"}
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[key], exist_ok=True)
    binary = lambda name: os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.isdir(os.path.join(env["nnUNet_raw"], "Dataset990_DemoBrain")):
        subprocess.run([binary("nnUNetv2_sss_make_demo_dataset"), "-d", "990"], env=env, check=True)
    plans = os.path.join(env["nnUNet_preprocessed"], "Dataset990_DemoBrain", "nnUNetPlans.json")
    if not os.path.isfile(plans) or any(not os.path.isdir(os.path.join(os.path.dirname(plans), f"nnUNetPlans_{c}"))
                                        for c in configs):
        subprocess.run([binary("nnUNetv2_plan_and_preprocess"), "-d", "990", "-c", *configs, "-np", "2"], env=env,
                       check=True, stdout=subprocess.DEVNULL)
    subprocess.run([binary("nnUNetv2_sss_preprocess_unlabeled"), "-d", "990", "-c", *configs, "-np", "2"], env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return env


def measure(trainer_name: str, configuration: str, iterations: int, device: str) -> dict:
    """Run in a fresh process (clean peak-memory numbers); returns seconds/iteration and peak memory."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args("990", configuration, 0, trainer_name, "nnUNetPlans", False, torch.device(device))
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    trainer.train_step(next(trainer.dataloader_train))  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(iterations):
        trainer.train_step(next(trainer.dataloader_train))
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / iterations
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    return {"seconds": seconds, "peak_gib": peak, "batch": trainer.batch_size,
            "patch": "x".join(map(str, trainer.configuration_manager.patch_size))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["2d", "3d_fullres"])
    parser.add_argument("--trainers", nargs="+",
                        default=["nnUNetTrainer", "nnUNetTrainerMeanTeacher", "nnUNetTrainerUniMatchV2"])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", default=os.path.join(HERE, "work"))
    parser.add_argument("--one", nargs=2, metavar=("TRAINER", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:  # child process: measure one trainer/config and print a repr'd dict
        print(repr(measure(args.one[0], args.one[1], args.iterations, args.device)))
        return
    env = {**prepare(os.path.abspath(args.workdir), args.configs), "nnUNet_n_proc_DA": "0"}
    print(f"device: {args.device}, torch threads: default, {args.iterations} timed iterations after 1 warm-up\n")
    print("| configuration | trainer | patch | batch | s / iteration | x nnUNetTrainer | peak memory GiB |")
    print("|---|---|---|---|---|---|---|")
    for configuration in args.configs:
        reference = None
        for trainer in args.trainers:
            output = subprocess.run([sys.executable, __file__, "--one", trainer, configuration, "--iterations",
                                     str(args.iterations), "--device", args.device], env=env, capture_output=True,
                                    text=True)
            if output.returncode != 0:
                print(f"| {configuration} | {trainer} | failed: {output.stderr.strip().splitlines()[-1]} |||||")
                continue
            result = ast.literal_eval(output.stdout.strip().splitlines()[-1])
            reference = result["seconds"] if trainer == "nnUNetTrainer" else reference
            ratio = f"{result['seconds'] / reference:.2f}" if reference else "-"
            print(f"| {configuration} | {trainer} | {result['patch']} | {result['batch']} | {result['seconds']:.3f} | "
                  f"{ratio} | {result['peak_gib']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
