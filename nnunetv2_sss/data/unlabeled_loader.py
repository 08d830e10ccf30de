"""Loader of unlabeled patches: weak view plus strong views, nnU-Net's batch structure.

Yields ``{'data': (B, C, *patch), 'strong': (V, B, C, *patch), 'keys': [...]}``:
``data`` is the weak view (nnU-Net's spatial augmentation), ``strong[v]`` the v-th strong
view of the same weak patch. Only images are read: labels of cases whose labels are
hidden by the semi-supervised split are never opened.

Slab mode (2-D configurations, ``slab_size=B``): a batch is one slab of ``B`` consecutive
slices of one case, cropped at one in-plane position and given one spatial transform, so
that the batch axis is a slice axis (PCSW needs one).
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
                 label_manager, weak_transforms, strong_transforms, num_strong_views: int, slab_size: int = None):
        super().__init__(images, batch_size, initial_patch_size, final_patch_size, label_manager,
                         oversample_foreground_percent=0.0, transforms=weak_transforms)
        if slab_size is not None and (not self.patch_size_was_2d or slab_size != batch_size):
            raise ValueError("slab mode needs a 2-D patch size and slab_size == batch_size")
        self.has_ignore = False  # random crops only; class locations are never needed
        self.strong_transforms = strong_transforms
        self.num_strong_views = num_strong_views
        self.slab_size = slab_size

    def _weak_patches(self, keys) -> List[torch.Tensor]:
        """One weak view ``(C, *patch)`` per key (random crop, then the spatial transform)."""
        patches = []
        for key in keys:
            image = self._data.load_image(key)
            bbox_lbs, bbox_ubs = self.get_bbox(image.shape[1:], False, None)
            patch = torch.from_numpy(crop_and_pad_nd(image, [[a, b] for a, b in zip(bbox_lbs, bbox_ubs)], 0)).float()
            patches.append(self.transforms(image=patch[:, 0] if self.patch_size_was_2d else patch)["image"])
        return patches

    def _weak_slab(self, key) -> List[torch.Tensor]:
        """``slab_size`` consecutive slices ``(C, H, W)`` of one case, one crop and one spatial transform."""
        image = self._data.load_image(key)
        bbox_lbs, bbox_ubs = self.get_bbox(image.shape[1:], False, None)
        start = np.random.randint(0, max(image.shape[1] - self.slab_size, 0) + 1)
        bbox = [[start, start + self.slab_size]] + [[a, b] for a, b in zip(bbox_lbs[1:], bbox_ubs[1:])]
        slab = torch.from_numpy(crop_and_pad_nd(image, bbox, 0)).float()          # (C, S, H, W)
        channels = slab.shape[0]
        stacked = slab.transpose(0, 1).reshape(-1, *slab.shape[2:])              # (S * C, H, W)
        weak = self.transforms(image=stacked)["image"]
        return list(weak.reshape(self.slab_size, channels, *weak.shape[1:]))

    def generate_train_batch(self) -> dict:
        keys = self.get_indices()
        with torch.no_grad(), threadpool_limits(limits=1, user_api=None):
            if self.slab_size:
                keys = [keys[0]] * self.slab_size
                weak_views = self._weak_slab(keys[0])
            else:
                weak_views = self._weak_patches(keys)
            strong_views = [[self.strong_transforms(image=w.clone())["image"] for w in weak_views]
                            for _ in range(self.num_strong_views)]
        batch = {"data": torch.stack(weak_views), "keys": keys}
        if self.num_strong_views:
            batch["strong"] = torch.stack([torch.stack(v) for v in strong_views])
        return batch
