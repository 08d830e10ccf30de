"""Active learning: which unlabeled scans to label next (``nnUNetv2_sss_suggest``), and adding their
labels when they arrive (``nnUNetv2_sss_add_labels``). docs/active_learning.md describes both."""
