"""``Objective``: a semi-supervised method, self-contained.

An objective declares what it needs and the trainer base (``training/semi_supervised.py``) provides
it; a trainer only names the objective and, where it wants other values, overrides options
(``class nnUNetTrainerUniMatchV2_conf90(nnUNetTrainerUniMatchV2): confidence_threshold = 0.90``):

- ``defaults``: its options and their defaults (``training/options.py`` resolves them; the
  objective gets the values as attributes, e.g. ``self.confidence_threshold``);
- ``uses_teacher``: whether the trainer keeps an EMA teacher (:class:`TeacherObjective`, with
  ``ema_decay`` and ``export_teacher``); without one, none is built, updated or saved;
- ``random_generators``: names of the numpy generators it draws from (attributes of the objective,
  seeded by ``nnUNet_sss_seed`` and saved in checkpoints under these names);
- extra trained modules (:meth:`build_modules`, e.g. CPS's second network): the trainer adds
  them to the optimiser, clips, syncs (DDP) and checkpoints them as ``<name>_weights``;
- its own checkpoint state (:meth:`checkpoint_state` / :meth:`load_checkpoint_state`) and what it
  loads before training (:meth:`before_training`);
- ``figures``: logger key -> legend of its figures (``count_figures``: those that are counts, drawn
  on their own axis of progress.png).

It returns each step's losses and figures as a sequence of parts (:meth:`loss_parts`, by default
the labeled part of :meth:`supervised_loss`, then the unlabeled part of :meth:`unlabeled_loss`) and
the weight of the unlabeled loss (:meth:`unlabeled_weight`); the trainer runs the backward pass of
each part before the objective builds the next (so only one part's graph is alive at a time; the
gradients sum to those of the whole loss), then does the optimisation, the EMA update and the
logging. Figures are 0-d tensors (no host round-trip per figure; the trainer fetches them all at
once). Every student computation is a call of ``trainer.network`` (wrapped in DDP on several GPUs,
:mod:`nnunetv2_sss.networks.passes`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
import torch
from torch import nn

Figures = Dict[str, torch.Tensor]  # logger key -> 0-d tensor (or float)


@dataclass
class LossPart:
    """One part of a step's loss, ``supervised + w * unlabeled`` (``w``: the unlabeled weight); the
    trainer runs its backward pass before the objective computes the next part."""
    supervised: Optional[torch.Tensor] = None
    unlabeled: Optional[torch.Tensor] = None
    figures: Figures = field(default_factory=dict)


def first_output(output):
    """Full-resolution logits of a network output (deep supervision returns a list)."""
    return output[0] if isinstance(output, (list, tuple)) else output


class Objective:
    defaults: Dict[str, Any] = {
        'unlabeled_loss_weight': 1.0,      # lambda_u
        'unlabeled_rampup_fraction': 0.0,  # sigmoid ramp-up of lambda_u over this share of the epochs
        'confidence_threshold': 0.95,      # pseudo-label threshold, and the 'confident voxel share' figure
        'num_strong_views': 0,             # strong views the unlabeled loader makes
        'min_unlabeled_batch_size': 1,
        'unlabeled_slabs_in_2d': False,    # 2-D: the unlabeled batch is consecutive slices of one case
    }
    uses_teacher = False
    random_generators: Tuple[str, ...] = ()
    figures: Dict[str, str] = {}
    count_figures: Tuple[str, ...] = ()

    def __init__(self, trainer, **options):
        """``options``: resolved values of ``defaults`` (missing ones keep the default)."""
        from nnunetv2_sss.training.options import declared_defaults
        self.trainer = trainer
        for name, (default, _) in declared_defaults(type(self)).items():
            setattr(self, name, options.get(name, default))
        for name in self.random_generators:
            setattr(self, name, np.random.default_rng())
        self.trained_modules: Dict[str, nn.Module] = {}  # extra trained modules, by checkpoint name

    # ---- life cycle (the trainer calls these) -------------------------------------------------
    def check_configuration(self) -> None:
        """Raise a :class:`~nnunetv2_sss.errors.UserError` for a configuration the method cannot train
        (called when the trainer is initialised)."""

    def build_modules(self) -> None:
        """After the student is built (and, starting from scratch, initialised): build the extra trained
        modules into ``self.trained_modules``."""

    def before_training(self) -> None:
        """When training starts (not for ``--val``): load what only training needs."""

    def checkpoint_state(self) -> Dict[str, Any]:
        """Entries of the checkpoint besides the extra modules' weights."""
        return {}

    def load_checkpoint_state(self, checkpoint: dict) -> None:
        """Restore :meth:`checkpoint_state` (called after the weights are loaded)."""

    # ---- the step ---------------------------------------------------------------------------------
    def unlabeled_weight(self) -> float:
        """``lambda_u`` times the sigmoid ramp-up ``exp(-5 (1 - t)^2)``, ``t`` = progress through the
        first ``unlabeled_rampup_fraction`` of the epochs."""
        rampup_epochs = self.unlabeled_rampup_fraction * self.trainer.num_epochs
        if rampup_epochs <= 0:
            return self.unlabeled_loss_weight
        t = min(1.0, self.trainer.current_epoch / rampup_epochs)
        return self.unlabeled_loss_weight * math.exp(-5.0 * (1.0 - t) ** 2)

    def loss_parts(self, data: torch.Tensor, target, unlabeled: dict) -> Iterator[LossPart]:
        """The step's loss in parts: the labeled part (:meth:`supervised_loss`), then the unlabeled parts
        (:meth:`unlabeled_parts`, which may read the labeled output's values, not its graph)."""
        loss, output, figures = self.supervised_loss(data, target)
        yield LossPart(supervised=loss, figures=figures)
        yield from self.unlabeled_parts(unlabeled, output)

    def unlabeled_parts(self, unlabeled: dict, labeled_output=None) -> Iterator[LossPart]:
        """The unlabeled loss in parts; by default one, :meth:`unlabeled_loss`."""
        loss, figures = self.unlabeled_loss(unlabeled, labeled_output)
        yield LossPart(unlabeled=loss, figures=figures)

    def supervised_loss(self, data: torch.Tensor, target) -> Tuple[torch.Tensor, object, Figures]:
        """nnU-Net's own loss (Dice + CE, deep supervision) on the labeled batch ``data``
        ``(B, C, *spatial)``; returns ``(loss, network output, figures)``."""
        output = self.trainer.network(data)
        return self.trainer.loss(output, target), output, {}

    def unlabeled_loss(self, unlabeled: dict, labeled_output=None) -> Tuple[torch.Tensor, Figures]:
        """The method's loss on one unlabeled batch (already on the device: ``data`` = weak view
        ``(B, C, *spatial)``, ``strong`` = list of strong views) and its figures, at least
        ``ssl_confident_share``. ``labeled_output``: the student's output on the labeled batch."""
        raise NotImplementedError

    def unlabeled_total(self, unlabeled: dict, labeled_output=None) -> Tuple[torch.Tensor, Figures]:
        """The sum of :meth:`unlabeled_parts` and their figures (one graph: for tests and inspection)."""
        parts = list(self.unlabeled_parts(unlabeled, labeled_output))
        return sum(p.unlabeled for p in parts), {k: v for p in parts for k, v in p.figures.items()}

    def confident_share(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Share of voxels whose top probability reaches ``confidence_threshold`` (0-d tensor)."""
        return (probabilities.max(1).values >= self.confidence_threshold).float().mean()


class TeacherObjective(Objective):
    """An objective with an EMA teacher (``trainer.teacher``): updated every iteration with
    ``alpha = min(1 - 1/(it + 1), ema_decay)``; with ``export_teacher`` it is the exported model
    (what ``nnUNetv2_predict`` loads, pseudo Dice and ``--val``)."""
    defaults = {'ema_decay': 0.996, 'export_teacher': True}
    uses_teacher = True

    @torch.no_grad()
    def teacher_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher's softmax ``(B, K, *spatial)`` on ``x`` (full resolution output)."""
        return torch.softmax(first_output(self.trainer.teacher(x)).float(), 1)
