"""conv1d, its backward passes and conv_transpose1d: against NumPy references written here from the
formulas, against PyTorch, by central differences, and their refusals."""

from __future__ import annotations

import numpy as np
import pytest

import convx
import convx.functional as F
import convx.functional.conv as conv_module
from conftest import DTYPES, assert_close

# --- references, from the definitions ---------------------------------------------------------------


def _sides(padding, length, kernel, stride, dilation):
    """(left, right) zeros of a 1-D convolution's padding spelling."""
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0
        out = -(-length // stride)
        total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - length, 0)
        small, large = total // 2, total - total // 2
        return (small, large) if padding == "same" else (large, small)
    if isinstance(padding, tuple) and isinstance(padding[0], tuple):
        return padding[0]
    p = padding[0] if isinstance(padding, tuple) else padding
    return p, p


def _one(value):
    """An int or PyTorch's 1-tuple, as an int."""
    return value[0] if isinstance(value, tuple) else value


def _batched(x):
    return (x[None], True) if x.ndim == 2 else (x, False)


def ref_conv1d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """y[n, co, o] = b[co] + sum_{c, k} w[co, c, k] * x_pad[n, g*Cg + c, o*s + k*d]."""
    stride, dilation = _one(stride), _one(dilation)
    x, unbatched = _batched(np.asarray(x, np.float64))
    w = np.asarray(w, np.float64)
    n, c_in, length = x.shape
    c_out, c_group, kernel = w.shape
    left, right = _sides(padding, length, kernel, stride, dilation)
    xp = np.pad(x, ((0, 0), (0, 0), (left, right)))
    out_len = (length + left + right - dilation * (kernel - 1) - 1) // stride + 1
    y = np.zeros((n, c_out, out_len))
    per_group = c_out // groups
    for co in range(c_out):
        g = co // per_group
        for c in range(c_group):
            for k in range(kernel):
                taps = xp[:, g * c_group + c, k * dilation: k * dilation + stride * (out_len - 1) + 1: stride]
                y[:, co] += w[co, c, k] * taps
        if b is not None:
            y[:, co] += b[co]
    return y[0] if unbatched else y


def ref_conv1d_backward(grad_out, x, w, stride=1, padding=0, dilation=1, groups=1):
    """(grad_x, grad_w, grad_b): each product of the forward sum sent back to its two factors."""
    stride, dilation = _one(stride), _one(dilation)
    g_out, unbatched = _batched(np.asarray(grad_out, np.float64))
    x, _ = _batched(np.asarray(x, np.float64))
    w = np.asarray(w, np.float64)
    n, c_in, length = x.shape
    c_out, c_group, kernel = w.shape
    left, right = _sides(padding, length, kernel, stride, dilation)
    xp = np.pad(x, ((0, 0), (0, 0), (left, right)))
    grad_xp = np.zeros_like(xp)
    grad_w = np.zeros_like(w)
    per_group = c_out // groups
    for co in range(c_out):
        g = co // per_group
        for c in range(c_group):
            for k in range(kernel):
                for o in range(g_out.shape[2]):
                    pos = o * stride + k * dilation
                    grad_xp[:, g * c_group + c, pos] += g_out[:, co, o] * w[co, c, k]
                    grad_w[co, c, k] += np.sum(g_out[:, co, o] * xp[:, g * c_group + c, pos])
    grad_x = grad_xp[:, :, left: left + length]
    grad_b = g_out.sum(axis=(0, 2))
    return (grad_x[0] if unbatched else grad_x), grad_w, grad_b


def ref_conv_transpose1d(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """y[n, g*Cog + co, i*s + k*d - p] += x[n, ci, i] * w[ci, co, k], ci in group g."""
    stride, padding, output_padding, dilation = map(_one, (stride, padding, output_padding, dilation))
    x, unbatched = _batched(np.asarray(x, np.float64))
    w = np.asarray(w, np.float64)
    n, c_in, length = x.shape
    _, c_out_group, kernel = w.shape
    full = (length - 1) * stride + dilation * (kernel - 1) + 1 + output_padding
    y = np.zeros((n, c_out_group * groups, full))
    in_group = c_in // groups
    for ci in range(c_in):
        g = ci // in_group
        for co in range(c_out_group):
            for k in range(kernel):
                for i in range(length):
                    y[:, g * c_out_group + co, i * stride + k * dilation] += x[:, ci, i] * w[ci, co, k]
    y = y[:, :, padding: full - padding]
    if b is not None:
        y += b[None, :, None]
    return y[0] if unbatched else y


# --- cases ------------------------------------------------------------------------------------------

# (n, c_in, length, c_out, kernel, kwargs)
CASES = {
    "plain": (2, 3, 11, 4, 3, {}),
    "stride2-pad1": (2, 3, 12, 5, 3, dict(stride=2, padding=1)),
    "dilated": (1, 2, 13, 3, 3, dict(dilation=3, padding=2)),
    "grouped": (2, 4, 9, 6, 2, dict(groups=2, stride=(2,), padding=(1,))),
    "depthwise": (3, 4, 10, 4, 5, dict(groups=4, padding=2)),
    "depthwise-x2": (2, 3, 7, 6, 3, dict(groups=3, dilation=2, padding=1)),
    "per-side": (2, 3, 8, 2, 4, dict(padding=((3, 0),), stride=3)),
    "same": (2, 3, 9, 4, 4, dict(padding="same")),
    "same-stride3": (1, 2, 10, 3, 3, dict(padding="same", stride=3)),
    "same-lower": (1, 2, 10, 3, 4, dict(padding="same_lower", stride=2, dilation=2)),
    "valid": (2, 2, 6, 2, 6, dict(padding="valid")),
    "kernel1": (2, 5, 7, 3, 1, {}),
    "length1": (2, 3, 1, 2, 3, dict(padding=1)),
    "all-padding-window": (1, 2, 1, 2, 1, dict(padding=((2, 0),), stride=2)),
}


def _arrays(rng, case, dtype, bias=True):
    n, c_in, length, c_out, kernel, kwargs = case
    groups = kwargs.get("groups", 1)
    x = rng.standard_normal((n, c_in, length)).astype(dtype)
    w = rng.standard_normal((c_out, c_in // groups, kernel)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype) if bias else None
    return x, w, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", CASES)
def test_conv1d_and_its_gradients_match_the_reference(name, dtype, rng):
    case = CASES[name]
    kwargs = case[5]
    x, w, b = _arrays(rng, case, dtype)
    y = F.conv1d(x, w, b, **kwargs)
    assert y.dtype == dtype and y.flags.c_contiguous
    assert_close(y, ref_conv1d(x, w, b, **kwargs), dtype)
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    expected_x, expected_w, expected_b = ref_conv1d_backward(grad_out, x, w, **kwargs)
    grad_x, grad_w, grad_b = F.conv1d_backward(grad_out, x, w, **kwargs)
    assert_close(grad_x, expected_x, dtype)
    assert_close(grad_w, expected_w, dtype)
    assert_close(grad_b, expected_b, dtype)
    assert_close(F.conv1d_backward_input(grad_out, w, x.shape, **kwargs), expected_x, dtype)
    assert_close(F.conv1d_backward_weight(grad_out, x, w.shape, **kwargs), expected_w, dtype)
    assert_close(F.conv1d_backward_bias(grad_out), expected_b, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_unbatched_input_gives_unbatched_results(dtype, rng):
    x, w, b = _arrays(rng, CASES["grouped"], dtype)
    kwargs = CASES["grouped"][5]
    y = F.conv1d(x[0], w, b, **kwargs)
    assert y.shape == F.conv1d(x, w, b, **kwargs).shape[1:]
    assert_close(y, ref_conv1d(x[0], w, b, **kwargs), dtype)
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    grad_x, grad_w, grad_b = F.conv1d_backward(grad_out, x[0], w, **kwargs)
    expected = ref_conv1d_backward(grad_out, x[0], w, **kwargs)
    for got, want in zip((grad_x, grad_w, grad_b), expected):
        assert_close(got, want, dtype)
    assert_close(F.conv1d_backward_input(grad_out, w, x[0].shape, **kwargs), expected[0], dtype)
    assert_close(F.conv1d_backward_weight(grad_out, x[0], w.shape, **kwargs), expected[1], dtype)
    assert_close(F.conv1d_backward_bias(grad_out), expected[2], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv1d_activation_is_the_unfused_activation(dtype, rng):
    x, w, b = _arrays(rng, CASES["plain"], dtype)
    fused = F.conv1d(x, w, b, activation="leaky_relu", activation_params={"negative_slope": 0.2})
    assert_close(fused, F.leaky_relu(F.conv1d(x, w, b), 0.2), dtype)


def test_empty_batch(rng):
    x, w, b = _arrays(rng, CASES["stride2-pad1"], np.float64)
    x = x[:0]
    y = F.conv1d(x, w, b, stride=2, padding=1)
    assert y.shape == (0, 5, 6)
    grad_x, grad_w, grad_b = F.conv1d_backward(y, x, w, stride=2, padding=1)
    assert grad_x.shape == x.shape and not grad_w.any() and not grad_b.any()
    assert F.conv_transpose1d(x, np.ones((3, 2, 3)), stride=2).shape == (0, 2, 25)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_and_read_only_inputs_are_read_and_left_alone(dtype, rng):
    x_big = rng.standard_normal((2, 6, 23)).astype(dtype)
    x = x_big[:, ::2, ::2]  # (2, 3, 12), strided
    w = np.asfortranarray(rng.standard_normal((4, 3, 3)).astype(dtype))
    b = rng.standard_normal(4).astype(dtype)
    for array in (x_big, w, b):
        array.flags.writeable = False
    before = [a.copy() for a in (x_big, w, b)]
    y = F.conv1d(x, w, b, stride=2, padding=1)
    assert_close(y, ref_conv1d(x, w, b, stride=2, padding=1), dtype)
    grads = F.conv1d_backward(np.ones_like(y), x, w, stride=2, padding=1)
    for got, want in zip(grads, ref_conv1d_backward(np.ones_like(y), x, w, stride=2, padding=1)):
        assert_close(got, want, dtype)
    for array, copy in zip((x_big, w, b), before):
        np.testing.assert_array_equal(array, copy)


def test_contiguous_inputs_reach_the_kernels_uncopied(monkeypatch, rng):
    """The (N, C, 1, L) and (C_out, C_in/g, 1, K) views of C-contiguous arrays are C-contiguous: the
    2-D op's contiguous() gives them back as they are, as it does for its own contiguous inputs."""
    copied = []
    original = conv_module.contiguous

    def spy(array):
        result = original(array)
        copied.append(result is not array)
        return result

    monkeypatch.setattr(conv_module, "contiguous", spy)
    x, w, b = _arrays(rng, CASES["grouped"], np.float32)
    kwargs = CASES["grouped"][5]
    y = F.conv1d(x, w, b, **kwargs)
    F.conv1d_backward(y, x, w, **kwargs)
    F.conv1d_backward_input(y, w, x.shape, **kwargs)
    F.conv1d_backward_weight(y, x, w.shape, **kwargs)
    F.conv_transpose1d(y, np.ones((6, 2, 2), np.float32), groups=2)
    assert copied and not any(copied)


def test_nan_and_inf_reach_exactly_the_outputs_whose_window_holds_them(rng):
    x = rng.standard_normal((1, 2, 12))
    x[0, 0, 5] = np.nan
    x[0, 1, 9] = np.inf
    w = np.abs(rng.standard_normal((3, 2, 3))) + 0.1  # positive: inf stays +inf
    y = F.conv1d(x, w, padding=1)
    np.testing.assert_array_equal(np.isnan(y[0, 0]), np.isin(np.arange(12), [4, 5, 6]))
    np.testing.assert_array_equal(y[0, 0] == np.inf, np.isin(np.arange(12), [8, 9, 10]))
    np.testing.assert_allclose(y, ref_conv1d(x, w, padding=1), rtol=1e-12)


# --- conv_transpose1d --------------------------------------------------------------------------------

TRANSPOSE_CASES = {
    "plain": (2, 3, 7, 4, 3, {}),
    "stride2-outpad": (2, 4, 6, 6, 3, dict(stride=2, padding=1, output_padding=1, groups=2)),
    "dilated-outpad": (1, 2, 5, 3, 2, dict(stride=2, dilation=3, output_padding=2)),
    "depthwise": (2, 3, 9, 3, 4, dict(groups=3, stride=(3,), padding=(2,))),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", TRANSPOSE_CASES)
def test_conv_transpose1d_matches_the_reference(name, dtype, rng):
    n, c_in, length, c_out, kernel, kwargs = TRANSPOSE_CASES[name]
    groups = kwargs.get("groups", 1)
    x = rng.standard_normal((n, c_in, length)).astype(dtype)
    w = rng.standard_normal((c_in, c_out // groups, kernel)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    assert_close(F.conv_transpose1d(x, w, b, **kwargs), ref_conv_transpose1d(x, w, b, **kwargs), dtype)
    assert_close(F.conv_transpose1d(x[0], w, None, **kwargs), ref_conv_transpose1d(x[0], w, None, **kwargs), dtype)


# --- PyTorch ------------------------------------------------------------------------------------------

TORCH_TOL = {np.dtype(np.float32): dict(rtol=1e-4, atol=1e-5), np.dtype(np.float64): dict(rtol=1e-12, atol=1e-12)}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["plain", "stride2-pad1", "dilated", "grouped", "depthwise", "same", "valid",
                                  "length1"])
def test_conv1d_matches_torch(name, dtype, rng, torch):
    case = CASES[name]
    kwargs = case[5]
    x, w, b = _arrays(rng, case, dtype)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv1d(tx, tw, tb, **kwargs)
    y = F.conv1d(x, w, b, **kwargs)
    tol = TORCH_TOL[np.dtype(dtype)]
    np.testing.assert_allclose(y, ty.detach().numpy(), **tol)
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    ty.backward(torch.tensor(grad_out))
    for got, want in zip(F.conv1d_backward(grad_out, x, w, **kwargs), (tx.grad, tw.grad, tb.grad)):
        np.testing.assert_allclose(got, want.numpy(), **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", TRANSPOSE_CASES)
def test_conv_transpose1d_matches_torch(name, dtype, rng, torch):
    n, c_in, length, c_out, kernel, kwargs = TRANSPOSE_CASES[name]
    groups = kwargs.get("groups", 1)
    x = rng.standard_normal((n, c_in, length)).astype(dtype)
    w = rng.standard_normal((c_in, c_out // groups, kernel)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    expected = torch.nn.functional.conv_transpose1d(torch.tensor(x), torch.tensor(w), torch.tensor(b), **kwargs)
    np.testing.assert_allclose(F.conv_transpose1d(x, w, b, **kwargs), expected.numpy(), **TORCH_TOL[np.dtype(dtype)])


# --- central differences --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["stride2-pad1", "grouped", "same-lower", "per-side"])
def test_conv1d_backward_by_central_differences(name, rng):
    case = CASES[name]
    kwargs = case[5]
    x, w, b = _arrays(rng, case, np.float64)
    assert convx.gradcheck(
        lambda x_, w_, b_: F.conv1d(x_, w_, b_, **kwargs), [x, w, b],
        backward=lambda g: F.conv1d_backward(g, x, w, **kwargs),
    )


def test_conv_transpose1d_is_the_adjoint_of_conv1d(rng):
    """<conv_transpose1d(u), v> = <u, conv1d(v)>: the transposed convolution's gradient is conv1d."""
    u = rng.standard_normal((2, 4, 6))
    w = rng.standard_normal((4, 3, 3))
    kwargs = dict(stride=2, padding=1, dilation=2)
    y = F.conv_transpose1d(u, w, None, **kwargs)
    v = rng.standard_normal(y.shape)
    np.testing.assert_allclose(np.vdot(y, v), np.vdot(u, F.conv1d(v, w, None, **kwargs)), rtol=1e-12)


# --- refusals --------------------------------------------------------------------------------------------

X = np.zeros((2, 4, 10))
W = np.zeros((6, 2, 3))


@pytest.mark.parametrize("call, exception, message", [
    (lambda: F.conv1d(X[None], W, groups=2), ValueError,
     r"conv1d expects x of shape \(N, C_in, L\) or \(C_in, L\), got an array of shape \(1, 2, 4, 10\)"),
    (lambda: F.conv1d(X[0, 0], W), ValueError, r"conv1d expects x of shape .* got an array of shape \(10,\)"),
    (lambda: F.conv1d(X, W[..., None], groups=2), ValueError,
     r"conv1d expects weight of shape \(C_out, C_in / groups, K\), got an array of shape \(6, 2, 3, 1\)"),
    (lambda: F.conv1d(X.astype(np.int64), W), TypeError, "x must have dtype float32 or float64"),
    (lambda: F.conv1d(X, W.astype(np.float32), groups=2), TypeError, "must share one dtype"),
    (lambda: F.conv1d(X, W, padding=(1, 2), groups=2), ValueError,
     r"padding of a 1-D convolution must be an int, \(p,\), \(\(left, right\),\), 'valid', 'same' or "
     r"'same_lower' \(per side: \(\(left, right\),\)\), got \(1, 2\)"),
    (lambda: F.conv1d(X, W, padding=((1, 2), (0, 0)), groups=2), ValueError, "padding of a 1-D convolution"),
    (lambda: F.conv1d(X, W, padding=((1, 2, 3),), groups=2), ValueError, r"per side must be \(\(left, right\),\)"),
    (lambda: F.conv1d(X, W, padding="full", groups=2), ValueError, "padding must be an int, .* got 'full'"),
    (lambda: F.conv1d(X, W, padding=-1, groups=2), ValueError, "padding must be at least 0, got -1"),
    (lambda: F.conv1d(X, W, stride=(1, 1), groups=2), ValueError,
     r"stride of a 1-D op must be an int or a 1-tuple \(int,\), got a sequence of length 2"),
    (lambda: F.conv1d(X, W, stride=0, groups=2), ValueError, "stride must be positive, got 0"),
    (lambda: F.conv1d(X, W, dilation=1.5, groups=2), TypeError, "dilation must be an int, got 1.5"),
    (lambda: F.conv1d(X, W, groups=3), ValueError, r"groups=3 must divide both the input channels \(4\)"),
    (lambda: F.conv1d(X, W), ValueError,
     r"weight of shape \(6, 2, 3\) expects 2 input channels .* but x has 4; weight.shape\[1\] must be "
     r"C_in / groups = 4"),
    (lambda: F.conv1d(X, np.zeros((6, 2, 0)), groups=2), ValueError,
     r"kernel size should be greater than zero, but got kernel_length: 0 \(weight shape \(6, 2, 0\)\)"),
    (lambda: F.conv1d(X[:, :, :0], W, groups=2), ValueError,
     r"x must have non-empty channel and spatial dimensions, got shape \(2, 4, 0\)"),
    (lambda: F.conv1d(X, W, dilation=6, groups=2), ValueError,
     r"the dilated kernel \(13: kernel size 3, dilation=6\) is longer than the padded input \(10: length 10, "
     r"padding=\(0, 0\)\)"),
    (lambda: F.conv1d(X, W, np.zeros(5), groups=2), ValueError, r"bias must have shape \(6,\)"),
    (lambda: F.conv1d(X, W, groups=2, algorithm="winograd"), ValueError, "applies to 3x3 2-D kernels only"),
    (lambda: F.conv1d(X, W, groups=2, algorithm="fast"), ValueError, "algorithm must be one of"),
    (lambda: F.conv1d_backward(np.zeros((2, 6, 7)), X, W, groups=2), ValueError,
     r"grad_out must have the forward output's shape \(2, 6, 8\), got \(2, 6, 7\)"),
    (lambda: F.conv1d_backward_input(np.zeros((2, 6, 8)), W, (2, 4, 10, 1), groups=2), ValueError,
     "input_shape must have 3 entries"),
    (lambda: F.conv1d_backward_input(np.zeros((6, 7)), W, (4, 10), groups=2), ValueError,
     r"grad_out must have the forward output's shape \(6, 8\), got \(6, 7\)"),
    (lambda: F.conv1d_backward_weight(np.zeros((2, 6, 8)), X, (6, 2, 3, 1), groups=2), ValueError,
     "weight_shape must have 3 entries"),
    (lambda: F.conv1d_backward_weight(np.zeros((2, 6, 8)), X[0], (6, 2, 3), groups=2), ValueError,
     r"conv1d_backward_weight expects x of shape .* got an array of shape \(4, 10\)"),
    (lambda: F.conv1d_backward_bias(np.zeros((2, 6, 8, 1))), ValueError,
     r"conv1d_backward_bias expects grad_out of shape \(N, C_out, L_out\) or \(C_out, L_out\)"),
    (lambda: F.conv_transpose1d(X, np.zeros((3, 2, 3))), ValueError,
     r"weight of shape \(3, 2, 3\) must have x's 4 input channels first \(transposed layout \(C_in, C_out / "
     r"groups, K\)\)"),
    (lambda: F.conv_transpose1d(X, np.zeros((4, 2, 3)), stride=2, output_padding=2), ValueError,
     "output_padding must be smaller than either stride or dilation, got output_padding=2, stride=2, dilation=1"),
    (lambda: F.conv_transpose1d(X, np.zeros((4, 2, 3)), padding=20), ValueError,
     "the output would be -28: padding=20 is too large for this 10 input, 3 kernel"),
    (lambda: F.conv_transpose1d(X, np.zeros((4, 2, 3)), padding="full"), ValueError,
     r"padding must be an int, \(p,\), \(\(left, right\),\), 'valid', 'same' or 'same_lower', got 'full'"),
    (lambda: F.conv_transpose1d(X, np.zeros((4, 2, 3)), stride=(2, 2)), ValueError, "stride of a 1-D op"),
    (lambda: F.conv_transpose1d(X, np.zeros((4, 2, 3)), groups=3), ValueError,
     r"groups=3 must divide the input channels \(4\)"),
    (lambda: F.conv_transpose1d(X, np.zeros((4, 2, 0))), ValueError, "kernel_length: 0"),
])
def test_bad_arguments_are_refused_in_1d_terms(call, exception, message):
    with pytest.raises(exception, match=message):
        call()
