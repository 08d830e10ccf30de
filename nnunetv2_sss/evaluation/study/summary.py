"""The study's ``summary.md``: mean ± std over seeds per trainer and labeled count, the ceiling, paired
differences to the supervised trainer (wins, Wilcoxon p), those of each pretrained row to its trainer from
scratch, and the share of the gap to the ceiling closed."""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

from nnunetv2_sss.evaluation.statistics import gap_closed, mean_std, paired_comparison
from nnunetv2_sss.evaluation.study.plan import ALL
from nnunetv2_sss.evaluation.study.pretraining import is_pretrained, nnunet_trainer
from nnunetv2_sss.evaluation.study.rows import values_by_seed


def format_seconds(seconds: float) -> str:
    """``1h05m`` or ``4m07s``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _cell(stats: Dict[str, float], expected: int, digits: int = 1) -> str:
    if stats["n"] == 0:
        return "–"
    text = f"{stats['mean']:.{digits}f}"
    if np.isfinite(stats["std"]):
        text += f" ± {stats['std']:.{digits}f}"
    if stats["n"] != expected:
        text += f" ({stats['n']} of {expected} seeds)"
    return text


def _signed(value: float, digits: int = 1) -> str:
    return "–" if not np.isfinite(value) else f"{value:+.{digits}f}"


def _paired_lines(rows: Sequence[dict], pairs: Sequence[Tuple[str, str]], counts: Sequence[int]) -> List[str]:
    """Table lines ``| trainer | labeled | Δ Dice | wins | p |`` of each ``(trainer, reference)`` pair per
    labeled count (paired by seed), and an empty line."""
    lines = []
    for n in counts:
        for trainer, reference in pairs:
            result = paired_comparison(values_by_seed(rows, trainer, n), values_by_seed(rows, reference, n))
            if result["n"] == 0:
                lines.append(f"| {trainer} | {n} | – | – | – |")
                continue
            delta = _signed(result["mean"]) + (f" ± {result['std']:.1f}" if np.isfinite(result["std"]) else "")
            p = f"{result['p_wilcoxon']:.3g}" if np.isfinite(result["p_wilcoxon"]) else \
                ("– (< 5 seeds)" if result["n"] < 5 else "– (all Δ = 0)")
            lines.append(f"| {trainer} | {n} | {delta} | {result['wins']}/{result['n']} | {p} |")
    return lines + [""]


def summary_markdown(rows: Sequence[dict], trainers: Sequence[str], counts: Sequence[int], seeds: Sequence[int],
                     supervised: str, class_names: Sequence[str], header: Sequence[str] = ()) -> str:
    """The study's summary: mean ± std per trainer x labeled count (Dice, per class, HD95, ASD), the
    ceiling, paired differences to the supervised trainer with wins and Wilcoxon p, and the share
    of the supervised-to-ceiling gap each semi-supervised trainer closes."""
    lines = [*header, ""]
    expected = len(seeds)
    ceiling_rows = [r for r in rows if str(r["num_labeled"]) == ALL and r["trainer"] == supervised]
    ceiling_label = ""
    if ceiling_rows:
        sizes = sorted({len(r["labeled_cases"].split()) for r in ceiling_rows})
        ceiling_label = f"ceiling: {supervised}, all {'/'.join(map(str, sizes))} training cases labeled"
    for prefix, title, digits in (("dice", "Dice % (mean over classes)", 1), ("hd95", "HD95 mm (mean over classes)", 2),
                                  ("asd", "ASD mm, MedPy asd(pred, gt) (mean over classes)", 2)):
        lines += [f"## {title}: mean ± std over seeds", "",
                  "| trainer | " + " | ".join(f"{n} labeled" for n in counts) + " |",
                  "|---|" + "---|" * len(counts)]
        for trainer in trainers:
            cells = [_cell(mean_std(list(values_by_seed(rows, trainer, n, f"{prefix}_mean").values())), expected, digits)
                     for n in counts]
            lines.append(f"| {trainer} | " + " | ".join(cells) + " |")
        if ceiling_rows:
            stats = mean_std(list(values_by_seed(rows, supervised, ALL, f"{prefix}_mean").values()))
            lines.append(f"| {ceiling_label} | " + " | ".join([_cell(stats, expected, digits)] * len(counts)) + " |")
        lines.append("")

    lines += ["## Dice % per class: mean ± std over seeds", "",
              "| trainer | labeled | " + " | ".join(class_names) + " |", "|---|---|" + "---|" * len(class_names)]
    for trainer, n in [(t, n) for n in counts for t in trainers] + ([(supervised, ALL)] if ceiling_rows else []):
        cells = [_cell(mean_std(list(values_by_seed(rows, trainer, n, f"dice_{c}").values())), expected)
                 for c in class_names]
        lines.append(f"| {trainer} | {n} | " + " | ".join(cells) + " |")
    lines.append("")

    others = [t for t in trainers if t != supervised]
    if others:
        lines += [f"## Paired difference to {supervised} (same split, same seed)", "",
                  "Δ = trainer − supervised mean Dice (percentage points), mean ± std over seeds; wins = seeds where "
                  "Δ > 0; p = two-sided paired Wilcoxon signed-rank test (scipy.stats.wilcoxon), only with ≥ 5 seeds.",
                  "", "| trainer | labeled | Δ Dice | wins | Wilcoxon p |", "|---|---|---|---|---|"]
        lines += _paired_lines(rows, [(trainer, supervised) for trainer in others], counts)
        pretrained = [t for t in trainers if is_pretrained(t) and nnunet_trainer(t) in trainers]
        if pretrained:
            lines += ["## Paired difference of the pretrained start (same split, same seed)", "",
                      "Δ = `T+pretrained` − `T` mean Dice (percentage points), as above.", "",
                      "| trainer | labeled | Δ Dice | wins | Wilcoxon p |", "|---|---|---|---|---|"]
            lines += _paired_lines(rows, [(t, nnunet_trainer(t)) for t in pretrained], counts)
        if ceiling_rows:
            ceiling = values_by_seed(rows, supervised, ALL)
            lines += ["## Share of the gap to the ceiling closed", "",
                      f"(trainer − supervised) / (ceiling − supervised), mean Dice over the seeds all three have; "
                      f"{ceiling_label}. 100 % = as good as all labels, 0 % = no better than supervised "
                      f"with the same labels, negative = worse.", "",
                      "| trainer | labeled | supervised | trainer | ceiling | gap closed |", "|---|---|---|---|---|---|"]
            for n in counts:
                reference = values_by_seed(rows, supervised, n)
                for trainer in others:
                    g = gap_closed(values_by_seed(rows, trainer, n), reference, ceiling)
                    if g["n"] == 0:
                        lines.append(f"| {trainer} | {n} | – | – | – | – |")
                        continue
                    share = f"{100 * g['share']:.0f} %" if np.isfinite(g["share"]) else "– (no gap)"
                    lines.append(f"| {trainer} | {n} | {g['supervised']:.1f} | {g['trainer']:.1f} | "
                                 f"{g['ceiling']:.1f} | {share} |")
            lines.append("")
    return "\n".join(lines)
