"""3-D pooling over the (D, H, W) volumes of (N, C, D, H, W) arrays: ``torch.nn.functional``
semantics of the same names.

Every function validates its arguments (as PyTorch: ``padding`` at most half the kernel on each
axis), computes the output size with ``convx._shapes`` (through the 2-D ops' helpers, which refuse
empty outputs and windows wholly in the padding), allocates C-contiguous outputs and calls one
kernel of ``convx._core`` per bounded sub-batch, and per band of output depths of a huge volume
(so that Ctrl-C is seen between calls, as the 2-D ops band rows). Inputs are never modified; any memory layout is
accepted. Indices of maxima are flat ``d * H * W + h * W + w`` positions in each volume.
"""

from __future__ import annotations

from typing import Literal, overload

import numpy as np
from numpy.typing import NDArray

from .. import _core
from .._batching import sub_batches
from .._checks import as_bool, as_int, as_layout_array, as_triple, contiguous
from .._threads import kernel_threads
from .._typing import AdaptiveSize3d, AnyArray, Float, IntTriple, Shape
from .pooling import (
    _MAX_PARAM, AVG_TAP_WORK, MAX_TAP_WORK, _allocate, _as_indices, _band_edges, _input_shape, _pool_output_shape,
    _row_bands, _scatter_maxima, _unbatch, _work,
)

__all__ = [
    "adaptive_avg_pool3d",
    "adaptive_avg_pool3d_backward",
    "adaptive_max_pool3d",
    "avg_pool3d",
    "avg_pool3d_backward",
    "max_pool3d",
    "max_pool3d_backward",
]

_LAYOUT = "(N, C, D, H, W) or (C, D, H, W)"
_OUT_LAYOUT = "(N, C, D_out, H_out, W_out) or (C, D_out, H_out, W_out)"
_Triple = tuple[int, int, int]


def _volumes(op: str, name: str, array: object, layout: str = _LAYOUT) -> tuple[AnyArray, bool]:
    """``array`` as a float32/float64 NCDHW array and whether it came without the batch axis."""
    array = as_layout_array(op, name, array, (4, 5), layout)
    if array.ndim == 4:
        return array[np.newaxis], True
    return array, False


def _triple(name: str, value: object, minimum: int) -> _Triple:
    values = as_triple(name, value, minimum)
    if max(values) > _MAX_PARAM:
        raise ValueError(f"{name} must be at most {_MAX_PARAM}, got {value!r}")
    return values


def _shown(values: tuple[int, ...]) -> int | tuple[int, ...]:
    return values[0] if len(set(values)) == 1 else values


def _window_args(
    kernel_size: object, stride: object, padding: object, dilation: object
) -> tuple[_Triple, _Triple, _Triple, _Triple]:
    """kernel, stride, padding and dilation as triples; each padding at most half its kernel (PyTorch's rule)."""
    kernel = _triple("kernel_size", kernel_size, 1)
    stride_ = kernel if stride is None else _triple("stride", stride, 1)
    padding_ = _triple("padding", padding, 0)
    dilation_ = _triple("dilation", dilation, 1)
    if any(p > k // 2 for p, k in zip(padding_, kernel)):
        raise ValueError(
            f"padding must be at most half of kernel_size on each axis, kernel_size // 2 = "
            f"{_shown(tuple(k // 2 for k in kernel))} for kernel_size={_shown(kernel)}, got padding={_shown(padding_)}"
        )
    return kernel, stride_, padding_, dilation_


def _output_size(
    name: str, sizes: tuple[int, ...], kernel: _Triple, stride: _Triple, padding: _Triple, dilation: _Triple,
    ceil_mode: bool,
) -> _Triple:
    out, _ = _pool_output_shape(name, sizes, kernel, stride, tuple((p, p) for p in padding), dilation, ceil_mode)
    return out[0], out[1], out[2]


def _check_grad_out(grad_out: AnyArray, input_shape: Shape, out: tuple[int, ...]) -> None:
    if grad_out.shape[-3:] != tuple(out):
        raise ValueError(
            f"grad_out must have the forward output shape {(*grad_out.shape[:-3], *out)} for input_shape "
            f"{tuple(input_shape)} and these pooling arguments, got {grad_out.shape}"
        )


@overload
def max_pool3d(
    x: NDArray[Float], kernel_size: IntTriple, stride: IntTriple | None = ..., padding: IntTriple = ...,
    dilation: IntTriple = ..., ceil_mode: bool = ..., return_indices: Literal[False] = ...,
) -> NDArray[Float]: ...
@overload
def max_pool3d(
    x: NDArray[Float], kernel_size: IntTriple, stride: IntTriple | None = ..., padding: IntTriple = ...,
    dilation: IntTriple = ..., ceil_mode: bool = ..., *, return_indices: Literal[True],
) -> tuple[NDArray[Float], NDArray[np.int64]]: ...
def max_pool3d(
    x: NDArray[Float], kernel_size: IntTriple, stride: IntTriple | None = None, padding: IntTriple = 0,
    dilation: IntTriple = 1, ceil_mode: bool = False, return_indices: bool = False,
) -> NDArray[Float] | tuple[NDArray[Float], NDArray[np.int64]]:
    """3-D max pooling over the volumes of ``x``, as ``torch.nn.functional.max_pool3d``.

    ``y[n, c, od, oh, ow]`` is the maximum of ``x[n, c, od*sd - pd + a*dd, oh*sh - ph + b*dh,
    ow*sw - pw + c*dw]`` over the taps of the window inside the input (padding counts as -inf).
    NaN propagates: a window holding NaN gives NaN (and points at its last NaN); otherwise the
    first maximum in window order (depth, rows, columns) wins ties.

    Parameters
    ----------
    x : ndarray of float32 or float64, shape (N, C, D, H, W) or (C, D, H, W)
        Input, any memory layout; not modified.
    kernel_size : int or (int, int, int)
        Window size ``(kd, kh, kw)``, positive.
    stride : int or (int, int, int), optional
        Window step ``(sd, sh, sw)``, positive; defaults to ``kernel_size``.
    padding : int or (int, int, int), default 0
        Implicit -inf on both sides of each axis, at most half the kernel (``kernel_size // 2``).
    dilation : int or (int, int, int), default 1
        Spacing between the taps of a window, positive.
    ceil_mode : bool, default False
        Round the output size up, keeping a last partial window (unless it would start in the
        padding after the input).
    return_indices : bool, default False
        Also return the position of every maximum.

    Returns
    -------
    y : ndarray, shape (N, C, D_out, H_out, W_out) or (C, D_out, H_out, W_out)
        Same dtype as ``x``; ``D_out = (D + 2pd - dd(kd - 1) - 1) // sd + 1`` (see ``ceil_mode``),
        likewise ``H_out`` and ``W_out``.
    indices : ndarray of int64, same shape as ``y``
        Only with ``return_indices``: the flat position ``d * H * W + h * W + w`` of each maximum in
        its volume, as :func:`max_pool3d_backward` takes them.

    Raises
    ------
    TypeError
        For a dtype other than float32/float64, or non-int geometry or non-bool flags.
    ValueError
        For a wrong ndim, non-positive sizes, padding over half the kernel, an empty output or a
        window with every tap in the padding.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import max_pool3d
    >>> x = np.arange(27, dtype=np.float64).reshape(1, 3, 3, 3)
    >>> y, indices = max_pool3d(x, 2, stride=1, return_indices=True)
    >>> y[0]
    array([[[13., 14.],
            [16., 17.]],
    <BLANKLINE>
           [[22., 23.],
            [25., 26.]]])
    >>> indices[0, 0]
    array([[13, 14],
           [16, 17]])
    """
    x, unbatched = _volumes("max_pool3d", "x", x)
    ceil_mode = as_bool("ceil_mode", ceil_mode)
    kernel, stride_, padding_, dilation_ = _window_args(kernel_size, stride, padding, dilation)
    return_indices = as_bool("return_indices", return_indices)
    n, c, *sizes = x.shape
    out: _Triple = _output_size("x", tuple(sizes), kernel, stride_, padding_, dilation_, ceil_mode)

    cause = "kernel_size, stride, padding, dilation and ceil_mode"
    y = _allocate((n, c, *out), x.dtype, cause)
    indices = _allocate(y.shape if return_indices else (0, 0, 0, 0, 0), np.int64, cause)
    if y.size:
        x = contiguous(x)
        work = _work(c, sizes[0] * sizes[1] * sizes[2], out[0] * out[1] * out[2],
                     MAX_TAP_WORK * kernel[0] * kernel[1] * kernel[2])
        bands = _row_bands(work, c, sizes[0], out[0], (kernel[0] - 1) * dilation_[0])
        for part in sub_batches(n, work):
            for begin, end in _band_edges(out[0], bands):
                _core.max_pool3d_forward(x[part], y[part], indices[part], *kernel, *stride_, *padding_, *dilation_,
                                         begin, end, kernel_threads(elements=x[part].size))
    if return_indices:
        return _unbatch(y, unbatched), _unbatch(indices, unbatched)
    return _unbatch(y, unbatched)


def max_pool3d_backward(grad_out: NDArray[Float], indices: NDArray[np.int64], input_shape: Shape) -> NDArray[Float]:
    """Gradient of :func:`max_pool3d` (and :func:`adaptive_max_pool3d`) with respect to its input.

    Every ``grad_out[n, c, od, oh, ow]`` is added to ``grad_x[n, c]`` at the flat position
    ``indices[n, c, od, oh, ow]``; overlapping windows that share a maximum accumulate.

    Parameters
    ----------
    grad_out : ndarray of float32 or float64, shape (N, C, D_out, H_out, W_out) or (C, D_out, H_out, W_out)
        Gradient of the loss with respect to the pooled output.
    indices : ndarray of int64, same shape as ``grad_out``
        The forward pass's indices, each in ``[0, D * H * W)``.
    input_shape : tuple of int
        ``(N, C, D, H, W)`` or ``(C, D, H, W)``, the shape of the forward input.

    Returns
    -------
    grad_x : ndarray, shape ``input_shape``
        Same dtype as ``grad_out``.

    Raises
    ------
    TypeError
        For a dtype other than float32/float64 (``grad_out``) or int64 (``indices``).
    ValueError
        For mismatched shapes or an index outside its volume.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import max_pool3d_backward
    >>> max_pool3d_backward(np.ones((1, 1, 1, 1)), np.array([[[[7]]]]), (1, 2, 2, 2))[0]
    array([[[0., 0.],
            [0., 0.]],
    <BLANKLINE>
           [[0., 0.],
            [0., 1.]]])
    """
    grad_out = as_layout_array("max_pool3d_backward", "grad_out", grad_out, (4, 5), _OUT_LAYOUT)
    indices = _as_indices(indices, grad_out)
    shape: tuple[int, ...]
    shape, unbatched = _input_shape(input_shape, grad_out, dims=3)
    # The flat index d*H*W + h*W + w is that of row d*H + h of a (D*H, W) plane: the 2-D kernel scatters.
    planes = (*shape[:2], shape[2] * shape[3], shape[4])
    grad_flat = grad_out.reshape(*grad_out.shape[:-3], grad_out.shape[-3] * grad_out.shape[-2], grad_out.shape[-1])
    indices_flat = indices.reshape(grad_flat.shape)
    grad_x = _scatter_maxima(grad_flat, indices_flat, planes, unbatched, input_shape, "D*H*W")
    return grad_x.reshape(tuple(input_shape))


def _avg_args(
    kernel_size: object, stride: object, padding: object, ceil_mode: object, count_include_pad: object,
    divisor_override: object,
) -> tuple[_Triple, _Triple, _Triple, bool, bool, int]:
    """avg pooling's arguments validated, the divisor 0 where none is given."""
    ceil_mode = as_bool("ceil_mode", ceil_mode)
    kernel, stride_, padding_, _ = _window_args(kernel_size, stride, padding, 1)
    count_include_pad = as_bool("count_include_pad", count_include_pad)
    divisor = 0
    if divisor_override is not None:
        divisor = as_int("divisor_override", divisor_override, 1)
        if divisor > _MAX_PARAM:
            raise ValueError(f"divisor_override must be at most {_MAX_PARAM}, got {divisor}")
    return kernel, stride_, padding_, ceil_mode, count_include_pad, divisor


def avg_pool3d(
    x: NDArray[Float], kernel_size: IntTriple, stride: IntTriple | None = None, padding: IntTriple = 0,
    ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None,
    dilation: IntTriple = 1,
) -> NDArray[Float]:
    """3-D average pooling over the volumes of ``x``, as ``torch.nn.functional.avg_pool3d``.

    ``y[n, c, od, oh, ow]`` is the sum of ``x[n, c, od*sd - pd + a*dd, oh*sh - ph + b*dh, ow*sw - pw +
    c*dw]`` over the taps inside the input, divided by ``divisor_override`` if given, else by the
    number of the window's taps inside the zero-padded input (``count_include_pad``; a
    ``ceil_mode`` window hanging past the padding is clipped to it) or inside the input.

    Parameters
    ----------
    x : ndarray of float32 or float64, shape (N, C, D, H, W) or (C, D, H, W)
        Input, any memory layout; not modified.
    kernel_size : int or (int, int, int)
        Window size ``(kd, kh, kw)``, positive.
    stride : int or (int, int, int), optional
        Window step, positive; defaults to ``kernel_size``.
    padding : int or (int, int, int), default 0
        Implicit zeros on both sides of each axis, at most half the kernel.
    ceil_mode : bool, default False
        Round the output size up, keeping a last partial window.
    count_include_pad : bool, default True
        Count the padding in the divisor.
    divisor_override : int, optional
        A positive divisor used for every window instead.
    dilation : int or (int, int, int), default 1
        Spacing of the window's taps, as ONNX's AveragePool has it (PyTorch's ``avg_pool3d`` has
        none).

    Returns
    -------
    y : ndarray, shape (N, C, D_out, H_out, W_out) or (C, D_out, H_out, W_out)
        Same dtype as ``x``; ``D_out = (D + 2pd - dd*(kd - 1) - 1) // sd + 1`` (see ``ceil_mode``),
        likewise the others.

    Raises
    ------
    TypeError
        For a dtype other than float32/float64, or non-int geometry or non-bool flags.
    ValueError
        For a wrong ndim, non-positive sizes, padding over half the kernel or an empty output.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import avg_pool3d
    >>> x = np.arange(8, dtype=np.float64).reshape(1, 2, 2, 2)
    >>> avg_pool3d(x, 2)
    array([[[[3.5]]]])
    >>> avg_pool3d(x, (1, 1, 2), stride=1, padding=(0, 0, 1), count_include_pad=False)[0, 0]
    array([[0. , 0.5, 1. ],
           [2. , 2.5, 3. ]])
    """
    x, unbatched = _volumes("avg_pool3d", "x", x)
    kernel, stride_, padding_, ceil_mode, count_include_pad, divisor = _avg_args(
        kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    )
    dilation_ = _triple("dilation", dilation, 1)
    n, c, *sizes = x.shape
    out: _Triple = _output_size("x", tuple(sizes), kernel, stride_, padding_, dilation_, ceil_mode)

    y = _allocate((n, c, *out), x.dtype, "kernel_size, stride, padding and ceil_mode")
    if y.size:
        x = contiguous(x)
        work = _work(c, sizes[0] * sizes[1] * sizes[2], out[0] * out[1] * out[2],
                     AVG_TAP_WORK * kernel[0] * kernel[1] * kernel[2])
        # Each output depth is summed on its own, so bands repeat no work (reach 0).
        bands = _row_bands(work, c, sizes[0], out[0], 0)
        for part in sub_batches(n, work):
            for begin, end in _band_edges(out[0], bands):
                _core.avg_pool3d_forward(x[part], y[part], *kernel, *stride_, *padding_, *dilation_, count_include_pad,
                                         divisor, begin, end, kernel_threads(elements=x[part].size))
    return _unbatch(y, unbatched)


def avg_pool3d_backward(
    grad_out: NDArray[Float], input_shape: Shape, kernel_size: IntTriple, stride: IntTriple | None = None,
    padding: IntTriple = 0, ceil_mode: bool = False, count_include_pad: bool = True,
    divisor_override: int | None = None, dilation: IntTriple = 1,
) -> NDArray[Float]:
    """Gradient of :func:`avg_pool3d` with respect to its input.

    Each ``grad_out[n, c, od, oh, ow]``, divided by its window's divisor, is added to every input
    element of that window (padding excluded).

    Parameters
    ----------
    grad_out : ndarray of float32 or float64, shape (N, C, D_out, H_out, W_out) or (C, D_out, H_out, W_out)
        The forward output's shape for these arguments.
    input_shape : tuple of int
        ``(N, C, D, H, W)`` or ``(C, D, H, W)``, the shape of the forward input.
    kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, dilation
        As in :func:`avg_pool3d`.

    Returns
    -------
    grad_x : ndarray, shape ``input_shape``
        Same dtype as ``grad_out``.

    Raises
    ------
    TypeError
        For a dtype other than float32/float64, or non-int geometry or non-bool flags.
    ValueError
        For invalid arguments (as :func:`avg_pool3d`) or a ``grad_out`` of the wrong shape.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import avg_pool3d_backward
    >>> avg_pool3d_backward(np.ones((1, 1, 1, 1)), (1, 2, 2, 2), 2)[0]
    array([[[0.125, 0.125],
            [0.125, 0.125]],
    <BLANKLINE>
           [[0.125, 0.125],
            [0.125, 0.125]]])
    """
    grad_out = as_layout_array("avg_pool3d_backward", "grad_out", grad_out, (4, 5), _OUT_LAYOUT)
    shape, unbatched = _input_shape(input_shape, grad_out, dims=3)
    kernel, stride_, padding_, ceil_mode, count_include_pad, divisor = _avg_args(
        kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    )
    dilation_ = _triple("dilation", dilation, 1)
    out: _Triple = _output_size("input_shape", shape[2:], kernel, stride_, padding_, dilation_, ceil_mode)
    _check_grad_out(grad_out, input_shape, out)

    grad_x = _allocate(shape, grad_out.dtype, "input_shape")
    if grad_x.size:
        grad_out5 = contiguous(grad_out[np.newaxis] if unbatched else grad_out)
        work = _work(shape[1], shape[2] * shape[3] * shape[4], out[0] * out[1] * out[2],
                     AVG_TAP_WORK * kernel[0] * kernel[1] * kernel[2])
        # Bands of output depths, in order: the kernel scatters, the first band zeroing grad_x.
        bands = _row_bands(work, shape[1], out[0], out[0], 0)
        for part in sub_batches(shape[0], work):
            for begin, end in _band_edges(out[0], bands):
                _core.avg_pool3d_backward(grad_out5[part], grad_x[part], *kernel, *stride_, *padding_, *dilation_,
                                          count_include_pad, divisor, begin, end,
                                          kernel_threads(elements=grad_x[part].size))
    return _unbatch(grad_x, unbatched)


def _adaptive_output_size(output_size: object, sizes: tuple[int, ...]) -> _Triple:
    """``int | (int | None, int | None, int | None)`` as a triple of positive ints, None keeping that input size."""
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 3:
            raise ValueError(
                f"output_size must be an int or a triple of ints (or None), got a sequence of length "
                f"{len(output_size)}: {output_size!r}"
            )
        values = [sizes[k] if v is None else as_int(f"output_size[{k}]", v, 1) for k, v in enumerate(output_size)]
    elif isinstance(output_size, np.ndarray):
        raise TypeError("output_size must be an int or a tuple of three ints (or None), got an ndarray")
    else:
        values = [as_int("output_size", output_size, 1)] * 3
    if max(values) > _MAX_PARAM:
        raise ValueError(f"output_size must be at most {_MAX_PARAM}, got {output_size!r}")
    return values[0], values[1], values[2]


def _nonempty_volume(name: str, sizes: tuple[int, ...]) -> None:
    if min(sizes) < 1:
        raise ValueError(
            f"{name} must have a non-empty volume for adaptive pooling, got depth, height and width {tuple(sizes)}"
        )


def adaptive_avg_pool3d(x: NDArray[Float], output_size: AdaptiveSize3d) -> NDArray[Float]:
    """3-D adaptive average pooling, as ``torch.nn.functional.adaptive_avg_pool3d``.

    Output ``(od, oh, ow)`` averages ``[floor(o*In/Out), ceil((o+1)*In/Out))`` along each axis;
    ``output_size=1`` is global average pooling.

    Parameters
    ----------
    x : ndarray of float32 or float64, shape (N, C, D, H, W) or (C, D, H, W)
        Input with ``D, H, W >= 1``, any memory layout; not modified.
    output_size : int or (int or None, int or None, int or None)
        ``(D_out, H_out, W_out)``, positive; None keeps that input size.

    Returns
    -------
    y : ndarray, shape (N, C, D_out, H_out, W_out) or (C, D_out, H_out, W_out)
        Same dtype as ``x``.

    Raises
    ------
    TypeError
        For a dtype other than float32/float64 or a non-int ``output_size``.
    ValueError
        For a wrong ndim, an empty volume or a non-positive ``output_size``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import adaptive_avg_pool3d
    >>> x = np.arange(8, dtype=np.float64).reshape(1, 2, 2, 2)
    >>> adaptive_avg_pool3d(x, (1, 1, None))
    array([[[[3., 4.]]]])
    """
    x, unbatched = _volumes("adaptive_avg_pool3d", "x", x)
    n, c, *sizes = x.shape
    _nonempty_volume("x", tuple(sizes))
    out: _Triple = _adaptive_output_size(output_size, tuple(sizes))

    y = _allocate((n, c, *out), x.dtype, "output_size")
    if y.size:
        x = contiguous(x)
        work = _work(c, 8 * sizes[0] * sizes[1] * sizes[2], out[0] * out[1] * out[2], 8)
        for part in sub_batches(n, work):
            for begin, end in _band_edges(out[0], _row_bands(work, c, sizes[0], out[0], 0)):
                _core.adaptive_avg_pool3d_forward(x[part], y[part], begin, end, kernel_threads(elements=x[part].size))
    return _unbatch(y, unbatched)


def adaptive_avg_pool3d_backward(grad_out: NDArray[Float], input_shape: Shape) -> NDArray[Float]:
    """Gradient of :func:`adaptive_avg_pool3d` with respect to its input; the output size is ``grad_out``'s last three axes.

    Parameters
    ----------
    grad_out : ndarray of float32 or float64, shape (N, C, D_out, H_out, W_out) or (C, D_out, H_out, W_out)
        Gradient of the loss with respect to the pooled output, every output size at least 1.
    input_shape : tuple of int
        ``(N, C, D, H, W)`` or ``(C, D, H, W)``, ``D, H, W >= 1``.

    Returns
    -------
    grad_x : ndarray, shape ``input_shape``
        Same dtype as ``grad_out``.

    Raises
    ------
    TypeError
        For a dtype other than float32/float64.
    ValueError
        For mismatched shapes or empty volumes.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import adaptive_avg_pool3d_backward
    >>> adaptive_avg_pool3d_backward(np.ones((1, 1, 1, 1)), (1, 1, 2, 2))
    array([[[[0.25, 0.25],
             [0.25, 0.25]]]])
    """
    grad_out = as_layout_array("adaptive_avg_pool3d_backward", "grad_out", grad_out, (4, 5), _OUT_LAYOUT)
    shape, unbatched = _input_shape(input_shape, grad_out, dims=3)
    _nonempty_volume("input_shape", shape[2:])
    out = grad_out.shape[-3:]
    if min(out) < 1:
        raise ValueError(f"grad_out must have a non-empty output volume, got shape {grad_out.shape}")

    grad_x = _allocate(shape, grad_out.dtype, "input_shape")
    if grad_x.size:
        grad_out5 = contiguous(grad_out[np.newaxis] if unbatched else grad_out)
        work = _work(shape[1], 8 * shape[2] * shape[3] * shape[4], out[0] * out[1] * out[2], 8)
        for part in sub_batches(shape[0], work):
            # In order: the kernel scatters, the first band zeroing grad_x.
            for begin, end in _band_edges(out[0], _row_bands(work, shape[1], out[0], out[0], 0)):
                _core.adaptive_avg_pool3d_backward(grad_out5[part], grad_x[part], begin, end,
                                                   kernel_threads(elements=grad_x[part].size))
    return _unbatch(grad_x, unbatched)


@overload
def adaptive_max_pool3d(
    x: NDArray[Float], output_size: AdaptiveSize3d, return_indices: Literal[False] = ...
) -> NDArray[Float]: ...
@overload
def adaptive_max_pool3d(
    x: NDArray[Float], output_size: AdaptiveSize3d, return_indices: Literal[True]
) -> tuple[NDArray[Float], NDArray[np.int64]]: ...
def adaptive_max_pool3d(
    x: NDArray[Float], output_size: AdaptiveSize3d, return_indices: bool = False
) -> NDArray[Float] | tuple[NDArray[Float], NDArray[np.int64]]:
    """3-D adaptive max pooling, as ``torch.nn.functional.adaptive_max_pool3d``.

    Output ``(od, oh, ow)`` is the maximum over ``[floor(o*In/Out), ceil((o+1)*In/Out))`` along each
    axis, with :func:`max_pool3d`'s rules for ties and NaN; its backward is :func:`max_pool3d_backward`.

    Parameters
    ----------
    x : ndarray of float32 or float64, shape (N, C, D, H, W) or (C, D, H, W)
        Input with ``D, H, W >= 1``, any memory layout; not modified.
    output_size : int or (int or None, int or None, int or None)
        ``(D_out, H_out, W_out)``, positive; None keeps that input size.
    return_indices : bool, default False
        Also return the flat ``d * H * W + h * W + w`` position of every maximum.

    Returns
    -------
    y : ndarray, shape (N, C, D_out, H_out, W_out) or (C, D_out, H_out, W_out)
        Same dtype as ``x``.
    indices : ndarray of int64, same shape as ``y``
        Only with ``return_indices``.

    Raises
    ------
    TypeError
        For a dtype other than float32/float64, a non-int ``output_size`` or a non-bool flag.
    ValueError
        For a wrong ndim, an empty volume or a non-positive ``output_size``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import adaptive_max_pool3d
    >>> x = np.arange(8, dtype=np.float64).reshape(1, 2, 2, 2)
    >>> adaptive_max_pool3d(x, (1, 1, 2), return_indices=True)
    (array([[[[6., 7.]]]]), array([[[[6, 7]]]]))
    """
    x, unbatched = _volumes("adaptive_max_pool3d", "x", x)
    n, c, *sizes = x.shape
    _nonempty_volume("x", tuple(sizes))
    out: _Triple = _adaptive_output_size(output_size, tuple(sizes))
    return_indices = as_bool("return_indices", return_indices)

    y = _allocate((n, c, *out), x.dtype, "output_size")
    indices = _allocate(y.shape if return_indices else (0, 0, 0, 0, 0), np.int64, "output_size")
    if y.size:
        x = contiguous(x)
        work = _work(c, 8 * sizes[0] * sizes[1] * sizes[2], out[0] * out[1] * out[2], 8)
        for part in sub_batches(n, work):
            for begin, end in _band_edges(out[0], _row_bands(work, c, sizes[0], out[0], 0)):
                _core.adaptive_max_pool3d_forward(x[part], y[part], indices[part], begin, end,
                                                  kernel_threads(elements=x[part].size))
    if return_indices:
        return _unbatch(y, unbatched), _unbatch(indices, unbatched)
    return _unbatch(y, unbatched)
