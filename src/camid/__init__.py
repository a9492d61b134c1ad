"""camid: source camera model identification harness (IEEE SPS Camera Model Identification recipe)."""

__version__ = "0.1.0"
