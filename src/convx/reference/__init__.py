"""Slow, obviously-correct NumPy implementations of every convx op, written from the formulas.

They are the test suite's oracle and the benchmark's pure-NumPy baseline.
"""

from . import activations, conv, normalization, pooling

__all__ = ["activations", "conv", "normalization", "pooling"]
