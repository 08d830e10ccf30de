"""``nnUNetv2_train ... -pretrained_weights FILE`` with the plugin's trainers.

nnU-Net's ``run_training`` initialises the trainer, loads ``FILE`` into ``trainer.network`` only
(``maybe_load_checkpoint`` -> ``nnunetv2.run.load_pretrained_weights``: every tensor but the segmentation
layers) and then runs the training. The plugin adds two things:

1. **Every model starts from the loaded student** (:func:`start_from_student`, called by the semi-supervised
   trainer's ``on_train_start``, before the first step). Those trainers build their other models in
   ``initialize``, before nnU-Net loads the file: the EMA teacher (a copy of the student) and the objective's
   extra trained modules (CPS's ``network_b``). When the student's weights changed between ``initialize`` and
   the start of training (:func:`weights_fingerprint`) and no checkpoint was loaded (``--c`` restores every
   model itself), the teacher becomes a copy of the student and every extra module takes the student's
   tensors but its own segmentation layers: what nnU-Net's loader would have put into it from the same file.
   This uses the trainer's own hooks only.
2. **The file is checked before nnU-Net's loader sees it** (:func:`check_compatible`): a file that is no
   nnU-Net checkpoint (a SAM-2 ``.pt`` belongs in ``nnUNet_sss_sam2_checkpoint``), another network class or
   number of input channels (the ``pretraining`` record of ``nnUNetv2_sss_pretrain``), a missing tensor or
   another shape stop the training with one ``ERROR: ...`` line naming the difference, where nnU-Net's loader
   fails with an assertion and a traceback. This is the one thing that needs :func:`install`, a wrap of
   nnU-Net's ``maybe_load_checkpoint``: nnU-Net never tells the trainer the file's path, and no trainer method
   runs between its ``initialize`` and its loading. Without the wrap training still starts right (point 1);
   only the one-line error is lost. It would go if nnU-Net loaded pretrained weights through a trainer method
   (e.g. ``nnunet_trainer.load_pretrained_weights(path)`` called by ``maybe_load_checkpoint``), which a trainer
   could override.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch

from nnunetv2_sss.errors import UserValueError
from nnunetv2_sss.networks.passes import innermost, unwrap

SKIPPED = ('.seg_layers.',)  # what nnU-Net's load_pretrained_weights leaves out
_INSTALLED = '_sss_pretrained_weights_check'


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


@torch.no_grad()
def weights_fingerprint(module: torch.nn.Module) -> torch.Tensor:
    """The sum of every floating-point tensor of ``module``'s state dict: it changes when weights are loaded."""
    return torch.stack([t.float().sum() for t in module.state_dict().values() if t.is_floating_point()])


@torch.no_grad()
def start_from_student(trainer, fingerprint: Optional[torch.Tensor]) -> None:
    """If the student's weights are no longer those of ``fingerprint`` (taken when the trainer was initialised;
    ``None``: a checkpoint set every model), the EMA teacher copies the student and every extra trained module of
    the objective takes the student's tensors but its own segmentation layers."""
    student = unwrap(trainer.network)
    if fingerprint is None or torch.equal(fingerprint, weights_fingerprint(student)):
        return
    state = student.state_dict()
    if trainer.teacher is not None:
        trainer.teacher.load_state_dict(state)
        trainer.print_to_log_file("EMA teacher: a copy of the student, whose weights were loaded after the trainer "
                                  "was initialised (-pretrained_weights)")
    for name, module in trainer.ssl_objective.trained_modules.items():
        module = unwrap(module)
        own = module.state_dict()
        module.load_state_dict({**own, **{k: v for k, v in state.items() if k in own and not _skipped(k)}})
        trainer.print_to_log_file(f"{name}: the student's loaded weights but its own segmentation layers (what "
                                  f"nnU-Net's load_pretrained_weights gives it from the same file)")


def install() -> None:
    """Wrap ``nnunetv2.run.run_training.maybe_load_checkpoint`` (once), which nnU-Net's ``run_training`` and
    ``run_ddp`` call as a module global after the trainer is built: with ``-pretrained_weights`` a trainer that
    has ``check_pretrained_weights`` (the plugin's) checks the file first; then nnU-Net's function runs as is."""
    from nnunetv2.run import run_training as nnunet_run_training
    original = nnunet_run_training.maybe_load_checkpoint
    if getattr(original, _INSTALLED, False):
        return

    @functools.wraps(original)
    def maybe_load_checkpoint(nnunet_trainer, continue_training: bool, validation_only: bool,
                              pretrained_weights_file: str = None):
        check = getattr(nnunet_trainer, 'check_pretrained_weights', None)
        if pretrained_weights_file is not None and not (continue_training or validation_only) and check is not None:
            check(pretrained_weights_file)
        return original(nnunet_trainer, continue_training, validation_only, pretrained_weights_file)

    setattr(maybe_load_checkpoint, _INSTALLED, True)
    nnunet_run_training.maybe_load_checkpoint = maybe_load_checkpoint
