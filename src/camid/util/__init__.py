"""Rank 0 helpers every stage may use: atomic file I/O, logging and progress, process pools, runtime setup,
the power mean of probabilities."""
