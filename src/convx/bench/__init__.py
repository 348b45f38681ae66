"""Benchmarks of convx against pure NumPy and PyTorch: ``python -m convx.bench --help``."""

from .__main__ import main

__all__ = ["main"]
