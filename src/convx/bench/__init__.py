"""Benchmarks of convx against pure NumPy and PyTorch: ``python -m convx.bench --help``."""

from .cli import main

__all__ = ["main"]
