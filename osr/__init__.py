"""osr: open-set image recognition (train, export, serve)."""

__version__ = "0.1.0"
