"""Softmax and log-softmax along one dimension, and their gradients, as ``torch.nn.functional``'s.

Each slice along ``dim`` has its maximum subtracted before the exponential, so large inputs
neither overflow nor lose precision; sums run in float64. The array is seen as (outer, length,
inner): a row of ``length`` contiguous elements when ``dim`` is the last dimension, else blocks
of neighbouring columns ``inner`` elements apart (``dim=1`` of (N, C, H, W) arrays), each
handled by one thread. Gradients are computed from the forward's output alone.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .. import _core
from .._batching import sub_batches
from .._checks import as_float_array, as_int, contiguous
from .._threads import kernel_threads

__all__ = ["log_softmax", "log_softmax_backward", "softmax", "softmax_backward"]

_ANY_NDIM = range(33)


def _axis(shape: tuple[int, ...], dim: object) -> tuple[int, int, int]:
    """(outer, length, inner) of an array of ``shape`` along ``dim`` (negative counts from the end)."""
    ndim = max(len(shape), 1)
    axis = as_int("dim", dim)
    if not -ndim <= axis < ndim:
        raise IndexError(f"dim must be in [{-ndim}, {ndim - 1}] for an array of shape {shape}, got {axis}")
    if not shape:
        return 1, 1, 1
    axis %= ndim
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])


def _forward(x: object, dim: object, log_out: bool) -> NDArray[Any]:
    array = as_float_array("x", x, _ANY_NDIM)
    outer, length, inner = _axis(array.shape, dim)
    source = contiguous(array).reshape(outer, length, inner)
    out = np.empty(source.shape, dtype=array.dtype)
    for part in sub_batches(outer, 3 * length * inner):
        _core.softmax_forward(source[part], out[part], log_out, kernel_threads(elements=source[part].size))
    return out.reshape(array.shape)


def _backward(grad_out: object, output: object, dim: object, log_out: bool) -> NDArray[Any]:
    grad = as_float_array("grad_out", grad_out, _ANY_NDIM)
    y = as_float_array("output", output, _ANY_NDIM)
    if grad.shape != y.shape or grad.dtype != y.dtype:
        raise ValueError(
            f"grad_out must have the output's shape and dtype {y.shape} {y.dtype}, got {grad.shape} {grad.dtype}"
        )
    outer, length, inner = _axis(y.shape, dim)
    grad3 = contiguous(grad).reshape(outer, length, inner)
    y3 = contiguous(y).reshape(outer, length, inner)
    grad_in = np.empty(y3.shape, dtype=y.dtype)
    for part in sub_batches(outer, 3 * length * inner):
        _core.softmax_backward(grad3[part], y3[part], grad_in[part], log_out, kernel_threads(elements=grad3[part].size))
    return grad_in.reshape(y.shape)


def softmax(x: NDArray[Any], dim: int) -> NDArray[Any]:
    """``exp(x) / sum(exp(x))`` along ``dim``, as ``torch.nn.functional.softmax``.

    Parameters
    ----------
    x : ndarray of float32 or float64, any shape
    dim : int
        The dimension to normalise along (negative counts from the end).

    Returns
    -------
    ndarray
        x's shape and dtype; each slice along ``dim`` sums to 1. A slice holding NaN, or only
        -inf, or +inf, comes out NaN, as in PyTorch.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import softmax
    >>> softmax(np.array([[0.0, np.log(3.0)], [1000.0, 1000.0]]), dim=1)
    array([[0.25, 0.75],
           [0.5 , 0.5 ]])
    """
    return _forward(x, dim, False)


def log_softmax(x: NDArray[Any], dim: int) -> NDArray[Any]:
    """``x - log(sum(exp(x)))`` along ``dim``, as ``torch.nn.functional.log_softmax``.

    Parameters
    ----------
    x : ndarray of float32 or float64, any shape
    dim : int
        The dimension to normalise along (negative counts from the end).

    Returns
    -------
    ndarray
        x's shape and dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import log_softmax
    >>> np.exp(log_softmax(np.array([0.0, np.log(3.0)]), dim=0))
    array([0.25, 0.75])
    """
    return _forward(x, dim, True)


def softmax_backward(grad_out: NDArray[Any], output: NDArray[Any], dim: int) -> NDArray[Any]:
    """Input gradient of :func:`softmax` from its output: ``y * (grad_out - sum(grad_out * y))``.

    Parameters
    ----------
    grad_out : ndarray
        Gradient of the softmax's output.
    output : ndarray, grad_out's shape and dtype
        The softmax's output ``y``.
    dim : int
        The forward's dimension.

    Returns
    -------
    ndarray
        The input's gradient, grad_out's shape and dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import softmax, softmax_backward
    >>> y = softmax(np.array([0.0, 0.0]), dim=0)
    >>> softmax_backward(np.array([1.0, 0.0]), y, dim=0)
    array([ 0.25, -0.25])
    """
    return _backward(grad_out, output, dim, False)


def log_softmax_backward(grad_out: NDArray[Any], output: NDArray[Any], dim: int) -> NDArray[Any]:
    """Input gradient of :func:`log_softmax` from its output: ``grad_out - exp(y) * sum(grad_out)``.

    Parameters
    ----------
    grad_out : ndarray
        Gradient of the log-softmax's output.
    output : ndarray, grad_out's shape and dtype
        The log-softmax's output ``y``.
    dim : int
        The forward's dimension.

    Returns
    -------
    ndarray
        The input's gradient, grad_out's shape and dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import log_softmax, log_softmax_backward
    >>> y = log_softmax(np.array([0.0, 0.0]), dim=0)
    >>> log_softmax_backward(np.array([1.0, 0.0]), y, dim=0)
    array([ 0.5, -0.5])
    """
    return _backward(grad_out, output, dim, True)
