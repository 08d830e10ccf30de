from nnunetv2_sss.training.sam2_trainer import nnUNetTrainerSAM2  # noqa: F401
