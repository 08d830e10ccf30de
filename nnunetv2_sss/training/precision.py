"""Mixed precision of a trainer and of its network (the recipe's ``mixed_precision`` option).

nnU-Net autocasts to float16 on CUDA (``autocast('cuda', enabled=True)``, the thread's default
CUDA autocast dtype) with a GradScaler, and not at all on other devices. SAM-2 is trained and
published in bfloat16, so the SAM-2 recipes declare ``mixed_precision = 'bf16'``
(``PlainRecipe``: ``'fp16'``, nnU-Net's):

- ``'bf16'`` on a CUDA device with native bfloat16 (compute capability >= 8, or ROCm:
  ``torch.cuda.is_bf16_supported(including_emulation=False)``; an emulated bf16 on older GPUs
  would be much slower than fp16): autocast to bfloat16, **no GradScaler** (bf16 has float32's
  exponent range, loss scaling is not needed); on a CUDA device without it: float16 + nnU-Net's
  GradScaler;
- ``'fp16'``: nnU-Net's float16 + GradScaler;
- on the CPU (and MPS) nothing autocasts, as in nnU-Net; the option applies on CUDA.

Where it acts:

- the trainer (:func:`select`, in ``nnUNetTrainerPlugin.__init__``): ``trainer.precision``; the
  GradScaler is dropped for bf16; the semi-supervised step autocasts with
  :meth:`MixedPrecision.autocast`; nnU-Net's own ``train_step``, ``validation_step`` and
  ``perform_actual_validation`` (whose ``autocast(device, enabled=True)`` takes the thread's default
  dtype) run inside :meth:`MixedPrecision.default_dtype`, so nnU-Net's code is not copied;
- the network (:func:`network_autocast`, in ``NetworkPasses.forward``): it is built with the
  recipe's option (``build_network_architecture``, which ``nnUNetv2_predict`` calls too) and
  re-enters autocast with its own dtype when its caller autocasts on CUDA with another one. So
  ``nnUNetv2_predict`` (nnU-Net's predictor, float16 autocast, another process without a trainer)
  runs a SAM-2 network in bfloat16 as it was trained; the predictor still sums the tiles' logits in
  its float16 buffer, as for every nnU-Net model.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch

from nnunetv2_sss.errors import UserValueError

OPTION = 'mixed_precision'
DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16}


def cuda_bf16_supported(device: Optional[torch.device] = None) -> bool:
    """Whether the CUDA device (default: the current one) computes in bfloat16 natively: what
    ``torch.cuda.is_bf16_supported(including_emulation=False)`` answers for the current device (ROCm, or
    compute capability >= 8), for any device and with calls that ``torch.compile`` folds to constants."""
    if not torch.cuda.is_available():
        return False
    if torch.version.hip:
        return True
    return torch.cuda.get_device_properties(device if device is not None else torch.cuda.current_device()).major >= 8


def cuda_dtype(mixed_precision: str, device: Optional[torch.device] = None) -> torch.dtype:
    """The CUDA autocast dtype of an option value: bf16 where the device has it, else fp16."""
    check(mixed_precision)
    if mixed_precision == 'bf16' and not cuda_bf16_supported(device):
        return torch.float16
    return DTYPES[mixed_precision]


def check(mixed_precision) -> None:
    if mixed_precision not in DTYPES:
        raise UserValueError(f"option {OPTION}={mixed_precision!r} is none of {sorted(DTYPES)}: set it as a class "
                             f"attribute of the trainer, e.g. {OPTION} = 'fp16'")


@dataclass(frozen=True)
class MixedPrecision:
    """A trainer's precision: ``dtype`` None means no autocast (float32)."""
    device_type: str
    dtype: Optional[torch.dtype]
    description: str  # the log line

    @property
    def uses_grad_scaler(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self):
        """The autocast context of a step (a no-op without a dtype)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def default_dtype(self):
        """This thread's default autocast dtype of the device set to ``dtype`` for the block, so that
        nnU-Net's ``autocast(device, enabled=True)`` inside it autocasts to ``dtype``."""
        return default_autocast_dtype(self.device_type, self.dtype) if self.dtype is not None \
            else contextlib.nullcontext()


@contextlib.contextmanager
def default_autocast_dtype(device_type: str, dtype: torch.dtype):
    """``torch.set_autocast_dtype`` for the block (thread-local state), restored afterwards."""
    previous = torch.get_autocast_dtype(device_type)
    torch.set_autocast_dtype(device_type, dtype)
    try:
        yield
    finally:
        torch.set_autocast_dtype(device_type, previous)


def select(mixed_precision: str, device: torch.device, source: str) -> MixedPrecision:
    """The precision of a trainer on ``device`` for the option value ``mixed_precision`` (declared or set
    by ``source``, e.g. ``'SAM2Recipe'``), with the log line saying what is used and why."""
    check(mixed_precision)
    option = f"{OPTION} = {mixed_precision!r} from {source}"
    if device.type != 'cuda':
        return MixedPrecision(device.type, None, f"mixed precision: none, float32 on {device.type} (nnU-Net autocasts "
                                                 f"on CUDA only; {option} applies there)")
    dtype = cuda_dtype(mixed_precision, device)
    if dtype == torch.bfloat16:
        return MixedPrecision('cuda', dtype, f"mixed precision: bf16 autocast, no GradScaler ({option}; the device "
                                             f"supports bf16)")
    why = "the device has no native bf16" if mixed_precision == 'bf16' else "nnU-Net's"
    return MixedPrecision('cuda', dtype, f"mixed precision: fp16 autocast + GradScaler ({option}; {why})")


def network_autocast(mixed_precision: Optional[str]):
    """For a network's forward: autocast to the network's own dtype if the caller autocasts on CUDA with
    another one (nnU-Net's predictor: float16); else nothing (the caller's precision, also on the CPU)."""
    if mixed_precision is None or not torch.is_autocast_enabled('cuda'):
        return contextlib.nullcontext()
    dtype = cuda_dtype(mixed_precision)
    if dtype == torch.get_autocast_dtype('cuda'):
        return contextlib.nullcontext()
    return torch.autocast('cuda', dtype=dtype)


def configure(trainer) -> None:
    """``trainer.precision`` from its recipe's option (``trainer.network_recipe``), the GradScaler dropped
    where it is not needed (bf16; nnU-Net's ``__init__`` made one for every CUDA device), and the log line."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2_sss.training.options import class_overrides, declared_defaults
    source = class_overrides(type(trainer), [OPTION], nnUNetTrainer).get(OPTION) or \
        declared_defaults(trainer.recipe).get(OPTION, (None, trainer.recipe.__name__))
    trainer.precision = select(trainer.network_recipe.mixed_precision, trainer.device, source[1])
    if not trainer.precision.uses_grad_scaler:
        trainer.grad_scaler = None
    trainer.print_to_log_file(trainer.precision.description)
