"""Unlabeled data: discovery and validation, preprocessing, splits, loaders, datasets."""
