from nnunetv2_sss.training.ict import nnUNetTrainerICT  # noqa: F401
