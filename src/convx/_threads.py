"""The thread count that every op passes to its kernel, the BLAS thread limit around kernels
that call BLAS, and what a forked child process may do with threads."""

from __future__ import annotations

import os
import sys
import warnings
from contextlib import AbstractContextManager
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

    Notes
    -----
    With GNU libgomp (GCC builds), a process made by ``os.fork()`` (``multiprocessing``'s
    "fork" start method, ``ProcessPoolExecutor`` on Linux before Python 3.14) cannot start
    OpenMP threads if its parent had run teams of several: so where convx had run kernels
    on several threads in the parent, or another loaded library shares its libgomp (PyTorch
    does) and may have, the child's kernels run on one thread whatever is set here, and the
    first op that would have used more says so with a :class:`ForkedProcessWarning`. The
    count set is still kept and returned by :func:`get_num_threads`. The "spawn" and
    "forkserver" start methods, and forks made before any multi-thread call, keep every
    thread; so do builds on LLVM's libomp, which starts afresh in a forked child.

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
    """Return the thread count convx kernels use (``OMP_NUM_THREADS`` or the core count by default).

    In a forked child limited to one thread (see :func:`set_num_threads`) this is still the
    count set, not the one the kernels run on.
    """
    return _num_threads


# Multiply-adds of a convolution below which one more thread costs more than it saves: its
# start-up and the closing barrier, and on a loaded machine the wait for a descheduled thread.
CONV_GRAIN = 1 << 20
# Elements of a memory-bound pass (an activation, a normalisation, a pooling, a sum) below which
# one more thread likewise costs more than it saves: 32768, PyTorch's grain for such loops
# (at::internal::GRAIN_SIZE). A 2x6x28x28 bias gradient (9,408 elements) took 6 us on one thread
# and a median of 5.4 ms on two on a 2-core Xeon (family 6 model 167) with another process
# running: the second thread waited for a core.
ELEMENT_GRAIN = 1 << 15


# ---------------------------------------------------------------------------------------------
# Fork
#
# GNU libgomp keeps the threads of a thread's first multi-thread team for its later teams, and
# after os.fork() the child still believes it has them: its next team of two or more waits
# for them forever (inside GOMP_parallel). Teams of one never touch that pool. LLVM's libomp
# and Intel's libiomp5 start afresh in the child (pthread_atfork handlers), so only libgomp
# is capped. A child runs every kernel on one thread when, in its parent, convx had handed
# any kernel a count above one (whether the kernel's team then used it or not: which thread
# ran it cannot be seen from here), or another loaded library links the same libgomp (PyTorch
# does: its teams fill the same pools, and nothing tells whether they ran), or the parent was
# itself capped (the stale pools are inherited).


class ForkedProcessWarning(RuntimeWarning):
    """convx runs on one thread in this process: it was forked from one whose OpenMP runtime
    (GNU libgomp) had, or may have, run multi-thread teams (see :func:`convx.set_num_threads`)."""


_OPENMP_LIBRARY: str = _core._openmp_library()
# Unknown runtimes (no dladdr) count as libgomp: a needless cap costs speed, a missing one a hang.
_FORK_UNSAFE_OPENMP: bool = _core.openmp_enabled() and (
    "gomp" in os.path.basename(_OPENMP_LIBRARY) or not _OPENMP_LIBRARY
)

# Set (never cleared) once a kernel may have started a team of several threads.
_teams_started = False
# Why this process's kernels are held at one thread ('' while they are not).
_fork_cap_reason = ""
# One token per process, taken (list.pop is atomic) by the call that warns.
_warning_token: list[None] = [None]


# What the child will be told, worked out in the parent just before the fork: the loaded
# objects are walked there (dl_iterate_phdr takes the loader's lock, which a child may
# inherit held by a thread it does not have).
_reason_at_fork = ""


def _before_fork() -> None:
    global _reason_at_fork
    _reason_at_fork = _fork_cap_reason
    if not _FORK_UNSAFE_OPENMP or _reason_at_fork:
        return
    if _teams_started:
        _reason_at_fork = "convx had run multi-thread kernels in its parent"
        return
    sharer = _core._openmp_sharer()
    if sharer:
        _reason_at_fork = (f"{os.path.basename(sharer)}, loaded in its parent, shares convx's OpenMP "
                           "runtime and may have run multi-thread teams there")


def _after_fork_in_child() -> None:
    global _fork_cap_reason
    _core._blas_after_fork_in_child()
    _fork_cap_reason = _reason_at_fork
    if _fork_cap_reason:
        _warning_token[:] = [None]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def _caller_outside_convx() -> int:
    """The ``stacklevel`` of the nearest caller outside the convx package (for warnings)."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def _warn_capped(wanted: int) -> None:
    try:
        _warning_token.pop()
    except IndexError:
        return
    warnings.warn(
        f"convx runs on 1 thread in this process (it would have used {wanted}): it was forked and "
        f"{_fork_cap_reason}; the OpenMP runtime ({os.path.basename(_OPENMP_LIBRARY) or 'GNU libgomp'}) "
        "cannot start threads in a forked child after that. "
        "Start processes with the 'spawn' or 'forkserver' method (multiprocessing.get_context) to keep them.",
        ForkedProcessWarning,
        stacklevel=_caller_outside_convx(),
    )


def kernel_threads(macs: int | None = None, *, elements: int | None = None) -> int:
    """The count handed to kernels: 1 when the extension has no OpenMP, or in a forked child
    that cannot start threads (see :func:`set_num_threads`); given a convolution's multiply-adds,
    no more than one thread per ``CONV_GRAIN`` of them, and given the elements a memory-bound
    pass reads, no more than one per ``ELEMENT_GRAIN`` of those."""
    global _teams_started
    n_threads = _num_threads if _core.openmp_enabled() else 1
    if macs is not None:
        n_threads = max(1, min(n_threads, macs // CONV_GRAIN))
    if elements is not None:
        n_threads = max(1, min(n_threads, elements // ELEMENT_GRAIN))
    if n_threads > 1:
        if _fork_cap_reason:
            _warn_capped(n_threads)
            return 1
        _teams_started = True
    return n_threads


def fork_capped() -> bool:
    """Whether this process's kernels are held at one thread because it was forked (see :func:`set_num_threads`)."""
    return bool(_fork_cap_reason)


# ---------------------------------------------------------------------------------------------
# The BLAS thread limit
#
# Some kernels call BLAS from inside their own OpenMP teams. A multi-threaded BLAS (pthreads
# OpenBLAS in particular) must not start its own threads there: it oversubscribes the cores
# and can deadlock. So while such a kernel runs (it enters single_threaded_blas itself), BLAS
# is held at one thread; nested and concurrent calls share one limit, released when the last
# of them ends. Its state lives in the extension (_threads.pxi) and changes only in C with
# the GIL held, so a KeyboardInterrupt (or another thread) can never find it half-changed.


def single_threaded_blas() -> AbstractContextManager[None]:
    """Hold every loaded BLAS at one thread while the returned context is entered.

    Re-entrant and shared by all Python threads: the first entry sets each library not
    already at one thread to one, the last exit gives each its count back, and an exception
    or KeyboardInterrupt anywhere leaves the counts and the bookkeeping as they were. The
    counts are read and set through the libraries' C functions (well under a microsecond;
    threadpoolctl's Python methods took some microseconds, as long as a small convolution),
    so threadpoolctl's per-thread claim on a pthreads OpenBLAS is neither taken nor needed.
    The libraries are those loaded at the first entry. Each returned object is entered once.
    """
    limit: AbstractContextManager[None] = _core._BlasLimit()
    return limit


# The C functions that read and set each BLAS's thread count, by threadpoolctl's internal_api:
# (getter, setter, whether the count is 64-bit). Every BLAS threadpoolctl knows is here.
_BLAS_COUNT_FUNCTIONS: dict[str, tuple[str, str, bool]] = {
    "openblas": ("openblas_get_num_threads", "openblas_set_num_threads", False),
    "mkl": ("MKL_Get_Max_Threads", "MKL_Set_Num_Threads_Local", False),
    "blis": ("bli_thread_get_num_threads", "bli_thread_set_num_threads", True),
    "flexiblas": ("flexiblas_get_num_threads", "flexiblas_set_num_threads", False),
}
# The affixes of OpenBLAS's symbols in SciPy's and NumPy's own builds (scipy_openblas64_).
_OPENBLAS_AFFIXES = [(prefix, suffix) for prefix in ("", "scipy_") for suffix in ("", "64_", "_64")]


def _blas_entry_points() -> list[tuple[Any, int, int, bool]]:
    """(controller, getter address, setter address, 64-bit count) for every loaded BLAS whose
    thread count can be read and set, with the functions threadpoolctl itself calls."""
    import ctypes

    import threadpoolctl

    found = []
    for library in threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers:
        names = _BLAS_COUNT_FUNCTIONS.get(library.internal_api)
        # (threadpoolctl before 3.2 names it _dynlib)
        dynlib = getattr(library, "dynlib", None) or getattr(library, "_dynlib", None)
        if names is None or dynlib is None:
            continue
        get_name, set_name, wide = names
        affixes = [("", "")]
        if library.internal_api == "openblas":
            affixes = _OPENBLAS_AFFIXES
            if getattr(library, "threading_layer", None) == "openmp":
                # Its threads are the calling thread's OpenMP team: a per-thread count.
                get_name, set_name = "omp_get_max_threads", "omp_set_num_threads"
                affixes = [("", "")]
        for prefix, suffix in affixes:
            getter = getattr(dynlib, f"{prefix}{get_name}{suffix}", None)
            setter = getattr(dynlib, f"{prefix}{set_name}{suffix}", None)
            if getter is not None and setter is not None:
                get_at, set_at = (ctypes.cast(f, ctypes.c_void_p).value for f in (getter, setter))
                if get_at and set_at:
                    found.append((library, get_at, set_at, wide))
                break
    return found


def __getattr__(name: str) -> Any:
    # The limit's bookkeeping, read from the extension: how many uses hold it, and the
    # (threadpoolctl controller, count) pairs its last exit will restore.
    if name == "_blas_users":
        return _core._blas_state()[0]
    if name == "_blas_restore":
        return _core._blas_state()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
