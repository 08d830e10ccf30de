"""``python -m nnunetv2_sss.evaluation.study``: the same as ``nnUNetv2_sss_study``."""
from nnunetv2_sss.evaluation.study.command import main

main()
