"""``mutual-information``: the scans on which nnU-Net's several predictions disagree most (BALD).

The predictions are those nnU-Net makes anyway (``members.py``): every fold of the ensemble in every
mirrored pass, and an EMA trainer's teacher and student. Needs at least two."""
from __future__ import annotations

from nnunetv2_sss.active.strategies.base import UncertaintyRanking
from nnunetv2_sss.active.voxels import mutual_information


class MutualInformation(UncertaintyRanking):
    name = "mutual-information"
    summary = ("the k scans of highest mutual information between the predictions of the folds, mirrored passes "
               "and EMA teacher/student (needs two or more)")
    min_predictions = 2

    def voxel_map(self, prediction):
        return mutual_information(prediction.mean_member_probabilities, prediction.mean_member_entropy)
