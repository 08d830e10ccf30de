"""Network recipes: what a trainer's network is and how it is built, initialised and optimised.

A trainer names one recipe class (``recipe = SAM2Recipe``, as it names ``objective = ...``); the
trainer base builds it with the resolved options (``training/options.py``) and calls it at
nnU-Net's seams. A recipe declares its options and their defaults in ``defaults``; a trainer
overrides them with class attributes of the same name (nnU-Net's style,
``class nnUNetTrainerSSS_noDFE(nnUNetTrainerSSS): use_dfe = False``). Options that shape the
network must be class attributes: ``nnUNetv2_predict`` builds the network from the trainer class
alone (``build_network_architecture`` is a class method). What a recipe learns at run time (the
SAM-2 spec, the SAM-2 checkpoint of this run) is kept on the trainer, so checkpoints and ``--c``
see it.

- :class:`PlainRecipe`: nnU-Net's own network from the plans, nnU-Net's SGD + poly schedule.
- :class:`SAM2Recipe`: :class:`~nnunetv2_sss.networks.sam2_unet.SAM2UNet` (SAM-2's image encoder
  per slice), its deep-supervision scales, the SAM-2 checkpoint, AdamW with a smaller learning
  rate for the pretrained encoder, warm-up + cosine (``docs/sam2_network.md``).
- :class:`SSSRecipe`: the SAM-2 recipe with DFE (``use_dfe``) and SAM-2's prompt head
  (``use_pcsw``; its weights are the SSS objective's business, ``objectives/sss.py``).

Every network is returned as :class:`~nnunetv2_sss.networks.passes.NetworkPasses`, so each pass
an objective runs goes through the module's ``forward`` (DistributedDataParallel sees it).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from nnunetv2_sss.networks.passes import NetworkPasses, unwrap


class PlainRecipe:
    """nnU-Net's network and optimiser, unchanged."""
    # option -> default (training/options.py); nnU-Net's own options (initial_lr, ...) may be given a
    # default of the recipe too, they stay the trainer's attributes
    # mixed_precision: the autocast dtype on CUDA, 'fp16' (nnU-Net's, with its GradScaler) or 'bf16' (no
    # GradScaler; fp16 + GradScaler on a GPU without native bf16), training/precision.py
    defaults: Dict[str, Any] = {'mixed_precision': 'fp16'}

    def __init__(self, **options):
        from nnunetv2_sss.training.options import NNUNET_OPTIONS, declared_defaults
        for name, (default, _) in declared_defaults(type(self)).items():
            if name not in NNUNET_OPTIONS:
                setattr(self, name, options.get(name, default))

    def build(self, plans_manager, configuration_manager, num_input_channels: int, num_output_channels: int,
              enable_deep_supervision: bool) -> nn.Module:
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        return NetworkPasses(nnUNetTrainer.build_network_architecture(
            plans_manager, configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision))

    def prepare(self, trainer) -> None:
        """Called at the end of the trainer's ``__init__``."""

    def before_initialize(self, trainer) -> None:
        """Called before nnU-Net's ``initialize`` builds the network."""

    def after_initialize(self, trainer) -> None:
        """Called after the network is built and (DDP) wrapped, when training starts from scratch."""

    def before_load_checkpoint(self, trainer, checkpoint: dict) -> None:
        """Called with an nnU-Net checkpoint before the trainer is initialised from it."""

    def deep_supervision_scales(self, trainer) -> Optional[list]:
        """``None``: nnU-Net's (from the plans' pooling)."""
        return None

    def configure_optimizers(self, trainer) -> Optional[tuple]:
        """``None``: nnU-Net's SGD and poly schedule."""
        return None


class SAM2Recipe(PlainRecipe):
    """SAM-2 U-Net (``docs/sam2_network.md``).

    - Weights: when training starts from scratch, ``nnUNet_sss_sam2_checkpoint`` (a SAM-2 ``.pt`` or
      ``random``) initialises the image encoder; missing/unexpected keys go to the training log and
      ``sam2_weights.json`` in the fold folder records config, checkpoint and its SHA-256. The
      encoder config is written into the plans (configuration key ``sam2_network``), so
      ``nnUNetv2_predict``, ``--c`` and ``--val`` rebuild the network from the results folder alone.
    - Optimiser: AdamW (betas 0.9/0.999, weight decay 0.01), lr 1e-4 (SSS paper) for the new parts
      and ``encoder_lr_factor`` times that for the pretrained image encoder; linear warm-up over
      ``warmup_fraction`` of the epochs, then cosine decay to 0, stepped per epoch.
    - ``freeze_encoder``: the image encoder gets no gradients and is not in the optimiser.
    - Deep supervision: one output per decoder level at strides 1, 2, 4, 8, 16 in-plane.
    - ``sam2_input_size``: slices resampled to this side length before Hiera (SAM-2: 1024).
    - ``mixed_precision = 'bf16'``: SAM-2 is trained and published in bfloat16; on CUDA the trainer and the
      network autocast to it where the GPU has it (no GradScaler), else to nnU-Net's fp16 + GradScaler.
    - ``activation_checkpointing``: recompute the Hiera blocks' activations in the backward pass (training
      only; ``networks/activation_checkpointing.py``): less memory, one more forward of the blocks.
    """
    defaults = {'initial_lr': 1e-4, 'weight_decay': 1e-2, 'sam2_input_size': None, 'freeze_encoder': False,
                'encoder_lr_factor': 0.1, 'warmup_fraction': 0.05, 'activation_checkpointing': False,
                'mixed_precision': 'bf16'}  # SAM-2's own precision (training/precision.py)

    def build(self, plans_manager, configuration_manager, num_input_channels: int, num_output_channels: int,
              enable_deep_supervision: bool) -> nn.Module:
        from nnunetv2_sss.networks.sam2_config import SAM2NetworkSpec
        from nnunetv2_sss.networks.sam2_unet import build_sam2_unet
        spec = SAM2NetworkSpec.from_configuration(configuration_manager.configuration)
        return NetworkPasses(self.checkpointed(build_sam2_unet(spec, configuration_manager, num_input_channels,
                                                               num_output_channels, enable_deep_supervision)))

    def checkpointed(self, network: nn.Module) -> nn.Module:
        """``network`` with its Hiera blocks checkpointed if ``activation_checkpointing``."""
        if self.activation_checkpointing:
            from nnunetv2_sss.networks.activation_checkpointing import set_activation_checkpointing
            set_activation_checkpointing(network)
        return network

    def prepare(self, trainer) -> None:
        trainer.sam2_spec = None  # -> before_initialize (settings) or before_load_checkpoint
        trainer.weights_from_nnunet_checkpoint = False

    @staticmethod
    def set_spec(trainer, spec) -> None:
        """Use ``spec`` and write it into the plans (saved to the results folder for prediction)."""
        from nnunetv2_sss.networks.sam2_config import PLANS_KEY
        trainer.sam2_spec = spec
        entry = spec.to_plans()
        trainer.configuration_manager.configuration[PLANS_KEY] = entry
        trainer.plans_manager.plans['configurations'][trainer.configuration_name][PLANS_KEY] = entry

    def before_load_checkpoint(self, trainer, checkpoint: dict) -> None:
        """``--c`` / ``--val``: the checkpoint's own SAM-2 config and weights, no SAM-2 variables."""
        from nnunetv2_sss.networks.sam2_config import PLANS_KEY, SAM2NetworkSpec
        if trainer.was_initialized:
            return
        trainer.weights_from_nnunet_checkpoint = True
        trained = checkpoint['init_args']['plans']['configurations'][trainer.configuration_name]
        if PLANS_KEY in trained:
            self.set_spec(trainer, SAM2NetworkSpec.from_configuration(trained, trainer.configuration_name))

    def before_initialize(self, trainer) -> None:
        from nnunetv2_sss import settings
        from nnunetv2_sss.networks.sam2_config import SAM2NetworkSpec
        if trainer.sam2_spec is None:
            self.set_spec(trainer, SAM2NetworkSpec.from_settings(self.sam2_input_size))
        # a missing checkpoint stops the run before the network is built
        trainer.sam2_checkpoint = None if trainer.weights_from_nnunet_checkpoint else \
            settings.require_sam2_checkpoint()

    def after_initialize(self, trainer) -> None:
        if trainer.sam2_checkpoint is not None:
            self.load_weights(trainer, trainer.sam2_checkpoint)

    def load_weights(self, trainer, checkpoint: str) -> None:
        """Initialise the image encoder from ``checkpoint`` (or leave it random), log and record it."""
        from batchgenerators.utilities.file_and_folder_operations import join, save_json
        from nnunetv2_sss import settings
        from nnunetv2_sss.networks.sam2_checkpoint import load_image_encoder_weights
        spec = trainer.sam2_spec
        record = {'config': spec.config, 'encoder_input_size': spec.encoder_input_size,
                  'checkpoint': checkpoint, 'sha256': None}
        if checkpoint == settings.RANDOM_WEIGHTS:
            trainer.print_to_log_file(f"WARNING: {settings.SAM2_CHECKPOINT}={settings.RANDOM_WEIGHTS}: the SAM-2 image "
                                      f"encoder ({spec.config}) starts from RANDOM weights, not from a "
                                      f"pretrained SAM-2 checkpoint.")
        else:
            report = load_image_encoder_weights(unwrap(trainer.network).pretrained_encoder, checkpoint)
            trainer.print_to_log_file(f"SAM-2 config {spec.config}; {report.summary()}")
            record.update(sha256=report.sha256, loaded_tensors=len(report.loaded), missing_keys=report.missing,
                          unexpected_keys=report.unexpected, ignored_tensors=report.ignored)
        if trainer.local_rank == 0:
            save_json(record, join(trainer.output_folder, WEIGHTS_RECORD), sort_keys=False)

    def deep_supervision_scales(self, trainer) -> Optional[list]:
        from nnunetv2_sss.networks.sam2_unet import configuration_level_strides, deep_supervision_scales
        if trainer.sam2_spec is None:
            raise RuntimeError("the SAM-2 network is only known after initialize()")
        return deep_supervision_scales(configuration_level_strides(trainer.sam2_spec, trainer.configuration_manager))

    def configure_optimizers(self, trainer) -> Optional[tuple]:
        from nnunetv2_sss.training.lr_schedule import WarmupCosineLRScheduler
        network = unwrap(trainer.network)
        encoder_parameters = list(network.pretrained_encoder.parameters())
        freeze = self.freeze_encoder
        if freeze:
            for parameter in encoder_parameters:
                parameter.requires_grad_(False)
        encoder_ids = {id(p) for p in encoder_parameters}
        groups = [{'params': [p for p in network.parameters() if id(p) not in encoder_ids], 'lr': trainer.initial_lr}]
        if not freeze:
            groups.append({'params': encoder_parameters,
                           'lr': trainer.initial_lr * self.encoder_lr_factor})
        optimizer = torch.optim.AdamW(groups, lr=trainer.initial_lr, betas=(0.9, 0.999),
                                      weight_decay=trainer.weight_decay)
        warmup = min(round(self.warmup_fraction * trainer.num_epochs), trainer.num_epochs - 1)
        return optimizer, WarmupCosineLRScheduler(optimizer, warmup, trainer.num_epochs)


WEIGHTS_RECORD = "sam2_weights.json"


class SSSRecipe(SAM2Recipe):
    """SAM-2 U-Net + DFE (``use_dfe``) + SAM-2's prompt head (``use_pcsw``). ``dfe_checkpointing``: DFE's
    two-view pass recomputed in the backward pass (training only; it keeps the two views' features instead
    of about six times as much, ``networks/activation_checkpointing.py``)."""
    defaults = {'use_dfe': True, 'use_pcsw': True, 'dfe_checkpointing': True}

    def checkpointed(self, network: nn.Module) -> nn.Module:
        if self.dfe_checkpointing:
            from nnunetv2_sss.networks.activation_checkpointing import set_dfe_checkpointing
            set_dfe_checkpointing(network)
        return super().checkpointed(network)

    def build(self, plans_manager, configuration_manager, num_input_channels: int, num_output_channels: int,
              enable_deep_supervision: bool) -> nn.Module:
        from nnunetv2_sss.networks.sam2_config import SAM2NetworkSpec
        from nnunetv2_sss.networks.sam2_unet import configuration_layout
        from nnunetv2_sss.networks.sss_network import SSSNetwork, prompt_slice_size
        spec = SAM2NetworkSpec.from_configuration(configuration_manager.configuration)
        conv_dim, slice_axis = configuration_layout(configuration_manager)
        return NetworkPasses(self.checkpointed(SSSNetwork(
            spec.image_encoder, num_input_channels, num_output_channels, conv_dim, slice_axis,
            spec.encoder_input_size, enable_deep_supervision, self.use_dfe,
            prompt_slice_size(configuration_manager) if self.use_pcsw else None)))
