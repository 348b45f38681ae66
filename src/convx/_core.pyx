# cython: language_level=3
"""Private nogil kernels of convx.

Kernels trust their inputs: shapes, dtypes and integer ranges are validated by the public
functions in ``convx.functional`` before anything here runs. Every kernel writes into
outputs allocated by its caller and returns nothing. Arrays are C-contiguous NCHW.
"""

cimport cython
from cython cimport floating
from cython.parallel cimport parallel, prange, threadid
from libc.string cimport memset
from scipy.linalg.cython_blas cimport dgemm, sgemm

from contextlib import nullcontext as _nullcontext

import numpy as np

cdef extern from *:
    """
    #ifndef CONVX_OPENMP
    #define CONVX_OPENMP 0
    #endif
    #if CONVX_OPENMP
    #include <omp.h>
    static int convx_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int convx_max_threads(void) { return 1; }
    #endif
    """
    int CONVX_OPENMP
    int convx_max_threads() noexcept nogil


def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(CONVX_OPENMP)


def default_num_threads():
    """The OpenMP runtime's default team size (honours ``OMP_NUM_THREADS``); 1 without OpenMP."""
    return convx_max_threads()


include "_conv.pxi"
include "_conv3d.pxi"
include "_conv3d_last.pxi"
include "_depthwise.pxi"
include "_pool.pxi"
include "_pool_nhwc.pxi"
include "_pool3d.pxi"
include "_pool3d_ndhwc.pxi"
include "_depthwise_nhwc.pxi"
include "_resample.pxi"
include "_winograd.pxi"
include "_threads.pxi"
include "_elementwise.pxi"
include "_bn_nhwc.pxi"
include "_memory.pxi"
include "_unfold.pxi"
