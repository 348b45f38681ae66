"""3-D pooling (max, average, adaptive, with backward passes) and the 3-D convolution references:
convx against the NumPy references of ``convx.reference`` (written from the formulas), both against
PyTorch, central differences in float64, threads, odd inputs and the refusals."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import convx
import convx.functional as F
from convx import _threads, nn
from convx.reference import conv3d as ref_conv
from convx.reference import pooling3d as ref
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


# (input shape, kernel_size, stride, padding, dilation, ceil_mode)
MAX_CASES = {
    "2-cube": ((2, 3, 4, 6, 6), 2, None, 0, 1, False),
    "3-cube-s2-p1": ((2, 2, 7, 9, 8), 3, 2, 1, 1, False),
    "odd-ceil": ((1, 3, 5, 7, 9), (3, 2, 3), (2, 1, 2), (1, 1, 1), 1, True),
    "dilated": ((2, 2, 6, 7, 8), (2, 3, 3), 1, (0, 1, 1), (2, 1, 2), False),
    "dilated-ceil": ((1, 2, 9, 8, 7), 3, (2, 3, 2), 1, (1, 2, 2), True),
    "flat-depth": ((3, 2, 1, 9, 10), (1, 3, 3), (1, 2, 2), (0, 1, 1), 1, True),
    "size-one": ((2, 1, 1, 1, 1), 1, None, 0, 1, False),
    "unbatched": ((3, 5, 6, 7), (2, 3, 2), (1, 2, 1), (1, 1, 0), 1, False),
}

# (input shape, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
AVG_CASES = {
    "2-cube": ((2, 3, 4, 6, 6), 2, None, 0, False, True, None),
    "3-cube-s2-p1": ((2, 2, 7, 9, 8), 3, 2, 1, False, True, None),
    "p1-exclude": ((2, 2, 7, 9, 8), 3, 2, 1, False, False, None),
    "odd-ceil": ((1, 3, 5, 7, 9), (3, 2, 3), (2, 1, 2), (1, 1, 1), True, True, None),
    "odd-ceil-exclude": ((1, 3, 5, 7, 9), (3, 2, 3), (2, 1, 2), (1, 1, 1), True, False, None),
    "divisor": ((2, 2, 5, 6, 7), (2, 3, 3), 1, (1, 1, 0), False, True, 5),
    "divisor-ceil": ((2, 2, 5, 6, 7), 3, 2, 1, True, False, 7),
    "unbatched": ((3, 5, 6, 7), (2, 3, 2), (1, 2, 1), (1, 1, 0), False, True, None),
}

ADAPTIVE_CASES = {
    "shrink": ((2, 3, 7, 9, 10), (3, 4, 5)),
    "grow": ((1, 2, 3, 2, 4), (5, 3, 7)),
    "global": ((2, 3, 5, 6, 7), 1),
    "keep": ((2, 2, 4, 5, 6), (None, 2, None)),
    "unbatched": ((3, 5, 6, 7), (2, 3, 4)),
}


def _sizes(output_size, shape):
    sizes = (output_size,) * 3 if isinstance(output_size, int) else output_size
    return tuple(shape[-3 + k] if v is None else v for k, v in enumerate(sizes))


# --- the references against PyTorch -----------------------------------------------------------------

CONV_CASES = {
    "plain": ((2, 3, 5, 6, 7), (4, 3, 3, 3, 3), dict()),
    "strided-padded": ((2, 4, 7, 6, 8), (6, 2, 2, 3, 2), dict(stride=(1, 2, 1), padding=(1, 0, 2), dilation=(2, 1, 1),
                                                               groups=2)),
    "per-side": ((1, 2, 5, 6, 7), (3, 2, 3, 2, 3), dict(padding=((1, 0), (0, 1), (2, 1)), stride=2)),
    "depthwise": ((2, 4, 5, 5, 5), (4, 1, 3, 3, 3), dict(padding=1, groups=4)),
    "same": ((1, 3, 5, 6, 4), (2, 3, 3, 2, 3), dict(padding="same", dilation=(1, 2, 1))),
    "unbatched": ((3, 4, 5, 6), (2, 3, 2, 2, 2), dict(stride=(2, 1, 1))),
}


def _torch_padding(padding):
    """Per-side padding as PyTorch takes it: F.pad of the input (last axis first), then no padding."""
    if isinstance(padding, tuple) and isinstance(padding[0], tuple):
        return [side for pair in reversed(padding) for side in pair], 0
    return None, padding


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv3d_references_match_pytorch(case, dtype, rng):
    x_shape, w_shape, kwargs = CONV_CASES[case]
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    bias = rng.standard_normal(w_shape[0]).astype(dtype)
    pre_pad, padding = _torch_padding(kwargs.get("padding", 0))
    torch_kwargs = {**kwargs, "padding": padding}
    x_t = _t(x).requires_grad_()
    w_t = _t(weight).requires_grad_()
    x_in = TF.pad(x_t, pre_pad) if pre_pad else x_t
    with warnings.catch_warnings():
        # PyTorch warns (once per process) that 'same' with an even kernel copies the input.
        warnings.simplefilter("ignore", UserWarning)
        y_t = TF.conv3d(x_in, w_t, _t(bias), **torch_kwargs)
    y = ref_conv.conv3d(x, weight, bias, **kwargs)
    assert_close(y, y_t.detach().numpy())
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    grad_x, grad_w = torch.autograd.grad(y_t, (x_t, w_t), _t(grad_out))
    assert_close(ref_conv.conv3d_backward_input(grad_out, weight, x.shape, **kwargs), grad_x.numpy())
    assert_close(ref_conv.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs), grad_w.numpy())


TRANSPOSE_CASES = {
    "plain": ((2, 3, 3, 4, 5), (3, 2, 3, 3, 3), dict()),
    "strided": ((2, 4, 3, 4, 3), (4, 3, 2, 3, 2), dict(stride=(2, 1, 3), padding=(1, 0, 1), output_padding=(1, 0, 2),
                                                       groups=2, dilation=(1, 2, 1))),
    "unbatched": ((2, 3, 3, 3), (2, 2, 2, 2, 2), dict(stride=2, padding=1, output_padding=1)),
}


@pytest.mark.parametrize("case", TRANSPOSE_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_transpose3d_reference_matches_pytorch(case, dtype, rng):
    x_shape, w_shape, kwargs = TRANSPOSE_CASES[case]
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    bias = rng.standard_normal(w_shape[1] * kwargs.get("groups", 1)).astype(dtype)
    expected = TF.conv_transpose3d(_t(x), _t(weight), _t(bias), **kwargs).numpy()
    assert_close(ref_conv.conv_transpose3d(x, weight, bias, **kwargs), expected)


def test_conv_transpose3d_reference_per_side_padding_crops_each_side(rng):
    x = rng.standard_normal((1, 2, 3, 3, 3))
    weight = rng.standard_normal((2, 1, 3, 3, 3))
    full = ref_conv.conv_transpose3d(x, weight, stride=2)
    cropped = ref_conv.conv_transpose3d(x, weight, stride=2, padding=((1, 0), (0, 2), (1, 1)))
    np.testing.assert_array_equal(cropped, full[:, :, 1:, :-2, 1:-1])


@pytest.mark.parametrize("case", MAX_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool3d_reference_matches_pytorch(case, dtype, rng):
    shape, kernel, stride, padding, dilation, ceil_mode = MAX_CASES[case]
    x = rng.standard_normal(shape).astype(dtype)
    y_t, indices_t = TF.max_pool3d(_t(x), kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    y, indices = ref.max_pool3d(x, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    np.testing.assert_array_equal(y, y_t.numpy())
    np.testing.assert_array_equal(indices, indices_t.numpy())


@pytest.mark.parametrize("case", AVG_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_avg_pool3d_reference_matches_pytorch(case, dtype, rng):
    shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor = AVG_CASES[case]
    x = rng.standard_normal(shape).astype(dtype)
    x_t = _t(x).requires_grad_()
    y_t = TF.avg_pool3d(x_t, kernel, stride, padding, ceil_mode, count_include_pad, divisor)
    args = (kernel, stride, padding, ceil_mode, count_include_pad, divisor)
    y = ref.avg_pool3d(x, *args)
    assert_close(y, y_t.detach().numpy())
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    (grad_x,) = torch.autograd.grad(y_t, x_t, _t(grad_out))
    assert_close(ref.avg_pool3d_backward(grad_out, x.shape, *args), grad_x.numpy())


@pytest.mark.parametrize("case", ADAPTIVE_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_adaptive_pool3d_references_match_pytorch(case, dtype, rng):
    shape, output_size = ADAPTIVE_CASES[case]
    x = rng.standard_normal(shape).astype(dtype)
    x_t = _t(x).requires_grad_()
    y_t = TF.adaptive_avg_pool3d(x_t, output_size)
    y = ref.adaptive_avg_pool3d(x, output_size)
    assert_close(y, y_t.detach().numpy())
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    (grad_x,) = torch.autograd.grad(y_t, x_t, _t(grad_out))
    assert_close(ref.adaptive_avg_pool3d_backward(grad_out, x.shape), grad_x.numpy())
    y_t, indices_t = TF.adaptive_max_pool3d(_t(x), output_size, return_indices=True)
    y, indices = ref.adaptive_max_pool3d(x, output_size, return_indices=True)
    np.testing.assert_array_equal(y, y_t.numpy())
    np.testing.assert_array_equal(indices, indices_t.numpy())


# --- convx against the references and PyTorch -----------------------------------------------------------


@pytest.mark.parametrize("case", MAX_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool3d(case, dtype, rng):
    shape, kernel, stride, padding, dilation, ceil_mode = MAX_CASES[case]
    x = rng.standard_normal(shape).astype(dtype)
    y, indices = convx.max_pool3d(x, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    y_ref, indices_ref = ref.max_pool3d(x, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    y_t, indices_t = TF.max_pool3d(_t(x), kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    assert y.dtype == dtype and indices.dtype == np.int64 and y.flags.c_contiguous
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(indices, indices_ref)
    np.testing.assert_array_equal(y, y_t.numpy())
    np.testing.assert_array_equal(indices, indices_t.numpy())
    np.testing.assert_array_equal(convx.max_pool3d(x, kernel, stride, padding, dilation, ceil_mode), y)
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    grad_x = convx.max_pool3d_backward(grad_out, indices, x.shape)
    assert grad_x.shape == x.shape and grad_x.dtype == dtype
    assert_close(grad_x, ref.max_pool3d_backward(grad_out, indices, x.shape))


@pytest.mark.parametrize("case", AVG_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_avg_pool3d(case, dtype, rng):
    shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor = AVG_CASES[case]
    args = (kernel, stride, padding, ceil_mode, count_include_pad, divisor)
    x = rng.standard_normal(shape).astype(dtype)
    y = convx.avg_pool3d(x, *args)
    assert y.dtype == dtype
    assert_close(y, ref.avg_pool3d(x, *args))
    assert_close(y, TF.avg_pool3d(_t(x), *args).numpy())
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    grad_x = convx.avg_pool3d_backward(grad_out, x.shape, *args)
    assert grad_x.shape == x.shape and grad_x.dtype == dtype
    assert_close(grad_x, ref.avg_pool3d_backward(grad_out, x.shape, *args))


DILATED_AVG_CASES = {
    "d2": ((2, 3, 7, 8, 9), 2, 1, 0, 2, False, True),
    "d-per-axis-pad": ((1, 2, 9, 7, 8), (3, 2, 3), (2, 1, 3), (1, 1, 1), (2, 3, 1), False, True),
    "ceil-no-pad-count": ((1, 2, 10, 9, 11), 3, 2, 1, (1, 2, 2), True, False),
    "ceil-pad-count": ((2, 1, 8, 8, 8), (2, 3, 2), 3, (1, 1, 1), 3, True, True),
}


@pytest.mark.parametrize("case", DILATED_AVG_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dilated_avg_pool3d(case, dtype, rng):
    # ONNX's AveragePool has dilations (PyTorch's avg_pool3d has not): against the reference, and
    # against avg_pool2d's dilation on one-slice volumes.
    shape, kernel, stride, padding, dilation, ceil_mode, count_include_pad = DILATED_AVG_CASES[case]
    args = (kernel, stride, padding, ceil_mode, count_include_pad, None, dilation)
    x = rng.standard_normal(shape).astype(dtype)
    y = convx.avg_pool3d(x, *args)
    assert_close(y, ref.avg_pool3d(x, *args))
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    assert_close(convx.avg_pool3d_backward(grad_out, x.shape, *args), ref.avg_pool3d_backward(grad_out, x.shape, *args))
    k, s, p, d = (np.broadcast_to(v, 3) for v in (kernel, stride, padding, dilation))
    one_slice = x[:, :, :1]
    flat = convx.avg_pool3d(one_slice, (1, k[1], k[2]), (1, s[1], s[2]), (0, p[1], p[2]), ceil_mode, count_include_pad,
                            None, (1, d[1], d[2]))
    planes = convx.avg_pool2d(one_slice[:, :, 0], (k[1], k[2]), (s[1], s[2]), (int(p[1]), int(p[2])), ceil_mode,
                              count_include_pad, dilation=(int(d[1]), int(d[2])))
    assert_close(flat[:, :, 0], planes)


@pytest.mark.parametrize("case", ADAPTIVE_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_adaptive_pool3d(case, dtype, rng):
    shape, output_size = ADAPTIVE_CASES[case]
    x = rng.standard_normal(shape).astype(dtype)
    y = convx.adaptive_avg_pool3d(x, output_size)
    assert y.shape == (*shape[:-3], *_sizes(output_size, shape))
    assert_close(y, ref.adaptive_avg_pool3d(x, output_size))
    assert_close(y, TF.adaptive_avg_pool3d(_t(x), output_size).numpy())
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    assert_close(convx.adaptive_avg_pool3d_backward(grad_out, x.shape),
                 ref.adaptive_avg_pool3d_backward(grad_out, x.shape))
    y, indices = convx.adaptive_max_pool3d(x, output_size, return_indices=True)
    y_t, indices_t = TF.adaptive_max_pool3d(_t(x), output_size, return_indices=True)
    np.testing.assert_array_equal(y, y_t.numpy())
    np.testing.assert_array_equal(indices, indices_t.numpy())
    np.testing.assert_array_equal(convx.adaptive_max_pool3d(x, output_size), y)
    assert_close(convx.max_pool3d_backward(grad_out, indices, x.shape),
                 ref.max_pool3d_backward(grad_out, indices, x.shape))


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool3d_nan_and_inf_as_pytorch(dtype, rng):
    x = rng.standard_normal((2, 3, 6, 7, 8)).astype(dtype)
    x.flat[rng.choice(x.size, 40, replace=False)] = np.nan
    x.flat[rng.choice(x.size, 40, replace=False)] = np.inf
    x.flat[rng.choice(x.size, 40, replace=False)] = -np.inf
    x[1, 2] = -np.inf  # whole volumes of -inf: the index is the window's first tap inside the input
    x[0, 1, :3] = np.nan
    for kernel, stride, padding, dilation, ceil_mode in [(3, 2, 1, 1, True), (2, 1, 0, 2, False), ((1, 3, 2), 1, 0, 1,
                                                                                                 False)]:
        y, indices = convx.max_pool3d(x, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
        y_t, indices_t = TF.max_pool3d(_t(x), kernel, stride, padding, dilation, ceil_mode, return_indices=True)
        np.testing.assert_array_equal(y, y_t.numpy())
        np.testing.assert_array_equal(indices, indices_t.numpy())
        np.testing.assert_array_equal(indices, ref.max_pool3d(x, kernel, stride, padding, dilation, ceil_mode,
                                                              return_indices=True)[1])
    y, indices = convx.adaptive_max_pool3d(x, (4, 3, 5), return_indices=True)
    y_t, indices_t = TF.adaptive_max_pool3d(_t(x), (4, 3, 5), return_indices=True)
    np.testing.assert_array_equal(y, y_t.numpy())
    np.testing.assert_array_equal(indices, indices_t.numpy())


@pytest.mark.parametrize("dtype", DTYPES)
def test_avg_pool3d_propagates_nan_and_inf(dtype):
    x = np.ones((1, 1, 4, 4, 4), dtype)
    x[0, 0, 0, 0, 0] = np.nan
    x[0, 0, 3, 3, 3] = np.inf
    y = convx.avg_pool3d(x, 2)
    np.testing.assert_array_equal(y, TF.avg_pool3d(_t(x), 2).numpy())
    assert np.isnan(y[0, 0, 0, 0, 0]) and np.isinf(y[0, 0, 1, 1, 1])


def test_max_pool3d_time_does_not_grow_with_taps_in_the_padding():
    # 2**90 taps per window, all but eight in the padding: only those inside are visited.
    x = np.arange(8.0).reshape(1, 1, 2, 2, 2)
    y, indices = convx.max_pool3d(x, 2**30, 1, 2**29, return_indices=True)
    assert y.shape == (1, 1, 3, 3, 3)
    np.testing.assert_array_equal(y, 7.0)
    np.testing.assert_array_equal(indices, 7)


def test_avg_pool3d_time_does_not_grow_with_taps_in_the_padding():
    x = np.arange(8.0).reshape(1, 1, 2, 2, 2)
    y = convx.avg_pool3d(x, 2**20, 1, 2**19, count_include_pad=False)
    assert y.shape == (1, 1, 3, 3, 3)
    np.testing.assert_array_equal(y, 3.5)
    grad_x = convx.avg_pool3d_backward(np.ones_like(y), x.shape, 2**20, 1, 2**19, count_include_pad=False)
    np.testing.assert_array_equal(grad_x, 27 / 8)


def test_empty_batch_and_channels():
    for shape in [(0, 3, 4, 5, 6), (2, 0, 4, 5, 6)]:
        x = np.ones(shape, np.float32)
        y, indices = convx.max_pool3d(x, 2, return_indices=True)
        assert y.shape == indices.shape == (*shape[:2], 2, 2, 3)
        assert convx.max_pool3d_backward(y, indices, shape).shape == shape
        y = convx.avg_pool3d(x, 2, ceil_mode=True)
        assert y.shape == (*shape[:2], 2, 3, 3)
        assert convx.avg_pool3d_backward(y, shape, 2, ceil_mode=True).shape == shape
        y = convx.adaptive_avg_pool3d(x, (1, 2, 3))
        assert y.shape == (*shape[:2], 1, 2, 3)
        assert convx.adaptive_avg_pool3d_backward(y, shape).shape == shape
        assert convx.adaptive_max_pool3d(x, 2).shape == (*shape[:2], 2, 2, 2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_and_read_only_inputs(dtype, rng):
    base = rng.standard_normal((3, 4, 12, 9, 16)).astype(dtype)
    x = base[::2, 1:, 1::2, :, ::2]  # every axis strided
    x_copy = x.copy()
    assert not x.flags.c_contiguous
    frozen = x.copy()
    frozen.flags.writeable = False
    np.testing.assert_array_equal(convx.max_pool3d(x, 3, 2, 1), convx.max_pool3d(x_copy, 3, 2, 1))
    np.testing.assert_array_equal(convx.max_pool3d(frozen, 3, 2, 1), convx.max_pool3d(x_copy, 3, 2, 1))
    np.testing.assert_array_equal(convx.avg_pool3d(x, 2, 1), convx.avg_pool3d(x_copy, 2, 1))
    np.testing.assert_array_equal(convx.avg_pool3d(frozen, 2, 1), convx.avg_pool3d(x_copy, 2, 1))
    np.testing.assert_array_equal(convx.adaptive_avg_pool3d(x, (2, 3, 3)), convx.adaptive_avg_pool3d(x_copy, (2, 3, 3)))
    np.testing.assert_array_equal(convx.adaptive_max_pool3d(frozen, 3), convx.adaptive_max_pool3d(x_copy, 3))
    np.testing.assert_array_equal(x, x_copy)  # never modified
    y, indices = convx.max_pool3d(x_copy, 2, return_indices=True)
    grad = rng.standard_normal((*y.shape[:-1], 2 * y.shape[-1])).astype(dtype)[..., ::2]
    indices_frozen = indices.copy()
    indices_frozen.flags.writeable = False
    np.testing.assert_array_equal(convx.max_pool3d_backward(grad, indices_frozen, x.shape),
                                  convx.max_pool3d_backward(grad.copy(), indices, x.shape))
    grad = rng.standard_normal((*convx.avg_pool3d(x_copy, 2).shape[:-1], 2 * 4)).astype(dtype)[..., ::2]
    np.testing.assert_array_equal(convx.avg_pool3d_backward(grad, x.shape, 2),
                                  convx.avg_pool3d_backward(grad.copy(), x.shape, 2))
    np.testing.assert_array_equal(convx.adaptive_avg_pool3d_backward(grad, x.shape),
                                  convx.adaptive_avg_pool3d_backward(grad.copy(), x.shape))


def _all_ops(x):
    y, indices = convx.max_pool3d(x, 3, 2, 1, return_indices=True, ceil_mode=True)
    averaged = convx.avg_pool3d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)
    return {
        "max": y, "indices": indices, "max_backward": convx.max_pool3d_backward(y, indices, x.shape),
        "avg": averaged, "avg_backward": convx.avg_pool3d_backward(averaged, x.shape, 3, 2, 1, True, False),
        "adaptive_avg": convx.adaptive_avg_pool3d(x, (3, 5, 4)),
        "adaptive_avg_backward": convx.adaptive_avg_pool3d_backward(averaged, x.shape),
        "adaptive_max": convx.adaptive_max_pool3d(x, (3, 5, 4), return_indices=True)[1],
    }


@pytest.mark.parametrize("dtype", DTYPES)
def test_thread_count_does_not_change_results(rng, num_threads, dtype):
    # 3*7 = 21 volumes of 10*30*40 elements: every thread count of 1-3 gets a share (the kernels'
    # grain is 32768 elements per thread).
    x = rng.standard_normal((3, 7, 10, 30, 40)).astype(dtype)
    num_threads(1)
    serial = _all_ops(x)
    for n in (2, 3):
        num_threads(n)
        for name, result in _all_ops(x).items():
            np.testing.assert_array_equal(result, serial[name], err_msg=f"{name} with {n} threads")


def _banded(op, kernel_name, *args):
    """op(*args) with a sub-batch budget far below one image (so every volume goes in bands of one
    output depth each), and the (od_begin, od_end) of each kernel call."""
    import convx._batching
    import convx._core

    real = getattr(convx._core, kernel_name)
    calls = []

    def counting(*call):
        calls.append(call[-3:-1])
        return real(*call)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(convx._batching, "SUB_BATCH_WORK", 64)
        patch.setattr(convx._core, kernel_name, counting)
        result = op(*args)
    return result, calls


@pytest.mark.parametrize("n_threads", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bands_of_output_depths_give_what_one_call_gives(rng, num_threads, dtype, n_threads):
    # Huge volumes go in bands of output depths, one kernel call each (Ctrl-C is seen between them);
    # the backward kernels scatter, the first band zeroing: bands must not change one bit.
    num_threads(n_threads)
    x = rng.standard_normal((2, 3, 9, 8, 7)).astype(dtype)
    y, indices = convx.max_pool3d(x, 3, 2, 1, return_indices=True)
    averaged = convx.avg_pool3d(x, 3, (2, 1, 2), 1, ceil_mode=True)
    cases = [
        ("max_pool3d_forward", lambda: convx.max_pool3d(x, 3, 2, 1, return_indices=True), (y, indices)),
        ("avg_pool3d_forward", lambda: convx.avg_pool3d(x, 3, (2, 1, 2), 1, ceil_mode=True), averaged),
        ("avg_pool3d_backward", lambda: convx.avg_pool3d_backward(averaged, x.shape, 3, (2, 1, 2), 1, True),
         convx.avg_pool3d_backward(averaged, x.shape, 3, (2, 1, 2), 1, True)),
        ("adaptive_avg_pool3d_forward", lambda: convx.adaptive_avg_pool3d(x, (4, 3, 5)),
         convx.adaptive_avg_pool3d(x, (4, 3, 5))),
        ("adaptive_avg_pool3d_backward", lambda: convx.adaptive_avg_pool3d_backward(averaged, x.shape),
         convx.adaptive_avg_pool3d_backward(averaged, x.shape)),
        ("adaptive_max_pool3d_forward", lambda: convx.adaptive_max_pool3d(x, (4, 3, 5), return_indices=True),
         convx.adaptive_max_pool3d(x, (4, 3, 5), return_indices=True)),
    ]
    for kernel_name, op, expected in cases:
        result, calls = _banded(op, kernel_name)
        first = expected[0] if isinstance(expected, tuple) else expected
        out_d = averaged.shape[2] if "backward" in kernel_name else first.shape[2]  # the depths banded
        # Several bands per volume (max pooling's overlap of kd - 1 depths limits them), covering the
        # output depths in order, the same for each image.
        per_image = len(calls) // x.shape[0]
        bands = calls[:per_image]
        assert per_image >= 2 and calls == bands * x.shape[0], (kernel_name, calls)
        assert [begin for begin, _ in bands] + [out_d] == [0] + [end for _, end in bands], (kernel_name, calls)
        for got, want in zip(result if isinstance(result, tuple) else (result,),
                             expected if isinstance(expected, tuple) else (expected,)):
            np.testing.assert_array_equal(got, want, err_msg=kernel_name)


# --- gradients by central differences -----------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=2),
    dict(kernel_size=(3, 2, 3), stride=(2, 1, 2), padding=(1, 1, 1), ceil_mode=True),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=(2, 3, 3), stride=1, padding=(1, 1, 0), divisor_override=4),
    dict(kernel_size=(2, 2, 3), stride=(1, 2, 1), padding=1, dilation=(2, 1, 2), ceil_mode=True),
    dict(kernel_size=2, stride=1, dilation=3, count_include_pad=False),
])
def test_avg_pool3d_gradcheck(kwargs, rng):
    x = rng.standard_normal((2, 2, 4, 5, 5))
    assert convx.gradcheck(lambda x_: F.avg_pool3d(x_, **kwargs), [x],
                           lambda g: [F.avg_pool3d_backward(g, x.shape, **kwargs)])


@pytest.mark.parametrize("output_size", [(2, 3, 2), 1, (5, 7, 3)])
def test_adaptive_avg_pool3d_gradcheck(output_size, rng):
    x = rng.standard_normal((2, 2, 4, 5, 3))
    assert convx.gradcheck(lambda x_: F.adaptive_avg_pool3d(x_, output_size), [x],
                           lambda g: [F.adaptive_avg_pool3d_backward(g, x.shape)])


def test_max_pool3d_gradcheck(rng):
    # Distinct values spaced well beyond eps: no tie flips under the perturbation.
    x = rng.permutation(2 * 2 * 4 * 5 * 5).reshape(2, 2, 4, 5, 5) / 10.0
    indices = convx.max_pool3d(x, 3, 2, 1, return_indices=True)[1]
    assert convx.gradcheck(lambda x_: F.max_pool3d(x_, 3, 2, 1), [x],
                           lambda g: [F.max_pool3d_backward(g, indices, x.shape)])
    indices = convx.adaptive_max_pool3d(x, (3, 2, 4), return_indices=True)[1]
    assert convx.gradcheck(lambda x_: F.adaptive_max_pool3d(x_, (3, 2, 4)), [x],
                           lambda g: [F.max_pool3d_backward(g, indices, x.shape)])


# --- layers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_layers_match_pytorch_modules(dtype, rng):
    x = rng.standard_normal((2, 3, 5, 7, 6)).astype(dtype)
    pairs = [
        (nn.MaxPool3d(3, 2, 1, ceil_mode=True), torch.nn.MaxPool3d(3, 2, 1, ceil_mode=True)),
        (nn.MaxPool3d((2, 3, 2), dilation=(1, 2, 1)), torch.nn.MaxPool3d((2, 3, 2), dilation=(1, 2, 1))),
        (nn.AvgPool3d(3, 2, 1, count_include_pad=False), torch.nn.AvgPool3d(3, 2, 1, count_include_pad=False)),
        (nn.AvgPool3d(2, 1, divisor_override=3), torch.nn.AvgPool3d(2, 1, divisor_override=3)),
        (nn.AdaptiveAvgPool3d((2, None, 4)), torch.nn.AdaptiveAvgPool3d((2, None, 4))),
        (nn.AdaptiveMaxPool3d(3), torch.nn.AdaptiveMaxPool3d(3)),
    ]
    for layer, module in pairs:
        x_t = _t(x).requires_grad_()
        y_t = module(x_t)
        y = layer(x)
        assert_close(y, y_t.detach().numpy())
        grad_out = rng.standard_normal(y.shape).astype(dtype)
        (grad_x,) = torch.autograd.grad(y_t, x_t, _t(grad_out))
        assert_close(layer.backward(grad_out), grad_x.numpy())
        assert type(layer).__name__ in repr(layer)


def test_layers_return_indices_and_unbatched(rng):
    x = rng.standard_normal((3, 4, 5, 6))
    y, indices = nn.MaxPool3d(2, return_indices=True)(x)
    y_t, indices_t = TF.max_pool3d(_t(x), 2, return_indices=True)
    np.testing.assert_array_equal(indices, indices_t.numpy())
    y, indices = nn.AdaptiveMaxPool3d((1, 2, 3), return_indices=True)(x)
    np.testing.assert_array_equal(indices, TF.adaptive_max_pool3d(_t(x), (1, 2, 3), return_indices=True)[1].numpy())
    layer = nn.AvgPool3d(2)
    assert layer(x).shape == (3, 2, 2, 3) and layer.backward(np.ones((3, 2, 2, 3))).shape == x.shape


def test_layers_gradcheck(rng):
    x = rng.standard_normal((2, 2, 4, 5, 4))
    assert convx.gradcheck(nn.AvgPool3d(3, 2, 1, ceil_mode=True), x)
    assert convx.gradcheck(nn.AdaptiveAvgPool3d((3, 2, 3)), x)


def test_layers_refuse_bad_arguments():
    with pytest.raises(ValueError, match=r"padding on each side must be at most dilation \* \(kernel_size - 1\) = \(1, 1, 1\)"):
        nn.MaxPool3d(2, padding=2)
    with pytest.raises(ValueError, match="kernel_size must be an int or a triple"):
        nn.AvgPool3d((2, 2))
    with pytest.raises(ValueError, match="divisor_override must be positive, got 0"):
        nn.AvgPool3d(2, divisor_override=0)
    with pytest.raises(ValueError, match="output_size must be an int or a triple"):
        nn.AdaptiveAvgPool3d((2, 2))
    with pytest.raises(ValueError, match=r"x must be 4 or 5-dimensional, got an array of shape \(1, 1, 4\)"):
        nn.MaxPool3d(2)(np.ones((1, 1, 4)))


# --- refusals ------------------------------------------------------------------------------------------

X = np.ones((1, 2, 4, 5, 6))


@pytest.mark.parametrize("call, error, message", [
    (lambda: convx.max_pool3d(X.astype(np.int32), 2), TypeError, "x must have dtype float32 or float64, got dtype int32"),
    (lambda: convx.max_pool3d(X[0, 0], 2), ValueError,
     r"max_pool3d expects x of shape \(N, C, D, H, W\) or \(C, D, H, W\), got an array of shape \(4, 5, 6\)"),
    (lambda: convx.max_pool3d(X, 0), ValueError, "kernel_size must be positive, got 0"),
    (lambda: convx.max_pool3d(X, (2, 2)), ValueError, "kernel_size must be an int or a triple of ints"),
    (lambda: convx.max_pool3d(X, 2.0), TypeError, "kernel_size must be an int, got 2.0"),
    (lambda: convx.max_pool3d(X, 2, stride=(1, 0, 1)), ValueError, r"stride\[1\] must be positive, got 0"),
    (lambda: convx.max_pool3d(X, 2, padding=-1), ValueError, "padding must be at least 0, got -1"),
    (lambda: convx.max_pool3d(X, (3, 2, 3), padding=(1, 2, 1)), ValueError,
     r"padding on each side must be at most dilation \* \(kernel_size - 1\) = \(2, 1, 2\) for "
     r"kernel_size=\(3, 2, 3\) and dilation=\(1, 1, 1\) \(a window must reach the input\), got padding=\(1, 2, 1\)"),
    (lambda: convx.max_pool3d(X, 2, dilation=0), ValueError, "dilation must be positive, got 0"),
    (lambda: convx.max_pool3d(X, 5), ValueError, "the pooling output of x would be 0x1x1 for a 4x5x6 input"),
    (lambda: convx.max_pool3d(X, 2, dilation=4), ValueError, "the pooling output of x would be"),
    (lambda: convx.max_pool3d(X, 2, ceil_mode=1), TypeError, "ceil_mode must be a bool, got 1"),
    (lambda: convx.max_pool3d(X, 2, return_indices="yes"), TypeError, "return_indices must be a bool"),
    (lambda: convx.max_pool3d(np.ones((1, 1, 2, 2, 2)), 2, 1, 1, 3), ValueError, "has every tap in the padding"),
    (lambda: convx.avg_pool3d(X, 2, divisor_override=0), ValueError, "divisor_override must be positive, got 0"),
    (lambda: convx.avg_pool3d(X, 2, count_include_pad=None), TypeError, "count_include_pad must be a bool"),
    (lambda: convx.avg_pool3d(X, 2, padding=(1, 1)), ValueError,
     r"padding must be an int, \(pD, pH, pW\), \(\(front, back\), \(top, bottom\), \(left, right\)\), 'valid', "
     r"'same' or 'same_lower', got a sequence of length 2"),
    (lambda: convx.avg_pool3d_backward(np.ones((1, 2, 2, 2, 2)), X.shape, 2), ValueError,
     r"grad_out must have the forward output shape \(1, 2, 2, 2, 3\)"),
    (lambda: convx.avg_pool3d_backward(np.ones((1, 3, 2, 2, 3)), X.shape, 2), ValueError,
     "the leading \\(batch and channel\\) axes must be \\(1, 2\\)"),
    (lambda: convx.avg_pool3d_backward(np.ones((1, 2, 2, 2, 3)), (1, 2, 4, 5), 2), ValueError,
     "grad_out must be 4-dimensional like input_shape"),
    (lambda: convx.max_pool3d_backward(np.ones((1, 2, 2, 2, 3)), np.ones((1, 2, 2, 2, 3)), X.shape), TypeError,
     "indices must have dtype int64"),
    (lambda: convx.max_pool3d_backward(np.ones((1, 2, 2, 2, 3)), np.full((1, 2, 2, 2, 3), 120), X.shape), ValueError,
     r"indices must lie in \[0, D\*H\*W\) = \[0, 120\) for input_shape \(1, 2, 4, 5, 6\), got 120"),
    (lambda: convx.max_pool3d_backward(np.ones((1, 2, 2, 2, 3)), np.full((1, 2, 2, 2, 3), -1), X.shape), ValueError,
     r"indices must lie in \[0, D\*H\*W\) = \[0, 120\)"),
    (lambda: convx.max_pool3d_backward(np.ones((1, 2, 2, 2, 3)), np.zeros((1, 2, 2, 2, 2), np.int64), X.shape),
     ValueError, "indices must have the shape of grad_out"),
    (lambda: convx.adaptive_avg_pool3d(X, (1, 2)), ValueError, "output_size must be an int or a triple of ints"),
    (lambda: convx.adaptive_avg_pool3d(X, (1, 0, 2)), ValueError, r"output_size\[1\] must be positive, got 0"),
    (lambda: convx.adaptive_max_pool3d(np.ones((1, 1, 0, 2, 2)), 1), ValueError,
     "x must have a non-empty volume for adaptive pooling"),
    (lambda: convx.adaptive_max_pool3d(X, 2, return_indices=1), TypeError, "return_indices must be a bool"),
    (lambda: convx.adaptive_avg_pool3d_backward(np.ones((1, 2, 0, 1, 1)), X.shape), ValueError,
     "grad_out must have a non-empty output volume"),
    (lambda: convx.adaptive_avg_pool3d_backward(np.ones((1, 2, 1, 1, 1), np.float32), "shape"), TypeError,
     "input_shape must be a tuple of ints"),
])
def test_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_pytorch_refuses_what_convx_refuses():
    # Padding past the kernel's reach and the empty output are refused by PyTorch too (its rule,
    # half the kernel, is stricter than convx's, ONNX's).
    with pytest.raises(RuntimeError):
        TF.max_pool3d(_t(X), 2, padding=2)
    with pytest.raises(RuntimeError):
        TF.avg_pool3d(_t(X), 5)
