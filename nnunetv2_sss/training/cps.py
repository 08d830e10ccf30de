"""Cross Pseudo Supervision (Chen et al., CVPR 2021) on nnU-Net's network.

Two networks of the same plans, differently initialised (``self.network`` as nnU-Net builds
it, ``self.network_b`` built under ``torch.manual_seed(second_network_seed)``). Each is
trained with nnU-Net's supervised loss on the labeled batch plus CE on the other's hard
pseudo-label (argmax) on the weak view of the unlabeled batch:
``L = L_s(f_1) + L_s(f_2) + w * [CE(f_1, argmax f_2) + CE(f_2, argmax f_1)]`` with the settings of
SSL4MIS's ``code/train_cross_pseudo_supervision_2D.py`` (README, "Baseline settings (SSL4MIS)"):
``w = 0.2 * sigmoid_rampup`` over all of training (:mod:`ssl4mis_baseline`; SSL4MIS: 0.1 next to
its ``0.5 (CE + Dice)``), not the CPS paper's 1.5.

- One optimizer (nnU-Net's SGD and poly schedule) holds both networks as two parameter
  groups, so nnU-Net's ``optimizer_state`` and ``--c`` cover both; network 2's gradients are
  clipped (norm 12) in a step pre-hook, as the base clips network 1's.
- The checkpoint adds ``network_b_weights``; ``--c`` restores both networks.
- Prediction uses network 1 (``network_weights``): the paper predicts with one network, the
  two are trained symmetrically, and network 1 is the one nnU-Net's validation, pseudo Dice
  and ``nnUNetv2_predict`` already handle.
- ``export_teacher = False``: the base's EMA teacher is no part of CPS; exporting it would
  make the baseline a CPS + Mean Teacher hybrid.
- Single process only, like every semi-supervised trainer of the plugin.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn

from nnunetv2_sss.ssl.cross_pseudo import cross_pseudo_supervision_loss
from nnunetv2_sss.training.seeding import derived_seed
from nnunetv2_sss.training.semi_supervised import first_output, nnUNetTrainerSemiSupervised
from nnunetv2_sss.training.ssl4mis_baseline import SSL4MISSchedule


class nnUNetTrainerCPS(SSL4MISSchedule, nnUNetTrainerSemiSupervised):
    num_strong_views = 0
    export_teacher = False
    second_network_seed = 1234
    ssl_figures = {**nnUNetTrainerSemiSupervised.ssl_figures, 'ssl_cps_agreement': 'networks agree (voxel share)'}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.network_b = None

    # ---- the second network --------------------------------------------------------------------
    def build_second_network(self) -> nn.Module:
        """Network 2: same architecture as network 1, initialised under ``second_network_seed`` (under a
        seed derived from ``nnUNet_sss_seed`` when that is set, so runs of different seeds differ)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.second_network_seed if self.sss_seed is None
                              else derived_seed(self.sss_seed, "second_network"))
            network = self.build_network_architecture(
                self.plans_manager, self.configuration_manager, self.num_input_channels,
                self.label_manager.num_segmentation_heads, self.enable_deep_supervision)
        return network.to(self.device)

    def configure_optimizers(self):
        """nnU-Net's optimizer and schedule with network 2 as a second parameter group (called by
        ``initialize`` right after network 1 is built, so network 2 is built here too)."""
        self.network_b = self.build_second_network()
        optimizer, lr_scheduler = super().configure_optimizers()
        optimizer.add_param_group({'params': list(self.network_b.parameters())})
        optimizer.register_step_pre_hook(self.clip_second_network_gradients)
        return optimizer, lr_scheduler

    def clip_second_network_gradients(self, optimizer, args, kwargs) -> None:
        torch.nn.utils.clip_grad_norm_(self.network_b.parameters(), 12)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.network_b.train()

    def set_deep_supervision_enabled(self, enabled: bool):
        super().set_deep_supervision_enabled(enabled)
        if self.network_b is not None:
            self.network_b.decoder.deep_supervision = enabled

    # ---- the objective ------------------------------------------------------------------------
    def supervised_loss(self, data: torch.Tensor, target) -> torch.Tensor:
        return super().supervised_loss(data, target) + self.loss(self.network_b(data), target)

    def unlabeled_loss(self, unlabeled: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        logits_1 = first_output(self.network(unlabeled['data']))
        logits_2 = first_output(self.network_b(unlabeled['data']))
        loss = cross_pseudo_supervision_loss(logits_1, logits_2)
        with torch.no_grad():
            confident = torch.softmax(logits_1.float(), 1).max(1).values >= self.confidence_threshold
            agreement = (logits_1.argmax(1) == logits_2.argmax(1)).float().mean()
        return loss, {'ssl_confident_share': float(confident.float().mean()), 'ssl_cps_agreement': float(agreement)}

    # ---- checkpoints ------------------------------------------------------------------------------
    def extra_checkpoint_state(self) -> dict:
        return {**super().extra_checkpoint_state(), 'network_b_weights': self.network_b.state_dict()}

    def load_extra_checkpoint_state(self, checkpoint: dict) -> None:
        super().load_extra_checkpoint_state(checkpoint)
        if 'network_b_weights' not in checkpoint:
            raise RuntimeError(f"{self.__class__.__name__}: the checkpoint holds no 'network_b_weights' (it was not "
                               f"written by this trainer); cannot resume the second network.")
        self.network_b.load_state_dict(checkpoint['network_b_weights'])
