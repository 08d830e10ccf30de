"""``nnUNetTrainerSemiSupervised``: the machinery every semi-supervised trainer shares.

- a second loader of unlabeled patches (weak view = nnU-Net's spatial augmentation of the
  same patch size, plus ``num_strong_views`` strong views), drawn from
  ``<data_identifier>_unlabeled`` (``nnUNetv2_sss_preprocess_unlabeled``) and from the
  cases the fold's ``splits_semi_supervised.json`` marks unlabeled (images only);
- the objective (``objective = UniMatchV2Objective``, ``nnunetv2_sss/objectives``), built with its
  resolved options when the trainer is initialised, and what it declares: an EMA teacher if it
  ``uses_teacher`` (updated every iteration, parameters and buffers,
  ``alpha = min(1 - 1/(it + 1), ema_decay)``), its random generators, its extra trained modules
  (optimiser, clipping, DDP, checkpoint) and its checkpoint state;
- ``L = L_l + w * L_u`` with nnU-Net's own loss as ``L_l`` and the objective's weight ``w``, in the
  objective's loss parts, each part's backward pass run before the next part is built, so the
  step's peak activation memory is that of its largest part, not of all of them;
- student, teacher, extra modules and iteration counter in every checkpoint; the exported model
  (checkpoint ``network_weights``, what ``nnUNetv2_predict`` loads; pseudo Dice and final
  validation) is the teacher if the objective has one and ``export_teacher``, else the student;
- per-epoch figures (unlabeled loss, confident-voxel share, ...) in the log and progress.png;
- multi-GPU (``-num_gpus N``): every student pass goes through the DDP-wrapped network (the
  objectives call ``self.network(..., pass_=...)``); gradients stay local (``no_sync``) until every
  part is done and are then averaged over the ranks once (``training/step.py``); each rank draws its own
  unlabeled batch of the per-rank batch size nnU-Net gives the labeled one (2-D slabs: the
  global length, see :meth:`unlabeled_share`), and the teacher is compared across ranks every
  ``replica_check_every`` iterations.

A trainer names its objective and overrides options with class attributes; see
``objectives/base.py`` for what an objective declares.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import List, Optional, Tuple

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2_sss.data.unlabeled_loader import UnlabeledDataLoader, UnlabeledImages
from nnunetv2_sss.data.unlabeled_pool import require_unlabeled_sources
from nnunetv2_sss.errors import UserRuntimeError, UserValueError
from nnunetv2_sss.objectives.base import Objective
from nnunetv2_sss.ssl.ema import ema_momentum, ema_update, make_teacher
from nnunetv2_sss.ssl.views import strong_view_transforms, weak_view_transforms
from nnunetv2_sss.training.base import nnUNetTrainerPlugin, unwrap
from nnunetv2_sss.training.ddp import check_replicas_equal, wrap_for_ddp
from nnunetv2_sss.training.options import declared_defaults
from nnunetv2_sss.training.pretrained_start import start_from_student, weights_fingerprint
from nnunetv2_sss.training.progress import SemiSupervisedLocalLogger
from nnunetv2_sss.training.step import all_finite, average_gradients, local_gradients, scalars_of


class nnUNetTrainerSemiSupervised(nnUNetTrainerPlugin):
    objective = Objective  # the method (nnunetv2_sss/objectives); subclasses name theirs
    option_defaults = {'gradient_clip_norm': 12.0,    # nnU-Net's clipping, per trained network
                       'replica_check_every': 50,     # iterations between teacher checksums across GPUs
                       'split_backward': None}        # a backward pass per loss part (False: one, of the
                                                      # sum; None: split on CUDA, one backward elsewhere)
    # logger key -> legend; the objective's own figures are added
    base_figures = {'ssl_unlabeled_loss': 'unlabeled loss', 'ssl_confident_share': 'confident voxel share',
                    'ssl_unlabeled_weight': 'unlabeled loss weight'}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.teacher = None
        self.ssl_objective = None  # -> initialize (built with its resolved options)
        self.ssl_iteration = 0
        self.student_fingerprint = None  # -> initialize (training/pretrained_start.py)
        self.skipped_steps = 0  # this epoch's steps without an EMA update (GradScaler skip, non-finite weights)
        self.dataloader_unlabeled = None
        self.ssl_figures = {**self.base_figures, **self.objective.figures}
        self.logger.local_logger = SemiSupervisedLocalLogger(self.ssl_figures, self.objective.count_figures)

    # ---- set-up ------------------------------------------------------------------------------
    def option_declarations(self) -> list:
        return [*super().option_declarations(), declared_defaults(self.objective)]

    def resolve_options(self) -> None:
        """The base's, then the objective built with the values of its options."""
        super().resolve_options()
        if self.split_backward is None:  # memory is what the split buys: nnU-Net sizes its plans to a GPU's
            self.split_backward = self.device.type == 'cuda'
            self.print_to_log_file(f"split_backward: {self.split_backward} (default: a backward pass per loss "
                                   f"part on CUDA, one backward of the sum on {self.device.type})")
        elif not isinstance(self.split_backward, bool):
            raise UserValueError(f"option split_backward={self.split_backward!r} of {type(self).__name__}: give "
                                 f"True, False or None (None: True on CUDA, False elsewhere)")
        self.ssl_objective = self.objective(self, **{name: self.options[name].value
                                                     for name in declared_defaults(self.objective)})
        self.ssl_objective.check_configuration()

    def initialize(self):
        super().initialize()
        objective = self.ssl_objective
        objective.build_modules()
        for name, module in objective.trained_modules.items():
            module = objective.trained_modules[name] = wrap_for_ddp(module, self.device) if self.is_ddp else module
            self.optimizer.add_param_group({'params': list(module.parameters())})
        if objective.uses_teacher:
            self.teacher = make_teacher(unwrap(self.network))
        # the student as the other models copied it: on_train_start sees whether it was loaded since
        self.student_fingerprint = weights_fingerprint(unwrap(self.network))

    @property
    def exports_teacher(self) -> bool:
        """Whether the exported model is the EMA teacher (else the student)."""
        return self.teacher is not None and self.ssl_objective.export_teacher

    def unlabeled_sources(self) -> List[Tuple[str, List[str]]]:
        """``(folder, case ids)`` of the fold's unlabeled pool (``data/unlabeled_pool.py``); raises if it is empty."""
        return require_unlabeled_sources(self.preprocessed_dataset_folder_base, self.configuration_manager.data_identifier,
                                         [self.fold], self.__class__.__name__, self.configuration_name,
                                         self.plans_manager.plans_name)

    def get_unlabeled_dataloader(self):
        """Unlabeled loader wrapped in nnU-Net's augmenter (same worker policy as the labeled one)."""
        images = UnlabeledImages(self.unlabeled_sources())
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        patch_size = tuple(self.configuration_manager.patch_size)
        objective = self.ssl_objective
        slabs = objective.unlabeled_slabs_in_2d and len(patch_size) == 2
        # per rank: nnU-Net's per-rank batch size; a 2-D slab keeps the global length (unlabeled_share)
        batch_size = max(self.configuration_manager.batch_size if slabs else self.batch_size,
                         objective.min_unlabeled_batch_size)
        loader = UnlabeledDataLoader(
            images, batch_size, initial_patch_size, patch_size,
            self.label_manager, weak_view_transforms(patch_size, rotation, mirror_axes, dummy_2d),
            strong_view_transforms(), objective.num_strong_views, slab_size=batch_size if slabs else None)
        self.print_to_log_file(f"Unlabeled pool: {len(images)} cases, batch size {loader.batch_size}")
        processes = get_allowed_n_proc_DA()
        if processes == 0:
            return SingleThreadedAugmenter(loader, None)
        return NonDetMultiThreadedAugmenter(loader, None, max(1, processes // 2), num_cached=max(3, processes // 2),
                                            seeds=None, pin_memory=self.device.type == 'cuda', wait_time=0.002)

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        # -pretrained_weights: nnU-Net loaded the student only; the other models start from it (pretrained_start.py)
        start_from_student(self, self.student_fingerprint)
        self.unlabeled_sources()  # fail before nnU-Net starts its workers
        self.ssl_objective.before_training()
        super().on_train_start()
        self.dataloader_unlabeled = self.get_unlabeled_dataloader()

    def on_train_end(self):
        super().on_train_end()
        if isinstance(self.dataloader_unlabeled, NonDetMultiThreadedAugmenter):
            self.dataloader_unlabeled._finish()

    # ---- the step ------------------------------------------------------------------------------
    def unlabeled_weight(self) -> float:
        """The objective's weight of the unlabeled loss at this point of training."""
        return self.ssl_objective.unlabeled_weight()

    def unlabeled_share(self) -> slice:
        """The part of an unlabeled batch this rank trains the student on: all of it, except for a
        2-D slab in a multi-GPU run (the slab keeps the global batch length, so PCSW's windows are
        those of one GPU; the pseudo-labels come from the whole slab, the student sees every
        ``world_size``-th slice, from this rank's position on)."""
        if not (self.is_ddp and self.ssl_objective.unlabeled_slabs_in_2d and
                len(self.configuration_manager.patch_size) == 2):
            return slice(None)
        return slice(self.local_rank, None, torch.distributed.get_world_size())

    def trained_modules(self) -> List[torch.nn.Module]:
        """The networks the optimiser trains: the student and the objective's extra modules (CPS: two)."""
        return [self.network, *self.ssl_objective.trained_modules.values()]

    def train_step(self, batch: dict) -> dict:
        """One step: :meth:`compute_gradients`, then clipping, optimiser and EMA (:meth:`optimizer_step`).
        ``batch['unlabeled']``, when given, is the unlabeled batch (else the unlabeled loader's next)."""
        outputs = self.compute_gradients(batch)
        self.optimizer_step()
        return outputs

    def compute_gradients(self, batch: dict) -> dict:
        """The objective's loss parts, each ``supervised + w * unlabeled``, each part's backward pass run
        before the next part is built (the gradients sum to those of ``L = L_l + w L_u``; with
        ``split_backward = False`` one backward of the sum), then averaged over GPUs; returns the step's
        losses and figures. Host round-trips: one per part with an unlabeled term (its finiteness) and one
        for the losses and figures."""
        data = batch['data'].to(self.device, non_blocking=True)
        target = batch['target']
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        unlabeled = batch['unlabeled'] if 'unlabeled' in batch else next(self.dataloader_unlabeled)
        unlabeled = {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v)
                     for k, v in unlabeled.items()}
        weight = self.unlabeled_weight()

        self.optimizer.zero_grad(set_to_none=True)
        losses = {'loss': torch.zeros((), device=self.device), 'ssl_unlabeled_loss': torch.zeros((), device=self.device)}
        figures, pending = {}, []
        parts = self.ssl_objective.loss_parts(data, target, unlabeled)
        with local_gradients(self.trained_modules(), self.is_ddp):
            while True:
                with self.autocast():  # the part's forward passes run when the objective builds it
                    part = next(parts, None)
                    if part is None:
                        break
                    loss = self.part_loss(part, weight, unlabeled['keys'], losses)
                figures.update(part.figures)
                if self.split_backward:
                    self.backward(loss)
                else:
                    pending.append(loss)
            if pending:
                self.backward(torch.stack(pending).sum())
        if self.is_ddp:
            average_gradients(self.trained_modules())
        return {**scalars_of({**losses, **figures}), 'ssl_unlabeled_weight': weight}

    def part_loss(self, part, weight: float, keys, losses: dict) -> torch.Tensor:
        """``supervised + weight * unlabeled`` of one loss part; a non-finite unlabeled term is left out
        (with a log line). Adds the part's terms to ``losses`` (detached)."""
        loss = part.supervised if part.supervised is not None else torch.zeros((), device=self.device)
        if part.unlabeled is not None:
            if torch.isfinite(part.unlabeled):
                loss = loss + weight * part.unlabeled
                losses['ssl_unlabeled_loss'] = losses['ssl_unlabeled_loss'] + part.unlabeled.detach().float()
            else:
                self.print_to_log_file(f"WARNING: non-finite unlabeled loss at iteration {self.ssl_iteration} "
                                       f"(cases {keys}); this part of the batch's unlabeled loss is skipped.")
        losses['loss'] = losses['loss'] + loss.detach().float()
        return loss

    def autocast(self):
        """The step's mixed precision (``training/precision.py``): the recipe's ``mixed_precision`` on CUDA
        (SAM-2: bf16 where the GPU has it, no GradScaler; else nnU-Net's fp16), none on the CPU."""
        return self.precision.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        (self.grad_scaler.scale(loss) if self.grad_scaler is not None else loss).backward()

    def optimizer_step(self) -> None:
        """Clipping and the optimiser step (through the GradScaler where there is one), then the EMA
        update unless the step was skipped (a GradScaler step with inf/NaN gradients, or non-finite
        student weights)."""
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
            self.clip_gradients()
            found_inf = sum(self.grad_scaler._found_inf_per_device(self.optimizer).values())
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.clip_gradients()
            self.optimizer.step()
            found_inf = None
        self.update_teacher(found_inf)

    def clip_gradients(self) -> None:
        """nnU-Net's clipping (norm 12), per trained network."""
        for module in self.trained_modules():
            torch.nn.utils.clip_grad_norm_(module.parameters(), self.gradient_clip_norm)

    def update_teacher(self, found_inf: Optional[torch.Tensor] = None) -> None:
        """EMA step (objectives with a teacher), left out and counted (logged per epoch) when the optimiser
        step was skipped (``found_inf``: the GradScaler's inf/NaN count) or the student holds non-finite
        weights: one fused check, one host round-trip. Counts the iteration."""
        if self.teacher is not None or found_inf is not None:
            student = unwrap(self.network)
            ok = all_finite(student.parameters()) if self.teacher is not None else torch.ones((), dtype=torch.bool)
            if found_inf is not None:
                ok = ok & (found_inf.to(ok.device) == 0)
            if bool(ok):
                if self.teacher is not None:
                    ema_update(self.teacher, student, ema_momentum(self.ssl_iteration, self.ssl_objective.ema_decay))
            else:
                self.skipped_steps += 1
        self.ssl_iteration += 1
        if self.teacher is not None and self.is_ddp and self.ssl_iteration % self.replica_check_every == 0:
            check_replicas_equal(self.teacher, f"the EMA teacher (iteration {self.ssl_iteration})", self.device)

    # ---- logging ------------------------------------------------------------------------------
    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        outputs = collate_outputs(train_outputs)
        for key in self.ssl_figures:
            value = float(np.nanmean(outputs[key])) if key in outputs else float('nan')
            self.logger.log(key, value, self.current_epoch)

    def on_epoch_end(self):
        self.print_to_log_file(', '.join(f"{label}: {np.round(self.logger.get_value(key, step=-1), 4)}"
                                         for key, label in self.ssl_figures.items()))
        if self.skipped_steps:
            self.print_to_log_file(f"WARNING: {self.skipped_steps} of {self.num_iterations_per_epoch} steps of this "
                                   f"epoch skipped (the GradScaler found inf/NaN gradients, or the student's weights "
                                   f"were not finite); the EMA teacher did not advance on them")
            self.skipped_steps = 0
        super().on_epoch_end()

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        for module in self.ssl_objective.trained_modules.values():
            module.train()

    # ---- the exported model (the teacher, see exports_teacher) ----------------------------------------
    @contextmanager
    def exported_network_in_place(self):
        """Temporarily make ``self.network`` the exported model."""
        if not self.exports_teacher:
            yield
            return
        student, self.network = self.network, self.teacher
        try:
            yield
        finally:
            self.network = student

    def on_validation_epoch_start(self):
        self._validation_context = self.exported_network_in_place()
        self._validation_context.__enter__()
        super().on_validation_epoch_start()

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        self._validation_context.__exit__(None, None, None)
        super().on_validation_epoch_end(val_outputs)

    def perform_actual_validation(self, save_probabilities: bool = False):
        with self.exported_network_in_place():
            super().perform_actual_validation(save_probabilities)

    def set_deep_supervision_enabled(self, enabled: bool):
        super().set_deep_supervision_enabled(enabled)
        others = [self.teacher] + list(self.ssl_objective.trained_modules.values() if self.ssl_objective else [])
        for module in others:
            if module is not None:
                unwrap(module).decoder.deep_supervision = enabled

    # ---- checkpoints ------------------------------------------------------------------------------
    # Each model is stored once: ``network_weights`` is the exported model (what nnUNetv2_predict
    # loads), and the other one beside it, ``student_weights`` (the teacher is exported) or
    # ``teacher_weights`` (the student is exported, e.g. export_teacher = False); without a teacher
    # only ``network_weights``. The objective's extra modules are ``<name>_weights``, its state
    # (``checkpoint_state``) is added as it is. Checkpoints of earlier versions (both teacher_weights
    # and student_weights, a teacher for EM / CPS) load the same way.
    def exported_network_weights(self) -> dict:
        return self.teacher.state_dict() if self.exports_teacher else unwrap(self.network).state_dict()

    def extra_checkpoint_state(self) -> dict:
        state = {'ssl_iteration': self.ssl_iteration}
        if self.teacher is not None:
            state.update({'student_weights': unwrap(self.network).state_dict()} if self.exports_teacher else
                         {'teacher_weights': self.teacher.state_dict()})
        state.update({f'{name}_weights': unwrap(module).state_dict()
                      for name, module in self.ssl_objective.trained_modules.items()})
        return {**state, **self.ssl_objective.checkpoint_state()}

    def trained_network_weights(self, checkpoint: dict) -> dict:
        """The student: ``student_weights`` if stored, else ``network_weights`` (the exported student)."""
        return checkpoint.get('student_weights', checkpoint['network_weights'])

    def load_extra_checkpoint_state(self, checkpoint: dict) -> None:
        """Teacher (``teacher_weights`` if stored, else ``network_weights``, the exported teacher), the
        objective's modules and state, the iteration counter."""
        if self.teacher is not None:
            self.teacher.load_state_dict(checkpoint.get('teacher_weights', checkpoint['network_weights']))
        for name, module in self.ssl_objective.trained_modules.items():
            if f'{name}_weights' not in checkpoint:
                raise UserRuntimeError(f"{self.__class__.__name__}: the checkpoint holds no '{name}_weights' (it was "
                                       f"not written by this trainer); cannot resume {name}.")
            unwrap(module).load_state_dict(checkpoint[f'{name}_weights'])
        self.ssl_objective.load_checkpoint_state(checkpoint)
        self.ssl_iteration = checkpoint.get('ssl_iteration', 0)
        self.student_fingerprint = None  # every model came from the checkpoint
