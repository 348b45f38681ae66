"""Power-average (Lp) pooling, as ``torch.nn.functional.lp_pool2d``, ``lp_pool1d`` and ``lp_pool3d``.

``y = (kh * kw * avg_pool(x ** p)) ** (1 / p)`` on the average-pooling kernel (no padding, as
PyTorch), with its backward pass from the same quantities. Arguments are validated here, before
any array is computed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import numpy as np
from numpy.typing import NDArray

from .._checks import as_bool, as_data_layout, as_float_array, as_layout_array
from .._typing import AnyArray, Float, IntPair, IntSingle, IntTriple, Padding, Padding1d, PaddingWord
from .pooling import _Sides, _window_values, avg_pool2d, avg_pool2d_backward
from .conv3d import Padding3d
from .pooling3d import _layout_volumes, _window_args, avg_pool3d, avg_pool3d_backward

__all__ = ["lp_pool1d", "lp_pool1d_backward", "lp_pool2d", "lp_pool2d_backward", "lp_pool3d", "lp_pool3d_backward"]


def _norm_type(norm_type: object) -> float:
    """``norm_type`` as a positive finite float (bools, strings and arrays refused)."""
    if isinstance(norm_type, (bool, np.bool_)) or not isinstance(norm_type, (int, float, np.integer, np.floating)):
        raise TypeError(f"norm_type must be a real number, got {norm_type!r} of type {type(norm_type).__name__}")
    value = float(norm_type)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"norm_type must be a positive finite number, got {norm_type!r}")
    return value


def _lp_args(
    norm_type: object, kernel_size: object, stride: object, ceil_mode: object, dims: int, padding: object = 0,
    dilation: object = 1,
) -> tuple[float, tuple[int, ...], tuple[int, ...], bool, PaddingWord | _Sides, tuple[int, ...]]:
    """norm_type, kernel, stride (pairs, or 1-tuples for ``dims`` 1), ceil_mode, padding (as
    ``pooling._window_values`` gives it) and dilation, validated."""
    p = _norm_type(norm_type)
    ceil_flag = as_bool("ceil_mode", ceil_mode)
    kernel, stride_, spec, dilation_ = _window_values(kernel_size, stride, padding, dilation, dims, ceil_flag)
    return p, kernel, stride_, ceil_flag, spec, dilation_


def _powered_average(x: AnyArray, p: float, kernel: tuple[int, ...], stride: tuple[int, ...],
                     ceil_mode: bool, padding: PaddingWord | _Sides, dilation: tuple[int, ...],
                     layout: str = "NCHW") -> AnyArray:
    """``avg_pool2d(x ** p)`` with PyTorch's divisor (the taps inside the zero-padded input: all of a
    window's, but for a ceil_mode window hanging past it)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        powered = np.power(x, x.dtype.type(p))
    return avg_pool2d(powered, (kernel[0], kernel[1]), (stride[0], stride[1]), cast(Padding, padding), ceil_mode,
                      dilation=(dilation[0], dilation[1]), layout=layout)


def _images(op: str, name: str, value: object, layout: str, out: bool = False) -> AnyArray:
    """A 2-D op's float array, (N, C, H, W) or (C, H, W), or channels last with ``layout='NHWC'``."""
    if as_data_layout(layout):
        plane = "out_h, out_w" if out else "H, W"
        return as_layout_array(op, name, value, (3, 4), f"(N, {plane}, C) or ({plane}, C) with layout='NHWC'")
    return as_float_array(name, value, (3, 4))


def _root(average: AnyArray, p: float, taps: int) -> AnyArray:
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        root: AnyArray = np.power(average * average.dtype.type(taps), average.dtype.type(1.0 / p))
    return root


def lp_pool2d(
    x: NDArray[Float], norm_type: float, kernel_size: IntPair, stride: IntPair | None = None, ceil_mode: bool = False,
    *, padding: Padding = 0, dilation: IntPair = 1, layout: str = "NCHW",
) -> NDArray[Float]:
    """2-D power-average pooling, as ``torch.nn.functional.lp_pool2d``.

    ``y[n, c, oh, ow] = (kh * kw * mean(x[n, c, window] ** p)) ** (1 / p)``: the ``p``-norm of each
    window where the window lies inside the input. As in PyTorch, the mean of a ``ceil_mode``
    window hanging past the input is over its taps inside it (so its sum is scaled up to the full
    window), and negative inputs with a fractional ``p`` (or a negative sum) give NaN. ``padding``
    and ``dilation`` are ONNX's LpPool's (PyTorch has neither): zeros around the input, spaced taps.

    Parameters
    ----------
    x : ndarray of float32 or float64, shape (N, C, H, W) or (C, H, W)
        Input, any memory layout; not modified.
    norm_type : float
        The power ``p``, positive and finite (1: sum pooling, 2: the Euclidean norm of each window).
    kernel_size : int or (int, int)
        Window size ``(kh, kw)``, positive.
    stride : int or (int, int), optional
        Window step, positive; defaults to ``kernel_size``.
    ceil_mode : bool, default False
        Round the output size up, keeping a last partial window.
    padding : int, (int, int), ((int, int), (int, int)), 'valid', 'same' or 'same_lower', default 0
        Keyword only: zero padding, as :func:`avg_pool2d` takes it.
    dilation : int or (int, int), default 1
        Keyword only: spacing between a window's taps.
    layout : {'NCHW', 'NHWC'}, default 'NCHW'
        Keyword only: channels first (PyTorch's) or channels last, ``(N, H, W, C)`` or
        ``(H, W, C)``, for ``x`` and ``y`` (on the native channels-last average pooling).

    Returns
    -------
    y : ndarray, shape (N, C, out_h, out_w) or (C, out_h, out_w); (N, out_h, out_w, C) or (out_h, out_w, C) for NHWC
        Same dtype as ``x``; ``out_h = (H + top + bottom - dh(kh - 1) - 1) // sh + 1`` (see
        ``ceil_mode``), likewise ``out_w``.

    Raises
    ------
    TypeError
        For a dtype other than float32/float64, a non-real ``norm_type`` or non-int geometry.
    ValueError
        For a wrong ndim, a ``norm_type`` that is not positive and finite, non-positive sizes or an
        empty output.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import lp_pool2d
    >>> x = np.array([[[3., 4.], [0., 0.]]])
    >>> lp_pool2d(x, 2, (1, 2))
    array([[[5.],
            [0.]]])
    >>> lp_pool2d(x, 1, 2)
    array([[[7.]]])
    """
    x = _images("lp_pool2d", "x", x, layout)
    p, kernel, stride_, ceil_mode, spec, dilation_ = _lp_args(norm_type, kernel_size, stride, ceil_mode, 2, padding,
                                                              dilation)
    return _root(_powered_average(x, p, kernel, stride_, ceil_mode, spec, dilation_, layout), p,
                 kernel[0] * kernel[1])


def lp_pool2d_backward(
    grad_out: NDArray[Float], x: NDArray[Float], norm_type: float, kernel_size: IntPair,
    stride: IntPair | None = None, ceil_mode: bool = False, *, padding: Padding = 0, dilation: IntPair = 1,
    layout: str = "NCHW",
) -> NDArray[Float]:
    """Gradient of :func:`lp_pool2d` with respect to its input.

    With ``a`` the mean of ``x ** p`` over a window and ``y`` its output,
    ``grad_x = avg_pool2d_backward(grad_out * y / a) * x ** (p - 1)``; a window whose mean is 0
    (all zeros) passes no gradient (where PyTorch's gives NaN for ``p > 1``).

    Parameters
    ----------
    grad_out : ndarray of float32 or float64, shape (N, C, out_h, out_w) or (C, out_h, out_w)
        Gradient of the loss with respect to the output; the forward output's shape.
    x : ndarray, shape (N, C, H, W) or (C, H, W)
        The forward input, same dtype as ``grad_out``.
    norm_type, kernel_size, stride, ceil_mode, padding, dilation, layout
        As in :func:`lp_pool2d` (with ``'NHWC'``, ``grad_out`` and ``x`` are channels last).

    Returns
    -------
    grad_x : ndarray, shape of ``x``
        Same dtype as ``grad_out``.

    Raises
    ------
    TypeError
        For dtypes other than float32/float64 or differing, or invalid arguments (as :func:`lp_pool2d`).
    ValueError
        For invalid arguments (as :func:`lp_pool2d`) or a ``grad_out`` of the wrong shape.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import lp_pool2d_backward
    >>> lp_pool2d_backward(np.ones((1, 1, 1)), np.array([[[3., 4.]]]), 2, (1, 2))
    array([[[0.6, 0.8]]])
    """
    grad_out = _images("lp_pool2d_backward", "grad_out", grad_out, layout, out=True)
    x = _images("lp_pool2d_backward", "x", x, layout)
    if x.dtype != grad_out.dtype:
        raise TypeError(f"x must have the dtype of grad_out ({grad_out.dtype}), got {x.dtype}")
    p, kernel, stride_, ceil_mode, spec, dilation_ = _lp_args(norm_type, kernel_size, stride, ceil_mode, 2, padding,
                                                              dilation)
    average = _powered_average(x, p, kernel, stride_, ceil_mode, spec, dilation_, layout)
    if grad_out.shape != average.shape:
        raise ValueError(
            f"grad_out must have the forward output shape {average.shape} for x of shape {x.shape} and these "
            f"pooling arguments, got {grad_out.shape}"
        )
    return _lp_gradient(grad_out, x, average, p, kernel[0] * kernel[1], lambda scale: avg_pool2d_backward(
        scale, x.shape, (kernel[0], kernel[1]), (stride_[0], stride_[1]), cast(Padding, spec), ceil_mode,
        dilation=(dilation_[0], dilation_[1]), layout=layout,
    ))


def _lp_gradient(grad_out: AnyArray, x: AnyArray, average: AnyArray, p: float, taps: int,
                 spread: Callable[[AnyArray], AnyArray]) -> AnyArray:
    """``spread(grad_out * y / a) * x ** (p - 1)``, with ``a`` each window's mean of ``x ** p``, ``y``
    its output and ``spread`` the average pool's backward; a window whose mean is 0 passes none."""
    y = _root(average, p, taps)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        scale = np.where(average != 0, grad_out * y / np.where(average != 0, average, 1), 0).astype(grad_out.dtype)
        grad_x: AnyArray = (spread(scale) * np.power(x, x.dtype.type(p - 1))).astype(grad_out.dtype, copy=False)
    return grad_x


_LAYOUT = "(N, C, L) or (C, L)"
_LAYOUT_NWC = "(N, L, C) or (L, C) with layout='NWC'"


def _plane(array: AnyArray, channels_last: bool) -> AnyArray:
    """A 1-D array viewed as 2-D with one row: (..., C, L) -> (..., C, 1, L), or (..., L, C) -> (..., 1, L, C)."""
    return array[..., None, :, :] if channels_last else array[..., None, :]


def _line(array: AnyArray, channels_last: bool) -> AnyArray:
    """The inverse view of :func:`_plane`."""
    return array[..., 0, :, :] if channels_last else array[..., 0, :]


def _plane_padding(spec: PaddingWord | _Sides) -> Padding:
    """A 1-D op's padding for its (1, L) plane: a word pads the trivial first axis by nothing anyway."""
    return spec if isinstance(spec, str) else ((0, 0), spec[0])


def lp_pool1d(
    x: NDArray[Float], norm_type: float, kernel_size: IntSingle, stride: IntSingle | None = None,
    ceil_mode: bool = False, *, padding: Padding1d = 0, dilation: IntSingle = 1, layout: str = "NCW",
) -> NDArray[Float]:
    """1-D power-average pooling, as ``torch.nn.functional.lp_pool1d`` (:func:`lp_pool2d` on views).

    ``y[n, c, o] = (k * mean(x[n, c, o*s : o*s + k] ** p)) ** (1 / p)``, with :func:`lp_pool2d`'s
    rules for ``ceil_mode`` windows and NaN.

    Parameters
    ----------
    x : ndarray of float32 or float64, shape (N, C, L) or (C, L)
        Input, any memory layout; not modified.
    norm_type : float
        The power ``p``, positive and finite.
    kernel_size : int or (int,)
    stride : int or (int,), optional
        Defaults to ``kernel_size``.
    ceil_mode : bool, default False
    padding : int, (int,), ((int, int),), 'valid', 'same' or 'same_lower', default 0
        Keyword only: zero padding, as :func:`avg_pool1d` takes it (ONNX's LpPool pads).
    dilation : int or (int,), default 1
        Keyword only: spacing between a window's taps.
    layout : {'NCW', 'NWC'}, default 'NCW'
        Keyword only: channels first (PyTorch's) or channels last, ``(N, L, C)`` or ``(L, C)``,
        for ``x`` and ``y``.

    Returns
    -------
    y : ndarray, shape (N, C, L_out) or (C, L_out); (N, L_out, C) or (L_out, C) for NWC
        ``L_out = (L + left + right - d(k - 1) - 1) // s + 1`` (see ``ceil_mode``).

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import lp_pool1d
    >>> lp_pool1d(np.array([[3., 4., 6., 8.]]), 2, 2)
    array([[ 5., 10.]])
    """
    last = as_data_layout(layout, 1)
    x = as_layout_array("lp_pool1d", "x", x, (2, 3), _LAYOUT_NWC if last else _LAYOUT)
    p, (kernel,), (stride_,), ceil_mode, spec, (dilation_,) = _lp_args(norm_type, kernel_size, stride, ceil_mode, 1,
                                                                       padding, dilation)
    y = lp_pool2d(_plane(x, last), p, (1, kernel), (1, stride_), ceil_mode, padding=_plane_padding(spec),
                  dilation=(1, dilation_), layout="NHWC" if last else "NCHW")
    return _line(y, last)


def lp_pool1d_backward(
    grad_out: NDArray[Float], x: NDArray[Float], norm_type: float, kernel_size: IntSingle,
    stride: IntSingle | None = None, ceil_mode: bool = False, *, padding: Padding1d = 0, dilation: IntSingle = 1,
    layout: str = "NCW",
) -> NDArray[Float]:
    """Gradient of :func:`lp_pool1d` with respect to its input (see :func:`lp_pool2d_backward`).

    Parameters
    ----------
    grad_out : ndarray of float32 or float64, shape (N, C, L_out) or (C, L_out)
        The forward output's shape.
    x : ndarray, shape (N, C, L) or (C, L)
        The forward input, same dtype as ``grad_out``.
    norm_type, kernel_size, stride, ceil_mode, padding, dilation, layout
        As in :func:`lp_pool1d` (with ``'NWC'``, ``grad_out`` and ``x`` are channels last).

    Returns
    -------
    grad_x : ndarray, shape of ``x``

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import lp_pool1d_backward
    >>> lp_pool1d_backward(np.ones((1, 1)), np.array([[3., 4.]]), 2, 2)
    array([[0.6, 0.8]])
    """
    last = as_data_layout(layout, 1)
    grad_out = as_layout_array("lp_pool1d_backward", "grad_out", grad_out, (2, 3),
                               "(N, L_out, C) or (L_out, C) with layout='NWC'" if last else "(N, C, L_out) or (C, L_out)")
    x = as_layout_array("lp_pool1d_backward", "x", x, (2, 3), _LAYOUT_NWC if last else _LAYOUT)
    if grad_out.ndim != x.ndim:
        raise ValueError(f"grad_out must have the ndim of x ({x.ndim}), got shape {grad_out.shape}")
    p, (kernel,), (stride_,), ceil_mode, spec, (dilation_,) = _lp_args(norm_type, kernel_size, stride, ceil_mode, 1,
                                                                       padding, dilation)
    grad_x = lp_pool2d_backward(_plane(grad_out, last), _plane(x, last), p, (1, kernel), (1, stride_), ceil_mode,
                                padding=_plane_padding(spec), dilation=(1, dilation_), layout="NHWC" if last else "NCHW")
    return _line(grad_x, last)


def _powered_average3d(x: AnyArray, p: float, kernel: tuple[int, int, int], stride: tuple[int, int, int],
                       ceil_mode: bool, padding: PaddingWord | _Sides, dilation: tuple[int, int, int],
                       layout: str) -> AnyArray:
    """``avg_pool3d(x ** p)`` with PyTorch's divisor, as :func:`_powered_average` in 2-D."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        powered = np.power(x, x.dtype.type(p))
    return avg_pool3d(powered, kernel, stride, cast(Padding3d, padding), ceil_mode, dilation=dilation, layout=layout)


def _lp3d_args(
    norm_type: object, kernel_size: object, stride: object, ceil_mode: object, padding: object, dilation: object,
) -> tuple[float, tuple[int, int, int], tuple[int, int, int], bool, PaddingWord | _Sides, tuple[int, int, int]]:
    p = _norm_type(norm_type)
    ceil_flag = as_bool("ceil_mode", ceil_mode)
    kernel, stride_, spec, dilation_ = _window_args(kernel_size, stride, padding, dilation, ceil_flag)
    return p, kernel, stride_, ceil_flag, spec, dilation_


def lp_pool3d(
    x: NDArray[Float], norm_type: float, kernel_size: IntTriple, stride: IntTriple | None = None,
    ceil_mode: bool = False, *, padding: Padding3d = 0, dilation: IntTriple = 1, layout: str = "NCDHW",
) -> NDArray[Float]:
    """3-D power-average pooling, as ``torch.nn.functional.lp_pool3d``.

    ``y[n, c, od, oh, ow] = (kd * kh * kw * mean(x[n, c, window] ** p)) ** (1 / p)`` on the 3-D
    average-pooling kernel, with :func:`lp_pool2d`'s rules for ``ceil_mode`` windows and NaN.
    ``padding`` and ``dilation`` are ONNX's LpPool's (PyTorch has neither).

    Parameters
    ----------
    x : ndarray of float32 or float64, shape (N, C, D, H, W) or (C, D, H, W)
        Input, any memory layout; not modified. ``(N, D, H, W, C)`` or ``(D, H, W, C)`` with
        ``layout='NDHWC'``.
    norm_type : float
        The power ``p``, positive and finite.
    kernel_size : int or (int, int, int)
        Window size ``(kd, kh, kw)``, positive.
    stride : int or (int, int, int), optional
        Window step, positive; defaults to ``kernel_size``.
    ceil_mode : bool, default False
        Round the output size up, keeping a last partial window.
    padding : int, (int, int, int), ((int, int), (int, int), (int, int)), 'valid', 'same' or 'same_lower', default 0
        Keyword only: zero padding, as :func:`avg_pool3d` takes it (ONNX's LpPool pads): each side
        at most ``dilation * (kernel_size - 1)``.
    dilation : int or (int, int, int), default 1
        Keyword only: spacing between a window's taps.
    layout : {'NCDHW', 'NDHWC'}, default 'NCDHW'
        Keyword only: the memory layout of ``x`` and the output, channels first (PyTorch's) or
        channels last (natively, no transposes).

    Returns
    -------
    y : ndarray, shape (N, C, D_out, H_out, W_out) or (C, D_out, H_out, W_out); channels last for NDHWC
        Same dtype as ``x``.

    Raises
    ------
    TypeError
        For a dtype other than float32/float64, or a non-real ``norm_type``, non-int geometry or a
        non-bool flag.
    ValueError
        For a non-positive ``norm_type``, or invalid geometry, padding or ``layout`` (as
        :func:`avg_pool3d`).

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import lp_pool3d
    >>> lp_pool3d(np.array([[[[3., 4.]]]]), 2, (1, 1, 2))
    array([[[[5.]]]])
    """
    last = as_data_layout(layout, 3)
    volumes, unbatched = _layout_volumes("lp_pool3d", "x", x, last)
    p, kernel, stride_, ceil_mode, spec, dilation_ = _lp3d_args(norm_type, kernel_size, stride, ceil_mode,
                                                                padding, dilation)
    y = _root(_powered_average3d(volumes, p, kernel, stride_, ceil_mode, spec, dilation_, layout), p,
              math.prod(kernel))
    return y[0] if unbatched else y


def lp_pool3d_backward(
    grad_out: NDArray[Float], x: NDArray[Float], norm_type: float, kernel_size: IntTriple,
    stride: IntTriple | None = None, ceil_mode: bool = False, *, padding: Padding3d = 0, dilation: IntTriple = 1,
    layout: str = "NCDHW",
) -> NDArray[Float]:
    """Gradient of :func:`lp_pool3d` with respect to its input (see :func:`lp_pool2d_backward`).

    Parameters
    ----------
    grad_out : ndarray of float32 or float64, shape (N, C, D_out, H_out, W_out) or (C, D_out, H_out, W_out)
        The forward output's shape.
    x : ndarray, shape (N, C, D, H, W) or (C, D, H, W)
        The forward input, same dtype as ``grad_out``.
    norm_type, kernel_size, stride, ceil_mode, padding, dilation, layout
        As in :func:`lp_pool3d` (with ``'NDHWC'``, ``grad_out`` and ``x`` are channels last).

    Returns
    -------
    grad_x : ndarray, shape of ``x``

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import lp_pool3d_backward
    >>> lp_pool3d_backward(np.ones((1, 1, 1, 1)), np.array([[[[3., 4.]]]]), 2, (1, 1, 2))
    array([[[[0.6, 0.8]]]])
    """
    last = as_data_layout(layout, 3)
    grad5, unbatched = _layout_volumes("lp_pool3d_backward", "grad_out", grad_out, last, out=True)
    x5, x_unbatched = _layout_volumes("lp_pool3d_backward", "x", x, last)
    if unbatched != x_unbatched:
        raise ValueError(f"grad_out must have the ndim of x ({np.ndim(x)}), got shape {np.shape(grad_out)}")
    if x5.dtype != grad5.dtype:
        raise TypeError(f"x must have the dtype of grad_out ({grad5.dtype}), got {x5.dtype}")
    p, kernel, stride_, ceil_mode, spec, dilation_ = _lp3d_args(norm_type, kernel_size, stride, ceil_mode,
                                                                padding, dilation)
    average = _powered_average3d(x5, p, kernel, stride_, ceil_mode, spec, dilation_, layout)
    if grad5.shape != average.shape:
        raise ValueError(
            f"grad_out must have the forward output shape {average.shape[1:] if unbatched else average.shape} for x "
            f"of shape {np.shape(x)} and these pooling arguments, got {np.shape(grad_out)}"
        )
    grad_x = _lp_gradient(grad5, x5, average, p, math.prod(kernel), lambda scale: avg_pool3d_backward(
        scale, x5.shape, kernel, stride_, cast(Padding3d, spec), ceil_mode, dilation=dilation_, layout=layout))
    return grad_x[0] if unbatched else grad_x
