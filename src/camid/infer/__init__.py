"""Rank 3: inference (TTA, the ensemble of a run's checkpoints, prediction) and the probability-table format."""
