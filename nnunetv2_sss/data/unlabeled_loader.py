"""Loader of unlabeled patches: weak view plus strong views, nnU-Net's batch structure.

Yields ``{'data': (B, C, *patch), 'strong': (V, B, C, *patch), 'keys': [...]}``:
``data`` is the weak view (nnU-Net's spatial augmentation), ``strong[v]`` the v-th strong
view of the same weak patch. Only images are read: labels of cases whose labels are
hidden by the semi-supervised split are never opened.
"""
from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from batchgenerators.utilities.file_and_folder_operations import join
from threadpoolctl import threadpool_limits

from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader


def load_image(folder: str, identifier: str) -> np.ndarray:
    """The preprocessed image ``(C, *spatial)`` of one case, without touching its segmentation."""
    b2nd = join(folder, identifier + ".b2nd")
    if os.path.isfile(b2nd):
        import blosc2
        return blosc2.open(urlpath=b2nd, mode="r", dparams={"nthreads": 1}, mmap_mode="r")
    npy = join(folder, identifier + ".npy")
    if os.path.isfile(npy):
        return np.load(npy, mmap_mode="r")
    npz = join(folder, identifier + ".npz")
    if os.path.isfile(npz):
        return np.load(npz)["data"]
    raise FileNotFoundError(f"no preprocessed image for case {identifier} in {folder}")


class UnlabeledImages:
    """The unlabeled pool: ``(folder, identifier)`` pairs from one or more folders.

    ``identifiers`` (what nnU-Net's loader samples from) are ``'<source index>:<case>'``.
    """

    def __init__(self, sources: Sequence[Tuple[str, Sequence[str]]]):
        self.locations = {f"{i}:{case}": (folder, case)
                          for i, (folder, cases) in enumerate(sources) for case in cases}
        self.identifiers = sorted(self.locations)

    def __len__(self) -> int:
        return len(self.identifiers)

    def load_image(self, identifier: str) -> np.ndarray:
        return load_image(*self.locations[identifier])


class UnlabeledDataLoader(nnUNetDataLoader):
    """Random unlabeled patches (no foreground oversampling: there are no labels)."""

    def __init__(self, images: UnlabeledImages, batch_size: int, initial_patch_size, final_patch_size,
                 label_manager, weak_transforms, strong_transforms, num_strong_views: int):
        super().__init__(images, batch_size, initial_patch_size, final_patch_size, label_manager,
                         oversample_foreground_percent=0.0, transforms=weak_transforms)
        self.has_ignore = False  # random crops only; class locations are never needed
        self.strong_transforms = strong_transforms
        self.num_strong_views = num_strong_views

    def generate_train_batch(self) -> dict:
        keys = self.get_indices()
        weak_views: List[torch.Tensor] = []
        strong_views: List[List[torch.Tensor]] = [[] for _ in range(self.num_strong_views)]
        with torch.no_grad(), threadpool_limits(limits=1, user_api=None):
            for key in keys:
                image = self._data.load_image(key)
                bbox_lbs, bbox_ubs = self.get_bbox(image.shape[1:], False, None)
                patch = torch.from_numpy(crop_and_pad_nd(image, [[a, b] for a, b in zip(bbox_lbs, bbox_ubs)], 0)).float()
                if self.patch_size_was_2d:
                    patch = patch[:, 0]
                weak = self.transforms(image=patch)["image"]
                weak_views.append(weak)
                for views in strong_views:
                    views.append(self.strong_transforms(image=weak.clone())["image"])
        batch = {"data": torch.stack(weak_views), "keys": keys}
        if self.num_strong_views:
            batch["strong"] = torch.stack([torch.stack(v) for v in strong_views])
        return batch
