"""The study's plan: which runs (trainer x labeled count x seed, and the active-learning rounds), in which
order, and their groups."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

from nnunetv2_sss.errors import UserValueError

ALL = "all"  # the labeled count of the ceiling: every training case of the fold


def group_name(num_labeled, seed: int) -> str:
    """The group of runs sharing one split: ``n{N}_s{S}`` (``nall_s{S}`` for the ceiling)."""
    return f"n{num_labeled}_s{seed}"


@dataclass(frozen=True)
class Run:
    trainer: str
    num_labeled: object  # int or ALL; of an active-learning round: the initial labeled count
    seed: int
    strategy: Optional[str] = None  # an active-learning round (round >= 1): its query strategy
    round: int = 0
    budget: int = 0                 # scans revealed per round

    @property
    def group(self) -> str:
        """Runs sharing one split: ``n{N}_s{S}``; an active-learning round has a split of its own per row,
        ``n{N}_s{S}_{strategy}_b{K}_r{R}_{row}``."""
        base = group_name(self.num_labeled, self.seed)
        return f"{base}_{self.strategy}_b{self.budget}_r{self.round}_{self.trainer}" if self.strategy else base

    @property
    def labeled(self):
        """Labeled training cases of the run: the initial count plus the scans revealed so far."""
        return self.num_labeled + self.round * self.budget if self.strategy else self.num_labeled

    def previous_round(self) -> "Run":
        """The run whose model queries this round's scans: round R-1, round 0 being the ordinary row."""
        if self.round == 1:
            return Run(self.trainer, self.num_labeled, self.seed)
        return Run(self.trainer, self.num_labeled, self.seed, self.strategy, self.round - 1, self.budget)


@dataclass(frozen=True)
class ActiveLearning:
    """``--active-learning S ... --budget K --al-rounds R``, from the initial labeled count ``initial``."""
    strategies: Sequence[str]
    budget: int
    rounds: int
    initial: int

    def runs(self, trainers: Sequence[str], seed: int) -> List[Run]:
        """Round by round, each strategy's rounds for every row."""
        return [Run(t, self.initial, seed, s, r, self.budget) for r in range(1, self.rounds + 1)
                for s in self.strategies for t in trainers]


def plan_runs(trainers: Sequence[str], counts: Sequence[int], seeds: Sequence[int], supervised: str,
              ceiling: bool, active: Optional[ActiveLearning] = None) -> List[Run]:
    """Seed by seed (a whole learning curve per seed), the ceiling after each seed's counts, then the seed's
    active-learning rounds."""
    runs = []
    for seed in seeds:
        for count in counts:
            runs.extend(Run(t, count, seed) for t in trainers)
        if ceiling:
            runs.append(Run(supervised, ALL, seed))
        if active:
            runs.extend(active.runs(trainers, seed))
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
