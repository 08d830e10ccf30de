"""What pretraining leaves for the existing loaders, in the pretraining's results folder:

- nnU-Net's networks: ``pretrained_weights.pth`` = ``{'network_weights': <state dict>, 'pretraining': <record>}``
  for ``nnUNetv2_train ... -pretrained_weights`` (nnU-Net's ``load_pretrained_weights``: every tensor but the
  segmentation layers, whose output channels are the input channels here). ``transfer='encoder'`` (the
  default) carries the pretrained encoder and the decoder of a freshly built network (nnU-Net's own
  initialisation), as masked-autoencoder pretraining hands on its encoder only: on the lesion benchmark the
  reconstruction decoder made fine-tuning predict background throughout (docs/pretraining.md, "Why the
  encoder only"); ``transfer='all'`` carries the pretrained decoder too;
- the SAM-2 networks: ``sam2_image_encoder.pt`` = ``{'model': {'image_encoder.<key>': ...}, 'pretraining': ...}``,
  SAM-2's checkpoint format, the exact inverse of how ``networks/sam2_checkpoint.py`` maps a SAM-2 checkpoint
  onto the network's ``pretrained_encoder`` (SAM-2's ``ImageEncoder``), for ``nnUNet_sss_sam2_checkpoint``;
- ``pretraining.json``: the record (dataset, configuration, plans, trainer, network class, input channels,
  cases, epochs, iterations, mask ratio, ...), also inside both files (``training/pretrained_start.py``
  compares it with the network that loads them).

Every file is written atomically.
"""
from __future__ import annotations

import datetime
import io
import json
import os
from typing import Optional

import numpy as np
import torch

from nnunetv2_sss.atomic_files import write_atomically, write_text_atomically
from nnunetv2_sss.networks.passes import innermost
from nnunetv2_sss.networks.sam2_checkpoint import IMAGE_ENCODER_PREFIX
from nnunetv2_sss.pretraining.trainer import without_mask_token
from nnunetv2_sss.record_paths import record_path
from nnunetv2_sss.version import version_line

CNN_WEIGHTS = "pretrained_weights.pth"
SAM2_WEIGHTS = "sam2_image_encoder.pt"
RECORD = "pretraining.json"
RECORD_KEY = "pretraining"  # the record inside the weight files


def is_sam2_network(network) -> bool:
    return hasattr(innermost(network), 'pretrained_encoder')


def network_class_name(network) -> str:
    return type(innermost(network)).__name__


def epoch_seconds(trainer) -> Optional[float]:
    """Median seconds per completed epoch (nnU-Net's epoch timestamps)."""
    starts = trainer.logger.get_value('epoch_start_timestamps', step=None)
    ends = trainer.logger.get_value('epoch_end_timestamps', step=None)
    durations = [e - s for s, e in zip(starts, ends)]
    return float(np.median(durations)) if durations else None


def pretraining_record(trainer, dataset: str, plans: str, configuration: str, started: Optional[str] = None) -> dict:
    """What the weights were pretrained on and how (JSON)."""
    cases = trainer.pretraining_cases
    network = trainer.network
    record = {
        'dataset': dataset, 'configuration': configuration, 'plans': plans,
        'trainer': trainer.source_trainer.__name__, 'pretraining_trainer': type(trainer).__name__,
        'network_class': network_class_name(network), 'input_channels': int(trainer.num_input_channels),
        'patch_size': [int(n) for n in trainer.configuration_manager.patch_size],
        'objective': 'masked image modelling: block masks, learnable mask token per input channel, '
                     'MSE on the masked voxels',
        'mask_ratio': float(trainer.mask_ratio), 'mask_block_size': [int(n) for n in trainer.mask_block_size],
        'epochs_done': int(trainer.current_epoch), 'epochs': int(trainer.num_epochs),
        'iterations_per_epoch': int(trainer.num_iterations_per_epoch),
        'iterations': int(trainer.current_epoch * trainer.num_iterations_per_epoch),
        'batch_size': int(trainer.batch_size),
        'num_training_cases': cases.count(), 'num_validation_cases': cases.count('validation'),
        'cases': cases.describe(),
        'train_loss_per_epoch': [float(x) for x in trainer.logger.get_value('train_losses', step=None)],
        'val_loss_per_epoch': [float(x) for x in trainer.logger.get_value('val_losses', step=None)],
        'seconds_per_epoch': epoch_seconds(trainer), 'device': str(trainer.device),
        'started': started, 'written': datetime.datetime.now().isoformat(timespec='seconds'),
        'software': version_line(),
    }
    spec = getattr(trainer, 'sam2_spec', None)
    if spec is not None:
        record['sam2_config'] = spec.config
        start = getattr(trainer, 'sam2_checkpoint', None)
        record['sam2_start'] = None if start is None else record_path(start)
    return record


def _save(path: str, obj) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomically(path, lambda file: file.write(buffer.getvalue()))


TRANSFERS = ('encoder', 'all')


def is_decoder_key(key: str) -> bool:
    """A tensor of nnU-Net's decoder proper (``decoder.encoder.*`` are the encoder's, shared)."""
    return key.startswith('decoder.') and not key.startswith('decoder.encoder.')


def with_fresh_decoder(trainer, weights: dict) -> dict:
    """``weights`` with every decoder tensor replaced by that of a newly built network of the trainer's
    (nnU-Net's initialisation)."""
    fresh = innermost(trainer.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, trainer.num_input_channels,
        trainer.num_input_channels, False)).state_dict()
    return {k: (fresh[k] if is_decoder_key(k) else v) for k, v in weights.items()}


def export_pretrained(trainer, folder: str, record: dict, transfer: str = 'encoder') -> str:
    """Write the weights file of the network's kind and ``pretraining.json``; returns the weights' path.
    ``transfer``: what of a CNN is pretrained in the file (module docstring); a SAM-2 file holds the image
    encoder only."""
    network = innermost(trainer.network)
    record = {**record, 'transferred': 'image encoder' if is_sam2_network(network) else
              {'encoder': 'encoder (decoder: nnU-Net initialisation)', 'all': 'encoder and decoder'}[transfer]}
    if is_sam2_network(network):
        encoder = network.pretrained_encoder.state_dict()
        path = os.path.join(folder, SAM2_WEIGHTS)
        _save(path, {'model': {IMAGE_ENCODER_PREFIX + k: v.detach().cpu().clone() for k, v in encoder.items()},
                     RECORD_KEY: record})
    else:
        weights = without_mask_token(network.state_dict())
        if transfer == 'encoder':
            weights = with_fresh_decoder(trainer, weights)
        path = os.path.join(folder, CNN_WEIGHTS)
        _save(path, {'network_weights': {k: v.detach().cpu().clone() for k, v in weights.items()},
                     RECORD_KEY: record})
    write_text_atomically(os.path.join(folder, RECORD), json.dumps({**record, 'weights': os.path.basename(path)},
                                                                   indent=2) + "\n")
    return path
