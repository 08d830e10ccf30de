from nnunetv2_sss.training.trainers import nnUNetTrainerSAM2  # noqa: F401
