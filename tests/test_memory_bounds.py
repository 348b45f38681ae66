"""Memory that a call takes beyond the arrays it returns (issue 25, item 4).

Scratch is sized by what the output reads: stride, padding, dilation and kernel size must never
cost memory beyond the sizes of the inputs and outputs. The bound every call is held to: its extra
memory at most twice its inputs' size plus 64 MiB. tracemalloc sees every NumPy allocation, and
the kernels allocate their scratch with np.empty, so its peak over the call, less the returned
arrays, is the extra memory. Each op family has its own section, helpers and tests.
"""

import tracemalloc

import numpy as np
import pytest
from conftest import DTYPES

import convx.functional as F
import convx.reference.pooling as R
from convx import _threads

MiB = 1 << 20
BIG = 2**31 - 1

# ---------------------------------------------------------------------------------------------
# Pooling


def _pool_extra_memory(call, *inputs):
    """(the result of ``call()``, the peak bytes it allocated beyond the arrays it returned), and
    checks that against the bound: twice the inputs' bytes plus 64 MiB."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    returned = sum(a.nbytes for a in (result if isinstance(result, tuple) else (result,)))
    extra = peak - returned
    assert extra <= 2 * sum(np.asarray(a).nbytes for a in inputs) + 64 * MiB, (extra, returned)
    return result, extra


@pytest.fixture
def pool_threads():
    before = _threads.get_num_threads()
    yield _threads.set_num_threads
    _threads.set_num_threads(before)


# (kernel_size, stride, padding, dilation, ceil_mode) on a 3x3 (or 1x1) plane: strides, paddings,
# dilations and kernels up to 2^31 - 1, each with an output of at least one window.
POOL_GEOMETRIES = [
    ((3, 3), 3, 10_000, 0, 1, False),
    ((3, 3), 3, 32_768, 0, 1, True),
    ((3, 3), 3, BIG, 0, 1, False),
    ((3, 3), (1, 3), (BIG, 1), 0, 1, True),
    ((1, 1), 2049, 1, 1024, 1, False),
    ((1, 1), 4097, 1, 2048, 1, True),
    ((1, 1), BIG, 1, 2**30 - 1, 1, False),
    ((1, 1), BIG, None, 2**30 - 1, 1, True),
    ((3, 3), (BIG, 3), (1, BIG), (2**30 - 1, 1), 1, False),
    ((3, 3), 2, 1, 1, 2, True),
    ((40, 3), (2, 2), 1, 0, (39, 2), False),
    ((3, 300), (1, 2), (1, 5_000), 0, (1, 299), True),
    ((3, 3), (1, 2**20), (2**16, 1), (0, 2**19), 1, False),
]


def _pool_input(rng, plane, dtype):
    x = rng.integers(-3, 4, size=(1, 2, *plane)).astype(dtype)
    x.reshape(-1)[::5] = np.nan
    return x


@pytest.mark.parametrize("n_threads", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("plane, kernel_size, stride, padding, dilation, ceil_mode", POOL_GEOMETRIES)
def test_max_pool_memory_does_not_grow_with_the_window(
    rng, pool_threads, plane, kernel_size, stride, padding, dilation, ceil_mode, dtype, n_threads
):
    pool_threads(n_threads)
    x = _pool_input(rng, plane, dtype)
    args = (kernel_size, stride, padding, dilation, ceil_mode)
    (y, indices), _ = _pool_extra_memory(lambda: F.max_pool2d(x, *args, return_indices=True), x)
    expected_y, expected_indices = R.max_pool2d(x, *args, return_indices=True)
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(indices, expected_indices)
    grad, _ = _pool_extra_memory(lambda: F.max_pool2d_backward(y, indices, x.shape), y, indices)
    np.testing.assert_array_equal(grad, R.max_pool2d_backward(y, indices, x.shape))


@pytest.mark.parametrize("n_threads", [1, 3])
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("plane, kernel_size, stride, padding, dilation, ceil_mode",
                         [g for g in POOL_GEOMETRIES if g[4] == 1])
def test_avg_pool_memory_does_not_grow_with_the_window(
    rng, pool_threads, plane, kernel_size, stride, padding, dilation, ceil_mode, dtype, count_include_pad,
    n_threads,
):
    pool_threads(n_threads)
    x = rng.standard_normal((1, 2, *plane)).astype(dtype)
    args = (kernel_size, stride, padding, ceil_mode, count_include_pad)
    y, _ = _pool_extra_memory(lambda: F.avg_pool2d(x, *args), x)
    tolerance = dict(rtol=1e-5) if dtype == np.float32 else dict(rtol=1e-12)
    np.testing.assert_allclose(y, R.avg_pool2d(x, *args), **tolerance)
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    grad, _ = _pool_extra_memory(lambda: F.avg_pool2d_backward(grad_out, x.shape, *args), grad_out)
    np.testing.assert_allclose(grad, R.avg_pool2d_backward(grad_out, x.shape, *args), **tolerance)


def test_avg_pool_backward_of_the_issue(rng):
    # kernel 2^31 - 1, stride 1, padding 2^30 - 1 on a 1x1 plane: the forward worked, the backward
    # asked for 128 GiB of shares (a ring of kernel_h rows).
    grad_out = rng.standard_normal((1, 1, 1, 1))
    grad, extra = _pool_extra_memory(lambda: F.avg_pool2d_backward(grad_out, (1, 1, 1, 1), BIG, 1, 2**30 - 1), grad_out)
    np.testing.assert_allclose(grad, R.avg_pool2d_backward(grad_out, (1, 1, 1, 1), BIG, 1, 2**30 - 1))
    assert extra < MiB


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output_size", [1, (3, 1), (7, 11), (300, 2)])
def test_adaptive_pool_memory(rng, dtype, output_size):
    x = _pool_input(rng, (5, 4), dtype)
    (y, indices), _ = _pool_extra_memory(lambda: F.adaptive_max_pool2d(x, output_size, return_indices=True), x)
    expected_y, expected_indices = R.adaptive_max_pool2d(x, output_size, return_indices=True)
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(indices, expected_indices)
    x = rng.standard_normal(x.shape).astype(dtype)
    y, _ = _pool_extra_memory(lambda: F.adaptive_avg_pool2d(x, output_size), x)
    np.testing.assert_allclose(y, R.adaptive_avg_pool2d(x, output_size), rtol=1e-5)
    grad, _ = _pool_extra_memory(lambda: F.adaptive_avg_pool2d_backward(y, x.shape), y)
    np.testing.assert_allclose(grad, R.adaptive_avg_pool2d_backward(y, x.shape), rtol=1e-5)


def test_large_max_pool_scratch_stays_within_the_bound(rng, pool_threads):
    # A plane large enough that the bound is not mostly the 64 MiB slack: 2048x2048 float32
    # (16 MiB), one plane per thread, windows of each kernel.
    pool_threads(2)
    x = rng.standard_normal((1, 2, 2048, 2048)).astype(np.float32)
    transposed = x.transpose(0, 1, 3, 2)  # not contiguous: the call's copy counts too
    for args in [(3, 2, 1), (2, 2), (127, 1, 63), (9, 3, 4, 2), (5, 7, 2), ((2047, 3), 1, (1023, 1))]:
        _pool_extra_memory(lambda: F.max_pool2d(x, *args, return_indices=True), x)
        _pool_extra_memory(lambda: F.max_pool2d(transposed, *args), transposed)


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: F.adaptive_avg_pool2d(np.zeros((1, 1, 3, 3)), (BIG, BIG)), "output_size"),
        (lambda: F.adaptive_max_pool2d(np.zeros((1, 1, 3, 3)), BIG, return_indices=True), "output_size"),
        (lambda: F.adaptive_avg_pool2d_backward(np.zeros((1, 1, 1, 1)), (1, 1, BIG, BIG)), "input_shape"),
        (lambda: F.avg_pool2d_backward(np.zeros((1, 1, 1, 1)), (1, 1, BIG, BIG), BIG), "input_shape"),
    ],
)
def test_pool_refusals_for_size_name_the_argument(call, argument):
    with pytest.raises((ValueError, MemoryError), match=argument):
        call()


@pytest.mark.parametrize("output_size", [(1, 2**21), (2**21 + 3, 1)])
def test_adaptive_pool_memory_does_not_grow_with_output_size(rng, torch, output_size):
    # Windows are walked output by output, not laid out in arrays as long as the output's sides
    # (which for a 1 x 2^21 output were 96 MiB, three times the output, where the input is 80 bytes).
    x = _pool_input(rng, (5, 4), np.float32)
    (y, indices), extra = _pool_extra_memory(lambda: F.adaptive_max_pool2d(x, output_size, return_indices=True), x)
    expected_y, expected_indices = torch.nn.functional.adaptive_max_pool2d(torch.from_numpy(x), output_size, True)
    np.testing.assert_array_equal(y, expected_y.numpy())
    np.testing.assert_array_equal(indices, expected_indices.numpy())
    x = rng.standard_normal(x.shape).astype(np.float32)
    y, extra_avg = _pool_extra_memory(lambda: F.adaptive_avg_pool2d(x, output_size), x)
    np.testing.assert_allclose(y, torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), output_size).numpy(),
                               rtol=1e-6)
    xt = torch.from_numpy(x).requires_grad_(True)
    torch.nn.functional.adaptive_avg_pool2d(xt, output_size).backward(torch.from_numpy(y))
    grad, extra_backward = _pool_extra_memory(lambda: F.adaptive_avg_pool2d_backward(y, x.shape), y)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-5)
    assert max(extra, extra_avg, extra_backward) < MiB
