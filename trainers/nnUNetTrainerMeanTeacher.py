from nnunetv2_sss.training.trainers import nnUNetTrainerMeanTeacher  # noqa: F401
