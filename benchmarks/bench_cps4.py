"""CPS4 costs per iteration; prints one table.

stage 1 — one optimisation step of the default stage-1 model (ViT 192-d, depth 6, 3 heads,
          16-pixel patches; 20 classes as MRSpineSeg; 1 input channel): forward, the stage-1
          loss, backward, Adam step, on random images and label maps.
y_text  — what stage 2 adds per unlabeled batch: the frozen model's attention maps plus
          ``attention_to_label_map`` (bilinear up-sampling, one Otsu threshold per image and
          class with scikit-image on the CPU, stacking).

    python benchmarks/bench_cps4.py [--device cpu|cuda] [--repeats 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import time

import torch

from nnunetv2_sss.cps4.losses import stage1_loss
from nnunetv2_sss.cps4.model import ClassPromptConfig, ClassPromptModel
from nnunetv2_sss.cps4.text_labels import attention_to_label_map
from nnunetv2_sss.cps4.vision import ViTConfig

NUM_CLASSES = 20
CASES = [(48, 6), (256, 12), (512, 12)]  # (square patch size, batch size)


def seconds(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"{'patch':>7} {'batch':>5} {'grid':>7} {'stage-1 step s':>15} {'y_text s':>9} {'of which Otsu+stack s':>22}")
    for size, batch in CASES:
        patch = 8 if size < 64 else 16
        cfg = ClassPromptConfig(vit=ViTConfig(in_channels=1, patch_size=patch, grid_size=(size // patch,) * 2))
        model = ClassPromptModel(cfg, torch.randn(NUM_CLASSES, cfg.text_dim)).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
        images = torch.randn(batch, 1, size, size, device=device)
        segs = torch.randint(0, NUM_CLASSES, (batch, size // 8, size // 8), device=device)
        segs = segs.repeat_interleave(8, 1).repeat_interleave(8, 2)

        def step():
            model.train()
            loss = stage1_loss(model.attention_logits(images), segs)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        with torch.no_grad():
            attention = model.eval()(images)
        def text_labels():
            model.eval()
            with torch.no_grad():
                attention_to_label_map(model(images), (size, size))

        train_s = seconds(step, args.repeats, device)
        text_s = seconds(text_labels, args.repeats, device)
        otsu_s = seconds(lambda: attention_to_label_map(attention, (size, size)), args.repeats, device)
        print(f"{size:>4}^2 {batch:>5} {size // patch:>4}^2 {train_s:>15.3f} {text_s:>9.3f} {otsu_s:>22.3f}")


if __name__ == "__main__":
    main()
