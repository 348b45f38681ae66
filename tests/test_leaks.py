"""No leaks: 10,000 calls of every op on small arrays leave the memory where it was.

Two views. The resident set size sees everything, including memory that compiled code takes
from the C allocator directly, but only leaks of whole buffers (a leaked output or column
buffer per call: tens of megabytes); small ones vanish into the allocator's free space.
tracemalloc sees every Python object and NumPy buffer exactly, but it slows allocations down
several times and its total wobbles by some kilobytes as caches fill and empty; so it runs
over a few windows of calls, and a leak must show in every window (a leak of one object per
call does). RSS: 10,000 calls; tracemalloc: 3 windows of 500 calls in the ordinary run, 5 of
2,000 with ``--run-slow``. A self-check leaks on purpose. Under AddressSanitizer, which holds
freed memory in quarantine, the RSS check is skipped.
"""

import ctypes
import gc
import os
import sys
import tracemalloc
from contextlib import contextmanager, suppress

import numpy as np
import pytest

import convx.functional as F

CALLS = 10_000
RSS_TOLERANCE = 1024 * 1024  # bytes; one leaked 4-kilobyte buffer per call is 40 MB
# (windows, calls per window); one leaked object per call is >= 24 bytes, 12 KB per window.
TRACED_WINDOWS, TRACED_SLOW_WINDOWS = (3, 500), (5, 2_000)
TRACED_TOLERANCE = 8 * 1024  # bytes per 500 calls


def _ops():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8))
    weight = rng.standard_normal((4, 3, 3, 3))
    bias = rng.standard_normal(4)
    grad_y = rng.standard_normal((2, 4, 8, 8))
    depthwise = rng.standard_normal((6, 1, 3, 3))
    pooled, indices = F.max_pool2d(x, 2, return_indices=True)
    # Float32, non-contiguous and unbatched inputs take the copying and reshaping paths too.
    x32 = x.astype(np.float32)[..., ::-1]
    return {
        "conv2d": lambda: F.conv2d(x, weight, bias, padding=1),
        "conv2d-float32-strided-view": lambda: F.conv2d(x32, weight.astype(np.float32), stride=2),
        "conv2d-depthwise": lambda: F.conv2d(x, depthwise, padding=1, groups=3),
        "conv2d_backward_input": lambda: F.conv2d_backward_input(grad_y, weight, x.shape, padding=1),
        "conv2d_backward_weight": lambda: F.conv2d_backward_weight(grad_y, x, weight.shape, padding=1),
        "conv2d_backward_bias": lambda: F.conv2d_backward_bias(grad_y),
        "conv2d_backward": lambda: F.conv2d_backward(grad_y, x, weight, padding=1),
        "conv2d_backward-depthwise": lambda: F.conv2d_backward(grad_y[:, :3].repeat(2, 1), x, depthwise, padding=1,
                                                               groups=3),
        "conv_transpose2d": lambda: F.conv_transpose2d(grad_y, weight, bias[:3], padding=1),
        "max_pool2d": lambda: F.max_pool2d(x, 2, return_indices=True),
        "max_pool2d_backward": lambda: F.max_pool2d_backward(pooled, indices, x.shape),
        "avg_pool2d": lambda: F.avg_pool2d(x[0], 3, 2, 1, ceil_mode=True),
        "avg_pool2d_backward": lambda: F.avg_pool2d_backward(pooled, x.shape, 2),
        "adaptive_avg_pool2d": lambda: F.adaptive_avg_pool2d(x, (3, 5)),
        "adaptive_avg_pool2d_backward": lambda: F.adaptive_avg_pool2d_backward(pooled, x.shape),
        "adaptive_max_pool2d": lambda: F.adaptive_max_pool2d(x, 3, return_indices=True),
        "interpolate": lambda: F.interpolate(x, scale_factor=(1.5, 0.7), mode="bilinear"),
        "interpolate_backward": lambda: F.interpolate_backward(grad_y, (x.shape[0], grad_y.shape[1], 3, 4),
                                                               size=grad_y.shape[2:]),
        "pad": lambda: F.pad(x32, (2, 1, 1, 3), mode="reflect"),
        "pad_backward": lambda: F.pad_backward(grad_y, (*grad_y.shape[:2], grad_y.shape[2] - 2, grad_y.shape[3] - 1),
                                               (1, 0, 1, 1), mode="replicate"),
        # Refused calls build and drop exception objects with tracebacks.
        "refused-call": lambda: _refused(x, weight),
    }


def _refused(x, weight):
    try:
        F.conv2d(x, weight, stride=0)
    except ValueError:
        pass


OPS = _ops()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def _quiet_heap():
    """Objects alive before the measurement frozen out of the collector's way (in a whole
    test session, full collections would otherwise take most of the time)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _trim():
    """Give the C heap's free pages back to the system (glibc), so the RSS follows live memory
    instead of hiding new allocations in space freed by earlier tests."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss_growth(op, calls: int) -> int:
    with _quiet_heap():
        for _ in range(200):  # caches, pools and the first BLAS/OpenMP use settle here
            op()
        gc.collect()
        _trim()
        before = _rss()
        for _ in range(calls):
            op()
        gc.collect()
        _trim()
        return _rss() - before


def _traced_growth(op, windows: int, calls: int) -> int:
    """The smallest growth of traced memory over ``windows`` runs of ``calls`` calls."""
    growth = []
    with _quiet_heap():
        tracemalloc.start()
        try:
            for _ in range(100):  # whatever is allocated once, lazily, is allocated here
                op()
            gc.collect()
            for _ in range(windows):
                before, _ = tracemalloc.get_traced_memory()
                for _ in range(calls):
                    op()
                gc.collect()
                growth.append(tracemalloc.get_traced_memory()[0] - before)
        finally:
            tracemalloc.stop()
    return min(growth)


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
no_asan = pytest.mark.skipif("asan" in os.environ.get("LD_PRELOAD", ""),
                             reason="AddressSanitizer keeps freed memory in quarantine")


@linux_only
@no_asan
@pytest.mark.parametrize("name", list(OPS))
def test_ten_thousand_calls_leave_the_resident_set_flat(name):
    assert _rss_growth(OPS[name], CALLS) < RSS_TOLERANCE


@pytest.mark.parametrize("name", list(OPS))
def test_calls_leave_traced_memory_flat(name):
    assert _traced_growth(OPS[name], *TRACED_WINDOWS) < TRACED_TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OPS))
def test_ten_thousand_calls_leave_traced_memory_flat(name):
    windows, calls = TRACED_SLOW_WINDOWS
    assert _traced_growth(OPS[name], windows, calls) < TRACED_TOLERANCE * calls // TRACED_WINDOWS[1]


@linux_only
@no_asan
def test_the_checks_catch_a_leak_of_one_allocation_per_call():
    leaked = []
    assert _traced_growth(lambda: leaked.append(object()), *TRACED_WINDOWS) > TRACED_TOLERANCE
    leaked.clear()
    assert _rss_growth(lambda: leaked.append(np.ones(512)), CALLS) > RSS_TOLERANCE
