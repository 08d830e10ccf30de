"""Activation checkpointing of the Hiera blocks of SAM-2's image encoder (``SAM2Recipe`` option
``activation_checkpointing``) and of SSS's DFE on two views (``SSSRecipe`` option ``dfe_checkpointing``).

Each ``MultiScaleBlock`` of the trunk keeps only its input during the forward pass and recomputes its
activations in the backward pass (``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``, which
restores the random state and the autocast state for the recomputation). It applies in training only:
in eval mode (the EMA teacher, validation, ``nnUNetv2_predict``) or without gradients the block runs as it
is. Gradients are those without checkpointing (the same operations run again); the cost is one more
forward pass of the Hiera blocks per step.

DFE (``sss/dfe.py``) on the two strong views saves about six times the two views' features at a scale
(the MLP's inputs and hidden activations, the pair of MLP outputs, the projections' inputs); checkpointed
per scale (``ScaleDFE.pair``) it keeps only the two views' features and recomputes the rest (1x1
convolutions) in the backward pass, after the decoder's activations are gone.

The blocks keep their class's parameters and names (the class is swapped for a subclass whose ``forward``
checkpoints), so state dicts, SAM-2 checkpoints, ``deepcopy`` (the EMA teacher), DDP and pickling are
unaffected.
"""
from __future__ import annotations

import torch
from sam2.modeling.backbones.hieradet import MultiScaleBlock
from torch import nn

from nnunetv2_sss.sss.dfe import ScaleDFE


def checkpointed_call(function, *inputs: torch.Tensor):
    """``function(*inputs)``, its activations recomputed in the backward pass
    (``checkpoint(..., use_reentrant=False)``); while a saved-bytes tracker is active
    (``training/memory.py``), what the checkpoint holds is reported to it."""
    from nnunetv2_sss.training.memory import active_tracker, tracked_checkpoint
    tracker = active_tracker()
    if tracker is not None:
        return tracked_checkpoint(function, *inputs, tracker=tracker)
    from torch.utils.checkpoint import checkpoint
    return checkpoint(function, *inputs, use_reentrant=False)


class CheckpointedMultiScaleBlock(MultiScaleBlock):
    """A Hiera block whose activations are recomputed in the backward pass (training only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        run = super().forward
        if not (self.training and torch.is_grad_enabled()):
            return run(x)
        return checkpointed_call(run, x)


class CheckpointedScaleDFE(ScaleDFE):
    """DFE at one scale whose two-view pass (``pair``) is recomputed in the backward pass (training only)."""

    def pair(self, f_a: torch.Tensor, f_b: torch.Tensor):
        run = super().pair
        if not (self.training and torch.is_grad_enabled()):
            return run(f_a, f_b)
        return checkpointed_call(run, f_a, f_b)


def hiera_blocks(module: nn.Module) -> list:
    """The Hiera blocks (``MultiScaleBlock``, checkpointed or not) inside ``module``."""
    return [m for m in module.modules() if isinstance(m, MultiScaleBlock)]


def set_activation_checkpointing(module: nn.Module, enabled: bool = True) -> int:
    """Checkpoint (or not) every Hiera block inside ``module``; returns the number of blocks."""
    blocks = [b for b in hiera_blocks(module) if type(b) in (MultiScaleBlock, CheckpointedMultiScaleBlock)]
    for block in blocks:
        block.__class__ = CheckpointedMultiScaleBlock if enabled else MultiScaleBlock
    return len(blocks)


def activation_checkpointing_enabled(module: nn.Module) -> bool:
    """Whether every Hiera block inside ``module`` is checkpointed (False if it has none)."""
    blocks = hiera_blocks(module)
    return bool(blocks) and all(type(b) is CheckpointedMultiScaleBlock for b in blocks)


def set_dfe_checkpointing(module: nn.Module, enabled: bool = True) -> int:
    """Checkpoint (or not) the two-view pass of every DFE scale inside ``module``; returns their number."""
    scales = [m for m in module.modules() if type(m) in (ScaleDFE, CheckpointedScaleDFE)]
    for scale in scales:
        scale.__class__ = CheckpointedScaleDFE if enabled else ScaleDFE
    return len(scales)
