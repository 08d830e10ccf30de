from nnunetv2_sss.training.trainers import nnUNetTrainerSSS_noPCSW  # noqa: F401
