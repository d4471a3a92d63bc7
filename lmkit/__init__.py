"""lmkit: a command-line toolkit from raw text to a trained, evaluated language model."""

__version__ = "0.1.0"
