"""Rank 1: images and the competition's data (layout, folds, manipulations, crops, samples)."""
