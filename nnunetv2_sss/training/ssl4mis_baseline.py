"""``nnUNetTrainerSSL4MISBaseline``: the unlabeled-loss weight of the SSL4MIS baselines (Mean Teacher, Entropy
Minimisation, ICT, CPS) on nnU-Net's schedule.

SSL4MIS (github.com/HiLab-git/SSL4MIS, ``code/train_*_2D.py``) trains 30000 iterations with
``L = 0.5 (CE + Dice) + w * L_u``, ``w = consistency * sigmoid_rampup(iter_num // 150, 200)``,
``consistency = 0.1``. Here:

- the ramp-up covers the same share of training (``unlabeled_rampup_fraction = 1``: 200 x 150 =
  30000 of SSL4MIS's 30000 iterations) in the same 200 steps, counted in iterations of the
  nnU-Net run (``num_epochs x num_iterations_per_epoch``; see :func:`iteration_rampup`);
- ``unlabeled_loss_weight = 0.2``: the labeled loss is nnU-Net's ``CE + Dice``, twice SSL4MIS's
  ``0.5 (CE + Dice)``, so 2 x 0.1 keeps SSL4MIS's ratio of unlabeled to supervised loss;
- ``consistency_start_fraction``: the unlabeled term is off for this share of the iterations
  (Mean Teacher: 1000 of 30000, ``train_mean_teacher_2D.py`` lines 170-171).
"""
from __future__ import annotations

from nnunetv2_sss.ssl.ssl4mis import SSL4MIS_RAMPUP_LENGTH, iteration_rampup
from nnunetv2_sss.training.semi_supervised import nnUNetTrainerSemiSupervised


class nnUNetTrainerSSL4MISBaseline(nnUNetTrainerSemiSupervised):
    """The base of the SSL4MIS baselines; replaces the epoch-based ramp-up of its base."""
    unlabeled_loss_weight = 0.2                    # 2 x SSL4MIS's consistency 0.1 (module docstring)
    unlabeled_rampup_fraction = 1.0                # share of all training iterations
    rampup_length = SSL4MIS_RAMPUP_LENGTH          # steps of the ramp (SSL4MIS's consistency_rampup)
    consistency_start_fraction = 0.0               # unlabeled weight 0 before this share of the iterations

    def total_iterations(self) -> int:
        return int(self.num_epochs) * int(self.num_iterations_per_epoch)

    def unlabeled_weight(self) -> float:
        """``unlabeled_loss_weight * sigmoid_rampup(it // step, rampup_length)`` at iteration ``it``
        (``ssl_iteration``, iterations done so far), 0 before ``consistency_start_fraction``."""
        total = self.total_iterations()
        if self.ssl_iteration < self.consistency_start_fraction * total - 1e-9:
            return 0.0
        return self.unlabeled_loss_weight * iteration_rampup(self.ssl_iteration, total, self.unlabeled_rampup_fraction,
                                                             self.rampup_length)
