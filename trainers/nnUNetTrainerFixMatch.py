from nnunetv2_sss.training.trainers import nnUNetTrainerFixMatch  # noqa: F401
