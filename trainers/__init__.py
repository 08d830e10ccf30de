"""The folder that ``nnUNet_extTrainer`` points at (``nnUNetv2_sss_trainers_path`` prints it).

nnU-Net imports every module here as a top-level module while it looks for a trainer by
name, so each module is one import line: the classes live in ``nnunetv2_sss.training``
(importable, hence picklable by nnU-Net's worker pools). Nothing heavy is imported here.
"""
