"""The trainers nnU-Net finds by name (``-tr``): each names a network recipe
(``nnunetv2_sss/networks/recipes.py``) and an objective (``nnunetv2_sss/objectives``), and sets an
option only where it differs from their defaults, as a class attribute (nnU-Net's style). The
machinery is in ``base.py`` (everything of nnU-Net's the plugin changes, the options) and
``semi_supervised.py`` (unlabeled loader, EMA teacher, extra modules, ``L = L_l + w L_u``,
checkpoints, figures, multi-GPU).
"""
from __future__ import annotations

from nnunetv2_sss.networks.recipes import SAM2Recipe, SSSRecipe
from nnunetv2_sss.objectives.cps4 import CPS4Objective
from nnunetv2_sss.objectives.fixmatch import FixMatchObjective
from nnunetv2_sss.objectives.ssl4mis_baselines import (CPSObjective, EntropyMinObjective, ICTObjective,
                                                       MeanTeacherObjective)
from nnunetv2_sss.objectives.sss import SSSObjective
from nnunetv2_sss.objectives.unimatch_v2 import UniMatchV2Objective
from nnunetv2_sss.training.base import nnUNetTrainerPlugin
from nnunetv2_sss.training.semi_supervised import nnUNetTrainerSemiSupervised


class nnUNetTrainerSAM2(nnUNetTrainerPlugin):
    """Supervised nnU-Net training of the SAM-2 U-Net (:class:`~nnunetv2_sss.networks.recipes.SAM2Recipe`)."""
    recipe = SAM2Recipe


# ---- the SSL4MIS baselines (docs/trainers.md, "Baseline settings (SSL4MIS)") ----------------------------
class nnUNetTrainerMeanTeacher(nnUNetTrainerSemiSupervised):
    objective = MeanTeacherObjective


class nnUNetTrainerEntropyMin(nnUNetTrainerSemiSupervised):
    objective = EntropyMinObjective


class nnUNetTrainerICT(nnUNetTrainerSemiSupervised):
    objective = ICTObjective


class nnUNetTrainerCPS(nnUNetTrainerSemiSupervised):
    objective = CPSObjective


# ---- FixMatch ---------------------------------------------------------------------------------------------
class nnUNetTrainerFixMatch(nnUNetTrainerSemiSupervised):
    objective = FixMatchObjective


# ---- UniMatch V2 and SSS --------------------------------------------------------------------------------
class nnUNetTrainerUniMatchV2(nnUNetTrainerSemiSupervised):
    """UniMatch V2 on nnU-Net's network (SSS without SAM-2, DFE and PCSW)."""
    objective = UniMatchV2Objective


class nnUNetTrainerSSS(nnUNetTrainerSemiSupervised):
    """Semi-Supervised SAM-2: UniMatch V2 + DFE + PCSW on the SAM-2 network. All four SSS trainers draw
    the same unlabeled batches: in 2-D a slab of consecutive slices of one case (PCSW needs a slice
    axis), in 3-D patches sliced along the SAM-2 slice axis."""
    recipe = SSSRecipe
    objective = SSSObjective


class nnUNetTrainerSSS_noDFE(nnUNetTrainerSSS):
    use_dfe = False


class nnUNetTrainerSSS_noPCSW(nnUNetTrainerSSS):
    use_pcsw = False


class nnUNetTrainerSSS_baseline(nnUNetTrainerSSS):
    """UniMatch V2 on the SAM-2 network (the paper's Table 3 baseline row)."""
    use_dfe = False
    use_pcsw = False


# ---- CPS4 stage 2 ----------------------------------------------------------------------------------------
class nnUNetTrainerCPS4(nnUNetTrainerSemiSupervised):
    """Class-prompt-driven Mean Teacher with the frozen stage-1 vision-text model
    (``nnUNetv2_sss_pretrain_cps4`` first); 2-D only."""
    objective = CPS4Objective
