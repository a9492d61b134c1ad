"""Rank 1: networks built by name (the backbone registry) and the recipe's classifier head."""
