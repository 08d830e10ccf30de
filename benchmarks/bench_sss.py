"""SSS cost and accuracy on the built-in demo dataset.

    .venv/bin/python benchmarks/bench_sss.py [--configs 2d] [--iterations 3] [--sam2-config sam2.1_hiera_t]
        [--dice-epochs 0 --dice-iterations 25]

1. Seconds per training iteration (same labeled batch) of nnUNetTrainerSAM2 and the SSS
   trainers, in-process (``bench_trainers.measure``). The share of an SSS iteration spent in
   DFE, PCSW and the prompt head is read off the ablations, backward passes included:
   ``(t_SSS - t_SSS_baseline) / t_SSS`` (both), ``t_SSS - t_noDFE`` (DFE), ``t_SSS - t_noPCSW``
   (PCSW + prompt head).
2. With ``--dice-epochs E > 0``: every trainer is trained with ``nnUNetv2_train`` for E epochs
   of ``--dice-iterations`` iterations (same labeled cases), predicts the held-out cases and
   the mean Dice over classes is printed.

SAM-2 weights: ``nnUNet_sss_sam2_checkpoint`` if set, else ``random`` (no checkpoint can be
downloaded here; say so when reporting).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys

from bench_trainers import HERE, prepare

TRAINERS = ["nnUNetTrainerSAM2", "nnUNetTrainerSSS_baseline", "nnUNetTrainerSSS_noPCSW", "nnUNetTrainerSSS_noDFE",
            "nnUNetTrainerSSS"]


def timing(env: dict, configuration: str, iterations: int, device: str) -> dict:
    seconds = {}
    for trainer in TRAINERS:
        output = subprocess.run([sys.executable, os.path.join(HERE, "bench_trainers.py"), "--one", trainer,
                                 configuration, "--iterations", str(iterations), "--device", device],
                                env=env, capture_output=True, text=True)
        if output.returncode != 0:
            raise RuntimeError(f"{trainer} failed:\n{output.stderr[-3000:]}")
        seconds[trainer] = ast.literal_eval(output.stdout.strip().splitlines()[-1])
    return seconds


def dice(env: dict, configuration: str, epochs: int, iterations: int, device: str) -> dict:
    """Mean Dice % over classes on imagesTs of each trainer after the same short training."""
    binary = lambda name: os.path.join(os.path.dirname(sys.executable), name)
    raw = os.path.join(env["nnUNet_raw"], "Dataset990_DemoBrain")
    env = {**env, "nnUNet_sss_num_epochs": str(epochs), "nnUNet_sss_iterations_per_epoch": str(iterations),
           "nnUNet_sss_val_iterations_per_epoch": "2"}
    result = {}
    for trainer in TRAINERS:
        predictions = os.path.join(env["nnUNet_results"], f"bench_pred_{trainer}_{configuration}")
        subprocess.run([binary("nnUNetv2_train"), "990", configuration, "0", "-tr", trainer, "-device", device],
                       env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run([binary("nnUNetv2_predict"), "-i", os.path.join(raw, "imagesTs"), "-o", predictions, "-d",
                        "990", "-c", configuration, "-f", "0", "-tr", trainer, "-device", device],
                       env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run([binary("nnUNetv2_evaluate_simple"), os.path.join(raw, "labelsTs"), predictions, "-l", "1",
                        "2"], env=env, check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(predictions, "summary.json")) as f:
            result[trainer] = 100 * json.load(f)["foreground_mean"]["Dice"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["2d"])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sam2-config", default="sam2.1_hiera_t")
    parser.add_argument("--dice-epochs", type=int, default=0)
    parser.add_argument("--dice-iterations", type=int, default=25)
    parser.add_argument("--workdir", default=os.path.join(HERE, "work"))
    args = parser.parse_args()

    env = {**prepare(os.path.abspath(args.workdir), args.configs), "nnUNet_n_proc_DA": "0",
           "nnUNet_sss_sam2_config": args.sam2_config,
           "nnUNet_sss_sam2_checkpoint": os.environ.get("nnUNet_sss_sam2_checkpoint", "random")}
    print(f"SAM-2 config {args.sam2_config}, weights {env['nnUNet_sss_sam2_checkpoint']}, device {args.device}\n")
    for configuration in args.configs:
        seconds = timing(env, configuration, args.iterations, args.device)
        t = {k: v["seconds"] for k, v in seconds.items()}
        print(f"### {configuration} (patch {seconds['nnUNetTrainerSSS']['patch']}, labeled batch "
              f"{seconds['nnUNetTrainerSSS']['batch']})\n")
        print("| trainer | s / iteration | x nnUNetTrainerSAM2 | peak memory GiB |\n|---|---|---|---|")
        for trainer in TRAINERS:
            print(f"| {trainer} | {t[trainer]:.3f} | {t[trainer] / t['nnUNetTrainerSAM2']:.2f} | "
                  f"{seconds[trainer]['peak_gib']:.2f} |")
        full = t["nnUNetTrainerSSS"]
        print(f"\nshare of an SSS iteration: DFE {100 * (full - t['nnUNetTrainerSSS_noDFE']) / full:.1f} %, "
              f"PCSW + prompt head {100 * (full - t['nnUNetTrainerSSS_noPCSW']) / full:.1f} %, "
              f"all three {100 * (full - t['nnUNetTrainerSSS_baseline']) / full:.1f} %\n")
        if args.dice_epochs:
            scores = dice(env, configuration, args.dice_epochs, args.dice_iterations, args.device)
            print(f"Mean Dice % on the held-out demo cases after {args.dice_epochs} x {args.dice_iterations} "
                  f"iterations:\n\n| trainer | Dice % |\n|---|---|")
            for trainer, value in scores.items():
                print(f"| {trainer} | {value:.2f} |")


if __name__ == "__main__":
    main()
