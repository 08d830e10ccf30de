"""The interface of a query strategy: a :class:`Strategy` subclass with a ``name`` in a module of this
package is found by name (``strategies.get``); adding a strategy is adding a file."""
from __future__ import annotations

from typing import ClassVar, List, Mapping, Sequence, Tuple

import numpy as np

from nnunetv2_sss.active.members import CasePrediction
from nnunetv2_sss.active.records import CaseRecord
from nnunetv2_sss.active.voxels import entropy


class Strategy:
    """Chooses ``k`` scans of the pool. Class attributes say what the command must compute first."""
    name: ClassVar[str] = ""             # the --strategy value; "" for an abstract class
    summary: ClassVar[str] = ""          # one line for --help
    scores_pool: ClassVar[bool] = True   # False: chooses without predictions (only the chosen are predicted)
    min_predictions: ClassVar[int] = 1   # members a scan's prediction needs (members.py)
    needs_features: ClassVar[bool] = False

    @property
    def needs_members(self) -> bool:
        return self.min_predictions > 1

    def voxel_map(self, prediction: CasePrediction) -> np.ndarray:
        """``(*spatial)`` per-voxel uncertainty in [0, 1] (the score aggregates it, the montage shows it);
        default: the entropy of nnU-Net's prediction."""
        return entropy(prediction.probabilities)

    def rank(self, cases: Sequence[str], records: Mapping[str, CaseRecord], k: int,
             rng: np.random.Generator) -> List[Tuple[str, float]]:
        """The ``k`` chosen of ``cases`` (sorted case ids), first to label first, each with its score;
        ``records``: every case's record if :attr:`scores_pool`, else empty."""
        raise NotImplementedError


class UncertaintyRanking(Strategy):
    """The ``k`` scans with the highest aggregated voxel map (ties: by case id)."""

    def rank(self, cases, records, k, rng):
        return [(case, records[case].uncertainty) for case in by_uncertainty(cases, records)[:k]]


def by_uncertainty(cases: Sequence[str], records: Mapping[str, CaseRecord]) -> List[str]:
    """``cases`` from the most to the least uncertain (ties: by case id)."""
    return sorted(cases, key=lambda case: (-records[case].uncertainty, case))
