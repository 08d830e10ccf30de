from nnunetv2_sss.training.base import nnUNetTrainerPlugin  # noqa: F401
