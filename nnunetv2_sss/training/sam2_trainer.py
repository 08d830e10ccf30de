"""``nnUNetTrainerSAM2``: supervised nnU-Net training of the SAM-2 network (:class:`SAM2UNet`).

- Network: SAM-2 image encoder (``nnUNet_sss_sam2_config``) per slice + conv stem and
  nnU-Net-style decoder (``nnunetv2_sss.networks.sam2_unet``). The trainer writes the
  encoder config into its plans (configuration key ``sam2_network``), so
  ``nnUNetv2_predict`` rebuilds the network from the results folder alone, and ``--c`` /
  ``--val`` take it from the nnU-Net checkpoint.
- Weights: when training starts from scratch, ``nnUNet_sss_sam2_checkpoint`` (a SAM-2
  ``.pt`` or ``random``) initialises the image encoder; missing/unexpected keys go to the
  training log, and ``sam2_weights.json`` in the fold folder records config, checkpoint and
  its SHA-256. Resuming (``--c``) and ``--val`` take all weights from the nnU-Net
  checkpoint and do not need the variable; ``-pretrained_weights`` overrides it.
- Optimiser: AdamW (betas 0.9/0.999, weight decay 0.01), lr 1e-4 (SSS paper) for the new
  parts (channel adapter, stem, decoder) and ``encoder_lr_factor`` = 0.1 times that for
  the pretrained image encoder (UniMatch V2 uses 1/40 for its DINOv2 encoder; 0.1 is a
  common ratio for a pretrained backbone under a new decoder); linear warm-up over
  ``warmup_fraction`` of the epochs, then cosine decay to 0, stepped per epoch like
  nnU-Net's poly schedule (``training/lr_schedule.py``). Details: ``docs/sam2_network.md``.
- ``freeze_encoder = True`` keeps the image encoder fixed (no gradients, not in the optimiser).
- Deep supervision: one output per decoder level at strides 1, 2, 4, 8, 16 in-plane
  (1 along the slice axis of 3-D patches), not the plans' pooling.

Semi-supervised trainers use the same network by listing this class after their own base,
e.g. ``class nnUNetTrainerUniMatchV2SAM2(nnUNetTrainerUniMatchV2, nnUNetTrainerSAM2): pass``;
the SAM-2 weights are then loaded before the semi-supervised ``initialize`` copies the teacher.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from batchgenerators.utilities.file_and_folder_operations import join, save_json

from nnunetv2_sss import settings
from nnunetv2_sss.networks.sam2_checkpoint import load_image_encoder_weights
from nnunetv2_sss.networks.sam2_config import PLANS_KEY, SAM2NetworkSpec
from nnunetv2_sss.networks.sam2_unet import build_sam2_unet, configuration_level_strides, deep_supervision_scales
from nnunetv2_sss.training.base import nnUNetTrainerPlugin, unwrap
from nnunetv2_sss.training.lr_schedule import WarmupCosineLRScheduler

WEIGHTS_RECORD = "sam2_weights.json"


class nnUNetTrainerSAM2(nnUNetTrainerPlugin):
    sam2_input_size: Optional[int] = None  # resample slices to this side length before Hiera (SAM-2: 1024)
    freeze_encoder = False
    encoder_lr_factor = 0.1
    warmup_fraction = 0.05

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 1e-4
        self.weight_decay = 1e-2
        self.sam2_spec: Optional[SAM2NetworkSpec] = None  # -> initialize (settings) or load_checkpoint
        self._weights_from_nnunet_checkpoint = False

    def set_sam2_spec(self, spec: SAM2NetworkSpec) -> None:
        """Use ``spec`` and write it into the plans (saved to the results folder for prediction)."""
        self.sam2_spec = spec
        entry = spec.to_plans()
        self.configuration_manager.configuration[PLANS_KEY] = entry
        self.plans_manager.plans['configurations'][self.configuration_name][PLANS_KEY] = entry

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        spec = SAM2NetworkSpec.from_configuration(configuration_manager.configuration)
        return build_sam2_unet(spec, configuration_manager, num_input_channels, num_output_channels,
                               enable_deep_supervision)

    def _get_deep_supervision_scales(self):
        if not self.enable_deep_supervision:
            return None
        if self.sam2_spec is None:
            raise RuntimeError("the SAM-2 network is only known after initialize()")
        return deep_supervision_scales(configuration_level_strides(self.sam2_spec, self.configuration_manager))

    # ---- weights ---------------------------------------------------------------------------------
    def load_checkpoint(self, filename_or_checkpoint: Union[dict, str]) -> None:
        """nnU-Net checkpoint (``--c``, ``--val``): its own SAM-2 config and weights, no SAM-2 variables."""
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):
            checkpoint = torch.load(checkpoint, map_location=self.device, weights_only=False)
        if not self.was_initialized:
            self._weights_from_nnunet_checkpoint = True
            trained = checkpoint['init_args']['plans']['configurations'][self.configuration_name]
            if PLANS_KEY in trained:
                self.set_sam2_spec(SAM2NetworkSpec.from_configuration(trained, self.configuration_name))
        super().load_checkpoint(checkpoint)

    def initialize(self):
        if self.sam2_spec is None:
            self.set_sam2_spec(SAM2NetworkSpec.from_settings(self.sam2_input_size))
        checkpoint = None if self._weights_from_nnunet_checkpoint else settings.require_sam2_checkpoint()
        super().initialize()
        if checkpoint is not None:
            self.load_sam2_weights(checkpoint)

    def load_sam2_weights(self, checkpoint: str) -> None:
        """Initialise the image encoder from ``checkpoint`` (or leave it random), log and record it."""
        record = {'config': self.sam2_spec.config, 'encoder_input_size': self.sam2_spec.encoder_input_size,
                  'checkpoint': checkpoint, 'sha256': None}
        if checkpoint == settings.RANDOM_WEIGHTS:
            self.print_to_log_file(f"WARNING: {settings.SAM2_CHECKPOINT}={settings.RANDOM_WEIGHTS}: the SAM-2 image "
                                   f"encoder ({self.sam2_spec.config}) starts from RANDOM weights, not from a "
                                   f"pretrained SAM-2 checkpoint.")
        else:
            report = load_image_encoder_weights(unwrap(self.network).pretrained_encoder, checkpoint)
            self.print_to_log_file(f"SAM-2 config {self.sam2_spec.config}; {report.summary()}")
            record.update(sha256=report.sha256, loaded_tensors=len(report.loaded), missing_keys=report.missing,
                          unexpected_keys=report.unexpected, ignored_tensors=report.ignored)
        if self.local_rank == 0:
            save_json(record, join(self.output_folder, WEIGHTS_RECORD), sort_keys=False)

    # ---- optimisation -----------------------------------------------------------------------------
    def configure_optimizers(self):
        network = unwrap(self.network)
        encoder_parameters = list(network.pretrained_encoder.parameters())
        if self.freeze_encoder:
            for parameter in encoder_parameters:
                parameter.requires_grad_(False)
        encoder_ids = {id(p) for p in encoder_parameters}
        groups = [{'params': [p for p in network.parameters() if id(p) not in encoder_ids], 'lr': self.initial_lr}]
        if not self.freeze_encoder:
            groups.append({'params': encoder_parameters, 'lr': self.initial_lr * self.encoder_lr_factor})
        optimizer = torch.optim.AdamW(groups, lr=self.initial_lr, betas=(0.9, 0.999), weight_decay=self.weight_decay)
        warmup = min(round(self.warmup_fraction * self.num_epochs), self.num_epochs - 1)
        return optimizer, WarmupCosineLRScheduler(optimizer, warmup, self.num_epochs)
