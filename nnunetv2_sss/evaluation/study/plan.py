"""The study's plan: which runs (trainer x labeled count x seed), in which order, and their groups."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

from nnunetv2_sss.errors import UserValueError

ALL = "all"  # the labeled count of the ceiling: every training case of the fold


def group_name(num_labeled, seed: int) -> str:
    """The group of runs sharing one split: ``n{N}_s{S}`` (``nall_s{S}`` for the ceiling)."""
    return f"n{num_labeled}_s{seed}"


@dataclass(frozen=True)
class Run:
    trainer: str
    num_labeled: object  # int or ALL
    seed: int

    @property
    def group(self) -> str:
        return group_name(self.num_labeled, self.seed)


def plan_runs(trainers: Sequence[str], counts: Sequence[int], seeds: Sequence[int], supervised: str,
              ceiling: bool) -> List[Run]:
    """Seed by seed (a whole learning curve per seed), the ceiling after each seed's counts."""
    runs = []
    for seed in seeds:
        for count in counts:
            runs.extend(Run(t, count, seed) for t in trainers)
        if ceiling:
            runs.append(Run(supervised, ALL, seed))
    return runs


def parse_counts(values: Sequence[str]) -> List[object]:
    """``--num-labeled`` values: whole numbers >= 1 or ``all``."""
    counts = []
    for value in values:
        if value == ALL:
            counts.append(ALL)
            continue
        try:
            count = int(value)
        except ValueError:
            raise UserValueError(f"--num-labeled {value}: give whole numbers >= 1 or '{ALL}'") from None
        if count < 1:
            raise UserValueError(f"--num-labeled {value}: must be >= 1")
        counts.append(count)
    return counts
