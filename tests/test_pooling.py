"""Pooling ops against the NumPy reference and PyTorch: values, indices, gradients, layouts, threads."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import DTYPES, assert_close

import convx.functional as F
import convx.reference.pooling as R
from convx import _threads

# (input shape, kernel_size, stride, padding, dilation, ceil_mode). Widths are wide enough that
# the interior sweep runs for every literal specialisation (stride 1/2, kernel width 2/3) and the
# generic one, and narrow enough that border windows are a good share of the outputs.
MAX_CASES = [
    ((2, 3, 8, 10), 2, None, 0, 1, False),
    ((2, 3, 9, 11), 2, None, 0, 1, True),
    ((2, 3, 9, 11), 3, 2, 1, 1, False),
    ((2, 3, 10, 12), 3, 2, 1, 1, True),
    ((2, 3, 7, 9), 3, 1, 1, 1, False),
    ((2, 3, 7, 9), 2, 1, 0, 1, False),
    ((2, 3, 7, 9), 2, 1, 1, 1, True),
    ((2, 3, 9, 13), (2, 3), (1, 2), (1, 1), 1, False),
    ((2, 3, 9, 13), (3, 2), (2, 1), (1, 0), (2, 1), True),
    ((2, 3, 9, 11), 2, 3, 0, 1, False),
    ((2, 3, 9, 11), 2, 3, 1, 1, True),
    ((2, 3, 6, 7), 1, 1, 0, 1, False),
    ((2, 3, 6, 7), 1, 2, 0, 1, True),
    ((2, 3, 11, 12), 3, 3, 1, 2, False),
    ((2, 3, 11, 12), (3, 2), 1, (1, 1), (2, 3), False),
    ((2, 3, 10, 11), 4, 2, 2, 1, True),
    ((2, 3, 13, 14), (5, 3), (3, 2), (2, 1), 1, True),
    ((2, 3, 10, 11), 2, 2, 1, 3, True),
    ((2, 3, 9, 10), 3, 2, 0, 1, True),
    ((2, 3, 8, 12), (1, 3), (1, 2), (0, 1), (1, 2), False),
    ((2, 3, 8, 12), (2, 4), (2, 3), (1, 2), 1, True),
    ((2, 3, 12, 12), 5, 1, 2, 1, False),
    ((1, 2, 16, 40), 2, 2, 0, 1, False),
    ((1, 2, 16, 41), 3, 2, 1, 1, False),
]

# (input shape, kernel_size, stride, padding, ceil_mode)
AVG_CASES = [
    ((2, 3, 8, 10), 2, None, 0, False),
    ((2, 3, 9, 11), 2, None, 0, True),
    ((2, 3, 9, 11), 3, 2, 1, False),
    ((2, 3, 10, 12), 3, 2, 1, True),
    ((2, 3, 7, 9), 3, 1, 1, False),
    ((2, 3, 7, 9), 2, 1, 1, True),
    ((2, 3, 9, 13), (2, 3), (1, 2), (1, 1), False),
    ((2, 3, 9, 13), (3, 2), (2, 1), (1, 0), True),
    ((2, 3, 9, 11), 2, 3, 1, True),
    ((2, 3, 6, 7), 1, 2, 0, True),
    ((2, 3, 10, 11), 4, 3, 2, True),
    ((2, 3, 13, 14), (5, 3), (3, 2), (2, 1), True),
    ((2, 3, 8, 12), (2, 4), (2, 3), (1, 2), True),
    ((1, 2, 16, 41), 3, 2, 1, False),
]
AVG_COUNTING = [(True, None), (False, None), (True, 5), (False, 1)]

# (input shape, output_size)
ADAPTIVE_CASES = [
    ((2, 3, 7, 9), 1),
    ((2, 3, 7, 9), (2, 3)),
    ((2, 3, 7, 9), (None, 4)),
    ((2, 3, 7, 9), (5, None)),
    ((2, 3, 7, 9), (7, 9)),
    ((2, 3, 5, 6), (8, 11)),
    ((2, 3, 10, 7), (3, 1)),
    ((2, 3, 1, 1), (2, 3)),
]


def make_input(rng, shape, dtype, kind, salt=8, least=3):
    """Normal values; small integers (ties everywhere); or integers salted with NaN and +-inf (one
    element in ``salt``, at least ``least`` of them)."""
    if kind == "normal":
        return rng.standard_normal(shape).astype(dtype)
    x = rng.integers(-2, 3, size=shape).astype(dtype)
    if kind == "special":
        flat = x.reshape(-1)
        spots = rng.choice(flat.size, size=max(least, flat.size // salt), replace=False)
        flat[spots] = rng.choice(np.array([np.nan, np.inf, -np.inf], dtype=dtype), size=spots.size)
    return x


def torch_max_pool(torch, x, kernel_size, stride, padding, dilation, ceil_mode):
    y, indices = torch.nn.functional.max_pool2d(
        torch.from_numpy(x), kernel_size, stride, padding, dilation, ceil_mode, return_indices=True
    )
    return y.numpy(), indices.numpy()


def torch_grad(torch, op, x, grad_out):
    """d(sum(op(x) * grad_out)) / dx by autograd."""
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    op(xt).backward(torch.from_numpy(grad_out))
    return xt.grad.numpy()


# Central differences carry truncation and rounding error (~eps**2 and ~1e-16/eps), far above the
# float64 comparison tolerance of conftest, so gradient checks use their own.
GRADCHECK_TOLERANCE = dict(rtol=1e-6, atol=1e-8)


def assert_gradient(actual, expected):
    np.testing.assert_allclose(actual, expected, **GRADCHECK_TOLERANCE)


def numerical_grad(f, x, weights, eps=1e-6):
    """Central differences of sum(f(x) * weights) in float64."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[i] += eps
        minus[i] -= eps
        grad[i] = (np.sum(f(plus) * weights) - np.sum(f(minus) * weights)) / (2 * eps)
    return grad


@pytest.fixture
def num_threads():
    """Set convx's thread count inside a test, restored afterwards."""
    before = _threads.get_num_threads()
    yield _threads.set_num_threads
    _threads.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# Max pooling


@pytest.mark.parametrize("kind", ["normal", "ties", "special"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kernel_size, stride, padding, dilation, ceil_mode", MAX_CASES)
def test_max_pool2d_matches_reference_and_torch(
    rng, torch, shape, kernel_size, stride, padding, dilation, ceil_mode, dtype, kind
):
    x = make_input(rng, shape, dtype, kind)
    y, indices = F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)
    ref_y, ref_indices = R.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)
    torch_y, torch_indices = torch_max_pool(torch, x, kernel_size, stride, padding, dilation, ceil_mode)

    assert y.dtype == dtype and indices.dtype == np.int64
    assert y.flags.c_contiguous and indices.flags.c_contiguous
    # Max pooling only selects: values and indices agree exactly (NaN counts as equal to NaN).
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_array_equal(y, torch_y)
    np.testing.assert_array_equal(indices, torch_indices)
    np.testing.assert_array_equal(F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode), y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_special_values(torch, dtype):
    nan, inf = np.nan, np.inf
    x = np.array(
        [
            [
                [[nan, 1.0, 3.0, 2.0], [2.0, nan, inf, 5.0]],  # two NaNs in one window; +inf wins
                [[-inf, -inf, -1.0, -2.0], [-inf, -inf, -2.0, -1.0]],  # all -inf; tie between -1s
            ]
        ],
        dtype=dtype,
    )
    y, indices = F.max_pool2d(x, 2, return_indices=True)
    assert np.isnan(y[0, 0, 0, 0]) and indices[0, 0, 0, 0] == 5  # NaN propagates, the last NaN wins
    assert y[0, 0, 0, 1] == inf and indices[0, 0, 0, 1] == 6
    assert y[0, 1, 0, 0] == -inf and indices[0, 1, 0, 0] == 0  # first tap of an all -inf window
    assert y[0, 1, 0, 1] == -1 and indices[0, 1, 0, 1] == 2  # first maximum wins the tie
    torch_y, torch_indices = torch_max_pool(torch, x, 2, 2, 0, 1, False)
    np.testing.assert_array_equal(y, torch_y)
    np.testing.assert_array_equal(indices, torch_indices)

    # Kernel width 3 without indices takes the sweep that skips NaN and flags it by window sums:
    # NaN, and +inf with -inf (a NaN sum without any NaN), must both come out exact.
    x3 = np.zeros((1, 1, 3, 12), dtype=dtype)
    x3[0, 0, 1, 1] = nan
    x3[0, 0, 0, 4], x3[0, 0, 2, 5] = inf, -inf
    x3[0, 0, :, 6:9] = -inf
    x3[0, 0, 1, 7] = inf
    for stride in (1, 3):
        y = F.max_pool2d(x3, 3, stride)
        np.testing.assert_array_equal(y, R.max_pool2d(x3, 3, stride))
        np.testing.assert_array_equal(y, torch.nn.functional.max_pool2d(torch.from_numpy(x3), 3, stride).numpy())
    np.testing.assert_array_equal(F.max_pool2d(x3, 3, 3)[0, 0, 0], [nan, inf, inf, 0])

    # Two NaNs in one window: PyTorch's (val > max) || isnan(val) keeps the last one.
    row = np.array([[[[nan, 1.0, nan, 2.0]]]], dtype=dtype)
    _, indices = F.max_pool2d(row, (1, 4), return_indices=True)
    assert indices.item() == 2
    assert torch_max_pool(torch, row, (1, 4), (1, 4), 0, 1, False)[1].item() == 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_padding_never_wins(torch, dtype):
    # All-negative input: the padding (-inf, not 0) must never be the maximum.
    x = -1.0 - np.arange(2 * 5 * 6, dtype=dtype).reshape(1, 2, 5, 6)
    y, indices = F.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    assert np.all(y < 0)
    torch_y, torch_indices = torch_max_pool(torch, x, 3, 2, 1, 1, True)
    np.testing.assert_array_equal(y, torch_y)
    np.testing.assert_array_equal(indices, torch_indices)


@pytest.mark.parametrize("kernel_size, padding, ceil_mode", [(1, 0, False), (2, 1, False), (2, 1, True), (3, 1, True)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_pools_on_1x1_planes(rng, torch, kernel_size, padding, ceil_mode, dtype):
    x = rng.standard_normal((2, 3, 1, 1)).astype(dtype)
    y, indices = F.max_pool2d(x, kernel_size, 1, padding, 1, ceil_mode, return_indices=True)
    torch_y, torch_indices = torch_max_pool(torch, x, kernel_size, 1, padding, 1, ceil_mode)
    np.testing.assert_array_equal(y, torch_y)
    np.testing.assert_array_equal(indices, torch_indices)
    assert np.all(indices == 0)
    avg = F.avg_pool2d(x, kernel_size, 1, padding, ceil_mode, count_include_pad=False)
    np.testing.assert_array_equal(avg, np.broadcast_to(x, avg.shape))
    np.testing.assert_array_equal(F.adaptive_max_pool2d(x, 1), x)
    np.testing.assert_array_equal(F.adaptive_avg_pool2d(x, 1), x)


def test_max_pool2d_float_offsets_beyond_float32_mantissa():
    # A window spanning 2**24 elements: its offsets no longer fit float32 exactly, so the
    # one-window-at-a-time path has to take over (and must agree with the reference).
    x = np.zeros((1, 1, 4097, 4096), dtype=np.float32)
    x[0, 0, 0, :] = np.arange(4096) % 7
    x[0, 0, 4096, :] = np.arange(4096) % 5
    y, indices = F.max_pool2d(x, (2, 1), 1, 0, (4096, 1), return_indices=True)
    ref_y, ref_indices = R.max_pool2d(x, (2, 1), 1, 0, (4096, 1), return_indices=True)
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(indices, ref_indices)


def test_max_pool2d_refuses_windows_entirely_in_padding(torch):
    # Dilated taps can step over a small input; PyTorch then returns -inf and an index that
    # points at the wrong element (or outside the plane). convx refuses.
    x = np.arange(5.0).reshape(1, 1, 5, 1)
    torch_y, torch_indices = torch_max_pool(torch, x, (3, 2), (3, 2), (1, 1), (1, 3), True)
    assert np.all(torch_y == -np.inf)
    with pytest.raises(ValueError, match="every tap in the padding"):
        F.max_pool2d(x, (3, 2), None, (1, 1), (1, 3), True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape, kernel_size, stride, padding, dilation, ceil_mode", [MAX_CASES[i] for i in (0, 3, 4, 8, 13, 16, 22)]
)
def test_max_pool2d_backward_matches_reference_and_torch(
    rng, torch, shape, kernel_size, stride, padding, dilation, ceil_mode, dtype
):
    # Integer inputs: many ties, so overlapping windows share maxima and their gradients add up.
    x = make_input(rng, shape, dtype, "ties")
    y, indices = F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    grad_x = F.max_pool2d_backward(grad_out, indices, x.shape)

    assert grad_x.shape == x.shape and grad_x.dtype == dtype
    assert_close(grad_x, R.max_pool2d_backward(grad_out, indices, x.shape))
    expected = torch_grad(
        torch,
        lambda t: torch.nn.functional.max_pool2d(t, kernel_size, stride, padding, dilation, ceil_mode),
        x,
        grad_out,
    )
    assert_close(grad_x, expected)


@pytest.mark.parametrize(
    "kernel_size, stride, padding, dilation", [(2, None, 0, 1), (3, 1, 1, 1), ((2, 3), (2, 1), (1, 1), (1, 2))]
)
def test_max_pool2d_numerical_gradient(rng, kernel_size, stride, padding, dilation):
    # Distinct values far apart (no ties), so a small step never changes which tap wins.
    x = rng.permutation(2 * 5 * 6).astype(np.float64).reshape(1, 2, 5, 6) * 0.1

    def forward(data):
        return F.max_pool2d(data, kernel_size, stride, padding, dilation)

    y, indices = F.max_pool2d(x, kernel_size, stride, padding, dilation, return_indices=True)
    weights = rng.standard_normal(y.shape)
    assert_gradient(F.max_pool2d_backward(weights, indices, x.shape), numerical_grad(forward, x, weights))


# ---------------------------------------------------------------------------------------------
# Average pooling


@pytest.mark.parametrize("count_include_pad, divisor_override", AVG_COUNTING)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kernel_size, stride, padding, ceil_mode", AVG_CASES)
def test_avg_pool2d_matches_reference_and_torch(
    rng, torch, shape, kernel_size, stride, padding, ceil_mode, dtype, count_include_pad, divisor_override
):
    x = make_input(rng, shape, dtype, "normal")
    args = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    y = F.avg_pool2d(x, *args)
    assert y.dtype == dtype and y.flags.c_contiguous
    assert_close(y, R.avg_pool2d(x, *args))
    assert_close(y, torch.nn.functional.avg_pool2d(torch.from_numpy(x), *args).numpy())

    grad_out = rng.standard_normal(y.shape).astype(dtype)
    grad_x = F.avg_pool2d_backward(grad_out, x.shape, *args)
    assert grad_x.shape == x.shape and grad_x.dtype == dtype
    assert_close(grad_x, R.avg_pool2d_backward(grad_out, x.shape, *args))
    assert_close(grad_x, torch_grad(torch, lambda t: torch.nn.functional.avg_pool2d(t, *args), x, grad_out))


@pytest.mark.parametrize("dtype", DTYPES)
def test_avg_pool2d_special_values(torch, dtype):
    x = np.array([[[[1.0, np.nan, 2.0, 3.0], [np.inf, 1.0, -np.inf, 1.0]]]], dtype=dtype)
    y = F.avg_pool2d(x, 2)
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 0, 1] == -np.inf
    np.testing.assert_array_equal(y, torch.nn.functional.avg_pool2d(torch.from_numpy(x), 2).numpy())


@pytest.mark.parametrize(
    "kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override",
    [
        (2, None, 0, False, True, None),
        (3, 2, 1, True, True, None),
        (3, 2, 1, True, False, None),
        ((2, 3), (1, 2), (1, 1), False, False, 4),
    ],
)
def test_avg_pool2d_numerical_gradient(
    rng, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
):
    x = rng.standard_normal((1, 2, 5, 6))
    args = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    weights = rng.standard_normal(F.avg_pool2d(x, *args).shape)
    expected = numerical_grad(lambda data: F.avg_pool2d(data, *args), x, weights)
    assert_gradient(F.avg_pool2d_backward(weights, x.shape, *args), expected)


# ---------------------------------------------------------------------------------------------
# Adaptive pooling


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, output_size", ADAPTIVE_CASES)
def test_adaptive_avg_pool2d_matches_reference_and_torch(rng, torch, shape, output_size, dtype):
    x = make_input(rng, shape, dtype, "normal")
    y = F.adaptive_avg_pool2d(x, output_size)
    assert y.dtype == dtype
    assert_close(y, R.adaptive_avg_pool2d(x, output_size))
    assert_close(y, torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), output_size).numpy())

    grad_out = rng.standard_normal(y.shape).astype(dtype)
    grad_x = F.adaptive_avg_pool2d_backward(grad_out, x.shape)
    assert grad_x.shape == x.shape and grad_x.dtype == dtype
    assert_close(grad_x, R.adaptive_avg_pool2d_backward(grad_out, x.shape))
    expected = torch_grad(torch, lambda t: torch.nn.functional.adaptive_avg_pool2d(t, output_size), x, grad_out)
    assert_close(grad_x, expected)


@pytest.mark.parametrize("kind", ["normal", "ties", "special"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, output_size", ADAPTIVE_CASES)
def test_adaptive_max_pool2d_matches_reference_and_torch(rng, torch, shape, output_size, dtype, kind):
    x = make_input(rng, shape, dtype, kind)
    y, indices = F.adaptive_max_pool2d(x, output_size, return_indices=True)
    ref_y, ref_indices = R.adaptive_max_pool2d(x, output_size, return_indices=True)
    torch_y, torch_indices = torch.nn.functional.adaptive_max_pool2d(
        torch.from_numpy(x), output_size, return_indices=True
    )
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_array_equal(y, torch_y.numpy())
    np.testing.assert_array_equal(indices, torch_indices.numpy())
    np.testing.assert_array_equal(F.adaptive_max_pool2d(x, output_size), y)

    if kind == "ties":
        # The same indices drive max_pool2d_backward, as PyTorch's adaptive max backward.
        grad_out = rng.standard_normal(y.shape).astype(dtype)
        expected = torch_grad(torch, lambda t: torch.nn.functional.adaptive_max_pool2d(t, output_size), x, grad_out)
        assert_close(F.max_pool2d_backward(grad_out, indices, x.shape), expected)


@pytest.mark.parametrize("output_size", [1, (2, 3), (4, 7)])
def test_adaptive_avg_pool2d_numerical_gradient(rng, output_size):
    x = rng.standard_normal((1, 2, 5, 6))
    weights = rng.standard_normal(F.adaptive_avg_pool2d(x, output_size).shape)
    expected = numerical_grad(lambda data: F.adaptive_avg_pool2d(data, output_size), x, weights)
    assert_gradient(F.adaptive_avg_pool2d_backward(weights, x.shape), expected)


# ---------------------------------------------------------------------------------------------
# Every op: layouts, empty batches, unbatched input, threads


def _grad_like(y):
    """A fixed, layout-independent gradient for an output: the same values for CHW and 1CHW."""
    return np.cos(np.arange(y.size)).reshape(y.shape).astype(y.dtype)


def _all_ops(x):
    """Every pooling op applied to x (NCHW or CHW float), forward and backward, as a dict of arrays."""
    y, indices = F.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    avg_args = ((3, 2), (2, 1), (1, 1), True, False)
    avg = F.avg_pool2d(x, *avg_args)
    adaptive_max, adaptive_indices = F.adaptive_max_pool2d(x, (3, None), return_indices=True)
    adaptive_avg = F.adaptive_avg_pool2d(x, (2, 3))
    return {
        "max": y,
        "max_indices": indices,
        "max_dilated": F.max_pool2d(x, (2, 3), 1, 1, (2, 1)),
        "max_backward": F.max_pool2d_backward(_grad_like(y), indices, x.shape),
        "avg": avg,
        "avg_backward": F.avg_pool2d_backward(_grad_like(avg), x.shape, *avg_args),
        "adaptive_max": adaptive_max,
        "adaptive_indices": adaptive_indices,
        "adaptive_backward": F.max_pool2d_backward(_grad_like(adaptive_max), adaptive_indices, x.shape),
        "adaptive_avg": adaptive_avg,
        "adaptive_avg_backward": F.adaptive_avg_pool2d_backward(_grad_like(adaptive_avg), x.shape),
    }


def _assert_same(results, expected):
    assert results.keys() == expected.keys()
    for name in expected:
        assert results[name].dtype == expected[name].dtype, name
        np.testing.assert_array_equal(results[name], expected[name], err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "layout",
    ["read_only", "strided", "negative_strides", "fortran", "transposed"],
)
def test_any_layout_gives_the_same_result_and_is_not_modified(rng, dtype, layout):
    base = rng.standard_normal((2, 3, 14, 18)).astype(dtype)
    contiguous = np.ascontiguousarray(base[:, :, ::2, ::2])
    expected = _all_ops(contiguous)
    if layout == "read_only":
        x = contiguous.copy()
        x.flags.writeable = False
    elif layout == "strided":
        x = base[:, :, ::2, ::2]
    elif layout == "negative_strides":
        x = contiguous[::-1, ::-1, ::-1, ::-1].copy()[::-1, ::-1, ::-1, ::-1]
        assert all(step < 0 for step in x.strides)
    elif layout == "fortran":
        x = np.asfortranarray(contiguous)
    else:
        x = np.ascontiguousarray(contiguous.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    np.testing.assert_array_equal(x, contiguous)
    before = x.copy()
    _assert_same(_all_ops(x), expected)
    np.testing.assert_array_equal(x, before)


def test_backward_inputs_are_not_modified(rng):
    x = rng.standard_normal((2, 3, 7, 8))
    y, indices = F.max_pool2d(x, 2, return_indices=True)
    grad_out = np.asfortranarray(rng.standard_normal(y.shape))
    grad_out.flags.writeable = False
    indices = np.asfortranarray(indices)
    indices.flags.writeable = False
    saved = grad_out.copy(), indices.copy()
    F.max_pool2d_backward(grad_out, indices, x.shape)
    F.avg_pool2d_backward(grad_out, x.shape, 2)
    F.adaptive_avg_pool2d_backward(grad_out, x.shape)
    np.testing.assert_array_equal(grad_out, saved[0])
    np.testing.assert_array_equal(indices, saved[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch(dtype):
    x = np.empty((0, 3, 7, 8), dtype=dtype)
    y, indices = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert y.shape == indices.shape == (0, 3, 4, 4) and y.dtype == dtype and indices.dtype == np.int64
    assert F.max_pool2d(x, 2).shape == (0, 3, 3, 4)
    assert F.avg_pool2d(x, 2, ceil_mode=True).shape == (0, 3, 4, 4)
    assert F.adaptive_avg_pool2d(x, (2, None)).shape == (0, 3, 2, 8)
    y, indices = F.adaptive_max_pool2d(x, 5, return_indices=True)
    assert y.shape == indices.shape == (0, 3, 5, 5)
    grad = np.empty((0, 3, 2, 2), dtype=dtype)
    for grad_x in (
        F.max_pool2d_backward(grad, np.empty((0, 3, 2, 2), dtype=np.int64), x.shape),
        F.avg_pool2d_backward(np.empty((0, 3, 3, 4), dtype=dtype), x.shape, 2),
        F.adaptive_avg_pool2d_backward(grad, x.shape),
    ):
        assert grad_x.shape == x.shape and grad_x.dtype == dtype
    # An empty batch still gets its arguments checked.
    with pytest.raises(ValueError, match="kernel"):
        F.max_pool2d(x, 9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_unbatched_input(rng, dtype):
    x = rng.standard_normal((3, 7, 8)).astype(dtype)
    batched = _all_ops(x[np.newaxis])
    unbatched = _all_ops(x)
    for name, result in unbatched.items():
        assert result.shape == batched[name].shape[1:], name
    _assert_same(unbatched, {name: result[0] for name, result in batched.items()})


@pytest.mark.parametrize("dtype", DTYPES)
def test_thread_count_does_not_change_results(rng, num_threads, dtype):
    # More planes than threads, and a count that splits unevenly; big enough (over three times
    # the kernels' per-thread grain of 32768 elements) that every thread count is really used.
    x = make_input(rng, (3, 11, 45, 59), dtype, "special")
    num_threads(1)
    serial = _all_ops(x)
    num_threads(2)
    _assert_same(_all_ops(x), serial)
    num_threads(3)
    _assert_same(_all_ops(x), serial)


def test_concurrent_calls_from_python_threads(rng):
    inputs = [rng.standard_normal((2, 4, 12 + i, 10 + i)).astype(DTYPES[i % 2]) for i in range(8)]
    expected = [_all_ops(x) for x in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            for results, want in zip(pool.map(_all_ops, inputs), expected):
                _assert_same(results, want)


# Widths whose outputs fill the kernels' 16-lane blocks exactly, leave one lane over or one short,
# with planes just tall enough that the last block's reads run up to the end of the plane.
BLOCK_WIDTHS = [5, 30, 32, 34, 62, 64, 66]
# (kernel_size, stride, padding, dilation, ceil_mode): the 2x2 stride-2 kernel, the literal
# phase-plane sweeps, and the generic one (strides 3, dilation, non-square).
BLOCK_MAX_GEOMETRIES = [
    (2, 2, 0, 1, False),
    (2, 2, 0, 1, True),
    (2, 2, 1, 1, False),
    (3, 2, 1, 1, False),
    (3, 2, 1, 1, True),
    (3, 1, 1, 1, False),
    (2, 1, 0, 1, False),
    (3, 3, 1, 1, True),
    ((3, 2), (2, 3), (1, 1), (2, 1), True),
    ((2, 5), (3, 4), (1, 2), (1, 2), False),
]


@pytest.mark.parametrize("kind", ["normal", "special"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", BLOCK_WIDTHS)
@pytest.mark.parametrize("kernel_size, stride, padding, dilation, ceil_mode", BLOCK_MAX_GEOMETRIES)
def test_max_pool2d_across_block_boundaries(rng, width, kernel_size, stride, padding, dilation, ceil_mode,
                                            dtype, kind):
    x = make_input(rng, (2, 2, 7, width + 1 if ceil_mode else width), dtype, kind)
    y, indices = F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)
    ref_y, ref_indices = R.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_array_equal(F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode), y)


def test_max_pool2d_windows_of_minus_infinity_report_their_first_tap_inside(torch):
    # All -inf, and -inf beside padding: no tap beats the start, so the first tap inside the input wins.
    x = np.full((1, 1, 5, 35), -np.inf, dtype=np.float32)
    x[0, 0, 2, 3:30:4] = 1
    for args in [(2, 2, 0), (3, 2, 1), (3, 1, 1), ((3, 2), (1, 3), (1, 1))]:
        y, indices = F.max_pool2d(x, *args, return_indices=True)
        torch_y, torch_indices = torch_max_pool(torch, x, *args, 1, False)
        np.testing.assert_array_equal(y, torch_y)
        np.testing.assert_array_equal(indices, torch_indices)


# (kernel_size, stride, padding, ceil_mode). Kernel width == stride width: the tiled backward, with
# window rows that overlap (kernel_h > stride_h), leave gaps (kernel_h < stride_h) or tile; then
# the general one: columns that overlap (literal and generic phases) or leave gaps.
AVG_BACKWARD_GEOMETRIES = [
    (2, 2, 0, False),
    (2, 2, 1, True),
    (3, 3, 1, False),
    (3, 3, 1, True),
    ((3, 2), 2, (1, 1), False),
    ((1, 2), (3, 2), (0, 1), True),
    ((4, 4), (1, 4), (2, 2), False),
    ((2, 5), (2, 5), (1, 2), True),
    (3, 2, 1, False),
    (3, 2, 1, True),
    (3, 1, 1, False),
    ((2, 3), (1, 1), (1, 1), True),
    ((3, 5), (2, 3), (1, 2), True),
    ((2, 1), (1, 3), (1, 0), False),
    (4, (3, 2), 2, True),
]


@pytest.mark.parametrize("count_include_pad, divisor_override", AVG_COUNTING)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", BLOCK_WIDTHS)
@pytest.mark.parametrize("kernel_size, stride, padding, ceil_mode", AVG_BACKWARD_GEOMETRIES)
def test_avg_pool2d_backward_bit_for_bit(rng, torch, width, kernel_size, stride, padding, ceil_mode, dtype,
                                           count_include_pad, divisor_override):
    shape = (2, 2, 7, width + 1)
    args = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    out_shape = F.avg_pool2d(np.zeros(shape, dtype), *args).shape
    grad_out = rng.standard_normal(out_shape).astype(dtype)
    grad_x = F.avg_pool2d_backward(grad_out, shape, *args)
    assert_close(grad_x, R.avg_pool2d_backward(grad_out, shape, *args))
    # Each element adds its windows' shares onto zero in output order, as PyTorch does: same bits.
    x = np.zeros(shape, dtype)
    expected = torch_grad(torch, lambda t: torch.nn.functional.avg_pool2d(t, *args), x, grad_out)
    np.testing.assert_array_equal(grad_x, expected)


# (input shape, output shape): 2x2 blocks that fill the plane, leave a column or a row over, or
# leave more; and one where they do not fit (output wider than half the input).
BLOCK_BACKWARD_SHAPES = [
    ((2, 3, 8, 10), (4, 5)),
    ((2, 3, 9, 11), (4, 5)),
    ((1, 2, 7, 40), (2, 16)),
    ((1, 1, 2, 2), (1, 1)),
    ((1, 2, 6, 5), (3, 3)),
]


def _block_indices(rng, input_shape, out_shape):
    """An index inside 2x2 block (oh, ow) for every output, as a 2x2 stride-2 max pool records."""
    n, c, _, width = input_shape
    oh, ow = np.meshgrid(np.arange(out_shape[0]), np.arange(out_shape[1]), indexing="ij")
    rows = 2 * oh + rng.integers(0, 2, size=(n, c) + out_shape)
    cols = 2 * ow + rng.integers(0, 2, size=(n, c) + out_shape)
    return np.minimum(rows, input_shape[2] - 1) * width + np.minimum(cols, width - 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("input_shape, out_shape", BLOCK_BACKWARD_SHAPES)
def test_max_pool2d_backward_block_and_scatter_paths(rng, input_shape, out_shape, dtype):
    indices = _block_indices(rng, input_shape, out_shape).astype(np.int64)
    grad_out = rng.standard_normal(input_shape[:2] + out_shape).astype(dtype)
    grad_out[0, 0, 0, 0] = -0.0
    # Non-finite gradients go to their element and nowhere else (the one-pass write selects by bit mask).
    grad_out[-1, 0, 0, -1], grad_out[0, -1, -1, 0], grad_out[-1, -1, -1, -1] = np.nan, np.inf, -np.inf
    expected = R.max_pool2d_backward(grad_out, indices, input_shape)
    grad_x = F.max_pool2d_backward(grad_out, indices, input_shape)
    np.testing.assert_array_equal(grad_x, expected)
    # The scatter onto zeros turns -0.0 into +0.0; so does the one-pass write.
    assert not np.signbit(grad_x).any() or np.signbit(expected).any()
    np.testing.assert_array_equal(np.signbit(grad_x), np.signbit(expected))

    # One plane's index leaves its block (to a valid element elsewhere, shared with another
    # output): that plane takes the scatter, the others keep the one-pass write.
    strayed = indices.copy()
    strayed[-1, -1, 0, 0] = strayed[-1, -1, -1, -1]
    np.testing.assert_array_equal(F.max_pool2d_backward(grad_out, strayed, input_shape),
                                  R.max_pool2d_backward(grad_out, strayed, input_shape))
    # Offsets that look like a block's (width, width + 1) from the wrong corner, and negative ones.
    for shift in (-1, 2, input_shape[3] - 1, 2 * input_shape[3]):
        moved = indices.copy()
        moved[0, 0, -1, -1] = min(max(moved[0, 0, -1, -1] + shift, 0), input_shape[2] * input_shape[3] - 1)
        np.testing.assert_array_equal(F.max_pool2d_backward(grad_out, moved, input_shape),
                                      R.max_pool2d_backward(grad_out, moved, input_shape))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "kernel_size, stride, padding, dilation, ceil_mode",
    [(3, 2, 1, 1, False), (3, 1, 1, 1, True), (2, 1, 0, 1, False), ((2, 5), (3, 4), (1, 2), (1, 2), True)],
)
def test_max_pool2d_planes_in_several_bands(rng, kernel_size, stride, padding, dilation, ceil_mode, dtype):
    # Wide and tall enough that the max forward splits the plane in bands of output rows.
    x = make_input(rng, (1, 2, 131, 300), dtype, "special")
    y, indices = F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)
    ref_y, ref_indices = R.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(indices, ref_indices)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape, kernel_size, stride, padding, ceil_mode",
    [((1, 2, 3, 1), 3, 3, 1, True), ((1, 2, 2, 1), (1, 3), (1, 3), (0, 1), True),
     ((1, 1, 4, 2), (2, 3), (2, 4), (1, 1), True), ((1, 1, 1, 1), 2, 3, 1, True),
     ((1, 2, 3, 1), (2, 1), (1, 2), 0, False), ((1, 1, 3, 3), 1, 4, 0, True), ((2, 1, 2, 2), (1, 2), 3, 0, True)],
)
def test_avg_pool2d_backward_rows_narrower_than_a_stride(rng, torch, shape, kernel_size, stride, padding, ceil_mode,
                                                         dtype):
    # Rows shorter than the stride leave the gather no interior columns (found by the thorough fuzz).
    args = (kernel_size, stride, padding, ceil_mode)
    out_shape = F.avg_pool2d(np.zeros(shape, dtype), *args).shape
    grad_out = rng.standard_normal(out_shape).astype(dtype)
    grad_x = F.avg_pool2d_backward(grad_out, shape, *args)
    assert_close(grad_x, R.avg_pool2d_backward(grad_out, shape, *args))
    expected = torch_grad(torch, lambda t: torch.nn.functional.avg_pool2d(t, *args), np.zeros(shape, dtype), grad_out)
    np.testing.assert_array_equal(grad_x, expected)
