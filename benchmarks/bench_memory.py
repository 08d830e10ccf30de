"""Memory of one training step per trainer, fp32 on the CPU, on the built-in demo dataset with nnU-Net's plans:
the bytes saved for backward (``training/memory.py``, issue 19's measure), the measured peak of the whole step
(``training/peak_memory.py``: weights, optimizer state, teacher, batch, and everything the step allocates, alive
at once) and the planner's estimate of that peak (``training/memory_estimate.py``, 'meta' device).

    .venv/bin/python benchmarks/bench_memory.py [--configs 2d 3d_fullres] [--trainers T1 T2 ...] \
        [--sam2-config sam2.1_hiera_s] [--patch 3d_fullres=20,160,160] [--json FILE]

Every trainer of ``trainers/`` plus nnU-Net's ``nnUNetTrainer``, each in a fresh process, built as
``nnUNetv2_train`` builds it (``nnUNet_n_proc_DA=0``, ``nnUNet_sss_seed=0``, SAM-2 trainers:
``nnUNet_sss_sam2_config`` = ``--sam2-config`` with random weights); one labeled batch and one unlabeled batch,
a first step (the optimiser's state), then per variant the saved bytes of the step's gradients and the peak of a
whole ``train_step`` as on CUDA (a backward pass per loss part, the optimiser's multi-tensor update). Variants:
the trainer's defaults; for the SAM-2 networks Hiera activation checkpointing on; for DFE, DFE checkpointing off.
Ratios: to ``nnUNetTrainer`` for trainers on nnU-Net's network, to ``nnUNetTrainerSAM2`` (its defaults) for those
on the SAM-2 network. ``--patch CONFIG=a,b,c`` changes the patch size of a configuration (a plans copy
``nnUNetPlans_bench``, same preprocessed data; the loaders pad).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys

from bench_trainers import HERE, REPO, prepare

sys.path.insert(0, os.path.join(REPO, "tests"))

SUPERVISED = "nnUNetTrainer"
SUPERVISED_SAM2 = "nnUNetTrainerSAM2"
MB = 1e6


def all_trainers() -> list:
    from plugin_trainers import stepped_trainer_names
    names = stepped_trainer_names()
    order = [SUPERVISED, "nnUNetTrainerPlugin", SUPERVISED_SAM2]
    return order + [n for n in names if n not in order]


def measure(trainer_name: str, configuration: str, plans_name: str) -> dict:
    """One trainer (this process): saved bytes, measured peak and estimate of one step for each variant."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2_sss.networks.activation_checkpointing import (hiera_blocks, set_activation_checkpointing,
                                                                set_dfe_checkpointing)
    from nnunetv2_sss.networks.passes import unwrap
    from nnunetv2_sss.training.checkpoint_io import capture_rng_state, restore_rng_state
    from nnunetv2_sss.training.memory import track_step
    from nnunetv2_sss.training.memory_estimate import estimate_step
    from nnunetv2_sss.training.peak_memory import measure_train_step
    from nnunetv2_sss.training.seeding import trainer_generators

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    if trainer_name == "nnUNetTrainerCPS4":
        from trainer_harness import prepare_cps4_stage1
        prepare_cps4_stage1("990", configuration, 0, 0)
    trainer = get_trainer_from_args("990", configuration, 0, trainer_name, plans_name, False, torch.device("cpu"))
    try:
        trainer.on_train_start()
        trainer.on_epoch_start()
        trainer.on_train_epoch_start()
        batch = next(trainer.dataloader_train)
        semi = hasattr(trainer, "compute_gradients")
        if semi:
            batch["unlabeled"] = next(trainer.dataloader_unlabeled)
        generators = trainer_generators(trainer)
        sam2 = bool(hiera_blocks(unwrap(trainer.network)))
        dfe = bool(dfe_scales(unwrap(trainer.network)))
        result = {"patch": "x".join(map(str, trainer.configuration_manager.patch_size)), "batch": trainer.batch_size,
                  "unlabeled_batch": int(batch["unlabeled"]["data"].shape[0]) if semi else None, "sam2": sam2,
                  "variants": {}}
        measure_train_step(trainer, dict(batch))  # the optimiser's state, as in every later step
        state = capture_rng_state(trainer.device, generators)
        variants = {"default": (None, None)}
        if sam2:
            variants["hiera"] = (True, None)
        if dfe:
            variants["dfe_off"] = (None, False)
        for name, (checkpointing, dfe_checkpointing) in variants.items():
            if sam2:
                set_activation_checkpointing(unwrap(trainer.network), bool(checkpointing))
            if dfe:
                set_dfe_checkpointing(unwrap(trainer.network), dfe_checkpointing is not False)
            restore_rng_state(state, trainer.device, generators)
            if semi:
                trainer.split_backward = True
            saved = track_step(trainer, dict(batch), attribute_depth=4)
            trainer.optimizer.zero_grad(set_to_none=True)
            restore_rng_state(state, trainer.device, generators)
            peak = measure_train_step(trainer, dict(batch))
            values = {"saved": saved.peak, "peak": peak.peak, "resident": peak.resident,
                      "by_module": dict(sorted(saved.peak_by_module.items(), key=lambda kv: -kv[1]))}
            if trainer_name != "nnUNetTrainerCPS4":  # the estimate does not run CPS4's stage-1 model
                estimate = estimate_step(type(trainer), trainer.plans_manager.plans, trainer.dataset_json,
                                         configuration, activation_checkpointing=checkpointing,
                                         dfe_checkpointing=dfe_checkpointing,
                                         sam2_config=os.environ.get("nnUNet_sss_sam2_config"))
                values.update(estimate=estimate.peak_bytes, estimate_phase=estimate.peak_phase)
            result["variants"][name] = values
        return result
    finally:
        for name in ("dataloader_train", "dataloader_val", "dataloader_unlabeled"):
            finish = getattr(getattr(trainer, name, None), "_finish", None)
            if finish is not None:
                try:
                    finish()
                except Exception:  # noqa: BLE001
                    pass


def dfe_scales(module) -> list:
    from nnunetv2_sss.sss.dfe import ScaleDFE
    return [m for m in module.modules() if isinstance(m, ScaleDFE)]


def plans_with_patches(env: dict, patches: dict) -> str:
    """``nnUNetPlans`` or a copy ``nnUNetPlans_bench`` with other patch sizes (same data identifiers)."""
    if not patches:
        return "nnUNetPlans"
    folder = os.path.join(env["nnUNet_preprocessed"], "Dataset990_DemoBrain")
    with open(os.path.join(folder, "nnUNetPlans.json")) as f:
        plans = json.load(f)
    plans["plans_name"] = "nnUNetPlans_bench"
    for configuration, patch in patches.items():
        plans["configurations"][configuration]["patch_size"] = list(patch)
    with open(os.path.join(folder, "nnUNetPlans_bench.json"), "w") as f:
        json.dump(plans, f, indent=1)
    return "nnUNetPlans_bench"


def table(results: dict) -> str:
    """Per configuration and trainer: each variant's saved bytes, measured peak, estimate (MB), the estimate's
    error, and the ratios of peak and estimate to the supervised counterpart's defaults."""
    lines = ["| configuration | trainer | patch | batch (unlabeled) | variant | saved for backward MB | measured peak MB | "
             "estimate MB | estimate / measured | peak x supervised | estimate x supervised | estimate's peak in |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    names = {"default": "defaults", "hiera": "+ Hiera checkpointing", "dfe_off": "DFE not checkpointed"}
    for configuration, by_trainer in results.items():
        for trainer, result in by_trainer.items():
            if "error" in result:
                lines.append(f"| {configuration} | {trainer} | failed: {result['error']} ||||||||||")
                continue
            reference = by_trainer.get(SUPERVISED_SAM2 if result["sam2"] else SUPERVISED, {}).get("variants", {})
            reference = reference.get("default", {})
            unlabeled = f" ({result['unlabeled_batch']})" if result["unlabeled_batch"] else ""
            for variant, values in result["variants"].items():
                estimate = values.get("estimate")

                def ratio(value, key):
                    return f"{value / reference[key]:.2f}" if value and reference.get(key) else "-"

                row = [configuration, trainer, result["patch"], f"{result['batch']}{unlabeled}", names[variant],
                       f"{values['saved'] / MB:.1f}", f"{values['peak'] / MB:.1f}",
                       f"{estimate / MB:.1f}" if estimate else "-",
                       f"{estimate / values['peak']:.3f}" if estimate else "-", ratio(values["peak"], "peak"),
                       ratio(estimate, "estimate"), values.get("estimate_phase", "-")]
                lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def breakdown(results: dict, top: int = 6) -> str:
    lines = []
    for configuration, by_trainer in results.items():
        for trainer, result in by_trainer.items():
            if "error" in result:
                continue
            for variant, values in result["variants"].items():
                modules = ", ".join(f"{k} {v / MB:.1f}" for k, v in list(values["by_module"].items())[:top])
                lines.append(f"- {configuration} {trainer} ({variant}): saved for backward {values['saved'] / MB:.1f} "
                             f"MB = {modules}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["2d", "3d_fullres"])
    parser.add_argument("--trainers", nargs="+", default=None, help="default: nnUNetTrainer + every plugin trainer")
    parser.add_argument("--sam2-config", default="sam2.1_hiera_s")
    parser.add_argument("--patch", nargs="*", default=[], metavar="CONFIG=a,b[,c]")
    parser.add_argument("--workdir", default=os.path.join(HERE, "work"))
    parser.add_argument("--json", default=None, help="also write the results as JSON")
    parser.add_argument("--one", nargs=3, metavar=("TRAINER", "CONFIG", "PLANS"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        print(repr(measure(*args.one)))
        return
    trainers = args.trainers or all_trainers()
    env = {**prepare(os.path.abspath(args.workdir), args.configs), "nnUNet_n_proc_DA": "0", "nnUNet_sss_seed": "0",
           "nnUNet_sss_sam2_config": args.sam2_config, "nnUNet_sss_sam2_checkpoint": "random",
           "nnUNet_sss_num_epochs": "1", "nnUNet_sss_iterations_per_epoch": "1",
           "nnUNet_sss_val_iterations_per_epoch": "1", "MPLBACKEND": "agg", "HF_HUB_OFFLINE": "1"}
    patches = {c: [int(n) for n in p.split(",")] for c, p in (item.split("=") for item in args.patch)}
    plans = plans_with_patches(env, patches)
    print(f"memory of one training step, fp32, CPU; SAM-2 config {args.sam2_config} (random weights); plans {plans}; "
          f"demo dataset Dataset990_DemoBrain\n", flush=True)
    results = {}
    for configuration in args.configs:
        results[configuration] = {}
        for trainer in trainers:
            if trainer == "nnUNetTrainerCPS4" and configuration != "2d":
                continue
            output = subprocess.run([sys.executable, __file__, "--one", trainer, configuration, plans], env=env,
                                    capture_output=True, text=True)
            if output.returncode != 0:
                results[configuration][trainer] = {"error": (output.stderr.strip().splitlines() or ["?"])[-1]}
            else:
                results[configuration][trainer] = ast.literal_eval(output.stdout.strip().splitlines()[-1])
            print(f"[bench_memory] {configuration} {trainer} done", file=sys.stderr, flush=True)
    print(table(results))
    print("\nSaved for backward at its peak, by module that saved the bytes (MB, largest first):\n")
    print(breakdown(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
