from nnunetv2_sss.training.sss import nnUNetTrainerSSS_noPCSW  # noqa: F401
