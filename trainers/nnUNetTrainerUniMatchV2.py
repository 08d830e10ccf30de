from nnunetv2_sss.training.unimatch_v2 import nnUNetTrainerUniMatchV2  # noqa: F401
