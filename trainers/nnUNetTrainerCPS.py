from nnunetv2_sss.training.cps import nnUNetTrainerCPS  # noqa: F401
