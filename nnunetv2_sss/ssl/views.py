"""Weak and strong views of unlabeled patches, as batchgeneratorsv2 pipelines.

Weak view ``A_w``: nnU-Net's spatial augmentation only (rotation, scaling, mirroring,
crop to the patch). Strong view ``A_s``: intensity transforms that exist for CT/MR
channels, standing in for UniMatch V2's colour jitter / grayscale / blur:

| transform                   | probability | range            | UniMatch V2 counterpart      |
|-----------------------------|-------------|------------------|------------------------------|
| multiplicative brightness   | 0.8         | x0.6 .. x1.4     | colour jitter: brightness    |
| contrast                    | 0.8         | x0.6 .. x1.4     | colour jitter: contrast      |
| gamma                       | 0.5         | 0.6 .. 1.6       | colour jitter: saturation/hue|
| Gaussian blur               | 0.5         | sigma 0.5 .. 1.5 | Gaussian blur (p = 0.5)      |
| Gaussian noise              | 0.3         | var 0 .. 0.1     | (grayscale has no analogue)  |

CutMix is applied in the trainer, because it must paste the teacher's pseudo-labels too.
"""
from __future__ import annotations

from typing import Tuple

from batchgeneratorsv2.helpers.scalar_type import RandomScalar
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform, Convert3DTo2DTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform


def weak_view_transforms(patch_size: Tuple[int, ...], rotation: RandomScalar,
                         mirror_axes: Tuple[int, ...], do_dummy_2d_data_aug: bool) -> BasicTransform:
    """nnU-Net's spatial augmentation (same parameters as ``nnUNetTrainer``), no intensity part."""
    transforms = []
    if do_dummy_2d_data_aug:
        transforms.append(Convert3DTo2DTransform())
        patch_size = patch_size[1:]
    transforms.append(SpatialTransform(
        patch_size, patch_center_dist_from_border=0, random_crop=False, p_elastic_deform=0,
        p_rotation=0.2, rotation=rotation, p_scaling=0.2, scaling=(0.7, 1.4),
        p_synchronize_scaling_across_axes=1, bg_style_seg_sampling=False))
    if do_dummy_2d_data_aug:
        transforms.append(Convert2DTo3DTransform())
    if mirror_axes:
        transforms.append(MirrorTransform(allowed_axes=mirror_axes))
    return ComposeTransforms(transforms)


def strong_view_transforms() -> BasicTransform:
    """Intensity-only strong augmentation (table in the module docstring)."""
    return ComposeTransforms([
        RandomTransform(MultiplicativeBrightnessTransform(
            multiplier_range=BGContrast((0.6, 1.4)), synchronize_channels=False, p_per_channel=1),
            apply_probability=0.8),
        RandomTransform(ContrastTransform(
            contrast_range=BGContrast((0.6, 1.4)), preserve_range=True, synchronize_channels=False,
            p_per_channel=1), apply_probability=0.8),
        RandomTransform(GammaTransform(
            gamma=BGContrast((0.6, 1.6)), p_invert_image=0, synchronize_channels=False,
            p_per_channel=1, p_retain_stats=1), apply_probability=0.5),
        RandomTransform(GaussianBlurTransform(
            blur_sigma=(0.5, 1.5), synchronize_channels=True, synchronize_axes=False,
            p_per_channel=1, benchmark=False), apply_probability=0.5),
        RandomTransform(GaussianNoiseTransform(
            noise_variance=(0, 0.1), p_per_channel=1, synchronize_channels=True),
            apply_probability=0.3),
    ])
