from nnunetv2_sss.training.trainers import nnUNetTrainerSSS_noDFE  # noqa: F401
