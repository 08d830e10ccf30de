"""Activation memory of one training step per trainer: the peak of bytes saved for backward alive at once
(``nnunetv2_sss/training/memory.py``), fp32 on the CPU, on the built-in demo dataset with nnU-Net's plans.

    .venv/bin/python benchmarks/bench_memory.py [--configs 2d 3d_fullres] [--trainers T1 T2 ...] \
        [--sam2-config sam2.1_hiera_t] [--patch 3d_fullres=20,160,160] [--json FILE]

Every trainer of ``trainers/`` plus nnU-Net's ``nnUNetTrainer``, each in a fresh process, built as
``nnUNetv2_train`` builds it (``nnUNet_n_proc_DA=0``, ``nnUNet_sss_seed=0``, SAM-2 trainers:
``nnUNet_sss_sam2_config`` = ``--sam2-config`` with random weights); one labeled batch and one unlabeled
batch, then the step's gradients (``compute_gradients``; nnU-Net's trainers: forward, loss, backward) with
``split_backward`` on (a backward pass per loss part, the default) and off (one backward pass of the sum),
and for the SAM-2 networks with activation checkpointing of the Hiera blocks off and on, each from the same
random state. Ratios: to ``nnUNetTrainer`` for trainers on nnU-Net's network, to ``nnUNetTrainerSAM2``
(without checkpointing) for those on the SAM-2 network. ``--patch CONFIG=a,b,c`` changes the patch size of a
configuration (a plans copy ``nnUNetPlans_bench``, same preprocessed data; the loaders pad).

Prints a Markdown table and, per trainer, the peak split by the module that saved the bytes (parts of the
step and modules of the network, at the peak).
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
# targets of issue 19 (ratio of the split-backward peak to the supervised counterpart)
TARGETS = {"plain": 1.3, "sss": 2.1, "sss_checkpointed": 1.5, "cps": 1.3}


def all_trainers() -> list:
    from plugin_trainers import stepped_trainer_names
    names = stepped_trainer_names()
    order = [SUPERVISED, "nnUNetTrainerPlugin", SUPERVISED_SAM2]
    return order + [n for n in names if n not in order]


def measure(trainer_name: str, configuration: str, plans: str) -> dict:
    """One trainer (this process): saved-bytes peaks of one step for each variant."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2_sss.networks.activation_checkpointing import (hiera_blocks, set_activation_checkpointing,
                                                                set_dfe_checkpointing)
    from nnunetv2_sss.networks.passes import unwrap
    from nnunetv2_sss.training.checkpoint_io import capture_rng_state, restore_rng_state
    from nnunetv2_sss.training.memory import track_step, trainer_modules
    from nnunetv2_sss.training.seeding import trainer_generators

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    if trainer_name == "nnUNetTrainerCPS4":
        from trainer_harness import prepare_cps4_stage1
        prepare_cps4_stage1("990", configuration, 0, 0)
    trainer = get_trainer_from_args("990", configuration, 0, trainer_name, plans, False, torch.device("cpu"))
    try:
        trainer.on_train_start()
        trainer.on_epoch_start()
        trainer.on_train_epoch_start()
        batch = next(trainer.dataloader_train)
        semi = hasattr(trainer, "compute_gradients")
        if semi:
            batch["unlabeled"] = next(trainer.dataloader_unlabeled)
        generators = trainer_generators(trainer)
        state = capture_rng_state(trainer.device, generators)
        sam2 = bool(hiera_blocks(unwrap(trainer.network)))
        result = {"patch": "x".join(map(str, trainer.configuration_manager.patch_size)), "batch": trainer.batch_size,
                  "unlabeled_batch": int(batch["unlabeled"]["data"].shape[0]) if semi else None, "sam2": sam2,
                  "variants": {}}
        models = trainer_modules(trainer)
        result["weights_mb"] = {name: sum(p.numel() * p.element_size() for p in m.parameters()) / MB
                                for name, m in zip(("student", *(["teacher"] if getattr(trainer, "teacher", None)
                                                                 is not None else [])), models)}
        objective = getattr(trainer, "ssl_objective", None)
        for name, module in (objective.trained_modules.items() if objective is not None else []):
            result["weights_mb"][name] = sum(p.numel() * p.element_size() for p in module.parameters()) / MB
        dfe = bool(dfe_scales(unwrap(trainer.network)))
        variants = {"after": (True, False, True), "before": (False, False, False)}
        if dfe:
            variants["dfe_off"] = (True, False, False)
        if sam2:
            variants["hiera"] = (True, True, True)
        for name, (split, checkpointing, dfe_checkpointing) in variants.items():
            if not semi and name == "before":
                continue
            restore_rng_state(state, trainer.device, generators)
            if semi:
                trainer.split_backward = split
            if sam2:
                set_activation_checkpointing(unwrap(trainer.network), checkpointing)
            if dfe:
                set_dfe_checkpointing(unwrap(trainer.network), dfe_checkpointing)
            memory = track_step(trainer, dict(batch), attribute_depth=4)
            trainer.optimizer.zero_grad(set_to_none=True)
            result["variants"][name] = {
                "split_backward": split, "hiera_checkpointing": checkpointing, "dfe_checkpointing": dfe and
                dfe_checkpointing, "peak": memory.peak, "parts": memory.parts,
                "by_module": dict(sorted(memory.peak_by_module.items(), key=lambda kv: -kv[1]))}
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


def family(trainer: str, result: dict) -> str:
    if trainer == "nnUNetTrainerCPS":
        return "cps"
    return "sss" if result["sam2"] else "plain"


def verdict(ratio: float, target: float) -> str:
    return f"<= {target}: {'yes' if ratio <= target else 'NO'}"


def table(results: dict) -> str:
    """after = split backward (+ DFE checkpointing where there is DFE), the trainers' defaults; before = one
    backward pass of the summed loss, no checkpointing (the code before issue 19)."""
    lines = ["| configuration | trainer | patch | batch (unlabeled) | after: peak MB | x supervised | "
             "before: peak MB | x supervised | parts MB (after) | DFE not checkpointed: peak MB | x supervised | "
             "+ Hiera checkpointing: peak MB | x supervised | target (after) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for configuration, by_trainer in results.items():
        plain = by_trainer.get(SUPERVISED, {}).get("variants", {}).get("after", {})
        sam2 = by_trainer.get(SUPERVISED_SAM2, {}).get("variants", {}).get("after", {})
        for trainer, result in by_trainer.items():
            if "error" in result:
                lines.append(f"| {configuration} | {trainer} | failed: {result['error']} ||||||||||||")
                continue
            variants = result["variants"]
            reference = (sam2 if result["sam2"] else plain).get("peak")

            def cells(variant):
                if not variant:
                    return ["-", "-"]
                return [f"{variant['peak'] / MB:.1f}", f"{variant['peak'] / reference:.2f}" if reference else "-"]

            after, hiera = variants["after"], variants.get("hiera")
            kind = family(trainer, result)
            target = ""
            if trainer not in (SUPERVISED, SUPERVISED_SAM2, "nnUNetTrainerPlugin") and reference:
                target = verdict(after["peak"] / reference, TARGETS[kind])
                if kind == "cps":
                    target += f" (+ network_b weights {result['weights_mb'].get('network_b', 0):.1f} MB)"
                if hiera:
                    target += "; Hiera checkpointing " + verdict(hiera["peak"] / reference,
                                                                 TARGETS["sss_checkpointed"])
            unlabeled = f" ({result['unlabeled_batch']})" if result["unlabeled_batch"] else ""
            row = [configuration, trainer, result["patch"], f"{result['batch']}{unlabeled}", *cells(after),
                   *cells(variants.get("before")), " + ".join(f"{p / MB:.1f}" for p in after["parts"]),
                   *cells(variants.get("dfe_off")), *cells(hiera), target]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def breakdown(results: dict, top: int = 6) -> str:
    lines = []
    for configuration, by_trainer in results.items():
        for trainer, result in by_trainer.items():
            if "error" in result:
                continue
            for variant, values in result["variants"].items():
                if variant == "before":
                    continue
                modules = ", ".join(f"{k} {v / MB:.1f}" for k, v in list(values["by_module"].items())[:top])
                lines.append(f"- {configuration} {trainer} ({variant}): peak {values['peak'] / MB:.1f} MB = "
                             f"{modules}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["2d", "3d_fullres"])
    parser.add_argument("--trainers", nargs="+", default=None, help="default: nnUNetTrainer + every plugin trainer")
    parser.add_argument("--sam2-config", default="sam2.1_hiera_t")
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
    print(f"bytes saved for backward, fp32, CPU; SAM-2 config {args.sam2_config} (random weights); plans {plans}; "
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
    print("\nAt the peak (split backward), by module that saved the bytes (MB, largest first):\n")
    print(breakdown(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
