"""Max unpooling, ``torch.nn.functional.max_unpool1d`` / ``2d`` / ``3d`` semantics, and its backward.

Each input value is written at its index in a zero output plane: one vectorised scatter
(``numpy.put_along_axis`` over the flattened planes) after every index has been checked, on a
private copy of the indices, so that the values checked are the values written. The backward is
the matching gather.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from .._checks import as_data_layout, as_int, as_layout_array, channels_first_shape, plain_array
from .._shapes import conv_transpose_output_size
from .._typing import AnyArray, Float, IntPair, IntSingle, IntTriple, Shape
from .pooling import _bounded

__all__ = [
    "max_unpool1d", "max_unpool1d_backward", "max_unpool2d", "max_unpool2d_backward", "max_unpool3d",
    "max_unpool3d_backward",
]

_LAYOUTS = {1: "(N, C, L) or (C, L)", 2: "(N, C, H, W) or (C, H, W)", 3: "(N, C, D, H, W) or (C, D, H, W)"}
_LAYOUTS_LAST = {
    1: "(N, L, C) or (L, C) with layout='NWC'", 2: "(N, H, W, C) or (H, W, C) with layout='NHWC'",
    3: "(N, D, H, W, C) or (D, H, W, C) with layout='NDHWC'",
}
_PLANE = {1: "L_out", 2: "H_out*W_out", 3: "D_out*H_out*W_out"}


def _as_indices(op: str, indices: object, shape: Shape) -> NDArray[np.int64]:
    """A private C-contiguous int64 copy of ``indices``, which must have ``shape``."""
    if not isinstance(indices, np.ndarray):
        raise TypeError(f"{op}: indices must be a numpy.ndarray of int64, got {type(indices).__name__}")
    indices = plain_array(indices)
    if indices.dtype != np.int64:
        raise TypeError(f"{op}: indices must have dtype int64, got dtype {indices.dtype}; cast it explicitly first")
    if indices.shape != shape:
        raise ValueError(f"{op}: indices must have the shape {shape}, got {indices.shape}")
    return np.array(indices, order="C", copy=True)


def _check_range(op: str, indices: NDArray[np.int64], plane_size: int, dims: int, out_shape: Shape) -> None:
    if indices.size == 0:
        return
    lowest, highest = int(indices.min()), int(indices.max())
    if lowest < 0 or highest >= plane_size:
        raise ValueError(
            f"{op}: indices must lie in [0, {_PLANE[dims]}) = [0, {plane_size}) for an output of spatial shape "
            f"{out_shape}, got {lowest if lowest < 0 else highest}"
        )


def _output_sizes(
    output_size: Sequence[int] | None, default: tuple[int, ...], stride: tuple[int, ...], leading: Shape,
) -> tuple[int, ...]:
    """PyTorch's rule: ``output_size`` (its last ``dims`` entries) within ``stride`` of the default size."""
    dims = len(default)
    if output_size is None:
        return default
    if isinstance(output_size, (str, bytes)) or not isinstance(output_size, (Sequence, np.ndarray)):
        raise TypeError(f"output_size must be a tuple of ints, got {output_size!r} of type {type(output_size).__name__}")
    sizes = tuple(as_int(f"output_size[{i}]", v, 0) for i, v in enumerate(output_size))
    whole = (*leading, *sizes[len(leading):])
    if len(sizes) != dims and (len(sizes) != len(leading) + dims or sizes != whole):
        raise ValueError(
            f"output_size must be the output's spatial size ({dims} entries) or its whole shape (with x's leading "
            f"axes {leading}), got {tuple(output_size)!r}"
        )
    sizes = sizes[-dims:]
    for size, base, step in zip(sizes, default, stride):
        if not base - step < size < base + step:
            raise ValueError(
                f"output_size {sizes} must be within stride {stride} of the default output size {default} "
                f"(each strictly between {tuple(b - s for b, s in zip(default, stride))} and "
                f"{tuple(b + s for b, s in zip(default, stride))})"
            )
    return sizes


def _max_unpool(
    op: str, x: object, indices: object, kernel_size: object, stride: object, padding: object,
    output_size: Sequence[int] | None, dims: int, layout: object = None,
) -> AnyArray:
    channels_last = layout is not None and as_data_layout(layout, dims)
    x = as_layout_array(op, "x", x, (dims + 1, dims + 2), (_LAYOUTS_LAST if channels_last else _LAYOUTS)[dims])
    flat_indices = _as_indices(op, indices, x.shape)
    kernel = _bounded("kernel_size", kernel_size, 1, dims)
    stride_ = kernel if stride is None else _bounded("stride", stride, 1, dims)
    padding_ = _bounded("padding", padding, 0, dims)
    # Channels last: the shapes as channels first (a whole output_size too), the data as it is.
    shape = channels_first_shape(x.shape, dims) if channels_last else x.shape
    if channels_last and isinstance(output_size, (tuple, list)) and len(output_size) == x.ndim:
        output_size = channels_first_shape(output_size, dims)
    spatial = shape[-dims:]
    default = tuple(
        conv_transpose_output_size(size, k, s, p, 0, 1) for size, k, s, p in zip(spatial, kernel, stride_, padding_)
    )
    out = _output_sizes(output_size, default, stride_, shape[:-dims])
    if min(out) < 1:
        raise ValueError(
            f"{op}: the output would be {'x'.join(map(str, out))} for an input of spatial shape {spatial} with "
            f"kernel_size={kernel}, stride={stride_}, padding={padding_}"
        )
    plane_size = math.prod(out)
    _check_range(op, flat_indices, plane_size, dims, out)
    if channels_last:
        batch, channels = x.shape[:-dims - 1], x.shape[-1]
        images = math.prod(batch)
        y = np.zeros((images, plane_size, channels), dtype=x.dtype)
        if y.size and x.size:
            np.put_along_axis(y, flat_indices.reshape(images, -1, channels), x.reshape(images, -1, channels), axis=1)
        return y.reshape(*batch, *out, channels)
    leading = x.shape[:-dims]
    planes = math.prod(leading)
    y = np.zeros((planes, plane_size), dtype=x.dtype)
    if y.size and x.size:
        np.put_along_axis(y, flat_indices.reshape(planes, -1), x.reshape(planes, -1), axis=1)
    return y.reshape(*leading, *out)


def _max_unpool_backward(op: str, grad_out: object, indices: object, dims: int, layout: object = None) -> AnyArray:
    channels_last = layout is not None and as_data_layout(layout, dims)
    grad_out = as_layout_array(op, "grad_out", grad_out, (dims + 1, dims + 2),
                               (_LAYOUTS_LAST if channels_last else _LAYOUTS)[dims])
    if not isinstance(indices, np.ndarray):
        raise TypeError(f"{op}: indices must be a numpy.ndarray of int64, got {type(indices).__name__}")
    if channels_last:
        return _gather_channels_last(op, grad_out, indices, dims)
    if indices.ndim != grad_out.ndim or indices.shape[:-dims] != grad_out.shape[:-dims]:
        raise ValueError(
            f"{op}: indices must have grad_out's leading axes {grad_out.shape[:-dims]} and {grad_out.ndim} "
            f"dimensions, got shape {indices.shape}"
        )
    flat_indices = _as_indices(op, indices, indices.shape)
    out = grad_out.shape[-dims:]
    plane_size = math.prod(out)
    _check_range(op, flat_indices, plane_size, dims, out)
    leading = grad_out.shape[:-dims]
    planes = math.prod(leading)
    if flat_indices.size == 0:
        return np.zeros(flat_indices.shape, dtype=grad_out.dtype)
    gathered = np.take_along_axis(grad_out.reshape(planes, plane_size), flat_indices.reshape(planes, -1), axis=1)
    return np.ascontiguousarray(gathered.reshape(flat_indices.shape))


def _gather_channels_last(op: str, grad_out: AnyArray, indices: np.ndarray, dims: int) -> AnyArray:
    """The backward of a channels-last unpooling: grad_out (N, *out, C) gathered at indices (N, *in, C)."""
    batch, channels = grad_out.shape[:-dims - 1], grad_out.shape[-1]
    if indices.ndim != grad_out.ndim or indices.shape[:-dims - 1] != batch or indices.shape[-1] != channels:
        raise ValueError(
            f"{op}: indices must have grad_out's batch and channel axes {(*batch, channels)} (first and last, "
            f"channels last) and {grad_out.ndim} dimensions, got shape {indices.shape}"
        )
    flat_indices = _as_indices(op, indices, indices.shape)
    out = grad_out.shape[-dims - 1:-1]
    plane_size = math.prod(out)
    _check_range(op, flat_indices, plane_size, dims, out)
    if flat_indices.size == 0:
        return np.zeros(flat_indices.shape, dtype=grad_out.dtype)
    images = math.prod(batch)
    gathered = np.take_along_axis(grad_out.reshape(images, plane_size, channels),
                                  flat_indices.reshape(images, -1, channels), axis=1)
    return np.ascontiguousarray(gathered.reshape(flat_indices.shape))


def max_unpool2d(
    x: NDArray[Float], indices: NDArray[np.int64], kernel_size: IntPair, stride: IntPair | None = None,
    padding: IntPair = 0, output_size: Sequence[int] | None = None, *, layout: str = "NCHW",
) -> NDArray[Float]:
    """Partial inverse of :func:`max_pool2d`, as ``torch.nn.functional.max_unpool2d``.

    Every ``x[n, c, i, j]`` is written at the flat position ``indices[n, c, i, j]`` of a zero
    ``H_out x W_out`` plane; every other output is zero. Where two inputs of one plane name the
    same position, one of them is written (the later in the plane's row-major order, as PyTorch's
    CPU kernel writes them); :func:`max_unpool2d_backward` gives each input that position's gradient.

    Parameters
    ----------
    x : ndarray of float32 or float64, shape (N, C, H, W) or (C, H, W)
    indices : ndarray of int64, shape of ``x``
        Flat ``h * W_out + w`` positions, as :func:`max_pool2d` returns them; each must lie in
        ``[0, H_out * W_out)`` (refused otherwise, before anything is written).
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int), default 0
    output_size : tuple of int, optional
        ``(H_out, W_out)`` (or the whole output shape), each strictly within ``stride`` of the
        default ``(H - 1) * stride - 2 * padding + kernel_size``; it resolves the input size that
        a strided pooling rounded away.
    layout : {'NCHW', 'NHWC'}, default 'NCHW'
        Keyword only: with ``'NHWC'``, ``x``, ``indices`` and ``y`` are channels last,
        ``(N, H, W, C)`` or ``(H, W, C)`` (as :func:`max_pool2d` gives them with that layout), and a
        whole ``output_size`` is ``(N, H_out, W_out, C)``.

    Returns
    -------
    y : ndarray, shape (N, C, H_out, W_out) or (C, H_out, W_out); (N, H_out, W_out, C) or (H_out, W_out, C) for NHWC

    Examples
    --------
    >>> import numpy as np, convx
    >>> x = np.array([[[1., 5., 2., 0.], [4., 3., 6., 7.]]])
    >>> pooled, indices = convx.max_pool2d(x, 2, return_indices=True)
    >>> convx.max_unpool2d(pooled, indices, 2)
    array([[[0., 5., 0., 0.],
            [0., 0., 0., 7.]]])
    """
    return _max_unpool("max_unpool2d", x, indices, kernel_size, stride, padding, output_size, 2, layout)


def max_unpool2d_backward(
    grad_out: NDArray[Float], indices: NDArray[np.int64], *, layout: str = "NCHW"
) -> NDArray[Float]:
    """Gradient of :func:`max_unpool2d` with respect to ``x``: ``grad_out`` gathered at ``indices``.

    Parameters
    ----------
    grad_out : ndarray of float32 or float64, shape (N, C, H_out, W_out) or (C, H_out, W_out)
    indices : ndarray of int64, shape (N, C, H, W) or (C, H, W)
        As given to :func:`max_unpool2d`; each in ``[0, H_out * W_out)``.
    layout : {'NCHW', 'NHWC'}, default 'NCHW'
        Keyword only: with ``'NHWC'``, every array is channels last.

    Returns
    -------
    grad_x : ndarray, shape of ``indices``

    Examples
    --------
    >>> import numpy as np, convx
    >>> grad_out = np.arange(8.0).reshape(1, 2, 4)
    >>> convx.max_unpool2d_backward(grad_out, np.array([[[1, 7]]]))
    array([[[1., 7.]]])
    """
    return _max_unpool_backward("max_unpool2d_backward", grad_out, indices, 2, layout)


def max_unpool1d(
    x: NDArray[Float], indices: NDArray[np.int64], kernel_size: IntSingle, stride: IntSingle | None = None,
    padding: IntSingle = 0, output_size: Sequence[int] | None = None, *, layout: str = "NCW",
) -> NDArray[Float]:
    """Partial inverse of :func:`max_pool1d`, as ``torch.nn.functional.max_unpool1d``.

    As :func:`max_unpool2d` along one axis: ``x[n, c, i]`` is written at position
    ``indices[n, c, i]`` of a zero output of length ``L_out = (L - 1) * stride - 2 * padding +
    kernel_size`` (or ``output_size``).

    Parameters
    ----------
    x : ndarray of float32 or float64, shape (N, C, L) or (C, L)
    indices : ndarray of int64, shape of ``x``
        Each in ``[0, L_out)``.
    kernel_size : int or (int,)
    stride : int or (int,), optional
        Defaults to ``kernel_size``.
    padding : int or (int,), default 0
    output_size : tuple of int, optional
        ``(L_out,)`` (or the whole output shape), strictly within ``stride`` of the default.
    layout : {'NCW', 'NWC'}, default 'NCW'
        Keyword only: with ``'NWC'``, ``x``, ``indices`` and ``y`` are channels last, ``(N, L, C)``
        or ``(L, C)``.

    Returns
    -------
    y : ndarray, shape (N, C, L_out) or (C, L_out)

    Examples
    --------
    >>> import numpy as np, convx
    >>> pooled, indices = convx.max_pool1d(np.array([[1., 3., 2., 5., 4.]]), 2, return_indices=True)
    >>> convx.max_unpool1d(pooled, indices, 2, output_size=(5,))
    array([[0., 3., 0., 5., 0.]])
    """
    return _max_unpool("max_unpool1d", x, indices, kernel_size, stride, padding, output_size, 1, layout)


def max_unpool1d_backward(
    grad_out: NDArray[Float], indices: NDArray[np.int64], *, layout: str = "NCW"
) -> NDArray[Float]:
    """Gradient of :func:`max_unpool1d` with respect to ``x``: ``grad_out`` gathered at ``indices``.

    Parameters
    ----------
    grad_out : ndarray of float32 or float64, shape (N, C, L_out) or (C, L_out)
    indices : ndarray of int64, shape (N, C, L) or (C, L)
        Each in ``[0, L_out)``.
    layout : {'NCW', 'NWC'}, default 'NCW'
        Keyword only: with ``'NWC'``, every array is channels last.

    Returns
    -------
    grad_x : ndarray, shape of ``indices``

    Examples
    --------
    >>> import numpy as np, convx
    >>> convx.max_unpool1d_backward(np.array([[0., 1., 2., 3., 4.]]), np.array([[1, 3]]))
    array([[1., 3.]])
    """
    return _max_unpool_backward("max_unpool1d_backward", grad_out, indices, 1, layout)


def max_unpool3d(
    x: NDArray[Float], indices: NDArray[np.int64], kernel_size: IntTriple, stride: IntTriple | None = None,
    padding: IntTriple = 0, output_size: Sequence[int] | None = None, *, layout: str = "NCDHW",
) -> NDArray[Float]:
    """Partial inverse of :func:`max_pool3d`, as ``torch.nn.functional.max_unpool3d``.

    As :func:`max_unpool2d` over volumes: ``x[n, c, i, j, k]`` is written at the flat position
    ``indices[n, c, i, j, k]`` of a zero ``D_out x H_out x W_out`` volume, each output size
    ``(size - 1) * stride - 2 * padding + kernel_size`` (or ``output_size``).

    Parameters
    ----------
    x : ndarray of float32 or float64, shape (N, C, D, H, W) or (C, D, H, W)
    indices : ndarray of int64, shape of ``x``
        Flat ``d * H_out * W_out + h * W_out + w`` positions, as :func:`max_pool3d` returns them;
        each must lie in ``[0, D_out * H_out * W_out)`` (refused otherwise, before anything is
        written).
    kernel_size : int or (int, int, int)
    stride : int or (int, int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int, int), default 0
    output_size : tuple of int, optional
        ``(D_out, H_out, W_out)`` (or the whole output shape), each strictly within ``stride`` of
        the default.
    layout : {'NCDHW', 'NDHWC'}, default 'NCDHW'
        Keyword only: with ``'NDHWC'``, ``x``, ``indices`` and ``y`` are channels last,
        ``(N, D, H, W, C)`` or ``(D, H, W, C)``, and a whole ``output_size`` is
        ``(N, D_out, H_out, W_out, C)``.

    Returns
    -------
    y : ndarray, shape (N, C, D_out, H_out, W_out) or (C, D_out, H_out, W_out); channels last for NDHWC

    Examples
    --------
    >>> import numpy as np, convx
    >>> x = np.arange(8.0).reshape(1, 1, 2, 2, 2)
    >>> pooled, indices = convx.max_pool3d(x, 2, return_indices=True)
    >>> pooled.ravel(), indices.ravel()
    (array([7.]), array([7]))
    >>> convx.max_unpool3d(pooled, indices, 2).ravel()
    array([0., 0., 0., 0., 0., 0., 0., 7.])
    """
    return _max_unpool("max_unpool3d", x, indices, kernel_size, stride, padding, output_size, 3, layout)


def max_unpool3d_backward(
    grad_out: NDArray[Float], indices: NDArray[np.int64], *, layout: str = "NCDHW"
) -> NDArray[Float]:
    """Gradient of :func:`max_unpool3d` with respect to ``x``: ``grad_out`` gathered at ``indices``.

    Parameters
    ----------
    grad_out : ndarray of float32 or float64, shape (N, C, D_out, H_out, W_out) or (C, D_out, H_out, W_out)
    indices : ndarray of int64, shape (N, C, D, H, W) or (C, D, H, W)
        As given to :func:`max_unpool3d`; each in ``[0, D_out * H_out * W_out)``.
    layout : {'NCDHW', 'NDHWC'}, default 'NCDHW'
        Keyword only: with ``'NDHWC'``, every array is channels last.

    Returns
    -------
    grad_x : ndarray, shape of ``indices``

    Examples
    --------
    >>> import numpy as np, convx
    >>> grad_out = np.arange(8.0).reshape(1, 2, 2, 2)
    >>> convx.max_unpool3d_backward(grad_out, np.array([[[[1, 7]]]]))
    array([[[[1., 7.]]]])
    """
    return _max_unpool_backward("max_unpool3d_backward", grad_out, indices, 3, layout)
