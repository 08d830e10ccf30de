from nnunetv2_sss.training.sss import nnUNetTrainerSSS_baseline  # noqa: F401
