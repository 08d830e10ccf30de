from nnunetv2_sss.training.trainers import nnUNetTrainerEntropyMin  # noqa: F401
