"""The rows of ``runs.csv`` (one dict per completed run, as its done marker holds it): numbers and
per-class columns read out of them, and the table written from them."""
from __future__ import annotations

import csv
import io
from typing import Dict, List, Sequence

METRICS = (("dice", "Dice_pct"), ("hd95", "HD95_mm"), ("asd", "ASD_mm"))  # column prefix, evaluation metric


def number(value) -> float:
    """``value`` as a float; NaN for an empty or missing cell."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def values_by_seed(rows: Sequence[dict], trainer: str, num_labeled, column: str = "dice_mean") -> Dict[int, float]:
    """``{seed: value of column}`` of one trainer at one labeled count."""
    return {int(r["seed"]): number(r[column]) for r in rows
            if r["trainer"] == trainer and str(r["num_labeled"]) == str(num_labeled)}


def class_names_of(rows: Sequence[dict]) -> List[str]:
    """Class names of the per-class Dice columns (``dice_<name>``), in column order."""
    names = []
    for row in rows:
        names.extend(k[5:] for k in row if k.startswith("dice_") and k != "dice_mean" and k[5:] not in names)
    return names


def runs_csv(rows: Sequence[dict]) -> str:
    """``runs.csv``: every column any row has, in the order they first appear."""
    columns = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
