"""3-D pooling over the (D, H, W) volumes of (N, C, D, H, W) arrays, or of channels-last (N, D, H, W, C)
ones with ``layout='NDHWC'``: ``torch.nn.functional`` semantics of the same names.

Every function validates its arguments (padding as the 2-D ops take it: per side, ``'valid'``,
``'same'`` or ``'same_lower'``, each side at most ``dilation * (kernel_size - 1)``, ONNX's limit),
computes the output size with ``convx._shapes`` (through the 2-D ops' helpers, which refuse empty
outputs and windows wholly in the padding), allocates C-contiguous outputs and calls one kernel of
``convx._core`` per bounded sub-batch, and per band of depths of a huge volume (so that Ctrl-C is
seen between calls, as the 2-D ops band rows). Inputs are never modified; any memory layout is
accepted; channels-last arrays go to channels-last kernels as they are (no transposes). Indices of
maxima are flat ``d * H * W + h * W + w`` positions in each volume, in either layout.
"""

from __future__ import annotations

from typing import Literal, cast, overload

import numpy as np
from numpy.typing import NDArray

from .. import _core
from .._batching import sub_batches
from .._checks import as_bool, as_data_layout, as_int, as_layout_array, as_shape, as_triple, contiguous
from .._threads import kernel_threads
from .._typing import AdaptiveSize3d, AnyArray, Float, IntTriple, PaddingWord, Shape
from ._pooling_nhwc import scatter_maxima as _scatter_maxima_last
from .conv3d import Padding3d
from .pooling import (
    _MAX_PARAM, AVG_TAP_WORK, MAX_TAP_WORK, _allocate, _as_indices, _band_edges, _input_shape, _pool_output_shape,
    _row_bands, _scatter_maxima, _Sides, _unbatch, _window_values, _work,
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
_LAYOUT_LAST = "(N, D, H, W, C) or (D, H, W, C) with layout='NDHWC'"
_OUT_LAYOUT_LAST = "(N, D_out, H_out, W_out, C) or (D_out, H_out, W_out, C) with layout='NDHWC'"
_Triple = tuple[int, int, int]
_Sides3 = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def _volumes(op: str, name: str, array: object, layout: str = _LAYOUT) -> tuple[AnyArray, bool]:
    """``array`` as a float32/float64 5-D array (in its layout) and whether it came without the batch axis."""
    array = as_layout_array(op, name, array, (4, 5), layout)
    if array.ndim == 4:
        return array[np.newaxis], True
    return array, False


def _layout_volumes(op: str, name: str, array: object, last: bool, out: bool = False) -> tuple[AnyArray, bool]:
    """:func:`_volumes` with the shapes of ``layout='NDHWC'`` (``last``) or of NCDHW named in a refusal."""
    if last:
        return _volumes(op, name, array, _OUT_LAYOUT_LAST if out else _LAYOUT_LAST)
    return _volumes(op, name, array, _OUT_LAYOUT if out else _LAYOUT)


def _sizes(shape: tuple[int, ...], last: bool) -> tuple[int, int, tuple[int, int, int]]:
    """Batch, channels and (D, H, W) of a batched 5-D shape in its layout."""
    if last:
        n, depth, height, width, c = shape
    else:
        n, c, depth, height, width = shape
    return n, c, (depth, height, width)


def _shaped(n: int, c: int, sizes: tuple[int, ...], last: bool) -> tuple[int, ...]:
    """The 5-D shape of a batch in its layout."""
    return (n, *sizes, c) if last else (n, c, *sizes)


def _triple(name: str, value: object, minimum: int) -> _Triple:
    values = as_triple(name, value, minimum)
    if max(values) > _MAX_PARAM:
        raise ValueError(f"{name} must be at most {_MAX_PARAM}, got {value!r}")
    return values


def _window_args(
    kernel_size: object, stride: object, padding: object, dilation: object, ceil_mode: bool = False,
) -> tuple[_Triple, _Triple, PaddingWord | _Sides, _Triple]:
    """kernel, stride and dilation as triples, and the padding as a word or per-side pairs, each side
    at most ``dilation * (kernel_size - 1)`` (the 2-D ops' rule, ONNX's)."""
    kernel, stride_, spec, dilation_ = _window_values(kernel_size, stride, padding, dilation, 3, ceil_mode)
    return cast(_Triple, kernel), cast(_Triple, stride_), spec, cast(_Triple, dilation_)


def _output_size(
    name: str, sizes: tuple[int, ...], kernel: _Triple, stride: _Triple, padding: PaddingWord | _Sides,
    dilation: _Triple, ceil_mode: bool,
) -> tuple[_Triple, _Sides3]:
    """The output's (D_out, H_out, W_out) and the padding as ((front, back), (top, bottom), (left, right))."""
    out, sides = _pool_output_shape(name, sizes, kernel, stride, padding, dilation, ceil_mode)
    return (out[0], out[1], out[2]), (sides[0], sides[1], sides[2])


def _check_grad_out(grad_out: AnyArray, input_shape: Shape, out: tuple[int, ...], last: bool = False) -> None:
    spatial = grad_out.shape[-4:-1] if last else grad_out.shape[-3:]
    if spatial != tuple(out):
        shape = (*grad_out.shape[:-4], *out, grad_out.shape[-1]) if last else (*grad_out.shape[:-3], *out)
        layout = " (layout='NDHWC')" if last else ""
        raise ValueError(
            f"grad_out must have the forward output shape {shape} for input_shape {tuple(input_shape)}{layout} and "
            f"these pooling arguments, got {grad_out.shape}"
        )


def _input_shape_last(input_shape: Shape, grad_out: AnyArray) -> tuple[tuple[int, ...], bool]:
    """A channels-last ``input_shape`` with a batch axis (and whether it had none), checked against
    grad_out's batch and channel axes."""
    shape = as_shape("input_shape", input_shape, (4, 5))
    if grad_out.ndim != len(shape):
        raise ValueError(
            f"grad_out must be {len(shape)}-dimensional like input_shape {shape}, got an array of shape {grad_out.shape}"
        )
    if grad_out.shape[:-4] != shape[:-4] or grad_out.shape[-1] != shape[-1]:
        raise ValueError(
            f"grad_out of shape {grad_out.shape} does not match input_shape {shape} with layout='NDHWC': the batch "
            f"and channel axes (first and last) must be {(*shape[:-4], shape[-1])}"
        )
    if len(shape) == 4:
        return (1, *shape), True
    return shape, False


def _backward_shape(input_shape: Shape, grad_out: AnyArray, last: bool) -> tuple[tuple[int, ...], bool]:
    """``input_shape`` batched (5-D in its layout) and whether it was unbatched."""
    if last:
        return _input_shape_last(input_shape, grad_out)
    return _input_shape(input_shape, grad_out, dims=3)


@overload
def max_pool3d(
    x: NDArray[Float], kernel_size: IntTriple, stride: IntTriple | None = ..., padding: Padding3d = ...,
    dilation: IntTriple = ..., ceil_mode: bool = ..., return_indices: Literal[False] = ..., *, layout: str = ...,
) -> NDArray[Float]: ...
@overload
def max_pool3d(
    x: NDArray[Float], kernel_size: IntTriple, stride: IntTriple | None = ..., padding: Padding3d = ...,
    dilation: IntTriple = ..., ceil_mode: bool = ..., *, return_indices: Literal[True], layout: str = ...,
) -> tuple[NDArray[Float], NDArray[np.int64]]: ...
def max_pool3d(
    x: NDArray[Float], kernel_size: IntTriple, stride: IntTriple | None = None, padding: Padding3d = 0,
    dilation: IntTriple = 1, ceil_mode: bool = False, return_indices: bool = False, *, layout: str = "NCDHW",
) -> NDArray[Float] | tuple[NDArray[Float], NDArray[np.int64]]:
    """3-D max pooling over the volumes of ``x``, as ``torch.nn.functional.max_pool3d``.

    ``y[n, c, od, oh, ow]`` is the maximum of ``x[n, c, od*sd - front + a*dd, oh*sh - top + b*dh,
    ow*sw - left + c*dw]`` over the taps of the window inside the input (padding counts as -inf).
    NaN propagates: a window holding NaN gives NaN (and points at its last NaN); otherwise the
    first maximum in window order (depth, rows, columns) wins ties.

    Parameters
    ----------
    x : ndarray of float32 or float64, shape (N, C, D, H, W) or (C, D, H, W)
        Input, any memory layout; not modified. ``(N, D, H, W, C)`` or ``(D, H, W, C)`` with
        ``layout='NDHWC'``.
    kernel_size : int or (int, int, int)
        Window size ``(kd, kh, kw)``, positive.
    stride : int or (int, int, int), optional
        Window step ``(sd, sh, sw)``, positive; defaults to ``kernel_size``.
    padding : int, (int, int, int), ((int, int), (int, int), (int, int)), 'valid', 'same' or 'same_lower', default 0
        Implicit -inf padding: ``p`` on every side, ``(pd, ph, pw)`` on both sides of each axis, or
        ``((front, back), (top, bottom), (left, right))``; each side at most ``dilation *
        (kernel_size - 1)`` (ONNX's limit; PyTorch's is half the kernel), so that every window
        reaches the input. ``'valid'`` pads nothing; ``'same'`` (ONNX's SAME_UPPER) pads each axis
        so that ``out = ceil(size / stride)``, an odd extra at the back, bottom or right, and
        ``'same_lower'`` puts it at the front, top or left; neither takes ``ceil_mode``. Six flat
        numbers are refused as ambiguous.
    dilation : int or (int, int, int), default 1
        Spacing between the taps of a window, positive.
    ceil_mode : bool, default False
        Round the output size up, keeping a last partial window (unless it would start in the
        padding after the input).
    return_indices : bool, default False
        Also return the position of every maximum.
    layout : {'NCDHW', 'NDHWC'}, default 'NCDHW'
        Keyword only: the memory layout of ``x`` and the outputs, channels first (PyTorch's) or
        channels last. NDHWC runs natively (no transposes), with the same results bit for bit.

    Returns
    -------
    y : ndarray, shape (N, C, D_out, H_out, W_out) or (C, D_out, H_out, W_out); (N, D_out, H_out, W_out, C) or (D_out, H_out, W_out, C) for NDHWC
        Same dtype as ``x``; ``D_out = (D + front + back - dd(kd - 1) - 1) // sd + 1`` (see
        ``ceil_mode``), likewise ``H_out`` and ``W_out``.
    indices : ndarray of int64, same shape as ``y``
        Only with ``return_indices``: the flat position ``d * H * W + h * W + w`` of each maximum in
        its volume (in either layout), as :func:`max_pool3d_backward` and ``max_unpool3d`` take them.

    Raises
    ------
    TypeError
        For a dtype other than float32/float64, or non-int geometry or non-bool flags.
    ValueError
        For a wrong ndim, non-positive sizes, a side's padding over ``dilation * (kernel_size - 1)``,
        six flat numbers or an unknown word as padding, ``'same'`` with ``ceil_mode``, an empty
        output, a window with every tap in the padding, or an unknown ``layout``.

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
    >>> max_pool3d(x, 2, padding=((1, 0), (0, 0), (0, 0)))[0, :, 0, 0]  # the front padded only
    array([ 4., 22.])
    >>> max_pool3d(np.moveaxis(x, 0, -1), 2, stride=1, layout="NDHWC")[..., 0]  # channels last
    array([[[13., 14.],
            [16., 17.]],
    <BLANKLINE>
           [[22., 23.],
            [25., 26.]]])
    """
    last = as_data_layout(layout, 3)
    x, unbatched = _layout_volumes("max_pool3d", "x", x, last)
    ceil_mode = as_bool("ceil_mode", ceil_mode)
    kernel, stride_, spec, dilation_ = _window_args(kernel_size, stride, padding, dilation, ceil_mode)
    return_indices = as_bool("return_indices", return_indices)
    n, c, sizes = _sizes(x.shape, last)
    out, sides = _output_size("x", sizes, kernel, stride_, spec, dilation_, ceil_mode)
    # The kernels take the padding before each axis; the output size says how far the windows go.
    padding_ = (sides[0][0], sides[1][0], sides[2][0])

    cause = "kernel_size, stride, padding, dilation and ceil_mode"
    y = _allocate(_shaped(n, c, out, last), x.dtype, cause)
    indices = _allocate(y.shape if return_indices else (0, 0, 0, 0, 0), np.int64, cause)
    if y.size:
        x = contiguous(x)
        forward = _core.max_pool3d_ndhwc_forward if last else _core.max_pool3d_forward
        work = _work(c, sizes[0] * sizes[1] * sizes[2], out[0] * out[1] * out[2],
                     MAX_TAP_WORK * kernel[0] * kernel[1] * kernel[2])
        bands = _row_bands(work, c, sizes[0], out[0], (kernel[0] - 1) * dilation_[0])
        for part in sub_batches(n, work):
            for begin, end in _band_edges(out[0], bands):
                forward(x[part], y[part], indices[part], *kernel, *stride_, *padding_, *dilation_, begin, end,
                        kernel_threads(elements=x[part].size))
    if return_indices:
        return _unbatch(y, unbatched), _unbatch(indices, unbatched)
    return _unbatch(y, unbatched)


def max_pool3d_backward(
    grad_out: NDArray[Float], indices: NDArray[np.int64], input_shape: Shape, *, layout: str = "NCDHW"
) -> NDArray[Float]:
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
    layout : {'NCDHW', 'NDHWC'}, default 'NCDHW'
        Keyword only: with ``'NDHWC'``, ``grad_out`` and ``indices`` are ``(N, D_out, H_out,
        W_out, C)`` or ``(D_out, H_out, W_out, C)``, ``input_shape`` and ``grad_x`` ``(N, D, H, W,
        C)`` or ``(D, H, W, C)``; the indices are the same flat positions.

    Returns
    -------
    grad_x : ndarray, shape ``input_shape``
        Same dtype as ``grad_out``.

    Raises
    ------
    TypeError
        For a dtype other than float32/float64 (``grad_out``) or int64 (``indices``).
    ValueError
        For mismatched shapes, an index outside its volume or an unknown ``layout``.

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
    last = as_data_layout(layout, 3)
    grad_out = as_layout_array("max_pool3d_backward", "grad_out", grad_out, (4, 5),
                               _OUT_LAYOUT_LAST if last else _OUT_LAYOUT)
    indices = _as_indices(indices, grad_out)
    shape: tuple[int, ...]
    if last:
        shape, unbatched = _input_shape_last(input_shape, grad_out)
        # As below, with the channels last: (N, D*H, W, C) planes for the channels-last 2-D scatter.
        planes: tuple[int, ...] = (shape[0], shape[1] * shape[2], shape[3], shape[4])
        out_d, out_h, out_w, c = grad_out.shape[-4:]
        grad_flat = grad_out.reshape(*grad_out.shape[:-4], out_d * out_h, out_w, c)
        grad_x = _scatter_maxima_last(grad_flat, indices.reshape(grad_flat.shape), planes, unbatched, input_shape,
                                      "D*H*W")
        return grad_x.reshape(tuple(input_shape))
    shape, unbatched = _input_shape(input_shape, grad_out, dims=3)
    # The flat index d*H*W + h*W + w is that of row d*H + h of a (D*H, W) plane: the 2-D kernel scatters.
    planes = (*shape[:2], shape[2] * shape[3], shape[4])
    grad_flat = grad_out.reshape(*grad_out.shape[:-3], grad_out.shape[-3] * grad_out.shape[-2], grad_out.shape[-1])
    indices_flat = indices.reshape(grad_flat.shape)
    grad_x = _scatter_maxima(grad_flat, indices_flat, planes, unbatched, input_shape, "D*H*W")
    return grad_x.reshape(tuple(input_shape))


def _avg_args(
    kernel_size: object, stride: object, padding: object, ceil_mode: object, count_include_pad: object,
    divisor_override: object, dilation: object = 1,
) -> tuple[_Triple, _Triple, PaddingWord | _Sides, _Triple, bool, bool, int]:
    """avg pooling's arguments validated, the divisor 0 where none is given."""
    ceil_mode = as_bool("ceil_mode", ceil_mode)
    kernel, stride_, spec, dilation_ = _window_args(kernel_size, stride, padding, dilation, ceil_mode)
    count_include_pad = as_bool("count_include_pad", count_include_pad)
    divisor = 0
    if divisor_override is not None:
        divisor = as_int("divisor_override", divisor_override, 1)
        if divisor > _MAX_PARAM:
            raise ValueError(f"divisor_override must be at most {_MAX_PARAM}, got {divisor}")
    return kernel, stride_, spec, dilation_, ceil_mode, count_include_pad, divisor


def avg_pool3d(
    x: NDArray[Float], kernel_size: IntTriple, stride: IntTriple | None = None, padding: Padding3d = 0,
    ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None,
    dilation: IntTriple = 1, *, layout: str = "NCDHW",
) -> NDArray[Float]:
    """3-D average pooling over the volumes of ``x``, as ``torch.nn.functional.avg_pool3d``.

    ``y[n, c, od, oh, ow]`` is the sum of ``x[n, c, od*sd - front + a*dd, oh*sh - top + b*dh, ow*sw -
    left + c*dw]`` over the taps inside the input, divided by ``divisor_override`` if given, else by
    the number of the window's taps inside the zero-padded input (``count_include_pad``, each side
    padded as given, as the 2-D ops and ONNX count; a ``ceil_mode`` window hanging past the padding
    is clipped to it) or inside the input.

    Parameters
    ----------
    x : ndarray of float32 or float64, shape (N, C, D, H, W) or (C, D, H, W)
        Input, any memory layout; not modified. ``(N, D, H, W, C)`` or ``(D, H, W, C)`` with
        ``layout='NDHWC'``.
    kernel_size : int or (int, int, int)
        Window size ``(kd, kh, kw)``, positive.
    stride : int or (int, int, int), optional
        Window step, positive; defaults to ``kernel_size``.
    padding : int, (int, int, int), ((int, int), (int, int), (int, int)), 'valid', 'same' or 'same_lower', default 0
        Implicit zero padding, spelled and limited as in :func:`max_pool3d`: each side at most
        ``dilation * (kernel_size - 1)``.
    ceil_mode : bool, default False
        Round the output size up, keeping a last partial window.
    count_include_pad : bool, default True
        Count the padding in the divisor.
    divisor_override : int, optional
        A positive divisor used for every window instead.
    dilation : int or (int, int, int), default 1
        Spacing of the window's taps, as ONNX's AveragePool has it (PyTorch's ``avg_pool3d`` has
        none).
    layout : {'NCDHW', 'NDHWC'}, default 'NCDHW'
        Keyword only: the memory layout of ``x`` and the output, channels first (PyTorch's) or
        channels last. NDHWC runs natively (no transposes), with the same results bit for bit.

    Returns
    -------
    y : ndarray, shape (N, C, D_out, H_out, W_out) or (C, D_out, H_out, W_out); (N, D_out, H_out, W_out, C) or (D_out, H_out, W_out, C) for NDHWC
        Same dtype as ``x``; ``D_out = (D + front + back - dd*(kd - 1) - 1) // sd + 1`` (see
        ``ceil_mode``), likewise the others.

    Raises
    ------
    TypeError
        For a dtype other than float32/float64, or non-int geometry or non-bool flags.
    ValueError
        For a wrong ndim, non-positive sizes, a side's padding over ``dilation * (kernel_size - 1)``,
        six flat numbers or an unknown word as padding, ``'same'`` with ``ceil_mode``, an empty
        output or an unknown ``layout``.

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
    >>> avg_pool3d(x, (1, 1, 2), stride=1, padding=((0, 0), (0, 0), (0, 1)))[0, 0]  # right only
    array([[0.5, 0.5],
           [2.5, 1.5]])
    >>> avg_pool3d(np.moveaxis(x, 0, -1), 2, layout="NDHWC")  # (2, 2, 2, 1) -> (1, 1, 1, 1)
    array([[[[3.5]]]])
    """
    last = as_data_layout(layout, 3)
    x, unbatched = _layout_volumes("avg_pool3d", "x", x, last)
    kernel, stride_, spec, dilation_, ceil_mode, count_include_pad, divisor = _avg_args(
        kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, dilation
    )
    n, c, sizes = _sizes(x.shape, last)
    out, sides = _output_size("x", sizes, kernel, stride_, spec, dilation_, ceil_mode)
    before, after = (sides[0][0], sides[1][0], sides[2][0]), (sides[0][1], sides[1][1], sides[2][1])

    y = _allocate(_shaped(n, c, out, last), x.dtype, "kernel_size, stride, padding, dilation and ceil_mode")
    if y.size:
        x = contiguous(x)
        forward = _core.avg_pool3d_ndhwc_forward if last else _core.avg_pool3d_forward
        work = _work(c, sizes[0] * sizes[1] * sizes[2], out[0] * out[1] * out[2],
                     AVG_TAP_WORK * kernel[0] * kernel[1] * kernel[2])
        # Each output depth is summed on its own, so bands repeat no work (reach 0).
        bands = _row_bands(work, c, sizes[0], out[0], 0)
        for part in sub_batches(n, work):
            for begin, end in _band_edges(out[0], bands):
                forward(x[part], y[part], *kernel, *stride_, *before, *after, *dilation_, count_include_pad, divisor,
                        begin, end, kernel_threads(elements=x[part].size))
    return _unbatch(y, unbatched)


def avg_pool3d_backward(
    grad_out: NDArray[Float], input_shape: Shape, kernel_size: IntTriple, stride: IntTriple | None = None,
    padding: Padding3d = 0, ceil_mode: bool = False, count_include_pad: bool = True,
    divisor_override: int | None = None, dilation: IntTriple = 1, *, layout: str = "NCDHW",
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
    layout : {'NCDHW', 'NDHWC'}, default 'NCDHW'
        Keyword only: with ``'NDHWC'``, ``grad_out`` is ``(N, D_out, H_out, W_out, C)`` or
        ``(D_out, H_out, W_out, C)``, ``input_shape`` and ``grad_x`` ``(N, D, H, W, C)`` or
        ``(D, H, W, C)``.

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
    last = as_data_layout(layout, 3)
    grad_out = as_layout_array("avg_pool3d_backward", "grad_out", grad_out, (4, 5),
                               _OUT_LAYOUT_LAST if last else _OUT_LAYOUT)
    shape, unbatched = _backward_shape(input_shape, grad_out, last)
    kernel, stride_, spec, dilation_, ceil_mode, count_include_pad, divisor = _avg_args(
        kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, dilation
    )
    n, c, sizes = _sizes(shape, last)
    out, sides = _output_size("input_shape", sizes, kernel, stride_, spec, dilation_, ceil_mode)
    before, after = (sides[0][0], sides[1][0], sides[2][0]), (sides[0][1], sides[1][1], sides[2][1])
    _check_grad_out(grad_out, input_shape, out, last)

    grad_x = _allocate(shape, grad_out.dtype, "input_shape")
    if grad_x.size:
        grad_out5 = contiguous(grad_out[np.newaxis] if unbatched else grad_out)
        work = _work(c, sizes[0] * sizes[1] * sizes[2], out[0] * out[1] * out[2],
                     AVG_TAP_WORK * kernel[0] * kernel[1] * kernel[2])
        if last:
            # Bands of input depths, each gathering its shares on its own.
            bands = _row_bands(work, c, out[0], sizes[0], 0)
            for part in sub_batches(n, work):
                for begin, end in _band_edges(sizes[0], bands):
                    _core.avg_pool3d_ndhwc_backward(grad_out5[part], grad_x[part], *kernel, *stride_, *before, *after,
                                                    *dilation_, count_include_pad, divisor, begin, end,
                                                    kernel_threads(elements=grad_x[part].size))
            return _unbatch(grad_x, unbatched)
        # Bands of output depths, in order: the kernel scatters, the first band zeroing grad_x.
        bands = _row_bands(work, c, out[0], out[0], 0)
        for part in sub_batches(n, work):
            for begin, end in _band_edges(out[0], bands):
                _core.avg_pool3d_backward(grad_out5[part], grad_x[part], *kernel, *stride_, *before, *after,
                                          *dilation_, count_include_pad, divisor, begin, end,
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


def adaptive_avg_pool3d(x: NDArray[Float], output_size: AdaptiveSize3d, *, layout: str = "NCDHW") -> NDArray[Float]:
    """3-D adaptive average pooling, as ``torch.nn.functional.adaptive_avg_pool3d``.

    Output ``(od, oh, ow)`` averages ``[floor(o*In/Out), ceil((o+1)*In/Out))`` along each axis;
    ``output_size=1`` is global average pooling.

    Parameters
    ----------
    x : ndarray of float32 or float64, shape (N, C, D, H, W) or (C, D, H, W)
        Input with ``D, H, W >= 1``, any memory layout; not modified.
    output_size : int or (int or None, int or None, int or None)
        ``(D_out, H_out, W_out)``, positive; None keeps that input size.
    layout : {'NCDHW', 'NDHWC'}, default 'NCDHW'
        Keyword only: the memory layout of ``x`` and the outputs, channels first (PyTorch's) or
        channels last, ``(N, D, H, W, C)`` or ``(D, H, W, C)``. NDHWC runs natively (no
        transposes), with the same results bit for bit.

    Returns
    -------
    y : ndarray, shape (N, C, D_out, H_out, W_out) or (C, D_out, H_out, W_out); channels last for NDHWC
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
    last = as_data_layout(layout, 3)
    x, unbatched = _layout_volumes("adaptive_avg_pool3d", "x", x, last)
    n, c, sizes = _sizes(x.shape, last)
    _nonempty_volume("x", sizes)
    out: _Triple = _adaptive_output_size(output_size, sizes)

    y = _allocate(_shaped(n, c, out, last), x.dtype, "output_size")
    if y.size:
        x = contiguous(x)
        forward = _core.adaptive_avg_pool3d_ndhwc_forward if last else _core.adaptive_avg_pool3d_forward
        work = _work(c, 8 * sizes[0] * sizes[1] * sizes[2], out[0] * out[1] * out[2], 8)
        for part in sub_batches(n, work):
            for begin, end in _band_edges(out[0], _row_bands(work, c, sizes[0], out[0], 0)):
                forward(x[part], y[part], begin, end, kernel_threads(elements=x[part].size))
    return _unbatch(y, unbatched)


def adaptive_avg_pool3d_backward(
    grad_out: NDArray[Float], input_shape: Shape, *, layout: str = "NCDHW"
) -> NDArray[Float]:
    """Gradient of :func:`adaptive_avg_pool3d` with respect to its input; the output size is ``grad_out``'s last three axes.

    Parameters
    ----------
    grad_out : ndarray of float32 or float64, shape (N, C, D_out, H_out, W_out) or (C, D_out, H_out, W_out)
        Gradient of the loss with respect to the pooled output, every output size at least 1.
    input_shape : tuple of int
        ``(N, C, D, H, W)`` or ``(C, D, H, W)``, ``D, H, W >= 1``.
    layout : {'NCDHW', 'NDHWC'}, default 'NCDHW'
        Keyword only: with ``'NDHWC'``, ``grad_out`` is ``(N, D_out, H_out, W_out, C)`` or
        ``(D_out, H_out, W_out, C)``, ``input_shape`` and ``grad_x`` ``(N, D, H, W, C)`` or
        ``(D, H, W, C)``.

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
    last = as_data_layout(layout, 3)
    grad_out = as_layout_array("adaptive_avg_pool3d_backward", "grad_out", grad_out, (4, 5),
                               _OUT_LAYOUT_LAST if last else _OUT_LAYOUT)
    shape, unbatched = _backward_shape(input_shape, grad_out, last)
    n, c, sizes = _sizes(shape, last)
    _nonempty_volume("input_shape", sizes)
    out = grad_out.shape[-4:-1] if last else grad_out.shape[-3:]
    if min(out) < 1:
        raise ValueError(f"grad_out must have a non-empty output volume, got shape {grad_out.shape}")

    grad_x = _allocate(shape, grad_out.dtype, "input_shape")
    if grad_x.size:
        grad_out5 = contiguous(grad_out[np.newaxis] if unbatched else grad_out)
        work = _work(c, 8 * sizes[0] * sizes[1] * sizes[2], out[0] * out[1] * out[2], 8)
        for part in sub_batches(n, work):
            if last:
                # Bands of input depths, each gathering its shares on its own.
                for begin, end in _band_edges(sizes[0], _row_bands(work, c, out[0], sizes[0], 0)):
                    _core.adaptive_avg_pool3d_ndhwc_backward(grad_out5[part], grad_x[part], begin, end,
                                                             kernel_threads(elements=grad_x[part].size))
                continue
            # In order: the kernel scatters, the first band zeroing grad_x.
            for begin, end in _band_edges(out[0], _row_bands(work, c, out[0], out[0], 0)):
                _core.adaptive_avg_pool3d_backward(grad_out5[part], grad_x[part], begin, end,
                                                   kernel_threads(elements=grad_x[part].size))
    return _unbatch(grad_x, unbatched)


@overload
def adaptive_max_pool3d(
    x: NDArray[Float], output_size: AdaptiveSize3d, return_indices: Literal[False] = ..., *, layout: str = ...
) -> NDArray[Float]: ...
@overload
def adaptive_max_pool3d(
    x: NDArray[Float], output_size: AdaptiveSize3d, return_indices: Literal[True], *, layout: str = ...
) -> tuple[NDArray[Float], NDArray[np.int64]]: ...
def adaptive_max_pool3d(
    x: NDArray[Float], output_size: AdaptiveSize3d, return_indices: bool = False, *, layout: str = "NCDHW"
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
        Also return the flat ``d * H * W + h * W + w`` position of every maximum (in either layout).
    layout : {'NCDHW', 'NDHWC'}, default 'NCDHW'
        Keyword only: the memory layout of ``x`` and the outputs, channels first (PyTorch's) or
        channels last, ``(N, D, H, W, C)`` or ``(D, H, W, C)``. NDHWC runs natively (no
        transposes), with the same results bit for bit.

    Returns
    -------
    y : ndarray, shape (N, C, D_out, H_out, W_out) or (C, D_out, H_out, W_out); channels last for NDHWC
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
    last = as_data_layout(layout, 3)
    x, unbatched = _layout_volumes("adaptive_max_pool3d", "x", x, last)
    n, c, sizes = _sizes(x.shape, last)
    _nonempty_volume("x", sizes)
    out: _Triple = _adaptive_output_size(output_size, sizes)
    return_indices = as_bool("return_indices", return_indices)

    y = _allocate(_shaped(n, c, out, last), x.dtype, "output_size")
    indices = _allocate(y.shape if return_indices else (0, 0, 0, 0, 0), np.int64, "output_size")
    if y.size:
        x = contiguous(x)
        forward = _core.adaptive_max_pool3d_ndhwc_forward if last else _core.adaptive_max_pool3d_forward
        work = _work(c, 8 * sizes[0] * sizes[1] * sizes[2], out[0] * out[1] * out[2], 8)
        for part in sub_batches(n, work):
            for begin, end in _band_edges(out[0], _row_bands(work, c, sizes[0], out[0], 0)):
                forward(x[part], y[part], indices[part], begin, end, kernel_threads(elements=x[part].size))
    if return_indices:
        return _unbatch(y, unbatched), _unbatch(indices, unbatched)
    return _unbatch(y, unbatched)
