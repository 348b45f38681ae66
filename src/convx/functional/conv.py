"""Public convolution ops: validate, normalise, allocate, then call one kernel in ``convx._core``.

Semantics follow ``torch.nn.functional.conv2d`` / ``conv_transpose2d`` and ``torch.nn.grad``.
Arrays are NCHW; unbatched CHW input gives unbatched output. A huge batch goes to the kernel in
bounded sub-batches, so that Ctrl-C can stop it (``convx._batching``).
"""

from __future__ import annotations

import math

from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from .. import _autotune, _core
from .._batching import conv_work, even_slices, sub_batches, summed_sub_batches
from .._checks import (
    as_data_layout,
    as_float_array,
    as_int,
    as_padding,
    as_pair,
    as_shape,
    channels_first,
    channels_first_shape,
    channels_last,
    contiguous,
    same_dtype,
)
from .._products import matmul
from .._shapes import conv_output_size, conv_reading_outputs, conv_transpose_output_size, padding_sides
from .._threads import kernel_threads
from .._typing import AnyArray, Float, IntPair, Padding, PaddingWord, Shape
from .activations import Epilogue, activation_epilogue, check_no_activation_params

# BLAS takes 32-bit dimensions and leading dimensions.
_INT32_LIMIT = 2**31 - 1


class _ConvPlan(NamedTuple):
    """Everything a convolution kernel needs besides the arrays, validated."""

    batch: int
    out_channels: int
    out_h: int
    out_w: int
    stride: tuple[int, int]
    pad: tuple[int, int]  # top, left; bottom/right padding only affects out_h/out_w
    dilation: tuple[int, int]
    groups: int

    def kernel_args(self) -> tuple[int, int, int, int, int, int, int]:
        return (*self.stride, *self.pad, *self.dilation, self.groups)

    def threads(self, weight_shape: Shape) -> int:
        """Kernel threads for one pass over the batch: small convolutions run on fewer."""
        return kernel_threads(self.batch * self.out_h * self.out_w * math.prod(weight_shape))


def _is_depthwise(weight_shape: Shape, groups: int) -> bool:
    """One input channel per group: the direct kernels beat a GEMM with a single-row operand."""
    return weight_shape[1] == 1 and groups > 1


def _whole_window(input_shape: Shape, weight_shape: Shape, plan: _ConvPlan) -> bool:
    """Whether each output is one filter dotted with one whole input image: a 1x1 output whose
    window is exactly the input (no padding inside it, dilation 1, one group). The convolution
    is then one matrix product over the batch, ``(N, C*H*W) @ (C*H*W, C_out)``, which numpy's
    BLAS does far better than one small product per image."""
    return (
        plan.out_h == plan.out_w == 1 and plan.pad == (0, 0) and plan.dilation == (1, 1) and plan.groups == 1
        and tuple(weight_shape[2:]) == tuple(input_shape[2:])
    )


ALGORITHMS = ("direct", "winograd", "auto")

# Below this many channels on either side, Winograd's transforms cost more than its GEMMs save.
_WINOGRAD_MIN_CHANNELS = 16
# algorithm="auto" keeps Winograd's transformed weight (36/9 of the weight) below this size.
_WINOGRAD_AUTO_BYTES = 256 * 2**20


def check_algorithm(
    algorithm: str, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int], groups: int
) -> bool:
    """Validate ``algorithm`` for a convolution's geometry; return whether Winograd F(4x4, 3x3) applies to it."""
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(map(repr, ALGORITHMS))}, got {algorithm!r}")
    applies = tuple(kernel) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1) and groups == 1
    if algorithm == "winograd" and not applies:
        raise ValueError(
            f"algorithm='winograd' needs a 3x3 kernel, stride 1, dilation 1 and groups=1, got kernel {tuple(kernel)}, "
            f"stride={tuple(stride)}, dilation={tuple(dilation)}, groups={groups}; use algorithm='auto' to fall back "
            "to 'direct' where Winograd does not apply"
        )
    return applies


def _winograd(algorithm: str, weight_shape: Shape, plan: _ConvPlan, itemsize: int) -> bool:
    """Whether to compute with Winograd F(4x4, 3x3): ``algorithm`` validated against the geometry."""
    kernel = (weight_shape[2], weight_shape[3])
    applies = check_algorithm(algorithm, kernel, plan.stride, plan.dilation, plan.groups)
    if algorithm == "direct" or not applies:
        return False
    if algorithm == "winograd":
        return True
    transformed_bytes = 36 * weight_shape[0] * weight_shape[1] * itemsize
    return min(weight_shape[:2]) >= _WINOGRAD_MIN_CHANNELS and transformed_bytes <= _WINOGRAD_AUTO_BYTES


def _input_gradient(
    grad_out: AnyArray, weight: AnyArray, grad_in: AnyArray, plan: _ConvPlan, winograd: bool, n_threads: int
) -> None:
    """grad_in := conv2d's input gradient, for C-contiguous arrays of one (sub-)batch."""
    if not winograd and _whole_window(grad_in.shape, weight.shape, plan):
        n, c_out = grad_out.shape[:2]
        matmul(grad_out.reshape(n, c_out), weight.reshape(c_out, -1), grad_in.reshape(n, -1), n_threads)
        return
    if winograd:
        # A stride-1 3x3 convolution's input gradient is one too: the kernel rotated by 180
        # degrees and transposed, padding 2 - p.
        pad_h, pad_w = plan.pad
        if not _core.winograd_forward(grad_out, weight, _no_bias(grad_out.dtype), grad_in, 2 - pad_h, 2 - pad_w,
                                      True, n_threads):
            return
    kernel = _core.depthwise_backward_input if _is_depthwise(weight.shape, plan.groups) else _core.conv2d_backward_input
    kernel(grad_out, weight, grad_in, *plan.kernel_args(), n_threads)


def _check_sizes(*values: tuple[str, int]) -> None:
    """Each (name, value) at most ``_INT32_LIMIT``."""
    for name, value in values:
        if value > _INT32_LIMIT:
            raise ValueError(f"{name} is {value}, larger than convx supports (at most {_INT32_LIMIT})")


_KERNEL_AXES = {1: ("kernel_length",), 2: ("kernel_height", "kernel_width")}


# How each layout reads an input's shape, for messages.
_LAYOUT_SHAPES = {
    "NCW": "(N, C_in, L)", "NWC": "(N, L, C_in)", "NCHW": "(N, C_in, H, W)", "NHWC": "(N, H, W, C_in)",
    "NCDHW": "(N, C_in, D, H, W)", "NDHWC": "(N, D, H, W, C_in)",
}


def check_conv_shapes(
    input_shape: Shape, weight_shape: Shape, groups: int, input_name: str = "x", layout: str | None = None
) -> None:
    """A convolution's input (N, C_in, *spatial) and weight (C_out, C_in / groups, *kernel) shapes,
    1-D or 2-D, checked against each other and ``groups``; messages show the shapes as given, and
    name the ``layout`` the input's shape was read in where given."""
    c_in, c_out, c_in_group, kernel = input_shape[1], weight_shape[0], weight_shape[1], weight_shape[2:]
    if min(kernel) < 1:
        sizes = ", ".join(f"{axis}: {size}" for axis, size in zip(_KERNEL_AXES[len(kernel)], kernel))
        raise ValueError(
            f"kernel size should be greater than zero, but got {sizes} (weight shape {tuple(weight_shape)})"
        )
    if min(c_in, *input_shape[2:]) < 1:
        raise ValueError(
            f"{input_name} must have non-empty channel and spatial dimensions, got shape {tuple(input_shape)}"
        )
    if c_out < 1 or c_in_group < 1:
        raise ValueError(f"weight must have non-empty channel dimensions, got shape {tuple(weight_shape)}")
    if c_in % groups or c_out % groups:
        raise ValueError(
            f"groups={groups} must divide both the input channels ({c_in}) and the output channels ({c_out})"
        )
    if c_in_group * groups != c_in:
        raise ValueError(
            f"weight of shape {tuple(weight_shape)} expects {c_in_group * groups} input channels "
            f"(weight.shape[1] * groups = {c_in_group} * {groups}), but {input_name} has {c_in}; "
            f"weight.shape[1] must be C_in / groups = {c_in // groups}{_layout_read(input_name, layout)}"
        )


def _layout_read(name: str, layout: str | None) -> str:
    """How the layout assumed read an array's shape, and the other layout, for a shape that does not fit."""
    if layout is None:
        return ""
    other = {"NCW": "NWC", "NWC": "NCW", "NCHW": "NHWC", "NHWC": "NCHW", "NCDHW": "NDHWC", "NDHWC": "NCDHW"}[layout]
    return (
        f" ({name} read as {_LAYOUT_SHAPES[layout]}, layout={layout!r}; if it is {_LAYOUT_SHAPES[other]}, pass "
        f"layout={other!r})"
    )


def _plan_conv(
    input_shape: Shape, weight_shape: Shape, stride: IntPair, padding: Padding, dilation: IntPair, groups: int,
    input_name: str = "x", layout: str | None = None,
) -> _ConvPlan:
    """Validate a convolution's geometry and compute its output size.

    ``input_shape`` is (N, C_in, H, W), ``weight_shape`` (C_out, C_in / groups, kH, kW).
    """
    batch, c_in, height, width = input_shape
    c_out, c_in_group, kernel_h, kernel_w = weight_shape
    stride = as_pair("stride", stride, 1)
    dilation = as_pair("dilation", dilation, 1)
    groups = as_int("groups", groups, 1)
    check_conv_shapes(input_shape, weight_shape, groups, input_name, layout)
    (pad_top, pad_bottom), (pad_left, pad_right) = padding_sides(
        as_padding(padding), (height, width), (kernel_h, kernel_w), stride, dilation
    )
    _check_sizes(
        ("stride", max(stride)), ("dilation", max(dilation)), ("padding", max(pad_top, pad_bottom, pad_left, pad_right)),
    )
    out_h = conv_output_size(height, kernel_h, stride[0], pad_top, pad_bottom, dilation[0])
    out_w = conv_output_size(width, kernel_w, stride[1], pad_left, pad_right, dilation[1])
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"the dilated kernel ({dilation[0] * (kernel_h - 1) + 1}x{dilation[1] * (kernel_w - 1) + 1}) is larger "
            f"than the padded input ({height + pad_top + pad_bottom}x{width + pad_left + pad_right}); "
            f"the output would be {out_h}x{out_w} (kernel {kernel_h}x{kernel_w}, dilation={dilation}, "
            f"padding=({pad_top}, {pad_bottom}, {pad_left}, {pad_right}))"
        )
    _check_sizes(
        (f"{input_name} plane size H*W", height * width), ("C_in/groups * kH * kW", c_in_group * kernel_h * kernel_w)
    )
    if out_h * out_w > _INT32_LIMIT:
        raise ValueError(
            f"output plane size H_out*W_out = {out_h}*{out_w} (from padding=({pad_top}, {pad_bottom}, {pad_left}, "
            f"{pad_right}), stride={stride}, dilation={dilation}) is {out_h * out_w}, larger than convx supports "
            f"(at most {_INT32_LIMIT})"
        )
    return _ConvPlan(batch, c_out, out_h, out_w, stride, (pad_top, pad_left), dilation, groups)


def _batched(array: AnyArray) -> tuple[AnyArray, bool]:
    if array.ndim == 3:
        return array[None], True
    return array, False


def _check_grad_out(grad_out: AnyArray, plan: _ConvPlan, channels_last: bool = False) -> None:
    expected: tuple[int, ...] = (plan.batch, plan.out_channels, plan.out_h, plan.out_w)
    if channels_last:
        expected = (plan.batch, plan.out_h, plan.out_w, plan.out_channels)
    if grad_out.shape != expected:
        raise ValueError(f"grad_out must have the forward output's shape {expected}, got {grad_out.shape}")


def _check_bias(bias: AnyArray | None, channels: int) -> None:
    if bias is not None and bias.shape != (channels,):
        raise ValueError(f"bias must have shape ({channels},), one value per output channel, got {bias.shape}")


def _no_bias(dtype: np.dtype[Any]) -> AnyArray:
    return np.empty(0, dtype=dtype)


def _unbatch(array: AnyArray, unbatched: bool) -> AnyArray:
    return array[0] if unbatched else array


def _first(array: AnyArray, last: bool) -> AnyArray:
    """A batch as channels first: a view of a channels-last one."""
    return channels_first(array) if last else array


def _pointwise(weight_shape: Shape, plan: _ConvPlan, input_hw: Shape) -> bool:
    """Whether a convolution is one product of the pixels (N*H*W, C_in) by the weight (C_out, C_in)^T."""
    return (
        weight_shape[2:] == (1, 1) and plan.stride == (1, 1) and plan.groups == 1
        and (plan.out_h, plan.out_w) == tuple(input_hw) and plan.pad == (0, 0)
    )


def _last_kernels(weight_shape: Shape, plan: _ConvPlan, input_hw: Shape) -> _ConvPlan | None:
    """The plan the direct (or, with one filter per channel, the depthwise) kernels take a channels-last
    convolution by (``_kernel_plan``'s), or None where they do not (depthwise convolutions with more
    filters per channel, and convolutions with outputs to cut off, take channels first)."""
    kept = _kernel_plan(input_hw, weight_shape[2:], plan)
    multiplied = _is_depthwise(weight_shape, plan.groups) and weight_shape[0] != plan.groups
    return None if multiplied or kept.trims(plan) else kept.plan


def _last_forward(
    x: AnyArray, weight: AnyArray, bias: AnyArray | None, plan: _ConvPlan, epilogue: Epilogue | None, y: AnyArray
) -> bool:
    """y := the convolution of channels-last x, where the direct kernels take it channels last or it is
    a product of the pixels; else False, y untouched. The direct kernels take 1x1 layers too: four
    MobileNet/ResNet-style 1x1 layers (batch 64) took 0.56-1.03x the BLAS product's time in the three
    ops, medians of 9 (Xeon, family 6 model 167, AVX-512, 2 threads)."""
    x, weight = contiguous(x), contiguous(weight)
    n_threads = plan.threads(weight.shape)
    parts = list(sub_batches(plan.batch, conv_work(weight.shape, plan.out_h * plan.out_w, x.shape)))
    inner = _last_kernels(weight.shape, plan, x.shape[1:3])
    bias_arg = _no_bias(y.dtype) if bias is None else contiguous(bias)
    depthwise = _is_depthwise(weight.shape, plan.groups)
    kernel = _core.depthwise_forward_channels_last if depthwise else _core.conv2d_forward_channels_last
    # (the kernels decline from the first part on, or never: the weight decides)
    if inner is not None and all(
        kernel(x[part], weight, bias_arg, y[part], *inner.kernel_args(), n_threads, *(epilogue or ()))
        for part in parts
    ):
        return True
    if not _pointwise(weight.shape, plan, x.shape[1:3]):
        return False
    for part in parts:
        rows = y[part].reshape(-1, plan.out_channels)
        matmul(x[part].reshape(len(rows), -1), weight.reshape(plan.out_channels, -1).T, rows, n_threads)
        if bias is not None:
            rows += bias
        if epilogue is not None:
            epilogue(rows)
    return True


# The input gradient of a channels-last 1x1 convolution with at least this many input channels is
# one product of the pixels (N*H*W, C_out) by the weight (C_out, C_in) (BLAS on convx's threads), not
# the direct kernels. Product / direct kernel time, 2 threads, medians of 9 (Xeon family 6 model 167,
# quiet): C_in 256, 512 and 512 (16x56x56 from 64, 16x28x28 from 128, 32x7x7 from 512): 0.79, 0.64,
# 0.80; C_in 256 from 128 at 64x8x8: 1.02; C_in 32-128: 0.90-1.08.
POINTWISE_INPUT_PRODUCT_CHANNELS = 256


def _last_input(grad_out: AnyArray, weight: AnyArray, plan: _ConvPlan, grad_x: AnyArray) -> bool:
    """grad_x := the input gradient of a channels-last convolution, as :func:`_last_forward` does the forward."""
    grad_out, weight = contiguous(grad_out), contiguous(weight)
    n_threads = plan.threads(weight.shape)
    parts = list(sub_batches(plan.batch, conv_work(weight.shape, plan.out_h * plan.out_w, grad_x.shape)))
    inner = _last_kernels(weight.shape, plan, grad_x.shape[1:3])
    depthwise = _is_depthwise(weight.shape, plan.groups)
    kernel = _core.depthwise_backward_input_channels_last if depthwise else _core.conv2d_backward_input_channels_last
    pointwise = _pointwise(weight.shape, plan, grad_x.shape[1:3])
    if inner is not None and not (pointwise and grad_x.shape[3] >= POINTWISE_INPUT_PRODUCT_CHANNELS) and all(
        kernel(grad_out[part], weight, grad_x[part], *inner.kernel_args(), n_threads) for part in parts
    ):
        return True
    if not pointwise:
        return False
    for part in parts:
        rows = grad_x[part].reshape(-1, grad_x.shape[3])
        matmul(grad_out[part].reshape(len(rows), -1), weight.reshape(plan.out_channels, -1), rows, n_threads)
    return True


def _last_weight(grad_out: AnyArray, x: AnyArray, plan: _ConvPlan, grad_w: AnyArray) -> bool:
    """grad_w := the weight gradient of a channels-last convolution, as :func:`_last_forward` does the
    forward; else False, grad_w zero."""
    n_threads = plan.threads(grad_w.shape)
    c_out, c_in = grad_w.shape[:2]
    grad_out, x = contiguous(grad_out), contiguous(x)
    work = conv_work(grad_w.shape, plan.out_h * plan.out_w, x.shape)
    depthwise = _is_depthwise(grad_w.shape, plan.groups)
    kernel = _core.depthwise_backward_weight_channels_last if depthwise else _core.conv2d_backward_weight_channels_last
    inner = _last_kernels(grad_w.shape, plan, x.shape[1:3])
    if inner is not None:
        for part, (total,) in summed_sub_batches(plan.batch, work, (grad_w,)):
            # (declined where a part's result is not finite: recomputed below or by the caller)
            if not kernel(grad_out[part], x[part], total, *inner.kernel_args(), n_threads):
                break
        else:
            return True
        grad_w[...] = 0
    if not _pointwise(grad_w.shape, plan, x.shape[1:3]):
        return False
    for part, (total,) in summed_sub_batches(plan.batch, work, (grad_w,)):
        matmul(grad_out[part].reshape(-1, c_out).T, x[part].reshape(-1, c_in), total.reshape(c_out, c_in), n_threads)
    return True


# A channels-last batch goes to the channels-first kernels in parts, each copied channels first and
# back: at most this many elements of the part's arrays (one image at least, and one per thread).
_LAYOUT_PART_ELEMENTS = 1 << 22


def _layout_parts(batch: int, image_elements: int) -> Iterator[slice]:
    """Consecutive slices covering ``range(batch)``, each image's arrays ``image_elements`` elements, as
    equal in size as whole images allow."""
    return even_slices(batch, max(kernel_threads(), _LAYOUT_PART_ELEMENTS // max(1, image_elements)))


_ALL = slice(None)
# Outputs that read padding only are cut off where at most this fraction of the output is left: the
# copies that cutting takes (the computed outputs into place, the output gradient cropped) cost more
# than computing a few such outputs. One row and column of 30 cut (16x64x56x56, 3x3, stride 2,
# padding 3; Xeon, family 6 model 167, AVX-512, medians of 5): forward 6.08 ms cut, 4.66 not;
# fused backward 11.75 and 11.14. Above it the kernels take the padding (their scratch is bounded
# apart from this, _conv_base.pxi SCRATCH_*), at most twice the outputs' work.
_CUT_KEEPS_AT_MOST = 0.5


class _KernelPlan(NamedTuple):
    """The convolution the kernels compute: ``plan`` without its outputs that read padding only."""

    plan: _ConvPlan
    rows: slice  # the outputs of the full convolution that plan's are
    cols: slice

    def trims(self, full: _ConvPlan) -> bool:
        return (self.plan.out_h, self.plan.out_w) != (full.out_h, full.out_w)

    def crop(self, array: AnyArray) -> AnyArray:
        """The outputs (or output gradient) of ``array`` (N, C, H_out, W_out) the kernels take, C-contiguous."""
        return np.ascontiguousarray(array[:, :, self.rows, self.cols])


def _kernel_plan(input_hw: Shape, kernel_hw: Shape, plan: _ConvPlan) -> _KernelPlan:
    """The problem handed to the kernels, the same convolution with nothing in it that padding, stride or
    dilation alone would make large.

    Outputs whose windows lie wholly in the padding are cut off (``conv_reading_outputs``): with a padding
    of 10**8 and a stride of 10**8, a 1x1 image's 2x2 output is one output computed and three that read
    only zeros, where the kernels' padded copies and column buffers would span the padding (9 GiB for
    the forward, 35 PiB for the weight gradient); where they are fewer than half (_CUT_KEEPS_AT_MOST),
    the kernels compute them as they are. The stride of an axis with one output, and the
    dilation of an axis with one tap, multiply nothing and are set to 1. The outputs cut off are the
    bias plus products with zeros (``_padding_only_output``, ``_padding_weight_gradient``); the input
    gradient never reads them. Padding left inside the windows that remain (and dilated taps that step
    past the input) is bounded in the kernels' choice of path (``_conv_base.pxi``, SCRATCH_*).
    """
    (kernel_h, kernel_w), (stride_h, stride_w), (pad_h, pad_w) = kernel_hw, plan.stride, plan.pad
    if (
        pad_h <= plan.dilation[0] * (kernel_h - 1) and pad_w <= plan.dilation[1] * (kernel_w - 1)
        and (input_hw[0] - 1 + pad_h) // stride_h >= plan.out_h - 1
        and (input_hw[1] - 1 + pad_w) // stride_w >= plan.out_w - 1
        and (plan.out_h > 1 or stride_h == 1) and (plan.out_w > 1 or stride_w == 1)
        and (kernel_h > 1 or plan.dilation[0] == 1) and (kernel_w > 1 or plan.dilation[1] == 1)
    ):
        # Nothing to cut off or set to 1 (most layers: padding within the kernel's reach), cheaply.
        return _KernelPlan(plan, _ALL, _ALL)
    rows = conv_reading_outputs(input_hw[0], kernel_hw[0], plan.stride[0], plan.pad[0], plan.dilation[0], plan.out_h)
    cols = conv_reading_outputs(input_hw[1], kernel_hw[1], plan.stride[1], plan.pad[1], plan.dilation[1], plan.out_w)
    if (rows[1] - rows[0]) * (cols[1] - cols[0]) > _CUT_KEEPS_AT_MOST * plan.out_h * plan.out_w:
        rows, cols = (0, plan.out_h), (0, plan.out_w)
    out_h, out_w = rows[1] - rows[0], cols[1] - cols[0]
    reduced = plan._replace(
        out_h=out_h, out_w=out_w,
        stride=(1 if out_h == 1 else plan.stride[0], 1 if out_w == 1 else plan.stride[1]),
        pad=(plan.pad[0] - rows[0] * plan.stride[0], plan.pad[1] - cols[0] * plan.stride[1]),
        dilation=(1 if kernel_hw[0] == 1 else plan.dilation[0], 1 if kernel_hw[1] == 1 else plan.dilation[1]),
    )
    return _KernelPlan(reduced, slice(*rows), slice(*cols))


def _reads_input(plan: _ConvPlan) -> bool:
    """Whether any output of the kernels' plan reads the input: with per-side padding, every window
    may lie in the padding (a 1-row image, 2 rows of padding on top and none below, stride 2), and
    the kernels are then given nothing to compute."""
    return plan.out_h > 0 and plan.out_w > 0


def _padding_only_output(weight: AnyArray, bias: AnyArray | None) -> AnyArray:
    """Each output channel's value where every tap of the window is in the padding: its bias plus the
    products of its weights with zeros, which are NaN where a weight is not finite (as where im2col
    computes them)."""
    value = np.where(np.isfinite(weight).all(axis=(1, 2, 3)), 0, np.nan).astype(weight.dtype)
    return value if bias is None else value + bias


def _padding_weight_gradient(grad_out: AnyArray, kept: _KernelPlan, grad_w: AnyArray) -> None:
    """Add to grad_w the cut-off outputs' share of the weight gradient: their gradient times zeros, for
    every tap, which is NaN for the output channels whose gradient there is not finite."""
    finite = np.isfinite(grad_out)
    finite[:, :, kept.rows, kept.cols] = True
    grad_w[~finite.all(axis=(0, 2, 3))] = np.nan


def _conv_call(
    op: str, input_shape: Shape, weight_shape: Shape, plan: _ConvPlan, dtype: np.dtype[Any], algorithm: str,
    winograd: bool,
) -> _autotune.ConvCall:
    """The convolution the kernels see (plan as they take it), for the autotuner."""
    applies = check_algorithm(algorithm, (weight_shape[2], weight_shape[3]), plan.stride, plan.dilation, plan.groups)
    n, c, h, w = input_shape
    o, i, kh, kw = weight_shape
    return _autotune.ConvCall(
        op, (n, c, h, w), (o, i, kh, kw), (plan.out_h, plan.out_w), plan.stride, plan.pad, plan.dilation,
        plan.groups, dtype.name, plan.threads(weight_shape), algorithm, winograd, applies,
        _is_depthwise(weight_shape, plan.groups), _whole_window(input_shape, weight_shape, plan),
    )


def _tuned(
    op: str, input_shape: Shape, weight_shape: Shape, plan: _ConvPlan, dtype: np.dtype[Any], algorithm: str,
    winograd: bool, compute: Callable[[bool], None],
) -> None:
    """compute(winograd), or with autotuning on, under the implementation the autotuner chose."""
    if not _autotune.get_autotune():
        compute(winograd)
        return
    _autotune.run(_conv_call(op, input_shape, weight_shape, plan, dtype, algorithm, winograd), compute)


def conv2d(
    x: NDArray[Float], weight: NDArray[Float], bias: NDArray[Float] | None = None,
    stride: IntPair = 1, padding: Padding = 0, dilation: IntPair = 1, groups: int = 1, *,
    algorithm: str = "direct", activation: str | None = None, activation_params: Mapping[str, Any] | None = None,
    layout: str = "NCHW",
) -> NDArray[Float]:
    """2-D convolution (cross-correlation) of a batch of images.

    ``y[n, co, oh, ow] = bias[co] + sum_{ci, i, j} weight[co, ci, i, j] *
    x_pad[n, g*C_in/groups + ci, oh*sH + i*dH, ow*sW + j*dW]`` with ``g`` the group of ``co``.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W) or (C_in, H, W)
        Input images, float32 or float64.
    weight : ndarray, shape (C_out, C_in / groups, kH, kW)
        Filters, same dtype as ``x``.
    bias : ndarray, shape (C_out,), optional
        Added to every output position of each channel.
    stride : int or (int, int), default 1
        Step between windows, positive.
    padding : int, (int, int), ((int, int), (int, int)), 'valid', 'same' or 'same_lower', default 0
        Implicit zeros on both sides of each axis, or per side as ``((top, bottom), (left,
        right))``. ``'same'`` gives ``ceil(H / sH)`` x ``ceil(W / sW)`` outputs (at stride 1 the
        input's size), putting the extra zero of an odd total at the bottom/right: PyTorch's
        ``'same'`` at stride 1, TensorFlow's ``'SAME'`` and ONNX's ``SAME_UPPER`` at any stride.
        ``'same_lower'`` puts it at the top/left (ONNX's ``SAME_LOWER``).
    dilation : int or (int, int), default 1
        Spacing between kernel taps, positive.
    groups : int, default 1
        Split channels into this many independent convolutions; must divide C_in and C_out.
    algorithm : {'direct', 'winograd', 'auto'}, default 'direct'
        ``'direct'`` sums the definition's products (im2col and GEMM, or direct loops),
        within the float32 accuracy bound of the README. ``'winograd'`` uses Winograd's
        F(4x4, 3x3): 4x fewer multiplies, for 3x3 kernels with stride 1, dilation 1 and
        groups=1 only, with a larger rounding error (about 1e-5 relative in float32); a
        result that comes out non-finite is recomputed with ``'direct'``, so NaN and inf
        behave exactly as there. ``'auto'``: ``'winograd'`` where it applies, both
        channel counts are at least 16 and its transformed weight (4x the weight) takes at
        most 256 MiB, else ``'direct'``.
    activation : str, optional
        An activation of :mod:`convx.functional.activations` (``'relu'``, ``'relu6'``,
        ``'leaky_relu'``, ``'silu'``, ``'gelu'``, ``'hardswish'``...) applied to the output
        exactly as the same function on the unfused result would, but inside the kernels: to
        each register tile before it is stored (the direct and 1x1 kernels), to each block of
        output as soon as it is complete (the others); no second pass over the output.
    activation_params : dict, optional
        The activation's keyword arguments (``{'negative_slope': 0.1}``).
    layout : {'NCHW', 'NHWC'}, default 'NCHW'
        The layout of ``x`` and ``y``: channels first (PyTorch's) or channels last, ``x`` then
        (N, H, W, C_in) or (H, W, C_in) and ``y`` (N, H_out, W_out, C_out). The weight stays
        (C_out, C_in / groups, kH, kW) in both; a TensorFlow / Keras HWIO kernel ``k`` is
        ``k.transpose(3, 2, 0, 1)``. See :ref:`channels-last`.

    Returns
    -------
    y : ndarray, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)
        ``H_out = floor((H + 2*pH - dH*(kH - 1) - 1) / sH) + 1``, likewise ``W_out``.

    Examples
    --------
    >>> import numpy as np, convx
    >>> x = np.ones((1, 1, 4, 4), dtype=np.float32)
    >>> w = np.ones((2, 1, 3, 3), dtype=np.float32)
    >>> convx.conv2d(x, w, padding=1)[0, 0]
    array([[4., 6., 6., 4.],
           [6., 9., 9., 6.],
           [6., 9., 9., 6.],
           [4., 6., 6., 4.]], dtype=float32)
    """
    last = as_data_layout(layout)
    x = as_float_array("x", x, (3, 4))
    weight = as_float_array("weight", weight, (4,))
    if bias is not None:
        bias = as_float_array("bias", bias, (1,))
    dtype = same_dtype(x=x, weight=weight, bias=bias)
    x, unbatched = _batched(x)
    plan = _plan_conv(_first(x, last).shape, weight.shape, stride, padding, dilation, groups, layout=layout)
    _check_bias(bias, plan.out_channels)
    winograd = _winograd(algorithm, weight.shape, plan, dtype.itemsize)
    check_no_activation_params(activation, activation_params)
    epilogue = None if activation is None else activation_epilogue(activation, activation_params)
    if last:
        y = np.empty((plan.batch, plan.out_h, plan.out_w, plan.out_channels), dtype=dtype)
        if plan.batch and (winograd or not _last_forward(x, weight, bias, plan, epilogue, y)):
            for part in _layout_parts(plan.batch, x[:1].size + y[:1].size):
                y[part] = channels_last(conv2d(
                    np.ascontiguousarray(channels_first(x[part])), weight, bias, stride, padding, dilation, groups,
                    algorithm=algorithm, activation=activation, activation_params=activation_params,
                ))
        return _unbatch(y, unbatched)
    out = np.empty((plan.batch, plan.out_channels, plan.out_h, plan.out_w), dtype=dtype)
    if plan.batch:
        x, weight = contiguous(x), contiguous(weight)
        kept = _kernel_plan(x.shape[2:], weight.shape[2:], plan)

        def compute(winograd: bool) -> None:
            if not kept.trims(plan):
                _forward(x, weight, bias, kept.plan, winograd, out, epilogue)
                return
            out[...] = _padding_only_output(weight, bias)[:, None, None]
            if _reads_input(kept.plan):
                computed = np.empty((plan.batch, plan.out_channels, kept.plan.out_h, kept.plan.out_w), dtype=dtype)
                _forward(x, weight, bias, kept.plan, winograd, computed)
                out[:, :, kept.rows, kept.cols] = computed
            if epilogue is not None:
                epilogue(out)

        _tuned("forward", x.shape, weight.shape, kept.plan, dtype, algorithm, winograd, compute)
    return _unbatch(out, unbatched)


def _forward(
    x: AnyArray, weight: AnyArray, bias: AnyArray | None, plan: _ConvPlan, winograd: bool, out: AnyArray,
    epilogue: Epilogue | None = None,
) -> None:
    """out := epilogue(conv2d(x, weight) + bias) for C-contiguous x and weight, plan as the kernels take
    it; the kernels apply the epilogue inside, the other paths (a whole-window product, Winograd)
    to each sub-batch's output as soon as it is computed."""
    bias_arg = _no_bias(out.dtype) if bias is None else contiguous(bias)
    depthwise = _is_depthwise(weight.shape, plan.groups)
    n_threads = plan.threads(weight.shape)
    whole = not winograd and _whole_window(x.shape, weight.shape, plan)
    for part in sub_batches(plan.batch, conv_work(weight.shape, plan.out_h * plan.out_w, x.shape)):
        inside = False
        if whole:
            rows = out[part].reshape(-1, plan.out_channels)
            matmul(x[part].reshape(len(rows), -1), weight.reshape(plan.out_channels, -1).T, rows, n_threads)
            if bias is not None:
                rows += bias_arg
        elif not winograd or _core.winograd_forward(x[part], weight, bias_arg, out[part], *plan.pad, False,
                                                    n_threads):
            kernel = _core.depthwise_forward if depthwise else _core.conv2d_forward
            kernel(x[part], weight, bias_arg, out[part], *plan.kernel_args(), n_threads, *(epilogue or ()))
            inside = True
        if epilogue is not None and not inside:
            epilogue(out[part])


def conv2d_backward_input(
    grad_out: NDArray[Float], weight: NDArray[Float], input_shape: Shape,
    stride: IntPair = 1, padding: Padding = 0, dilation: IntPair = 1, groups: int = 1, *,
    algorithm: str = "direct", layout: str = "NCHW",
) -> NDArray[Float]:
    """Gradient of :func:`conv2d` with respect to its input.

    The "full" correlation of ``grad_out`` (dilated by the stride) with the kernel rotated
    by 180 degrees, cropped by the padding: ``grad_x = col2im(weight^T @ grad_out)``.

    Parameters
    ----------
    grad_out : ndarray, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)
        Gradient of the loss with respect to the convolution's output.
    weight : ndarray, shape (C_out, C_in / groups, kH, kW)
        The forward pass's filters, same dtype as ``grad_out``.
    input_shape : tuple of int, (N, C_in, H, W) or (C_in, H, W)
        Shape of the forward input ``x`` (its H, W cannot always be recovered from the output).
    stride, padding, dilation, groups, algorithm, layout
        As given to :func:`conv2d`; with ``layout='NHWC'`` ``grad_out`` is (N, H_out, W_out,
        C_out) and ``input_shape`` and ``grad_x`` (N, H, W, C_in).

    Returns
    -------
    grad_x : ndarray, shape ``input_shape``

    Examples
    --------
    >>> import numpy as np, convx
    >>> w = np.ones((1, 1, 2, 2))
    >>> convx.conv2d_backward_input(np.ones((1, 1, 2, 2)), w, (1, 1, 3, 3))[0, 0]
    array([[1., 2., 1.],
           [2., 4., 2.],
           [1., 2., 1.]])
    """
    last = as_data_layout(layout)
    grad_out = as_float_array("grad_out", grad_out, (3, 4))
    weight = as_float_array("weight", weight, (4,))
    dtype = same_dtype(grad_out=grad_out, weight=weight)
    input_shape = as_shape("input_shape", input_shape, (grad_out.ndim,))
    grad_out, unbatched = _batched(grad_out)
    if unbatched:
        input_shape = (1, *input_shape)
    first_shape: Shape = channels_first_shape(input_shape) if last else input_shape
    plan = _plan_conv(first_shape, weight.shape, stride, padding, dilation, groups, "input_shape", layout)
    _check_grad_out(grad_out, plan, last)
    winograd = _winograd(algorithm, weight.shape, plan, dtype.itemsize)
    if last:
        conv_args = (stride, padding, dilation, groups)
        return _unbatch(_input_last(grad_out, weight, plan, input_shape, winograd, conv_args, algorithm), unbatched)
    grad_x = np.empty(input_shape, dtype=dtype)
    if plan.batch:
        grad_out, weight = contiguous(grad_out), contiguous(weight)
        kept = _kernel_plan(input_shape[2:], weight.shape[2:], plan)
        if kept.trims(plan):
            grad_out = kept.crop(grad_out)
        inner = kept.plan

        def compute(winograd: bool) -> None:
            if not _reads_input(inner):
                grad_x[...] = 0
                return
            for part in sub_batches(plan.batch, conv_work(weight.shape, inner.out_h * inner.out_w, input_shape)):
                _input_gradient(grad_out[part], weight, grad_x[part], inner, winograd, inner.threads(weight.shape))

        _tuned("input", input_shape, weight.shape, inner, dtype, algorithm, winograd, compute)
    return _unbatch(grad_x, unbatched)


def _input_last(
    grad_out: AnyArray, weight: AnyArray, plan: _ConvPlan, input_shape: Shape, winograd: bool,
    conv_args: tuple[IntPair, Padding, IntPair, int], algorithm: str,
) -> AnyArray:
    """conv2d_backward_input of a checked channels-last batch: on the channels-last kernels where they
    take it, else in bounded parts copied channels first and back."""
    grad_x = np.empty(input_shape, dtype=grad_out.dtype)
    if not plan.batch or (not winograd and _last_input(grad_out, weight, plan, grad_x)):
        return grad_x
    first_shape = channels_first_shape(input_shape)
    for part in _layout_parts(plan.batch, grad_out[:1].size + grad_x[:1].size):
        grad_x[part] = channels_last(conv2d_backward_input(
            np.ascontiguousarray(channels_first(grad_out[part])), weight, (part.stop - part.start, *first_shape[1:]),
            *conv_args, algorithm=algorithm,
        ))
    return grad_x


def conv2d_backward_weight(
    grad_out: NDArray[Float], x: NDArray[Float], weight_shape: Shape,
    stride: IntPair = 1, padding: Padding = 0, dilation: IntPair = 1, groups: int = 1, *,
    algorithm: str = "direct", layout: str = "NCHW",
) -> NDArray[Float]:
    """Gradient of :func:`conv2d` with respect to its weight.

    The correlation of the input with the output gradient:
    ``grad_w[co, ci, i, j] = sum_{n, oh, ow} grad_out[n, co, oh, ow] * x_pad[n, ci', oh*sH + i*dH, ow*sW + j*dW]``.

    Parameters
    ----------
    grad_out : ndarray, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)
        Gradient of the loss with respect to the convolution's output.
    x : ndarray, shape (N, C_in, H, W) or (C_in, H, W)
        The forward pass's input, same dtype as ``grad_out``.
    weight_shape : tuple of int, (C_out, C_in / groups, kH, kW)
    stride, padding, dilation, groups, algorithm, layout
        As given to :func:`conv2d`; with ``layout='NHWC'`` ``grad_out`` and ``x`` are channels last.

    Returns
    -------
    grad_w : ndarray, shape ``weight_shape``

    Examples
    --------
    >>> import numpy as np, convx
    >>> x = np.arange(9.0).reshape(1, 1, 3, 3)
    >>> convx.conv2d_backward_weight(np.ones((1, 1, 2, 2)), x, (1, 1, 2, 2))[0, 0]
    array([[ 8., 12.],
           [20., 24.]])
    """
    last = as_data_layout(layout)
    grad_out = as_float_array("grad_out", grad_out, (3, 4))
    x = as_float_array("x", x, (grad_out.ndim,))
    dtype = same_dtype(grad_out=grad_out, x=x)
    weight_shape = as_shape("weight_shape", weight_shape, (4,))
    grad_out, _ = _batched(grad_out)
    x, _ = _batched(x)
    plan = _plan_conv(_first(x, last).shape, weight_shape, stride, padding, dilation, groups, layout=layout)
    _check_grad_out(grad_out, plan, last)
    winograd = _winograd(algorithm, weight_shape, plan, dtype.itemsize)
    if last:
        return _weight_last(grad_out, x, weight_shape, plan, winograd, (stride, padding, dilation, groups), algorithm)
    grad_w = np.zeros(weight_shape, dtype=dtype)
    if plan.batch:
        grad_out, x = contiguous(grad_out), contiguous(x)
        kept = _kernel_plan(x.shape[2:], weight_shape[2:], plan)
        inner = kept.plan
        kept_grad_out = kept.crop(grad_out) if kept.trims(plan) else grad_out
        work = conv_work(weight_shape, inner.out_h * inner.out_w, x.shape)
        n_threads = inner.threads(weight_shape)

        def compute(winograd: bool) -> None:
            if _reads_input(inner):  # else grad_w keeps its zeros
                for part, (grad_w_part,) in summed_sub_batches(plan.batch, work, (grad_w,)):
                    _weight_gradient(kept_grad_out[part], x[part], grad_w_part, inner, winograd, n_threads)
            if kept.trims(plan):
                _padding_weight_gradient(grad_out, kept, grad_w)

        _tuned("weight", x.shape, weight_shape, inner, dtype, algorithm, winograd, compute)
    return grad_w


def _weight_last(
    grad_out: AnyArray, x: AnyArray, weight_shape: Shape, plan: _ConvPlan, winograd: bool,
    conv_args: tuple[IntPair, Padding, IntPair, int], algorithm: str,
) -> AnyArray:
    """conv2d_backward_weight of a checked channels-last batch, as :func:`_input_last`."""
    grad_w = np.zeros(weight_shape, dtype=x.dtype)
    if not plan.batch or (not winograd and _last_weight(grad_out, x, plan, grad_w)):
        return grad_w
    for part in _layout_parts(plan.batch, x[:1].size + grad_out[:1].size):
        grad_w += conv2d_backward_weight(
            np.ascontiguousarray(channels_first(grad_out[part])), np.ascontiguousarray(channels_first(x[part])),
            weight_shape, *conv_args, algorithm=algorithm,
        )
    return grad_w


def _weight_gradient(
    grad_out: AnyArray, x: AnyArray, grad_w: AnyArray, plan: _ConvPlan, winograd: bool, n_threads: int
) -> None:
    """grad_w := conv2d's weight gradient, for C-contiguous arrays of one (sub-)batch."""
    if not winograd and _whole_window(x.shape, grad_w.shape, plan):
        n, c_out = grad_out.shape[:2]
        matmul(grad_out.reshape(n, c_out).T, x.reshape(n, -1), grad_w.reshape(c_out, -1), n_threads)
        return
    if winograd:
        _core.winograd_backward_weight(grad_out, x, grad_w, *plan.pad, n_threads)
        if np.isfinite(grad_w).all():
            return
    if _is_depthwise(grad_w.shape, plan.groups):
        _core.depthwise_backward_weight(grad_out, x, grad_w, *plan.kernel_args(), n_threads)
    else:
        _core.conv2d_backward_params(
            grad_out, x, grad_w, np.empty((0, 1, 1, 1), dtype=grad_w.dtype), grad_w, _no_bias(grad_w.dtype),
            *plan.kernel_args(), n_threads,
        )


def conv2d_backward_bias(grad_out: NDArray[Float], *, layout: str = "NCHW") -> NDArray[Float]:
    """Gradient of :func:`conv2d` with respect to its bias: ``grad_out`` summed over N, H and W.

    Parameters
    ----------
    grad_out : ndarray, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)
    layout : {'NCHW', 'NHWC'}, default 'NCHW'
        As given to :func:`conv2d`: channels last, ``grad_out`` is (N, H_out, W_out, C_out).

    Returns
    -------
    grad_b : ndarray, shape (C_out,)

    Examples
    --------
    >>> import numpy as np, convx
    >>> convx.conv2d_backward_bias(np.ones((2, 3, 4, 4), dtype=np.float32))
    array([32., 32., 32.], dtype=float32)
    """
    last = as_data_layout(layout)
    grad_out = as_float_array("grad_out", grad_out, (3, 4))
    grad_out, _ = _batched(grad_out)
    channels = grad_out.shape[-1 if last else 1]
    grad_b = np.zeros(channels, dtype=grad_out.dtype)
    if grad_out.size and last:
        _core.conv2d_backward_bias_channels_last(contiguous(grad_out).reshape(-1, channels), grad_b,
                                                 kernel_threads(elements=grad_out.size))
    elif grad_out.size:
        _bias_gradient(contiguous(grad_out), grad_b)
    return grad_b


def _bias_gradient(grad_out: AnyArray, grad_b: AnyArray) -> None:
    """grad_b := grad_out summed over N, H and W, for a non-empty C-contiguous grad_out."""
    for part, (grad_b_part,) in summed_sub_batches(grad_out.shape[0], grad_out[:1].size, (grad_b,)):
        _core.conv2d_backward_bias(grad_out[part], grad_b_part, kernel_threads(elements=grad_out[part].size))


def conv2d_backward(
    grad_out: NDArray[Float], x: NDArray[Float], weight: NDArray[Float],
    stride: IntPair = 1, padding: Padding = 0, dilation: IntPair = 1, groups: int = 1, *,
    algorithm: str = "direct", layout: str = "NCHW",
) -> tuple[NDArray[Float], NDArray[Float], NDArray[Float]]:
    """All three gradients of :func:`conv2d` in one pass over the batch.

    Equivalent to :func:`conv2d_backward_input`, :func:`conv2d_backward_weight` and
    :func:`conv2d_backward_bias`, but each image's output gradient is read once while it is
    in cache, and the column workspace is shared.

    Parameters
    ----------
    grad_out : ndarray, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)
    x : ndarray, shape (N, C_in, H, W) or (C_in, H, W)
        The forward pass's input.
    weight : ndarray, shape (C_out, C_in / groups, kH, kW)
        The forward pass's filters.
    stride, padding, dilation, groups, algorithm, layout
        As given to :func:`conv2d`; with ``layout='NHWC'`` ``grad_out``, ``x`` and ``grad_x`` are
        channels last.

    Returns
    -------
    grad_x : ndarray, shape of ``x``
    grad_w : ndarray, shape of ``weight``
    grad_b : ndarray, shape (C_out,)

    Examples
    --------
    >>> import numpy as np, convx
    >>> x = np.ones((2, 3, 5, 5)); w = np.ones((4, 3, 3, 3))
    >>> gx, gw, gb = convx.conv2d_backward(np.ones((2, 4, 3, 3)), x, w)
    >>> gx.shape, gw.shape, gb.tolist()
    ((2, 3, 5, 5), (4, 3, 3, 3), [18.0, 18.0, 18.0, 18.0])
    """
    last = as_data_layout(layout)
    grad_out = as_float_array("grad_out", grad_out, (3, 4))
    x = as_float_array("x", x, (grad_out.ndim,))
    weight = as_float_array("weight", weight, (4,))
    dtype = same_dtype(grad_out=grad_out, x=x, weight=weight)
    grad_out, unbatched = _batched(grad_out)
    x, _ = _batched(x)
    plan = _plan_conv(_first(x, last).shape, weight.shape, stride, padding, dilation, groups, layout=layout)
    _check_grad_out(grad_out, plan, last)
    winograd = _winograd(algorithm, weight.shape, plan, dtype.itemsize)
    hw = x.shape[1:3]
    if last and not winograd and (_pointwise(weight.shape, plan, hw) or _last_kernels(weight.shape, plan, hw)):
        # each gradient channels last where its kernels take it, else in parts copied channels first
        conv_args = (stride, padding, dilation, groups)
        grad_x = _input_last(grad_out, weight, plan, x.shape, winograd, conv_args, algorithm)
        grad_w = _weight_last(grad_out, x, weight.shape, plan, winograd, conv_args, algorithm)
        return _unbatch(grad_x, unbatched), grad_w, conv2d_backward_bias(grad_out, layout=layout)
    grad_x = np.empty(x.shape, dtype=dtype)
    grad_w = np.zeros(weight.shape, dtype=dtype)
    grad_b = np.zeros(plan.out_channels, dtype=dtype)
    if last:
        # the fused backward of the channels-first kernels, in parts copied channels first and back
        for part in _layout_parts(plan.batch, 2 * x[:1].size + grad_out[:1].size):
            gx, gw, gb = conv2d_backward(
                np.ascontiguousarray(channels_first(grad_out[part])), np.ascontiguousarray(channels_first(x[part])),
                weight, stride, padding, dilation, groups, algorithm=algorithm,
            )
            grad_x[part] = channels_last(gx)
            grad_w += gw
            grad_b += gb
        return _unbatch(grad_x, unbatched), grad_w, grad_b
    if plan.batch:
        grad_out, x, weight = contiguous(grad_out), contiguous(x), contiguous(weight)
        kept = _kernel_plan(x.shape[2:], weight.shape[2:], plan)

        def compute(winograd: bool) -> None:
            if kept.trims(plan):
                # The gradients of the outputs that read padding only: none for x, zeros times them for the
                # weight; all of grad_out for the bias.
                if _reads_input(kept.plan):
                    _fused_backward(kept.crop(grad_out), x, weight, kept.plan, winograd, grad_x, grad_w, grad_b)
                else:  # grad_w keeps its zeros
                    grad_x[...] = 0
                _padding_weight_gradient(grad_out, kept, grad_w)
                grad_b[...] = 0
                _bias_gradient(grad_out, grad_b)
            else:
                _fused_backward(grad_out, x, weight, kept.plan, winograd, grad_x, grad_w, grad_b)

        _tuned("backward", x.shape, weight.shape, kept.plan, dtype, algorithm, winograd, compute)
    return _unbatch(grad_x, unbatched), grad_w, grad_b


def _fused_backward(
    grad_out: AnyArray, x: AnyArray, weight: AnyArray, plan: _ConvPlan, winograd: bool,
    grad_x: AnyArray, grad_w: AnyArray, grad_b: AnyArray,
) -> None:
    """conv2d_backward's three gradients for C-contiguous arrays, plan as the kernels take it."""
    n_threads = plan.threads(weight.shape)
    work = 2 * conv_work(weight.shape, plan.out_h * plan.out_w, x.shape)
    parts = summed_sub_batches(plan.batch, work, (grad_w, grad_b))
    if winograd or _whole_window(x.shape, weight.shape, plan):
        # The two products share no transform (Winograd) or are one matrix product each (a
        # whole-window convolution): the fused pass is the three ops in turn.
        for part, (grad_w_part, grad_b_part) in parts:
            _input_gradient(grad_out[part], weight, grad_x[part], plan, winograd, n_threads)
            _weight_gradient(grad_out[part], x[part], grad_w_part, plan, winograd, n_threads)
            _core.conv2d_backward_bias(grad_out[part], grad_b_part, n_threads)
    elif _is_depthwise(weight.shape, plan.groups):
        for part, (grad_w_part, grad_b_part) in parts:
            _core.depthwise_backward_input(grad_out[part], weight, grad_x[part], *plan.kernel_args(), n_threads)
            _core.depthwise_backward_weight(grad_out[part], x[part], grad_w_part, *plan.kernel_args(), n_threads)
            _core.conv2d_backward_bias(grad_out[part], grad_b_part, n_threads)
    else:
        for part, (grad_w_part, grad_b_part) in parts:
            _core.conv2d_backward_params(
                grad_out[part], x[part], weight, grad_x[part], grad_w_part, grad_b_part,
                *plan.kernel_args(), n_threads,
            )


def _shown(values: tuple[int, ...]) -> int | tuple[int, ...]:
    """A 1-D op's argument as its user wrote it (an int), a 2-D op's as its pair."""
    return values[0] if len(values) == 1 else values


def _shown_padding(sides: tuple[tuple[int, int], ...]) -> object:
    """Per-side padding as its user wrote it: ``p`` or ``(pH, pW)`` where both sides agree."""
    if all(before == after for before, after in sides):
        return _shown(tuple(before for before, _ in sides))
    return sides


def check_transpose_geometry(
    input_shape: Shape, weight_shape: Shape, stride: tuple[int, ...], padding: tuple[tuple[int, int], ...],
    output_padding: tuple[int, ...], dilation: tuple[int, ...], groups: int,
) -> tuple[int, ...]:
    """A transposed convolution's output sizes (1-D or 2-D), its shapes and arguments checked first;
    ``padding`` is ``(before, after)`` per axis; messages show the arguments as given."""
    c_in, spatial, kernel = input_shape[1], tuple(input_shape[2:]), tuple(weight_shape[2:])
    stride_, out_pad_, dilation_ = map(_shown, (stride, output_padding, dilation))
    pad_ = _shown_padding(padding)
    if weight_shape[0] != c_in:
        raise ValueError(
            f"weight of shape {tuple(weight_shape)} must have x's {c_in} input channels first "
            f"(transposed layout (C_in, C_out / groups, {', '.join(_KERNEL_NAMES[len(kernel)])})), "
            f"got weight.shape[0] = {weight_shape[0]}"
        )
    for axis in range(len(spatial)):
        if output_padding[axis] >= max(stride[axis], dilation[axis]):
            raise ValueError(
                f"output_padding must be smaller than either stride or dilation, got output_padding={out_pad_}, "
                f"stride={stride_}, dilation={dilation_}"
            )
    if c_in % groups:
        raise ValueError(f"groups={groups} must divide the input channels ({c_in})")
    _check_sizes(("padding", max(max(sides) for sides in padding)))
    out = tuple(
        conv_transpose_output_size(size, k, s, before, op, d, after)
        for size, k, s, (before, after), op, d in zip(spatial, kernel, stride, padding, output_padding, dilation)
    )
    if min(out) < 1:
        # (H - 1) * stride - 2 * padding + dilation * (kH - 1) + output_padding + 1: name every term.
        raise ValueError(
            f"the output would be {_by(out)}: padding={pad_} is too large for this {_by(spatial)} input, "
            f"{_by(kernel)} kernel, stride={stride_}, dilation={dilation_} and output_padding={out_pad_}"
        )
    if math.prod(out) > _INT32_LIMIT:
        raise ValueError(
            f"the output would be {_by(out)}, more than the {_INT32_LIMIT} pixels per plane convx supports: "
            f"stride={stride_}, padding={pad_}, dilation={dilation_} and output_padding={out_pad_} with this "
            f"{_by(spatial)} input and {_by(kernel)} kernel"
        )
    return out


def transpose_padding(
    padding: PaddingWord | tuple[tuple[int, int], ...], output_padding: tuple[int, ...], output_size: object,
    spatial: Shape, kernel: Shape, stride: tuple[int, ...], dilation: tuple[int, ...],
) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...]]:
    """A transposed convolution's ``(before, after)`` padding per axis and its output_padding, from
    its padding (checked by ``as_padding`` / ``as_padding_1d``, per axis), output_padding and the
    ``output_size`` requested, if any.

    ``'same'`` / ``'same_lower'`` (ONNX ConvTranspose's auto_pad SAME_UPPER / SAME_LOWER) remove
    ``stride*(size - 1) + output_padding + dilation*(kernel - 1) + 1 - out`` elements in all, ``out``
    being ``size * stride`` or the ``output_size`` requested, half from each end, the odd one from the
    end ('same') or the beginning ('same_lower'). With numbers, an ``output_size`` sets output_padding
    (PyTorch's ``ConvTranspose2d.forward(x, output_size)``), within ``[0, max(stride, dilation))``.
    """
    dims = len(spatial)
    target = _transpose_output_size(output_size, dims)
    if isinstance(padding, str) and padding != "valid":
        wanted = target if target is not None else tuple(size * s for size, s in zip(spatial, stride))
        sides = []
        for size, k, s, d, op, out in zip(spatial, kernel, stride, dilation, output_padding, wanted):
            total = s * (size - 1) + op + d * (k - 1) + 1 - out
            if total < 0:
                full = tuple(
                    conv_transpose_output_size(n, k_, s_, 0, op_, d_)
                    for n, k_, s_, op_, d_ in zip(spatial, kernel, stride, output_padding, dilation)
                )
                raise ValueError(
                    f"padding={padding!r} cannot give a {_by(wanted)} output: the full transposed convolution of this "
                    f"{_by(spatial)} input is only {_by(full)} (kernel {_by(kernel)}, stride={_shown(stride)}, "
                    f"dilation={_shown(dilation)}, output_padding={_shown(output_padding)}); give a larger "
                    f"output_padding, or padding=0"
                )
            small, large = total // 2, total - total // 2
            sides.append((small, large) if padding == "same" else (large, small))
        return tuple(sides), output_padding
    numeric = ((0, 0),) * dims if isinstance(padding, str) else padding
    if target is None:
        return numeric, output_padding
    smallest = tuple(
        conv_transpose_output_size(size, k, s, before, 0, d, after)
        for size, k, s, (before, after), d in zip(spatial, kernel, stride, numeric, dilation)
    )
    largest = tuple(low + max(s, d) - 1 for low, s, d in zip(smallest, stride, dilation))
    if any(not low <= out <= high for low, out, high in zip(smallest, target, largest)):
        raise ValueError(
            f"output_size={_shown(target)} cannot be reached: this {_by(spatial)} input gives sizes from "
            f"{_shown(smallest)} to {_shown(largest)} (output_padding from 0 to max(stride, dilation) - 1, "
            f"stride={_shown(stride)}, dilation={_shown(dilation)}, padding={_shown_padding(numeric)})"
        )
    derived = tuple(out - low for out, low in zip(target, smallest))
    if any(output_padding) and output_padding != derived:
        raise ValueError(
            f"output_padding={_shown(output_padding)} disagrees with output_size={_shown(target)}, which needs "
            f"output_padding={_shown(derived)}; give one of them"
        )
    return numeric, derived


def _transpose_output_size(value: object, dims: int) -> tuple[int, ...] | None:
    """``output_size`` as the spatial sizes: PyTorch takes them alone or after (N, C)."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and dims == 1:
        value = (value,)
    shape = as_shape("output_size", value, (dims, dims + 2))
    spatial = shape[-dims:]
    if min(spatial) < 1:
        raise ValueError(f"output_size must be positive sizes, got {_shown(tuple(spatial))}")
    return tuple(spatial)


_KERNEL_NAMES = {1: ("K",), 2: ("kH", "kW")}


def _by(sizes: tuple[int, ...]) -> str:
    """Sizes as ``5x7`` (2-D) or ``5`` (1-D)."""
    return "x".join(map(str, sizes))


def conv_transpose2d(
    x: NDArray[Float], weight: NDArray[Float], bias: NDArray[Float] | None = None, stride: IntPair = 1,
    padding: Padding = 0, output_padding: IntPair = 0, groups: int = 1, dilation: IntPair = 1, *,
    output_size: Shape | None = None, algorithm: str = "direct", layout: str = "NCHW",
) -> NDArray[Float]:
    """2-D transposed convolution ("deconvolution"): the adjoint of :func:`conv2d` as a map of its input.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W) or (C_in, H, W)
    weight : ndarray, shape (C_in, C_out / groups, kH, kW)
        Same layout as PyTorch's ``ConvTranspose2d.weight``.
    bias : ndarray, shape (C_out,), optional
    stride : int or (int, int), default 1
    padding : int, (int, int), ((int, int), (int, int)), 'valid', 'same' or 'same_lower', default 0
        Rows/columns removed from each side of the full transposed convolution (``dilation *
        (kernel - 1) - padding`` zeros are effectively added to each side of ``x``), or per side
        ``((top, bottom), (left, right))``; four flat numbers are refused as ambiguous.
        ``'same'`` and ``'same_lower'`` are ONNX ConvTranspose's auto_pad SAME_UPPER / SAME_LOWER:
        the output is ``H * sH`` by ``W * sW`` (or ``output_size``), the
        ``sH*(H - 1) + output_padding_H + dH*(kH - 1) + 1 - H_out`` rows removed half from each
        side, the odd one from the bottom ('same') or the top ('same_lower'), likewise columns;
        a kernel too small to reach that size (that total below zero) is refused.
    output_padding : int or (int, int), default 0
        Extra rows/columns at the bottom/right; must be smaller than stride or dilation.
    groups : int, default 1
    dilation : int or (int, int), default 1
    output_size : (H_out, W_out) or (N, C_out, H_out, W_out), optional
        The output size wanted, as PyTorch's ``ConvTranspose2d.forward(x, output_size)``: with
        numeric padding it sets output_padding (each within ``[0, max(stride, dilation))``; a size
        outside the reachable range is a ValueError naming the range, and a nonzero
        ``output_padding`` must agree with it); with 'same' / 'same_lower' it replaces
        ``H * sH`` by ``W * sW`` (ONNX's output_shape).
    algorithm : {'direct', 'winograd', 'auto'}, default 'direct'
        As for :func:`conv2d` (Winograd applies with stride 1: the output is then a stride-1
        3x3 convolution of the zero-padded input).
    layout : {'NCHW', 'NHWC'}, default 'NCHW'
        As for :func:`conv2d`: channels last, ``x`` is (N, H, W, C_in), ``y`` (N, H_out, W_out,
        C_out) and a 4-entry ``output_size`` (N, H_out, W_out, C_out).

    Returns
    -------
    y : ndarray, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)
        ``H_out = (H - 1)*sH - top - bottom + dH*(kH - 1) + output_padding_H + 1``, likewise ``W_out``.

    Examples
    --------
    >>> import numpy as np, convx
    >>> x = np.ones((1, 1, 2, 2)); w = np.ones((1, 1, 2, 2))
    >>> convx.conv_transpose2d(x, w, stride=2)[0, 0]
    array([[1., 1., 1., 1.],
           [1., 1., 1., 1.],
           [1., 1., 1., 1.],
           [1., 1., 1., 1.]])
    >>> convx.conv_transpose2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 3, 3)), stride=2, padding="same").shape
    (1, 1, 6, 6)
    >>> convx.conv_transpose2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 3, 3)), stride=2, padding=1,
    ...                        output_size=(6, 6)).shape
    (1, 1, 6, 6)
    """
    last = as_data_layout(layout)
    x = as_float_array("x", x, (3, 4))
    weight = as_float_array("weight", weight, (4,))
    if bias is not None:
        bias = as_float_array("bias", bias, (1,))
    dtype = same_dtype(x=x, weight=weight, bias=bias)
    x, unbatched = _batched(x)
    if last and output_size is not None and not isinstance(output_size, (int, np.integer)) and len(output_size) == 4:
        output_size = channels_first_shape(as_shape("output_size", output_size, (4,)))
    stride = as_pair("stride", stride, 1)
    dilation = as_pair("dilation", dilation, 1)
    parsed = as_padding(padding)
    out_pad = as_pair("output_padding", output_padding, 0)
    groups = as_int("groups", groups, 1)
    first_shape = _first(x, last).shape
    batch, c_in, height, width = first_shape
    sides, out_pad_ = transpose_padding(parsed, out_pad, output_size, (height, width), weight.shape[2:], stride,
                                        dilation)
    out_h, out_w = check_transpose_geometry(first_shape, weight.shape, stride, sides, out_pad_, dilation, groups)
    c_out = weight.shape[1] * groups
    # Transposed convolution is conv2d's input gradient with x as the output gradient (per-side
    # padding as conv2d's: its top/left padding places the output, the bottom/right only sizes it).
    pad = (sides[0], sides[1])
    plan = _plan_conv((batch, c_out, out_h, out_w), weight.shape, stride, pad, dilation, groups, input_name="output")
    # x is the output gradient of the convolution of y (output_padding may give that convolution
    # more outputs than x has: the kernels take x's).
    full = plan._replace(out_h=height, out_w=width)
    _check_grad_out(x, full, last)
    _check_bias(bias, c_out)
    winograd = _winograd(algorithm, weight.shape, plan, dtype.itemsize)
    if last:
        y = np.empty((batch, out_h, out_w, c_out), dtype=dtype)
        if batch and not winograd and _last_input(x, weight, full, y):
            if bias is not None:
                y += bias
        elif batch:
            for part in _layout_parts(batch, x[:1].size + y[:1].size):
                y[part] = channels_last(conv_transpose2d(
                    np.ascontiguousarray(channels_first(x[part])), weight, bias, stride, padding, output_padding,
                    groups, dilation, output_size=output_size, algorithm=algorithm,
                ))
        return _unbatch(y, unbatched)
    y = np.empty((batch, c_out, out_h, out_w), dtype=dtype)
    if batch:
        x, weight = contiguous(x), contiguous(weight)
        kept = _kernel_plan((out_h, out_w), weight.shape[2:], full)
        inner = kept.plan
        if inner.out_h == 0 or inner.out_w == 0:
            # Every row (or column) of x lands in the cropped padding: y is the bias alone.
            y[...] = 0
        else:
            if kept.trims(full):
                x = kept.crop(x)
            for part in sub_batches(batch, conv_work(weight.shape, inner.out_h * inner.out_w, y.shape)):
                _input_gradient(x[part], weight, y[part], inner, winograd, inner.threads(weight.shape))
        if bias is not None:
            y += bias[:, None, None]
    return _unbatch(y, unbatched)

