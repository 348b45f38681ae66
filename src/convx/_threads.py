"""The thread count that every op passes to its kernel."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from . import _core
from ._checks import as_int

# Far beyond any machine's cores, and few enough for any system to start: every thread takes a
# stack, and tens of thousands exhaust the memory maps a process may have (a crash, not an error).
MAX_THREADS = 1024

_num_threads: int = min(max(1, _core.default_num_threads()), MAX_THREADS)


def set_num_threads(n: int) -> None:
    """Set how many threads convx kernels use (1 disables parallelism).

    Parameters
    ----------
    n : int
        A positive thread count, at most ``MAX_THREADS`` (1024). Without OpenMP the
        kernels always run on one thread.

    Examples
    --------
    >>> import convx
    >>> previous = convx.get_num_threads()
    >>> convx.set_num_threads(1)
    >>> convx.get_num_threads()
    1
    >>> convx.set_num_threads(previous)
    """
    global _num_threads
    n = as_int("n", n, 1)
    if n > MAX_THREADS:
        raise ValueError(f"n must be at most {MAX_THREADS} threads, got {n}")
    _num_threads = n


def get_num_threads() -> int:
    """Return the thread count convx kernels use (``OMP_NUM_THREADS`` or the core count by default)."""
    return _num_threads


# Multiply-adds of a convolution below which one more thread costs more than it saves: its
# start-up and the closing barrier, and on a loaded machine the wait for a descheduled thread.
CONV_GRAIN = 1 << 20


def kernel_threads(macs: int | None = None) -> int:
    """The count handed to kernels: 1 when the extension has no OpenMP; given a convolution's
    multiply-adds, no more than one thread per ``CONV_GRAIN`` of them."""
    n_threads = _num_threads if _core.openmp_enabled() else 1
    if macs is not None:
        n_threads = max(1, min(n_threads, macs // CONV_GRAIN))
    return n_threads


# Some kernels call BLAS from inside their own OpenMP teams. A multi-threaded BLAS (pthreads
# OpenBLAS in particular) must not start its own threads there: it oversubscribes the cores
# and can deadlock. So while such a kernel runs (it enters single_threaded_blas itself), BLAS
# is held at one thread; nested and concurrent calls share one limit, released when the last
# of them ends.
_blas_lock = threading.Lock()
_blas_users = 0
_blas_restore: list[tuple[Any, int]] = []
_blas_controller: Any = None
_clear_openblas_claim: Any = None


def _blas_libraries() -> Any:
    global _blas_controller, _clear_openblas_claim
    if _blas_controller is None:
        import threadpoolctl

        _blas_controller = threadpoolctl.ThreadpoolController().select(user_api="blas")
        openblas = getattr(threadpoolctl, "OpenBLASController", None)
        _clear_openblas_claim = getattr(openblas, "clear_controlling_thread", None)
    return _blas_controller


def _release_openblas_claim() -> None:
    """Let the next thread set a pthreads OpenBLAS's thread count.

    threadpoolctl (3.7 and later) lets only one Python thread set that process-wide count:
    the first to do so, until it clears its claim; the others are silently ignored. The
    limit here is shared by all threads, may be set in one and restored in another, and
    changes only under ``_blas_lock``, so the claim is cleared around every change.
    """
    if _clear_openblas_claim is not None:
        _clear_openblas_claim(force=True)


def _set_blas_threads(changes: list[tuple[Any, int]]) -> None:
    _release_openblas_claim()
    for library, n_threads in changes:
        library.set_num_threads(n_threads)
    _release_openblas_claim()


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Hold every loaded BLAS at one thread for the duration (re-entrant, thread-safe).

    Each library's count is read and set directly (threadpoolctl's ``limit`` also gathers
    every library's description, some 20 us per call, as long as a small convolution), and
    only the libraries not already at one thread are set and restored.
    """
    global _blas_users, _blas_restore
    with _blas_lock:
        if _blas_users == 0:
            libraries = _blas_libraries().lib_controllers
            counts = [(library, library.get_num_threads()) for library in libraries]
            _blas_restore = [(library, n) for library, n in counts if n is not None and n != 1]
            _set_blas_threads([(library, 1) for library, _ in _blas_restore])
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _set_blas_threads(_blas_restore)
                _blas_restore = []
