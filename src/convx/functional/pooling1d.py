"""1-D pooling on the 2-D pooling kernels: ``torch.nn.functional`` semantics of the same names.

An (N, C, L) array is viewed as (N, C, 1, L) without copying and each 1-D argument becomes the 2-D
one with a trivial first axis (kernel ``k`` -> ``(1, k)``, padding ``p`` -> ``(0, p)``); the 2-D
result is viewed back. The 2-D kernels' flat indices ``h * W + w`` are ``w`` on a plane of one
row: positions in ``L``, as PyTorch's. Every argument is validated here first, so that a refusal
names the 1-D argument and shape the caller gave.
"""

from __future__ import annotations

from typing import Literal, overload

import numpy as np
from numpy.typing import NDArray

from .._checks import MAX_POOL_DTYPES, as_bool, as_data_layout, as_layout_array, as_single
from .._typing import AnyArray, Float, IntSingle, MaxPooled, Padding1d, Shape
from . import _pooling_nhwc as _nhwc
from .pooling import (
    _as_indices,
    _avg_values,
    _input_shape,
    _pool_output_shape,
    _scatter_maxima,
    _window_values,
    adaptive_avg_pool2d,
    adaptive_avg_pool2d_backward,
    adaptive_max_pool2d,
    avg_pool2d,
    avg_pool2d_backward,
    max_pool2d,
)

__all__ = [
    "adaptive_avg_pool1d",
    "adaptive_avg_pool1d_backward",
    "adaptive_max_pool1d",
    "avg_pool1d",
    "avg_pool1d_backward",
    "max_pool1d",
    "max_pool1d_backward",
]


_LAYOUT = "(N, C, L) or (C, L)"


def _plane(array: AnyArray) -> AnyArray:
    """(..., L) viewed as (..., 1, L)."""
    return array[..., None, :]


def _line(array: AnyArray) -> AnyArray:
    """(..., 1, L) viewed as (..., L)."""
    return array[..., 0, :]


def _plane_shape(shape: Shape, unbatched: bool) -> Shape:
    """An (N, C, L) input shape as the (N, C, 1, L) of its view, (C, 1, L) if the input was (C, L)."""
    return (*shape[:2], 1, shape[2])[1 if unbatched else 0:]


def _grad_out_shape(grad_out: AnyArray, input_shape: Shape, out_length: int) -> None:
    if grad_out.shape[-1] != out_length:
        raise ValueError(
            f"grad_out must have the forward output shape {(*grad_out.shape[:-1], out_length)} for input_shape "
            f"{tuple(input_shape)} and these pooling arguments, got {grad_out.shape}"
        )


@overload
def max_pool1d(
    x: NDArray[MaxPooled], kernel_size: IntSingle, stride: IntSingle | None = ..., padding: Padding1d = ...,
    dilation: IntSingle = ..., ceil_mode: bool = ..., return_indices: Literal[False] = ..., *, layout: str = ...,
) -> NDArray[MaxPooled]: ...
@overload
def max_pool1d(
    x: NDArray[MaxPooled], kernel_size: IntSingle, stride: IntSingle | None = ..., padding: Padding1d = ...,
    dilation: IntSingle = ..., ceil_mode: bool = ..., *, return_indices: Literal[True], layout: str = ...,
) -> tuple[NDArray[MaxPooled], NDArray[np.int64]]: ...
def max_pool1d(
    x: NDArray[MaxPooled], kernel_size: IntSingle, stride: IntSingle | None = None, padding: Padding1d = 0,
    dilation: IntSingle = 1, ceil_mode: bool = False, return_indices: bool = False, *, layout: str = "NCW",
) -> NDArray[MaxPooled] | tuple[NDArray[MaxPooled], NDArray[np.int64]]:
    """1-D max pooling, as ``torch.nn.functional.max_pool1d`` (:func:`max_pool2d` on views).

    ``y[n, c, o]`` is the maximum of ``x[n, c, o*s - left + i*d]`` over the taps ``0 <= i < k``
    inside the input, with :func:`max_pool2d`'s rules for ties (the first maximum) and NaN, and its
    dtypes (int8 and uint8 pooled exactly).

    Parameters
    ----------
    x : ndarray of float32, float64, int8 or uint8, shape (N, C, L) or (C, L)
        Input, any memory layout; not modified.
    kernel_size : int or (int,)
    stride : int or (int,), optional
        Defaults to ``kernel_size``.
    padding : int, (int,), ((int, int),), 'valid', 'same' or 'same_lower', default 0
        Implicit -inf: ``p`` on both ends or ``((left, right),)``, each at most
        ``dilation * (kernel_size - 1)``; the words as in :func:`max_pool2d` (``'same'``:
        ``ceil(L / stride)`` outputs, any odd extra element on the right).
    dilation : int or (int,), default 1
    ceil_mode : bool, default False
        Round the output length up, keeping a last partial window.
    return_indices : bool, default False
        Also return the position in ``[0, L)`` of every maximum.
    layout : {'NCW', 'NWC'}, default 'NCW'
        Keyword only: the memory layout of the arrays, channels first (PyTorch's) or channels
        last, ``(N, L, C)`` or ``(L, C)`` (then the outputs are too). NWC runs natively.

    Returns
    -------
    y : ndarray, shape (N, C, L_out) or (C, L_out); (N, L_out, C) or (L_out, C) for NWC
        ``L_out = (L + 2p - d(k - 1) - 1) // s + 1`` (see ``ceil_mode``).
    indices : ndarray of int64, same shape as ``y``
        Only with ``return_indices``, as :func:`max_pool1d_backward` takes them.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import max_pool1d
    >>> y, indices = max_pool1d(np.array([[1., 3., 2., 5., 4.]]), 2, return_indices=True)
    >>> y, indices
    (array([[3., 5.]]), array([[1, 3]]))
    >>> max_pool1d(np.array([[1.], [3.], [2.], [5.], [4.]]), 2, layout="NWC")  # (L, C) = (5, 1)
    array([[3.],
           [5.]])
    """
    if as_data_layout(layout, 1):
        return _nhwc.max_pool1d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices)  # type: ignore[no-any-return]
    x = as_layout_array("max_pool1d", "x", x, (2, 3), _LAYOUT, MAX_POOL_DTYPES)
    ceil_mode = as_bool("ceil_mode", ceil_mode)
    (kernel,), (stride_,), spec, (dilation_,) = _window_values(kernel_size, stride, padding, dilation, 1, ceil_mode)
    return_indices = as_bool("return_indices", return_indices)
    _, (sides,) = _pool_output_shape("x", x.shape[-1:], (kernel,), (stride_,), spec, (dilation_,), ceil_mode)
    padding2d = ((0, 0), sides)
    if return_indices:
        y, indices = max_pool2d(_plane(x), (1, kernel), (1, stride_), padding2d, (1, dilation_), ceil_mode,
                                return_indices=True)
        return _line(y), _line(indices)
    return _line(max_pool2d(_plane(x), (1, kernel), (1, stride_), padding2d, (1, dilation_), ceil_mode))


def max_pool1d_backward(
    grad_out: NDArray[Float], indices: NDArray[np.int64], input_shape: Shape, *, layout: str = "NCW"
) -> NDArray[Float]:
    """Gradient of :func:`max_pool1d` (and :func:`adaptive_max_pool1d`) with respect to its input.

    Every ``grad_out[n, c, o]`` is added to ``grad_x[n, c, indices[n, c, o]]``.

    Parameters
    ----------
    grad_out : ndarray of float32 or float64, shape (N, C, L_out) or (C, L_out)
    indices : ndarray of int64, same shape as ``grad_out``
        The forward pass's indices, each in ``[0, L)``.
    input_shape : tuple of int
        ``(N, C, L)`` or ``(C, L)``, the shape of the forward input.
    layout : {'NCW', 'NWC'}, default 'NCW'
        Keyword only: with ``'NWC'``, every array and shape has its channel axis last:
        ``(N, L, C)`` or ``(L, C)``.

    Returns
    -------
    grad_x : ndarray, shape ``input_shape``

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import max_pool1d_backward
    >>> max_pool1d_backward(np.ones((1, 2)), np.array([[1, 3]]), (1, 5))
    array([[0., 1., 0., 1., 0.]])
    """
    if as_data_layout(layout, 1):
        return _nhwc.max_pool1d_backward(grad_out, indices, input_shape)
    grad_out = as_layout_array("max_pool1d_backward", "grad_out", grad_out, (2, 3), "(N, C, L_out) or (C, L_out)")
    indices = _as_indices(indices, grad_out)
    shape, unbatched = _input_shape(input_shape, grad_out, dims=1)
    grad_x = _scatter_maxima(_plane(grad_out), _plane(indices), _plane_shape(shape, False), unbatched,
                             input_shape, "L")
    return _line(grad_x)


def avg_pool1d(
    x: NDArray[Float], kernel_size: IntSingle, stride: IntSingle | None = None, padding: Padding1d = 0,
    ceil_mode: bool = False, count_include_pad: bool = True, dilation: IntSingle = 1, *, layout: str = "NCW",
) -> NDArray[Float]:
    """1-D average pooling, as ``torch.nn.functional.avg_pool1d`` (:func:`avg_pool2d` on views).

    ``y[n, c, o]`` is the sum of ``x[n, c, o*s - left + i*d]`` over the taps inside the input,
    divided by the number of taps inside the zero-padded input (``count_include_pad``; a
    ``ceil_mode`` window hanging past the padding is clipped to it) or inside the input.

    Parameters
    ----------
    x : ndarray of float32 or float64, shape (N, C, L) or (C, L)
        Input, any memory layout; not modified.
    kernel_size : int or (int,)
    stride : int or (int,), optional
        Defaults to ``kernel_size``.
    padding : int, (int,), ((int, int),), 'valid', 'same' or 'same_lower', default 0
        Implicit zeros, spelled and limited as in :func:`max_pool1d`.
    ceil_mode : bool, default False
    count_include_pad : bool, default True
    dilation : int or (int,), default 1
        Spacing between the taps of a window (ONNX's AveragePool ``dilations``).
    layout : {'NCW', 'NWC'}, default 'NCW'
        Keyword only: the memory layout of the arrays, channels first (PyTorch's) or channels
        last, ``(N, L, C)`` or ``(L, C)`` (then the outputs are too). NWC runs natively.

    Returns
    -------
    y : ndarray, shape (N, C, L_out) or (C, L_out); (N, L_out, C) or (L_out, C) for NWC
        ``L_out = (L + left + right - d(k - 1) - 1) // s + 1`` (see ``ceil_mode``).

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import avg_pool1d
    >>> avg_pool1d(np.array([[1., 2., 3., 4., 5.]]), 3, stride=2, padding=1, count_include_pad=False)
    array([[1.5, 3. , 4.5]])
    """
    if as_data_layout(layout, 1):
        return _nhwc.avg_pool1d(x, kernel_size, stride, padding, ceil_mode, count_include_pad, dilation)
    x = as_layout_array("avg_pool1d", "x", x, (2, 3), _LAYOUT)
    (kernel,), (stride_,), spec, (dilation_,), ceil_mode, count_include_pad, _ = _avg_values(
        kernel_size, stride, padding, dilation, ceil_mode, count_include_pad, None, 1
    )
    _, (sides,) = _pool_output_shape("x", x.shape[-1:], (kernel,), (stride_,), spec, (dilation_,), ceil_mode)
    return _line(avg_pool2d(_plane(x), (1, kernel), (1, stride_), ((0, 0), sides), ceil_mode, count_include_pad,
                            dilation=(1, dilation_)))


def avg_pool1d_backward(
    grad_out: NDArray[Float], input_shape: Shape, kernel_size: IntSingle, stride: IntSingle | None = None,
    padding: Padding1d = 0, ceil_mode: bool = False, count_include_pad: bool = True, dilation: IntSingle = 1, *,
    layout: str = "NCW",
) -> NDArray[Float]:
    """Gradient of :func:`avg_pool1d` with respect to its input.

    Parameters
    ----------
    grad_out : ndarray of float32 or float64, shape (N, C, L_out) or (C, L_out)
        The forward output's shape for these arguments.
    input_shape : tuple of int
        ``(N, C, L)`` or ``(C, L)``, the shape of the forward input.
    kernel_size, stride, padding, ceil_mode, count_include_pad, dilation
        As in :func:`avg_pool1d`.
    layout : {'NCW', 'NWC'}, default 'NCW'
        Keyword only: with ``'NWC'``, every array and shape has its channel axis last:
        ``(N, L, C)`` or ``(L, C)``.

    Returns
    -------
    grad_x : ndarray, shape ``input_shape``

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import avg_pool1d_backward
    >>> avg_pool1d_backward(np.ones((1, 2)), (1, 4), 2)
    array([[0.5, 0.5, 0.5, 0.5]])
    """
    if as_data_layout(layout, 1):
        return _nhwc.avg_pool1d_backward(grad_out, input_shape, kernel_size, stride, padding, ceil_mode,
                                         count_include_pad, dilation)
    grad_out = as_layout_array("avg_pool1d_backward", "grad_out", grad_out, (2, 3), "(N, C, L_out) or (C, L_out)")
    shape, unbatched = _input_shape(input_shape, grad_out, dims=1)
    (kernel,), (stride_,), spec, (dilation_,), ceil_mode, count_include_pad, _ = _avg_values(
        kernel_size, stride, padding, dilation, ceil_mode, count_include_pad, None, 1
    )
    (out_length,), (sides,) = _pool_output_shape(
        "input_shape", shape[2:], (kernel,), (stride_,), spec, (dilation_,), ceil_mode
    )
    _grad_out_shape(grad_out, input_shape, out_length)
    return _line(avg_pool2d_backward(_plane(grad_out), _plane_shape(shape, unbatched), (1, kernel), (1, stride_),
                                     ((0, 0), sides), ceil_mode, count_include_pad, dilation=(1, dilation_)))


def _adaptive_length(output_size: object) -> int:
    return as_single("output_size", output_size, 1)


def _nonempty_length(name: str, shape: Shape) -> None:
    if shape[-1] < 1:
        raise ValueError(f"{name} must have a non-empty length L for adaptive pooling, got shape {tuple(shape)}")


def adaptive_avg_pool1d(x: NDArray[Float], output_size: IntSingle, *, layout: str = "NCW") -> NDArray[Float]:
    """1-D adaptive average pooling, as ``torch.nn.functional.adaptive_avg_pool1d``.

    Output ``o`` averages ``x[..., floor(o*L/L_out):ceil((o+1)*L/L_out)]``.

    Parameters
    ----------
    x : ndarray of float32 or float64, shape (N, C, L) or (C, L)
        Input with ``L >= 1``; not modified.
    output_size : int or (int,)
        ``L_out``, positive.
    layout : {'NCW', 'NWC'}, default 'NCW'
        Keyword only: the memory layout of the arrays, channels first (PyTorch's) or channels
        last, ``(N, L, C)`` or ``(L, C)`` (then the outputs are too). NWC runs natively.

    Returns
    -------
    y : ndarray, shape (N, C, L_out) or (C, L_out); (N, L_out, C) or (L_out, C) for NWC

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import adaptive_avg_pool1d
    >>> adaptive_avg_pool1d(np.array([[1., 2., 3., 4., 5.]]), 2)
    array([[2., 4.]])
    """
    if as_data_layout(layout, 1):
        return _nhwc.adaptive_avg_pool1d(x, output_size)
    x = as_layout_array("adaptive_avg_pool1d", "x", x, (2, 3), _LAYOUT)
    _nonempty_length("x", x.shape)
    return _line(adaptive_avg_pool2d(_plane(x), (1, _adaptive_length(output_size))))


def adaptive_avg_pool1d_backward(
    grad_out: NDArray[Float], input_shape: Shape, *, layout: str = "NCW"
) -> NDArray[Float]:
    """Gradient of :func:`adaptive_avg_pool1d` with respect to its input; the output length is ``grad_out``'s last.

    Parameters
    ----------
    grad_out : ndarray of float32 or float64, shape (N, C, L_out) or (C, L_out)
    input_shape : tuple of int
        ``(N, C, L)`` or ``(C, L)``, ``L >= 1``.
    layout : {'NCW', 'NWC'}, default 'NCW'
        Keyword only: with ``'NWC'``, every array and shape has its channel axis last:
        ``(N, L, C)`` or ``(L, C)``.

    Returns
    -------
    grad_x : ndarray, shape ``input_shape``

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import adaptive_avg_pool1d_backward
    >>> adaptive_avg_pool1d_backward(np.ones((1, 1)), (1, 4))
    array([[0.25, 0.25, 0.25, 0.25]])
    """
    if as_data_layout(layout, 1):
        return _nhwc.adaptive_avg_pool1d_backward(grad_out, input_shape)
    grad_out = as_layout_array("adaptive_avg_pool1d_backward", "grad_out", grad_out, (2, 3),
                               "(N, C, L_out) or (C, L_out)")
    shape, unbatched = _input_shape(input_shape, grad_out, dims=1)
    _nonempty_length("input_shape", shape)
    if grad_out.shape[-1] < 1:
        raise ValueError(f"grad_out must have a non-empty output length, got shape {grad_out.shape}")
    return _line(adaptive_avg_pool2d_backward(_plane(grad_out), _plane_shape(shape, unbatched)))


@overload
def adaptive_max_pool1d(
    x: NDArray[MaxPooled], output_size: IntSingle, return_indices: Literal[False] = ..., *, layout: str = ...
) -> NDArray[MaxPooled]: ...
@overload
def adaptive_max_pool1d(
    x: NDArray[MaxPooled], output_size: IntSingle, return_indices: Literal[True], *, layout: str = ...
) -> tuple[NDArray[MaxPooled], NDArray[np.int64]]: ...
def adaptive_max_pool1d(
    x: NDArray[MaxPooled], output_size: IntSingle, return_indices: bool = False, *, layout: str = "NCW"
) -> NDArray[MaxPooled] | tuple[NDArray[MaxPooled], NDArray[np.int64]]:
    """1-D adaptive max pooling, as ``torch.nn.functional.adaptive_max_pool1d``.

    Output ``o`` is the maximum of ``x[..., floor(o*L/L_out):ceil((o+1)*L/L_out)]``, with
    :func:`max_pool1d`'s rules for ties and NaN and its dtypes; its backward is :func:`max_pool1d_backward`.

    Parameters
    ----------
    x : ndarray of float32, float64, int8 or uint8, shape (N, C, L) or (C, L)
        Input with ``L >= 1``; not modified.
    output_size : int or (int,)
        ``L_out``, positive.
    return_indices : bool, default False
        Also return the position in ``[0, L)`` of every maximum.
    layout : {'NCW', 'NWC'}, default 'NCW'
        Keyword only: the memory layout of the arrays, channels first (PyTorch's) or channels
        last, ``(N, L, C)`` or ``(L, C)`` (then the outputs are too). NWC runs natively.

    Returns
    -------
    y : ndarray, shape (N, C, L_out) or (C, L_out); (N, L_out, C) or (L_out, C) for NWC
    indices : ndarray of int64, same shape as ``y``
        Only with ``return_indices``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import adaptive_max_pool1d
    >>> adaptive_max_pool1d(np.array([[1., 5., 2., 4., 3.]]), 2, return_indices=True)
    (array([[5., 4.]]), array([[1, 3]]))
    """
    if as_data_layout(layout, 1):
        return _nhwc.adaptive_max_pool1d(x, output_size, return_indices)  # type: ignore[no-any-return]
    x = as_layout_array("adaptive_max_pool1d", "x", x, (2, 3), _LAYOUT, MAX_POOL_DTYPES)
    _nonempty_length("x", x.shape)
    size = (1, _adaptive_length(output_size))
    if as_bool("return_indices", return_indices):
        y, indices = adaptive_max_pool2d(_plane(x), size, return_indices=True)
        return _line(y), _line(indices)
    return _line(adaptive_max_pool2d(_plane(x), size))
