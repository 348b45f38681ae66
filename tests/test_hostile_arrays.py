"""Arrays that change or lie while an op runs: indices rewritten by another thread during the
max-pool backward, and ndarray subclasses whose Python-level attributes disagree with their memory.

Neither may ever make a kernel read or write outside the arrays it was handed: the result is
either correct for some state of the data or a clean error. (Run under the sanitizer build, a
stray access aborts the run; set CONVX_RACE_SECONDS to race for longer than the default.)
"""

import os
import threading
import time

import numpy as np
import pytest
from conftest import DTYPES, assert_close

import convx
import convx.functional as F
from convx.reference import pooling as reference_pooling

RACE_SECONDS = float(os.environ.get("CONVX_RACE_SECONDS", "1"))


@pytest.fixture
def two_threads():
    previous = convx.get_num_threads()
    convx.set_num_threads(2)
    yield
    convx.set_num_threads(previous)


RACE_GEOMETRIES = [
    ((1, 1, 1024, 1024), 3, 3),  # the red team's reproducer: the general scatter path
    ((2, 4, 96, 96), 2, 2),  # 2x2 blocks: the one-pass path, which falls back to the scatter on a stray index
    ((3, 2, 64, 64), 3, 2),  # overlapping windows: blocks tried first, then the scatter
]


def _race(shape, kernel, stride, bad_values_of, check_result):
    """Call the backward while a writer thread flips the indices between their true values and each
    of ``bad_values_of(good)`` in turn; ``check_result(result, expected, grad_out)`` judges each call
    that is not refused. Returns (calls, refused)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape)
    _, good = F.max_pool2d(x, kernel, stride, return_indices=True)
    grad_out = rng.standard_normal(good.shape)
    expected = F.max_pool2d_backward(grad_out, good, shape)
    bad_values = bad_values_of(good, shape[2] * shape[3], rng)
    indices = good.copy()
    stop = threading.Event()

    def rewrite():
        turn = 0
        while not stop.is_set():
            np.copyto(indices, bad_values[turn % len(bad_values)])
            np.copyto(indices, good)
            turn += 1

    writer = threading.Thread(target=rewrite)
    writer.start()
    calls = refused = 0
    try:
        deadline = time.monotonic() + RACE_SECONDS
        while time.monotonic() < deadline:
            try:
                result = F.max_pool2d_backward(grad_out, indices, shape)
            except ValueError as error:
                assert "indices must lie in [0, H*W)" in str(error)
                refused += 1
            else:
                check_result(result, expected, grad_out)
            calls += 1
    finally:
        stop.set()
        writer.join()
    assert calls > 0
    return calls, refused


def _outside_whatever_the_tearing(good, plane, rng):
    """Values outside every plane that share their low 32 bits with the true ones: a copy that tears
    an element (np.copyto may store bytes in any order) reads either the true index or one with
    nonzero high bits, never another index inside the plane."""
    high = [good + (1 << 32), good + (0x7FFF_FFFF << 32), good - (1 << 32), good | np.int64(-(1 << 63))]
    high.append(np.where(rng.random(good.shape) < 0.5, good, good + (3 << 40)))
    return high


def _anything(good, plane, rng):
    return [np.full_like(good, v) for v in (2**62, -1, plane, -(2**40), 0)] + [
        rng.integers(-(2**63), 2**63 - 1, size=good.shape, dtype=np.int64),
        np.where(rng.random(good.shape) < 0.5, good, rng.integers(-plane, 2 * plane, size=good.shape)),
    ]


@pytest.mark.parametrize("shape, kernel, stride", RACE_GEOMETRIES)
def test_indices_rewritten_during_the_backward_are_refused_or_used_as_read(shape, kernel, stride, two_threads):
    """Each call sees each index as it was at one moment: either refused or the true gradient."""

    def exact(result, expected, grad_out):
        np.testing.assert_array_equal(result, expected)

    calls, refused = _race(shape, kernel, stride, _outside_whatever_the_tearing, exact)
    # The race was real: some calls saw the writer's values (unless the machine ran very few).
    assert refused > 0 or calls < 5


@pytest.mark.parametrize("shape, kernel, stride", RACE_GEOMETRIES)
def test_indices_rewritten_with_any_values_never_send_a_write_outside(shape, kernel, stride, two_threads):
    """With arbitrary values (in range or not, torn or not) the result may route gradients anywhere
    inside their planes, but each gradient lands once, in its own plane, and nothing outside is
    written (the sanitizer build checks the last part)."""

    def conserved(result, expected, grad_out):
        np.testing.assert_allclose(result.sum(axis=(2, 3)), grad_out.sum(axis=(2, 3)), rtol=1e-12, atol=1e-9)

    _race(shape, kernel, stride, _anything, conserved)


class LyingShape(np.ndarray):
    """Reports another shape than its memory has, and slices to a 1x1x1x1 array."""

    @property
    def shape(self):
        return (2, 3, 8, 8)

    def __getitem__(self, key):
        return np.zeros((1, 1, 1, 1), dtype=self.dtype)


class CountingSubclass(np.ndarray):
    """An honest subclass (like np.memmap or a units-carrying array): it must just work."""


def test_a_subclass_lying_about_its_slices_cannot_reach_a_kernel():
    """Validation and kernels read only the ndarray's own description of its memory."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8))
    y, indices = F.max_pool2d(x, 2, return_indices=True)
    grad_out = rng.standard_normal(y.shape)
    expected = reference_pooling.max_pool2d_backward(grad_out, indices, x.shape)
    liar = indices.view(LyingShape)
    assert_close(F.max_pool2d_backward(grad_out, liar, x.shape), expected)
    assert_close(F.max_pool2d_backward(grad_out.view(LyingShape), indices, x.shape), expected)
    # A lie about the shape is not believed: the true shape decides, and a mismatch is refused.
    small = rng.standard_normal((1, 1, 4, 4)).view(LyingShape)
    assert F.max_pool2d(small, 2).shape == (1, 1, 2, 2)
    with pytest.raises(ValueError, match="indices must have the shape of grad_out"):
        F.max_pool2d_backward(grad_out, indices[:1].view(LyingShape), x.shape)


@pytest.mark.parametrize("dtype", DTYPES)
def test_subclasses_give_plain_arrays_and_the_same_results(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 9, 9)).astype(dtype)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    bias = rng.standard_normal(4).astype(dtype)
    sub = CountingSubclass
    out = F.conv2d(x.view(sub), weight.view(sub), bias.view(sub), padding=1)
    assert type(out) is np.ndarray
    np.testing.assert_array_equal(out, F.conv2d(x, weight, bias, padding=1))
    grad_out = rng.standard_normal(out.shape).astype(dtype)
    np.testing.assert_array_equal(
        F.conv2d_backward_input(grad_out.view(sub), weight.view(sub), x.shape, padding=1),
        F.conv2d_backward_input(grad_out, weight, x.shape, padding=1),
    )
    y, indices = F.max_pool2d(x.view(sub), 3, 2, return_indices=True)
    assert type(y) is np.ndarray and type(indices) is np.ndarray
    np.testing.assert_array_equal(
        F.max_pool2d_backward(y.view(sub), indices.view(sub), x.shape),
        F.max_pool2d_backward(y, indices, x.shape),
    )
    np.testing.assert_array_equal(F.avg_pool2d(x.view(sub), 2), F.avg_pool2d(x, 2))
    layer = convx.nn.Conv2d(3, 4, 3, dtype=dtype, rng=0)
    np.testing.assert_array_equal(layer.forward(x.view(sub)), layer.forward(x))
