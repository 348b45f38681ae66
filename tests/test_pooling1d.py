"""1-D max, average and adaptive pooling with their backward passes: against NumPy references written
here from the formulas, against PyTorch, by central differences, and their refusals."""

from __future__ import annotations

import numpy as np
import pytest

import convx
import convx.functional as F
import convx.functional.pooling as pooling_module
from conftest import DTYPES, assert_close

# --- references, from the definitions ---------------------------------------------------------------


def _one(value):
    return value[0] if isinstance(value, tuple) else value


def out_length(length, kernel, stride, padding, dilation, ceil_mode):
    """PyTorch's rule: floor (or ceil) of (L + 2p - d(k - 1) - 1) / s, plus one; a ceil_mode window
    starting in the right padding is dropped."""
    numerator = length + 2 * padding - dilation * (kernel - 1) - 1
    out = (-(-numerator // stride) if ceil_mode else numerator // stride) + 1
    if ceil_mode and (out - 1) * stride >= length + padding:
        out -= 1
    return out


def ref_max_pool1d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """(y, indices): the maximum over the taps o*s - p + i*d inside [0, L); the first maximum wins, a NaN
    wins over everything (the last NaN)."""
    kernel, padding, dilation = _one(kernel_size), _one(padding), _one(dilation)
    stride = kernel if stride is None else _one(stride)
    length = x.shape[-1]
    out = out_length(length, kernel, stride, padding, dilation, ceil_mode)
    y = np.empty((*x.shape[:-1], out), x.dtype)
    indices = np.empty(y.shape, np.int64)
    for row in np.ndindex(x.shape[:-1]):
        for o in range(out):
            taps = [o * stride - padding + i * dilation for i in range(kernel)]
            taps = [t for t in taps if 0 <= t < length]
            best, where = -np.inf, taps[0]
            for t in taps:
                if x[row][t] > best or np.isnan(x[row][t]):
                    best, where = x[row][t], t
            y[row][o], indices[row][o] = best, where
    return y, indices


def ref_scatter(grad_out, indices, input_shape):
    grad_x = np.zeros(input_shape)
    for row in np.ndindex(grad_out.shape[:-1]):
        for o in range(grad_out.shape[-1]):
            grad_x[row][indices[row][o]] += grad_out[row][o]
    return grad_x


def _avg_windows(length, kernel, stride, padding, ceil_mode, count_include_pad):
    """[(start, end, divisor)] per output: the window clipped to the padding for the divisor with
    count_include_pad, to the input for the sum (PyTorch's avg_pool rule)."""
    windows = []
    for o in range(out_length(length, kernel, stride, padding, 1, ceil_mode)):
        start = o * stride - padding
        end = min(start + kernel, length + padding)
        size = end - start
        start, end = max(start, 0), min(end, length)
        windows.append((start, end, size if count_include_pad else end - start))
    return windows


def ref_avg_pool1d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    kernel, padding = _one(kernel_size), _one(padding)
    stride = kernel if stride is None else _one(stride)
    windows = _avg_windows(x.shape[-1], kernel, stride, padding, ceil_mode, count_include_pad)
    return np.stack([x[..., a:b].sum(axis=-1) / d for a, b, d in windows], axis=-1)


def ref_avg_pool1d_backward(grad_out, input_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                            count_include_pad=True):
    kernel, padding = _one(kernel_size), _one(padding)
    stride = kernel if stride is None else _one(stride)
    grad_x = np.zeros(input_shape)
    for o, (a, b, d) in enumerate(_avg_windows(input_shape[-1], kernel, stride, padding, ceil_mode,
                                               count_include_pad)):
        grad_x[..., a:b] += grad_out[..., o:o + 1] / d
    return grad_x


def _adaptive_windows(length, out):
    return [((o * length) // out, -(-((o + 1) * length) // out)) for o in range(out)]


def ref_adaptive_avg_pool1d(x, out):
    return np.stack([x[..., a:b].mean(axis=-1) for a, b in _adaptive_windows(x.shape[-1], out)], axis=-1)


def ref_adaptive_avg_pool1d_backward(grad_out, input_shape):
    grad_x = np.zeros(input_shape)
    for o, (a, b) in enumerate(_adaptive_windows(input_shape[-1], grad_out.shape[-1])):
        grad_x[..., a:b] += grad_out[..., o:o + 1] / (b - a)
    return grad_x


def ref_adaptive_max_pool1d(x, out):
    y = np.empty((*x.shape[:-1], out), x.dtype)
    indices = np.empty(y.shape, np.int64)
    for o, (a, b) in enumerate(_adaptive_windows(x.shape[-1], out)):
        window_y, window_i = ref_max_pool1d(x[..., a:b], b - a)
        y[..., o], indices[..., o] = window_y[..., 0], window_i[..., 0] + a
    return y, indices


# --- cases ------------------------------------------------------------------------------------------

MAX_CASES = {
    "k2": (11, dict(kernel_size=2)),
    "k3-s1-p1": (9, dict(kernel_size=3, stride=1, padding=1)),
    "k4-s3-p2-ceil": (13, dict(kernel_size=4, stride=3, padding=2, ceil_mode=True)),
    "k3-d2-p1": (10, dict(kernel_size=(3,), stride=(2,), padding=(1,), dilation=(2,))),
    "k5-d3-ceil": (17, dict(kernel_size=5, stride=2, dilation=3, padding=2, ceil_mode=True)),
    "whole": (7, dict(kernel_size=7)),
    "length1": (1, dict(kernel_size=1)),
}

AVG_CASES = {
    "k2": (11, dict(kernel_size=2)),
    "k3-s2-p1": (10, dict(kernel_size=3, stride=2, padding=1)),
    "k3-s2-p1-exclude": (10, dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    "k4-s3-p2-ceil": (13, dict(kernel_size=4, stride=3, padding=2, ceil_mode=True)),
    "k4-s3-p2-ceil-exclude": (13, dict(kernel_size=(4,), stride=(3,), padding=(2,), ceil_mode=True,
                                       count_include_pad=False)),
    "k5-s2-ceil": (8, dict(kernel_size=5, stride=2, ceil_mode=True)),
}

ADAPTIVE_SIZES = [(10, 1), (10, 3), (7, 7), (5, 8), (13, 4)]


def _x(rng, length, dtype, n=2, c=3):
    return rng.standard_normal((n, c, length)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", MAX_CASES)
def test_max_pool1d_and_backward_match_the_reference(name, dtype, rng):
    length, kwargs = MAX_CASES[name]
    x = _x(rng, length, dtype)
    y, indices = F.max_pool1d(x, return_indices=True, **kwargs)
    expected_y, expected_i = ref_max_pool1d(x, **kwargs)
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(indices, expected_i)
    np.testing.assert_array_equal(F.max_pool1d(x, **kwargs), expected_y)
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    assert_close(F.max_pool1d_backward(grad_out, indices, x.shape), ref_scatter(grad_out, indices, x.shape), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", AVG_CASES)
def test_avg_pool1d_and_backward_match_the_reference(name, dtype, rng):
    length, kwargs = AVG_CASES[name]
    x = _x(rng, length, dtype)
    y = F.avg_pool1d(x, **kwargs)
    assert_close(y, ref_avg_pool1d(x, **kwargs), dtype)
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    assert_close(F.avg_pool1d_backward(grad_out, x.shape, **kwargs),
                 ref_avg_pool1d_backward(grad_out, x.shape, **kwargs), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("length, out", ADAPTIVE_SIZES)
def test_adaptive_pools_and_backward_match_the_reference(length, out, dtype, rng):
    x = _x(rng, length, dtype)
    y = F.adaptive_avg_pool1d(x, out)
    assert_close(y, ref_adaptive_avg_pool1d(x, out), dtype)
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    assert_close(F.adaptive_avg_pool1d_backward(grad_out, x.shape), ref_adaptive_avg_pool1d_backward(grad_out, x.shape),
                 dtype)
    y, indices = F.adaptive_max_pool1d(x, (out,), return_indices=True)
    expected_y, expected_i = ref_adaptive_max_pool1d(x, out)
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(indices, expected_i)
    np.testing.assert_array_equal(F.adaptive_max_pool1d(x, out), expected_y)
    assert_close(F.max_pool1d_backward(grad_out, indices, x.shape), ref_scatter(grad_out, indices, x.shape), dtype)


def test_indices_are_positions_along_the_length(rng):
    """The 2-D kernels' flat h*W + w on a one-row plane is w: the position of the maximum in L."""
    x = rng.permutation(40).astype(np.float64).reshape(2, 2, 10)
    y, indices = F.max_pool1d(x, 3, stride=2, padding=1, return_indices=True)
    assert ((indices >= 0) & (indices < 10)).all()
    np.testing.assert_array_equal(np.take_along_axis(x, indices, axis=-1), y)
    y, indices = F.adaptive_max_pool1d(x, 4, return_indices=True)
    np.testing.assert_array_equal(np.take_along_axis(x, indices, axis=-1), y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_unbatched_inputs(dtype, rng):
    x = _x(rng, 9, dtype)
    y, indices = F.max_pool1d(x[0], 3, 2, 1, return_indices=True)
    np.testing.assert_array_equal(y, F.max_pool1d(x, 3, 2, 1)[0])
    np.testing.assert_array_equal(F.max_pool1d_backward(np.ones_like(y), indices, x[0].shape),
                                  ref_scatter(np.ones_like(y), indices, x[0].shape))
    y = F.avg_pool1d(x[0], 3, 2, 1, ceil_mode=True)
    assert_close(y, ref_avg_pool1d(x[0], 3, 2, 1, ceil_mode=True), dtype)
    assert_close(F.avg_pool1d_backward(np.ones_like(y), x[0].shape, 3, 2, 1, ceil_mode=True),
                 ref_avg_pool1d_backward(np.ones_like(y), x[0].shape, 3, 2, 1, ceil_mode=True), dtype)
    y = F.adaptive_avg_pool1d(x[0], 4)
    assert_close(y, ref_adaptive_avg_pool1d(x[0], 4), dtype)
    assert_close(F.adaptive_avg_pool1d_backward(np.ones_like(y), x[0].shape),
                 ref_adaptive_avg_pool1d_backward(np.ones_like(y), x[0].shape), dtype)
    y, indices = F.adaptive_max_pool1d(x[0], 4, return_indices=True)
    np.testing.assert_array_equal(indices, ref_adaptive_max_pool1d(x[0], 4)[1])


def test_empty_batch():
    x = np.zeros((0, 3, 10))
    y, indices = F.max_pool1d(x, 3, return_indices=True)
    assert y.shape == indices.shape == (0, 3, 3)
    assert F.max_pool1d_backward(y, indices, x.shape).shape == x.shape
    assert F.avg_pool1d(x, 3).shape == (0, 3, 3)
    assert F.avg_pool1d_backward(np.zeros((0, 3, 3)), x.shape, 3).shape == x.shape
    assert F.adaptive_avg_pool1d(x, 4).shape == F.adaptive_max_pool1d(x, 4).shape == (0, 3, 4)
    assert F.adaptive_avg_pool1d_backward(np.zeros((0, 3, 4)), x.shape).shape == x.shape


def test_nan_and_inf(rng):
    x = rng.standard_normal((1, 2, 9))
    x[0, 0, [2, 4]] = np.nan
    x[0, 1, 6] = np.inf
    x[0, 1, 0] = -np.inf
    y, indices = F.max_pool1d(x, 3, stride=1, padding=1, return_indices=True)
    expected_y, expected_i = ref_max_pool1d(x, 3, stride=1, padding=1)
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(indices, expected_i)
    np.testing.assert_array_equal(np.isnan(F.avg_pool1d(x, 3, 1, 1)), np.isnan(ref_avg_pool1d(x, 3, 1, 1)))
    np.testing.assert_array_equal(F.adaptive_max_pool1d(x, 3, return_indices=True)[1],
                                  ref_adaptive_max_pool1d(x, 3)[1])


def test_non_contiguous_and_read_only_inputs_are_read_and_left_alone(rng):
    big = rng.standard_normal((3, 4, 21))
    big.flags.writeable = False
    before = big.copy()
    x = big[::2, 1::2, ::2]  # (2, 2, 11)
    np.testing.assert_array_equal(F.max_pool1d(x, 3, 2, 1), ref_max_pool1d(x, 3, 2, 1)[0])
    assert_close(F.avg_pool1d(x, 3, 2, 1), ref_avg_pool1d(x, 3, 2, 1), np.float64)
    assert_close(F.adaptive_avg_pool1d(x, 4), ref_adaptive_avg_pool1d(x, 4), np.float64)
    grad_out = np.ones((2, 2, 6))[..., ::-1]
    assert_close(F.avg_pool1d_backward(grad_out, x.shape, 3, 2, 1),
                 ref_avg_pool1d_backward(grad_out, x.shape, 3, 2, 1), np.float64)
    np.testing.assert_array_equal(big, before)


def test_contiguous_inputs_reach_the_kernels_uncopied(monkeypatch, rng):
    copied = []
    original = pooling_module.contiguous

    def spy(array):
        result = original(array)
        copied.append(result is not array)
        return result

    monkeypatch.setattr(pooling_module, "contiguous", spy)
    x = _x(rng, 12, np.float32)
    y, indices = F.max_pool1d(x, 3, return_indices=True)
    F.max_pool1d_backward(y, indices, x.shape)
    F.avg_pool1d_backward(F.avg_pool1d(x, 3), x.shape, 3)
    F.adaptive_avg_pool1d_backward(F.adaptive_avg_pool1d(x, 5), x.shape)
    F.adaptive_max_pool1d(x, 5)
    assert copied and not any(copied)


# --- PyTorch ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_op_matches_torch(dtype, rng, torch):
    tf = torch.nn.functional
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-13)
    for length, kwargs in MAX_CASES.values():
        x = _x(rng, length, dtype)
        tx = torch.tensor(x, requires_grad=True)
        ty, ti = tf.max_pool1d(tx, return_indices=True, **kwargs)
        y, indices = F.max_pool1d(x, return_indices=True, **kwargs)
        np.testing.assert_array_equal(y, ty.detach().numpy())
        np.testing.assert_array_equal(indices, ti.numpy())
        grad_out = rng.standard_normal(y.shape).astype(dtype)
        ty.backward(torch.tensor(grad_out))
        np.testing.assert_allclose(F.max_pool1d_backward(grad_out, indices, x.shape), tx.grad.numpy(), **tol)
    for length, kwargs in AVG_CASES.values():
        x = _x(rng, length, dtype)
        tx = torch.tensor(x, requires_grad=True)
        ty = tf.avg_pool1d(tx, **kwargs)
        y = F.avg_pool1d(x, **kwargs)
        np.testing.assert_allclose(y, ty.detach().numpy(), **tol)
        grad_out = rng.standard_normal(y.shape).astype(dtype)
        ty.backward(torch.tensor(grad_out))
        np.testing.assert_allclose(F.avg_pool1d_backward(grad_out, x.shape, **kwargs), tx.grad.numpy(), **tol)
    for length, out in ADAPTIVE_SIZES:
        x = _x(rng, length, dtype)
        tx = torch.tensor(x, requires_grad=True)
        ty = tf.adaptive_avg_pool1d(tx, out)
        np.testing.assert_allclose(F.adaptive_avg_pool1d(x, out), ty.detach().numpy(), **tol)
        grad_out = rng.standard_normal(ty.shape).astype(dtype)
        ty.backward(torch.tensor(grad_out))
        np.testing.assert_allclose(F.adaptive_avg_pool1d_backward(grad_out, x.shape), tx.grad.numpy(), **tol)
        ty, ti = tf.adaptive_max_pool1d(torch.tensor(x), out, return_indices=True)
        y, indices = F.adaptive_max_pool1d(x, out, return_indices=True)
        np.testing.assert_array_equal(y, ty.numpy())
        np.testing.assert_array_equal(indices, ti.numpy())


def test_nan_matches_torch(rng, torch):
    x = rng.standard_normal((2, 3, 11))
    x[0, 0, [3, 4]] = np.nan
    x[1, 2, 10] = np.nan
    ty, ti = torch.nn.functional.max_pool1d(torch.tensor(x), 3, 2, 1, return_indices=True)
    y, indices = F.max_pool1d(x, 3, 2, 1, return_indices=True)
    np.testing.assert_array_equal(y, ty.numpy())
    np.testing.assert_array_equal(indices, ti.numpy())
    np.testing.assert_array_equal(F.avg_pool1d(x, 3, 2, 1), torch.nn.functional.avg_pool1d(torch.tensor(x), 3, 2, 1))


# --- central differences --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["k3-s2-p1", "k4-s3-p2-ceil-exclude"])
def test_avg_pool1d_backward_by_central_differences(name, rng):
    length, kwargs = AVG_CASES[name]
    x = _x(rng, length, np.float64)
    assert convx.gradcheck(lambda x_: F.avg_pool1d(x_, **kwargs), [x],
                           backward=lambda g: (F.avg_pool1d_backward(g, x.shape, **kwargs),))


def test_max_and_adaptive_backward_by_central_differences(rng):
    x = rng.permutation(66).astype(np.float64).reshape(2, 3, 11) / 7  # distinct values: a unique maximum
    _, indices = F.max_pool1d(x, 3, 2, 1, return_indices=True)
    assert convx.gradcheck(lambda x_: F.max_pool1d(x_, 3, 2, 1), [x],
                           backward=lambda g: (F.max_pool1d_backward(g, indices, x.shape),))
    _, indices = F.adaptive_max_pool1d(x, 4, return_indices=True)
    assert convx.gradcheck(lambda x_: F.adaptive_max_pool1d(x_, 4), [x],
                           backward=lambda g: (F.max_pool1d_backward(g, indices, x.shape),))
    assert convx.gradcheck(lambda x_: F.adaptive_avg_pool1d(x_, 4), [x],
                           backward=lambda g: (F.adaptive_avg_pool1d_backward(g, x.shape),))


# --- refusals --------------------------------------------------------------------------------------------

X = np.zeros((2, 3, 10))
G = np.zeros((2, 3, 5))
I = np.zeros((2, 3, 5), np.int64)


@pytest.mark.parametrize("call, exception, message", [
    (lambda: F.max_pool1d(X[None], 2), ValueError,
     r"max_pool1d expects x of shape \(N, C, L\) or \(C, L\), got an array of shape \(1, 2, 3, 10\)"),
    (lambda: F.avg_pool1d(X[0, 0], 2), ValueError, r"avg_pool1d expects x of shape .* got an array of shape \(10,\)"),
    (lambda: F.adaptive_avg_pool1d(X[None], 2), ValueError, "adaptive_avg_pool1d expects x of shape"),
    (lambda: F.adaptive_max_pool1d(X[None], 2), ValueError, "adaptive_max_pool1d expects x of shape"),
    (lambda: F.max_pool1d(X.astype(np.int32), 2), TypeError, "x must have dtype float32, float64, int8 or uint8"),
    (lambda: F.avg_pool1d(X.astype(np.int8), 2), TypeError, "x must have dtype float32 or float64, got dtype int8"),
    (lambda: F.max_pool1d(X, (2, 2)), ValueError,
     r"kernel_size of a 1-D op must be an int or a 1-tuple \(int,\), got a sequence of length 2: \(2, 2\)"),
    (lambda: F.max_pool1d(X, 2, stride=(1, 1)), ValueError, "stride of a 1-D op must be an int or a 1-tuple"),
    (lambda: F.avg_pool1d(X, 2, padding=(1, 1)), ValueError, "padding of a 1-D op must be an int or a 1-tuple"),
    (lambda: F.max_pool1d(X, 2, dilation=(1, 1)), ValueError, "dilation of a 1-D op"),
    (lambda: F.max_pool1d(X, np.array([2])), TypeError, "kernel_size must be an int or a tuple of one int"),
    (lambda: F.max_pool1d(X, 0), ValueError, "kernel_size must be positive, got 0"),
    (lambda: F.max_pool1d(X, 2.0), TypeError, "kernel_size must be an int, got 2.0"),
    (lambda: F.max_pool1d(X, 2, stride=0), ValueError, "stride must be positive, got 0"),
    (lambda: F.max_pool1d(X, 2**31), ValueError, "kernel_size must be at most 2147483647"),
    (lambda: F.max_pool1d(X, 3, padding=3), ValueError,
     r"padding on each side must be at most dilation \* \(kernel_size - 1\) = 2 for kernel_size=3 and dilation=1 "
     r"\(a window must reach the input\), got padding=3"),
    (lambda: F.max_pool1d(X, 11), ValueError,
     "the pooling output of x would be 0 for an input of length 10 with kernel_size=11, stride=11, padding=0, "
     "dilation=1"),
    (lambda: F.max_pool1d(X[:, :, :1], 2, stride=1, padding=1, dilation=2), ValueError,
     r"window 0 along the length of x \(1\) has every tap in the padding"),
    (lambda: F.max_pool1d(X, 2, ceil_mode=1), TypeError, "ceil_mode must be a bool, got 1"),
    (lambda: F.max_pool1d(X, 2, return_indices="yes"), TypeError, "return_indices must be a bool"),
    (lambda: F.avg_pool1d(X, 2, count_include_pad=None), TypeError, "count_include_pad must be a bool"),
    (lambda: F.max_pool1d_backward(G, I.astype(np.int32), X.shape), TypeError, "indices must have dtype int64"),
    (lambda: F.max_pool1d_backward(G, I[:, :, :4], X.shape), ValueError,
     r"indices must have the shape of grad_out \(2, 3, 5\), got \(2, 3, 4\)"),
    (lambda: F.max_pool1d_backward(G, I + 10, X.shape), ValueError,
     r"indices must lie in \[0, L\) = \[0, 10\) for input_shape \(2, 3, 10\), got 10"),
    (lambda: F.max_pool1d_backward(G, I - 1, X.shape), ValueError, r"\[0, 10\).*got -1"),
    (lambda: F.max_pool1d_backward(G, I, (2, 3, 1, 10)), ValueError, "input_shape must have 2 or 3 entries"),
    (lambda: F.max_pool1d_backward(G, I, (4, 3, 10)), ValueError,
     r"leading \(batch and channel\) axes must be \(4, 3\)"),
    (lambda: F.max_pool1d_backward(G[None], I[None], X.shape), ValueError, "max_pool1d_backward expects grad_out"),
    (lambda: F.avg_pool1d_backward(G[:, :, :4], X.shape, 2), ValueError,
     r"grad_out must have the forward output shape \(2, 3, 5\) for input_shape \(2, 3, 10\)"),
    (lambda: F.avg_pool1d_backward(G, X.shape, 2, padding=2), ValueError, r"at most dilation \* \(kernel_size - 1\)"),
    (lambda: F.avg_pool1d(X, 2, divisor_override=2), TypeError, "divisor_override"),
    (lambda: F.adaptive_avg_pool1d(X, (2, 2)), ValueError, "output_size of a 1-D op"),
    (lambda: F.adaptive_avg_pool1d(X, 0), ValueError, "output_size must be positive, got 0"),
    (lambda: F.adaptive_max_pool1d(X, None), TypeError, "output_size must be an int"),
    (lambda: F.adaptive_avg_pool1d(X[:, :, :0], 2), ValueError,
     r"x must have a non-empty length L for adaptive pooling, got shape \(2, 3, 0\)"),
    (lambda: F.adaptive_avg_pool1d_backward(G, (2, 3, 0)), ValueError, "input_shape must have a non-empty length"),
    (lambda: F.adaptive_avg_pool1d_backward(G[:, :, :0], X.shape), ValueError, "non-empty output length"),
])
def test_bad_arguments_are_refused_in_1d_terms(call, exception, message):
    with pytest.raises(exception, match=message):
        call()
