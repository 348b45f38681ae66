"""Channels-last 3-D convolutions (``layout='NDHWC'``, issue 21): conv3d, its gradients,
conv_transpose3d and the layers on (N, D, H, W, C) volumes against the same ops channels first on
the transposed data, the NumPy reference (``convx.reference.conv3d``, transposed) and PyTorch; central
differences in float64; threads, bands of output rows, odd inputs, memory and the refusals.

NDHWC against NCDHW: the channels-last kernels sum each output's products in another order (tap-major
columns, BLAS's blocking) than the channels-first ones, so the two agree to rounding, not bit for bit:
conftest's TOLERANCES (float32 rtol 2e-4, atol 2e-5 times the largest magnitude; float64 1e-10 /
1e-12), the bound every convx convolution is held to against its reference.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import convx
import convx.functional as F
from convx import _batching, _threads, nn
from convx.reference import conv3d as ref
from conftest import DTYPES, assert_close
from test_conv3d import ALL_CASES as FIRST_CASES
from test_conv3d import CASES as FIRST_TORCH_CASES
from test_conv3d import GRADIENT_CASES, REFERENCE_PADDING, _t, _torch_padding

torch = pytest.importorskip("torch")
TF = torch.nn.functional


@pytest.fixture
def num_threads():
    before = _threads.get_num_threads()
    yield _threads.set_num_threads
    _threads.set_num_threads(before)


def last(array):
    """A channels-first batch (N, C, D, H, W) or volume (C, D, H, W) as channels last, C-contiguous."""
    return np.ascontiguousarray(np.moveaxis(array, -4, -1))


def first(array):
    return np.ascontiguousarray(np.moveaxis(array, -1, -4))


NDHWC = dict(layout="NDHWC")

# test_conv3d's cases, and more with one input channel per group (the channels-last kernels'
# depthwise loops) and few channels per group (their products per group).
EXTRA_CASES = {
    "depthwise-dilated": ((2, 5, 7, 6, 8), (5, 1, 3, 2, 3), dict(groups=5, dilation=(2, 1, 2), stride=(2, 1, 3),
                                                                 padding=((1, 2), (0, 1), (2, 0)))),
    "depthwise-multiplier-3": ((1, 4, 5, 4, 6), (12, 1, 2, 3, 3), dict(groups=4, padding=(0, 1, 1), stride=(1, 1, 2))),
    "depthwise-1x1x1": ((2, 6, 3, 4, 5), (6, 1, 1, 1, 1), dict(groups=6)),
    "pointwise-grouped": ((2, 6, 3, 4, 5), (9, 2, 1, 1, 1), dict(groups=3)),
    "7x7x7-stride-2": ((1, 3, 9, 10, 11), (8, 3, 7, 7, 7), dict(stride=2, padding=3)),
}
CASES = {**FIRST_TORCH_CASES, **EXTRA_CASES}
ALL_CASES = {**FIRST_CASES, **EXTRA_CASES}


def _arrays(rng, case, dtype):
    x_shape, w_shape, kwargs = ALL_CASES[case]
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    bias = None if case.startswith("bias-free") else rng.standard_normal(w_shape[0]).astype(dtype)
    return x, weight, bias, kwargs


# --- against channels first, the reference and PyTorch ----------------------------------------------

@pytest.mark.parametrize("case", ALL_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ndhwc_equals_ncdhw_and_the_reference(case, dtype, rng):
    x, weight, bias, kwargs = _arrays(rng, case, dtype)
    y_first = convx.conv3d(x, weight, bias, **kwargs)
    y = convx.conv3d(last(x), weight, bias, **kwargs, **NDHWC)
    assert y.dtype == dtype and y.flags.c_contiguous
    assert_close(y, last(y_first))
    ref_kwargs = {**kwargs, "padding": REFERENCE_PADDING.get(case, kwargs.get("padding", 0))}
    assert_close(first(y), ref.conv3d(x, weight, bias, **ref_kwargs))
    grad_out = rng.standard_normal(y_first.shape).astype(dtype)
    grad_x_ref = ref.conv3d_backward_input(grad_out, weight, x.shape, **ref_kwargs)
    grad_w_ref = ref.conv3d_backward_weight(grad_out, x, weight.shape, **ref_kwargs)
    grad_x = convx.conv3d_backward_input(last(grad_out), weight, last(x).shape, **kwargs, **NDHWC)
    assert_close(grad_x, last(grad_x_ref))
    assert_close(grad_x, last(convx.conv3d_backward_input(grad_out, weight, x.shape, **kwargs)))
    grad_w = convx.conv3d_backward_weight(last(grad_out), last(x), weight.shape, **kwargs, **NDHWC)
    assert_close(grad_w, grad_w_ref)
    assert_close(grad_w, convx.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs))
    fused = convx.conv3d_backward(last(grad_out), last(x), weight, **kwargs, **NDHWC)
    axes = (0, 2, 3, 4) if grad_out.ndim == 5 else (1, 2, 3)
    for ours, expected in zip(fused, (last(grad_x_ref), grad_w_ref, grad_out.astype(np.float64).sum(axis=axes))):
        assert ours.dtype == dtype
        assert_close(ours, expected)
    assert_close(convx.conv3d_backward_bias(last(grad_out), **NDHWC), grad_out.astype(np.float64).sum(axis=axes))


# (PyTorch 2.13's conv3d backward segfaults on a 7x7x7 stride-2 padding-3 kernel over a depth of 5:
# the 7x7x7 case here has a depth of 9.)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ndhwc_matches_pytorch(case, dtype, rng):
    x, weight, bias, kwargs = _arrays(rng, case, dtype)
    pad, padding = _torch_padding(kwargs.get("padding", 0))
    torch_kwargs = {**kwargs, "padding": padding}
    xt = _t(x).requires_grad_(True)
    wt = _t(weight).requires_grad_(True)
    bt = None if bias is None else _t(bias).requires_grad_(True)
    yt = TF.conv3d(xt if pad is None else TF.pad(xt, pad), wt, bt, **torch_kwargs)
    grad_out = rng.standard_normal(tuple(yt.shape)).astype(dtype)
    yt.backward(_t(grad_out))
    y = convx.conv3d(last(x), weight, bias, **kwargs, **NDHWC)
    assert_close(y, last(yt.detach().numpy()))
    grad_x, grad_w, grad_b = convx.conv3d_backward(last(grad_out), last(x), weight, **kwargs, **NDHWC)
    assert_close(grad_x, last(xt.grad.numpy()))
    assert_close(grad_w, wt.grad.numpy())
    if bt is not None:
        assert_close(grad_b, bt.grad.numpy())


TRANSPOSE_CASES = {
    "plain": ((2, 4, 3, 4, 5), (4, 3, 3, 3, 3), dict()),
    "strided": ((2, 3, 3, 4, 3), (3, 2, 3, 2, 3), dict(stride=(2, 1, 2), padding=(1, 0, 1), output_padding=(1, 0, 0))),
    "groups-dilated": ((1, 4, 3, 3, 4), (4, 3, 2, 3, 2), dict(groups=2, dilation=(2, 1, 1), padding=1, stride=2)),
    "depthwise": ((2, 6, 3, 4, 4), (6, 1, 3, 3, 3), dict(groups=6, stride=2, padding=1, output_padding=1)),
    "1x1x1": ((2, 5, 3, 4, 5), (5, 3, 1, 1, 1), dict()),
}


@pytest.mark.parametrize("case", TRANSPOSE_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_transpose3d_ndhwc_matches_pytorch_and_ncdhw(case, dtype, rng):
    x_shape, w_shape, kwargs = TRANSPOSE_CASES[case]
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    bias = rng.standard_normal(w_shape[1] * kwargs.get("groups", 1)).astype(dtype)
    y = convx.conv_transpose3d(last(x), weight, bias, **kwargs, **NDHWC)
    expected = TF.conv_transpose3d(_t(x), _t(weight), _t(bias), **kwargs).numpy()
    assert_close(y, last(expected))
    assert_close(y, last(convx.conv_transpose3d(x, weight, bias, **kwargs)))
    # unbatched, and output_size given channels last (N, D, H, W, C) or as the spatial sizes
    assert_close(convx.conv_transpose3d(last(x[0]), weight, bias, **kwargs, **NDHWC), last(expected[0]))
    if kwargs.get("output_padding"):
        sized = {k: v for k, v in kwargs.items() if k != "output_padding"}
        assert_close(convx.conv_transpose3d(last(x), weight, bias, **sized, output_size=y.shape, **NDHWC), y)
        assert_close(convx.conv_transpose3d(last(x), weight, bias, **sized, output_size=y.shape[1:4], **NDHWC), y)


@pytest.mark.parametrize("padding", [
    1, (1, 0, 2), ((1, 0), (0, 2), (2, 1)), "valid", "same", "same_lower",
])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_padding_spelling(padding, dtype, rng):
    x = rng.standard_normal((2, 3, 5, 6, 4)).astype(dtype)
    weight = rng.standard_normal((4, 3, 3, 2, 3)).astype(dtype)
    for stride in (1, (2, 1, 2)):
        kwargs = dict(padding=padding, stride=stride)
        y_first = convx.conv3d(x, weight, **kwargs)
        assert_close(convx.conv3d(last(x), weight, **kwargs, **NDHWC), last(y_first))
        grad_out = rng.standard_normal(y_first.shape).astype(dtype)
        grad_x, grad_w, grad_b = convx.conv3d_backward(last(grad_out), last(x), weight, **kwargs, **NDHWC)
        expected = convx.conv3d_backward(grad_out, x, weight, **kwargs)
        for ours, theirs in zip((grad_x, grad_w, grad_b), (last(expected[0]), *expected[1:])):
            assert_close(ours, theirs)
        transposed = convx.conv_transpose3d(last(grad_out), weight, **kwargs, output_size=x.shape[2:], **NDHWC)
        assert_close(transposed, last(convx.conv_transpose3d(grad_out, weight, **kwargs, output_size=x.shape[2:])))


@pytest.mark.parametrize("case", GRADIENT_CASES)
def test_ndhwc_gradients_match_central_differences(case, rng):
    x_shape, w_shape, kwargs = GRADIENT_CASES[case]
    x = last(rng.standard_normal(x_shape))
    weight = rng.standard_normal(w_shape)
    bias = rng.standard_normal(w_shape[0])
    grad_out = rng.standard_normal(convx.conv3d(x, weight, **kwargs, **NDHWC).shape)
    grad_x, grad_w, grad_b = convx.conv3d_backward(grad_out, x, weight, **kwargs, **NDHWC)
    assert_close(grad_x, convx.conv3d_backward_input(grad_out, weight, x.shape, **kwargs, **NDHWC))
    assert_close(grad_w, convx.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs, **NDHWC))

    def loss(x_, w_, b_):
        return float(np.sum(convx.conv3d(x_, w_, b_, **kwargs, **NDHWC) * grad_out))

    eps = 1e-6
    for _ in range(3):
        dx, dw, db = (rng.standard_normal(a.shape) for a in (x, weight, bias))
        for value, direction, grad, at in ((x, dx, grad_x, 0), (weight, dw, grad_w, 1), (bias, db, grad_b, 2)):
            def shifted(sign, value=value, direction=direction, at=at):
                args = [x, weight, bias]
                args[at] = value + sign * eps * direction
                return loss(*args)

            numeric = (shifted(1) - shifted(-1)) / (2 * eps)
            np.testing.assert_allclose(numeric, np.sum(grad * direction), rtol=1e-7, atol=1e-8)


# --- threads, bands, odd inputs -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["odd-stride-2", "wide-strided", "groups", "depthwise", "depthwise-multiplier-3",
                                  "1x1x1-strided"])
def test_thread_counts_give_the_same_results(rng, num_threads, dtype, case):
    x, weight, bias, kwargs = _arrays(rng, case, dtype)
    x = last(x)
    grad_out = rng.standard_normal(convx.conv3d(x, weight, bias, **kwargs, **NDHWC).shape).astype(dtype)
    results = []
    for n in (1, 2, 3):
        num_threads(n)
        results.append((convx.conv3d(x, weight, bias, **kwargs, **NDHWC),
                        *convx.conv3d_backward(grad_out, x, weight, **kwargs, **NDHWC)))
    for other in results[1:]:
        np.testing.assert_array_equal(other[0], results[0][0])  # each output row written by one tile
        np.testing.assert_array_equal(other[1], results[0][1])  # each input channel by one item, in order
        for ours, expected in zip(other[2:], results[0][2:]):  # sums: per-thread partials in another order
            assert_close(ours, expected)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["odd-stride-2", "depthwise-dilated", "depthwise-multiplier-3"])
def test_bands_of_output_rows_give_what_one_call_gives(rng, num_threads, dtype, n_threads, case, monkeypatch):
    """A volume whose work exceeds one call's is computed in bands of output rows (Ctrl-C is seen
    between them): the same outputs, the gradients summed or scattered band after band."""
    num_threads(n_threads)
    x, weight, bias, kwargs = _arrays(rng, case, dtype)
    x = last(x)
    grad_out = rng.standard_normal(convx.conv3d(x, weight, bias, **kwargs, **NDHWC).shape).astype(dtype)

    def run():
        return (convx.conv3d(x, weight, bias, **kwargs, **NDHWC),
                *convx.conv3d_backward(grad_out, x, weight, **kwargs, **NDHWC),
                convx.conv_transpose3d(grad_out, weight, **kwargs, output_size=x.shape[1:4], **NDHWC),
                convx.conv3d_backward_input(grad_out, weight, x.shape, **kwargs, **NDHWC),
                convx.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs, **NDHWC))

    whole = run()
    calls = []
    forward = convx._core.conv3d_forward_last
    monkeypatch.setattr(_batching, "SUB_BATCH_WORK", 1)
    monkeypatch.setattr(convx._core, "conv3d_forward_last", lambda *args: calls.append(args[-3:-1]) or forward(*args))
    banded = run()
    assert len(calls) == x.shape[0] * whole[0].shape[1] * whole[0].shape[2]  # one call per output row of each image
    for ours, expected in zip(banded, whole):
        assert_close(ours, expected)



@pytest.mark.parametrize("budget", [1, 7, 64])
def test_tiles_of_any_length_give_the_reference(rng, num_threads, budget):
    """Column tiles of a few voxels (cut mid-row, mid-slice) give what whole-volume tiles give."""
    x, weight, bias, kwargs = _arrays(rng, "groups", np.float64)
    x = last(x)
    grad_out = rng.standard_normal(convx.conv3d(x, weight, bias, **kwargs, **NDHWC).shape)
    whole = (convx.conv3d(x, weight, bias, **kwargs, **NDHWC),
             *convx.conv3d_backward(grad_out, x, weight, **kwargs, **NDHWC))
    before = convx._core.set_conv3d_column_budget(budget * weight[0].size)
    try:
        for n in (1, 2):
            num_threads(n)
            tiled = (convx.conv3d(x, weight, bias, **kwargs, **NDHWC),
                     *convx.conv3d_backward(grad_out, x, weight, **kwargs, **NDHWC))
            for ours, expected in zip(tiled, whole):
                assert_close(ours, expected)
    finally:
        convx._core.set_conv3d_column_budget(before)


def test_empty_batch(rng):
    x = np.zeros((0, 4, 5, 6, 3), dtype=np.float32)
    weight = rng.standard_normal((2, 3, 3, 3, 3)).astype(np.float32)
    bias = np.ones(2, dtype=np.float32)
    assert convx.conv3d(x, weight, bias, padding=1, **NDHWC).shape == (0, 4, 5, 6, 2)
    grad_out = np.zeros((0, 4, 5, 6, 2), dtype=np.float32)
    grad_x, grad_w, grad_b = convx.conv3d_backward(grad_out, x, weight, padding=1, **NDHWC)
    assert grad_x.shape == x.shape
    np.testing.assert_array_equal(grad_w, 0)
    np.testing.assert_array_equal(grad_b, 0)
    assert convx.conv3d_backward_input(grad_out, weight, x.shape, padding=1, **NDHWC).shape == x.shape
    assert convx.conv3d_backward_bias(grad_out, **NDHWC).shape == (2,)
    assert convx.conv_transpose3d(np.zeros((0, 2, 2, 2, 2), np.float32), weight, **NDHWC).shape == (0, 4, 4, 4, 3)


def test_unbatched_volumes(rng):
    x, weight, bias, kwargs = _arrays(rng, "unbatched", np.float64)
    y = convx.conv3d(last(x), weight, bias, **kwargs, **NDHWC)
    assert y.ndim == 4
    assert_close(y, last(convx.conv3d(x, weight, bias, **kwargs)))
    grad_out = rng.standard_normal(y.shape)
    grad_x, grad_w, grad_b = convx.conv3d_backward(grad_out, last(x), weight, **kwargs, **NDHWC)
    expected = convx.conv3d_backward(first(grad_out), x, weight, **kwargs)
    assert_close(grad_x, last(expected[0]))
    assert_close(grad_w, expected[1])
    assert_close(grad_b, expected[2])
    assert_close(convx.conv3d_backward_input(grad_out, weight, last(x).shape, **kwargs, **NDHWC), grad_x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_and_read_only_inputs_are_read_not_changed(rng, dtype):
    x_big = rng.standard_normal((2, 6, 7, 16, 6)).astype(dtype)
    w_big = rng.standard_normal((4, 3, 3, 3, 6)).astype(dtype)
    x = x_big[:, :, ::-1, ::2, ::2]  # (2, 6, 7, 8, 3): strided, reversed
    weight = w_big[..., ::2]
    grad_out = rng.standard_normal((2, 6, 4, 8, 8)).astype(dtype)[..., ::2]  # (2, 6, 4, 8, 4)
    for array in (x, weight, grad_out):
        array.flags.writeable = False
    before = [a.copy() for a in (x, weight, grad_out)]
    kwargs = dict(stride=(1, 2, 1), padding=1)
    x_first = first(x)
    assert_close(convx.conv3d(x, weight, **kwargs, **NDHWC), last(ref.conv3d(x_first, weight, **kwargs)))
    grad_x, grad_w, _ = convx.conv3d_backward(grad_out, x, weight, **kwargs, **NDHWC)
    assert_close(grad_x, last(ref.conv3d_backward_input(first(grad_out), weight, x_first.shape, **kwargs)))
    assert_close(grad_w, ref.conv3d_backward_weight(first(grad_out), x_first, weight.shape, **kwargs))
    for array, copy in zip((x, weight, grad_out), before):
        np.testing.assert_array_equal(array, copy)


def test_nan_and_inf_propagate_as_in_pytorch(rng):
    x = rng.standard_normal((1, 2, 5, 5, 5))
    weight = rng.standard_normal((3, 2, 3, 3, 3))
    x[0, 0, 2, 2, 2] = np.nan
    x[0, 1, 0, 4, 1] = np.inf
    x[0, 1, 4, 0, 0] = -np.inf
    y = convx.conv3d(last(x), weight, padding=1, **NDHWC)
    expected = last(TF.conv3d(_t(x), _t(weight), padding=1).numpy())
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(y), np.isposinf(expected))
    np.testing.assert_array_equal(np.isneginf(y), np.isneginf(expected))
    finite = np.isfinite(expected)
    assert_close(y[finite], expected[finite])
    grad_out = rng.standard_normal(y.shape)
    grad_out[0, 1, 1, 1, 2] = np.nan
    grad_x, grad_w, grad_b = convx.conv3d_backward(grad_out, last(x), weight, padding=1, **NDHWC)
    expected = convx.conv3d_backward(first(grad_out), x, weight, padding=1)
    for ours, theirs in zip((grad_x, grad_w, grad_b), (last(expected[0]), *expected[1:])):
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
        np.testing.assert_array_equal(np.isinf(ours), np.isinf(theirs))
    # an infinite weight times the zero padding is NaN, as the formula's
    weight[1, 0, 0, 0, 0] = np.inf
    ones = np.ones((1, 2, 3, 3, 3))
    y = convx.conv3d(last(ones), weight, padding=1, **NDHWC)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(last(ref.conv3d(ones, weight, padding=1))))
    assert np.isnan(y[0, 0, 0, 0, 1]) and np.isposinf(y[0, 2, 2, 2, 1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_nan_and_inf_meet_the_padding_as_in_the_reference(rng, dtype, multiplier):
    """The depthwise loops skip the taps in the padding: an infinite weight (the forward) or a
    non-finite grad_out (the weight gradient) times the padding's zeros must still be NaN, as in
    the reference, PyTorch and the channels-first kernels."""
    from convx import _core

    x = rng.standard_normal((1, 2, 3, 4, 5)).astype(dtype)
    weight = rng.standard_normal((2 * multiplier, 1, 3, 3, 3)).astype(dtype)
    kwargs = dict(padding=1, groups=2)
    weight[0, 0, 0, 0, 0] = np.inf
    y = convx.conv3d(last(x), weight, **kwargs, **NDHWC)
    expected = ref.conv3d(x, weight, **kwargs)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(last(expected)))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(last(expected)))
    assert np.isnan(y).sum() > 1
    finite = np.isfinite(expected)
    assert_close(first(y)[finite], expected[finite])
    weight[0, 0, 0, 0, 0] = 0.5
    grad_out = rng.standard_normal(expected.shape).astype(dtype)
    grad_out[0, 0, 1, 2, 3] = np.nan
    grad_out[0, -1, 0, 0, 0] = -np.inf
    grad_w = convx.conv3d_backward_weight(last(grad_out), last(x), weight.shape, **kwargs, **NDHWC)
    expected_w = convx.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs)
    torch_w = torch.ops.aten.convolution_backward(
        _t(grad_out), _t(x), _t(weight), None, [1] * 3, [1] * 3, [1] * 3, False, [0] * 3, 2, [False, True, False])[1]
    np.testing.assert_array_equal(np.isnan(grad_w), np.isnan(torch_w.numpy()))
    np.testing.assert_array_equal(np.isnan(grad_w), np.isnan(expected_w))
    np.testing.assert_array_equal(np.isinf(grad_w), np.isinf(expected_w))
    assert np.isnan(grad_w[0]).all()  # the NaN meets every tap, the padding's zeros too
    finite = np.isfinite(expected_w)
    assert_close(grad_w[finite], expected_w[finite])
    # without the padding, the loops take the same non-finite values
    grad_out = rng.standard_normal(ref.conv3d(x, weight, groups=2).shape).astype(dtype)
    grad_out[0, 0, 0, 1, 1] = np.inf
    grad_w = convx.conv3d_backward_weight(last(grad_out), last(x), weight.shape, groups=2, **NDHWC)
    assert _core.conv3d_ran()["weight"] == "depthwise"
    expected_w = convx.conv3d_backward_weight(grad_out, x, weight.shape, groups=2)
    np.testing.assert_array_equal(np.isnan(grad_w), np.isnan(expected_w))
    np.testing.assert_array_equal(np.isinf(grad_w), np.isinf(expected_w))


@pytest.mark.parametrize("kernel", ["blas", "default"])
def test_gemm_kernel_setting_gives_the_same(rng, kernel):
    """The channels-last kernels call BLAS whatever convx's GEMM setting (the channels-first ones
    switch): the same result either way."""
    from convx import _core

    x, weight, bias, kwargs = _arrays(rng, "wide-both", np.float32)
    level = _core.gemm_kernel()
    if kernel == "blas":
        _core.set_gemm_kernel("blas")
    try:
        y = convx.conv3d(last(x), weight, bias, **kwargs, **NDHWC)
    finally:
        _core.set_gemm_kernel(level)
    assert_close(y, last(ref.conv3d(x, weight, bias, **kwargs)))


def _extra_memory(call):
    """The tracemalloc peak of ``call()`` less the bytes of the arrays it returns."""
    tracemalloc.start()
    try:
        result = call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    returned = result if isinstance(result, tuple) else (result,)
    return peak - sum(array.nbytes for array in returned)


@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("op", ["forward", "input", "weight", "fused", "transpose"])
def test_scratch_memory_does_not_grow_with_the_batch(rng, num_threads, op, depthwise):
    """The column tiles are per thread and bounded: a batch of 16 volumes takes no more scratch than
    one of 2 beyond what its contiguous copies of the inputs need (none here: they are contiguous)."""
    num_threads(2)
    weight = rng.standard_normal((6, 1, 3, 3, 3) if depthwise else (8, 6, 3, 3, 3)).astype(np.float32)
    c_out = weight.shape[0]
    kwargs = dict(padding=1, groups=6 if depthwise else 1)

    def extra(batch):
        x = rng.standard_normal((batch, 8, 10, 12, 6)).astype(np.float32)
        grad_out = rng.standard_normal((batch, 8, 10, 12, c_out)).astype(np.float32)
        calls = {
            "forward": lambda: convx.conv3d(x, weight, **kwargs, **NDHWC),
            "input": lambda: convx.conv3d_backward_input(grad_out, weight, x.shape, **kwargs, **NDHWC),
            "weight": lambda: convx.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs, **NDHWC),
            "fused": lambda: convx.conv3d_backward(grad_out, x, weight, **kwargs, **NDHWC),
            "transpose": lambda: convx.conv_transpose3d(grad_out, weight, **kwargs, **NDHWC),
        }
        return _extra_memory(calls[op])

    small, large = extra(2), extra(16)
    one_volume = 8 * 10 * 12 * 8 * 4
    assert large <= small + one_volume, (small, large)
    # and the scratch is the column tiles' (1 Mi elements a thread at most) and the reordered weight
    assert large <= 2 * (1 << 20) * 4 + 8 * weight.nbytes + (1 << 20)


def test_calls_from_several_python_threads_at_once(rng):
    import concurrent.futures

    x, weight, bias, kwargs = _arrays(rng, "odd-stride-2", np.float64)
    x = last(x)
    expected = convx.conv3d(x, weight, bias, **kwargs, **NDHWC)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: convx.conv3d(x, weight, bias, **kwargs, **NDHWC), range(8)))
    for result in results:
        np.testing.assert_array_equal(result, expected)


# --- refusals ---------------------------------------------------------------------------------------------

def test_a_wrong_layout_is_refused_naming_both(rng):
    x = rng.standard_normal((1, 4, 4, 4, 2))
    weight = rng.standard_normal((3, 2, 3, 3, 3))
    grad_out = rng.standard_normal((1, 2, 2, 2, 3))
    calls = [
        lambda layout: F.conv3d(x, weight, layout=layout),
        lambda layout: F.conv3d_backward_input(grad_out, weight, x.shape, layout=layout),
        lambda layout: F.conv3d_backward_weight(grad_out, x, weight.shape, layout=layout),
        lambda layout: F.conv3d_backward_bias(grad_out, layout=layout),
        lambda layout: F.conv3d_backward(grad_out, x, weight, layout=layout),
        lambda layout: F.conv_transpose3d(x, weight.transpose(1, 0, 2, 3, 4), layout=layout),
    ]
    for call in calls:
        for layout in ("NHWC", "ndhwc", "NCHW", None, 5):
            with pytest.raises(ValueError, match=r"layout must be 'NCDHW' \(channels first, PyTorch's\) or 'NDHWC'"):
                call(layout)


def test_a_shape_fitting_neither_layout_is_refused_naming_the_layouts(rng, monkeypatch):
    def no_kernels(*args):
        raise AssertionError("a compiled kernel was called")

    for name in ("conv3d_forward_last", "conv3d_backward_input_last", "conv3d_backward_weight_last",
                 "conv3d_forward", "conv3d_backward_input", "conv3d_backward_weight"):
        monkeypatch.setattr(convx._core, name, no_kernels)
    weight = rng.standard_normal((3, 2, 3, 3, 3))
    channels_first_x = rng.standard_normal((1, 2, 4, 4, 4))
    # a channels-first volume given as channels last: C = 4 where the weight wants 2
    with pytest.raises(ValueError, match=r"x read as \(N, D, H, W, C_in\), layout='NDHWC'; if it is "
                                         r"\(N, C_in, D, H, W\), pass layout='NCDHW'"):
        F.conv3d(channels_first_x, weight, **NDHWC)
    with pytest.raises(ValueError, match=r"x read as \(N, C_in, D, H, W\), layout='NCDHW'; if it is "
                                         r"\(N, D, H, W, C_in\), pass layout='NDHWC'"):
        F.conv3d(last(channels_first_x[:, :, :, :, :3]), weight)
    with pytest.raises(ValueError, match=r"input_shape read as \(N, D, H, W, C_in\)"):
        F.conv3d_backward_input(rng.standard_normal((1, 2, 2, 2, 3)), weight, (1, 2, 4, 4, 4), **NDHWC)
    with pytest.raises(ValueError, match="layout='NDHWC'"):
        F.conv3d_backward_weight(rng.standard_normal((1, 2, 2, 2, 3)), channels_first_x, weight.shape, **NDHWC)
    with pytest.raises(ValueError, match="layout='NDHWC'"):
        F.conv3d_backward(rng.standard_normal((1, 2, 2, 2, 3)), channels_first_x, weight, **NDHWC)
    with pytest.raises(ValueError, match=r"weight.shape\[0\].*layout='NDHWC'"):
        F.conv_transpose3d(channels_first_x, weight.transpose(1, 0, 2, 3, 4), **NDHWC)
    with pytest.raises(ValueError, match=r"x must be 4 or 5-dimensional, got an array of shape \(4, 4, 4\)"):
        F.conv3d(rng.standard_normal((4, 4, 4)), weight, **NDHWC)


def test_grad_out_in_the_wrong_layout_is_refused(rng, monkeypatch):
    def no_kernels(*args):
        raise AssertionError("a compiled kernel was called")

    for name in ("conv3d_forward_last", "conv3d_backward_input_last", "conv3d_backward_weight_last"):
        monkeypatch.setattr(convx._core, name, no_kernels)
    weight = rng.standard_normal((3, 2, 3, 3, 3))
    x = rng.standard_normal((1, 5, 6, 7, 2))  # output (1, 3, 4, 5, 3) channels last
    grad_out_first = rng.standard_normal((1, 3, 3, 4, 5))  # the same output channels first
    message = r"grad_out must have the forward output's shape \(1, 3, 4, 5, 3\), got \(1, 3, 3, 4, 5\)"
    with pytest.raises(ValueError, match=message):
        F.conv3d_backward(grad_out_first, x, weight, **NDHWC)
    with pytest.raises(ValueError, match=message):
        F.conv3d_backward_input(grad_out_first, weight, x.shape, **NDHWC)
    with pytest.raises(ValueError, match=message):
        F.conv3d_backward_weight(grad_out_first, x, weight.shape, **NDHWC)


# --- layers -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["plain", "groups", "depthwise", "per-side", "unbatched"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv3d_layer_ndhwc_matches_torch_module(case, dtype, rng):
    x, _, _, kwargs = _arrays(rng, case, dtype)
    x_shape, w_shape, _ = ALL_CASES[case]
    c_in = x_shape[-4]
    layer = nn.Conv3d(c_in, w_shape[0], w_shape[2:], **kwargs, dtype=dtype, rng=0, layout="NDHWC")
    reference_layer = nn.Conv3d(c_in, w_shape[0], w_shape[2:], **kwargs, dtype=dtype, rng=0)
    assert layer.layout == "NDHWC" and "layout='NDHWC'" in repr(layer)
    y = layer(last(x))
    y_first = reference_layer(x)
    assert_close(y, last(y_first))
    grad_out = rng.standard_normal(y_first.shape).astype(dtype)
    grad_x = layer.backward(last(grad_out))
    assert_close(grad_x, last(reference_layer.backward(grad_out)))
    for name in layer.grads:
        assert_close(layer.grads[name], reference_layer.grads[name])
    with pytest.raises(ValueError, match="layout"):
        layer(x if x.shape[-1] != c_in else x[..., :1])


@pytest.mark.parametrize("case", TRANSPOSE_CASES)
def test_conv_transpose3d_layer_ndhwc(case, rng):
    x_shape, w_shape, kwargs = TRANSPOSE_CASES[case]
    groups = kwargs.get("groups", 1)
    x = rng.standard_normal(x_shape)
    layer = nn.ConvTranspose3d(x_shape[1], w_shape[1] * groups, w_shape[2:], **kwargs, dtype=np.float64, rng=1,
                               layout="NDHWC")
    reference_layer = nn.ConvTranspose3d(x_shape[1], w_shape[1] * groups, w_shape[2:], **kwargs, dtype=np.float64,
                                         rng=1)
    y = layer(last(x))
    y_first = reference_layer(x)
    assert_close(y, last(y_first))
    grad_out = rng.standard_normal(y_first.shape)
    assert_close(layer.backward(last(grad_out)), last(reference_layer.backward(grad_out)))
    for name in layer.grads:
        assert_close(layer.grads[name], reference_layer.grads[name])


def test_layers_refuse_a_wrong_layout():
    for layer in (nn.Conv3d, nn.ConvTranspose3d):
        with pytest.raises(ValueError, match=r"layout must be 'NCDHW' \(channels first, PyTorch's\) or 'NDHWC'"):
            layer(2, 2, 3, layout="NHWC")
