"""The study's ``active_learning.png``: per trainer, mean test Dice over seeds against the labeled scans of
each strategy's rounds; plain and foreground-aware random as the (dashed) reference lines."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from nnunetv2_sss.atomic_files import write_atomically
from nnunetv2_sss.evaluation.statistics import mean_std
from nnunetv2_sss.evaluation.study.active_summary import BASELINES, curve_by_seed
from nnunetv2_sss.evaluation.study.plan import ActiveLearning

REFERENCE_STYLE = {"random": {"color": "black", "linestyle": "--"},
                   "foreground-random": {"color": "grey", "linestyle": "--"}}


def plot_active_learning(rows: Sequence[dict], trainers: Sequence[str], active: ActiveLearning, path: str,
                         title: str) -> None:
    """One panel per trainer; error bars = std over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labeled = [active.initial + r * active.budget for r in range(active.rounds + 1)]
    figure, axes = plt.subplots(1, len(trainers), figsize=(4.2 * len(trainers) + 1, 4.2), sharey=True, squeeze=False)
    for axis, trainer in zip(axes[0], trainers):
        for index, strategy in enumerate(active.strategies):
            curves = curve_by_seed(rows, trainer, strategy, active.initial)
            points = [(n, mean_std([p[n] for p in curves.values() if n in p])) for n in labeled]
            points = [(n, s) for n, s in points if s["n"]]
            if not points:
                continue
            shift = 0.04 * active.budget * (index - (len(active.strategies) - 1) / 2)  # keep error bars apart
            axis.errorbar([n + shift for n, _ in points], [s["mean"] for _, s in points],
                          yerr=[s["std"] if np.isfinite(s["std"]) else 0 for _, s in points], marker="o", capsize=3,
                          label=strategy + (" (reference)" if strategy in BASELINES else ""),
                          **REFERENCE_STYLE.get(strategy, {}))
        axis.set_xticks(labeled)
        axis.set_xlabel("labeled training scans")
        axis.set_title(trainer, fontsize=9)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean Dice % (test)")
    axes[0][-1].legend(fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    write_atomically(path, lambda f: figure.savefig(f, format="png", dpi=120))
    plt.close(figure)
