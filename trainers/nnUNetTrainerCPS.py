from nnunetv2_sss.training.trainers import nnUNetTrainerCPS  # noqa: F401
