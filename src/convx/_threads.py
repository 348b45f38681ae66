"""The thread count that every op passes to its kernel."""

from __future__ import annotations

from . import _core
from ._checks import as_int

_num_threads: int = max(1, _core.default_num_threads())


def set_num_threads(n: int) -> None:
    """Set how many threads convx kernels use (1 disables parallelism).

    Parameters
    ----------
    n : int
        A positive thread count. Without OpenMP the kernels always run on one thread.

    Examples
    --------
    >>> import convx
    >>> convx.set_num_threads(1)
    >>> convx.get_num_threads()
    1
    """
    global _num_threads
    _num_threads = as_int("n", n, 1)


def get_num_threads() -> int:
    """Return the thread count convx kernels use (``OMP_NUM_THREADS`` or the core count by default)."""
    return _num_threads


def kernel_threads() -> int:
    """The count handed to kernels: 1 when the extension has no OpenMP."""
    return _num_threads if _core.openmp_enabled() else 1
