"""3-D convolutions (conv3d, its gradients, conv_transpose3d, nn.Conv3d, nn.ConvTranspose3d): convx
against the NumPy references of ``convx.reference.conv3d`` (written from the formulas) and PyTorch,
on a named grid in float32 and float64; central differences in float64; thread counts, bands of
output rows, odd inputs (empty batches, strided and read-only arrays, NaN and inf) and the refusals."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import convx
import convx.functional as F
from convx import _batching, _threads, nn
from convx.reference import conv3d as ref
from conftest import DTYPES, assert_close

torch = pytest.importorskip("torch")
TF = torch.nn.functional


@pytest.fixture
def num_threads():
    before = _threads.get_num_threads()
    yield _threads.set_num_threads
    _threads.set_num_threads(before)


def _t(array):
    return torch.from_numpy(np.ascontiguousarray(array))


def _torch_padding(padding):
    """Per-side padding as PyTorch takes it: F.pad of the input (last axis first), then no padding."""
    if isinstance(padding, tuple) and isinstance(padding[0], tuple):
        return [side for pair in reversed(padding) for side in pair], 0
    return None, padding


# (input shape, weight shape, conv3d keywords)
CASES = {
    "plain": ((2, 3, 5, 6, 7), (4, 3, 3, 3, 3), dict()),
    "bias-free-1x1x1": ((2, 5, 4, 3, 6), (3, 5, 1, 1, 1), dict()),
    "1x1x1-strided": ((2, 4, 5, 6, 7), (3, 4, 1, 1, 1), dict(stride=(2, 1, 2))),
    "1x1x1-padded": ((1, 3, 3, 4, 5), (2, 3, 1, 1, 1), dict(padding=1)),
    "odd-stride-2": ((2, 3, 7, 9, 8), (5, 3, 3, 3, 3), dict(stride=2, padding=1)),
    "stride-3": ((1, 2, 8, 9, 10), (4, 2, 2, 3, 3), dict(stride=(3, 2, 3), padding=(0, 1, 2))),
    "dilated": ((2, 2, 7, 8, 9), (3, 2, 3, 2, 3), dict(dilation=(2, 3, 1), padding=(2, 1, 0))),
    "groups": ((2, 4, 5, 6, 7), (6, 2, 2, 3, 2), dict(stride=(1, 2, 1), padding=(1, 0, 2), dilation=(2, 1, 1),
                                                     groups=2)),
    "depthwise": ((2, 4, 5, 5, 5), (4, 1, 3, 3, 3), dict(padding=1, groups=4)),
    "depthwise-multiplier": ((1, 3, 4, 6, 5), (6, 1, 3, 3, 3), dict(padding=(1, 1, 1), groups=3, stride=(1, 2, 1))),
    "per-side": ((1, 2, 5, 6, 7), (3, 2, 3, 2, 3), dict(padding=((1, 0), (0, 1), (2, 1)), stride=2)),
    "same": ((1, 3, 5, 6, 4), (2, 3, 3, 2, 3), dict(padding="same", dilation=(1, 2, 1))),
    "valid": ((2, 2, 4, 5, 6), (3, 2, 2, 2, 2), dict(padding="valid")),
    "large-padding": ((1, 2, 2, 3, 2), (2, 2, 2, 2, 2), dict(padding=3, stride=2)),
    "flat-depth": ((3, 2, 1, 9, 10), (4, 2, 1, 3, 3), dict(stride=(1, 2, 2), padding=(0, 1, 1))),
    "size-one": ((2, 1, 1, 1, 1), (2, 1, 1, 1, 1), dict()),
    "unbatched": ((3, 4, 5, 6), (2, 3, 2, 2, 2), dict(stride=(2, 1, 1))),
    # 32 output channels or more: the packed weight gradient's path
    "wide": ((2, 3, 6, 5, 7), (32, 3, 3, 2, 3), dict(padding=((1, 0), (1, 1), (0, 2)))),
    "wide-strided": ((1, 5, 9, 6, 5), (40, 5, 2, 3, 3), dict(stride=(2, 1, 2), padding=1, dilation=(1, 2, 1))),
    # 8 input channels per thread or more: the packed input gradient's path
    "wide-in": ((2, 24, 5, 6, 5), (4, 24, 3, 2, 3), dict(stride=(2, 1, 1), padding=((1, 1), (0, 1), (1, 0)))),
    "wide-both": ((1, 17, 6, 5, 7), (33, 17, 2, 3, 2), dict(stride=(1, 2, 1), padding=(0, 1, 1), dilation=(1, 1, 2))),
}
# 'same' at a stride (ONNX's SAME_UPPER, SAME_LOWER) and per-side padding: PyTorch has no such
# argument (compared after F.pad where it can be; the words against the reference only).
REFERENCE_ONLY_CASES = {
    "same-strided": ((1, 2, 7, 6, 5), (3, 2, 3, 2, 3), dict(padding="same", stride=(2, 3, 2))),
    "same-lower": ((2, 2, 5, 6, 7), (2, 2, 2, 3, 4), dict(padding="same_lower", stride=(1, 2, 2))),
}
# The reference knows 'same' only: ONNX's SAME_LOWER as the sides it gives, worked out by hand (totals
# of 1, 1 and 3 zeros along D, H and W, the odd one in front).
REFERENCE_PADDING = {"same-lower": ((1, 0), (1, 0), (2, 1))}
ALL_CASES = {**CASES, **REFERENCE_ONLY_CASES}


def _arrays(rng, case, dtype):
    x_shape, w_shape, kwargs = ALL_CASES[case]
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    bias = None if case.startswith("bias-free") else rng.standard_normal(w_shape[0]).astype(dtype)
    return x, weight, bias, kwargs


@pytest.mark.parametrize("case", ALL_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv3d_matches_reference(case, dtype, rng):
    x, weight, bias, kwargs = _arrays(rng, case, dtype)
    y = convx.conv3d(x, weight, bias, **kwargs)
    ref_kwargs = {**kwargs, "padding": REFERENCE_PADDING.get(case, kwargs.get("padding", 0))}
    expected = ref.conv3d(x, weight, bias, **ref_kwargs)
    assert y.dtype == dtype
    assert_close(y, expected)
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    grad_x_ref = ref.conv3d_backward_input(grad_out, weight, x.shape, **ref_kwargs)
    grad_w_ref = ref.conv3d_backward_weight(grad_out, x, weight.shape, **ref_kwargs)
    assert_close(convx.conv3d_backward_input(grad_out, weight, x.shape, **kwargs), grad_x_ref)
    assert_close(convx.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs), grad_w_ref)
    grad_x, grad_w, grad_b = convx.conv3d_backward(grad_out, x, weight, **kwargs)
    assert_close(grad_x, grad_x_ref)
    assert_close(grad_w, grad_w_ref)
    axes = (0, 2, 3, 4) if grad_out.ndim == 5 else (1, 2, 3)
    assert_close(grad_b, grad_out.astype(np.float64).sum(axis=axes))
    assert_close(convx.conv3d_backward_bias(grad_out), grad_out.astype(np.float64).sum(axis=axes))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv3d_matches_pytorch(case, dtype, rng):
    x, weight, bias, kwargs = _arrays(rng, case, dtype)
    pre_pad, padding = _torch_padding(kwargs.get("padding", 0))
    x_t = _t(x).requires_grad_()
    w_t = _t(weight).requires_grad_()
    b_t = None if bias is None else _t(bias).requires_grad_()
    with warnings.catch_warnings():
        # PyTorch warns that 'same' with an even kernel copies the input.
        warnings.simplefilter("ignore", UserWarning)
        y_t = TF.conv3d(TF.pad(x_t, pre_pad) if pre_pad else x_t, w_t, b_t, **{**kwargs, "padding": padding})
    y = convx.conv3d(x, weight, bias, **kwargs)
    assert_close(y, y_t.detach().numpy())
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    grads_t = torch.autograd.grad(y_t, [t for t in (x_t, w_t, b_t) if t is not None], _t(grad_out))
    grads = convx.conv3d_backward(grad_out, x, weight, **kwargs)
    for ours, theirs in zip(grads, grads_t):
        assert_close(ours, theirs.numpy())


TRANSPOSE_CASES = {
    "plain": ((2, 3, 3, 4, 5), (3, 2, 3, 3, 3), dict()),
    "strided": ((2, 4, 3, 4, 3), (4, 3, 2, 3, 2), dict(stride=(2, 1, 3), padding=(1, 0, 1), output_padding=(1, 0, 2),
                                                       groups=2, dilation=(1, 2, 1))),
    "dilation-above-stride": ((1, 2, 3, 3, 4), (2, 3, 2, 2, 2), dict(stride=1, dilation=3, output_padding=(2, 1, 0))),
    "depthwise": ((2, 4, 3, 4, 4), (4, 1, 3, 3, 3), dict(stride=2, padding=1, groups=4)),
    "1x1x1": ((2, 5, 3, 4, 5), (5, 3, 1, 1, 1), dict()),
    "unbatched": ((2, 3, 3, 3), (2, 2, 2, 2, 2), dict(stride=2, padding=1, output_padding=1)),
}


@pytest.mark.parametrize("case", TRANSPOSE_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_transpose3d_matches_pytorch_and_reference(case, dtype, rng):
    x_shape, w_shape, kwargs = TRANSPOSE_CASES[case]
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    bias = rng.standard_normal(w_shape[1] * kwargs.get("groups", 1)).astype(dtype)
    y = convx.conv_transpose3d(x, weight, bias, **kwargs)
    assert_close(y, TF.conv_transpose3d(_t(x), _t(weight), _t(bias), **kwargs).numpy())
    assert_close(y, ref.conv_transpose3d(x, weight, bias, **kwargs))


def test_conv_transpose3d_padding_spellings(rng):
    x = rng.standard_normal((1, 2, 3, 3, 3))
    weight = rng.standard_normal((2, 1, 3, 3, 3))
    full = convx.conv_transpose3d(x, weight, stride=2)
    cropped = convx.conv_transpose3d(x, weight, stride=2, padding=((1, 0), (0, 2), (1, 1)))
    assert_close(cropped, full[:, :, 1:, :-2, 1:-1])
    assert_close(cropped, ref.conv_transpose3d(x, weight, stride=2, padding=((1, 0), (0, 2), (1, 1))))
    same = convx.conv_transpose3d(x, weight, stride=2, padding="same")
    assert same.shape == (1, 1, 6, 6, 6)
    # 7 elements per axis in full, 6 kept: the odd one removed at the end ('same') or the start
    assert_close(same, full[:, :, :6, :6, :6])
    assert_close(convx.conv_transpose3d(x, weight, stride=2, padding="same_lower"), full[:, :, 1:, 1:, 1:])
    sized = convx.conv_transpose3d(x, weight, stride=2, padding=1, output_size=(6, 5, 6))
    expected = TF.conv_transpose3d(_t(x), _t(weight), stride=2, padding=1, output_padding=(1, 0, 1)).numpy()
    assert_close(sized, expected)


# --- gradients by central differences (float64) ------------------------------------------------------

GRADIENT_CASES = {
    "plain": ((1, 2, 3, 4, 3), (2, 2, 2, 2, 2), dict(padding=1)),
    "strided-dilated-groups": ((2, 4, 4, 5, 4), (2, 2, 2, 2, 2), dict(stride=(2, 1, 2), dilation=(1, 2, 1), groups=2,
                                                                     padding=((1, 0), (0, 1), (1, 1)))),
    "same": ((1, 2, 3, 3, 4), (3, 2, 3, 2, 3), dict(padding="same")),
}


def _directional(f, value, direction, eps=1e-6):
    return (f(value + eps * direction) - f(value - eps * direction)) / (2 * eps)


@pytest.mark.parametrize("case", GRADIENT_CASES)
def test_conv3d_gradients_match_central_differences(case, rng):
    x_shape, w_shape, kwargs = GRADIENT_CASES[case]
    x = rng.standard_normal(x_shape)
    weight = rng.standard_normal(w_shape)
    bias = rng.standard_normal(w_shape[0])
    grad_out = rng.standard_normal(convx.conv3d(x, weight, **kwargs).shape)
    grad_x, grad_w, grad_b = convx.conv3d_backward(grad_out, x, weight, **kwargs)

    def loss(x_, w_, b_):
        return float(np.sum(convx.conv3d(x_, w_, b_, **kwargs) * grad_out))

    for _ in range(3):
        dx, dw, db = (rng.standard_normal(a.shape) for a in (x, weight, bias))
        np.testing.assert_allclose(_directional(lambda v: loss(v, weight, bias), x, dx), np.sum(grad_x * dx),
                                   rtol=1e-7, atol=1e-8)
        np.testing.assert_allclose(_directional(lambda v: loss(x, v, bias), weight, dw), np.sum(grad_w * dw),
                                   rtol=1e-7, atol=1e-8)
        np.testing.assert_allclose(_directional(lambda v: loss(x, weight, v), bias, db), np.sum(grad_b * db),
                                   rtol=1e-7, atol=1e-8)


def test_conv_transpose3d_is_the_adjoint_of_conv3d(rng):
    """<conv3d(x), y> = <x, conv_transpose3d(y)> (the weight the same array in both layouts)."""
    x = rng.standard_normal((2, 4, 5, 6, 5))
    weight = rng.standard_normal((6, 2, 3, 2, 3))
    kwargs = dict(stride=(2, 1, 2), padding=(1, 0, 1), dilation=(1, 2, 1), groups=2)
    y_shape = convx.conv3d(x, weight, **kwargs).shape
    y = rng.standard_normal(y_shape)
    back = convx.conv_transpose3d(y, weight, **kwargs, output_size=x.shape[2:])
    np.testing.assert_allclose(np.sum(convx.conv3d(x, weight, **kwargs) * y), np.sum(x * back), rtol=1e-10)


# --- threads, bands, odd inputs -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["odd-stride-2", "wide-strided", "wide-in"])
def test_thread_counts_give_the_same_results(rng, num_threads, dtype, case):
    x, weight, bias, kwargs = _arrays(rng, case, dtype)
    grad_out = rng.standard_normal(convx.conv3d(x, weight, bias, **kwargs).shape).astype(dtype)
    results = []
    for n in (1, 2, 3):
        num_threads(n)
        results.append((convx.conv3d(x, weight, bias, **kwargs), *convx.conv3d_backward(grad_out, x, weight, **kwargs)))
    for other in results[1:]:
        np.testing.assert_array_equal(other[0], results[0][0])  # each output written by one tile
        np.testing.assert_array_equal(other[1], results[0][1])  # each input channel by one item
        for ours, first in zip(other[2:], results[0][2:]):  # sums: per-thread partials in another order
            assert_close(ours, first)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bands_of_output_rows_give_what_one_call_gives(rng, num_threads, dtype, n_threads, monkeypatch):
    """A volume whose work exceeds one call's is computed in bands of output rows (Ctrl-C is seen
    between them): the same outputs, the gradients summed or scattered band after band."""
    num_threads(n_threads)
    x, weight, bias, kwargs = _arrays(rng, "odd-stride-2", dtype)
    grad_out = rng.standard_normal(convx.conv3d(x, weight, bias, **kwargs).shape).astype(dtype)
    whole = (convx.conv3d(x, weight, bias, **kwargs), *convx.conv3d_backward(grad_out, x, weight, **kwargs),
             convx.conv_transpose3d(grad_out, weight, stride=2, padding=1, output_size=x.shape[2:]))
    calls = []
    forward = convx._core.conv3d_forward
    monkeypatch.setattr(_batching, "SUB_BATCH_WORK", 1)
    monkeypatch.setattr(convx._core, "conv3d_forward", lambda *args: calls.append(args[-3:-1]) or forward(*args))
    banded = (convx.conv3d(x, weight, bias, **kwargs), *convx.conv3d_backward(grad_out, x, weight, **kwargs),
              convx.conv_transpose3d(grad_out, weight, stride=2, padding=1, output_size=x.shape[2:]))
    rows = whole[0].shape[2] * whole[0].shape[3]
    assert len(calls) == x.shape[0] * rows  # one call per output row of each image
    for ours, expected in zip(banded, whole):
        assert_close(ours, expected)


@pytest.mark.parametrize("kernel", ["blas", "default"])
def test_forward_of_a_range_of_output_depth_slices(rng, kernel):
    """One kernel call for the output rows of depth slices [1, 3) writes those slices, as the whole
    call does (the packed kernel's path takes whole depth slices), and nothing else."""
    import importlib

    module = importlib.import_module("convx.functional.conv3d")
    x, weight, bias, kwargs = _arrays(rng, "odd-stride-2", np.float32)
    plan = module._plan_conv3d(x.shape, weight.shape, kwargs["stride"], kwargs["padding"], 1, 1)
    whole = convx.conv3d(x, weight, bias, **kwargs)
    level = convx._core.gemm_kernel()
    if kernel == "blas":
        convx._core.set_gemm_kernel("blas")
    try:
        out = np.full_like(whole, 7.0)
        out_h = whole.shape[3]
        convx._core.conv3d_forward(x, weight.reshape(weight.shape[0], -1), bias, out, *plan.kernel_args(),
                                   out_h, 3 * out_h, 2)
    finally:
        convx._core.set_gemm_kernel(level)
    assert_close(out[:, :, 1:3], whole[:, :, 1:3])
    np.testing.assert_array_equal(out[:, :, [0, 3]], 7.0)


def test_empty_batch(rng):
    x = np.zeros((0, 3, 4, 5, 6), dtype=np.float32)
    weight = rng.standard_normal((2, 3, 3, 3, 3)).astype(np.float32)
    bias = np.ones(2, dtype=np.float32)
    assert convx.conv3d(x, weight, bias, padding=1).shape == (0, 2, 4, 5, 6)
    grad_out = np.zeros((0, 2, 4, 5, 6), dtype=np.float32)
    grad_x, grad_w, grad_b = convx.conv3d_backward(grad_out, x, weight, padding=1)
    assert grad_x.shape == x.shape
    np.testing.assert_array_equal(grad_w, 0)
    np.testing.assert_array_equal(grad_b, 0)
    assert convx.conv_transpose3d(np.zeros((0, 2, 2, 2, 2), np.float32), weight).shape == (
        0, 3, 4, 4, 4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_and_read_only_inputs(rng, dtype):
    x_big = rng.standard_normal((2, 6, 6, 7, 16)).astype(dtype)
    w_big = rng.standard_normal((4, 3, 3, 3, 6)).astype(dtype)
    x = x_big[:, ::2, :, ::-1, ::2]  # strided, reversed
    weight = w_big[..., ::2]
    x.flags.writeable = False
    weight.flags.writeable = False
    before = x.copy()
    expected = ref.conv3d(np.ascontiguousarray(x), np.ascontiguousarray(weight), stride=(1, 2, 1), padding=1)
    assert_close(convx.conv3d(x, weight, stride=(1, 2, 1), padding=1), expected)
    grad_out = rng.standard_normal(expected.shape).astype(dtype)[..., ::1]
    grad_out.flags.writeable = False
    grad_x, grad_w, _ = convx.conv3d_backward(grad_out, x, weight, stride=(1, 2, 1), padding=1)
    assert_close(grad_x, ref.conv3d_backward_input(grad_out, weight, x.shape, stride=(1, 2, 1), padding=1))
    assert_close(grad_w, ref.conv3d_backward_weight(grad_out, np.ascontiguousarray(x), weight.shape,
                                                    stride=(1, 2, 1), padding=1))
    np.testing.assert_array_equal(x, before)


def test_nan_and_inf_propagate_as_in_pytorch(rng):
    x = rng.standard_normal((1, 2, 5, 5, 5))
    weight = rng.standard_normal((3, 2, 3, 3, 3))
    x[0, 0, 2, 2, 2] = np.nan
    x[0, 1, 0, 4, 1] = np.inf
    x[0, 1, 4, 0, 0] = -np.inf
    y = convx.conv3d(x, weight, padding=1)
    expected = TF.conv3d(_t(x), _t(weight), padding=1).numpy()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(y), np.isposinf(expected))
    finite = np.isfinite(expected)
    assert_close(y[finite], expected[finite])
    # an infinite weight times the zero padding is NaN, as the formula's
    weight[1, 0, 0, 0, 0] = np.inf
    y = convx.conv3d(np.ones((1, 2, 3, 3, 3)), weight, padding=1)
    expected = ref.conv3d(np.ones((1, 2, 3, 3, 3)), weight, padding=1)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    assert np.isnan(y[0, 1, 0, 0, 0]) and np.isposinf(y[0, 1, 2, 2, 2])


@pytest.mark.parametrize("kernel", ["blas", "avx2", "avx512"])
def test_every_gemm_kernel_gives_the_reference(rng, kernel):
    from convx import _core

    if kernel not in _core.GEMM_KERNELS[: _core.GEMM_KERNELS.index(_core.gemm_kernel()) + 1]:
        pytest.skip(f"this CPU does not run the {kernel!r} kernel")
    before = _core.gemm_kernel()
    _core.set_gemm_kernel(kernel)
    try:
        for case in ("plain", "groups", "bias-free-1x1x1", "depthwise-multiplier", "wide-both"):
            x, weight, bias, kwargs = _arrays(rng, case, np.float32)
            grad_out = rng.standard_normal(ref.conv3d(x, weight, bias, **kwargs).shape).astype(np.float32)
            assert_close(convx.conv3d(x, weight, bias, **kwargs), ref.conv3d(x, weight, bias, **kwargs))
            assert_close(convx.conv3d_backward_input(grad_out, weight, x.shape, **kwargs),
                         ref.conv3d_backward_input(grad_out, weight, x.shape, **kwargs))
    finally:
        _core.set_gemm_kernel(before)


def test_large_kernel_over_small_volume(rng):
    """A kernel whose column matrix for one output row exceeds the per-thread budget: tiles of part
    of a row."""
    x = rng.standard_normal((1, 64, 3, 3, 40)).astype(np.float32)
    weight = rng.standard_normal((2, 64, 3, 3, 40)).astype(np.float32)
    kwargs = dict(padding=(1, 1, 39))
    y = convx.conv3d(x, weight, **kwargs)
    assert_close(y, TF.conv3d(_t(x), _t(weight), padding=(1, 1, 39)).numpy())
    grad_out = rng.standard_normal(y.shape).astype(np.float32)
    grads = convx.conv3d_backward(grad_out, x, weight, **kwargs)
    x_t, w_t = _t(x).requires_grad_(), _t(weight).requires_grad_()
    grads_t = torch.autograd.grad(TF.conv3d(x_t, w_t, padding=(1, 1, 39)), (x_t, w_t), _t(grad_out))
    assert_close(grads[0], grads_t[0].numpy())
    assert_close(grads[1], grads_t[1].numpy())


@pytest.mark.parametrize("kernel", ["blas", "default"])
@pytest.mark.parametrize("budget_rows", [1, 5, 13])
@pytest.mark.parametrize("case", ["odd-stride-2", "per-side", "groups", "depthwise-multiplier"])
def test_tiles_of_any_length_give_the_reference(rng, num_threads, case, budget_rows, kernel):
    """Column tiles of a few output voxels (starting and ending inside output rows, one voxel at a
    time) give what whole volumes give ('blas': the forward through the tiles too, not the
    packed kernel's own columns)."""
    num_threads(2)
    x, weight, bias, kwargs = _arrays(rng, case, np.float64)
    col_rows = weight[0].size
    before = convx._core.set_conv3d_column_budget(budget_rows * col_rows)
    level = convx._core.gemm_kernel()
    if kernel == "blas":
        convx._core.set_gemm_kernel("blas")
    try:
        y = convx.conv3d(x, weight, bias, **kwargs)
        grad_out = rng.standard_normal(y.shape)
        grad_x, grad_w, _ = convx.conv3d_backward(grad_out, x, weight, **kwargs)
    finally:
        convx._core.set_conv3d_column_budget(before)
        convx._core.set_gemm_kernel(level)
    assert_close(y, ref.conv3d(x, weight, bias, **kwargs))
    assert_close(grad_x, ref.conv3d_backward_input(grad_out, weight, x.shape, **kwargs))
    assert_close(grad_w, ref.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs))


# --- refusals -----------------------------------------------------------------------------------------

BAD = [
    (dict(stride=0), ValueError, "stride must be positive"),
    (dict(stride=(1, 2)), ValueError, "stride must be an int or a triple"),
    (dict(dilation=(1, 0, 1)), ValueError, r"dilation\[1\] must be positive"),
    (dict(padding=-1), ValueError, "padding must be at least 0"),
    (dict(padding="full"), ValueError, "padding must be an int"),
    (dict(padding=(1, 1, 1, 1, 1, 1)), ValueError, "padding as six numbers"),
    (dict(padding=((1, 0), (0, 1))), ValueError, "padding must be"),
    (dict(padding=((1, 0), (0, -1), (0, 0))), ValueError, r"padding\[1\]\[1\] must be at least 0"),
    (dict(padding=1.5), TypeError, "padding must be an int"),
    (dict(groups=2), ValueError, "groups=2 must divide"),
    (dict(groups=0), ValueError, "groups must be positive"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD)
def test_bad_arguments_are_refused_naming_them(rng, kwargs, error, message):
    x = rng.standard_normal((1, 3, 4, 4, 4))
    weight = rng.standard_normal((3, 3, 2, 2, 2))
    grad_out = np.zeros((1, 3, 3, 3, 3))
    for call in (
        lambda: convx.conv3d(x, weight, **kwargs),
        lambda: convx.conv3d_backward_input(grad_out, weight, x.shape, **kwargs),
        lambda: convx.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs),
        lambda: convx.conv3d_backward(grad_out, x, weight, **kwargs),
    ):
        with pytest.raises(error, match=message):
            call()


def test_bad_arrays_are_refused_naming_them(rng):
    x = rng.standard_normal((1, 3, 4, 4, 4))
    weight = rng.standard_normal((2, 3, 2, 2, 2))
    with pytest.raises(ValueError, match="x must be 4 or 5-dimensional"):
        convx.conv3d(x[0, 0], weight)
    with pytest.raises(ValueError, match="weight must be 5-dimensional"):
        convx.conv3d(x, weight[0])
    with pytest.raises(TypeError, match="all arrays must share one dtype"):
        convx.conv3d(x.astype(np.float32), weight)
    with pytest.raises(TypeError, match="x must have dtype float32 or float64"):
        convx.conv3d(x.astype(np.int32), weight)
    with pytest.raises(ValueError, match="expects 6 input channels"):
        convx.conv3d(x, rng.standard_normal((2, 6, 2, 2, 2)))
    with pytest.raises(ValueError, match="bias must have shape"):
        convx.conv3d(x, weight, np.zeros(3))
    with pytest.raises(ValueError, match="kernel size should be greater than zero, but got kernel_depth: 0"):
        convx.conv3d(x, np.zeros((2, 3, 0, 2, 2)))
    with pytest.raises(ValueError, match="dilated kernel"):
        convx.conv3d(x, rng.standard_normal((2, 3, 5, 2, 2)))
    with pytest.raises(ValueError, match="grad_out must have the forward output's shape"):
        convx.conv3d_backward_input(np.zeros((1, 2, 3, 3, 2)), weight, x.shape)
    with pytest.raises(ValueError, match="input_shape must have 5 entries"):
        convx.conv3d_backward_input(np.zeros((1, 2, 3, 3, 3)), weight, (3, 4, 4, 4))
    with pytest.raises(ValueError, match="weight_shape must have 5 entries"):
        convx.conv3d_backward_weight(np.zeros((1, 2, 3, 3, 3)), x, (2, 3, 2, 2))
    with pytest.raises(ValueError, match="must have x's 3 input channels first"):
        convx.conv_transpose3d(x, weight)
    with pytest.raises(ValueError, match="output_padding must be smaller"):
        convx.conv_transpose3d(x, rng.standard_normal((3, 2, 2, 2, 2)), stride=2, output_padding=(0, 2, 0))
    with pytest.raises(ValueError, match="output_size"):
        convx.conv_transpose3d(x, rng.standard_normal((3, 2, 2, 2, 2)), stride=2, output_size=(20, 20, 20))


# --- layers ---------------------------------------------------------------------------------------------

LAYER_CASES = {
    "plain": (dict(in_channels=3, out_channels=4, kernel_size=3, padding=1), (2, 3, 5, 6, 7)),
    "strided-groups": (dict(in_channels=4, out_channels=6, kernel_size=(2, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1),
                            dilation=(2, 1, 1), groups=2), (2, 4, 6, 7, 8)),
    "no-bias": (dict(in_channels=2, out_channels=2, kernel_size=1, bias=False), (3, 2, 3, 4, 5)),
    "same": (dict(in_channels=2, out_channels=3, kernel_size=3, padding="same"), (1, 2, 4, 5, 6)),
    "unbatched": (dict(in_channels=2, out_channels=3, kernel_size=2), (2, 4, 4, 4)),
}


@pytest.mark.parametrize("case", LAYER_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv3d_layer_matches_torch_module(case, dtype, rng):
    kwargs, x_shape = LAYER_CASES[case]
    layer = nn.Conv3d(**kwargs, dtype=dtype, rng=0)
    module = torch.nn.Conv3d(**kwargs).to(torch.float64 if dtype == np.float64 else torch.float32)
    state = {name: _t(value) for name, value in layer.state_dict().items()}
    assert set(state) == set(module.state_dict())
    module.load_state_dict(state)
    x = rng.standard_normal(x_shape).astype(dtype)
    x_t = _t(x).requires_grad_()
    y_t = module(x_t)
    y = layer(x)
    assert_close(y, y_t.detach().numpy())
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    y_t.backward(_t(grad_out))
    assert_close(layer.backward(grad_out), x_t.grad.numpy())
    assert_close(layer.grads["weight"], module.weight.grad.numpy())
    if "bias" in layer.params:
        assert_close(layer.grads["bias"], module.bias.grad.numpy())


TRANSPOSE_LAYER_CASES = {
    "plain": (dict(in_channels=3, out_channels=4, kernel_size=3), (2, 3, 3, 4, 5), None),
    "strided": (dict(in_channels=4, out_channels=6, kernel_size=(2, 3, 2), stride=2, padding=(0, 1, 1),
                     output_padding=(1, 1, 0), groups=2), (1, 4, 3, 4, 3), None),
    "output-size": (dict(in_channels=2, out_channels=2, kernel_size=3, stride=2, padding=1), (1, 2, 3, 3, 3),
                    (6, 5, 6)),
    "dilated": (dict(in_channels=2, out_channels=3, kernel_size=2, dilation=3, output_padding=(2, 0, 1), bias=False),
                (2, 2, 2, 3, 3), None),
}


@pytest.mark.parametrize("case", TRANSPOSE_LAYER_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_transpose3d_layer_matches_torch_module(case, dtype, rng):
    kwargs, x_shape, output_size = TRANSPOSE_LAYER_CASES[case]
    layer = nn.ConvTranspose3d(**kwargs, dtype=dtype, rng=0)
    module = torch.nn.ConvTranspose3d(**kwargs).to(torch.float64 if dtype == np.float64 else torch.float32)
    state = {name: _t(value) for name, value in layer.state_dict().items()}
    assert set(state) == set(module.state_dict())
    module.load_state_dict(state)
    x = rng.standard_normal(x_shape).astype(dtype)
    x_t = _t(x).requires_grad_()
    y_t = module(x_t, output_size=output_size)
    y = layer(x, output_size=output_size)
    assert_close(y, y_t.detach().numpy())
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    y_t.backward(_t(grad_out))
    assert_close(layer.backward(grad_out), x_t.grad.numpy())
    assert_close(layer.grads["weight"], module.weight.grad.numpy())
    if "bias" in layer.params:
        assert_close(layer.grads["bias"], module.bias.grad.numpy())


def test_layers_refuse_bad_arguments():
    with pytest.raises(ValueError, match="groups=2 must divide"):
        nn.Conv3d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="padding_mode must be 'zeros'"):
        nn.Conv3d(3, 4, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="kernel_size must be an int or a triple"):
        nn.Conv3d(3, 4, (3, 3))
    with pytest.raises(ValueError, match="output_padding must be smaller"):
        nn.ConvTranspose3d(3, 4, 3, stride=2, output_padding=2)
    layer = nn.Conv3d(3, 4, 3)
    with pytest.raises(ValueError, match="Conv3d expects 3 input channels"):
        layer(np.zeros((1, 2, 4, 4, 4), dtype=np.float32))
    with pytest.raises(TypeError, match="float32 parameters but x has dtype float64"):
        layer(np.zeros((1, 3, 4, 4, 4)))


def test_layer_repr():
    layer = nn.Conv3d(2, 4, 3, stride=(1, 2, 2), padding=1, rng=0)
    assert "Conv3d(2, 4, kernel_size=(3, 3, 3), stride=(1, 2, 2), padding=(1, 1, 1)" in repr(layer)
    layer = nn.ConvTranspose3d(2, 4, 2, stride=2, padding=((1, 0), (0, 0), (0, 1)), rng=0)
    assert "padding=((1, 0), (0, 0), (0, 1))" in repr(layer)


def test_calls_from_several_python_threads_at_once(rng):
    """The kernels keep their scratch per call: calls from several Python threads at once give
    what each gives alone."""
    from concurrent.futures import ThreadPoolExecutor

    cases = ["plain", "wide", "groups", "odd-stride-2"]
    inputs = [_arrays(rng, case, np.float32) for case in cases]

    def run(args):
        x, weight, bias, kwargs = args
        y = convx.conv3d(x, weight, bias, **kwargs)
        return (y, *convx.conv3d_backward(np.ones_like(y), x, weight, **kwargs))

    alone = [run(args) for args in inputs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(run, inputs * 3))
    for index, results in enumerate(together):
        for ours, expected in zip(results, alone[index % len(cases)]):
            assert_close(ours, expected)


CHILD = """
import time
import numpy as np
import convx
from convx.reference import conv3d as reference

rng = np.random.default_rng(0)
# One volume whose work is many kernel calls' (bands of whole output depth slices), a few seconds
# in all, within 30 MB.
x = rng.standard_normal((1, 64, 96, 32, 32)).astype(np.float32)
weight = (rng.standard_normal((64, 64, 7, 7, 7)) * 0.01).astype(np.float32)

# The longest kernel call (one band) of each op, timed on a quarter of the volume: the kernels run
# several times slower under the sanitizers, and their bands take longer.
longest = [0.0]


def timed(kernel):
    def call(*args):
        start = time.perf_counter()
        try:
            return kernel(*args)
        finally:
            longest[0] = max(longest[0], time.perf_counter() - start)
    return call


core = convx._core
for kernel_name in ("conv3d_forward", "conv3d_backward_input", "conv3d_backward_weight"):
    setattr(core, kernel_name, timed(getattr(core, kernel_name)))
quarter = np.ascontiguousarray(x[:, :, :24])
for name, op in (("conv3d", lambda v: convx.conv3d(v, weight, padding=3)),
                 ("conv3d_backward", lambda v: convx.conv3d_backward(v, v, weight, padding=3))):
    longest[0] = 0.0
    op(quarter)
    print("start", name, longest[0], flush=True)
    start = time.time()
    try:
        op(x)
    except KeyboardInterrupt:
        print("interrupted", name, time.time(), time.time() - start, flush=True)
    else:
        print("finished", name, time.time(), time.time() - start, flush=True)
small = rng.standard_normal((2, 3, 4, 5, 6))
small_w = rng.standard_normal((4, 3, 3, 3, 3))
assert np.allclose(convx.conv3d(small, small_w, padding=1), reference.conv3d(small, small_w, padding=1))
print("usable", flush=True)
"""


@pytest.mark.skipif(__import__("sys").platform == "win32", reason="SIGINT cannot be sent to a child on Windows")
def test_ctrl_c_interrupts_one_huge_volume_between_bands():
    from _child import interrupt_child

    lines = interrupt_child(CHILD, delay=0.3, timeout=120)
    reports = [(end[0], end[1], sent, float(end[2]), float(start[2]))
               for (start, sent), (end, _) in zip(lines[::2], lines[1::2])]
    assert [r[1] for r in reports] == ["conv3d", "conv3d_backward"], reports
    for outcome, name, sent, caught, band in reports:
        assert outcome == "interrupted", reports
        # stopped within a band or two of the signal (tens to hundreds of milliseconds each
        # natively), plus the time to unwind and free buffers
        assert caught - sent < 2 * band + 0.5, (name, band, caught - sent)
