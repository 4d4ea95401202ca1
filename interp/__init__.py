"""interp: a mechanistic-interpretability lab for small models trained on HMM data."""

__version__ = "0.1.0"
