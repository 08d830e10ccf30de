"""Statistics over repeated runs (seeds of a study, folds of a results table).

Every spread here is the *sample* standard deviation (``ddof=1``): the runs are a sample of the
seeds or folds one could have drawn, and with the 3-5 runs a study or cross-validation has, the
population formula (``ddof=0``) understates the spread by a factor ``sqrt((n-1)/n)`` (0.82 for 3).
One run has no spread: its std is NaN. (Per-case summaries of ``nnUNetv2_sss_evaluate`` keep
``ddof=0`` over cases, as the papers report them.)
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    """``{"mean", "std", "n"}`` of the finite values: mean, sample std (ddof 1; NaN with fewer
    than two values) and their count (NaN mean and std when there is none)."""
    finite = np.asarray([v for v in values if np.isfinite(v)], float)
    if finite.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std(ddof=1)) if finite.size > 1 else float("nan"),
            "n": int(finite.size)}


def paired_comparison(trainer_values: Dict[int, float], supervised_values: Dict[int, float],
                      min_seeds_for_test: int = 5) -> Dict[str, object]:
    """Differences trainer - supervised over the seeds both have (same split, same seed): mean,
    sample std, wins (difference > 0) of n, and the two-sided paired Wilcoxon signed-rank p-value
    (``scipy.stats.wilcoxon`` of the differences) when at least ``min_seeds_for_test`` pairs exist."""
    seeds = sorted(s for s in trainer_values if s in supervised_values
                   and np.isfinite(trainer_values[s]) and np.isfinite(supervised_values[s]))
    differences = np.array([trainer_values[s] - supervised_values[s] for s in seeds], float)
    result = {"seeds": seeds, "differences": differences.tolist(), **mean_std(differences),
              "wins": int((differences > 0).sum()), "p_wilcoxon": float("nan")}
    if len(seeds) >= min_seeds_for_test and np.any(differences != 0):  # all zero: no test (NaN)
        from scipy.stats import wilcoxon
        result["p_wilcoxon"] = float(wilcoxon(differences).pvalue)
    return result


def gap_closed(trainer_values: Dict[int, float], supervised_values: Dict[int, float],
               ceiling_values: Dict[int, float]) -> Dict[str, float]:
    """``(mean trainer - mean supervised) / (mean ceiling - mean supervised)`` over the seeds all three
    have; NaN when there is no gap (the ceiling's mean is not above the supervised one's)."""
    seeds = [s for s in trainer_values if s in supervised_values and s in ceiling_values
             and all(np.isfinite(v[s]) for v in (trainer_values, supervised_values, ceiling_values))]
    if not seeds:
        return {"share": float("nan"), "n": 0, "trainer": float("nan"), "supervised": float("nan"),
                "ceiling": float("nan")}
    trainer, supervised, ceiling = (float(np.mean([v[s] for s in seeds]))
                                    for v in (trainer_values, supervised_values, ceiling_values))
    gap = ceiling - supervised
    return {"share": (trainer - supervised) / gap if gap > 0 else float("nan"), "n": len(seeds),
            "trainer": trainer, "supervised": supervised, "ceiling": ceiling}
