"""The channels-last side of the pooling ops: ``layout='NHWC'`` (2-D) and ``layout='NWC'`` (1-D).

The public functions of ``pooling`` and ``pooling1d`` hand their arguments here when the layout
is channels last. Arguments are validated as there (with the same helpers, so the same refusals),
shapes read with the channel axis last, and the NHWC kernels of ``convx._core`` called on the
arrays as they are: no transposes. A 1-D (N, L, C) array is viewed as (N, 1, L, C), as the
channels-first 1-D ops view (N, C, L) as (N, C, 1, L). Indices are the channels-first ones, flat
``h * W + w`` positions in each image's plane (``w`` for 1-D), laid out (N, out_h, out_w, C).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from .. import _core
from .._batching import even_slices, sub_batches
from .._checks import MAX_POOL_DTYPES, SUPPORTED_DTYPES, as_bool, as_layout_array, as_shape, as_single, contiguous
from .._threads import kernel_threads
from .._typing import AnyArray, Padding, Shape
from .pooling import (
    AVG_TAP_WORK, MAX_TAP_WORK, SEPARABLE_WORK, _adaptive_output_size, _allocate, _as_indices, _avg_args, _avg_values,
    _max_pool_separable, _nonempty_plane, _pool_output_shape, _refuse_indices, _unbatch, _window_params,
    _window_values, _work,
)
from .pooling import max_pool2d as _max_pool2d_first

_CAUSE = "kernel_size, stride, padding, dilation and ceil_mode"

# Windows large against the image take the separable max pool: undilated float ones its
# channels-last kernel; dilated or 8-bit ones the channels-first kernel, to which the batch goes in
# parts of at most this many input elements (one image at least), each copied channels first and
# its output back.
_SEPARABLE_PART_ELEMENTS = 1 << 20
# ... where the channels-last direct kernel's taps (inside the input) times outputs exceed these
# many times the separable kernel's elements (plane, row pass, output), and the channels-first rule
# takes the separable kernel too. The direct kernel sweeps every tap over every output, a vector of
# channels at a time; the separable one costs a few passes (plus, on copies, the copies). With
# indices, float32, 2 threads, ms (Xeon family 6 model 167, medians), ratio: direct / separable.
# Channels-last separable kernel (medians of 3 x 7): 8x32x56x56 k5 s1 (8): 1.31 / 3.65; k9 s1 (27):
# 3.41 / 3.37; k13 s1 (56): 6.7 / 3.3; k15 s1 (75): 8.8 / 3.0; k19 s1 (120): 13.4 / 2.8; k15 s2 (32):
# 2.2 / 1.3; k21 s2 (63): 3.9 / 1.3; 4x16x64x64 k21 s2 (63): 4.8 / 0.44; k25 s3 (51): 2.6 / 0.36;
# k31 s2 (137): 9.1 / 0.43; 1x4x128x128 k127 s1: 445 / 0.59.
_SEPARABLE_TAP_RATIO = 24
# On channels-first copies (medians of 5-7): 8x32x56x56 k5 s1 (6): 1.05 / 10.5; k9 s1 (27): 2.9 /
# 10.3; k11 s1 (40): 3.7 / 15.0; k13 s1 (56): 5.1 / 14.6; k15 s1 (75): 6.6 / 9.9; k19 s1 (120): 9.9
# / 9.4; k15 s2 (32): 1.6 / 4.1; k21 s2 (63): 3.0 / 4.1; 4x16x64x64 k21 s2 (63): 3.5 / 1.3; k25 s3
# (51): 2.3 / 1.2; k31 s2 (137): 5.8 / 1.4; 1x4x128x128 k127 s1: 354 / 0.6.
_SEPARABLE_COPY_TAP_RATIO = 64


def _inside_taps(kernel: int, dilation: int, size: int) -> int:
    """The most taps of a window along an axis of ``size`` that lie inside the input (1 at least)."""
    return max(1, min(kernel, (size - 1) // dilation + 1))


def _shape_text(dims: int, out: bool = False) -> str:
    """The shapes a channels-last array may have, naming the layout, for a refusal."""
    if dims == 1:
        length = "L_out" if out else "L"
        return f"(N, {length}, C) or ({length}, C) with layout='NWC'"
    plane = "out_h, out_w" if out else "H, W"
    return f"(N, {plane}, C) or ({plane}, C) with layout='NHWC'"


def _batched(op: str, name: str, value: object, dims: int = 2, out: bool = False,
             dtypes: tuple[np.dtype[Any], ...] = SUPPORTED_DTYPES) -> tuple[AnyArray, bool]:
    """``value`` as a float32/float64 (or ``dtypes``) channels-last batch and whether it came without
    the batch axis."""
    array = as_layout_array(op, name, value, (dims + 1, dims + 2), _shape_text(dims, out), dtypes)
    if array.ndim == dims + 1:
        return array[np.newaxis], True
    return array, False


def _input_shape(input_shape: object, grad_out: AnyArray, dims: int = 2) -> tuple[tuple[int, ...], bool]:
    """``input_shape`` (channels last) with a batch axis (and whether it had none), checked against
    grad_out's batch and channel axes."""
    shape = as_shape("input_shape", input_shape, (dims + 1, dims + 2))
    if grad_out.ndim != len(shape):
        raise ValueError(
            f"grad_out must be {len(shape)}-dimensional like input_shape {shape}, got an array of shape {grad_out.shape}"
        )
    if grad_out.shape[:-dims - 1] != shape[:-dims - 1] or grad_out.shape[-1] != shape[-1]:
        layout = "NWC" if dims == 1 else "NHWC"
        raise ValueError(
            f"grad_out of shape {grad_out.shape} does not match input_shape {shape} with layout={layout!r}: the "
            f"batch and channel axes (first and last) must be {(*shape[:-dims - 1], shape[-1])}"
        )
    if len(shape) == dims + 1:
        return (1, *shape), True
    return shape, False


def max_pool2d(
    x: object, kernel_size: object, stride: object, padding: object, dilation: object, ceil_mode: object,
    return_indices: object, op: str = "max_pool2d",
) -> Any:
    """:func:`convx.functional.max_pool2d` with ``layout='NHWC'`` (int8 and uint8 too, exact)."""
    x, unbatched = _batched(op, "x", x, dtypes=MAX_POOL_DTYPES)
    ceil_mode = as_bool("ceil_mode", ceil_mode)
    kernel, stride_, spec, dilation_ = _window_params(kernel_size, stride, padding, dilation, ceil_mode)
    return_indices = as_bool("return_indices", return_indices)
    n, height, width, c = x.shape
    (out_h, out_w), sides = _pool_output_shape("x", (height, width), kernel, stride_, spec, dilation_, ceil_mode)

    y = _allocate((n, out_h, out_w, c), x.dtype, _CAUSE)
    indices = _allocate(y.shape if return_indices else (0, 0, 0, 0), np.int64, _CAUSE)
    padding_ = (sides[0][0], sides[1][0])
    separable_work = height * width + height * out_w + out_h * out_w
    # The channels-last kernel sweeps the taps of each window inside the input only.
    taps = _inside_taps(kernel[0], dilation_[0], height) * _inside_taps(kernel[1], dilation_[1], width)
    native = dilation_ == (1, 1) and x.dtype in SUPPORTED_DTYPES and max(height, width) < 2**31
    ratio = _SEPARABLE_TAP_RATIO if native else _SEPARABLE_COPY_TAP_RATIO
    separable = bool(y.size and taps * out_h * out_w > ratio * separable_work
                     and _max_pool_separable(x.dtype, height, width, out_h, out_w, kernel, stride_, padding_,
                                             dilation_))
    if separable and native:
        x = contiguous(x)
        for part in sub_batches(n, SEPARABLE_WORK * c * separable_work):
            _core.max_pool2d_nhwc_separable(x[part], y[part], indices[part], *kernel, *stride_, *padding_,
                                            kernel_threads(elements=x[part].size))
    elif separable:
        padding = cast(Padding, spec)
        for part in even_slices(n, max(1, _SEPARABLE_PART_ELEMENTS // (height * width * c))):
            first = np.ascontiguousarray(x[part].transpose(0, 3, 1, 2))
            if return_indices:
                y_first, indices_first = _max_pool2d_first(first, kernel, stride_, padding, dilation_, ceil_mode,
                                                           return_indices=True)
                indices[part] = indices_first.transpose(0, 2, 3, 1)
            else:
                y_first = _max_pool2d_first(first, kernel, stride_, padding, dilation_, ceil_mode)
            y[part] = y_first.transpose(0, 2, 3, 1)
    elif y.size:
        x = contiguous(x)
        for part in sub_batches(n, _work(c, height * width, out_h * out_w, MAX_TAP_WORK * taps)):
            _core.max_pool2d_nhwc_forward(x[part], y[part], indices[part], *kernel, *stride_, sides[0][0],
                                          sides[1][0], *dilation_, kernel_threads(elements=x[part].size))
    if return_indices:
        return _unbatch(y, unbatched), _unbatch(indices, unbatched)
    return _unbatch(y, unbatched)


def scatter_maxima(grad_out: AnyArray, indices: NDArray[np.int64], shape: Shape, unbatched: bool,
                   input_shape: object, plane: str = "H*W") -> AnyArray:
    """grad_x of ``shape`` (channels last, batched) with each grad_out added at its index."""
    plane_size = shape[1] * shape[2]
    grad_x = np.empty(shape, dtype=grad_out.dtype)
    if grad_x.size:
        grad_out4 = contiguous(grad_out[np.newaxis] if unbatched else grad_out)
        indices4 = contiguous(indices[np.newaxis] if unbatched else indices)
        outputs = grad_out4.shape[1] * grad_out4.shape[2]
        for part in sub_batches(shape[0], _work(shape[3], plane_size, outputs, 1)):
            if _core.max_pool2d_nhwc_backward(grad_out4[part], indices4[part], grad_x[part],
                                              kernel_threads(elements=grad_x[part].size)):
                _refuse_indices(indices, plane_size, tuple(input_shape), plane)  # type: ignore[arg-type]
    elif indices.size:  # an empty input plane, where no index is valid
        _refuse_indices(indices, plane_size, tuple(input_shape), plane)  # type: ignore[arg-type]
    return _unbatch(grad_x, unbatched)


def max_pool2d_backward(grad_out: object, indices: object, input_shape: object) -> AnyArray:
    """:func:`convx.functional.max_pool2d_backward` with ``layout='NHWC'``."""
    grad_out = as_layout_array("max_pool2d_backward", "grad_out", grad_out, (3, 4), _shape_text(2, True))
    indices = _as_indices(indices, grad_out)
    shape, unbatched = _input_shape(input_shape, grad_out)
    return scatter_maxima(grad_out, indices, shape, unbatched, input_shape)


def avg_pool2d(
    x: object, kernel_size: object, stride: object, padding: object, ceil_mode: object, count_include_pad: object,
    divisor_override: object, dilation: object, op: str = "avg_pool2d",
) -> AnyArray:
    """:func:`convx.functional.avg_pool2d` with ``layout='NHWC'``."""
    x, unbatched = _batched(op, "x", x)
    kernel, stride_, spec, dilation_, ceil_flag, include_pad, divisor = _avg_args(
        kernel_size, stride, padding, dilation, ceil_mode, count_include_pad, divisor_override  # type: ignore[arg-type]
    )
    n, height, width, c = x.shape
    (out_h, out_w), ((top, bottom), (left, right)) = _pool_output_shape(
        "x", (height, width), kernel, stride_, spec, dilation_, ceil_flag
    )
    y = _allocate((n, out_h, out_w, c), x.dtype, _CAUSE)
    if y.size:
        x = contiguous(x)
        for part in sub_batches(n, _work(c, height * width, out_h * out_w, AVG_TAP_WORK * kernel[0] * kernel[1])):
            _core.avg_pool2d_nhwc_forward(x[part], y[part], *kernel, *stride_, top, left, bottom, right, *dilation_,
                                          include_pad, divisor, kernel_threads(elements=x[part].size))
    return _unbatch(y, unbatched)


def avg_pool2d_backward(
    grad_out: object, input_shape: object, kernel_size: object, stride: object, padding: object, ceil_mode: object,
    count_include_pad: object, divisor_override: object, dilation: object,
) -> AnyArray:
    """:func:`convx.functional.avg_pool2d_backward` with ``layout='NHWC'``."""
    grad_out = as_layout_array("avg_pool2d_backward", "grad_out", grad_out, (3, 4), _shape_text(2, True))
    shape, unbatched = _input_shape(input_shape, grad_out)
    kernel, stride_, spec, dilation_, ceil_flag, include_pad, divisor = _avg_args(
        kernel_size, stride, padding, dilation, ceil_mode, count_include_pad, divisor_override  # type: ignore[arg-type]
    )
    (out_h, out_w), ((top, bottom), (left, right)) = _pool_output_shape(
        "input_shape", shape[1:3], kernel, stride_, spec, dilation_, ceil_flag
    )
    if grad_out.shape[-3:-1] != (out_h, out_w):
        raise ValueError(
            f"grad_out must have the forward output shape {(*grad_out.shape[:-3], out_h, out_w, grad_out.shape[-1])} "
            f"for input_shape {tuple(input_shape)} (layout='NHWC') and these pooling arguments, "  # type: ignore[arg-type]
            f"got {grad_out.shape}"
        )
    grad_x = _allocate(shape, grad_out.dtype, "input_shape")
    if grad_x.size:
        grad_out4 = contiguous(grad_out[np.newaxis] if unbatched else grad_out)
        work = _work(shape[3], shape[1] * shape[2], out_h * out_w, AVG_TAP_WORK * kernel[0] * kernel[1])
        for part in sub_batches(shape[0], work):
            _core.avg_pool2d_nhwc_backward(grad_out4[part], grad_x[part], *kernel, *stride_, top, left, bottom, right,
                                           *dilation_, include_pad, divisor, kernel_threads(elements=grad_x[part].size))
    return _unbatch(grad_x, unbatched)


def adaptive_avg_pool2d(x: object, output_size: Any, op: str = "adaptive_avg_pool2d") -> AnyArray:
    """:func:`convx.functional.adaptive_avg_pool2d` with ``layout='NHWC'``."""
    x, unbatched = _batched(op, "x", x)
    n, height, width, c = x.shape
    _nonempty_plane("x", height, width)
    out_h, out_w = _adaptive_output_size(output_size, height, width)
    y = _allocate((n, out_h, out_w, c), x.dtype, "output_size")
    if y.size:
        x = contiguous(x)
        for part in sub_batches(n, _work(c, 4 * height * width, out_h * out_w, 4)):
            _core.adaptive_avg_pool2d_nhwc_forward(x[part], y[part], kernel_threads(elements=x[part].size))
    return _unbatch(y, unbatched)


def adaptive_avg_pool2d_backward(grad_out: object, input_shape: object) -> AnyArray:
    """:func:`convx.functional.adaptive_avg_pool2d_backward` with ``layout='NHWC'``."""
    grad_out = as_layout_array("adaptive_avg_pool2d_backward", "grad_out", grad_out, (3, 4), _shape_text(2, True))
    shape, unbatched = _input_shape(input_shape, grad_out)
    _nonempty_plane("input_shape", shape[1], shape[2])
    out_h, out_w = grad_out.shape[-3:-1]
    if out_h < 1 or out_w < 1:
        raise ValueError(f"grad_out must have a non-empty output plane, got shape {grad_out.shape}")
    grad_x = _allocate(shape, grad_out.dtype, "input_shape")
    if grad_x.size:
        grad_out4 = contiguous(grad_out[np.newaxis] if unbatched else grad_out)
        for part in sub_batches(shape[0], _work(shape[3], 4 * shape[1] * shape[2], out_h * out_w, 4)):
            _core.adaptive_avg_pool2d_nhwc_backward(grad_out4[part], grad_x[part],
                                                    kernel_threads(elements=grad_x[part].size))
    return _unbatch(grad_x, unbatched)


def adaptive_max_pool2d(x: object, output_size: Any, return_indices: object, op: str = "adaptive_max_pool2d") -> Any:
    """:func:`convx.functional.adaptive_max_pool2d` with ``layout='NHWC'`` (int8 and uint8 too, exact)."""
    x, unbatched = _batched(op, "x", x, dtypes=MAX_POOL_DTYPES)
    n, height, width, c = x.shape
    _nonempty_plane("x", height, width)
    out_h, out_w = _adaptive_output_size(output_size, height, width)
    return_indices = as_bool("return_indices", return_indices)
    y = _allocate((n, out_h, out_w, c), x.dtype, "output_size")
    indices = _allocate(y.shape if return_indices else (0, 0, 0, 0), np.int64, "output_size")
    if y.size:
        x = contiguous(x)
        for part in sub_batches(n, _work(c, 4 * height * width, out_h * out_w, 4)):
            _core.adaptive_max_pool2d_nhwc_forward(x[part], y[part], indices[part],
                                                   kernel_threads(elements=x[part].size))
    if return_indices:
        return _unbatch(y, unbatched), _unbatch(indices, unbatched)
    return _unbatch(y, unbatched)


# 1-D, channels last: (N, L, C) viewed as (N, 1, L, C).

def _plane(array: AnyArray) -> AnyArray:
    """(..., L, C) viewed as (..., 1, L, C)."""
    return array[..., np.newaxis, :, :]


def _line(array: AnyArray) -> AnyArray:
    """(..., 1, L, C) viewed as (..., L, C)."""
    return array[..., 0, :, :]


def _plane_shape(shape: Shape) -> Shape:
    """A batched (N, L, C) shape as the (N, 1, L, C) of its view."""
    return (shape[0], 1, *shape[1:])


def _length_args(kernel_size: object, stride: object, padding: object, dilation: object, ceil_mode: bool,
                 length: int, name: str) -> tuple[int, int, tuple[int, int], int]:
    """A 1-D op's kernel, stride, (left, right) padding and dilation, validated against the length."""
    (kernel,), (stride_,), spec, (dilation_,) = _window_values(kernel_size, stride, padding, dilation, 1, ceil_mode)
    _, (sides,) = _pool_output_shape(name, (length,), (kernel,), (stride_,), spec, (dilation_,), ceil_mode)
    return kernel, stride_, sides, dilation_


def max_pool1d(x: object, kernel_size: object, stride: object, padding: object, dilation: object, ceil_mode: object,
               return_indices: object) -> Any:
    """:func:`convx.functional.max_pool1d` with ``layout='NWC'``."""
    x, unbatched = _batched("max_pool1d", "x", x, dims=1, dtypes=MAX_POOL_DTYPES)
    ceil_flag = as_bool("ceil_mode", ceil_mode)
    kernel, stride_, sides, dilation_ = _length_args(kernel_size, stride, padding, dilation, ceil_flag, x.shape[1], "x")
    return_indices = as_bool("return_indices", return_indices)
    result = max_pool2d(_plane(x), (1, kernel), (1, stride_), ((0, 0), sides), (1, dilation_), ceil_flag,
                        return_indices)
    if return_indices:
        y, indices = result
        return _unbatch(_line(y), unbatched), _unbatch(_line(indices), unbatched)
    return _unbatch(_line(result), unbatched)


def max_pool1d_backward(grad_out: object, indices: object, input_shape: object) -> AnyArray:
    """:func:`convx.functional.max_pool1d_backward` with ``layout='NWC'``."""
    grad_out = as_layout_array("max_pool1d_backward", "grad_out", grad_out, (2, 3), _shape_text(1, True))
    indices = _as_indices(indices, grad_out)
    shape, unbatched = _input_shape(input_shape, grad_out, dims=1)
    if unbatched:
        grad_out, indices = grad_out[np.newaxis], indices[np.newaxis]
    grad_x = scatter_maxima(_plane(grad_out), _plane(indices), _plane_shape(shape), False, input_shape, "L")
    return _unbatch(_line(grad_x), unbatched)


def avg_pool1d(x: object, kernel_size: object, stride: object, padding: object, ceil_mode: object,
               count_include_pad: object, dilation: object) -> AnyArray:
    """:func:`convx.functional.avg_pool1d` with ``layout='NWC'``."""
    x, unbatched = _batched("avg_pool1d", "x", x, dims=1)
    (kernel,), (stride_,), spec, (dilation_,), ceil_flag, include_pad, _ = _avg_values(
        kernel_size, stride, padding, dilation, ceil_mode, count_include_pad, None, 1  # type: ignore[arg-type]
    )
    _, (sides,) = _pool_output_shape("x", (x.shape[1],), (kernel,), (stride_,), spec, (dilation_,), ceil_flag)
    y = avg_pool2d(_plane(x), (1, kernel), (1, stride_), ((0, 0), sides), ceil_flag, include_pad, None,
                   (1, dilation_))
    return _unbatch(_line(y), unbatched)


def avg_pool1d_backward(grad_out: object, input_shape: object, kernel_size: object, stride: object, padding: object,
                        ceil_mode: object, count_include_pad: object, dilation: object) -> AnyArray:
    """:func:`convx.functional.avg_pool1d_backward` with ``layout='NWC'``."""
    grad_out = as_layout_array("avg_pool1d_backward", "grad_out", grad_out, (2, 3), _shape_text(1, True))
    shape, unbatched = _input_shape(input_shape, grad_out, dims=1)
    (kernel,), (stride_,), spec, (dilation_,), ceil_flag, include_pad, _ = _avg_values(
        kernel_size, stride, padding, dilation, ceil_mode, count_include_pad, None, 1  # type: ignore[arg-type]
    )
    (out_length,), (sides,) = _pool_output_shape(
        "input_shape", (shape[1],), (kernel,), (stride_,), spec, (dilation_,), ceil_flag
    )
    if grad_out.shape[-2] != out_length:
        raise ValueError(
            f"grad_out must have the forward output shape {(*grad_out.shape[:-2], out_length, grad_out.shape[-1])} "
            f"for input_shape {tuple(input_shape)} (layout='NWC') and these pooling arguments, "  # type: ignore[arg-type]
            f"got {grad_out.shape}"
        )
    grad4 = grad_out[np.newaxis] if unbatched else grad_out
    grad_x = avg_pool2d_backward(_plane(grad4), _plane_shape(shape), (1, kernel), (1, stride_), ((0, 0), sides),
                                 ceil_flag, include_pad, None, (1, dilation_))
    return _unbatch(_line(grad_x), unbatched)


def _nonempty_length(name: str, shape: Shape) -> None:
    if shape[-2] < 1:
        raise ValueError(
            f"{name} must have a non-empty length L for adaptive pooling (layout='NWC'), got shape {tuple(shape)}"
        )


def adaptive_avg_pool1d(x: object, output_size: object) -> AnyArray:
    """:func:`convx.functional.adaptive_avg_pool1d` with ``layout='NWC'``."""
    x, unbatched = _batched("adaptive_avg_pool1d", "x", x, dims=1)
    _nonempty_length("x", x.shape)
    y = adaptive_avg_pool2d(_plane(x), (1, as_single("output_size", output_size, 1)))
    return _unbatch(_line(y), unbatched)


def adaptive_avg_pool1d_backward(grad_out: object, input_shape: object) -> AnyArray:
    """:func:`convx.functional.adaptive_avg_pool1d_backward` with ``layout='NWC'``."""
    grad_out = as_layout_array("adaptive_avg_pool1d_backward", "grad_out", grad_out, (2, 3), _shape_text(1, True))
    shape, unbatched = _input_shape(input_shape, grad_out, dims=1)
    _nonempty_length("input_shape", shape)
    if grad_out.shape[-2] < 1:
        raise ValueError(f"grad_out must have a non-empty output length, got shape {grad_out.shape}")
    grad4 = grad_out[np.newaxis] if unbatched else grad_out
    return _unbatch(_line(adaptive_avg_pool2d_backward(_plane(grad4), _plane_shape(shape))), unbatched)


def adaptive_max_pool1d(x: object, output_size: object, return_indices: object) -> Any:
    """:func:`convx.functional.adaptive_max_pool1d` with ``layout='NWC'``."""
    x, unbatched = _batched("adaptive_max_pool1d", "x", x, dims=1, dtypes=MAX_POOL_DTYPES)
    _nonempty_length("x", x.shape)
    size = (1, as_single("output_size", output_size, 1))
    if as_bool("return_indices", return_indices):
        y, indices = adaptive_max_pool2d(_plane(x), size, True)
        return _unbatch(_line(y), unbatched), _unbatch(_line(indices), unbatched)
    return _unbatch(_line(adaptive_max_pool2d(_plane(x), size, False)), unbatched)
