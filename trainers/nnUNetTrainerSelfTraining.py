from nnunetv2_sss.training.self_training import nnUNetTrainerSelfTraining  # noqa: F401
