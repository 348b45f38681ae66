"""Slow, obviously-correct NumPy implementations of every convx op, written from the formulas.

They are the test suite's oracle and the benchmark's pure-NumPy baseline.
"""

from . import conv, pooling

__all__ = ["conv", "pooling"]
