"""Rank 5: level 2 over probability tables (align, average, equalise, stack), the metric and submissions."""
