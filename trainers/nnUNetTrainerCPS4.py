from nnunetv2_sss.training.trainers import nnUNetTrainerCPS4  # noqa: F401
