"""The self-training student's data: nnU-Net's dataset classes and data loader, with the labeled
cases of the fold and the pseudo-labeled pool in every batch.

- :class:`MixedDataset`: the fold's labeled training cases (nnU-Net's preprocessed folder) and the
  pool's pseudo-labeled cases (``pseudo_labels/<pool>/preprocessed``, nnU-Net's format), one
  dataset for nnU-Net's loader.
- The student trains with nnU-Net's ignore label (voxels the teacher was not confident about). With
  it, nnU-Net's loader draws the patches of non-oversampled batch positions around "annotated"
  voxels (the class-locations key ``(-1, *labels)``); the pool's cases have them, a labeled case is
  annotated everywhere: :class:`AnnotatedEverywhere` gives it uniformly drawn locations.
- :class:`StratifiedDataLoader`: nnU-Net's ``nnUNetDataLoader`` whose batches hold ``batch_size -
  pseudo_per_batch`` labeled and ``pseudo_per_batch`` pseudo-labeled cases (each drawn uniformly
  within its group), so every batch has both; :func:`stratified_training_loader` makes nnU-Net's
  ``get_dataloaders`` build it for the training set (the validation set keeps nnU-Net's loader).
"""
from __future__ import annotations

import contextlib
from typing import List

import numpy as np

LOCATIONS_PER_LABELED_CASE = 10000


def annotated_key(label_manager) -> tuple:
    """nnU-Net's class-locations key of the annotated voxels (``nnUNetDataLoader.annotated_classes_key``)."""
    return tuple([-1] + list(label_manager.all_labels))


class AnnotatedEverywhere:
    """A dataset whose cases are annotated everywhere (labeled cases): their properties get uniformly
    drawn voxel locations under the annotated key, shape ``(n, 1 + dim)`` as nnU-Net's."""

    def __init__(self, dataset, label_manager, seed: int = 1234):
        self.dataset, self.key, self.seed = dataset, annotated_key(label_manager), seed
        self.identifiers = dataset.identifiers

    def load_case(self, identifier):
        data, seg, seg_prev, properties = self.dataset.load_case(identifier)
        locations = properties.setdefault('class_locations', {})
        if self.key not in locations:
            shape = data.shape[1:]
            rng = np.random.RandomState(self.seed)
            coordinates = [rng.randint(0, n, LOCATIONS_PER_LABELED_CASE) for n in shape]
            locations[self.key] = np.stack([np.zeros(LOCATIONS_PER_LABELED_CASE, dtype=int), *coordinates], 1)
        return data, seg, seg_prev, properties

    def __getitem__(self, identifier):
        return self.load_case(identifier)


class MixedDataset:
    """Labeled and pseudo-labeled cases behind one ``load_case``; ``labeled_keys``, ``pseudo_keys``."""

    def __init__(self, labeled, pseudo):
        self.labeled, self.pseudo = labeled, pseudo
        self.labeled_keys, self.pseudo_keys = list(labeled.identifiers), list(pseudo.identifiers)
        self.identifiers = self.labeled_keys + self.pseudo_keys
        self._pseudo = set(self.pseudo_keys)

    def load_case(self, identifier):
        return (self.pseudo if identifier in self._pseudo else self.labeled).load_case(identifier)

    def __getitem__(self, identifier):
        return self.load_case(identifier)


def pseudo_per_batch(batch_size: int, share: float) -> int:
    """Pseudo-labeled cases in a batch: ``round(batch_size * share)``, at least one of each kind when the
    batch has room for both and the share is strictly between 0 and 1."""
    count = int(round(batch_size * share))
    if 0 < share < 1 and batch_size >= 2:
        count = min(max(count, 1), batch_size - 1)
    return min(max(count, 0), batch_size)


def stratified_loader_class(pseudo_count: int):
    """nnU-Net's loader class, with :meth:`get_indices` drawing ``pseudo_count`` pool cases per batch from a
    :class:`MixedDataset` (any other dataset: nnU-Net's draw)."""
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

    class StratifiedDataLoader(nnUNetDataLoader):
        def get_indices(self) -> List[str]:
            if not isinstance(self._data, MixedDataset):
                return super().get_indices()
            labeled = np.random.choice(self._data.labeled_keys, self.batch_size - pseudo_count, replace=True)
            pseudo = np.random.choice(self._data.pseudo_keys, pseudo_count, replace=True) if pseudo_count else []
            return [str(k) for k in labeled] + [str(k) for k in pseudo]

    return StratifiedDataLoader


@contextlib.contextmanager
def stratified_training_loader(pseudo_count: int):
    """While active, nnU-Net's ``get_dataloaders`` builds :func:`stratified_loader_class` loaders (it names
    ``nnUNetDataLoader`` as a module global, as ``training/ddp.py`` relies on for ``DDP``)."""
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as trainer_module
    original = trainer_module.nnUNetDataLoader
    trainer_module.nnUNetDataLoader = stratified_loader_class(pseudo_count)
    try:
        yield
    finally:
        trainer_module.nnUNetDataLoader = original
