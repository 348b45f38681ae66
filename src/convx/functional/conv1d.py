"""1-D convolutions on the 2-D ones: ``torch.nn.functional.conv1d`` / ``conv_transpose1d`` semantics.

An (N, C, L) array is viewed as (N, C, 1, L) and a (C_out, C_in / groups, K) weight as
(C_out, C_in / groups, 1, K), both without copying; each 1-D argument becomes the 2-D one with a
trivial first axis (stride ``s`` -> ``(1, s)``, padding ``(left, right)`` -> ``((0, 0), (left, right))``),
and the 2-D result is viewed back. Every argument is validated here first, so that a refusal
names the 1-D argument and shape the caller gave, never the internal 2-D view.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from numpy.typing import NDArray

from .._checks import (
    as_data_layout,
    as_float_array,
    as_int,
    as_layout_array,
    as_padding_1d,
    as_shape,
    as_single,
    channels_first_shape,
    same_dtype,
)
from .._shapes import conv_output_size, padding_sides
from .._typing import AnyArray, Float, IntSingle, Padding1d, PaddingWord, Shape
from .conv import (
    ALGORITHMS,
    check_conv_shapes,
    check_transpose_geometry,
    conv2d,
    conv2d_backward,
    conv2d_backward_bias,
    conv2d_backward_input,
    conv2d_backward_weight,
    conv_transpose2d,
    transpose_padding,
)

__all__ = [
    "conv1d",
    "conv1d_backward",
    "conv1d_backward_bias",
    "conv1d_backward_input",
    "conv1d_backward_weight",
    "conv_transpose1d",
]


_X_LAYOUT = "(N, C_in, L) or (C_in, L)"
_GRAD_LAYOUT = "(N, C_out, L_out) or (C_out, L_out)"
_WEIGHT_LAYOUT = "(C_out, C_in / groups, K)"


class _Conv1dArgs(NamedTuple):
    """A 1-D convolution's arguments, validated, as the 2-D ops take them, and its output length."""

    stride: tuple[int, int]
    padding: PaddingWord | tuple[tuple[int, int], tuple[int, int]]
    dilation: tuple[int, int]
    groups: int
    out_length: int


def check_algorithm_1d(algorithm: object) -> None:
    """A 1-D convolution's ``algorithm``: 'direct' or 'auto' (Winograd's 3x3 transform has no 1-D kernel)."""
    if algorithm == "winograd":
        raise ValueError("algorithm='winograd' applies to 3x3 2-D kernels only; a 1-D convolution takes 'direct' "
                         "or 'auto'")
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(map(repr, ALGORITHMS))}, got {algorithm!r}")


def _conv1d_args(
    input_shape: Shape, weight_shape: Shape, stride: object, padding: object, dilation: object, groups: object,
    algorithm: object, input_name: str = "x", last: bool = False,
) -> _Conv1dArgs:
    """Validate a 1-D convolution of an (N, C_in, L) input by a (C_out, C_in / groups, K) weight; ``last``:
    the input is (N, L, C_in), ``input_shape`` still given channels first."""
    stride_ = as_single("stride", stride, 1)
    dilation_ = as_single("dilation", dilation, 1)
    groups_ = as_int("groups", groups, 1)
    pads = as_padding_1d(padding)
    check_algorithm_1d(algorithm)
    check_conv_shapes(input_shape, weight_shape, groups_, input_name, "NWC" if last else "NCW")
    length, kernel = input_shape[2], weight_shape[2]
    if isinstance(pads, str):
        _, (left, right) = padding_sides(pads, (1, length), (1, kernel), (1, stride_), (1, dilation_))
    else:
        left, right = pads
    out_length = conv_output_size(length, kernel, stride_, left, right, dilation_)
    if out_length < 1:
        raise ValueError(
            f"the dilated kernel ({dilation_ * (kernel - 1) + 1}: kernel size {kernel}, dilation={dilation_}) is "
            f"longer than the padded input ({length + left + right}: length {length}, padding=({left}, {right}))"
        )
    padding_2d = pads if isinstance(pads, str) else ((0, 0), pads)
    return _Conv1dArgs((1, stride_), padding_2d, (1, dilation_), groups_, out_length)


def _batch_shape(shape: Shape) -> Shape:
    return shape if len(shape) == 3 else (1, *shape)


def _check_grad_out(grad_out: AnyArray, x_shape: Shape, c_out: int, out_length: int, last: bool = False) -> None:
    expected = (*x_shape[:-2], out_length, c_out) if last else (*x_shape[:-2], c_out, out_length)
    if grad_out.shape != expected:
        raise ValueError(f"grad_out must have the forward output's shape {expected}, got {grad_out.shape}")


def _plane(array: AnyArray, last: bool = False) -> AnyArray:
    """(..., L) viewed as (..., 1, L); channels last, (..., L, C) as (..., 1, L, C)."""
    return array[..., None, :, :] if last else array[..., None, :]


def _line(array: AnyArray, last: bool = False) -> AnyArray:
    """The inverse view of :func:`_plane`."""
    return array[..., 0, :, :] if last else array[..., 0, :]


def _first_shape(shape: Shape, last: bool) -> Shape:
    """A batch's shape channels first, (N, C, L)."""
    return _batch_shape(channels_first_shape(shape, 1) if last else shape)



def conv1d(
    x: NDArray[Float], weight: NDArray[Float], bias: NDArray[Float] | None = None,
    stride: IntSingle = 1, padding: Padding1d = 0, dilation: IntSingle = 1, groups: int = 1, *,
    algorithm: str = "direct", activation: str | None = None, activation_params: Mapping[str, Any] | None = None,
    layout: str = "NCW",
) -> NDArray[Float]:
    """1-D convolution (cross-correlation) of a batch of sequences, as ``torch.nn.functional.conv1d``.

    ``y[n, co, o] = bias[co] + sum_{ci, k} weight[co, ci, k] * x_pad[n, g*C_in/groups + ci, o*s + k*d]``
    with ``g`` the group of ``co``; computed by :func:`conv2d` on views with a height of 1 (no copy).

    Parameters
    ----------
    x : ndarray, shape (N, C_in, L) or (C_in, L)
        Input sequences, float32 or float64.
    weight : ndarray, shape (C_out, C_in / groups, K)
        Filters, same dtype as ``x``.
    bias : ndarray, shape (C_out,), optional
    stride : int or (int,), default 1
    padding : int, (int,), ((int, int),), 'valid', 'same' or 'same_lower', default 0
        Zeros on both ends, or per end as ``((left, right),)`` (a flat pair is refused: it reads as a
        2-D padding). ``'same'`` gives ``ceil(L / stride)`` outputs, the extra zero of an odd total
        on the right (PyTorch's 'same' at stride 1, ONNX's SAME_UPPER); ``'same_lower'`` puts it on
        the left.
    dilation : int or (int,), default 1
    groups : int, default 1
        Must divide C_in and C_out; ``groups = C_in`` with one filter per channel is depthwise.
    algorithm : {'direct', 'auto'}, default 'direct'
        As for :func:`conv2d` (Winograd's 3x3 transform does not apply to 1-D kernels).
    activation, activation_params
        An activation applied to the output in place, as for :func:`conv2d`.
    layout : {'NCW', 'NWC'}, default 'NCW'
        Channels first (PyTorch's) or channels last: ``x`` (N, L, C_in), ``y`` (N, L_out, C_out),
        run by :func:`conv2d` with ``layout='NHWC'`` on views.

    Returns
    -------
    y : ndarray, shape (N, C_out, L_out) or (C_out, L_out)
        ``L_out = floor((L + left + right - d*(K - 1) - 1) / s) + 1``.

    Examples
    --------
    >>> import numpy as np, convx
    >>> x = np.arange(5.0).reshape(1, 1, 5)
    >>> convx.conv1d(x, np.ones((1, 1, 3)), padding=1)
    array([[[1., 3., 6., 9., 7.]]])
    >>> convx.conv1d(x, np.ones((1, 1, 2)), padding=((1, 0),))
    array([[[0., 1., 3., 5., 7.]]])
    """
    x = as_layout_array("conv1d", "x", x, (2, 3), _X_LAYOUT)
    weight = as_layout_array("conv1d", "weight", weight, (3,), _WEIGHT_LAYOUT)
    if bias is not None:
        bias = as_float_array("bias", bias, (1,))
    same_dtype(x=x, weight=weight, bias=bias)
    last = as_data_layout(layout, 1)
    args = _conv1d_args(_first_shape(x.shape, last), weight.shape, stride, padding, dilation, groups, algorithm,
                        last=last)
    y = conv2d(_plane(x, last), _plane(weight), bias, args.stride, args.padding, args.dilation, args.groups,
               algorithm=algorithm, activation=activation, activation_params=activation_params,
               layout="NHWC" if last else "NCHW")
    return _line(y, last)


def conv1d_backward_input(
    grad_out: NDArray[Float], weight: NDArray[Float], input_shape: Shape,
    stride: IntSingle = 1, padding: Padding1d = 0, dilation: IntSingle = 1, groups: int = 1, *,
    algorithm: str = "direct", layout: str = "NCW",
) -> NDArray[Float]:
    """Gradient of :func:`conv1d` with respect to its input (:func:`conv2d_backward_input` on views).

    Parameters
    ----------
    grad_out : ndarray, shape (N, C_out, L_out) or (C_out, L_out)
    weight : ndarray, shape (C_out, C_in / groups, K)
    input_shape : tuple of int, (N, C_in, L) or (C_in, L)
    stride, padding, dilation, groups, algorithm, layout
        As given to :func:`conv1d` (channels last, the arrays and shapes (N, L, C)).

    Returns
    -------
    grad_x : ndarray, shape ``input_shape``

    Examples
    --------
    >>> import numpy as np, convx
    >>> convx.conv1d_backward_input(np.ones((1, 1, 3)), np.ones((1, 1, 2)), (1, 1, 4))
    array([[[1., 2., 2., 1.]]])
    """
    grad_out = as_layout_array("conv1d_backward_input", "grad_out", grad_out, (2, 3), _GRAD_LAYOUT)
    weight = as_layout_array("conv1d_backward_input", "weight", weight, (3,), _WEIGHT_LAYOUT)
    same_dtype(grad_out=grad_out, weight=weight)
    shape: Shape = as_shape("input_shape", input_shape, (grad_out.ndim,))
    last = as_data_layout(layout, 1)
    args = _conv1d_args(_first_shape(shape, last), weight.shape, stride, padding, dilation, groups, algorithm,
                        "input_shape", last)
    _check_grad_out(grad_out, shape, weight.shape[0], args.out_length, last)
    plane_shape: Shape = (*shape[:-2], 1, *shape[-2:]) if last else (*shape[:-1], 1, shape[-1])
    grad_x = conv2d_backward_input(_plane(grad_out, last), _plane(weight), plane_shape, args.stride,
                                   args.padding, args.dilation, args.groups, algorithm=algorithm,
                                   layout="NHWC" if last else "NCHW")
    return _line(grad_x, last)


def conv1d_backward_weight(
    grad_out: NDArray[Float], x: NDArray[Float], weight_shape: Shape,
    stride: IntSingle = 1, padding: Padding1d = 0, dilation: IntSingle = 1, groups: int = 1, *,
    algorithm: str = "direct", layout: str = "NCW",
) -> NDArray[Float]:
    """Gradient of :func:`conv1d` with respect to its weight (:func:`conv2d_backward_weight` on views).

    ``grad_w[co, ci, k] = sum_{n, o} grad_out[n, co, o] * x_pad[n, ci', o*s + k*d]``.

    Parameters
    ----------
    grad_out : ndarray, shape (N, C_out, L_out) or (C_out, L_out)
    x : ndarray, shape (N, C_in, L) or (C_in, L)
        The forward pass's input.
    weight_shape : tuple of int, (C_out, C_in / groups, K)
    stride, padding, dilation, groups, algorithm, layout
        As given to :func:`conv1d` (channels last, the arrays and shapes (N, L, C)).

    Returns
    -------
    grad_w : ndarray, shape ``weight_shape``

    Examples
    --------
    >>> import numpy as np, convx
    >>> convx.conv1d_backward_weight(np.ones((1, 1, 3)), np.arange(4.0).reshape(1, 1, 4), (1, 1, 2))
    array([[[3., 6.]]])
    """
    grad_out = as_layout_array("conv1d_backward_weight", "grad_out", grad_out, (2, 3), _GRAD_LAYOUT)
    x = as_layout_array("conv1d_backward_weight", "x", x, (grad_out.ndim,), _X_LAYOUT)
    same_dtype(grad_out=grad_out, x=x)
    weight_shape = as_shape("weight_shape", weight_shape, (3,))
    last = as_data_layout(layout, 1)
    args = _conv1d_args(_first_shape(x.shape, last), weight_shape, stride, padding, dilation, groups, algorithm,
                        last=last)
    _check_grad_out(grad_out, x.shape, weight_shape[0], args.out_length, last)
    grad_w = conv2d_backward_weight(_plane(grad_out, last), _plane(x, last), (*weight_shape[:2], 1, weight_shape[2]),
                                    args.stride, args.padding, args.dilation, args.groups, algorithm=algorithm,
                                    layout="NHWC" if last else "NCHW")
    return _line(grad_w)


def conv1d_backward_bias(grad_out: NDArray[Float], *, layout: str = "NCW") -> NDArray[Float]:
    """Gradient of :func:`conv1d` with respect to its bias: ``grad_out`` summed over N and L.

    Parameters
    ----------
    grad_out : ndarray, shape (N, C_out, L_out) or (C_out, L_out)
    layout : {'NCW', 'NWC'}, default 'NCW'
        As given to :func:`conv1d`: channels last, ``grad_out`` is (N, L_out, C_out).

    Returns
    -------
    grad_b : ndarray, shape (C_out,)

    Examples
    --------
    >>> import numpy as np, convx
    >>> convx.conv1d_backward_bias(np.ones((2, 3, 5)))
    array([10., 10., 10.])
    """
    grad_out = as_layout_array("conv1d_backward_bias", "grad_out", grad_out, (2, 3), _GRAD_LAYOUT)
    last = as_data_layout(layout, 1)
    return conv2d_backward_bias(_plane(grad_out, last), layout="NHWC" if last else "NCHW")


def conv1d_backward(
    grad_out: NDArray[Float], x: NDArray[Float], weight: NDArray[Float],
    stride: IntSingle = 1, padding: Padding1d = 0, dilation: IntSingle = 1, groups: int = 1, *,
    algorithm: str = "direct", layout: str = "NCW",
) -> tuple[NDArray[Float], NDArray[Float], NDArray[Float]]:
    """All three gradients of :func:`conv1d` in one pass over the batch (:func:`conv2d_backward` on views).

    Parameters
    ----------
    grad_out : ndarray, shape (N, C_out, L_out) or (C_out, L_out)
    x : ndarray, shape (N, C_in, L) or (C_in, L)
        The forward pass's input.
    weight : ndarray, shape (C_out, C_in / groups, K)
        The forward pass's filters.
    stride, padding, dilation, groups, algorithm, layout
        As given to :func:`conv1d` (channels last, the arrays and shapes (N, L, C)).

    Returns
    -------
    grad_x : ndarray, shape of ``x``
    grad_w : ndarray, shape of ``weight``
    grad_b : ndarray, shape (C_out,)

    Examples
    --------
    >>> import numpy as np, convx
    >>> gx, gw, gb = convx.conv1d_backward(np.ones((2, 4, 3)), np.ones((2, 3, 5)), np.ones((4, 3, 3)))
    >>> gx.shape, gw.shape, gb.tolist()
    ((2, 3, 5), (4, 3, 3), [6.0, 6.0, 6.0, 6.0])
    """
    grad_out = as_layout_array("conv1d_backward", "grad_out", grad_out, (2, 3), _GRAD_LAYOUT)
    x = as_layout_array("conv1d_backward", "x", x, (grad_out.ndim,), _X_LAYOUT)
    weight = as_layout_array("conv1d_backward", "weight", weight, (3,), _WEIGHT_LAYOUT)
    same_dtype(grad_out=grad_out, x=x, weight=weight)
    last = as_data_layout(layout, 1)
    args = _conv1d_args(_first_shape(x.shape, last), weight.shape, stride, padding, dilation, groups, algorithm,
                        last=last)
    _check_grad_out(grad_out, x.shape, weight.shape[0], args.out_length, last)
    grad_x, grad_w, grad_b = conv2d_backward(_plane(grad_out, last), _plane(x, last), _plane(weight), args.stride,
                                             args.padding, args.dilation, args.groups, algorithm=algorithm,
                                             layout="NHWC" if last else "NCHW")
    return _line(grad_x, last), _line(grad_w), grad_b


def conv_transpose1d(
    x: NDArray[Float], weight: NDArray[Float], bias: NDArray[Float] | None = None, stride: IntSingle = 1,
    padding: Padding1d = 0, output_padding: IntSingle = 0, groups: int = 1, dilation: IntSingle = 1, *,
    output_size: int | Shape | None = None, algorithm: str = "direct",
) -> NDArray[Float]:
    """1-D transposed convolution, as ``torch.nn.functional.conv_transpose1d``: the adjoint of
    :func:`conv1d` as a map of its input (:func:`conv_transpose2d` on views).

    Parameters
    ----------
    x : ndarray, shape (N, C_in, L) or (C_in, L)
    weight : ndarray, shape (C_in, C_out / groups, K)
        Same layout as PyTorch's ``ConvTranspose1d.weight``.
    bias : ndarray, shape (C_out,), optional
    stride : int or (int,), default 1
    padding : int, (int,), ((int, int),), 'valid', 'same' or 'same_lower', default 0
        Removes ``padding`` elements from each end of the full transposed convolution, or
        ``((left, right),)`` per end; 'same' / 'same_lower' as for :func:`conv_transpose2d`
        (``L * s`` outputs, ONNX's SAME_UPPER / SAME_LOWER).
    output_padding : int or (int,), default 0
        Extra elements on the right; smaller than the stride or the dilation.
    groups : int, default 1
    dilation : int or (int,), default 1
    output_size : int, (L_out,) or (N, C_out, L_out), optional
        The output length wanted, as for :func:`conv_transpose2d`.
    algorithm : {'direct', 'auto'}, default 'direct'

    Returns
    -------
    y : ndarray, shape (N, C_out, L_out) or (C_out, L_out)
        ``L_out = (L - 1)*s - left - right + d*(K - 1) + output_padding + 1``.

    Examples
    --------
    >>> import numpy as np, convx
    >>> convx.conv_transpose1d(np.ones((1, 1, 3)), np.ones((1, 1, 2)), stride=2)
    array([[[1., 1., 1., 1., 1., 1.]]])
    """
    x = as_layout_array("conv_transpose1d", "x", x, (2, 3), _X_LAYOUT)
    weight = as_layout_array("conv_transpose1d", "weight", weight, (3,), "(C_in, C_out / groups, K)")
    if bias is not None:
        bias = as_float_array("bias", bias, (1,))
    same_dtype(x=x, weight=weight, bias=bias)
    stride_ = as_single("stride", stride, 1)
    parsed = as_padding_1d(padding)
    out_pad = as_single("output_padding", output_padding, 0)
    dilation_ = as_single("dilation", dilation, 1)
    groups_ = as_int("groups", groups, 1)
    check_algorithm_1d(algorithm)
    x_shape = _batch_shape(x.shape)
    (sides,), (out_pad,) = transpose_padding(
        parsed if isinstance(parsed, str) else (parsed,), (out_pad,), output_size, x_shape[2:], weight.shape[2:],
        (stride_,), (dilation_,),
    )
    (out_length,) = check_transpose_geometry(x_shape, weight.shape, (stride_,), (sides,), (out_pad,), (dilation_,),
                                             groups_)
    c_out = weight.shape[1] * groups_
    check_conv_shapes((x_shape[0], c_out, out_length), weight.shape, groups_, "output")
    y = conv_transpose2d(_plane(x), _plane(weight), bias, (1, stride_), ((0, 0), sides), (0, out_pad), groups_,
                         (1, dilation_), algorithm=algorithm)
    return _line(y)
