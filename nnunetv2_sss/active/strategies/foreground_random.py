"""``foreground-random``: nnActive's foreground-aware random sampling (Lüth et al. 2025), for whole scans.

nnActive's improved random baseline makes a share of its random patches contain foreground. For whole
scans: scans are drawn one after the other without replacement, each with probability proportional to
its predicted foreground volume (all foreground classes, mL), so that scans without any predicted lesion
are drawn only when no scan with one is left (then uniformly)."""
from __future__ import annotations

import numpy as np

from nnunetv2_sss.active.strategies.base import Strategy


class ForegroundRandom(Strategy):
    name = "foreground-random"
    summary = ("k scans drawn with probability proportional to their predicted foreground volume (seeded by "
               "--seed); score: that probability at the first draw")

    def rank(self, cases, records, k, rng):
        weights = np.array([float(records[case].volumes_ml.sum()) for case in cases])
        first = weights / weights.sum() if weights.sum() > 0 else np.full(len(cases), 1.0 / len(cases))
        remaining, chosen = list(range(len(cases))), []
        for _ in range(k):
            left = weights[remaining]
            p = left / left.sum() if left.sum() > 0 else np.full(len(remaining), 1.0 / len(remaining))
            position = min(int(np.searchsorted(np.cumsum(p), rng.random(), side="right")), len(remaining) - 1)
            chosen.append(remaining.pop(position))
        return [(cases[i], float(first[i])) for i in chosen]
