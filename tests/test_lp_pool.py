"""Power-average (Lp) pooling: lp_pool2d, lp_pool1d, their backward passes and nn.LPPool1d/2d, against a
NumPy reference written here from PyTorch's definition, against PyTorch, by central differences, and
the refusals."""

from __future__ import annotations

import numpy as np
import pytest

import convx
import convx.functional as F
from conftest import DTYPES, assert_close
from convx import nn


def ref_lp_pool2d(x, p, kernel, stride, ceil_mode):
    """PyTorch's definition: (kh * kw * mean(x ** p)) ** (1 / p) per window, the mean over the taps
    inside the input (a ceil_mode window hanging past the input is so scaled up to the full window)."""
    height, width = x.shape[-2:]
    out = []
    for size, k, s in zip((height, width), kernel, stride):
        count = (-(-(size - k) // s) if ceil_mode else (size - k) // s) + 1
        if ceil_mode and (count - 1) * s >= size:
            count -= 1
        out.append(count)
    y = np.empty((*x.shape[:-2], *out), np.float64)
    with np.errstate(invalid="ignore"):
        for oh in range(out[0]):
            for ow in range(out[1]):
                window = x[..., oh * stride[0]:oh * stride[0] + kernel[0], ow * stride[1]:ow * stride[1] + kernel[1]]
                powered = np.power(window.astype(np.float64), p)
                mean = powered.sum(axis=(-2, -1)) / (window.shape[-2] * window.shape[-1])
                y[..., oh, ow] = np.power(mean * kernel[0] * kernel[1], 1.0 / p)
    return y.astype(x.dtype)


CASES = [  # norm_type, kernel, stride, ceil_mode
    (2, (2, 2), (2, 2), False),
    (1, (3, 2), (2, 1), True),
    (3, (3, 3), (2, 2), True),
    (1.5, (2, 3), (3, 2), False),
    (2.5, (4, 1), (1, 3), True),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 7, 8), (3, 5, 5), (0, 2, 6, 6)])
@pytest.mark.parametrize("norm_type, kernel, stride, ceil_mode", CASES)
def test_lp_pool2d_against_reference_and_torch(rng, torch, dtype, shape, norm_type, kernel, stride, ceil_mode):
    # Positive inputs: a fractional power of a negative number is NaN (tested below).
    x = rng.uniform(0.1, 2.0, shape).astype(dtype)
    y = F.lp_pool2d(x, norm_type, kernel, stride, ceil_mode)
    assert y.dtype == dtype
    assert_close(y, ref_lp_pool2d(x, norm_type, kernel, stride, ceil_mode), dtype)
    expected = torch.nn.functional.lp_pool2d(torch.from_numpy(x), norm_type, kernel, stride, ceil_mode)
    assert_close(y, expected.numpy(), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_type, kernel, stride, ceil_mode", CASES)
def test_lp_pool2d_backward_against_torch(rng, torch, dtype, norm_type, kernel, stride, ceil_mode):
    x = rng.uniform(0.1, 2.0, (2, 3, 7, 8)).astype(dtype)
    y = F.lp_pool2d(x, norm_type, kernel, stride, ceil_mode)
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    t = torch.from_numpy(x).requires_grad_()
    torch.nn.functional.lp_pool2d(t, norm_type, kernel, stride, ceil_mode).backward(torch.from_numpy(grad_out))
    grad_x = F.lp_pool2d_backward(grad_out, x, norm_type, kernel, stride, ceil_mode)
    assert grad_x.dtype == dtype and grad_x.shape == x.shape
    assert_close(grad_x, t.grad.numpy(), dtype, tolerances={np.dtype(np.float32): dict(rtol=1e-3, atol=1e-4),
                                                            np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12)})


@pytest.mark.parametrize("norm_type, kernel, stride, ceil_mode", CASES)
def test_lp_pool2d_backward_by_central_differences(rng, norm_type, kernel, stride, ceil_mode):
    x = rng.uniform(0.2, 2.0, (1, 2, 6, 7))
    y = F.lp_pool2d(x, norm_type, kernel, stride, ceil_mode)
    grad_out = rng.standard_normal(y.shape)
    numeric = np.zeros_like(x)
    step = 1e-6
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += step
        minus[index] -= step
        numeric[index] = np.vdot(F.lp_pool2d(plus, norm_type, kernel, stride, ceil_mode)
                                 - F.lp_pool2d(minus, norm_type, kernel, stride, ceil_mode), grad_out) / (2 * step)
    np.testing.assert_allclose(F.lp_pool2d_backward(grad_out, x, norm_type, kernel, stride, ceil_mode), numeric,
                               rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_type, kernel, stride, ceil_mode", [(2, 3, 2, False), (1, 2, None, True), (3.5, 4, 3, True)])
def test_lp_pool1d_against_torch(rng, torch, dtype, norm_type, kernel, stride, ceil_mode):
    x = rng.uniform(0.1, 2.0, (2, 3, 11)).astype(dtype)
    y = F.lp_pool1d(x, norm_type, kernel, stride, ceil_mode)
    t = torch.from_numpy(x).requires_grad_()
    expected = torch.nn.functional.lp_pool1d(t, norm_type, kernel, stride, ceil_mode)
    assert_close(y, expected.detach().numpy(), dtype)
    assert_close(y, ref_lp_pool2d(x[:, :, None], norm_type, (1, kernel), (1, stride or kernel), ceil_mode)[:, :, 0],
                 dtype)
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    expected.backward(torch.from_numpy(grad_out))
    assert_close(F.lp_pool1d_backward(grad_out, x, norm_type, kernel, stride, ceil_mode), t.grad.numpy(), dtype,
                 tolerances={np.dtype(np.float32): dict(rtol=1e-3, atol=1e-4),
                             np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12)})
    assert F.lp_pool1d(x[0], norm_type, kernel, stride, ceil_mode).shape == y.shape[1:]


def test_negative_inputs_zero_windows_and_non_contiguous(rng, torch):
    x = np.array([[[[-1.0, 2.0], [0.0, 0.0]]]])
    # Odd power: a negative sum gives NaN, as PyTorch; a fractional one, NaN too.
    np.testing.assert_array_equal(F.lp_pool2d(np.array([[[[-2.0, 1.0]]]]), 3, (1, 2)), [[[[np.nan]]]])
    np.testing.assert_array_equal(F.lp_pool2d(x, 1.5, (1, 2)),
                                  torch.nn.functional.lp_pool2d(torch.from_numpy(x), 1.5, (1, 2)).numpy())
    # An all-zero window passes no gradient.
    grad = F.lp_pool2d_backward(np.ones((1, 1, 2, 1)), x, 2, (1, 2))
    np.testing.assert_array_equal(grad[0, 0, 1], [0.0, 0.0])
    big = rng.uniform(0.1, 1.0, (2, 3, 9, 10))
    view = big[:, :, ::2, 1::2]
    np.testing.assert_array_equal(F.lp_pool2d(view, 2, 2), F.lp_pool2d(np.ascontiguousarray(view), 2, 2))
    assert F.lp_pool2d is convx.lp_pool2d


def test_layers(rng):
    x = rng.uniform(0.1, 2.0, (2, 3, 7, 8))
    layer = nn.LPPool2d(2, 3, 2, ceil_mode=True)
    y = layer(x)
    np.testing.assert_array_equal(y, F.lp_pool2d(x, 2, 3, 2, True))
    grad_out = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(layer.backward(grad_out), F.lp_pool2d_backward(grad_out, x, 2, 3, 2, True))
    assert repr(layer) == "LPPool2d(norm_type=2.0, kernel_size=(3, 3), stride=(2, 2), ceil_mode=True)"
    line = rng.uniform(0.1, 2.0, (2, 3, 9))
    layer = nn.LPPool1d(1.5, 2)
    y = layer(line)
    np.testing.assert_array_equal(y, F.lp_pool1d(line, 1.5, 2))
    np.testing.assert_array_equal(layer.backward(np.ones_like(y)), F.lp_pool1d_backward(np.ones_like(y), line, 1.5, 2))
    with pytest.raises(ValueError, match="norm_type must be a positive finite number, got 0"):
        nn.LPPool2d(0, 2)


@pytest.mark.parametrize("call, error, match", [
    (lambda x: F.lp_pool2d(x, 0, 2), ValueError, "norm_type must be a positive finite number, got 0"),
    (lambda x: F.lp_pool2d(x, -2, 2), ValueError, "positive finite number, got -2"),
    (lambda x: F.lp_pool2d(x, float("inf"), 2), ValueError, "positive finite number, got inf"),
    (lambda x: F.lp_pool2d(x, float("nan"), 2), ValueError, "positive finite number, got nan"),
    (lambda x: F.lp_pool2d(x, "2", 2), TypeError, "norm_type must be a real number, got '2'"),
    (lambda x: F.lp_pool2d(x, True, 2), TypeError, "norm_type must be a real number, got True"),
    (lambda x: F.lp_pool2d(x, 2, 0), ValueError, "kernel_size"),
    (lambda x: F.lp_pool2d(x, 2, 2, ceil_mode=1), TypeError, "ceil_mode must be a bool"),
    (lambda x: F.lp_pool2d(x, 2, 7), ValueError, "would be"),
    (lambda x: F.lp_pool2d(x.astype(np.int64), 2, 2), TypeError, "float32 or float64"),
    (lambda x: F.lp_pool2d_backward(np.ones((1, 1, 2, 2)), x, 2, 2), ValueError,
     r"grad_out must have the forward output shape \(1, 1, 3, 3\)"),
    (lambda x: F.lp_pool2d_backward(np.ones((1, 1, 3, 3), np.float32), x, 2, 2), TypeError,
     "x must have the dtype of grad_out"),
    (lambda x: F.lp_pool1d(x, 2, 2), ValueError, r"lp_pool1d expects x of shape \(N, C, L\) or \(C, L\)"),
    (lambda x: F.lp_pool1d(x[0, 0], 2, (1, 2)), ValueError, "kernel_size"),
])
def test_refusals(call, error, match):
    with pytest.raises(error, match=match):
        call(np.ones((1, 1, 6, 6)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_type, kernel, stride, sides, dilation", [
    (2, (3, 3), (2, 2), ((2, 0), (1, 2)), (1, 1)),
    (3, (2, 3), (1, 2), ((1, 1), (0, 4)), (2, 2)),
    (1.5, (3, 2), (3, 1), ((0, 2), (1, 0)), (1, 3)),
])
def test_lp_pool2d_padding_and_dilation_as_onnx(rng, dtype, norm_type, kernel, stride, sides, dilation):
    """ONNX's LpPool pads and dilates: the p-norm of each window's taps of the zero-padded input
    (an explicitly padded array, windows taken by their taps' indices)."""
    x = rng.uniform(0.1, 2.0, (2, 3, 7, 9)).astype(dtype)
    (top, bottom), (left, right) = sides
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    out = [(size - d * (k - 1) - 1) // s + 1 for size, k, s, d in zip(padded.shape[-2:], kernel, stride, dilation)]
    rows = np.arange(out[0])[:, None] * stride[0] + np.arange(kernel[0]) * dilation[0]
    cols = np.arange(out[1])[:, None] * stride[1] + np.arange(kernel[1]) * dilation[1]
    windows = padded[:, :, rows[:, None, :, None], cols[None, :, None, :]]
    expected = np.power(np.power(windows, norm_type).sum(axis=(-2, -1)), 1.0 / norm_type)
    y = F.lp_pool2d(x, norm_type, kernel, stride, padding=sides, dilation=dilation)
    assert_close(y, expected.astype(dtype), dtype)
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    grad_x = F.lp_pool2d_backward(grad_out, x, norm_type, kernel, stride, padding=sides, dilation=dilation)
    if dtype == np.float64:
        numeric = np.zeros_like(x)
        for index in np.ndindex(x.shape):
            plus, minus = x.copy(), x.copy()
            plus[index] += 1e-6
            minus[index] -= 1e-6
            numeric[index] = np.vdot(F.lp_pool2d(plus, norm_type, kernel, stride, padding=sides, dilation=dilation)
                                     - F.lp_pool2d(minus, norm_type, kernel, stride, padding=sides, dilation=dilation),
                                     grad_out) / 2e-6
        np.testing.assert_allclose(grad_x, numeric, rtol=1e-6, atol=1e-8)
    line = x[:, :, 0]
    y1 = F.lp_pool1d(line, norm_type, kernel[1], stride[1], padding=(sides[1],), dilation=dilation[1])
    assert_close(y1, F.lp_pool2d(line[:, :, None], norm_type, (1, kernel[1]), (1, stride[1]),
                                 padding=((0, 0), sides[1]), dilation=(1, dilation[1]))[:, :, 0], dtype)
    assert F.lp_pool1d(line, 2, 3, 2, padding="same").shape[-1] == 5
    with pytest.raises(ValueError, match="ceil_mode=False"):
        F.lp_pool1d(line, 2, 3, 2, True, padding="same")
    g1 = F.lp_pool1d_backward(np.ones_like(y1), line, norm_type, kernel[1], stride[1], padding=(sides[1],),
                              dilation=dilation[1])
    g2 = F.lp_pool2d_backward(np.ones_like(y1)[:, :, None], line[:, :, None], norm_type, (1, kernel[1]),
                              (1, stride[1]), padding=((0, 0), sides[1]), dilation=(1, dilation[1]))
    np.testing.assert_array_equal(g1, g2[:, :, 0])


# --- 3-D -------------------------------------------------------------------------------------------

CASES_3D = [  # norm_type, kernel, stride, ceil_mode
    (2, 2, None, False),
    (3, (2, 3, 2), (1, 2, 1), True),
    (1.5, 3, 2, True),
    (1, (1, 2, 2), 1, False),
]


def reference_3d(x, p, kernel, stride, ceil_mode):
    """Window by window from the definition: (sum of x ** p over the window's taps inside x, scaled
    to the whole window where a ceil_mode window hangs past x) ** (1 / p)."""
    kernel = np.broadcast_to(kernel, 3)
    stride = kernel if stride is None else np.broadcast_to(stride, 3)
    sizes = x.shape[-3:]
    out = [(-(-(s - k) // st) if ceil_mode else (s - k) // st) + 1 for s, k, st in zip(sizes, kernel, stride)]
    out = [o - 1 if ceil_mode and (o - 1) * st >= s else o for o, s, st in zip(out, sizes, stride)]
    y = np.empty((*x.shape[:-3], *out), x.dtype)
    for index in np.ndindex(*out):
        window = tuple(slice(i * st, min(i * st + k, s)) for i, st, k, s in zip(index, stride, kernel, sizes))
        block = x[(..., *window)] ** p
        taps = np.prod([w.stop - w.start for w in window])
        y[(..., *index)] = (block.sum(axis=(-3, -2, -1)) * np.prod(kernel) / taps) ** (1 / p)
    return y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_type, kernel, stride, ceil_mode", CASES_3D)
def test_lp_pool3d_against_reference_and_torch(rng, torch, dtype, norm_type, kernel, stride, ceil_mode):
    x = np.abs(rng.standard_normal((2, 3, 5, 6, 7))).astype(dtype)
    y = F.lp_pool3d(x, norm_type, kernel, stride, ceil_mode)
    assert y.dtype == dtype
    assert_close(y, reference_3d(x.astype(np.float64), norm_type, kernel, stride, ceil_mode), dtype)
    tx = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.functional.lp_pool3d(tx, norm_type, kernel, stride, ceil_mode)
    assert_close(y, ty.detach().numpy(), dtype)
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    ty.backward(torch.from_numpy(grad_out))
    assert_close(F.lp_pool3d_backward(grad_out, x, norm_type, kernel, stride, ceil_mode), tx.grad.numpy(), dtype)
    # unbatched
    assert_close(F.lp_pool3d(x[0], norm_type, kernel, stride, ceil_mode), y[0], dtype)


@pytest.mark.parametrize("norm_type, kernel, stride, ceil_mode", CASES_3D)
def test_lp_pool3d_backward_by_central_differences(rng, norm_type, kernel, stride, ceil_mode):
    x = 0.5 + np.abs(rng.standard_normal((1, 2, 4, 5, 4)))
    assert convx.gradcheck(lambda v: F.lp_pool3d(v, norm_type, kernel, stride, ceil_mode), [x],
                           lambda g: [F.lp_pool3d_backward(g, x, norm_type, kernel, stride, ceil_mode)])


def test_lp_pool3d_layer_and_refusals(rng, torch):
    x = np.abs(rng.standard_normal((2, 3, 4, 6, 6)))
    layer = nn.LPPool3d(2, (2, 2, 3), 2)
    y = layer(x)
    np.testing.assert_allclose(y, torch.nn.LPPool3d(2, (2, 2, 3), 2)(torch.from_numpy(x)).numpy(), rtol=1e-12)
    assert layer.backward(np.ones_like(y)).shape == x.shape
    assert repr(layer) == "LPPool3d(norm_type=2.0, kernel_size=(2, 2, 3), stride=2, ceil_mode=False)"
    with pytest.raises(ValueError, match="norm_type"):
        F.lp_pool3d(x, 0, 2)
    with pytest.raises(ValueError, match="kernel_size"):
        F.lp_pool3d(x, 2, (2, 2))
    with pytest.raises(ValueError, match=r"\(N, C, D, H, W\)"):
        F.lp_pool3d(x[0, 0], 2, 2)
    with pytest.raises(ValueError, match="forward output shape"):
        F.lp_pool3d_backward(np.ones((2, 3, 1, 1, 1)), x, 2, 2)
    with pytest.raises(TypeError, match="dtype of grad_out"):
        F.lp_pool3d_backward(np.ones((2, 3, 2, 3, 3), np.float32), x, 2, 2)
