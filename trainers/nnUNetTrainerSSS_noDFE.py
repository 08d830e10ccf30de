from nnunetv2_sss.training.sss import nnUNetTrainerSSS_noDFE  # noqa: F401
