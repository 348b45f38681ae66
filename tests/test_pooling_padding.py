"""Pooling padding beyond PyTorch's: per side, 'valid', 'same' and 'same_lower' at any stride, up to
dilation * (kernel_size - 1) per side (ONNX's limit), and dilated average pooling (ONNX's AveragePool
dilations). Against a NumPy reference written here from the formulas, against PyTorch on an explicitly
padded input where it cannot express the case itself, by central differences, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest

import convx.functional as F
from conftest import DTYPES, assert_close
from convx import nn

# --- reference, from the definitions ---------------------------------------------------------------


def ref_out_size(size, kernel, stride, before, after, dilation, ceil_mode):
    """floor (or ceil) of (size + before + after - d(k - 1) - 1) / s, plus one; with ceil_mode a last
    window starting in the trailing padding is dropped (PyTorch's and ONNX's rule)."""
    numerator = size + before + after - dilation * (kernel - 1) - 1
    out = (-(-numerator // stride) if ceil_mode else numerator // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + before:
        out -= 1
    return out


def ref_same_sides(size, kernel, stride, dilation, lower=False):
    """'same': ceil(size / stride) outputs, the padding they need split with any extra after
    (SAME_UPPER) or before (SAME_LOWER)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return (total - total // 2, total // 2) if lower else (total // 2, total - total // 2)


def ref_pool(x, kind, kernel, stride, sides, dilation=(1, 1), ceil_mode=False, count_include_pad=True,
             divisor_override=None):
    """(y, indices) of max pooling (kind 'max') or y of average pooling ('avg') of an NCHW array: pad
    with -inf (max) or 0 (avg) as ``sides`` says and slide the dilated window. Indices are flat in the
    unpadded plane; the average divides by the taps inside the padded input (count_include_pad) or
    inside the input."""
    n, c, height, width = x.shape
    (top, bottom), (left, right) = sides
    out = [ref_out_size(s, k, st, b, a, d, ceil_mode)
           for s, k, st, (b, a), d in zip((height, width), kernel, stride, sides, dilation)]
    rows = np.arange(out[0])[:, None] * stride[0] + np.arange(kernel[0])[None, :] * dilation[0]
    cols = np.arange(out[1])[:, None] * stride[1] + np.arange(kernel[1])[None, :] * dilation[1]
    total_h = max(rows.max() + 1, top + height + bottom)
    total_w = max(cols.max() + 1, left + width + right)
    fill = -np.inf if kind == "max" else 0.0
    padded = np.full((n, c, total_h, total_w), fill, dtype=np.float64)
    padded[:, :, top:top + height, left:left + width] = x
    # windows[n, c, oh, ow, i, j]
    windows = padded[:, :, rows[:, None, :, None], cols[None, :, None, :]]
    if kind == "max":
        flat = windows.reshape(*windows.shape[:4], kernel[0] * kernel[1])
        best = flat.argmax(axis=-1)  # the first maximum in row-major window order
        i, j = np.divmod(best, kernel[1])
        in_row = rows[np.arange(out[0])[:, None], i] - top
        in_col = cols[np.arange(out[1])[None, :], j] - left
        return flat.max(axis=-1).astype(x.dtype), (in_row * width + in_col).astype(np.int64)
    total = windows.sum(axis=(-2, -1))
    if divisor_override is not None:
        return (total / divisor_override).astype(x.dtype)
    if count_include_pad:
        row_count = (rows < top + height + bottom).sum(axis=1)
        col_count = (cols < left + width + right).sum(axis=1)
    else:
        row_count = ((rows >= top) & (rows < top + height)).sum(axis=1)
        col_count = ((cols >= left) & (cols < left + width)).sum(axis=1)
    return (total / (row_count[:, None] * col_count[None, :])).astype(x.dtype)


def distinct(rng, shape, dtype):
    """Values without ties, so that every maximum is unambiguous."""
    return (rng.permutation(int(np.prod(shape))).reshape(shape) * 0.37 - 5.0).astype(dtype)


# kernel, stride, ((top, bottom), (left, right)), dilation, ceil_mode
GEOMETRIES = [
    ((3, 3), (1, 1), ((2, 2), (2, 2)), (1, 1), False),  # ONNX's pads 2 on a 3x3 window
    ((3, 3), (2, 2), ((0, 2), (1, 0)), (1, 1), False),
    ((3, 2), (2, 1), ((2, 0), (0, 1)), (1, 1), True),
    ((2, 3), (3, 2), ((1, 1), (2, 1)), (2, 1), False),
    ((3, 3), (2, 3), ((4, 1), (0, 3)), (2, 2), True),
    ((4, 1), (1, 2), ((3, 0), (0, 0)), (1, 1), True),
    ((5, 5), (3, 2), ((4, 3), (2, 4)), (1, 1), True),
]
SHAPES = [(2, 3, 7, 9), (1, 2, 6, 5), (0, 2, 5, 5)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kernel, stride, sides, dilation, ceil_mode", GEOMETRIES)
def test_max_pool2d_per_side_against_reference(rng, dtype, shape, kernel, stride, sides, dilation, ceil_mode):
    x = distinct(rng, shape, dtype)
    y, indices = F.max_pool2d(x, kernel, stride, sides, dilation, ceil_mode, return_indices=True)
    expected, expected_indices = ref_pool(x, "max", kernel, stride, sides, dilation, ceil_mode)
    assert y.shape == expected.shape and y.dtype == dtype
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(indices, expected_indices)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("kernel, stride, sides, dilation, ceil_mode", GEOMETRIES)
def test_avg_pool2d_per_side_and_dilated_against_reference(rng, dtype, shape, count_include_pad, kernel, stride,
                                                           sides, dilation, ceil_mode):
    x = rng.standard_normal(shape).astype(dtype)
    y = F.avg_pool2d(x, kernel, stride, sides, ceil_mode, count_include_pad, dilation=dilation)
    expected = ref_pool(x, "avg", kernel, stride, sides, dilation, ceil_mode, count_include_pad)
    assert y.shape == expected.shape and y.dtype == dtype
    assert_close(y, expected, dtype)


def _torch_padded(torch, x, sides, value):
    (top, bottom), (left, right) = sides
    return torch.nn.functional.pad(torch.from_numpy(x), (left, right, top, bottom), value=value)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, sides, dilation, ceil_mode", GEOMETRIES)
def test_max_pool2d_against_torch_on_a_padded_input(rng, torch, dtype, kernel, stride, sides, dilation, ceil_mode):
    x = distinct(rng, (2, 3, 7, 9), dtype)
    y, indices = F.max_pool2d(x, kernel, stride, sides, dilation, ceil_mode, return_indices=True)
    padded = _torch_padded(torch, x, sides, -np.inf).requires_grad_()
    expected, expected_indices = torch.nn.functional.max_pool2d(
        padded, kernel, stride, 0, dilation, ceil_mode, return_indices=True
    )
    # PyTorch keeps a ceil_mode window starting in padding that is real data to it: one more at most.
    oh, ow = y.shape[-2:]
    np.testing.assert_array_equal(y, expected.detach().numpy()[..., :oh, :ow])
    padded_w = padded.shape[-1]
    (top, _), (left, _) = sides
    row, col = np.divmod(expected_indices.numpy()[..., :oh, :ow], padded_w)
    np.testing.assert_array_equal(indices, (row - top) * x.shape[-1] + (col - left))
    # Backward: PyTorch's gradient of the padded input, cropped to the input.
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    full = np.zeros(expected.shape, dtype)
    full[..., :oh, :ow] = grad_out
    expected.backward(torch.from_numpy(full))
    (top, bottom), (left, right) = sides
    expected_grad = padded.grad.numpy()[..., top:top + x.shape[2], left:left + x.shape[3]]
    assert_close(F.max_pool2d_backward(grad_out, indices, x.shape), expected_grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("kernel, stride, sides, dilation, ceil_mode",
                         [g for g in GEOMETRIES if g[3] == (1, 1)])
def test_avg_pool2d_against_torch_on_a_padded_input(rng, torch, dtype, count_include_pad, kernel, stride, sides,
                                                    dilation, ceil_mode):
    """Zeros padded explicitly are data to PyTorch: its average is ours with count_include_pad; without
    it, ours is PyTorch's window sum over PyTorch's window sum of a mask of the input."""
    x = rng.standard_normal((2, 3, 7, 9)).astype(dtype)
    y = F.avg_pool2d(x, kernel, stride, sides, ceil_mode, count_include_pad)
    oh, ow = y.shape[-2:]
    padded = _torch_padded(torch, x, sides, 0.0).requires_grad_()
    mean = torch.nn.functional.avg_pool2d(padded, kernel, stride, 0, ceil_mode)
    if count_include_pad:
        expected = mean[..., :oh, :ow]
    else:
        mask = _torch_padded(torch, np.ones((1, 1, *x.shape[2:]), dtype), sides, 0.0)
        expected = mean[..., :oh, :ow] / torch.nn.functional.avg_pool2d(mask, kernel, stride, 0, ceil_mode)[..., :oh, :ow]
    assert_close(y, expected.detach().numpy(), dtype)
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    expected.backward(torch.from_numpy(grad_out))
    (top, _), (left, _) = sides
    expected_grad = padded.grad.numpy()[..., top:top + x.shape[2], left:left + x.shape[3]]
    grad_x = F.avg_pool2d_backward(grad_out, x.shape, kernel, stride, sides, ceil_mode, count_include_pad)
    assert_close(grad_x, expected_grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("padding", [(0, 1), 1, (1, 0)])
def test_symmetric_padding_still_matches_torch(rng, torch, dtype, ceil_mode, padding):
    x = rng.standard_normal((2, 3, 8, 7)).astype(dtype)
    t = torch.from_numpy(x)
    y, indices = F.max_pool2d(x, 3, 2, padding, 1, ceil_mode, return_indices=True)
    expected, expected_indices = torch.nn.functional.max_pool2d(t, 3, 2, padding, 1, ceil_mode, return_indices=True)
    np.testing.assert_array_equal(y, expected.numpy())
    np.testing.assert_array_equal(indices, expected_indices.numpy())
    for count_include_pad in (True, False):
        assert_close(F.avg_pool2d(x, 3, 2, padding, ceil_mode, count_include_pad),
                     torch.nn.functional.avg_pool2d(t, 3, 2, padding, ceil_mode, count_include_pad).numpy(), dtype)


@pytest.mark.parametrize("word", ["same", "same_lower", "valid"])
@pytest.mark.parametrize("kernel, stride, dilation", [(3, 1, 1), (3, 2, 1), (2, 2, 1), (4, 3, 1), (3, 2, 2), (1, 3, 1)])
@pytest.mark.parametrize("size", [(7, 9), (1, 4), (6, 6)])
def test_padding_words(rng, word, kernel, stride, dilation, size):
    x = distinct(rng, (2, 2, *size), np.float64)
    if word == "valid":
        sides = ((0, 0), (0, 0))
        if min(size) < dilation * (kernel - 1) + 1:
            with pytest.raises(ValueError, match="would be"):
                F.max_pool2d(x, kernel, stride, word, dilation)
            return
    else:
        sides = tuple(ref_same_sides(s, kernel, stride, dilation, word == "same_lower") for s in size)
    y, indices = F.max_pool2d(x, kernel, stride, word, dilation, return_indices=True)
    expected, expected_indices = ref_pool(x, "max", (kernel,) * 2, (stride,) * 2, sides, (dilation,) * 2)
    if word != "valid":
        assert y.shape[-2:] == tuple(-(-s // stride) for s in size)
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(indices, expected_indices)
    for count_include_pad in (True, False):
        y = F.avg_pool2d(x, kernel, stride, word, False, count_include_pad, dilation=dilation)
        expected = ref_pool(x, "avg", (kernel,) * 2, (stride,) * 2, sides, (dilation,) * 2, False, count_include_pad)
        assert_close(y, expected, np.float64)
        grad_out = rng.standard_normal(y.shape)
        # A linear map's adjoint: <avg(x), g> = <x, avg_backward(g)>.
        grad_x = F.avg_pool2d_backward(grad_out, x.shape, kernel, stride, word, False, count_include_pad,
                                       dilation=dilation)
        assert np.isclose(np.vdot(y, grad_out), np.vdot(x, grad_x), rtol=1e-12)


def _central_differences(f, x, grad_out, step=1e-6):
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += step
        minus[index] -= step
        grad[index] = np.vdot(f(plus) - f(minus), grad_out) / (2 * step)
    return grad


@pytest.mark.parametrize("kernel, stride, sides, dilation, ceil_mode", GEOMETRIES[1:5])
def test_gradients_by_central_differences(rng, kernel, stride, sides, dilation, ceil_mode):
    x = distinct(rng, (1, 2, 6, 7), np.float64)
    y, indices = F.max_pool2d(x, kernel, stride, sides, dilation, ceil_mode, return_indices=True)
    grad_out = rng.standard_normal(y.shape)
    numeric = _central_differences(lambda v: F.max_pool2d(v, kernel, stride, sides, dilation, ceil_mode), x, grad_out)
    np.testing.assert_allclose(F.max_pool2d_backward(grad_out, indices, x.shape), numeric, rtol=1e-6, atol=1e-8)
    for count_include_pad in (True, False):
        def avg(v):
            return F.avg_pool2d(v, kernel, stride, sides, ceil_mode, count_include_pad, dilation=dilation)
        numeric = _central_differences(avg, x, grad_out)
        grad_x = F.avg_pool2d_backward(grad_out, x.shape, kernel, stride, sides, ceil_mode, count_include_pad,
                                       dilation=dilation)
        np.testing.assert_allclose(grad_x, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dilated_avg_with_divisor_override(rng, dtype):
    x = rng.standard_normal((2, 3, 11, 10)).astype(dtype)
    sides = ((2, 1), (0, 4))
    y = F.avg_pool2d(x, 3, 2, sides, True, True, 5, dilation=(2, 3))
    assert_close(y, ref_pool(x, "avg", (3, 3), (2, 2), sides, (2, 3), True, divisor_override=5), dtype)
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    grad_x = F.avg_pool2d_backward(grad_out, x.shape, 3, 2, sides, True, True, 5, dilation=(2, 3))
    assert np.isclose(np.vdot(y.astype(np.float64), grad_out), np.vdot(x.astype(np.float64), grad_x),
                      rtol=1e-4 if dtype == np.float32 else 1e-12)


# --- 1-D ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding, sides", [(((2, 0),), (2, 0)), ("same", None), ("same_lower", None),
                                            ("valid", (0, 0)), (((0, 3),), (0, 3))])
@pytest.mark.parametrize("stride, dilation", [(1, 1), (2, 1), (3, 2)])
def test_1d_padding(rng, dtype, padding, sides, stride, dilation):
    x = distinct(rng, (2, 3, 11), dtype)
    if sides is None:
        sides = ref_same_sides(11, 4, stride, dilation, padding == "same_lower")
    plane = ((0, 0), sides)
    y, indices = F.max_pool1d(x, 4, stride, padding, dilation, return_indices=True)
    expected, expected_indices = ref_pool(x[:, :, None], "max", (1, 4), (1, stride), plane, (1, dilation))
    np.testing.assert_array_equal(y, expected[:, :, 0])
    np.testing.assert_array_equal(indices, expected_indices[:, :, 0])
    for count_include_pad in (True, False):
        y = F.avg_pool1d(x, 4, stride, padding, False, count_include_pad, dilation=dilation)
        expected = ref_pool(x[:, :, None], "avg", (1, 4), (1, stride), plane, (1, dilation), False, count_include_pad)
        assert_close(y, expected[:, :, 0], dtype)
        grad_out = rng.standard_normal(y.shape).astype(dtype)
        grad_x = F.avg_pool1d_backward(grad_out, x.shape, 4, stride, padding, False, count_include_pad,
                                       dilation=dilation)
        assert grad_x.shape == x.shape
        assert np.isclose(np.vdot(y.astype(np.float64), grad_out), np.vdot(x.astype(np.float64), grad_x),
                          rtol=1e-4 if dtype == np.float32 else 1e-12)


# --- layers ------------------------------------------------------------------------------------------


def test_layers_take_the_new_padding(rng):
    x = rng.standard_normal((2, 3, 7, 9))
    sides = ((0, 2), (1, 0))
    pool = nn.MaxPool2d(3, 2, sides)
    y = pool(x)
    np.testing.assert_array_equal(y, F.max_pool2d(x, 3, 2, sides))
    grad_out = rng.standard_normal(y.shape)
    _, indices = F.max_pool2d(x, 3, 2, sides, return_indices=True)
    np.testing.assert_array_equal(pool.backward(grad_out), F.max_pool2d_backward(grad_out, indices, x.shape))
    pool = nn.AvgPool2d(3, 2, "same", count_include_pad=False, dilation=2)
    y = pool(x)
    np.testing.assert_array_equal(y, F.avg_pool2d(x, 3, 2, "same", count_include_pad=False, dilation=2))
    np.testing.assert_array_equal(
        pool.backward(np.ones_like(y)),
        F.avg_pool2d_backward(np.ones_like(y), x.shape, 3, 2, "same", count_include_pad=False, dilation=2))
    assert "dilation=(2, 2)" in repr(pool) and "'same'" in repr(pool)
    assert nn.MaxPool2d(3, padding=1).padding == (1, 1)
    assert nn.MaxPool1d(3, padding=((2, 0),)).padding == ((2, 0),)
    assert nn.AvgPool1d(3, padding=1).padding == 1
    line = rng.standard_normal((2, 3, 10))
    layer = nn.AvgPool1d(3, 2, "same_lower", dilation=2)
    np.testing.assert_array_equal(layer(line), F.avg_pool1d(line, 3, 2, "same_lower", dilation=2))
    layer = nn.MaxPool1d(3, 2, ((2, 1),))
    np.testing.assert_array_equal(layer(line), F.max_pool1d(line, 3, 2, ((2, 1),)))
    with pytest.raises(ValueError, match="at most dilation"):
        nn.AvgPool2d(3, padding=3)
    with pytest.raises(ValueError, match="ceil_mode"):
        nn.MaxPool1d(3, padding="same", ceil_mode=True)


# --- refusals ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding, error, match", [
    (-1, ValueError, "padding"),
    (((0, -1), (0, 0)), ValueError, r"padding\[0\]"),
    (3, ValueError, r"at most dilation \* \(kernel_size - 1\) = \(2, 2\).*got padding=\(3, 3\)"),
    (((0, 3), (0, 0)), ValueError, r"at most dilation.*got padding=\(\(0, 3\), \(0, 0\)\)"),
    ((1, 0, 1, 0), ValueError, r"ambiguous.*\(\(top, bottom\), \(left, right\)\)"),
    ("SAME", ValueError, "'valid', 'same' or 'same_lower'"),
    ("full", ValueError, "'valid', 'same' or 'same_lower'"),
    (1.5, TypeError, "padding"),
])
@pytest.mark.parametrize("op", ["max", "avg"])
def test_bad_padding_refused(padding, error, match, op):
    x = np.zeros((1, 1, 6, 6))
    with pytest.raises(error, match=match):
        if op == "max":
            F.max_pool2d(x, 3, 1, padding)
        else:
            F.avg_pool2d(x, 3, 1, padding)


def test_limits_follow_dilation_and_other_refusals():
    x = np.zeros((1, 1, 9, 9))
    assert F.max_pool2d(x, 3, 1, 4, dilation=2).shape == (1, 1, 13, 13)
    with pytest.raises(ValueError, match=r"= \(4, 4\)"):
        F.max_pool2d(x, 3, 1, 5, dilation=2)
    with pytest.raises(ValueError, match=r"= \(0, 2\)"):
        F.avg_pool2d(x, (1, 3), 1, ((0, 0), (0, 3)))
    for word in ("same", "same_lower"):
        with pytest.raises(ValueError, match="ceil_mode=False"):
            F.max_pool2d(x, 3, 2, word, ceil_mode=True)
        with pytest.raises(ValueError, match="ceil_mode=False"):
            F.avg_pool1d(x[0], 3, 2, word, ceil_mode=True)
    assert F.max_pool2d(x, 3, 2, "valid", ceil_mode=True).shape == (1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"\(\(left, right\),\)"):
        F.max_pool1d(x[0], 3, 1, (1, 2))
    with pytest.raises(ValueError, match="at most dilation"):
        F.avg_pool1d(x[0], 3, 1, ((3, 0),))
    with pytest.raises(ValueError, match="dilation"):
        F.avg_pool2d(x, 3, dilation=0)
    # Taps that step over a short input: every one in the padding.
    with pytest.raises(ValueError, match="every tap in the padding"):
        F.avg_pool2d(np.zeros((1, 1, 1, 4)), (2, 1), 1, ((2, 1), (0, 0)), dilation=(3, 1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_and_two_threads_agree_on_strided_views(rng, dtype):
    import convx

    base = rng.standard_normal((3, 5, 19, 23)).astype(dtype)
    x = base[:, ::2, 1:, ::2]  # not contiguous
    calls = [
        lambda: F.max_pool2d(x, 3, 2, ((2, 0), (1, 2)), 2, True, return_indices=True),
        lambda: F.avg_pool2d(x, 3, (2, 1), "same_lower", False, False, dilation=(2, 3)),
        lambda: F.avg_pool2d_backward(np.ones((3, 3, 9, 12), dtype), x.shape, 3, (2, 1), "same_lower", False, False,
                                      dilation=(2, 3)),
        lambda: F.avg_pool2d(x, (3, 2), 2, ((1, 2), (0, 1)), True, True),
    ]
    before = convx.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            convx.set_num_threads(n)
            results.append([call() for call in calls])
    finally:
        convx.set_num_threads(before)
    for one, two in zip(*results):
        for a, b in zip(one if isinstance(one, tuple) else (one,), two if isinstance(two, tuple) else (two,)):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(results[0][1], F.avg_pool2d(np.ascontiguousarray(x), 3, (2, 1), "same_lower", False,
                                                               False, dilation=(2, 3)))


# --- random geometries, both max-pooling kernels ---------------------------------------------------


@pytest.mark.parametrize("separable", [False, True])
def test_random_geometries_against_reference(monkeypatch, separable):
    """Per-side padding up to the limit, strides, dilations, ceil_mode and odd planes drawn by
    Hypothesis (its 'ci' profile: a fixed set), through each max-pooling kernel (the choice forced),
    and average pooling; refusals must name the padding or the empty window."""
    pytest.importorskip("hypothesis")
    from hypothesis import given
    from hypothesis import strategies as st

    import convx.functional.pooling as pooling

    monkeypatch.setattr(pooling, "_max_pool_separable", lambda *args: separable)

    @st.composite
    def geometry(draw):
        kernel = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
        dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
        sides = tuple((draw(st.integers(0, d * (k - 1))), draw(st.integers(0, d * (k - 1))))
                      for k, d in zip(kernel, dilation))
        plane = (draw(st.integers(1, 13)), draw(st.integers(1, 13)))
        return kernel, stride, sides, dilation, draw(st.booleans()), plane, draw(st.integers(0, 2**32 - 1))

    @given(geometry())
    def check(args):
        kernel, stride, sides, dilation, ceil_mode, plane, seed = args
        rng = np.random.default_rng(seed)
        x = distinct(rng, (2, 2, *plane), np.float64)
        try:
            y, indices = F.max_pool2d(x, kernel, stride, sides, dilation, ceil_mode, return_indices=True)
        except ValueError as error:
            assert "would be" in str(error) or "every tap in the padding" in str(error)
            return
        expected, expected_indices = ref_pool(x, "max", kernel, stride, sides, dilation, ceil_mode)
        np.testing.assert_array_equal(y, expected)
        np.testing.assert_array_equal(indices, expected_indices)
        for count_include_pad in (True, False):
            y = F.avg_pool2d(x, kernel, stride, sides, ceil_mode, count_include_pad, dilation=dilation)
            expected = ref_pool(x, "avg", kernel, stride, sides, dilation, ceil_mode, count_include_pad)
            np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
            grad_out = rng.standard_normal(y.shape)
            grad_x = F.avg_pool2d_backward(grad_out, x.shape, kernel, stride, sides, ceil_mode, count_include_pad,
                                           dilation=dilation)
            assert np.isclose(np.vdot(y, grad_out), np.vdot(x, grad_x), rtol=1e-10, atol=1e-12)

    check()
