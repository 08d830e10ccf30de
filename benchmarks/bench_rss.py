"""Host memory (RSS) of trainers at small batch sizes: where a semi-supervised trainer's batch-independent
peak comes from (issue 19).

    .venv/bin/python benchmarks/bench_rss.py [--trainers nnUNetTrainerPlugin nnUNetTrainerUniMatchV2 ...] \
        [--batch 1] [--patch 20,80,80] [--n-proc-da 0 2] [--iterations 2] [--sam2-config sam2_hiera_demo]

Each trainer runs in a fresh process, in-process as ``nnUNetv2_train`` runs it (``on_train_start``,
``on_epoch_start``, ``on_train_epoch_start``, ``--iterations`` ``train_step`` calls), on the demo dataset's
``3d_fullres`` with a plans copy of the given patch and batch size (``nnUNetPlans_rss``, same preprocessed
data). A sampling thread (every 5 ms) records the peak of

- ``main``: the training process's own resident set (``VmRSS``; ``ru_maxrss`` is its exact peak);
- ``tree RSS``: the sum of ``VmRSS`` of the training process and every descendant (the data-augmentation
  workers), what a process-tree monitor or a container's accounting sees; shared pages count once per process;
- ``tree PSS``: the same with each shared page split among its sharers (``smaps_rollup``), closer to the
  memory the tree really takes;

and the number of worker processes; plus the RSS after each stage (initialise, loaders started, each step).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import resource
import subprocess
import sys
import threading
import time

from bench_trainers import HERE, prepare

MB = 2 ** 20


def _children(pid: int) -> list:
    found, stack = [], [pid]
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    while stack:
        for child in parents.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    """Peaks of the process's RSS, the tree's RSS and PSS and the number of descendants."""

    def __init__(self, interval: float = 0.005):
        super().__init__(daemon=True)
        self.interval, self.stop = interval, threading.Event()
        self.peak = {"main": 0, "tree_rss": 0, "tree_pss": 0, "workers": 0}

    def sample(self) -> dict:
        pid = os.getpid()
        processes = [pid, *_children(pid)]
        now = {"main": _status_kb(pid, "VmRSS") * 1024,
               "tree_rss": sum(_status_kb(p, "VmRSS") for p in processes) * 1024,
               "tree_pss": sum(_pss_kb(p) for p in processes) * 1024, "workers": len(processes) - 1}
        for key, value in now.items():
            self.peak[key] = max(self.peak[key], value)
        return now

    def run(self):
        while not self.stop.is_set():
            self.sample()
            time.sleep(self.interval)


def measure(trainer_name: str, plans: str, iterations: int) -> dict:
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    sampler = Sampler()
    sampler.start()
    stages = {}

    def stage(name):
        stages[name] = {k: v for k, v in sampler.sample().items()}

    stage("start")
    trainer = get_trainer_from_args("990", "3d_fullres", 0, trainer_name, plans, False, torch.device("cpu"))
    trainer.initialize()
    stage("initialised (network, teacher)")
    trainer.on_train_start()
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    stage("loaders started")
    for i in range(iterations):
        trainer.train_step(next(trainer.dataloader_train))
        stage(f"step {i + 1}")
    sampler.stop.set()
    sampler.join()
    peak = dict(sampler.peak, ru_maxrss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    for name in ("dataloader_train", "dataloader_val", "dataloader_unlabeled"):
        finish = getattr(getattr(trainer, name, None), "_finish", None)
        if finish is not None:
            finish()
    peak["children_maxrss"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"peak": peak, "stages": stages, "batch": trainer.batch_size,
            "patch": "x".join(map(str, trainer.configuration_manager.patch_size))}


def whole(trainer: str, plans: str, env: dict) -> dict:
    """``nnUNetv2_train`` (training, checkpoint, final validation) in a subprocess, its process tree sampled
    every 5 ms; the peak of the largest process and of the tree, and the last output line before each."""
    binary = os.path.join(os.path.dirname(sys.executable), "nnUNetv2_train")
    process = subprocess.Popen([binary, "990", "3d_fullres", "0", "-tr", trainer, "-p", plans, "-device", "cpu"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines = []
    reader = threading.Thread(target=lambda: [lines.append(line.strip()) for line in process.stdout], daemon=True)
    reader.start()
    peak = {"largest": (0, ""), "tree_rss": (0, ""), "tree_pss": (0, "")}
    while process.poll() is None:
        processes = [process.pid, *_children(process.pid)]
        rss = [_status_kb(p, "VmRSS") * 1024 for p in processes]
        now = {"largest": max(rss), "tree_rss": sum(rss), "tree_pss": sum(_pss_kb(p) for p in processes) * 1024}
        last = next((line for line in reversed(lines) if line), "")
        for key, value in now.items():
            if value > peak[key][0]:
                peak[key] = (value, last)
        time.sleep(0.005)
    reader.join()
    if process.returncode:
        raise RuntimeError("\n".join(lines[-20:]))
    return {key: {"bytes": value, "after": line[:100]} for key, (value, line) in peak.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainers", nargs="+", default=["nnUNetTrainerPlugin", "nnUNetTrainerMeanTeacher",
                                                          "nnUNetTrainerUniMatchV2", "nnUNetTrainerSAM2",
                                                          "nnUNetTrainerSSS"])
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--patch", default="20,80,80")
    parser.add_argument("--n-proc-da", nargs="+", default=["0", "2"])
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--sam2-config", default="sam2_hiera_demo")
    parser.add_argument("--workdir", default=os.path.join(HERE, "work"))
    parser.add_argument("--json", default=None)
    parser.add_argument("--whole", action="store_true", help="run nnUNetv2_train (with its final validation) "
                                                             "in a subprocess and sample its process tree")
    parser.add_argument("--one", nargs=2, metavar=("TRAINER", "PLANS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(repr(measure(args.one[0], args.one[1], args.iterations)))
        return
    env = {**prepare(os.path.abspath(args.workdir), ["3d_fullres"]), "nnUNet_sss_seed": "0",
           "nnUNet_sss_sam2_config": args.sam2_config, "nnUNet_sss_sam2_checkpoint": "random",
           "nnUNet_sss_num_epochs": "1", "nnUNet_sss_iterations_per_epoch": str(args.iterations),
           "nnUNet_sss_val_iterations_per_epoch": "1", "MPLBACKEND": "agg"}
    folder = os.path.join(env["nnUNet_preprocessed"], "Dataset990_DemoBrain")
    with open(os.path.join(folder, "nnUNetPlans.json")) as f:
        base = json.load(f)
    results = []
    print("| trainer | nnUNet_n_proc_DA | patch | batch | peak main RSS MB | peak tree RSS MB | peak tree PSS MB | "
          "workers | main RSS after init / loaders / steps MB |\n|---|---|---|---|---|---|---|---|---|")
    for batch in args.batch:
        plans = dict(base, plans_name=f"nnUNetPlans_rss{batch}")
        plans["configurations"] = {**base["configurations"]}
        plans["configurations"]["3d_fullres"] = dict(base["configurations"]["3d_fullres"], batch_size=batch,
                                                     patch_size=[int(n) for n in args.patch.split(",")])
        with open(os.path.join(folder, f"nnUNetPlans_rss{batch}.json"), "w") as f:
            json.dump(plans, f, indent=1)
        for n_proc in args.n_proc_da:
            for trainer in args.trainers:
                if args.whole:
                    r = whole(trainer, f"nnUNetPlans_rss{batch}", {**env, "nnUNet_n_proc_DA": n_proc})
                    results.append({"trainer": trainer, "n_proc_DA": n_proc, "batch": batch, "whole": r})
                    print(f"| {trainer} (nnUNetv2_train) | {n_proc} | {args.patch} | {batch} | "
                          f"{r['largest']['bytes'] / MB:.0f} (after: {r['largest']['after']}) | "
                          f"{r['tree_rss']['bytes'] / MB:.0f} | {r['tree_pss']['bytes'] / MB:.0f} | | |", flush=True)
                    continue
                output = subprocess.run([sys.executable, __file__, "--one", trainer, f"nnUNetPlans_rss{batch}",
                                         "--iterations", str(args.iterations)],
                                        env={**env, "nnUNet_n_proc_DA": n_proc}, capture_output=True, text=True)
                if output.returncode:
                    print(f"| {trainer} | {n_proc} | failed: {output.stderr.strip().splitlines()[-1]} |||||||")
                    continue
                r = ast.literal_eval(output.stdout.strip().splitlines()[-1])
                results.append({"trainer": trainer, "n_proc_DA": n_proc, **r})
                p, s = r["peak"], r["stages"]
                progress = " / ".join(f"{v['main'] / MB:.0f}" for k, v in s.items() if k != "start")
                print(f"| {trainer} | {n_proc} | {r['patch']} | {r['batch']} | {p['ru_maxrss'] / MB:.0f} | "
                      f"{p['tree_rss'] / MB:.0f} | {p['tree_pss'] / MB:.0f} | {p['workers']} | {progress} |",
                      flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
