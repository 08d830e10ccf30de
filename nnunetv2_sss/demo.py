"""``nnUNetv2_sss_demo``: the main job end to end on the built-in demo dataset, on CPU.

Runs the real commands, in order: build the dataset -> ``nnUNetv2_plan_and_preprocess`` ->
``nnUNetv2_sss_preprocess_unlabeled`` -> ``nnUNetv2_train`` (short schedule) ->
``nnUNetv2_predict`` on ``imagesTs`` -> Dice per class on ``labelsTs``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from nnunetv2_sss.errors import UserRuntimeError

DEMO_DATASET_ID = 990
DEMO_DATASET_NAME = "Dataset990_DemoBrain"


def _run(command, env) -> None:
    print("\n$ " + " ".join(str(c) for c in command), flush=True)
    binary = os.path.join(os.path.dirname(sys.executable), command[0])
    completed = subprocess.run([binary] + [str(c) for c in command[1:]], env=env)
    if completed.returncode != 0:
        # the command printed its own message (ERROR: ... or a traceback) above
        raise UserRuntimeError(f"demo stopped: {command[0]} failed with exit code {completed.returncode} "
                               f"(its message is above)")


def run_demo(workdir: str, trainer: str, configuration: str, epochs: int, iterations: int, device: str) -> dict:
    """Run the demo in ``workdir``; returns the per-class Dice of the held-out cases (%)."""
    import nnunetv2_sss.trainers

    raw, preprocessed, results = (os.path.join(workdir, d) for d in ("nnUNet_raw", "nnUNet_preprocessed",
                                                                    "nnUNet_results"))
    for folder in (raw, preprocessed, results):
        os.makedirs(folder, exist_ok=True)
    env = {**os.environ, "nnUNet_raw": raw, "nnUNet_preprocessed": preprocessed, "nnUNet_results": results,
           "nnUNet_extTrainer": os.path.dirname(os.path.abspath(nnunetv2_sss.trainers.__file__)),
           "nnUNet_def_n_proc": "1", "nnUNet_compile": "false", "MPLBACKEND": "agg"}
    # no SAM-2 checkpoint can be downloaded at run time: unless the user set them, the demo uses the
    # reduced Hiera config shipped with the plugin, with random weights
    env.setdefault("nnUNet_sss_sam2_config", "sam2_hiera_demo")
    env.setdefault("nnUNet_sss_sam2_checkpoint", "random")
    train_env = {**env, "nnUNet_n_proc_DA": "0", "nnUNet_sss_num_epochs": str(epochs),
                 "nnUNet_sss_iterations_per_epoch": str(iterations), "nnUNet_sss_val_iterations_per_epoch": "5"}
    started = time.time()
    if not os.path.isdir(os.path.join(raw, DEMO_DATASET_NAME)):
        _run(["nnUNetv2_sss_make_demo_dataset", "-d", DEMO_DATASET_ID], env)
    if not os.path.isfile(os.path.join(preprocessed, DEMO_DATASET_NAME, "nnUNetPlans.json")):
        _run(["nnUNetv2_plan_and_preprocess", "-d", DEMO_DATASET_ID, "-c", configuration, "-np", 2,
              "--verify_dataset_integrity"], env)
    _run(["nnUNetv2_sss_preprocess_unlabeled", "-d", DEMO_DATASET_ID, "-c", configuration, "-np", 2], env)
    _run(["nnUNetv2_train", DEMO_DATASET_ID, configuration, 0, "-tr", trainer, "-device", device], train_env)
    predictions = os.path.join(workdir, f"predictions_{trainer}_{configuration}")
    dataset = os.path.join(raw, DEMO_DATASET_NAME)
    _run(["nnUNetv2_predict", "-i", os.path.join(dataset, "imagesTs"), "-o", predictions, "-d", DEMO_DATASET_ID,
          "-c", configuration, "-f", 0, "-tr", trainer, "-device", device], train_env)

    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder_simple, load_summary_json
    compute_metrics_on_folder_simple(os.path.join(dataset, "labelsTs"), predictions, [1, 2], num_processes=1)
    summary = load_summary_json(os.path.join(predictions, "summary.json"))
    names = {1: "grey_matter", 2: "white_matter"}
    dice = {names[int(k)]: 100 * v["Dice"] for k, v in summary["mean"].items()}
    print(f"\nDemo ({trainer}, {configuration}, {epochs} x {iterations} iterations, "
          f"{time.time() - started:.0f} s). Dice on the {len(summary['metric_per_case'])} held-out cases:")
    print("| class | Dice % |\n|---|---|")
    for name, value in dice.items():
        print(f"| {name} | {value:.2f} |")
    print(f"| mean | {sum(dice.values()) / len(dice):.2f} |")
    return dice
