"""3-D pooling padding beyond PyTorch's, as the 2-D ops take it: per side, 'valid', 'same' and
'same_lower' at any stride, up to dilation * (kernel_size - 1) per side (ONNX's limit), for max,
average and Lp pooling, their backward passes and layers. Against the NumPy reference
(``convx.reference.pooling3d``, written from the formulas), against PyTorch on an explicitly padded
input (-inf or zeros) where it cannot express the case itself, by central differences in float64,
and the refusals (each naming the argument, before any compiled code runs)."""

from __future__ import annotations

import numpy as np
import pytest

import convx.functional as F
from conftest import DTYPES, assert_close
from convx import _threads, nn
from convx.reference import pooling3d as ref

pytestmark = pytest.mark.usefixtures("torch_on_one_thread")


@pytest.fixture
def num_threads():
    before = _threads.get_num_threads()
    yield _threads.set_num_threads
    _threads.set_num_threads(before)


def distinct(rng, shape, dtype):
    """Values without ties, so that every maximum is unambiguous."""
    return (rng.permutation(int(np.prod(shape))).reshape(shape) * 0.37 - 5.0).astype(dtype)


def ref_same_sides(size, kernel, stride, dilation, lower=False):
    """'same': ceil(size / stride) outputs, the padding they need split with any extra after
    (SAME_UPPER) or before (SAME_LOWER)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return (total - total // 2, total // 2) if lower else (total // 2, total - total // 2)


# kernel, stride, ((front, back), (top, bottom), (left, right)), dilation, ceil_mode
GEOMETRIES = [
    ((3, 3, 3), (1, 1, 1), ((2, 2), (2, 2), (2, 2)), (1, 1, 1), False),  # ONNX's pads 2 on a 3x3x3 window
    ((3, 3, 2), (2, 2, 1), ((0, 2), (1, 0), (1, 1)), (1, 1, 1), False),
    ((2, 3, 2), (2, 1, 2), ((1, 0), (2, 0), (0, 1)), (1, 1, 1), True),
    ((2, 2, 3), (3, 2, 2), ((1, 1), (1, 1), (0, 2)), (2, 1, 1), False),
    ((3, 2, 3), (2, 3, 2), ((4, 1), (0, 1), (3, 0)), (2, 1, 2), True),
    ((4, 1, 2), (1, 2, 1), ((3, 0), (0, 0), (0, 1)), (1, 1, 1), True),
]
SHAPES = [(2, 3, 5, 6, 7), (1, 2, 4, 5, 4), (0, 2, 5, 5, 5), (3, 4, 5, 6)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kernel, stride, sides, dilation, ceil_mode", GEOMETRIES)
def test_max_pool3d_per_side_against_reference(rng, dtype, shape, kernel, stride, sides, dilation, ceil_mode):
    x = distinct(rng, shape, dtype)
    y, indices = F.max_pool3d(x, kernel, stride, sides, dilation, ceil_mode, return_indices=True)
    expected, expected_indices = ref.max_pool3d(x, kernel, stride, sides, dilation, ceil_mode, return_indices=True)
    assert y.shape == expected.shape and y.dtype == dtype
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(indices, expected_indices)
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    assert_close(F.max_pool3d_backward(grad_out, indices, x.shape),
                 ref.max_pool3d_backward(grad_out, expected_indices, x.shape), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("kernel, stride, sides, dilation, ceil_mode", GEOMETRIES)
def test_avg_pool3d_per_side_against_reference(rng, dtype, shape, count_include_pad, kernel, stride, sides,
                                               dilation, ceil_mode):
    x = rng.standard_normal(shape).astype(dtype)
    args = (kernel, stride, sides, ceil_mode, count_include_pad, None, dilation)
    y = F.avg_pool3d(x, *args)
    expected = ref.avg_pool3d(x, *args)
    assert y.shape == expected.shape and y.dtype == dtype
    assert_close(y, expected, dtype)
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    assert_close(F.avg_pool3d_backward(grad_out, x.shape, *args), ref.avg_pool3d_backward(grad_out, x.shape, *args),
                 dtype)


def _torch_padded(torch, x, sides, value):
    (front, back), (top, bottom), (left, right) = sides
    return torch.nn.functional.pad(torch.from_numpy(x), (left, right, top, bottom, front, back), value=value)


def _cropped(array, x, sides):
    (front, _), (top, _), (left, _) = sides
    depth, height, width = x.shape[-3:]
    return array[..., front:front + depth, top:top + height, left:left + width]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, sides, dilation, ceil_mode", GEOMETRIES)
def test_max_pool3d_against_torch_on_a_padded_input(rng, torch, dtype, kernel, stride, sides, dilation, ceil_mode):
    x = distinct(rng, (2, 2, 5, 6, 7), dtype)
    y, indices = F.max_pool3d(x, kernel, stride, sides, dilation, ceil_mode, return_indices=True)
    padded = _torch_padded(torch, x, sides, -np.inf).requires_grad_()
    expected, expected_indices = torch.nn.functional.max_pool3d(padded, kernel, stride, 0, dilation, ceil_mode,
                                                                return_indices=True)
    # PyTorch keeps a ceil_mode window starting in padding that is real data to it: one more at most.
    od, oh, ow = y.shape[-3:]
    np.testing.assert_array_equal(y, expected.detach().numpy()[..., :od, :oh, :ow])
    _, padded_h, padded_w = padded.shape[-3:]
    flat = expected_indices.numpy()[..., :od, :oh, :ow]
    d, rest = np.divmod(flat, padded_h * padded_w)
    h, w = np.divmod(rest, padded_w)
    (front, _), (top, _), (left, _) = sides
    np.testing.assert_array_equal(indices, ((d - front) * x.shape[-2] + (h - top)) * x.shape[-1] + (w - left))
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    full = np.zeros(expected.shape, dtype)
    full[..., :od, :oh, :ow] = grad_out
    expected.backward(torch.from_numpy(full))
    assert_close(F.max_pool3d_backward(grad_out, indices, x.shape), _cropped(padded.grad.numpy(), x, sides), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("kernel, stride, sides, dilation, ceil_mode", [g for g in GEOMETRIES if g[3] == (1, 1, 1)])
def test_avg_pool3d_against_torch_on_a_padded_input(rng, torch, dtype, count_include_pad, kernel, stride, sides,
                                                    dilation, ceil_mode):
    """Zeros padded explicitly are data to PyTorch: its average is ours with count_include_pad; without
    it, ours is PyTorch's window mean over PyTorch's window mean of a mask of the input."""
    x = rng.standard_normal((2, 3, 5, 6, 7)).astype(dtype)
    y = F.avg_pool3d(x, kernel, stride, sides, ceil_mode, count_include_pad)
    od, oh, ow = y.shape[-3:]
    padded = _torch_padded(torch, x, sides, 0.0).requires_grad_()
    mean = torch.nn.functional.avg_pool3d(padded, kernel, stride, 0, ceil_mode)[..., :od, :oh, :ow]
    if count_include_pad:
        expected = mean
    else:
        mask = _torch_padded(torch, np.ones((1, 1, *x.shape[2:]), dtype), sides, 0.0)
        expected = mean / torch.nn.functional.avg_pool3d(mask, kernel, stride, 0, ceil_mode)[..., :od, :oh, :ow]
    assert_close(y, expected.detach().numpy(), dtype)
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    expected.backward(torch.from_numpy(grad_out))
    grad_x = F.avg_pool3d_backward(grad_out, x.shape, kernel, stride, sides, ceil_mode, count_include_pad)
    assert_close(grad_x, _cropped(padded.grad.numpy(), x, sides), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("padding", [1, (0, 1, 1), ((1, 1), (0, 0), (1, 1))])
def test_symmetric_padding_still_matches_torch(rng, torch, dtype, ceil_mode, padding):
    x = rng.standard_normal((2, 2, 5, 6, 7)).astype(dtype)
    torch_padding = padding if not isinstance(padding[0] if isinstance(padding, tuple) else 0, tuple) else (1, 0, 1)
    y, indices = F.max_pool3d(x, 3, 2, padding, ceil_mode=ceil_mode, return_indices=True)
    y_t, indices_t = torch.nn.functional.max_pool3d(torch.from_numpy(x), 3, 2, torch_padding, ceil_mode=ceil_mode,
                                                    return_indices=True)
    np.testing.assert_array_equal(y, y_t.numpy())
    np.testing.assert_array_equal(indices, indices_t.numpy())
    assert_close(F.avg_pool3d(x, 3, 2, padding, ceil_mode),
                 torch.nn.functional.avg_pool3d(torch.from_numpy(x), 3, 2, torch_padding, ceil_mode).numpy(), dtype)


@pytest.mark.parametrize("word", ["same", "same_lower", "valid"])
@pytest.mark.parametrize("kernel, stride, dilation", [(3, 1, 1), (3, 2, 1), (2, 2, 1), ((4, 3, 2), (3, 2, 1), 1),
                                                      (3, 2, (2, 1, 2)), (1, 3, 1)])
@pytest.mark.parametrize("size", [(5, 7, 6), (1, 4, 2), (6, 6, 6)])
def test_padding_words(rng, word, kernel, stride, dilation, size):
    x = rng.standard_normal((2, 2, *size))
    kernel3, stride3, dilation3 = (np.broadcast_to(v, 3).tolist() for v in (kernel, stride, dilation))
    if word == "valid":
        sides = ((0, 0),) * 3
    else:
        sides = tuple(ref_same_sides(n, k, s, d, lower=word == "same_lower")
                      for n, k, s, d in zip(size, kernel3, stride3, dilation3))
    if any(n + before + after < d * (k - 1) + 1 for n, (before, after), k, d in zip(size, sides, kernel3, dilation3)):
        with pytest.raises(ValueError, match="the pooling output of x would be"):
            F.max_pool3d(x, kernel, stride, word, dilation)
        return
    y, indices = F.max_pool3d(x, kernel, stride, word, dilation, return_indices=True)
    y_sides, indices_sides = F.max_pool3d(x, kernel, stride, sides, dilation, return_indices=True)
    np.testing.assert_array_equal(y, y_sides)
    np.testing.assert_array_equal(indices, indices_sides)
    if word != "valid":
        assert y.shape[-3:] == tuple(-(-n // s) for n, s in zip(size, stride3))
    for count_include_pad in (True, False):
        np.testing.assert_array_equal(F.avg_pool3d(x, kernel, stride, word, False, count_include_pad, None, dilation),
                                      F.avg_pool3d(x, kernel, stride, sides, False, count_include_pad, None, dilation))
    np.testing.assert_array_equal(F.lp_pool3d(np.abs(x), 2, kernel, stride, padding=word, dilation=dilation),
                                  F.lp_pool3d(np.abs(x), 2, kernel, stride, padding=sides, dilation=dilation))


def _central_differences(f, x, grad_out, step=1e-6):
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += step
        minus[index] -= step
        grad[index] = np.vdot(f(plus) - f(minus), grad_out) / (2 * step)
    return grad


@pytest.mark.parametrize("layout", ["NCDHW", "NDHWC"])
@pytest.mark.parametrize("kernel, stride, sides, dilation, ceil_mode", GEOMETRIES[1:5])
def test_gradients_by_central_differences(rng, layout, kernel, stride, sides, dilation, ceil_mode):
    x = distinct(rng, (1, 2, 4, 5, 4), np.float64)
    if layout == "NDHWC":
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    y, indices = F.max_pool3d(x, kernel, stride, sides, dilation, ceil_mode, return_indices=True, layout=layout)
    grad_out = rng.standard_normal(y.shape)
    numeric = _central_differences(
        lambda v: F.max_pool3d(v, kernel, stride, sides, dilation, ceil_mode, layout=layout), x, grad_out)
    np.testing.assert_allclose(F.max_pool3d_backward(grad_out, indices, x.shape, layout=layout), numeric, rtol=1e-6,
                               atol=1e-8)
    for count_include_pad in (True, False):
        def avg(v):
            return F.avg_pool3d(v, kernel, stride, sides, ceil_mode, count_include_pad, dilation=dilation, layout=layout)
        numeric = _central_differences(avg, x, grad_out)
        grad_x = F.avg_pool3d_backward(grad_out, x.shape, kernel, stride, sides, ceil_mode, count_include_pad,
                                       dilation=dilation, layout=layout)
        np.testing.assert_allclose(grad_x, numeric, rtol=1e-6, atol=1e-8)
    positive = np.abs(x) + 0.5

    def lp(v):
        return F.lp_pool3d(v, 3, kernel, stride, ceil_mode, padding=sides, dilation=dilation, layout=layout)
    grad_out = rng.standard_normal(lp(positive).shape)
    numeric = _central_differences(lp, positive, grad_out)
    grad_x = F.lp_pool3d_backward(grad_out, positive, 3, kernel, stride, ceil_mode, padding=sides, dilation=dilation,
                                  layout=layout)
    np.testing.assert_allclose(grad_x, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lp_pool3d_per_side_is_the_power_average(rng, dtype):
    x = np.abs(rng.standard_normal((2, 3, 5, 6, 4))).astype(dtype)
    sides = ((1, 0), (0, 2), (1, 1))
    y = F.lp_pool3d(x, 2, (2, 3, 2), (1, 2, 2), padding=sides)
    expected = np.sqrt(12 * ref.avg_pool3d(x.astype(np.float64) ** 2, (2, 3, 2), (1, 2, 2), sides))
    assert_close(y, expected.astype(dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_infinities_with_per_side_padding(dtype):
    x = np.zeros((1, 2, 3, 4, 4), dtype)
    x[0, 0, 0, 0, 0] = np.nan
    x[0, 1, 2, 3, 3] = np.inf
    x[0, 1, 0, 0, 0] = -np.inf
    sides = ((2, 0), (0, 2), (1, 2))
    y, indices = F.max_pool3d(x, 3, 2, sides, return_indices=True)
    expected, expected_indices = ref.max_pool3d(x, 3, 2, sides, return_indices=True)
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(indices, expected_indices)
    for count_include_pad in (True, False):
        np.testing.assert_array_equal(F.avg_pool3d(x, 3, 2, sides, count_include_pad=count_include_pad),
                                      ref.avg_pool3d(x, 3, 2, sides, count_include_pad=count_include_pad))


def test_layers_take_the_new_padding(rng):
    x = rng.standard_normal((2, 2, 5, 6, 7))
    sides = ((1, 0), (2, 1), (0, 2))
    pool = nn.MaxPool3d(3, 2, sides, return_indices=True)
    assert pool.padding == sides and "padding=((1, 0), (2, 1), (0, 2))" in repr(pool)
    y, indices = pool(x)
    np.testing.assert_array_equal(y, F.max_pool3d(x, 3, 2, sides))
    grad_out = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(pool.backward(grad_out), F.max_pool3d_backward(grad_out, indices, x.shape))
    assert nn.MaxPool3d(3, padding=(1, 1, 1)).padding == 1
    assert nn.MaxPool3d(3, padding="same").padding == "same"

    avg = nn.AvgPool3d(3, 2, "same_lower", count_include_pad=False, dilation=(1, 2, 1))
    y = avg(x)
    np.testing.assert_array_equal(y, F.avg_pool3d(x, 3, 2, "same_lower", False, False, dilation=(1, 2, 1)))
    np.testing.assert_array_equal(avg.backward(grad_out := rng.standard_normal(y.shape)),
                                  F.avg_pool3d_backward(grad_out, x.shape, 3, 2, "same_lower", False, False,
                                                        dilation=(1, 2, 1)))
    assert "padding='same_lower'" in repr(avg) and "dilation=(1, 2, 1)" in repr(avg)

    lp = nn.LPPool3d(2, 2, 2, padding=((1, 0), (0, 1), (1, 1)))
    positive = np.abs(x)
    y = lp(positive)
    np.testing.assert_array_equal(y, F.lp_pool3d(positive, 2, 2, 2, padding=((1, 0), (0, 1), (1, 1))))
    assert lp.backward(np.ones_like(y)).shape == x.shape
    assert "padding=((1, 0), (0, 1), (1, 1))" in repr(lp)


@pytest.mark.parametrize("padding, error, match", [
    ((1, 2, 3, 4, 5, 6), ValueError, "ambiguous"),
    ((1, 2), ValueError, "padding must be an int, \\(pD, pH, pW\\)"),
    ("full", ValueError, "padding must be an int, \\(pD, pH, pW\\), .*, got 'full'"),
    (((1, 0), (0, 1)), ValueError, "padding must be an int"),
    (((1, 0), (0, 1), (1,)), ValueError, "padding must be an int"),
    (((1, -1), (0, 0), (0, 0)), ValueError, "padding\\[0\\]\\[1\\] must be at least 0, got -1"),
    (((1.5, 0), (0, 0), (0, 0)), TypeError, "padding\\[0\\]\\[0\\] must be an int"),
    (((3, 0), (0, 0), (0, 0)), ValueError,
     "padding on each side must be at most dilation \\* \\(kernel_size - 1\\) = \\(2, 2, 2\\)"),
])
@pytest.mark.parametrize("op", ["max", "avg", "lp", "max_layer", "avg_layer"])
def test_bad_padding_refused(padding, error, match, op):
    x = np.ones((1, 1, 5, 5, 5))
    call = {
        "max": lambda: F.max_pool3d(x, 3, padding=padding),
        "avg": lambda: F.avg_pool3d(x, 3, padding=padding),
        "lp": lambda: F.lp_pool3d(x, 2, 3, padding=padding),
        "max_layer": lambda: nn.MaxPool3d(3, padding=padding),
        "avg_layer": lambda: nn.AvgPool3d(3, padding=padding),
    }[op]
    with pytest.raises(error, match=match):
        call()


def test_limits_follow_dilation_and_other_refusals():
    x = np.ones((1, 1, 6, 6, 6))
    # dilation 2 on depth: each depth side may take 2 * (3 - 1) = 4.
    assert F.max_pool3d(x, 3, 1, ((4, 4), (0, 0), (0, 0)), (2, 1, 1)).shape == (1, 1, 10, 4, 4)
    with pytest.raises(ValueError, match="= \\(4, 2, 2\\)"):
        F.max_pool3d(x, 3, 1, ((5, 0), (0, 0), (0, 0)), (2, 1, 1))
    with pytest.raises(ValueError, match="ceil_mode"):
        F.max_pool3d(x, 3, 2, "same", ceil_mode=True)
    with pytest.raises(ValueError, match="ceil_mode"):
        F.avg_pool3d_backward(np.ones((1, 1, 3, 3, 3)), x.shape, 3, 2, "same_lower", ceil_mode=True)
    assert F.max_pool3d(x, 3, 2, "valid", ceil_mode=True).shape == (1, 1, 3, 3, 3)
    # A window wholly in the padding (dilation stepping over a small input) is refused.
    with pytest.raises(ValueError, match="has every tap in the padding"):
        F.max_pool3d(np.ones((1, 1, 1, 2, 2)), (2, 1, 1), 1, ((2, 2), (0, 0), (0, 0)), (3, 1, 1))
    with pytest.raises(ValueError, match="grad_out must have the forward output shape \\(1, 1, 4, 3, 3\\)"):
        F.avg_pool3d_backward(np.ones((1, 1, 3, 3, 3)), x.shape, 3, 2, ((2, 2), (0, 1), (1, 0)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_threads_and_strided_read_only_views(rng, dtype, num_threads):
    base = rng.standard_normal((3, 4, 7, 8, 9)).astype(dtype)
    x = base[:, ::2, 1:, ::-1, 1::2]
    x.flags.writeable = False
    sides = ((2, 1), (0, 2), (1, 1))
    results = []
    for threads in (1, 2, 3):
        num_threads(threads)
        results.append((F.max_pool3d(x, 3, (2, 1, 2), sides, return_indices=True),
                        F.avg_pool3d(x, 3, (2, 1, 2), sides, count_include_pad=False)))
    for (y, indices), avg in results[1:]:
        np.testing.assert_array_equal(y, results[0][0][0])
        np.testing.assert_array_equal(indices, results[0][0][1])
        np.testing.assert_array_equal(avg, results[0][1])
    np.testing.assert_array_equal(results[0][0][0], ref.max_pool3d(np.array(x), 3, (2, 1, 2), sides))
