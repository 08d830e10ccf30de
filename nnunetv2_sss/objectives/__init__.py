"""Objectives: one per semi-supervised method, each returning its losses and the figures to log
for one training step (:class:`~nnunetv2_sss.objectives.base.Objective`)."""
