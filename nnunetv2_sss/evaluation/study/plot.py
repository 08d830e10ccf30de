"""The study's ``learning_curve.png``: mean Dice over seeds against the labeled count."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from nnunetv2_sss.atomic_files import write_atomically
from nnunetv2_sss.evaluation.statistics import mean_std
from nnunetv2_sss.evaluation.study.plan import ALL
from nnunetv2_sss.evaluation.study.rows import values_by_seed


def plot_learning_curve(rows: Sequence[dict], trainers: Sequence[str], counts: Sequence[int], supervised: str,
                        path: str, title: str) -> None:
    """Mean Dice against the labeled count, one line per trainer, error bars = std over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    for index, trainer in enumerate(trainers):
        points = [(n, mean_std(list(values_by_seed(rows, trainer, n).values()))) for n in counts]
        points = [(n, s) for n, s in points if s["n"]]
        if not points:
            continue
        offset = 1 + 0.02 * (index - (len(trainers) - 1) / 2)  # keep error bars apart
        axis.errorbar([n * offset for n, _ in points], [s["mean"] for _, s in points],
                      yerr=[s["std"] if np.isfinite(s["std"]) else 0 for _, s in points],
                      marker="o", capsize=3, label=trainer)
    ceiling = mean_std(list(values_by_seed(rows, supervised, ALL).values()))
    if ceiling["n"]:
        axis.axhline(ceiling["mean"], color="grey", linestyle="--", label=f"{supervised}, all labeled")
        if np.isfinite(ceiling["std"]):
            axis.axhspan(ceiling["mean"] - ceiling["std"], ceiling["mean"] + ceiling["std"], color="grey", alpha=0.15)
    axis.set_xscale("log", base=2)
    axis.set_xlim(min(counts) / 1.5, max(counts) * 1.5)
    axis.set_xticks(list(counts))
    axis.set_xticklabels([str(n) for n in counts])
    axis.set_xlabel("labeled training cases")
    axis.set_ylabel("mean Dice % (test)")
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    write_atomically(path, lambda f: figure.savefig(f, format="png", dpi=120))
    plt.close(figure)
