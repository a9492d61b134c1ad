"""Rank 2: training runs (runtime, the run folder, the trainer) and the local GPU job queue."""
