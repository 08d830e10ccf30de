"""``random``: plain random sampling, the baseline every strategy must beat."""
from __future__ import annotations

from nnunetv2_sss.active.strategies.base import Strategy


class RandomScans(Strategy):
    name = "random"
    summary = "k scans drawn uniformly (seeded by --seed); score: 1 / pool size"
    scores_pool = False

    def rank(self, cases, records, k, rng):
        order = rng.permutation(len(cases))[:k]
        return [(cases[i], 1.0 / len(cases)) for i in order]
