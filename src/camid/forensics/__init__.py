"""Rank 4: the examiner's tools on arbitrary photos: EXIF, the external-data filter, identify, robustness, PRNU."""
