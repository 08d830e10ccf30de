"""``Pretrain<TRAINER>``: the trainer nnU-Net finds by name, made to pretrain its own network by masked image
modelling.

:func:`pretraining_trainer_class` subclasses the named trainer (a semi-supervised trainer of the plugin:
the plugin's supervised base with the same network recipe and recipe options, so that none of the
semi-supervised machinery runs; only the student network is pretrained) with :class:`PretrainingMixin`
first. nnU-Net's own ``run_training`` loop, epoch log, ``progress.png``, ``checkpoint_latest.pth`` (every
epoch, written atomically) / ``checkpoint_final.pth`` and ``load_checkpoint`` (``--c``) do the rest. What
the mixin changes:

- the network: the trainer's own ``build_network_architecture`` with as many output channels as input
  channels and deep supervision off, plus the mask token (``pretraining_mask_token``, one value per input
  channel) registered on it, so the optimiser trains it and the checkpoints hold it;
- the data: images only (``data/unlabeled_loader.py``: the image file of a case is read, never its
  segmentation), every case of :mod:`~nnunetv2_sss.pretraining.cases`, nnU-Net's patch sampling and
  spatial augmentation (the weak view of the semi-supervised trainers), no intensity augmentation;
- the step: block mask -> masked input -> network -> masked MSE (:mod:`~nnunetv2_sss.pretraining.masking`),
  with the trainer's optimiser, schedule, mixed precision and nnU-Net's gradient clipping (12);
- validation: the same loss on the held-out cases, each epoch with the same mask stream; pseudo Dice does
  not exist here (logged as NaN, so nnU-Net's plot keeps its shape); no ``checkpoint_best.pth``;
- the output folder: ``nnUNet_results/<dataset>/Pretrain<TRAINER>__<plans>__<configuration>/`` itself
  (no ``fold_X``).
"""
from __future__ import annotations

import contextlib
import os
from time import perf_counter, time
from typing import List, Optional

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgenerators.utilities.file_and_folder_operations import join
from torch import nn

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2_sss.networks.passes import innermost
from nnunetv2_sss.pretraining.masking import (DEFAULT_MASK_RATIO, block_mask, masked_input, masked_mse,
                                              total_stride)
from nnunetv2_sss.training import options as trainer_options
from nnunetv2_sss.training.base import nnUNetTrainerPlugin
from nnunetv2_sss.training.semi_supervised import nnUNetTrainerSemiSupervised

PREFIX = "Pretrain"
MASK_TOKEN = "pretraining_mask_token"  # parameter of the network (checkpoints hold it; the exports do not)
VALIDATION_MASK_SEED = 4242  # the validation masks of every epoch come from this seed


def attach_mask_token(network: nn.Module, channels: int) -> nn.Module:
    innermost(network).register_parameter(MASK_TOKEN, nn.Parameter(torch.zeros(channels)))
    return network


def without_mask_token(state_dict: dict) -> dict:
    return {k: v for k, v in state_dict.items() if k != MASK_TOKEN and not k.endswith('.' + MASK_TOKEN)}


class _ImagesOnlyDataset:
    """Stands in for nnU-Net's dataset class where nnU-Net's ``on_train_start`` unpacks the training folder
    (``nnUNetDatasetNumpy`` would decompress the segmentations too): pretraining unpacks nothing."""

    @staticmethod
    def unpack_dataset(*args, **kwargs) -> None:
        return None


class PretrainingMixin:
    """Masked image modelling in place of the segmentation objective (module docstring)."""
    source_trainer: type = None  # the trainer named by -tr (set by pretraining_trainer_class)

    # ---- nnU-Net's output folder is the results folder itself --------------------------------------
    @property
    def output_folder(self) -> Optional[str]:
        return self.output_folder_base

    @output_folder.setter
    def output_folder(self, value) -> None:  # nnU-Net's __init__ sets <base>/fold_X
        pass

    def __init__(self, plans: dict, configuration: str, fold, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
        self.save_every = 1
        self.mask_ratio = DEFAULT_MASK_RATIO
        self.mask_block_size = None  # -> initialize (the network's total stride)
        self.pretraining_cases = None  # PretrainingCases, set by the command
        self.mask_generator = torch.Generator(device=self.device)
        self.mask_generator.seed()
        self.validation_mask_generator = torch.Generator(device=self.device)

    # ---- the network ----------------------------------------------------------------------------------
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        """The named trainer's network, with output channels = input channels, no deep supervision, and the
        mask token."""
        network = cls.source_trainer.build_network_architecture(plans_manager, configuration_manager,
                                                                num_input_channels, num_input_channels, False)
        return attach_mask_token(network, num_input_channels)

    @property
    def mask_token(self) -> nn.Parameter:
        return getattr(innermost(self.network), MASK_TOKEN)

    def initialize(self):
        super().initialize()
        self.dataset_class = _ImagesOnlyDataset
        conv_dim = len(self.configuration_manager.patch_size)
        self.mask_block_size = total_stride(innermost(self.network), conv_dim, self.configuration_manager)
        self.print_to_log_file(f"Pretraining (masked image modelling): mask ratio {self.mask_ratio}, blocks of "
                               f"{self.mask_block_size} voxels (the network's total stride), patch "
                               f"{tuple(self.configuration_manager.patch_size)}, network "
                               f"{type(innermost(self.network)).__name__} of {self.source_trainer.__name__}")

    def set_deep_supervision_enabled(self, enabled: bool):
        super().set_deep_supervision_enabled(False)

    # ---- data: images only ----------------------------------------------------------------------------
    def get_dataloaders(self):
        from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
        from nnunetv2_sss.data.unlabeled_loader import UnlabeledDataLoader, UnlabeledImages
        from nnunetv2_sss.ssl.views import weak_view_transforms
        cases = self.pretraining_cases
        if cases is None:
            raise RuntimeError("pretraining_cases must be set before training")
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        patch_size = tuple(self.configuration_manager.patch_size)
        train = UnlabeledDataLoader(UnlabeledImages(cases.training), self.batch_size, initial_patch_size, patch_size,
                                    self.label_manager, weak_view_transforms(patch_size, rotation, mirror_axes, dummy_2d),
                                    None, 0)
        validation = UnlabeledDataLoader(UnlabeledImages(cases.validation), self.batch_size, patch_size, patch_size,
                                         self.label_manager, ComposeTransforms([]), None, 0)
        self.print_to_log_file(f"Pretraining on {cases.count()} cases, validation on {cases.count('validation')} "
                               + ("held-out cases" if cases.held_out else "of the training cases (too few cases to "
                                                                         "hold any out)"))
        processes = get_allowed_n_proc_DA()
        if processes == 0:
            return SingleThreadedAugmenter(train, None), SingleThreadedAugmenter(validation, None)
        pin = self.device.type == 'cuda'
        return (NonDetMultiThreadedAugmenter(train, None, processes, num_cached=max(6, processes // 2), seeds=None,
                                             pin_memory=pin, wait_time=0.002),
                NonDetMultiThreadedAugmenter(validation, None, max(1, processes // 2),
                                             num_cached=max(3, processes // 4), seeds=None, pin_memory=pin,
                                             wait_time=0.002))

    # ---- the step ---------------------------------------------------------------------------------------
    def _autocast(self):
        precision = getattr(self, 'precision', None)  # the plugin's trainers (training/precision.py)
        if precision is not None:
            return precision.autocast()
        return torch.autocast(self.device.type, enabled=True) if self.device.type == 'cuda' \
            else contextlib.nullcontext()

    def reconstruction_loss(self, data: torch.Tensor, generator: torch.Generator):
        """Masked MSE of one batch ``(B, C, *patch)``; returns ``(loss, mask)``."""
        mask = block_mask(data.shape[0], data.shape[2:], self.mask_block_size, self.mask_ratio, generator)
        with self._autocast():
            output = self.network(masked_input(data, mask, self.mask_token))
        if isinstance(output, (list, tuple)):
            output = output[0]
        return masked_mse(output, data, mask), mask

    def train_step(self, batch: dict) -> dict:
        data = batch['data'].to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        loss, _ = self.reconstruction_loss(data, self.mask_generator)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        return {'loss': loss.detach().cpu().numpy()}

    def on_validation_epoch_start(self):
        self.network.eval()
        self.validation_mask_generator.manual_seed(VALIDATION_MASK_SEED)

    def validation_step(self, batch: dict) -> dict:
        data = batch['data'].to(self.device, non_blocking=True)
        loss, _ = self.reconstruction_loss(data, self.validation_mask_generator)
        return {'loss': loss.detach().cpu().numpy()}

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        losses = collate_outputs(val_outputs)['loss'] if val_outputs else [np.nan]
        if self.is_ddp:
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, losses)
            losses = np.concatenate([np.atleast_1d(x) for x in gathered])
        self.logger.log('val_losses', float(np.mean(losses)), self.current_epoch)
        self.logger.log('mean_fg_dice', float('nan'), self.current_epoch)  # no Dice here; keeps the plot's shape
        self.logger.log('dice_per_class_or_region', [], self.current_epoch)

    # ---- epoch end: log, progress.png, checkpoint_latest.pth (not nnU-Net's pseudo-Dice bookkeeping) ----
    def on_epoch_end(self):
        self.logger.log('epoch_end_timestamps', time(), self.current_epoch)
        self.print_to_log_file('train_loss (masked MSE)',
                               np.round(self.logger.get_value('train_losses', step=-1), decimals=4))
        self.print_to_log_file('val_loss (masked MSE)', np.round(self.logger.get_value('val_losses', step=-1), decimals=4))
        seconds = self.logger.get_value('epoch_end_timestamps', step=-1) - \
            self.logger.get_value('epoch_start_timestamps', step=-1)
        self.print_to_log_file(f"Epoch time: {np.round(seconds, decimals=2)} s")
        if self.local_rank == 0:
            self.logger.plot_progress_png(self.output_folder)
        self.current_epoch += 1
        completed = self.current_epoch
        if completed < self.num_epochs and not self.disable_checkpointing:
            started = perf_counter()
            self.current_epoch -= 1  # save_checkpoint stores current_epoch + 1
            try:
                self.save_checkpoint(join(self.output_folder, 'checkpoint_latest.pth'))
            finally:
                self.current_epoch += 1
            self.print_to_log_file(f"checkpoint_latest.pth: {completed} epochs done "
                                   f"(written in {perf_counter() - started:.3f} s)")

    def save_checkpoint(self, filename: str) -> None:
        """The trainer's checkpoint; nnU-Net's own trainers write it in place, so it goes to ``<file>.tmp``
        first and is moved onto ``filename`` (the plugin's trainers write atomically themselves)."""
        if isinstance(self, nnUNetTrainerPlugin) or self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)
        partial = filename + '.tmp'
        try:
            super().save_checkpoint(partial)
            with open(partial, 'rb') as written:
                os.fsync(written.fileno())
            os.replace(partial, filename)
        finally:
            if os.path.exists(partial):
                os.remove(partial)


def pretraining_trainer_class(trainer_class: type) -> type:
    """``Pretrain<name>``: :class:`PretrainingMixin` on top of ``trainer_class`` (module docstring)."""
    if not (isinstance(trainer_class, type) and issubclass(trainer_class, nnUNetTrainer)):
        raise TypeError(f"{trainer_class!r} is no nnU-Net trainer class")
    namespace = {'source_trainer': trainer_class, '__module__': __name__,
                 '__doc__': f"Masked image modelling on the network of {trainer_class.__name__}."}
    base = trainer_class
    if issubclass(trainer_class, nnUNetTrainerSemiSupervised):
        # the plugin's supervised base with the same recipe and recipe / nnU-Net options: the semi-supervised
        # machinery (unlabeled loader, teacher, objective) is not part of pretraining
        base = nnUNetTrainerPlugin
        names = set(trainer_options.declared_defaults(trainer_class.recipe)) | set(trainer_options.NNUNET_OPTIONS)
        namespace['recipe'] = trainer_class.recipe
        namespace.update({name: value for name, (value, _) in
                          trainer_options.class_overrides(trainer_class, names, nnUNetTrainerSemiSupervised).items()})
    recipe = getattr(trainer_class, 'recipe', None)
    if recipe is not None and 'encoder_lr_factor' in trainer_options.declared_defaults(recipe):
        # the SAM-2 recipe trains a pretrained encoder 10x slower; here the encoder is what is being learned
        namespace.update(encoder_lr_factor=1.0, freeze_encoder=False)
    return type(f"{PREFIX}{trainer_class.__name__}", (PretrainingMixin, base), namespace)
