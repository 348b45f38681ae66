"""Padding of the last one or two axes (constant, reflect, replicate, circular) and its gradient.

:func:`pad` follows ``torch.nn.functional.pad`` for paddings of the last one or two axes. Each padded
axis is described by a table naming, for every output position, the input element it copies (or none,
for the constant fill); ``convx._core``'s gather kernels apply the two tables to every plane, and their
backward sends each output's gradient back to the element it copied. The tables are the ones
Conv2d's ``padding_mode`` reads through (``convx._shapes.padded_source``).
"""

from __future__ import annotations

import math
import numbers
from typing import Literal, Sequence

import numpy as np
from numpy.typing import NDArray

from .. import _core
from .._batching import sub_batches
from .._checks import as_float_array, as_int, as_shape, contiguous
from .._shapes import counting_run, padded_source
from .._threads import kernel_threads
from .._typing import AnyArray, Float, Shape
from .pooling import _ADDRESSABLE_BYTES, _allocate

__all__ = ["pad", "pad_backward"]

PadMode = Literal["constant", "reflect", "replicate", "circular"]
PAD_MODES = ("constant", "reflect", "replicate", "circular")


def _check_pad(pad: object) -> tuple[int, ...]:
    if isinstance(pad, np.ndarray) or not isinstance(pad, (tuple, list)):
        raise TypeError(f"pad must be a tuple of ints, got {pad!r} of type {type(pad).__name__}")
    if len(pad) % 2:
        raise ValueError(f"pad must have an even number of entries (before, after per axis), got {tuple(pad)!r}")
    if len(pad) not in (2, 4):
        raise ValueError(
            f"pad must be (left, right) or (left, right, top, bottom): convx pads the last one or two axes, got "
            f"{tuple(pad)!r}"
        )
    return tuple(as_int(f"pad[{k}]", v) for k, v in enumerate(pad))


def _check_mode(mode: object, n_axes: int, ndim: int, shape: tuple[int, ...], name: str) -> str:
    if not isinstance(mode, str) or mode not in PAD_MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, PAD_MODES))}, got {mode!r}")
    if mode == "constant":
        if ndim < n_axes:
            raise ValueError(f"{name} of shape {shape} has fewer axes than the {n_axes} that pad would pad")
    elif ndim not in (n_axes + 1, n_axes + 2):
        raise ValueError(
            f"mode={mode!r} with {2 * n_axes} pad entries needs a {n_axes + 1}-D or {n_axes + 2}-D {name} (as "
            f"PyTorch), got shape {shape}"
        )
    return mode


def _positions(count: int, where: str) -> NDArray[np.int64]:
    if count * 8 > _ADDRESSABLE_BYTES:  # refused before asking the allocator, as _allocate does
        raise MemoryError(f"{where} asks for a padded axis of {count} elements, more than a process can address")
    try:
        return np.arange(count, dtype=np.int64)
    except (ValueError, MemoryError) as error:
        kind = MemoryError if isinstance(error, MemoryError) else ValueError
        raise kind(f"{where} asks for a padded axis of {count} elements, too large ({error})") from None


def _table(size: int, before: int, after: int, mode: str, axis: str, least: int = 0) -> NDArray[np.int64]:
    """The input element each output position along one axis copies (-1: the constant fill); reflect and
    replicate leave at least ``least`` elements."""
    out_size = size + before + after
    where = f"pad ({before}, {after}) of the {axis} axis, of size {size}"
    if mode == "constant":
        if size + min(before, 0) + min(after, 0) < 0:
            raise ValueError(f"{where} crops more than the axis holds (negative pads crop first, as PyTorch)")
        source = _positions(out_size, where) - before
        source[(source < 0) | (source >= size)] = -1
        return source
    if size < 1:
        raise ValueError(f"mode={mode!r} needs a non-empty {axis} axis to copy from, got {where}")
    if mode == "circular":
        first = max(-before, 0)
        kept = size - first - max(-after, 0)
        lead, trail = max(before, 0), max(after, 0)
        if kept < 0 or lead > kept or trail > kept:
            raise ValueError(
                f"mode='circular' wraps around at most once: {where} needs each positive pad at most the "
                f"{kept} elements left after the negative ones crop"
            )
        positions = _positions(out_size, where) - lead
        return first + positions % kept if kept else positions
    if mode == "reflect" and (before >= size or after >= size):
        raise ValueError(f"mode='reflect' needs each pad smaller than the axis it pads, got {where}")
    if out_size < least:
        raise ValueError(f"{where} would leave {out_size} elements, fewer than {least}")
    return padded_source(_positions(out_size, where) - before, size, "reflect" if mode == "reflect" else "edge")


def _plan(
    shape: tuple[int, ...], pad_arg: object, mode: object, name: str
) -> tuple[int, str, NDArray[np.int64], NDArray[np.int64], tuple[int, ...]]:
    """(padded axes, mode, row table, column table, output shape)."""
    pads = _check_pad(pad_arg)
    n_axes = len(pads) // 2
    mode = _check_mode(mode, n_axes, len(shape), shape, name)
    # PyTorch's one-axis reflect and replicate refuse an empty output, its two-axis ones do not.
    cols = _table(shape[-1], pads[0], pads[1], mode, "last", 1 if n_axes == 1 else 0)
    if n_axes == 2:
        rows = _table(shape[-2], pads[2], pads[3], mode, "second-last")
        out_shape = (*shape[:-2], len(rows), len(cols))
    else:
        rows = np.zeros(1, dtype=np.int64)
        out_shape = (*shape[:-1], len(cols))
    return n_axes, mode, rows, cols, out_shape


def _planes(shape: Sequence[int], n_axes: int) -> tuple[int, int, int]:
    """``shape`` as (planes, height, width), a single padded axis with height 1."""
    height = shape[-2] if n_axes == 2 else 1
    return math.prod(shape[:-n_axes]), height, shape[-1]


def pad(
    x: NDArray[Float], pad: Sequence[int], mode: PadMode = "constant", value: float | None = None
) -> NDArray[Float]:
    """Pad (or crop) the last one or two axes of ``x``, as ``torch.nn.functional.pad``.

    ``pad`` is ``(left, right)`` for the last axis, or ``(left, right, top, bottom)`` for the last two.
    What fills the padding:

    * ``'constant'``: ``value`` (default 0). Negative pads crop, down to an empty axis.
    * ``'reflect'``: the mirror image without the edge element (``[1, 0, 1, 2, 3, 2]`` for ``[0..3]``
      padded by one), each pad smaller than its axis.
    * ``'replicate'``: copies of the edge element.
    * ``'circular'``: the other end of the axis, negative pads cropping first; each positive pad at
      most what is left of the axis.

    Non-constant modes take ``(C, W)``/``(N, C, W)`` arrays with two pad entries and
    ``(C, H, W)``/``(N, C, H, W)`` arrays with four (as PyTorch), a constant fill any array.

    Parameters
    ----------
    x : ndarray of float32 or float64
        Any memory layout; not modified.
    pad : tuple of 2 or 4 ints
        Elements added before and after the last axis, then the second-last; negative ones crop.
    mode : {'constant', 'reflect', 'replicate', 'circular'}, default 'constant'
    value : float, optional
        The constant fill (0 where None); only with ``mode='constant'``.

    Returns
    -------
    y : ndarray
        ``x``'s shape with the padded axes grown by their pads, ``x``'s dtype.

    Raises
    ------
    TypeError
        For a dtype other than float32/float64, non-int pads or a non-real value.
    ValueError
        For an odd or unsupported pad length, an unknown mode, a ``value`` with a non-constant mode,
        a wrong ndim for the mode or pads the mode cannot fill.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import pad
    >>> x = np.arange(4.0).reshape(1, 1, 4)
    >>> pad(x, (2, 1), mode="reflect")
    array([[[2., 1., 0., 1., 2., 3., 2.]]])
    >>> pad(x, (1, -2), value=9.0)
    array([[[9., 0., 1.]]])
    """
    x = as_float_array("x", x, range(1, 33))
    n_axes, kind, rows, cols, out_shape = _plan(x.shape, pad, mode, "x")
    fill = 0.0
    if value is not None:
        if kind != "constant":
            raise ValueError(f"value is the fill of mode='constant' only, got value={value!r} with mode={kind!r}")
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"value must be a real number, got {value!r} of type {type(value).__name__}")
        fill = float(value)
    y = _allocate(out_shape, x.dtype, "pad")
    if y.size:
        n_planes, height, width = _planes(x.shape, n_axes)
        planes = contiguous(x).reshape(n_planes, height, width)
        out = y.reshape(n_planes, len(rows), len(cols))
        run = counting_run(cols)
        for part in sub_batches(n_planes, 2 * len(rows) * len(cols)):
            _core.gather2d_forward(planes[part], out[part], rows, cols, *run, fill,
                                   kernel_threads(elements=out[part].size))
    return y


def pad_backward(
    grad_out: NDArray[Float], input_shape: Shape, pad: Sequence[int], mode: PadMode = "constant"
) -> NDArray[Float]:
    """Gradient of :func:`pad` with respect to its input.

    Each output element's gradient is added to the input element it copied (none for the constant
    fill), in output order.

    Parameters
    ----------
    grad_out : ndarray of float32 or float64
        Gradient of the loss with respect to ``pad(x, pad, mode)``, of its shape.
    input_shape : tuple of int
        The shape of the forward's ``x``.
    pad, mode
        As given to :func:`pad`.

    Returns
    -------
    grad_x : ndarray, shape ``input_shape``
        Same dtype as ``grad_out``.

    Raises
    ------
    TypeError, ValueError
        As :func:`pad`, and where ``grad_out`` does not have the padded shape.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import pad_backward
    >>> pad_backward(np.ones((1, 1, 7)), (1, 1, 4), (2, 1), mode="reflect")
    array([[[1., 2., 3., 1.]]])
    """
    grad_out = as_float_array("grad_out", grad_out, range(1, 33))
    shape = as_shape("input_shape", input_shape, range(1, 33))
    n_axes, _, rows, cols, out_shape = _plan(shape, pad, mode, "input_shape")
    if grad_out.shape != out_shape:
        raise ValueError(
            f"grad_out must have the padded shape {out_shape} of input_shape {shape} and pad {tuple(pad)}, got "
            f"shape {grad_out.shape}"
        )
    grad_x: AnyArray = _allocate(shape, grad_out.dtype, "input_shape")
    if grad_x.size:
        n_planes, height, width = _planes(shape, n_axes)
        grad_planes = contiguous(grad_out).reshape(n_planes, len(rows), len(cols))
        planes = grad_x.reshape(n_planes, height, width)
        for part in sub_batches(n_planes, height * width + 2 * len(rows) * len(cols)):
            _core.gather2d_backward(grad_planes[part], planes[part], rows, cols,
                                    kernel_threads(elements=planes[part].size))
    return grad_x
