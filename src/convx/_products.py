"""Matrix products on convx's own threads, for the layers that are one product (nn.Linear,
convolutions whose window covers the whole input)."""

from __future__ import annotations

import contextvars
from typing import Any

import numpy as np

from . import _core
from ._threads import kernel_threads
from ._typing import AnyArray

_BLAS_INT_MAX = 2**31 - 1


def matmul(a: AnyArray, b: AnyArray, out: AnyArray | None = None, n_threads: int | None = None) -> AnyArray:
    """``a @ b`` for 2-D float arrays of one dtype, into ``out`` (C-contiguous) or a new array.

    The product runs on the kernels' threads, each part one BLAS call with BLAS held at one
    thread: a multi-threaded BLAS leaves its own threads spinning for a while after each call,
    and they take cores from the convolutions that run next. ``a`` and ``b`` may be C-contiguous
    or the transpose of a C-contiguous array (anything else is copied). NaN and inf propagate as
    in the sums, without numpy's floating-point warnings.
    """
    m, k = a.shape
    n = b.shape[1]
    if out is None:
        out = np.empty((m, n), dtype=a.dtype)
    if n_threads is None:
        n_threads = kernel_threads(m * n * k)
    if max(m, n, k) > _BLAS_INT_MAX:  # (BLAS takes int sizes)
        _quiet_matmul(a, b, out)
        return out
    trans_a, trans_b = not a.flags.c_contiguous, not b.flags.c_contiguous
    if trans_a and not a.T.flags.c_contiguous:
        a, trans_a = np.ascontiguousarray(a), False
    if trans_b and not b.T.flags.c_contiguous:
        b, trans_b = np.ascontiguousarray(b), False
    _core.matmul(a.T if trans_a else a, trans_a, b.T if trans_b else b, trans_b, out, n_threads)
    return out


# NumPy 2 keeps its error state in a context variable; NumPy 1 per thread, but its ufuncs take
# the state for one call (extobj: buffer size, error mask 0 = ignore all, no callback).
_ERRSTATE_IN_CONTEXT = np.lib.NumpyVersion(np.__version__) >= "2.0.0"


def _quiet_matmul(a: AnyArray, b: AnyArray, out: AnyArray) -> None:
    """``out = a @ b`` with floating-point warnings off, changing no state that outlives the call:
    an interrupt between errstate's change and its try would otherwise leave them off for good."""
    if _ERRSTATE_IN_CONTEXT:
        contextvars.copy_context().run(_matmul_ignoring_errors, a, b, out)
    else:
        numpy1_matmul: Any = np.matmul  # (NumPy 2's stubs know no extobj)
        numpy1_matmul(a, b, out=out, extobj=[np.getbufsize(), 0, None])


def _matmul_ignoring_errors(a: AnyArray, b: AnyArray, out: AnyArray) -> None:
    with np.errstate(all="ignore"):
        np.matmul(a, b, out=out)
