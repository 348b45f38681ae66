"""Slow, obviously-correct NumPy implementations of every convx op, written from the formulas.

They are the test suite's oracle and the benchmark's pure-NumPy baseline.
"""

from . import activations, conv, conv3d, normalization, pooling, pooling3d

__all__ = ["activations", "conv", "conv3d", "normalization", "pooling", "pooling3d"]
