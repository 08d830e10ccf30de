"""First contact on a GPU (issue 19, item 7): every trainer of the plugin (and nnU-Net's nnUNetTrainer) for a
few iterations, at 2d and at a head-CT-like 3d_fullres plan, with nnU-Net's torch.compile off and on.

    .venv/bin/python benchmarks/gpu_check.py [--device cuda] [--steps 3] [--configs 2d 3d_fullres] \
        [--trainers ...] [--compile-trainers ...] [--workdir benchmarks/work_gpu] [--json FILE]
    .venv/bin/python benchmarks/gpu_check.py --device cpu --smoke      # the code paths on the CPU, tiny data

Two parts, each in processes of their own, printed as Markdown tables:

1. **First steps against the CPU's** (``tests/data/reference_losses.json``, recorded on the CPU): the trainer
   harness (``tests/trainer_harness.py``) on the test dataset (``tests/tiny_dataset.py``, planned and
   preprocessed as the test fixture does) on ``--device``, in float32 (no autocast, TF32 off), 3 steps.
   The first step's labeled loss starts from the same weights and batch as the CPU's and must agree
   (relative difference ~1e-5); unlabeled losses agree where the step draws no random numbers on the device
   (CutMix boxes, dropout masks, ICT's mixing are drawn on the device: another generator than the CPU's).
2. **Speed, memory, compilation, syncs** on a synthetic dataset of BHSD's geometry (``--cases`` volumes of
   512 x 512 x 28-36 voxels, 0.45 x 0.45 x 5 mm; a third of them as ``imagesUnlabeled``), planned by
   nnU-Net's own planner (``3d_fullres`` patch about 20 x 320 x 256, batch 2), trainers as ``nnUNetv2_train``
   builds them (``nnUNet_compile`` false / true), the trainers' own mixed precision. Per trainer: seconds
   per iteration (median of ``--steps`` after two warm-up steps, which include the compiles), peak GPU memory
   (``torch.cuda.max_memory_allocated`` over all steps), the peak of one more step three ways (the CUDA
   allocator's ``max_memory_allocated`` from a reset just before it; the same step counted by the plugin's
   ``LiveBytesTracker``, uncompiled runs only, plus the bytes allocated before it; the planner's GPU estimate,
   ``training/memory_estimate.py``, for the trainer's plans), graphs dynamo compiled
   (``torch._dynamo.utils.counters``; after the warm-up the count must not grow), host syncs per step
   (the plugin's counter, and on CUDA what ``torch.cuda.set_sync_debug_mode`` reports; counted in one extra
   step, not a timed one) and whether every loss was finite. With compile on, by default only
   ``--compile-trainers`` (the plain U-Net and SSS: compiling SAM-2's encoder takes minutes per shape).

SAM-2 trainers: ``nnUNet_sss_sam2_config`` (default here ``sam2.1_hiera_s``; ``--smoke``: the tests' tiny
Hiera) with random weights (no checkpoint can be downloaded on the project's machines). CPS4 runs at 2d only
(its stage-1 model is trained first, small, as the harness does). Meant to finish within about 10 minutes on one
H100 with the defaults (an estimate: never run on a GPU; each group of runs is cut at ``--timeout`` seconds,
what finished is reported; data are made once under ``--workdir``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TESTS = os.path.join(REPO, "tests")
sys.path.insert(0, TESTS)
HEAD_CT = "Dataset993_HeadCTCheck"
COMPILE_TRAINERS = ["nnUNetTrainerPlugin", "nnUNetTrainerSSS"]
FP32_STEPS = 3


def binary(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def paths(root: str) -> dict:
    env = {"nnUNet_raw": os.path.join(root, "raw"), "nnUNet_preprocessed": os.path.join(root, "preprocessed"),
           "nnUNet_results": os.path.join(root, "results")}
    for folder in env.values():
        os.makedirs(folder, exist_ok=True)
    return env


def run(command: list, env: dict) -> None:
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)


def prepare_tiny(root: str) -> dict:
    """The test dataset (901), planned and preprocessed as ``tests/conftest.py`` does."""
    from tiny_dataset import build_tiny_dataset
    env = {**os.environ, **paths(root), "nnUNet_extTrainer": os.path.join(REPO, "trainers")}
    if not os.path.isdir(os.path.join(env["nnUNet_preprocessed"], "Dataset901_Tiny", "nnUNetPlans_2d")):
        shutil.rmtree(os.path.join(env["nnUNet_raw"], "Dataset901_Tiny"), ignore_errors=True)
        build_tiny_dataset(env["nnUNet_raw"], 901)
        run([binary("nnUNetv2_plan_and_preprocess"), "-d", "901", "-c", "2d", "3d_fullres", "-np", "1"], env)
        run([binary("nnUNetv2_sss_preprocess_unlabeled"), "-d", "901", "-c", "2d", "3d_fullres", "-np", "1"], env)
    return env


def prepare_head_ct(root: str, cases: int, configs: list) -> dict:
    """BHSD-like volumes (``bench_gpu_memory.make_dataset``), every third one moved to ``imagesUnlabeled``,
    planned and preprocessed by nnU-Net, the unlabeled pool by the plugin."""
    from bench_gpu_memory import DATASET, make_dataset
    env = {**os.environ, **paths(root), "nnUNet_extTrainer": os.path.join(REPO, "trainers")}
    folder = os.path.join(env["nnUNet_raw"], HEAD_CT)
    if not os.path.isfile(os.path.join(folder, "dataset.json")):
        made = make_dataset(env["nnUNet_raw"], cases)  # writes DATASET (bench_gpu_memory's id)
        os.makedirs(os.path.join(made, "imagesUnlabeled"), exist_ok=True)
        unlabeled = [c for c in range(cases) if c % 3 == 2]
        for case in unlabeled:
            os.replace(os.path.join(made, "imagesTr", f"case_{case:03d}_0000.nii.gz"),
                       os.path.join(made, "imagesUnlabeled", f"case_{case:03d}_0000.nii.gz"))
            os.remove(os.path.join(made, "labelsTr", f"case_{case:03d}.nii.gz"))
        dataset_json = json.load(open(os.path.join(made, "dataset.json")))
        dataset_json["numTraining"] = cases - len(unlabeled)
        json.dump(dataset_json, open(os.path.join(made, "dataset.json"), "w"), indent=1)
        os.replace(made, folder)
    assert DATASET != HEAD_CT
    identifier = HEAD_CT.split("_")[0].removeprefix("Dataset")
    plans = os.path.join(env["nnUNet_preprocessed"], HEAD_CT, "nnUNetPlans.json")
    if not all(os.path.isdir(os.path.join(os.path.dirname(plans), f"nnUNetPlans_{c}")) for c in configs):
        run([binary("nnUNetv2_plan_and_preprocess"), "-d", identifier, "-c", *configs, "-np", "8"], env)
    run([binary("nnUNetv2_sss_preprocess_unlabeled"), "-d", identifier, "-c", *configs, "-np", "8"], env)
    return env


# ---- part 1: float32 first steps against the CPU's reference --------------------------------------------
def fp32_child(trainers: list, device: str, out: str) -> None:
    import torch
    import trainer_harness
    from nnunetv2_sss.training import precision
    trainer_harness.configure(steps=FP32_STEPS, threads=1)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    # every trainer in float32: the precision the reference was recorded in (the CPU's)
    precision.select = lambda mixed_precision, device_, source: precision.MixedPrecision(
        device_.type, None, "mixed precision: none (gpu_check: float32 to compare with the CPU's reference)")
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["nnUNet_results"] = scratch
        results = {}
        for name in trainers:
            if name == "nnUNetTrainerCPS4":
                trainer_harness.prepare_cps4_stage1("901", "2d", 0, trainer_harness.DEFAULT_SEED)
            try:
                results[name] = trainer_harness.run_trainer("901", name, FP32_STEPS, "2d", 0, device=device)
            except Exception as error:  # one trainer's failure is a row of the table, not the end of the check
                results[name] = {"error": f"{type(error).__name__}: {error}"}
    json.dump(results, open(out, "w"))


def fp32_table(results: dict) -> str:
    reference = json.load(open(os.path.join(TESTS, "data", "reference_losses.json")))["trainers"]
    rows = ["| trainer | first labeled loss, device | CPU reference | relative difference | first unlabeled loss, "
            "device | CPU reference | finite (3 steps) | host syncs / step |", "|---|---|---|---|---|---|---|---|"]
    for name, record in results.items():
        if "error" in record:
            rows.append(f"| {name} | failed: {record['error'][:120]} | | | | | | |")
            continue
        cpu = reference.get(name, {})
        loss, cpu_loss = record["losses"][0], (cpu.get("losses") or [math.nan])[0]
        unlabeled = (record["unlabeled_losses"] or [math.nan])[0]
        cpu_unlabeled = (cpu.get("unlabeled_losses") or [math.nan])[0]
        finite = all(math.isfinite(v) for v in record["losses"] + record["unlabeled_losses"])
        rows.append(f"| {name} | {loss:.6g} | {cpu_loss:.6g} | {abs(loss - cpu_loss) / max(abs(cpu_loss), 1e-12):.1e} "
                    f"| {unlabeled:.6g} | {cpu_unlabeled:.6g} | {finite} | {max(record['host_syncs'])} |")
    return "\n".join(rows)


# ---- part 2: speed, memory, compilation, syncs ------------------------------------------------------
def measure_trainer(dataset: str, name: str, configuration: str, steps: int, device: str) -> dict:
    """Two warm-up steps, ``steps`` timed ones, one counted for syncs; this process, fresh statistics."""
    import torch
    import torch._dynamo
    from torch._dynamo.utils import counters
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2_sss.training.host_syncs import HostSyncCounter
    from trainer_harness import _finish_loaders

    torch._dynamo.reset()
    counters.clear()
    cuda = device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)
    trainer = get_trainer_from_args(dataset, configuration, 0, name, "nnUNetPlans", False, torch.device(device))
    losses, seconds = [], []
    try:
        trainer.on_train_start()
        trainer.on_epoch_start()
        trainer.on_train_epoch_start()

        def step(count_syncs: bool = False):
            batch = next(trainer.dataloader_train)
            if getattr(trainer, "dataloader_unlabeled", None) is not None:
                batch["unlabeled"] = next(trainer.dataloader_unlabeled)
            synchronize()
            started = time.perf_counter()
            if count_syncs:
                if cuda:
                    torch.cuda.set_sync_debug_mode("warn")
                with warnings.catch_warnings(record=True) as caught, HostSyncCounter() as counter:
                    warnings.simplefilter("always")
                    output = trainer.train_step(batch)
                if cuda:
                    torch.cuda.set_sync_debug_mode("default")
                synced = (counter.count, sum("synchroniz" in str(w.message) for w in caught))
            else:
                output = trainer.train_step(batch)
                synced = None
            synchronize()
            losses.append(float(output["loss"]))
            return time.perf_counter() - started, synced

        warm = [step()[0] for _ in range(2)]
        graphs_after_warm_up = counters["stats"]["unique_graphs"]
        seconds = [step()[0] for _ in range(steps)]
        graphs_after_steps = counters["stats"]["unique_graphs"]
        syncs = step(count_syncs=not trainer._do_i_compile())[1]  # the counter's mode would re-trace compiled code
        memory = step_peak(trainer, configuration, cuda)
        return {**memory, "seconds_per_iteration": statistics.median(seconds), "warm_up_seconds": sum(warm),
                "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None,
                "graphs": graphs_after_steps, "graphs_after_warm_up": graphs_after_warm_up,
                "host_syncs": syncs, "finite": all(math.isfinite(v) for v in losses),
                "precision": trainer.precision.description.split(" (")[0] if hasattr(trainer, "precision")
                else "nnU-Net's (fp16 autocast + GradScaler on CUDA)",
                "patch": list(trainer.configuration_manager.patch_size), "batch": trainer.batch_size}
    finally:
        _finish_loaders(trainer)


def step_peak(trainer, configuration: str, cuda: bool) -> dict:
    """GiB of one more training step: the allocator's peak (CUDA) and the plugin's tracker (uncompiled runs; the
    bytes allocated before the step added) against the planner's estimate (issue 25)."""
    import torch
    from nnunetv2_sss.training.memory_estimate import estimate_step
    from nnunetv2_sss.training.peak_memory import LiveBytesTracker
    batch = next(trainer.dataloader_train)
    if getattr(trainer, "dataloader_unlabeled", None) is not None:
        batch["unlabeled"] = next(trainer.dataloader_unlabeled)
    trainer.optimizer.zero_grad(set_to_none=True)
    before = torch.cuda.memory_allocated() if cuda else 0
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tracked = not trainer._do_i_compile()
    with LiveBytesTracker(trainer.device.type) if tracked else contextlib.nullcontext() as tracker:
        trainer.train_step(batch)
    if cuda:
        torch.cuda.synchronize()
    try:
        estimate = estimate_step(type(trainer), trainer.plans_manager.plans, trainer.dataset_json, configuration,
                                 sam2_config=os.environ.get("nnUNet_sss_sam2_config")).gpu_bytes / 2 ** 30
    except Exception as error:  # noqa: BLE001 - e.g. CPS4, which the estimate does not run
        estimate = f"{type(error).__name__}"
    return {"step_allocator_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None,
            "step_tracker_gib": (before + tracker.peak) / 2 ** 30 if tracked else None, "step_estimate_gib": estimate}


def speed_child(trainers: list, dataset: str, configuration: str, steps: int, device: str, out: str) -> None:
    import gc
    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    results = {}
    for name in trainers:
        try:
            results[name] = measure_trainer(dataset, name, configuration, steps, device)
        except Exception as error:
            results[name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}
        gc.collect()
        json.dump(results, open(out, "w"))  # what finished survives a timeout


def speed_table(rows: list) -> str:
    lines = ["| configuration | compile | trainer | patch x batch | s / iteration | warm-up s | peak GiB | one step: "
             "allocator GiB | tracker GiB | estimate GiB | graphs (after warm-up) | host syncs / step (counter, torch) "
             "| finite | precision |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for configuration, compiled, name, r in rows:
        if "error" in r:
            lines.append(f"| {configuration} | {compiled} | {name} | failed: {r['error'][:150]} | | | | | | | | | | |")
            continue
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "(CPU)"
        syncs = "not counted (compiled)" if r["host_syncs"] is None else f"{r['host_syncs'][0]}, {r['host_syncs'][1]}"
        lines.append(f"| {configuration} | {compiled} | {name} | {'x'.join(map(str, r['patch']))} x {r['batch']} | "
                     f"{r['seconds_per_iteration']:.3f} | {r['warm_up_seconds']:.1f} | {peak} | "
                     f"{gib(r['step_allocator_gib'])} | {gib(r['step_tracker_gib'])} | {gib(r['step_estimate_gib'])} | "
                     f"{r['graphs']} "
                     f"({r['graphs_after_warm_up']}) | {syncs} | {r['finite']} | {r['precision']} |")
    return "\n".join(lines)


def gib(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else ("-" if value is None else str(value))


def child(command: list, env: dict, timeout: float) -> None:
    try:
        subprocess.run(command, env=env, timeout=timeout, stdout=sys.stderr, stderr=subprocess.STDOUT)
    except subprocess.TimeoutExpired:
        print(f"[gpu_check] timed out after {timeout:.0f} s: {' '.join(command[2:5])}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--configs", nargs="+", default=["2d", "3d_fullres"])
    parser.add_argument("--trainers", nargs="+", default=None, help="default: nnUNetTrainer + every plugin trainer")
    parser.add_argument("--compile-trainers", nargs="*", default=COMPILE_TRAINERS,
                        help="trainers also run with compile on ('all': every trainer; none: no compiled runs)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--timeout", type=float, default=300, help="seconds per group of runs (what finished is kept)")
    parser.add_argument("--smoke", action="store_true", help="check of the code paths: 1 step, the tiny Hiera, "
                        "the tests' tiny dataset (on the CPU nnU-Net never compiles: 'compile on' runs uncompiled)")
    parser.add_argument("--workdir", default=os.path.join(HERE, "work_gpu"))
    parser.add_argument("--json", default=None)
    parser.add_argument("--fp32-child", nargs=2, metavar=("DEVICE", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--speed-child", nargs=5, metavar=("DATASET", "CONFIG", "STEPS", "DEVICE", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fp32_child:
        return fp32_child(args.trainers, *args.fp32_child)
    if args.speed_child:
        dataset, configuration, steps, device, out = args.speed_child
        return speed_child(args.trainers, dataset, configuration, int(steps), device, out)

    import torch
    from plugin_trainers import stepped_trainer_names
    from tiny_sam2 import write_tiny_config
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cuda" and not args.smoke:
        print("[gpu_check] no CUDA device: the CPU check of the code paths (--smoke)", file=sys.stderr)
        args.smoke = True
    trainers = args.trainers or ["nnUNetTrainer"] + stepped_trainer_names()
    compile_trainers = trainers if args.compile_trainers == ["all"] else \
        [t for t in trainers if t in args.compile_trainers]
    steps = 1 if args.smoke else args.steps
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    started = time.perf_counter()
    print(f"# gpu_check on {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'} (torch {torch.__version__})\n")

    tiny_env = prepare_tiny(os.path.join(workdir, "tiny"))
    out = os.path.join(workdir, "fp32.json")
    child([sys.executable, __file__, "--fp32-child", device, out, "--trainers", *stepped_trainer_names()],
          {**tiny_env, "nnUNet_sss_sam2_config": str(write_tiny_config(workdir))}, args.timeout)
    fp32 = json.load(open(out)) if os.path.isfile(out) else {}
    print(f"## First steps in float32 on {device} vs the CPU reference (tiny dataset, 2d)\n")
    print(fp32_table(fp32) + "\n", flush=True)

    # the smoke check: the tiny dataset (a CPU step at a head-CT patch takes minutes)
    dataset, env = ("Dataset901_Tiny", dict(tiny_env)) if args.smoke else \
        (HEAD_CT, prepare_head_ct(os.path.join(workdir, "head_ct"), args.cases, args.configs))
    env.update({"nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "4" if device == "cuda" else "0"),
                "nnUNet_def_n_proc": "1", "nnUNet_sss_seed": "0", "MPLBACKEND": "agg",
                "nnUNet_sss_sam2_checkpoint": "random", "nnUNet_sss_iterations_per_epoch": str(steps + 3),
                "nnUNet_sss_sam2_config": str(write_tiny_config(workdir)) if args.smoke else
                os.environ.get("nnUNet_sss_sam2_config", "sam2.1_hiera_s")})
    rows = []
    for configuration in args.configs:
        for compiled, names in (("off", trainers), ("on", compile_trainers)):
            names = [n for n in names if not (n == "nnUNetTrainerCPS4" and configuration != "2d")]
            if not names:
                continue
            if "nnUNetTrainerCPS4" in names:
                import trainer_harness
                os.environ.update(env)
                with contextlib.redirect_stdout(sys.stderr):  # its epoch lines are not the table's
                    trainer_harness.prepare_cps4_stage1(dataset, "2d", 0, 0)
            out = os.path.join(workdir, f"speed_{configuration}_{compiled}.json")
            if os.path.isfile(out):
                os.remove(out)
            child_env = {**env, "nnUNet_compile": "true" if compiled == "on" else "false"}
            child([sys.executable, __file__, "--speed-child", dataset, configuration, str(steps), device, out,
                   "--trainers", *names], child_env, args.timeout)
            results = json.load(open(out)) if os.path.isfile(out) else {}
            rows += [(configuration, compiled, n, results.get(n, {"error": "not reached (timeout)"})) for n in names]
    print(f"## Speed, memory, compilation, syncs ({dataset}" + ("" if args.smoke else ": head-CT-like plans") + ")\n")
    print(speed_table(rows))
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    if args.json:
        json.dump({"fp32": fp32, "speed": rows}, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
