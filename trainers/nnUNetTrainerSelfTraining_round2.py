from nnunetv2_sss.training.self_training import nnUNetTrainerSelfTraining_round2  # noqa: F401
