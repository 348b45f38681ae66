"""Public 3-D convolution ops over NCDHW or NDHWC volumes: validate, normalise, allocate, then call
the kernels of ``convx._core`` (``_conv3d.pxi``, channels last ``_conv3d_last.pxi``).

Semantics follow ``torch.nn.functional.conv3d`` / ``conv_transpose3d`` and ``torch.nn.grad``.
Unbatched (C, D, H, W) input gives unbatched output. With ``layout='NDHWC'`` the volumes are
(N, D, H, W, C) (or (D, H, W, C)) and the channels-last kernels take them as they are; the weight
stays PyTorch's. The kernels are called once per bounded unit
of work (a sub-batch of whole volumes, or a band of output rows of one huge volume), so that Ctrl-C
is seen between calls (``convx._batching``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple, Union, cast

import numpy as np
from numpy.typing import NDArray

from .. import _batching, _core
from .._batching import conv_work, sub_batches
from .._checks import (
    as_data_layout,
    as_float_array,
    as_int,
    as_shape,
    as_triple,
    channels_first_shape,
    channels_last_shape,
    contiguous,
    same_dtype,
)
from .._shapes import conv_output_size
from .._threads import kernel_threads
from .._typing import AnyArray, Float, IntTriple, PaddingWord, Shape
from .conv import _INT32_LIMIT, check_conv_shapes, check_transpose_geometry, conv2d_backward_input, transpose_padding

__all__ = [
    "conv3d",
    "conv3d_backward",
    "conv3d_backward_bias",
    "conv3d_backward_input",
    "conv3d_backward_weight",
    "conv_transpose3d",
]

_Triple = tuple[int, int, int]
_Sides = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
#: conv3d's padding: an int, ``(pD, pH, pW)``, ``((front, back), (top, bottom), (left, right))``,
#: ``'valid'``, ``'same'`` or ``'same_lower'``.
Padding3d = Union[IntTriple, _Sides, PaddingWord]

_PADDING_WORDS = ("valid", "same", "same_lower")
_SPELLINGS = "an int, (pD, pH, pW), ((front, back), (top, bottom), (left, right)), 'valid', 'same' or 'same_lower'"


def as_padding3d(value: object, name: str = "padding") -> PaddingWord | _Sides:
    """A 3-D convolution's padding: a word, or ``((front, back), (top, bottom), (left, right))`` of
    ints >= 0 from an int (every side), ``(pD, pH, pW)`` (both sides of each axis) or the nested
    pairs themselves; six flat numbers are refused as ambiguous."""
    if isinstance(value, str):
        if value not in _PADDING_WORDS:
            raise ValueError(f"{name} must be {_SPELLINGS}, got {value!r}")
        return cast(PaddingWord, value)
    if isinstance(value, (tuple, list)) and len(value) == 6:
        raise ValueError(
            f"{name} as six numbers {tuple(value)!r} is ambiguous (PyTorch's F.pad reads them from the last axis "
            f"first): give ((front, back), (top, bottom), (left, right))"
        )
    if isinstance(value, (tuple, list)) and len(value) == 3 and any(isinstance(v, (tuple, list)) for v in value):
        if not all(isinstance(v, (tuple, list)) and len(v) == 2 for v in value):
            raise ValueError(f"{name} must be {_SPELLINGS}, got {value!r}")
        front_back, top_bottom, left_right = (
            (as_int(f"{name}[{axis}][0]", v[0], 0), as_int(f"{name}[{axis}][1]", v[1], 0))
            for axis, v in enumerate(value)
        )
        return front_back, top_bottom, left_right
    if isinstance(value, (tuple, list)) and len(value) != 3:
        raise ValueError(f"{name} must be {_SPELLINGS}, got a sequence of length {len(value)}: {value!r}")
    pad_d, pad_h, pad_w = as_triple(name, value, 0)
    return (pad_d, pad_d), (pad_h, pad_h), (pad_w, pad_w)


def padding_sides3d(
    padding: PaddingWord | _Sides, sizes: Shape, kernel: Shape, stride: _Triple, dilation: _Triple
) -> _Sides:
    """``(before, after)`` per axis of a padding checked by :func:`as_padding3d`: ``'same'`` gives
    ``ceil(size / stride)`` outputs per axis, the extra zero of an odd total after (ONNX's
    SAME_UPPER; PyTorch's 'same' at stride 1), ``'same_lower'`` before."""
    if not isinstance(padding, str):
        return padding
    if padding == "valid":
        return (0, 0), (0, 0), (0, 0)
    sides = []
    for size, k, s, d in zip(sizes, kernel, stride, dilation):
        total = max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
        small, large = total // 2, total - total // 2
        sides.append((small, large) if padding == "same" else (large, small))
    return sides[0], sides[1], sides[2]


# kernel (3), stride (3), padding (3), dilation (3), groups: the geometry every kernel entry point takes
_KernelArgs = tuple[int, int, int, int, int, int, int, int, int, int, int, int, int]


class _Conv3dPlan(NamedTuple):
    """Everything a 3-D convolution kernel needs besides the arrays, validated."""

    batch: int
    out_channels: int
    out_size: _Triple  # D_out, H_out, W_out
    kernel: _Triple
    stride: _Triple
    pad: _Triple  # front, top, left; the back/bottom/right padding only affects the output size
    dilation: _Triple
    groups: int

    def kernel_args(self) -> _KernelArgs:
        return (*self.kernel, *self.stride, *self.pad, *self.dilation, self.groups)

    @property
    def rows(self) -> int:
        """Output rows (od, oh) of one volume: the unit the kernels' bands are cut in."""
        return self.out_size[0] * self.out_size[1]

    def threads(self, weight_shape: Shape) -> int:
        """Kernel threads for one pass over the batch: small convolutions run on fewer."""
        return kernel_threads(self.batch * math.prod(self.out_size) * math.prod(weight_shape))


def _plan_conv3d(
    input_shape: Shape, weight_shape: Shape, stride: IntTriple, padding: Padding3d, dilation: IntTriple, groups: int,
    input_name: str = "x", layout: str | None = None,
) -> _Conv3dPlan:
    """Validate a 3-D convolution's geometry and compute its output size; ``input_shape`` is (N, C_in,
    D, H, W) (a channels-last input's read channels first; ``layout`` names the layout it was given
    in, for messages), ``weight_shape`` (C_out, C_in / groups, kD, kH, kW)."""
    stride_ = as_triple("stride", stride, 1)
    dilation_ = as_triple("dilation", dilation, 1)
    groups = as_int("groups", groups, 1)
    parsed = as_padding3d(padding)
    kernel = cast(_Triple, tuple(weight_shape[2:]))
    if min(kernel) < 1:
        raise ValueError(
            f"kernel size should be greater than zero, but got kernel_depth: {kernel[0]}, kernel_height: {kernel[1]}, "
            f"kernel_width: {kernel[2]} (weight shape {tuple(weight_shape)})"
        )
    check_conv_shapes(input_shape, weight_shape, groups, input_name, layout)
    sizes = tuple(input_shape[2:])
    sides = padding_sides3d(parsed, sizes, kernel, stride_, dilation_)
    for name, values in (("stride", stride_), ("dilation", dilation_), ("padding", tuple(max(s) for s in sides))):
        if max(values) > _INT32_LIMIT:
            raise ValueError(f"{name} is {max(values)}, larger than convx supports (at most {_INT32_LIMIT})")
    out = tuple(
        conv_output_size(size, k, s, before, after, d)
        for size, k, s, (before, after), d in zip(sizes, kernel, stride_, sides, dilation_)
    )
    if min(out) < 1:
        spans = "x".join(str(d * (k - 1) + 1) for k, d in zip(kernel, dilation_))
        padded = "x".join(str(size + before + after) for size, (before, after) in zip(sizes, sides))
        raise ValueError(
            f"the dilated kernel ({spans}) is larger than the padded input ({padded}); the output would be "
            f"{'x'.join(map(str, out))} (kernel {'x'.join(map(str, kernel))}, dilation={dilation_}, padding={sides})"
        )
    c_in_group = weight_shape[1]
    for name, value in (
        (f"{input_name} volume D*H*W", math.prod(sizes)),
        ("output volume D_out*H_out*W_out", math.prod(out)),
        ("C_in/groups * kD * kH * kW", c_in_group * math.prod(kernel)),
    ):
        if value > _INT32_LIMIT:
            raise ValueError(f"{name} is {value}, larger than convx supports (at most {_INT32_LIMIT})")
    return _Conv3dPlan(
        input_shape[0], weight_shape[0], cast(_Triple, out), kernel, stride_,
        cast(_Triple, tuple(before for before, _ in sides)), dilation_, groups,
    )


def _volumes(name: str, value: object) -> tuple[AnyArray, bool]:
    """``value`` as a float array (N, C, D, H, W) and whether it came without the batch axis."""
    array = as_float_array(name, value, (4, 5))
    if array.ndim == 4:
        return array[None], True
    return array, False


def _unbatch(array: AnyArray, unbatched: bool) -> AnyArray:
    return array[0] if unbatched else array


def _check_grad_out(grad_out: AnyArray, plan: _Conv3dPlan, last: bool = False) -> None:
    expected: tuple[int, ...] = (plan.batch, plan.out_channels, *plan.out_size)
    if last:
        expected = (plan.batch, *plan.out_size, plan.out_channels)
    if grad_out.shape != expected:
        raise ValueError(f"grad_out must have the forward output's shape {expected}, got {grad_out.shape}")


def _check_bias(bias: AnyArray | None, channels: int) -> None:
    if bias is not None and bias.shape != (channels,):
        raise ValueError(f"bias must have shape ({channels},), one value per output channel, got {bias.shape}")


def _units(plan: _Conv3dPlan, weight_shape: Shape, input_shape: Shape) -> Iterator[tuple[slice, int, int]]:
    """(images, first output row, end row) of each kernel call: sub-batches of whole volumes, or for a
    volume whose work alone exceeds a call's (``SUB_BATCH_WORK`` per thread), bands of its output rows."""
    per_image = conv_work(weight_shape, math.prod(plan.out_size), input_shape)
    budget = _batching.SUB_BATCH_WORK * kernel_threads()
    if per_image <= budget:
        for part in sub_batches(plan.batch, per_image):
            yield part, 0, plan.rows
        return
    per_row = max(1, per_image // plan.rows)
    band = max(1, budget // per_row)
    if band >= plan.out_size[1]:
        band -= band % plan.out_size[1]  # whole output depth slices, which the kernels may take as such
    for image in range(plan.batch):
        for row in range(0, plan.rows, band):
            yield slice(image, image + 1), row, min(row + band, plan.rows)


def _flat(weight: AnyArray) -> AnyArray:
    """The weight (C_out, C_in/groups, kD, kH, kW) as the kernels' (C_out, C_in/groups*kD*kH*kW)."""
    return weight.reshape(weight.shape[0], -1)


def _rows_weight(weight: AnyArray, groups: int) -> AnyArray:
    """The weight (C_out, C_in/groups, kD, kH, kW) as the channels-last forward's (groups, kD*kH*kW *
    C_in/groups, C_out/groups), tap-major: the matrix a tile of output voxels' columns multiplies."""
    c_out, c_in_group = weight.shape[:2]
    by_group = weight.reshape(groups, c_out // groups, c_in_group, -1)
    return np.ascontiguousarray(by_group.transpose(0, 3, 2, 1)).reshape(groups, -1, c_out // groups)


def _forward(x: AnyArray, weight: AnyArray, bias: AnyArray | None, out: AnyArray, plan: _Conv3dPlan,
             last: bool) -> None:
    """out := conv3d(x, weight) + bias for C-contiguous x and weight in the layout ``last`` says.

    Both layouts run the direct kernel where it applies (_conv3d.pxi: enough output channels for
    its lanes, or channels last; not 1x1x1). Otherwise, channels last, the tiles' products are
    BLAS's, which writes the strided output rows itself:
    convx's packed GEMM of W^T by the transposed tile, through a buffer copied into the rows, took
    1.18x, 1.28x and 1.36x the NCDHW time on the benchmark's C3D, 7x7x7-stem and pointwise layers
    against BLAS's 1.14x, 1.22x and 0.47x (one thread, busy machine)."""
    bias_arg = np.empty(0, dtype=out.dtype) if bias is None else contiguous(bias)
    n_threads = plan.threads(weight.shape)
    if last:
        kernel, matrix = _core.conv3d_forward_last, _rows_weight(weight, plan.groups)
    else:
        kernel, matrix = _core.conv3d_forward, _flat(weight)
    for part, row0, row1 in _units(plan, weight.shape, x.shape):
        kernel(x[part], matrix, bias_arg, out[part], *plan.kernel_args(), row0, row1, n_threads)


def _input_gradient(grad_out: AnyArray, weight: AnyArray, grad_x: AnyArray, plan: _Conv3dPlan,
                    last: bool = False) -> None:
    """grad_x := conv3d's input gradient for C-contiguous arrays in the layout ``last`` says (grad_x is
    zeroed first). At stride 1, both layouts run the direct kernel's correlation of grad_out with the
    flipped weight where it applies (_conv3d.pxi); C3D's 1.03x and U-Net's 0.97x NDHWC / NCDHW
    time, one thread, busy machine. Otherwise, channels last, the columns' products are scattered
    back (a correlation through those tiles took 0.98x the scatter's time on C3D, 1.34x on
    U-Net)."""
    grad_x[...] = 0
    n_threads = plan.threads(weight.shape)
    flat = _flat(weight)
    kernel = _core.conv3d_backward_input_last if last else _core.conv3d_backward_input
    for part, row0, row1 in _units(plan, weight.shape, grad_x.shape):
        kernel(grad_out[part], flat, grad_x[part], *plan.kernel_args(), row0, row1, n_threads)


def _weight_gradient(grad_out: AnyArray, x: AnyArray, grad_w: AnyArray, plan: _Conv3dPlan, last: bool = False) -> None:
    """grad_w += conv3d's weight gradient for C-contiguous arrays in the layout ``last`` says (the
    channels-last kernels sum it tap-major, (C_out, kD, kH, kW, C_in/groups), reordered here)."""
    n_threads = plan.threads(grad_w.shape)
    if last:
        c_out, c_in_group, *kernel_size = grad_w.shape
        tap_major = np.zeros((c_out, *kernel_size, c_in_group), dtype=grad_w.dtype)
        flat = tap_major.reshape(c_out, -1)
    else:
        flat = _flat(grad_w)
    kernel = _core.conv3d_backward_weight_last if last else _core.conv3d_backward_weight
    for part, row0, row1 in _units(plan, grad_w.shape, x.shape):
        kernel(grad_out[part], x[part], flat, *plan.kernel_args(), row0, row1, n_threads)
    if last:
        grad_w += tap_major.transpose(0, 4, 1, 2, 3)


def _bias_gradient(grad_out: AnyArray, grad_b: AnyArray, last: bool = False) -> None:
    """grad_b := grad_out summed over N, D, H and W, for a C-contiguous grad_out in the layout ``last`` says."""
    n = grad_out.shape[0]
    if n == 0:
        grad_b[...] = 0
        return
    if last:
        _core.conv2d_backward_bias_channels_last(grad_out.reshape(-1, grad_out.shape[4]), grad_b,
                                                 kernel_threads(elements=grad_out.size))
        return
    c = grad_out.shape[1]
    _core.conv2d_backward_bias(grad_out.reshape(n, c, -1, grad_out.shape[4]), grad_b, kernel_threads())


def _layout(layout: object) -> bool:
    """Whether ``layout`` is 'NDHWC' rather than 'NCDHW'; anything else refused naming both."""
    return as_data_layout(layout, 3)


def _first_shape(shape: Shape, last: bool) -> Shape:
    """A batch's shape read channels first: (N, D, H, W, C) -> (N, C, D, H, W) where ``last``."""
    return channels_first_shape(shape, 3) if last else tuple(shape)


def conv3d(
    x: NDArray[Float], weight: NDArray[Float], bias: NDArray[Float] | None = None,
    stride: IntTriple = 1, padding: Padding3d = 0, dilation: IntTriple = 1, groups: int = 1, *,
    layout: str = "NCDHW",
) -> NDArray[Float]:
    """3-D convolution (cross-correlation) of a batch of volumes.

    ``y[n, co, od, oh, ow] = bias[co] + sum_{ci, a, b, c} weight[co, ci, a, b, c] *
    x_pad[n, g*C_in/groups + ci, od*sD + a*dD, oh*sH + b*dH, ow*sW + c*dW]`` with ``g`` the group of ``co``.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, D, H, W) or (C_in, D, H, W)
        Input volumes, float32 or float64, any memory layout.
    weight : ndarray, shape (C_out, C_in / groups, kD, kH, kW)
        Filters, same dtype as ``x``.
    bias : ndarray, shape (C_out,), optional
        Added to every output position of each channel.
    stride : int or (int, int, int), default 1
        Step between windows along (depth, height, width), positive.
    padding : int, (int, int, int), ((int, int), (int, int), (int, int)), 'valid', 'same' or 'same_lower', default 0
        Implicit zeros on both sides of each axis, or per side as ``((front, back), (top, bottom),
        (left, right))``. ``'same'`` gives ``ceil(size / stride)`` outputs per axis (at stride 1 the
        input's size), the extra zero of an odd total at the back/bottom/right (PyTorch's
        ``'same'`` at stride 1, ONNX's ``SAME_UPPER``); ``'same_lower'`` puts it in front.
    dilation : int or (int, int, int), default 1
        Spacing between kernel taps, positive.
    groups : int, default 1
        Split channels into this many independent convolutions; must divide C_in and C_out.
    layout : {'NCDHW', 'NDHWC'}, default 'NCDHW'
        The layout of ``x`` and ``y``: channels first (PyTorch's) or channels last, ``x`` then
        (N, D, H, W, C_in) or (D, H, W, C_in) and ``y`` (N, D_out, H_out, W_out, C_out). The weight
        stays (C_out, C_in / groups, kD, kH, kW) in both; a TensorFlow / Keras DHWIO kernel ``k`` is
        ``k.transpose(4, 3, 0, 1, 2)``.

    Returns
    -------
    y : ndarray, shape (N, C_out, D_out, H_out, W_out) or (C_out, D_out, H_out, W_out)
        ``D_out = floor((D + front + back - dD*(kD - 1) - 1) / sD) + 1``, likewise ``H_out``, ``W_out``
        (channels last: (N, D_out, H_out, W_out, C_out) or (D_out, H_out, W_out, C_out)).

    Examples
    --------
    >>> import numpy as np, convx
    >>> x = np.ones((1, 1, 3, 3, 3), dtype=np.float32)
    >>> w = np.ones((1, 1, 3, 3, 3), dtype=np.float32)
    >>> convx.conv3d(x, w, padding=1)[0, 0, 0]
    array([[ 8., 12.,  8.],
           [12., 18., 12.],
           [ 8., 12.,  8.]], dtype=float32)
    >>> convx.conv3d(x.transpose(0, 2, 3, 4, 1), w, padding=1, layout="NDHWC")[0, 0, :, :, 0]
    array([[ 8., 12.,  8.],
           [12., 18., 12.],
           [ 8., 12.,  8.]], dtype=float32)
    """
    last = _layout(layout)
    x, unbatched = _volumes("x", x)
    weight = as_float_array("weight", weight, (5,))
    if bias is not None:
        bias = as_float_array("bias", bias, (1,))
    dtype = same_dtype(x=x, weight=weight, bias=bias)
    plan: _Conv3dPlan = _plan_conv3d(_first_shape(x.shape, last), weight.shape, stride, padding, dilation, groups,
                                     layout=layout)
    _check_bias(bias, plan.out_channels)
    shape = (plan.batch, plan.out_channels, *plan.out_size)
    out = np.empty(channels_last_shape(shape, 3) if last else shape, dtype=dtype)
    if plan.batch:
        _forward(contiguous(x), contiguous(weight), bias, out, plan, last)
    return _unbatch(out, unbatched)


def conv3d_backward_input(
    grad_out: NDArray[Float], weight: NDArray[Float], input_shape: Shape,
    stride: IntTriple = 1, padding: Padding3d = 0, dilation: IntTriple = 1, groups: int = 1, *,
    layout: str = "NCDHW",
) -> NDArray[Float]:
    """Gradient of :func:`conv3d` with respect to its input: ``grad_x = col2vol(weight^T @ grad_out)``.

    Parameters
    ----------
    grad_out : ndarray, shape (N, C_out, D_out, H_out, W_out) or (C_out, D_out, H_out, W_out)
        Gradient of the loss with respect to the convolution's output.
    weight : ndarray, shape (C_out, C_in / groups, kD, kH, kW)
        The forward pass's filters, same dtype as ``grad_out``.
    input_shape : tuple of int, (N, C_in, D, H, W) or (C_in, D, H, W)
        Shape of the forward input ``x`` (its size cannot always be recovered from the output).
    stride, padding, dilation, groups, layout
        As given to :func:`conv3d`; with ``layout='NDHWC'`` ``grad_out`` is (N, D_out, H_out, W_out,
        C_out) and ``input_shape`` and ``grad_x`` (N, D, H, W, C_in).

    Returns
    -------
    grad_x : ndarray, shape ``input_shape``

    Examples
    --------
    >>> import numpy as np, convx
    >>> w = np.ones((1, 1, 2, 2, 2))
    >>> convx.conv3d_backward_input(np.ones((1, 1, 1, 1, 2)), w, (1, 1, 2, 2, 3))[0, 0, 0]
    array([[1., 2., 1.],
           [1., 2., 1.]])
    """
    last = _layout(layout)
    grad_out, unbatched = _volumes("grad_out", grad_out)
    weight = as_float_array("weight", weight, (5,))
    dtype = same_dtype(grad_out=grad_out, weight=weight)
    input_shape = as_shape("input_shape", input_shape, (4 + (not unbatched),))
    if unbatched:
        input_shape = (1, *input_shape)
    plan: _Conv3dPlan = _plan_conv3d(_first_shape(input_shape, last), weight.shape, stride, padding, dilation, groups,
                                     "input_shape", layout)
    _check_grad_out(grad_out, plan, last)
    sizes = _first_shape(input_shape, last)[2:]
    if plan.batch and plan.kernel == (1, 1, 1) and plan.stride == (1, 1, 1) and plan.out_size == tuple(sizes):
        # 1x1x1 at stride 1, unpadded: the 2-D op's over (D*H, W) planes, views of the same memory
        # (the 2-D kernels' choice: 2.0 against 2.7 ms for 2x128x16x28x28 to 64 channels, 2 threads)
        planes: tuple[int, int, int] = (int(input_shape[0]), int(sizes[0] * sizes[1]), int(sizes[2]))
        grad_planes = conv2d_backward_input(
            grad_out.reshape(*planes, -1) if last else grad_out.reshape(planes[0], -1, *planes[1:]),
            weight.reshape(*weight.shape[:2], 1, 1),
            (*planes, input_shape[4]) if last else (planes[0], input_shape[1], *planes[1:]),
            groups=plan.groups, layout="NHWC" if last else "NCHW",
        )
        return _unbatch(grad_planes.reshape(input_shape), unbatched)
    grad_x = np.zeros(input_shape, dtype=dtype)
    if plan.batch:
        _input_gradient(contiguous(grad_out), contiguous(weight), grad_x, plan, last)
    return _unbatch(grad_x, unbatched)


def conv3d_backward_weight(
    grad_out: NDArray[Float], x: NDArray[Float], weight_shape: Shape,
    stride: IntTriple = 1, padding: Padding3d = 0, dilation: IntTriple = 1, groups: int = 1, *,
    layout: str = "NCDHW",
) -> NDArray[Float]:
    """Gradient of :func:`conv3d` with respect to its weight.

    ``grad_w[co, ci, a, b, c] = sum_{n, od, oh, ow} grad_out[n, co, od, oh, ow] *
    x_pad[n, ci', od*sD + a*dD, oh*sH + b*dH, ow*sW + c*dW]``.

    Parameters
    ----------
    grad_out : ndarray, shape (N, C_out, D_out, H_out, W_out) or (C_out, D_out, H_out, W_out)
    x : ndarray, shape (N, C_in, D, H, W) or (C_in, D, H, W)
        The forward pass's input, same dtype as ``grad_out``.
    weight_shape : tuple of int, (C_out, C_in / groups, kD, kH, kW)
    stride, padding, dilation, groups, layout
        As given to :func:`conv3d`; with ``layout='NDHWC'`` ``grad_out`` and ``x`` are channels last.

    Returns
    -------
    grad_w : ndarray, shape ``weight_shape``

    Examples
    --------
    >>> import numpy as np, convx
    >>> x = np.arange(8.0).reshape(1, 1, 2, 2, 2)
    >>> convx.conv3d_backward_weight(np.ones((1, 1, 1, 1, 1)), x, (1, 1, 2, 2, 2)).ravel()
    array([0., 1., 2., 3., 4., 5., 6., 7.])
    """
    last = _layout(layout)
    grad_out, unbatched = _volumes("grad_out", grad_out)
    x = as_float_array("x", x, (grad_out.ndim - unbatched,))
    dtype = same_dtype(grad_out=grad_out, x=x)
    weight_shape = as_shape("weight_shape", weight_shape, (5,))
    if unbatched:
        x = x[None]
    plan: _Conv3dPlan = _plan_conv3d(_first_shape(x.shape, last), weight_shape, stride, padding, dilation, groups,
                                     layout=layout)
    _check_grad_out(grad_out, plan, last)
    grad_w = np.zeros(weight_shape, dtype=dtype)
    if plan.batch:
        _weight_gradient(contiguous(grad_out), contiguous(x), grad_w, plan, last)
    return grad_w


def conv3d_backward_bias(grad_out: NDArray[Float], *, layout: str = "NCDHW") -> NDArray[Float]:
    """Gradient of :func:`conv3d` with respect to its bias: ``grad_out`` summed over N, D, H and W.

    Parameters
    ----------
    grad_out : ndarray, shape (N, C_out, D_out, H_out, W_out) or (C_out, D_out, H_out, W_out)
    layout : {'NCDHW', 'NDHWC'}, default 'NCDHW'
        As given to :func:`conv3d`: channels last, ``grad_out`` is (N, D_out, H_out, W_out, C_out).

    Returns
    -------
    grad_b : ndarray, shape (C_out,)

    Examples
    --------
    >>> import numpy as np, convx
    >>> convx.conv3d_backward_bias(np.ones((2, 3, 2, 4, 4), dtype=np.float32))
    array([64., 64., 64.], dtype=float32)
    """
    last = _layout(layout)
    grad_out, _ = _volumes("grad_out", grad_out)
    grad_b = np.zeros(grad_out.shape[4 if last else 1], dtype=grad_out.dtype)
    _bias_gradient(contiguous(grad_out), grad_b, last)
    return grad_b


def conv3d_backward(
    grad_out: NDArray[Float], x: NDArray[Float], weight: NDArray[Float],
    stride: IntTriple = 1, padding: Padding3d = 0, dilation: IntTriple = 1, groups: int = 1, *,
    layout: str = "NCDHW",
) -> tuple[NDArray[Float], NDArray[Float], NDArray[Float]]:
    """All three gradients of :func:`conv3d`: those of :func:`conv3d_backward_input`,
    :func:`conv3d_backward_weight` and :func:`conv3d_backward_bias`, validated once.

    Parameters
    ----------
    grad_out : ndarray, shape (N, C_out, D_out, H_out, W_out) or (C_out, D_out, H_out, W_out)
    x : ndarray, shape (N, C_in, D, H, W) or (C_in, D, H, W)
        The forward pass's input.
    weight : ndarray, shape (C_out, C_in / groups, kD, kH, kW)
        The forward pass's filters.
    stride, padding, dilation, groups, layout
        As given to :func:`conv3d`; with ``layout='NDHWC'`` ``grad_out``, ``x`` and ``grad_x`` are
        channels last.

    Returns
    -------
    grad_x : ndarray, shape of ``x``
    grad_w : ndarray, shape of ``weight``
    grad_b : ndarray, shape (C_out,)

    Examples
    --------
    >>> import numpy as np, convx
    >>> x = np.ones((2, 3, 4, 4, 4)); w = np.ones((4, 3, 3, 3, 3))
    >>> gx, gw, gb = convx.conv3d_backward(np.ones((2, 4, 2, 2, 2)), x, w)
    >>> gx.shape, gw.shape, gb.tolist()
    ((2, 3, 4, 4, 4), (4, 3, 3, 3, 3), [16.0, 16.0, 16.0, 16.0])
    """
    last = _layout(layout)
    grad_out, unbatched = _volumes("grad_out", grad_out)
    x = as_float_array("x", x, (grad_out.ndim - unbatched,))
    weight = as_float_array("weight", weight, (5,))
    dtype = same_dtype(grad_out=grad_out, x=x, weight=weight)
    if unbatched:
        x = x[None]
    plan: _Conv3dPlan = _plan_conv3d(_first_shape(x.shape, last), weight.shape, stride, padding, dilation, groups,
                                     layout=layout)
    _check_grad_out(grad_out, plan, last)
    grad_x = np.zeros(x.shape, dtype=dtype)
    grad_w = np.zeros(weight.shape, dtype=dtype)
    grad_b = np.zeros(plan.out_channels, dtype=dtype)
    if plan.batch:
        grad_out, x, weight = contiguous(grad_out), contiguous(x), contiguous(weight)
        _input_gradient(grad_out, weight, grad_x, plan, last)
        _weight_gradient(grad_out, x, grad_w, plan, last)
        _bias_gradient(grad_out, grad_b, last)
    return _unbatch(grad_x, unbatched), grad_w, grad_b


def conv_transpose3d(
    x: NDArray[Float], weight: NDArray[Float], bias: NDArray[Float] | None = None, stride: IntTriple = 1,
    padding: Padding3d = 0, output_padding: IntTriple = 0, groups: int = 1, dilation: IntTriple = 1, *,
    output_size: Shape | None = None, layout: str = "NCDHW",
) -> NDArray[Float]:
    """3-D transposed convolution ("deconvolution"): the adjoint of :func:`conv3d` as a map of its input.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, D, H, W) or (C_in, D, H, W)
    weight : ndarray, shape (C_in, C_out / groups, kD, kH, kW)
        Same layout as PyTorch's ``ConvTranspose3d.weight``.
    bias : ndarray, shape (C_out,), optional
    stride : int or (int, int, int), default 1
    padding : int, (int, int, int), ((int, int), (int, int), (int, int)), 'valid', 'same' or 'same_lower', default 0
        Elements removed from each side of each axis of the full transposed convolution, or per
        side ``((front, back), (top, bottom), (left, right))``. ``'same'`` and ``'same_lower'`` are
        ONNX ConvTranspose's auto_pad SAME_UPPER / SAME_LOWER: the output is ``size * stride`` per
        axis (or ``output_size``), the odd element removed at the end ('same') or the start.
    output_padding : int or (int, int, int), default 0
        Extra elements at the end of each axis; each smaller than its stride or dilation.
    groups : int, default 1
    dilation : int or (int, int, int), default 1
    output_size : (D_out, H_out, W_out) or (N, C_out, D_out, H_out, W_out), optional
        The output size wanted, as PyTorch's ``ConvTranspose3d.forward(x, output_size)``: with
        numeric padding it sets output_padding; with 'same' / 'same_lower' it replaces ``size * stride``.
    layout : {'NCDHW', 'NDHWC'}, default 'NCDHW'
        As for :func:`conv3d`: channels last, ``x`` is (N, D, H, W, C_in), ``y`` (N, D_out, H_out,
        W_out, C_out) and a 5-entry ``output_size`` (N, D_out, H_out, W_out, C_out).

    Returns
    -------
    y : ndarray, shape (N, C_out, D_out, H_out, W_out) or (C_out, D_out, H_out, W_out)
        ``D_out = (D - 1)*sD - front - back + dD*(kD - 1) + output_padding_D + 1``, likewise the others
        (channels last: (N, D_out, H_out, W_out, C_out) or (D_out, H_out, W_out, C_out)).

    Examples
    --------
    >>> import numpy as np, convx
    >>> x = np.ones((1, 1, 2, 2, 2)); w = np.ones((1, 1, 2, 2, 2))
    >>> convx.conv_transpose3d(x, w, stride=2).shape
    (1, 1, 4, 4, 4)
    >>> float(convx.conv_transpose3d(x, w).max())
    8.0
    """
    last = _layout(layout)
    x, unbatched = _volumes("x", x)
    weight = as_float_array("weight", weight, (5,))
    if bias is not None:
        bias = as_float_array("bias", bias, (1,))
    dtype = same_dtype(x=x, weight=weight, bias=bias)
    if last and output_size is not None and not isinstance(output_size, (int, np.integer)) and len(output_size) == 5:
        output_size = channels_first_shape(as_shape("output_size", output_size, (5,)), 3)
    stride_ = as_triple("stride", stride, 1)
    dilation_ = as_triple("dilation", dilation, 1)
    out_pad = as_triple("output_padding", output_padding, 0)
    groups = as_int("groups", groups, 1)
    parsed = as_padding3d(padding)
    first_shape = _first_shape(x.shape, last)
    batch, c_in = first_shape[:2]
    if weight.shape[0] != c_in:
        raise ValueError(
            f"weight of shape {weight.shape} must have x's {c_in} input channels first (transposed layout "
            f"(C_in, C_out / groups, kD, kH, kW)), got weight.shape[0] = {weight.shape[0]}"
            + (f" (x read as {'(N, D, H, W, C_in)' if last else '(N, C_in, D, H, W)'}, layout={layout!r})")
        )
    if min(weight.shape[2:]) < 1 or weight.shape[1] < 1:
        raise ValueError(f"weight must have non-empty channel and kernel dimensions, got shape {weight.shape}")
    if min(x.shape[1:]) < 1:
        raise ValueError(f"x must have non-empty channel and spatial dimensions, got shape {x.shape}")
    sides, out_pad_ = transpose_padding(parsed, out_pad, output_size, first_shape[2:], weight.shape[2:], stride_,
                                        dilation_)
    out: tuple[int, ...] = check_transpose_geometry(first_shape, weight.shape, stride_, sides, out_pad_, dilation_,
                                                    groups)
    c_out = weight.shape[1] * groups
    # conv3d's input gradient with x as the output gradient (output_padding may give that convolution
    # more outputs than x has: the kernels take x's).
    plan: _Conv3dPlan = _plan_conv3d((batch, c_out, *out), weight.shape, stride_, cast(_Sides, sides), dilation_, groups,
                        "output")
    plan = plan._replace(out_size=cast(_Triple, tuple(first_shape[2:])))
    _check_bias(bias, c_out)
    y = np.zeros(channels_last_shape((batch, c_out, *out), 3) if last else (batch, c_out, *out), dtype=dtype)
    if batch:
        _input_gradient(contiguous(x), contiguous(weight), y, plan, last)
        if bias is not None:
            y += bias if last else bias[:, None, None, None]
    return _unbatch(y, unbatched)
