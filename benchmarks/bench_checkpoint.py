"""Cost of writing ``checkpoint_latest.pth`` after every epoch, and checkpoint / export sizes,
on the built-in demo (``make demo``: ``nnUNetTrainerSSS``, ``2d``, 25 iterations per epoch,
5 validation iterations, CPU, ``nnUNet_n_proc_DA=0``; 3 epochs instead of the demo's 8 by
default: the cost is per epoch).

    .venv/bin/python benchmarks/bench_checkpoint.py [--trainers nnUNetTrainerSSS] [--epochs 3]
        [--iterations 25] [--device cpu] [--workdir benchmarks/work]

Per trainer: one ``nnUNetv2_train`` run with the default cadence (``nnUNet_sss_save_every`` = 1)
(``--reuse``: the run already in ``--workdir``).
The trainer logs nnU-Net's epoch time (training + validation iterations) and the time of each
``checkpoint_latest.pth`` write (``torch.save`` + ``fsync`` + rename) measured around the write;
overhead = sum of the writes / (sum of epoch times + writes). Then the sizes of
``checkpoint_final.pth`` and of the ``nnUNetv2_export_model_to_zip`` archive of that fold, in
the current format (teacher as ``network_weights``, the student beside it), in the earlier
format (``teacher_weights`` as well, the same tensors as ``network_weights``, as the earlier
``teacher.state_dict()`` twice gave them: ``torch.save`` writes a shared storage once), with an
independent copy of the teacher (what storing it twice would cost) and without
``optimizer_state``; and the bytes of each entry saved alone (entries share no storage with
each other, so they add up to the file).
"""
from __future__ import annotations

import argparse
import copy
import glob
import io
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_trainers import prepare  # noqa: E402  (demo dataset, planned and preprocessed)

EPOCH_TIME = re.compile(r"Epoch time: ([\d.]+) s")
LATEST = re.compile(r"checkpoint_latest\.pth: (\d+) epochs done \(written in ([\d.]+) s\)")


def binary(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def train(env: dict, trainer: str, device: str) -> str:
    """Fold 0 of the demo's 2d configuration, from scratch; returns the fold folder."""
    fold = os.path.join(env["nnUNet_results"], "Dataset990_DemoBrain", f"{trainer}__nnUNetPlans__2d", "fold_0")
    shutil.rmtree(fold, ignore_errors=True)
    subprocess.run([binary("nnUNetv2_train"), "990", "2d", "0", "-tr", trainer, "-device", device], env=env,
                   check=True, stdout=subprocess.DEVNULL)
    return fold


def timings(fold: str):
    log = sorted(glob.glob(os.path.join(fold, "training_log_*.txt")))[-1]
    text = open(log).read()
    epochs = [float(t) for t in EPOCH_TIME.findall(text)]
    writes = {int(e): float(s) for e, s in LATEST.findall(text)}
    return epochs, writes


def nbytes(obj) -> int:
    import torch
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.tell()


def export_zip_size(env: dict, trainer: str, workdir: str) -> int:
    archive = os.path.join(workdir, f"export_{trainer}.zip")
    if os.path.exists(archive):
        os.remove(archive)
    subprocess.run([binary("nnUNetv2_export_model_to_zip"), "-d", "990", "-o", archive, "-c", "2d", "-tr", trainer,
                    "-f", "0"], env=env, check=True, stdout=subprocess.DEVNULL)
    return os.path.getsize(archive)


def sizes(env: dict, trainer: str, fold: str, workdir: str) -> list:
    """``(format, checkpoint bytes, zip bytes)`` rows; the fold's checkpoint_final.pth is put back."""
    import torch
    final = os.path.join(fold, "checkpoint_final.pth")
    original = final + ".bench_original"
    shutil.copyfile(final, original)
    checkpoint = torch.load(final, map_location="cpu", weights_only=False)
    variants = {"current (network_weights = teacher, + student_weights)": checkpoint}
    if "student_weights" in checkpoint and "teacher_weights" not in checkpoint:
        variants["earlier (+ teacher_weights, shared tensors)"] = {
            **checkpoint, "teacher_weights": checkpoint["network_weights"]}
        # not a format any version wrote: what the teacher costs where it is not shared storage
        variants["(hypothetical) + teacher_weights as an independent copy"] = {
            **checkpoint, "teacher_weights": copy.deepcopy(checkpoint["network_weights"])}
    variants["current without optimizer_state"] = {k: v for k, v in checkpoint.items() if k != "optimizer_state"}
    rows = []
    try:
        for name, variant in variants.items():
            torch.save(variant, final)
            rows.append((name, os.path.getsize(final), export_zip_size(env, trainer, workdir)))
    finally:
        os.replace(original, final)
    parts = [(key, nbytes(value)) for key, value in checkpoint.items()]
    return rows, parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainers", nargs="+", default=["nnUNetTrainerSSS"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=25)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", default=os.path.join(HERE, "work"))
    parser.add_argument("--reuse", action="store_true",
                        help="no training: read the logs and checkpoints of an earlier run in --workdir")
    args = parser.parse_args()

    env = prepare(args.workdir, ["2d"])
    env.update({"nnUNet_n_proc_DA": "0", "nnUNet_sss_num_epochs": str(args.epochs),
                "nnUNet_sss_iterations_per_epoch": str(args.iterations), "nnUNet_sss_val_iterations_per_epoch": "5",
                "MPLBACKEND": "agg"})
    env.setdefault("nnUNet_sss_sam2_config", "sam2_hiera_demo")
    env.setdefault("nnUNet_sss_sam2_checkpoint", "random")
    env.pop("nnUNet_sss_save_every", None)

    overhead_rows, size_tables = [], []
    for trainer in args.trainers:
        started = time.time()
        if args.reuse:
            fold = os.path.join(env["nnUNet_results"], "Dataset990_DemoBrain", f"{trainer}__nnUNetPlans__2d", "fold_0")
        else:
            fold = train(env, trainer, args.device)
        wall = float("nan") if args.reuse else time.time() - started
        epochs, writes = timings(fold)
        written = sum(writes.values())
        overhead_rows.append((trainer, len(epochs), sum(epochs), len(writes), written,
                              written / max(len(writes), 1), 100 * written / (sum(epochs) + written), wall))
        size_tables.append((trainer, *sizes(env, trainer, fold, args.workdir)))

    print(f"\ncheckpoint_latest.pth after every epoch, demo 2d, {args.epochs} x {args.iterations} iterations "
          f"(+5 validation), {args.device}")
    print("| trainer | epochs | epoch time total (s) | latest writes | write time total (s) | per write (s) "
          "| overhead % | wall incl. start-up + final validation (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for trainer, n, total, count, written, per, percent, wall in overhead_rows:
        print(f"| {trainer} | {n} | {total:.1f} | {count} | {written:.2f} | {per:.3f} | {percent:.2f} | {wall:.0f} |")
    mib = lambda b: f"{b / 2 ** 20:.2f}"
    for trainer, rows, parts in size_tables:
        print(f"\n{trainer}: checkpoint_final.pth and nnUNetv2_export_model_to_zip (-c 2d -f 0) sizes")
        print("| format | checkpoint_final.pth (MiB) | bytes vs current | export zip (MiB) | bytes vs current |\n"
              "|---|---|---|---|---|")
        for name, checkpoint_bytes, zip_bytes in rows:
            print(f"| {name} | {mib(checkpoint_bytes)} | {checkpoint_bytes - rows[0][1]:+,d} | {mib(zip_bytes)} "
                  f"| {zip_bytes - rows[0][2]:+,d} |")
        print(f"\n{trainer}: entries of checkpoint_final.pth, each saved alone")
        print("| entry | MiB |\n|---|---|")
        for key, size in sorted(parts, key=lambda p: -p[1]):
            print(f"| {key} | {mib(size)} |")


if __name__ == "__main__":
    main()
