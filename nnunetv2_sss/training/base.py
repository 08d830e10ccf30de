"""``nnUNetTrainerPlugin``: what every trainer of the plugin shares with nnU-Net's own.

- the ``nnUNet_sss_*`` training-length overrides (``settings.py``);
- atomic checkpoint files;
- extra checkpoint state through two hooks (``extra_checkpoint_state`` /
  ``load_extra_checkpoint_state``), which nnU-Net's ``save_checkpoint`` lacks.
"""
from __future__ import annotations

from typing import Union

import torch
from torch._dynamo import OptimizedModule

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2_sss.training.checkpoint_io import save_atomically
from nnunetv2_sss.training.schedule import apply_schedule_overrides


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The plain module behind DDP and ``torch.compile`` wrappers."""
    if isinstance(module, torch.nn.parallel.DistributedDataParallel):
        module = module.module
    if isinstance(module, OptimizedModule):
        module = module._orig_mod
    return module


class nnUNetTrainerPlugin(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        apply_schedule_overrides(self)

    # ---- hooks for subclasses -------------------------------------------------------------
    def exported_network_weights(self) -> dict:
        """State dict written as ``network_weights`` (what ``nnUNetv2_predict`` loads)."""
        return unwrap(self.network).state_dict()

    def extra_checkpoint_state(self) -> dict:
        """Additional entries of the checkpoint dict."""
        return {}

    def load_extra_checkpoint_state(self, checkpoint: dict) -> None:
        """Restore what ``extra_checkpoint_state`` saved (called after the network is loaded)."""

    def trained_network_weights(self, checkpoint: dict) -> dict:
        """The state dict to put into ``self.network`` when resuming."""
        return checkpoint['network_weights']

    # ---- nnU-Net's checkpoint I/O, atomic and with the hooks above -------------------------
    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file('No checkpoint written, checkpointing is disabled')
            return
        checkpoint = {
            'network_weights': self.exported_network_weights(),
            'optimizer_state': self.optimizer.state_dict(),
            'grad_scaler_state': self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            'logging': self.logger.get_checkpoint(),
            '_best_ema': self._best_ema,
            'current_epoch': self.current_epoch + 1,
            'init_args': self.my_init_kwargs,
            'trainer_name': self.__class__.__name__,
            'inference_allowed_mirroring_axes': self.inference_allowed_mirroring_axes,
        }
        checkpoint.update(self.extra_checkpoint_state())
        save_atomically(checkpoint, filename)

    def load_checkpoint(self, filename_or_checkpoint: Union[dict, str]) -> None:
        if not self.was_initialized:
            self.initialize()
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):
            checkpoint = torch.load(checkpoint, map_location=self.device, weights_only=False)
        network = unwrap(self.network)
        own_keys = network.state_dict().keys()
        weights = {(k[7:] if k not in own_keys and k.startswith('module.') else k): v
                   for k, v in self.trained_network_weights(checkpoint).items()}
        network.load_state_dict(weights)

        self.my_init_kwargs = checkpoint['init_args']
        self.current_epoch = checkpoint['current_epoch']
        self.logger.load_checkpoint(checkpoint['logging'])
        self._best_ema = checkpoint['_best_ema']
        self.inference_allowed_mirroring_axes = checkpoint.get('inference_allowed_mirroring_axes',
                                                               self.inference_allowed_mirroring_axes)
        self.optimizer.load_state_dict(checkpoint['optimizer_state'])
        if self.grad_scaler is not None and checkpoint['grad_scaler_state'] is not None:
            self.grad_scaler.load_state_dict(checkpoint['grad_scaler_state'])
        self.load_extra_checkpoint_state(checkpoint)
