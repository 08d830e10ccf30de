from nnunetv2_sss.training.trainers import nnUNetTrainerICT  # noqa: F401
