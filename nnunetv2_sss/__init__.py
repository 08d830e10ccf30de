"""nnunetv2-sss: semi-supervised segmentation trainers for nnU-Net v2 (SSS, CPS4, UniMatch V2, baselines)."""
__version__ = "0.2.0"
