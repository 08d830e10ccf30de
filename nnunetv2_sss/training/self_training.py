"""``nnUNetTrainerSelfTraining``: the student of self-training with nnU-Net pseudo-labels (noisy student:
AbdomenCT-1K's semi-supervised baseline; FLARE22's winner; what nnU-Net's maintainers advise).

nnU-Net's own training (network, loss, augmentation, schedule, validation, checkpoints, ``--c``,
``--val``, prediction) on the fold's labeled cases plus the pool's pseudo-labeled scans
(``nnUNetv2_sss_pseudo_label``, ``selftraining/pool.py``), in every batch (``pseudo_label_share`` of
it pseudo-labeled, at least one case of each kind; ``selftraining/student_data.py``). The voxels the
teacher was not confident about carry nnU-Net's ignore label, so nnU-Net's loss (CE and Dice) leaves
them out: the student trains with its dataset's labels plus ``ignore`` (highest label + 1; the
``dataset.json`` of its results folder has it, prediction is unchanged). Validation and the final
validation use the fold's labeled validation cases only. With ``labeled_only_fraction`` > 0 the last
share of the epochs trains on labeled cases only (AbdomenCT-1K's fine-tuning step).

Which pseudo-labels: the pool of the trainer's round (``self_training_round``; round K+1's teacher is
round K's student) made by the fold's own model (so no fold's validation labels reach its student),
or, with ``nnUNet_sss_pseudo_label_folds`` (e.g. ``"0 1 2 3 4"``), the pool of that fold ensemble
(for final models judged on a test set). Training stops at once, naming the command to run, when
the pool is missing, incomplete, or older than its teacher's checkpoint.
"""
from __future__ import annotations

import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.utilities.file_and_folder_operations import join

from nnunetv2_sss import settings
from nnunetv2_sss.selftraining.pool import PREPROCESSED, folds_name, pool_folder, require_complete_pool
from nnunetv2_sss.selftraining.student_data import AnnotatedEverywhere, MixedDataset, pseudo_per_batch, \
    stratified_training_loader
from nnunetv2_sss.trained_model import with_ignore_label
from nnunetv2_sss.training.base import nnUNetTrainerPlugin


class nnUNetTrainerSelfTraining(nnUNetTrainerPlugin):
    option_defaults = {'self_training_round': 1,       # round K reads the pseudo-labels made for round K
                       'pseudo_label_share': 0.5,      # share of every batch from the pseudo-labeled pool
                       'labeled_only_fraction': 0.0}   # last share of the epochs on labeled cases only

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, with_ignore_label(dataset_json), device)
        self.pseudo_labels = None  # the pool's manifest (on_train_start)
        self._loader_share = None  # pseudo-labeled share the current loaders draw

    # ---- the pool ---------------------------------------------------------------------------------------
    def teacher_folds(self) -> list:
        """The fold's own model, or the folds of ``nnUNet_sss_pseudo_label_folds``."""
        return settings.pseudo_label_folds() or [self.fold]

    def pool(self) -> str:
        return pool_folder(self.preprocessed_dataset_folder_base, self.configuration_manager.data_identifier,
                           self.self_training_round, self.teacher_folds())

    def pseudo_label_command(self) -> str:
        round_ = self.self_training_round
        teacher = {1: 'nnUNetTrainer', 2: 'nnUNetTrainerSelfTraining'}.get(
            round_, f'nnUNetTrainerSelfTraining_round{round_ - 1}')
        return (f"nnUNetv2_sss_pseudo_label -d {self.plans_manager.dataset_name} -c {self.configuration_name} "
                f"-p {self.plans_manager.plans_name} -tr {teacher} -f {' '.join(map(str, self.teacher_folds()))} "
                f"--round {self.self_training_round}" + (" (-tr: your trained teacher's trainer)" if round_ == 1 else ""))

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        from nnunetv2.paths import nnUNet_results
        pool = self.pool()
        self.pseudo_labels = require_complete_pool(
            pool, join(nnUNet_results.get() or '', self.plans_manager.dataset_name), self.pseudo_label_command())
        teacher = self.pseudo_labels.teacher
        self.print_to_log_file(
            f"Self-training round {self.self_training_round}: {len(self.pseudo_labels.cases)} pseudo-labeled cases from "
            f"{pool} (teacher {teacher.trainer} folds {folds_name(teacher.folds)}, {teacher.checkpoint}; voxels below "
            f"confidence {self.pseudo_labels.min_confidence} ignored), {self.pseudo_label_share:.0%} of every batch")
        super().on_train_start()

    # ---- data: nnU-Net's, labeled and pseudo-labeled cases in every batch ----------------------------------
    def get_tr_and_val_datasets(self):
        labeled, validation = super().get_tr_and_val_datasets()
        pseudo = self.dataset_class(join(self.pool(), PREPROCESSED), list(self.pseudo_labels.cases))
        return (MixedDataset(AnnotatedEverywhere(labeled, self.label_manager), pseudo),
                AnnotatedEverywhere(validation, self.label_manager))

    def labeled_only_phase(self) -> bool:
        return self.current_epoch >= round((1 - self.labeled_only_fraction) * self.num_epochs)

    def get_dataloaders(self):
        self._loader_share = 0.0 if self.labeled_only_phase() else self.pseudo_label_share
        with stratified_training_loader(pseudo_per_batch(self.batch_size, self._loader_share)):
            return super().get_dataloaders()

    def on_train_epoch_start(self):
        if self.labeled_only_phase() and self._loader_share:
            for loader in (self.dataloader_train, self.dataloader_val):
                if isinstance(loader, NonDetMultiThreadedAugmenter):
                    loader._finish()
            self.dataloader_train, self.dataloader_val = self.get_dataloaders()
            self.print_to_log_file(f"epoch {self.current_epoch}: labeled cases only from now on "
                                   f"(labeled_only_fraction {self.labeled_only_fraction})")
        super().on_train_epoch_start()


class nnUNetTrainerSelfTraining_round2(nnUNetTrainerSelfTraining):
    """Round 2: the pseudo-labels of round 1's student (``nnUNetv2_sss_pseudo_label -tr
    nnUNetTrainerSelfTraining --round 2``)."""
    self_training_round = 2
