"""``nnUNetv2_train ... -pretrained_weights FILE`` for the plugin's trainers: checked first, and every model the
trainer holds starts from it.

nnU-Net's ``run_training`` (``maybe_load_checkpoint``) initialises the trainer and then loads ``FILE`` into
``trainer.network`` only (``nnunetv2.run.load_pretrained_weights``, every tensor but the segmentation
layers). The semi-supervised trainers build their other models in ``initialize``, before that: the EMA
teacher (a copy of the student) and the objective's extra trained modules (CPS's ``network_b``), which
would keep their random start. :func:`install` (called once when the plugin's trainer base is imported,
i.e. when nnU-Net has found a plugin trainer by name) wraps nnU-Net's ``maybe_load_checkpoint``; for a
plugin trainer with ``-pretrained_weights`` it

1. checks the file against the network (:func:`check_compatible`): a file that is no nnU-Net checkpoint (a
   SAM-2 ``.pt`` belongs in ``nnUNet_sss_sam2_checkpoint``), another network class or number of input
   channels (``pretraining`` record of ``nnUNetv2_sss_pretrain``), a missing tensor or another shape stop
   the training with one ``ERROR: ...`` line naming the difference (nnU-Net's loader would fail with an
   assertion and a traceback);
2. runs nnU-Net's own loading (the student);
3. brings every other model in line (:func:`start_every_model`): the EMA teacher becomes a copy of the
   loaded student; every extra trained module of the objective is loaded from the same file with nnU-Net's
   loader.

Everything else (other trainers, ``--c``, ``--val``) goes to nnU-Net's function unchanged.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch

from nnunetv2_sss.errors import UserValueError

SKIPPED = ('.seg_layers.',)  # what nnU-Net's load_pretrained_weights leaves out
_INSTALLED = '_sss_pretrained_start'


def _skipped(key: str) -> bool:
    return any(s in key for s in SKIPPED)


def read_checkpoint(path: str) -> dict:
    """The checkpoint dict of ``path``; one-line errors for what nnU-Net's loader cannot take."""
    where = f"-pretrained_weights {path}"
    if not os.path.isfile(path):
        raise UserValueError(f"{where}: file not found")
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's to replace
        raise UserValueError(f"{where}: cannot be read as a PyTorch checkpoint ({type(error).__name__}: "
                             f"{' '.join(str(error).split())[:200]})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get('network_weights'), dict):
        hint = (": it is a SAM-2-format checkpoint (the output of nnUNetv2_sss_pretrain for a SAM-2 network); set "
                "nnUNet_sss_sam2_checkpoint to it instead" if isinstance(checkpoint, dict) and 'model' in checkpoint
                else "")
        raise UserValueError(f"{where}: no 'network_weights' in it, not an nnU-Net checkpoint{hint}")
    return checkpoint


def check_compatible(trainer, path: str, checkpoint: Optional[dict] = None) -> None:
    """Raise a one-line :class:`UserValueError` naming the first difference between ``path`` and the network of
    ``trainer`` (network class, input channels, a tensor the network has and the file lacks, a shape)."""
    from nnunetv2_sss.pretraining.trainer import innermost
    checkpoint = read_checkpoint(path) if checkpoint is None else checkpoint
    network = innermost(trainer.network)
    here = f"this run ({type(trainer).__name__}, {trainer.configuration_name}) builds {type(network).__name__} with " \
           f"{trainer.num_input_channels} input channel(s)"
    record = checkpoint.get('pretraining') if isinstance(checkpoint.get('pretraining'), dict) else None
    where = f"-pretrained_weights {path}"
    if record is not None:
        made = (f"it was pretrained for {record.get('network_class')} with {record.get('input_channels')} input "
                f"channel(s) ({record.get('trainer')}, {record.get('dataset')}, {record.get('configuration')}, "
                f"plans {record.get('plans')})")
        if record.get('network_class') not in (None, type(network).__name__):
            raise UserValueError(f"{where}: another network: {made}, {here}; pretrain with -tr of this trainer "
                                 f"and -c {trainer.configuration_name}")
        if record.get('input_channels') not in (None, trainer.num_input_channels):
            raise UserValueError(f"{where}: other input channels: {made}, {here}; pretrain on a dataset with the "
                                 f"same channels")
    weights = checkpoint['network_weights']
    own = network.state_dict()
    for key, tensor in own.items():
        if _skipped(key):
            continue
        if key not in weights:
            raise UserValueError(f"{where}: the network's tensor {key} is not in the file ({here}; the file holds "
                                 f"{len(weights)} tensors): it was made for another network")
        if tuple(weights[key].shape) != tuple(tensor.shape):
            raise UserValueError(f"{where}: tensor {key} has shape {tuple(weights[key].shape)} in the file and "
                                 f"{tuple(tensor.shape)} in the network ({here}): it was made for another network "
                                 f"or number of input channels")


def start_every_model(trainer, path: str) -> None:
    """After nnU-Net loaded ``path`` into the student: the EMA teacher copies it, every extra trained module of
    the objective loads ``path`` with nnU-Net's loader."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunetv2_sss.networks.passes import unwrap
    teacher = getattr(trainer, 'teacher', None)
    if teacher is not None:
        teacher.load_state_dict(unwrap(trainer.network).state_dict())
        trainer.print_to_log_file(f"EMA teacher: a copy of the student loaded from {path}")
    objective = getattr(trainer, 'ssl_objective', None)
    for name, module in (getattr(objective, 'trained_modules', None) or {}).items():
        load_pretrained_weights(module, path)
        trainer.print_to_log_file(f"{name}: loaded from {path} (nnU-Net's load_pretrained_weights)")


def load_pretrained_start(trainer, path: str, nnunet_maybe_load_checkpoint) -> None:
    """Check, nnU-Net's loading of the student, then every other model (see the module docstring)."""
    from nnunetv2_sss.errors import UserError
    try:
        if not trainer.was_initialized:
            trainer.initialize()
        check_compatible(trainer, path)
    except UserError as error:
        trainer.stop_on_user_error(error)
    nnunet_maybe_load_checkpoint(trainer, False, False, path)
    trainer.print_to_log_file(f"Student network: loaded from {path} (nnU-Net's load_pretrained_weights)")
    start_every_model(trainer, path)


def install() -> None:
    """Wrap ``nnunetv2.run.run_training.maybe_load_checkpoint`` (once), which nnU-Net's ``run_training`` and
    ``run_ddp`` call as a module global after the trainer is built."""
    from nnunetv2.run import run_training as nnunet_run_training
    original = nnunet_run_training.maybe_load_checkpoint
    if getattr(original, _INSTALLED, False):
        return

    @functools.wraps(original)
    def maybe_load_checkpoint(nnunet_trainer, continue_training: bool, validation_only: bool,
                              pretrained_weights_file: str = None):
        from nnunetv2_sss.training.base import nnUNetTrainerPlugin
        if pretrained_weights_file is None or continue_training or validation_only or \
                not isinstance(nnunet_trainer, nnUNetTrainerPlugin):
            return original(nnunet_trainer, continue_training, validation_only, pretrained_weights_file)
        return load_pretrained_start(nnunet_trainer, pretrained_weights_file, original)

    setattr(maybe_load_checkpoint, _INSTALLED, True)
    nnunet_run_training.maybe_load_checkpoint = maybe_load_checkpoint
