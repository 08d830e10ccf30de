"""``entropy``: the scans whose prediction (nnU-Net's: folds and mirrored passes averaged) is least sure."""
from __future__ import annotations

from nnunetv2_sss.active.strategies.base import UncertaintyRanking


class PredictiveEntropy(UncertaintyRanking):
    name = "entropy"
    summary = "the k scans of highest predictive entropy (voxels aggregated by --aggregate)"
