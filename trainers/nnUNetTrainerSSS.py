from nnunetv2_sss.training.sss import nnUNetTrainerSSS  # noqa: F401
