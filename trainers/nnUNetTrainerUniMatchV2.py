from nnunetv2_sss.training.trainers import nnUNetTrainerUniMatchV2  # noqa: F401
