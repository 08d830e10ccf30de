from nnunetv2_sss.training.trainers import nnUNetTrainerSSS_baseline  # noqa: F401
