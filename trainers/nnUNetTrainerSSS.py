from nnunetv2_sss.training.trainers import nnUNetTrainerSSS  # noqa: F401
