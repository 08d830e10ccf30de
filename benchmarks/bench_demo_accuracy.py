"""Every trainer of the plugin on the built-in demo dataset, same labeled cases, same iterations.

    .venv/bin/python benchmarks/bench_demo_accuracy.py [--epochs 2] [--iterations 20] [--num-labeled 3]
        [--trainers ...] [--configuration 2d]

Label scarcity: ``nnUNetv2_sss_make_splits --num-labeled N`` on the demo's 8 training cases
(fold 0: N labeled, the rest of the fold's training cases plus ``imagesUnlabeled`` unlabeled).
The supervised row is ``nnUNetTrainerPlugin`` (nnU-Net's trainer plus the plugin's
training-length variables; ``nnUNetTrainer`` itself ignores them). Each trainer: ``nnUNetv2_train`` (fold 0), ``nnUNetv2_predict`` of the 4 held-out cases,
``nnUNetv2_sss_evaluate``; then ``nnUNetv2_sss_results`` builds the table (validation = the
fold's 2 validation cases, test = the held-out cases). Seconds per iteration are read from
nnU-Net's epoch times (validation iterations included). CPS4 runs its stage 1 first, and the
Dice of its text pseudo-labels ``y_text`` against the hidden labels of the fold's
simulated-unlabeled cases is printed. SAM-2 trainers use ``sam2_hiera_demo`` with random
weights (no checkpoint can be downloaded here).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TRAINERS = ["nnUNetTrainerPlugin", "nnUNetTrainerEntropyMin", "nnUNetTrainerMeanTeacher", "nnUNetTrainerICT",
            "nnUNetTrainerCPS", "nnUNetTrainerUniMatchV2", "nnUNetTrainerSAM2", "nnUNetTrainerSSS_baseline",
            "nnUNetTrainerSSS_noPCSW", "nnUNetTrainerSSS_noDFE", "nnUNetTrainerSSS", "nnUNetTrainerCPS4"]


def run(command, env, quiet=True):
    binary = os.path.join(os.path.dirname(sys.executable), command[0])
    subprocess.run([binary] + [str(c) for c in command[1:]], env=env, check=True,
                   stdout=subprocess.DEVNULL if quiet else None, stderr=subprocess.DEVNULL if quiet else None)


def seconds_per_iteration(fold: str, iterations: int, val_iterations: int) -> float:
    import torch
    logging = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)["logging"]
    durations = np.subtract(logging["epoch_end_timestamps"], logging["epoch_start_timestamps"])
    return float(np.median(durations)) / (iterations + val_iterations)


def text_label_dice(env: dict, dataset: str, configuration: str) -> dict:
    """Dice (%) per class of CPS4's y_text on every slice of fold 0's simulated-unlabeled cases."""
    import torch
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2_sss.cps4.stage1_io import load_stage1, stage1_output_folder
    from nnunetv2_sss.cps4.text_labels import attention_to_label_map

    preprocessed = os.path.join(env["nnUNet_preprocessed"], dataset)
    hidden = json.load(open(os.path.join(preprocessed, "splits_semi_supervised.json")))[0]["unlabeled"]
    model = load_stage1(stage1_output_folder(dataset, "nnUNetPlans", 0, configuration, env["nnUNet_results"]))
    folder = os.path.join(preprocessed, f"nnUNetPlans_{configuration}")
    data = infer_dataset_class(folder)(folder, hidden)
    patch = model.cfg.vit.patch_size
    overlap = {}
    for case in hidden:
        image, label, _, _ = data.load_case(case)
        image, label = np.asarray(image), np.asarray(label)[0]
        size = [s - s % patch for s in image.shape[2:]]
        slices = torch.from_numpy(image[:, :, : size[0], : size[1]]).float().transpose(0, 1)
        with torch.no_grad():
            text = attention_to_label_map(model(slices), size).numpy()
        reference = label[:, : size[0], : size[1]]
        for k in range(1, model.num_classes):
            counts = overlap.setdefault(k, [0, 0])
            counts[0] += 2 * int(((text == k) & (reference == k)).sum())
            counts[1] += int((text == k).sum() + (reference == k).sum())
    return {k: 100 * a / max(b, 1) for k, (a, b) in overlap.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--num-labeled", type=int, default=3)
    parser.add_argument("--configuration", default="2d")
    parser.add_argument("--trainers", nargs="+", default=TRAINERS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", default=os.path.join(HERE, "work_accuracy"))
    args = parser.parse_args()

    workdir = os.path.abspath(args.workdir)
    env = {**os.environ, "nnUNet_raw": os.path.join(workdir, "nnUNet_raw"),
           "nnUNet_preprocessed": os.path.join(workdir, "nnUNet_preprocessed"),
           "nnUNet_results": os.path.join(workdir, "nnUNet_results"), "nnUNet_def_n_proc": "1",
           "nnUNet_extTrainer": os.path.join(REPO, "trainers"), "nnUNet_compile": "false",
           "nnUNet_sss_sam2_config": "sam2_hiera_demo", "nnUNet_sss_sam2_checkpoint": "random",
           "HF_HUB_OFFLINE": "1"}
    dataset = "Dataset990_DemoBrain"
    if not os.path.isfile(os.path.join(env["nnUNet_preprocessed"], dataset, "splits_semi_supervised.json")):
        for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            os.makedirs(env[key], exist_ok=True)
        run(["nnUNetv2_sss_make_demo_dataset", "-d", 990], env)
        run(["nnUNetv2_plan_and_preprocess", "-d", 990, "-c", args.configuration, "-np", 2], env)
        run(["nnUNetv2_sss_preprocess_unlabeled", "-d", 990, "-c", args.configuration, "-np", 2], env)
        run(["nnUNetv2_sss_make_splits", "-d", 990, "--num-labeled", args.num_labeled, "--force"], env)
    val_iterations = 2
    train_env = {**env, "nnUNet_n_proc_DA": "0", "nnUNet_sss_num_epochs": str(args.epochs),
                 "nnUNet_sss_iterations_per_epoch": str(args.iterations),
                 "nnUNet_sss_val_iterations_per_epoch": str(val_iterations)}
    raw = os.path.join(env["nnUNet_raw"], dataset)
    speed, tests = {}, []
    for trainer in args.trainers:
        if trainer == "nnUNetTrainerCPS4":
            run(["nnUNetv2_sss_pretrain_cps4", "-d", 990, "-c", args.configuration, "-f", 0, "--device", args.device,
                 "--vit-patch-size", 8, "--lr", "1e-4"], train_env)
        fold = os.path.join(env["nnUNet_results"], dataset, f"{trainer}__nnUNetPlans__{args.configuration}", "fold_0")
        if not os.path.isfile(os.path.join(fold, "checkpoint_final.pth")):
            run(["nnUNetv2_train", 990, args.configuration, 0, "-tr", trainer, "-device", args.device], train_env)
        speed[trainer] = seconds_per_iteration(fold, args.iterations, val_iterations)
        predictions = os.path.join(workdir, "predictions", trainer)
        run(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", predictions, "-d", 990, "-c",
             args.configuration, "-f", 0, "-tr", trainer, "-device", args.device, "-npp", 1, "-nps", 1], train_env)
        run(["nnUNetv2_sss_evaluate", "-ref", os.path.join(raw, "labelsTs"), "-pred", predictions, "-d", 990,
             "-np", 1], train_env)
        tests.append(predictions)
        print(f"{trainer}: {speed[trainer]:.2f} s/iteration", flush=True)

    run(["nnUNetv2_sss_results", "-d", 990, "-c", args.configuration, "-tr", *args.trainers, "-f", 0, "--test",
         *tests, "-o", os.path.join(workdir, "table")], env, quiet=False)
    print("\n| trainer | s / iteration (train + val, median epoch) |\n|---|---|")
    for trainer, value in speed.items():
        print(f"| {trainer} | {value:.2f} |")
    if "nnUNetTrainerCPS4" in args.trainers:
        dice = text_label_dice(env, dataset, args.configuration)
        print("\nCPS4 y_text Dice % against the hidden labels of fold 0's simulated-unlabeled cases: " +
              ", ".join(f"label {k}: {v:.1f}" for k, v in dice.items()))


if __name__ == "__main__":
    main()
