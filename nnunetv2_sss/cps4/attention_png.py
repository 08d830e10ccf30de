"""Class-specific attention maps as PNGs (the paper's Fig. 5): one file per class.

Rows: the given slices. Columns: image (first channel), ground-truth mask of the class,
attention map ``A_k`` bilinearly up-sampled to the image (colour scale fixed to 0..1).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Sequence

import torch
import torch.nn.functional as F


def attention_png_name(label_value: int, label_name: str) -> str:
    return f"class_{label_value:02d}_{re.sub(r'[^A-Za-z0-9_-]+', '_', label_name)}.png"


def save_attention_pngs(folder: Path, images: torch.Tensor, segs: torch.Tensor, attention: torch.Tensor,
                        slice_names: Sequence[str], label_names: Sequence[str]) -> List[Path]:
    """``images [N, C, H, W]``, ``segs [N, H, W]``, ``attention [N, K, h, w]`` -> K PNG files in ``folder``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    folder.mkdir(parents=True, exist_ok=True)
    up = F.interpolate(attention.detach().float().cpu(), size=tuple(images.shape[-2:]),
                       mode="bilinear", align_corners=False)
    n = images.shape[0]
    written = []
    for k, label_name in enumerate(label_names):
        fig = Figure(figsize=(7.5, 2.5 * n))
        FigureCanvasAgg(fig)
        axes = fig.subplots(n, 3, squeeze=False)
        for i in range(n):
            panels = [(images[i, 0], "gray", None, slice_names[i]),
                      ((segs[i] == k).float(), "gray", (0, 1), f"mask: {label_name}"),
                      (up[i, k], "viridis", (0, 1), f"attention: {label_name}")]
            for ax, (img, cmap, vrange, title) in zip(axes[i], panels):
                kwargs = {} if vrange is None else {"vmin": vrange[0], "vmax": vrange[1]}
                ax.imshow(img.cpu().numpy(), cmap=cmap, **kwargs)
                ax.set_title(title, fontsize=8)
                ax.axis("off")
        fig.tight_layout()
        path = folder / attention_png_name(k, label_name)
        fig.savefig(path, dpi=80)
        written.append(path)
    return written
