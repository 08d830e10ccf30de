from nnunetv2_sss.training.mean_teacher import nnUNetTrainerMeanTeacher  # noqa: F401
