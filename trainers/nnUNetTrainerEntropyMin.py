from nnunetv2_sss.training.entropy_min import nnUNetTrainerEntropyMin  # noqa: F401
