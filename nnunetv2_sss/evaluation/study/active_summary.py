"""The active-learning simulation in the study's ``summary.md``: Dice per round (the learning curve), the area
under it, paired differences to both random baselines (and to supervised + random), the annotation cost and
the query time. Round 0 of every strategy is the row's ordinary run at the initial labeled count."""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from nnunetv2_sss.evaluation.statistics import mean_std, paired_comparison
from nnunetv2_sss.evaluation.study.plan import ActiveLearning
from nnunetv2_sss.evaluation.study.rows import number

BASELINES = ("random", "foreground-random")  # the reference lines: plain and foreground-aware random


def curve_by_seed(rows: Sequence[dict], trainer: str, strategy: str, initial: int,
                  column: str = "dice_mean") -> Dict[int, Dict[int, float]]:
    """``{seed: {labeled scans: value}}`` of ``trainer`` queried by ``strategy``: its ordinary run at ``initial``
    labeled (round 0), then the strategy's rounds."""
    curves: Dict[int, Dict[int, float]] = {}
    for row in rows:
        if row["trainer"] != trainer:
            continue
        if row.get("strategy") == strategy or (not row.get("strategy") and str(row["num_labeled"]) == str(initial)):
            curves.setdefault(int(row["seed"]), {})[int(row["num_labeled"])] = number(row[column])
    return curves


def area_under_curve(points: Dict[int, float], labeled: Sequence[int]) -> float:
    """Trapezoid area under ``{labeled scans: Dice}`` over ``labeled`` divided by its range: the curve's mean
    Dice over the labeled range (NaN when a round is missing)."""
    xs = sorted(labeled)
    if any(not np.isfinite(points.get(x, np.nan)) for x in xs):
        return float("nan")
    area = sum((points[a] + points[b]) / 2 * (b - a) for a, b in zip(xs, xs[1:]))
    return area / (xs[-1] - xs[0])


def areas_by_seed(rows: Sequence[dict], trainer: str, strategy: str, active: ActiveLearning) -> Dict[int, float]:
    """``{seed: area}`` of the seeds whose curve is complete."""
    labeled = [active.initial + r * active.budget for r in range(active.rounds + 1)]
    areas = {seed: area_under_curve(points, labeled)
             for seed, points in curve_by_seed(rows, trainer, strategy, active.initial).items()}
    return {seed: area for seed, area in areas.items() if np.isfinite(area)}


def _cell(stats: Dict[str, float], digits: int = 1) -> str:
    if stats["n"] == 0:
        return "–"
    text = f"{stats['mean']:.{digits}f}"
    return text + (f" ± {stats['std']:.{digits}f}" if np.isfinite(stats["std"]) else "") + f" (n={stats['n']})"


def _paired_cell(values: Dict[int, float], reference: Dict[int, float]) -> str:
    """``Δ ± std (wins/n)``, with the Wilcoxon p from 5 seeds on."""
    result = paired_comparison(values, reference)
    if result["n"] == 0:
        return "–"
    text = f"{result['mean']:+.1f}" + (f" ± {result['std']:.1f}" if np.isfinite(result["std"]) else "")
    p = f", p {result['p_wilcoxon']:.3g}" if np.isfinite(result["p_wilcoxon"]) else ""
    return f"{text} ({result['wins']}/{result['n']}{p})"


def _final(rows: Sequence[dict], trainer: str, strategy: str, active: ActiveLearning) -> Dict[int, float]:
    """``{seed: Dice}`` after the last round."""
    last = active.initial + active.rounds * active.budget
    return {seed: points[last] for seed, points in curve_by_seed(rows, trainer, strategy, active.initial).items()
            if last in points}


def _round_values(rows: Sequence[dict], trainer: str, strategy: str, column: str) -> List[float]:
    return [number(r[column]) for r in rows if r["trainer"] == trainer and r.get("strategy") == strategy]


def _cumulative(rows: Sequence[dict], trainer: str, strategy: str, column: str, rounds: int) -> List[float]:
    """Per seed with every round done: the sum of ``column`` over its rounds."""
    by_seed: Dict[int, List[float]] = {}
    for r in rows:
        if r["trainer"] == trainer and r.get("strategy") == strategy:
            by_seed.setdefault(int(r["seed"]), []).append(number(r[column]))
    return [float(sum(values)) for values in by_seed.values() if len(values) == rounds]


def active_learning_markdown(rows: Sequence[dict], trainers: Sequence[str], active: ActiveLearning,
                             supervised: str) -> List[str]:
    """The simulation's sections of ``summary.md``."""
    labeled = [active.initial + r * active.budget for r in range(active.rounds + 1)]
    lines = ["# Active learning (simulated)", "",
             f"From each seed's split with {active.initial} labeled (round 0: the ordinary row), every round queries "
             f"{active.budget} of the training cases the split hides with the row's latest model, reveals their "
             f"labels and trains from scratch; {active.rounds} rounds. Strategies: {', '.join(active.strategies)}. "
             "Mean ± std over seeds (n = seeds).", ""]
    for trainer in trainers:
        lines += [f"## {trainer}: test Dice % per round", "",
                  "| strategy | " + " | ".join(f"{n} labeled" for n in labeled) + " | area under the curve |",
                  "|---|" + "---|" * (len(labeled) + 1)]
        for strategy in active.strategies:
            curves = curve_by_seed(rows, trainer, strategy, active.initial)
            cells = [_cell(mean_std([points[n] for points in curves.values() if n in points])) for n in labeled]
            area = _cell(mean_std(list(areas_by_seed(rows, trainer, strategy, active).values())))
            lines.append(f"| {strategy} | " + " | ".join(cells) + f" | {area} |")
        lines.append("")
    lines += ["## Paired differences to the random baselines (same trainer, split and seed)", "",
              "Area: the learning curve's trapezoid area over the labeled range divided by that range (its mean Dice "
              "%, rounds 0 to the last); final: Dice after the last round. Δ = strategy − baseline in percentage "
              "points, mean ± std over seeds (wins = seeds where Δ > 0; Wilcoxon p from 5 seeds on).", "",
              "| trainer | strategy | Δ area vs random | Δ area vs foreground-random | Δ final vs random | "
              "Δ final vs foreground-random |", "|---|---|---|---|---|---|"]
    for trainer in trainers:
        for strategy in active.strategies:
            cells = [_paired_cell(measure(rows, trainer, strategy, active), measure(rows, trainer, baseline, active))
                     if baseline in active.strategies and baseline != strategy else "–"
                     for measure in (areas_by_seed, _final) for baseline in BASELINES]
            lines.append(f"| {trainer} | {strategy} | " + " | ".join(cells) + " |")
    lines.append("")
    if "random" in active.strategies and supervised in trainers and len(trainers) > 1:
        reference = areas_by_seed(rows, supervised, "random", active)
        lines += [f"## Paired difference to {supervised} + random (area under the curve)", "",
                  "| trainer | " + " | ".join(active.strategies) + " |", "|---|" + "---|" * len(active.strategies)]
        for trainer in trainers:
            lines.append(f"| {trainer} | " + " | ".join(
                "–" if (trainer, strategy) == (supervised, "random") else
                _paired_cell(areas_by_seed(rows, trainer, strategy, active), reference)
                for strategy in active.strategies) + " |")
        lines.append("")
    lines += ["## Annotation cost and query time", "",
              f"Revealed over the {active.rounds} rounds ({active.rounds * active.budget} scans), per seed: voxels and "
              "foreground voxels of their labels (labelsTr), in thousands; query: the suggestion's seconds per "
              "scored scan (prediction and scoring; `random` predicts only the scans it draws) and per query (n: "
              "queries, all rounds and seeds).", "",
              "| trainer | strategy | scans | voxels (k) | foreground voxels (k) | foreground % | s per scored scan | "
              "s per query |", "|---|---|---|---|---|---|---|---|"]
    for trainer in trainers:
        for strategy in active.strategies:
            voxels = _cumulative(rows, trainer, strategy, "revealed_voxels", active.rounds)
            foreground = _cumulative(rows, trainer, strategy, "revealed_foreground_voxels", active.rounds)
            share = [100 * f / v for f, v in zip(foreground, voxels) if v]
            lines.append(f"| {trainer} | {strategy} | {active.rounds * active.budget} | "
                         f"{_cell(mean_std([v / 1000 for v in voxels]), 0)} | "
                         f"{_cell(mean_std([f / 1000 for f in foreground]), 1)} | {_cell(mean_std(share), 2)} | "
                         f"{_cell(mean_std(_round_values(rows, trainer, strategy, 'scoring_seconds_per_scan')), 2)} | "
                         f"{_cell(mean_std(_round_values(rows, trainer, strategy, 'query_seconds')))} |")
    lines.append("")
    return lines
