"""PCSW throughput and DFE forward time; prints two tables.

PCSW: 32×128×128 predicted label volumes with 6 foreground classes, one thread
(target ≥ 50 volumes/s). Three kinds of volume:
  blobs — smooth, irregular 3-D blobs of random extent, a few small false-positive specks
          (what a reasonable teacher predicts);
  tubes — every class a tube through all slices (every window valid at once);
  noise — argmax of smoothed noise, every class everywhere in fragments (the worst case:
          many windows are checked and fail).
DFE: both views (training), twice the forward, one view, on the SAM-2 encoder's output
(FPN neck: 256 channels at in-plane strides 4, 8, 16, 32; the slice axis of 3-D patches is
not downsampled) for a 2-D 256×256 patch and a 3-D 16×128×128 patch, batch 2.

    python benchmarks/bench_pcsw.py [--volumes 20] [--repeats 3] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy import ndimage

from nnunetv2_sss.sss.dfe import DiscriminativeFeatureEnhancement
from nnunetv2_sss.sss.pcsw import pcsw_prompts

SHAPE = (32, 128, 128)
NUM_CLASSES = 6


def blob_volume(rng: np.random.Generator) -> np.ndarray:
    """Each class one smooth irregular ellipsoid (random centre, radii 4–24 slices × 8–30 voxels)
    plus, with probability 0.3, a small speck elsewhere; later classes overwrite earlier ones."""
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in SHAPE], indexing="ij")
    wobble = ndimage.gaussian_filter(rng.standard_normal(SHAPE).astype(np.float32), (2, 6, 6)) * 8
    labels = np.zeros(SHAPE, np.uint8)
    for k in range(1, NUM_CLASSES + 1):
        centre = rng.uniform((0, 20, 20), (SHAPE[0], SHAPE[1] - 20, SHAPE[2] - 20))
        radii = rng.uniform((4, 8, 8), (24, 30, 30))
        inside = ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 \
            + ((x - centre[2]) / radii[2]) ** 2 + wobble / radii[1:].mean() < 1
        if rng.random() < 0.3:
            c = rng.integers((0, 0, 0), SHAPE)
            inside[c[0]:c[0] + 2, c[1]:c[1] + 4, c[2]:c[2] + 4] = True
        labels[inside] = k
    return labels


def tube_volume(rng: np.random.Generator) -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint8)
    for k in range(1, NUM_CLASSES + 1):
        y0, x0 = rng.integers(0, SHAPE[1] - 24, size=2)
        labels[:, y0:y0 + 20, x0:x0 + 20] = k
    return labels


def noise_volume(rng: np.random.Generator) -> np.ndarray:
    fields = ndimage.gaussian_filter(rng.standard_normal((NUM_CLASSES + 1,) + SHAPE).astype(np.float32),
                                     (0, 2, 6, 6))
    return fields.argmax(0).astype(np.uint8)


def bench_pcsw(volumes: int, repeats: int) -> None:
    print(f"PCSW, {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]}, {NUM_CLASSES} classes, tau 0.8, 1 thread")
    print("vol/s and ms/vol from process CPU time (robust to other jobs on the machine); wall in brackets")
    print(f"{'volumes':8s} {'vol/s':>8s} {'ms/vol':>8s} {'(wall ms)':>10s} {'accepted':>9s} {'classes/vol':>12s} "
          f"{'prompts/vol':>12s}")
    for name, make in (("blobs", blob_volume), ("tubes", tube_volume), ("noise", noise_volume)):
        rng = np.random.default_rng(0)
        data = [make(rng) for _ in range(volumes)]
        prompts = [pcsw_prompts(v) for v in data]                        # warm-up, and the statistics
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(repeats):
            for v in data:
                pcsw_prompts(v)
        per_volume = (time.process_time() - cpu_start) / (repeats * volumes)
        wall = (time.perf_counter() - start) / (repeats * volumes)
        accepted = np.mean([len(p) > 0 for p in prompts])
        classes = np.mean([len({q.label for q in p}) for p in prompts])
        count = np.mean([len(p) for p in prompts])
        print(f"{name:8s} {1 / per_volume:8.1f} {per_volume * 1e3:8.2f} {wall * 1e3:10.2f} {accepted:9.2f} "
              f"{classes:12.2f} {count:12.1f}")


def bench_dfe(device: str, repeats: int) -> None:
    widths = (256, 256, 256, 256)
    cases = {"2d 256x256": (2, [(256 // s, 256 // s) for s in (4, 8, 16, 32)]),
             "3d 16x128x128": (3, [(16, 128 // s, 128 // s) for s in (4, 8, 16, 32)])}
    print(f"\nDFE, SAM-2 neck widths {widths}, batch 2, {device}, float32, ms per call; both views = the")
    print("two decoder inputs of a training step (pair), one view = labeled patch / teacher / inference")
    print(f"{'patch':15s} {'both views':>11s} {'2x forward':>11s} {'one view':>9s} {'both fwd+bwd':>13s}")
    for name, (dim, spatial) in cases.items():
        dfe = DiscriminativeFeatureEnhancement(widths, dim).to(device)
        f_a = [torch.randn(2, c, *s, device=device) for c, s in zip(widths, spatial)]
        f_b = [torch.randn(2, c, *s, device=device) for c, s in zip(widths, spatial)]

        def timed(fn) -> float:
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            if device == "cuda":
                torch.cuda.synchronize()
            return (time.perf_counter() - start) / repeats * 1e3

        with torch.no_grad():
            pair = timed(lambda: dfe.pair(f_a, f_b))
            twice = timed(lambda: (dfe(f_a, f_b), dfe(f_b, f_a)))
            one = timed(lambda: dfe(f_a))
        backward = timed(lambda: sum(o.sum() for out in dfe.pair(f_a, f_b) for o in out).backward())
        print(f"{name:15s} {pair:11.1f} {twice:11.1f} {one:9.1f} {backward:13.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    bench_pcsw(args.volumes, args.repeats)
    bench_dfe(args.device, args.repeats)


if __name__ == "__main__":
    main()
