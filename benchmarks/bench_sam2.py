"""Training iteration time, peak memory and prediction time: nnUNetTrainerSAM2 (tiny and small
Hiera, random weights) vs nnUNetTrainer on the same nnU-Net plans (2d and 3d_fullres); prints a table.

Dataset: the demo dataset (``nnunetv2_sss.data.demo_dataset``: MNI152 pseudo-subjects, about
26 x 64 x 56 voxels, 1 channel), planned and preprocessed by nnU-Net once in ``--workdir``.
Each row runs in its own process: it builds the trainer as ``nnUNetv2_train`` does
(``on_train_start``), draws one batch from nnU-Net's training loader, runs ``--warmup``
then ``--iterations`` ``train_step`` calls on that batch (data loading excluded), saves the
checkpoint, and predicts ``--cases`` test images with ``nnUNetPredictor`` (no mirroring
TTA; preprocessing + sliding window + resampling per case).

Memory: on CPU the process's resident set before the first step and its peak after the
steps (``ru_maxrss``); on CUDA ``torch.cuda.max_memory_allocated`` during the timed steps.

    python benchmarks/bench_sam2.py [--workdir benchmarks/work/sam2] [--device cpu|cuda]
                                    [--iterations 5] [--warmup 1] [--cases 2] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

DATASET_ID = 990
DATASET_NAME = "Dataset990_DemoBrain"
ROWS = [("nnUNetTrainer", None), ("nnUNetTrainerSAM2", "sam2.1_hiera_t"), ("nnUNetTrainerSAM2", "sam2.1_hiera_s")]
TRAINERS_FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "trainers")


def environment(workdir: str, sam2_config) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update({"nnUNet_raw": os.path.join(workdir, "raw"),
                "nnUNet_preprocessed": os.path.join(workdir, "preprocessed"),
                "nnUNet_results": os.path.join(workdir, "results"), "nnUNet_extTrainer": TRAINERS_FOLDER,
                "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1", "nnUNet_compile": "false"})
    if sam2_config:
        env.update({"nnUNet_sss_sam2_config": sam2_config, "nnUNet_sss_sam2_checkpoint": "random"})
    return env


def prepare_dataset(workdir: str, cases: int) -> None:
    """Demo dataset (8 labeled, ``cases`` test images) planned for 2d and 3d_fullres, once."""
    env = environment(workdir, None)
    if os.path.isfile(os.path.join(env["nnUNet_preprocessed"], DATASET_NAME, "nnUNetPlans.json")):
        return
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[key], exist_ok=True)
    from nnunetv2_sss.data.demo_dataset import build_demo_dataset
    build_demo_dataset(env["nnUNet_raw"], DATASET_ID, num_labeled=8, num_unlabeled=0, num_test=cases)
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "nnUNetv2_plan_and_preprocess"), "-d",
                    str(DATASET_ID), "-c", "2d", "3d_fullres", "-np", "1"], env=dict(env, nnUNet_n_proc_DA="1"),
                   check=True, capture_output=True)


def measure(trainer_name: str, configuration: str, args) -> dict:
    """One row, in this process (called in a child process by :func:`main`)."""
    import numpy as np
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.run.run_training import get_trainer_from_args

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    trainer = get_trainer_from_args(DATASET_NAME, configuration, 0, trainer_name, device=device)
    trainer.on_train_start()
    batch = next(trainer.dataloader_train)
    trainer.network.train()
    rss_before = _current_rss_mb()

    def steps(n):
        for _ in range(n):
            trainer.train_step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()

    steps(args.warmup)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    steps(args.iterations)
    seconds_per_iteration = (time.perf_counter() - start) / args.iterations
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" \
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    predictor = nnUNetPredictor(use_mirroring=False, device=device, verbose=False, verbose_preprocessing=False,
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(trainer.output_folder_base, (0,), "checkpoint_final.pth")
    images = sorted(os.listdir(os.path.join(nnUNet_raw, DATASET_NAME, "imagesTs")))[: args.cases]
    times = []
    for name in images:
        image, properties = SimpleITKIO().read_images([os.path.join(nnUNet_raw, DATASET_NAME, "imagesTs", name)])
        start = time.perf_counter()
        predictor.predict_single_npy_array(image, properties)
        times.append(time.perf_counter() - start)
    return {"trainer": trainer_name, "configuration": configuration,
            "patch": "x".join(map(str, trainer.configuration_manager.patch_size)), "batch": trainer.batch_size,
            "params_M": sum(p.numel() for p in trainer.network.parameters()) / 1e6,
            "s_per_iter": seconds_per_iteration, "mem_before_MB": rss_before, "peak_MB": peak,
            "predict_s_per_case": float(np.mean(times))}


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "work", "sam2"))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--configurations", nargs="+", default=["2d", "3d_fullres"])
    parser.add_argument("--child", nargs=2, metavar=("TRAINER", "CONFIGURATION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(*args.child, args)))
        return

    workdir = os.path.abspath(args.workdir)
    prepare_dataset(workdir, args.cases)
    memory = "peak MB (CUDA alloc)" if args.device == "cuda" else "RSS before / peak MB"
    header = f"{'trainer':<18} {'encoder':<15} {'config':<10} {'patch':<10} {'batch':>5} {'params M':>8} " \
             f"{'s / iter':>9} {memory:>22} {'predict s / case':>16}"
    print(header)
    print("-" * len(header))
    for configuration in args.configurations:
        for trainer_name, sam2_config in ROWS:
            command = [sys.executable, os.path.abspath(__file__), "--child", trainer_name, configuration,
                       "--device", args.device, "--iterations", str(args.iterations), "--warmup", str(args.warmup),
                       "--cases", str(args.cases), "--threads", str(args.threads)]
            done = subprocess.run(command, env=environment(workdir, sam2_config), capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                sys.exit(f"{trainer_name} {configuration} failed:\n{done.stderr[-3000:]}")
            r = json.loads(lines[-1][len("RESULT "):])
            mem = f"{r['peak_MB']:.0f}" if args.device == "cuda" else f"{r['mem_before_MB']:.0f} / {r['peak_MB']:.0f}"
            print(f"{trainer_name:<18} {sam2_config or 'PlainConvUNet':<15} {configuration:<10} {r['patch']:<10} "
                  f"{r['batch']:>5} {r['params_M']:>8.2f} {r['s_per_iter']:>9.3f} {mem:>22} "
                  f"{r['predict_s_per_case']:>16.2f}", flush=True)


if __name__ == "__main__":
    main()
