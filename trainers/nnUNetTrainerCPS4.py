from nnunetv2_sss.training.cps4 import nnUNetTrainerCPS4  # noqa: F401
