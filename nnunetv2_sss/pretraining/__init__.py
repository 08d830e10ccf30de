"""``nnUNetv2_sss_pretrain``: masked image modelling on a dataset's own images (imagesTr and the unlabeled
pool, labels never opened) on the exact network a trainer builds, with nnU-Net's loop.

- :mod:`~nnunetv2_sss.pretraining.masking`: block masks, the masked input, the masked MSE;
- :mod:`~nnunetv2_sss.pretraining.cases`: which preprocessed images it learns from (and validates on);
- :mod:`~nnunetv2_sss.pretraining.trainer`: ``Pretrain<TRAINER>``, the named trainer made to pretrain;
- :mod:`~nnunetv2_sss.pretraining.export`: the outputs the existing loaders take (nnU-Net's
  ``-pretrained_weights``, ``nnUNet_sss_sam2_checkpoint``) and ``pretraining.json``;
- :mod:`~nnunetv2_sss.pretraining.command`: the command line.

How every model of a semi-supervised trainer starts from such weights: ``training/pretrained_start.py``.
"""
