"""Resampling: interpolation (nearest, nearest-exact, bilinear) and pixel shuffling, with their gradients.

:func:`interpolate` follows ``torch.nn.functional.interpolate`` for 4-D (N, C, H, W) inputs: the
same output sizes, the same source indices (computed in the same precisions: float32 for the nearest
modes, the input's dtype for bilinear) and the same weights. The per-axis index and weight tables are
computed here, once per call; the kernels of ``convx._core`` apply them to every (image, channel)
plane, one plane per thread.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from .. import _core
from .._batching import sub_batches
from .._checks import as_bool, as_float_array, as_int, as_shape, contiguous
from .._shapes import counting_run
from .._threads import kernel_threads
from .._typing import AnyArray, Float, Shape
from .pooling import _allocate

__all__ = [
    "interpolate",
    "interpolate_backward",
    "pixel_shuffle",
    "pixel_unshuffle",
]

InterpolateMode = Literal["nearest", "nearest-exact", "bilinear"]
INTERPOLATE_MODES = ("nearest", "nearest-exact", "bilinear")
_TORCH_ONLY_MODES = ("linear", "bicubic", "trilinear", "area")

SizeArg = int | tuple[int, int] | None
ScaleArg = float | tuple[float, float] | None


def _check_mode(mode: object, align_corners: object) -> tuple[str, bool]:
    """``mode`` checked, and ``align_corners`` as a bool (False where None)."""
    if not isinstance(mode, str) or mode not in INTERPOLATE_MODES:
        hint = " (not implemented in convx)" if mode in _TORCH_ONLY_MODES else ""
        raise ValueError(f"mode must be one of {', '.join(map(repr, INTERPOLATE_MODES))}, got {mode!r}{hint}")
    if align_corners is None:
        return mode, False
    if mode != "bilinear":
        raise ValueError(
            f"align_corners can only be set with mode='bilinear' (as PyTorch: it means nothing to the nearest "
            f"modes), got align_corners={align_corners!r} with mode={mode!r}; leave it None"
        )
    return mode, as_bool("align_corners", align_corners)


def _scale(name: str, value: object) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive real number, got {value!r} of type {type(value).__name__}")
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a positive finite number, got {number}")
    return number


def _pair_of(name: str, value: object, convert: Any) -> tuple[Any, Any]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(
                f"{name} must be one value or a pair (height, width) for a 4-D input, got a sequence of length "
                f"{len(value)}: {value!r}"
            )
        return convert(f"{name}[0]", value[0]), convert(f"{name}[1]", value[1])
    if isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a number or a tuple of two, got an ndarray")
    one = convert(name, value)
    return one, one


def _plan(
    in_hw: tuple[int, int], size: object, scale_factor: object, recompute_scale_factor: object
) -> tuple[tuple[int, int], tuple[float | None, float | None]]:
    """Output (height, width) and the scale factors the source indices use (None: from the sizes)."""
    if size is not None and scale_factor is not None:
        raise ValueError(f"only one of size and scale_factor may be given, got size={size!r} and "
                         f"scale_factor={scale_factor!r}")
    if size is None and scale_factor is None:
        raise ValueError("one of size and scale_factor must be given, got neither")
    recompute = False if recompute_scale_factor is None else as_bool("recompute_scale_factor", recompute_scale_factor)
    if size is not None:
        if recompute:
            raise ValueError("recompute_scale_factor=True is meaningless with an explicit size; give scale_factor")
        out = _pair_of("size", size, lambda name, v: as_int(name, v, 1))
        return out, (None, None)
    scales = _pair_of("scale_factor", scale_factor, _scale)
    out_sizes = []
    for axis, (length, factor) in enumerate(zip(in_hw, scales)):
        product = float(length) * factor
        if not math.isfinite(product) or product >= 2**62:
            raise ValueError(f"scale_factor {scale_factor!r} makes an output far too large for an input of {in_hw}")
        out_size = int(product)  # floor, as PyTorch
        if out_size < 1:
            raise ValueError(
                f"scale_factor={scale_factor!r} gives an empty output: {'height' if axis == 0 else 'width'} "
                f"{length} * {factor} = {product} < 1; sizes must be at least 1"
            )
        out_sizes.append(out_size)
    out_hw = (out_sizes[0], out_sizes[1])
    return out_hw, (None, None) if recompute else (scales[0], scales[1])


def _nearest_table(in_size: int, out_size: int, scale: float | None, exact: bool) -> NDArray[np.int64]:
    """The input index each output copies, as PyTorch's ``nearest_idx`` / ``nearest_exact_idx`` (float32
    arithmetic whatever the dtype, the scale ``1 / scale_factor`` when one was given)."""
    positions = np.arange(out_size, dtype=np.int64)
    if not exact and out_size == in_size:
        return positions
    if not exact and out_size == 2 * in_size:
        return positions >> 1
    ratio = np.float32(1.0 / scale) if scale is not None else np.float32(in_size) / np.float32(out_size)
    if exact:
        # (o + 0.5) * ratio is exact in float64; rounding it to float32 is the float product's rounding.
        source = np.floor(((positions + 0.5) * np.float64(ratio)).astype(np.float32))
    else:
        source = np.floor(positions.astype(np.float32) * ratio)
    table: NDArray[np.int64] = np.minimum(source.astype(np.int64), in_size - 1)
    return table


def _linear_table(
    in_size: int, out_size: int, scale: float | None, align_corners: bool, dtype: np.dtype[Any]
) -> tuple[NDArray[np.int64], AnyArray]:
    """(out_size, 2) input indices and weights of linear interpolation along one axis, as PyTorch's
    ``compute_source_index_and_lambda`` (arithmetic in ``dtype``; equal sizes copy)."""
    positions = np.arange(out_size, dtype=np.int64)
    real = dtype.type
    if out_size == in_size:
        index0 = positions
        lambda1 = np.zeros(out_size, dtype=dtype)
    else:
        if align_corners:
            ratio = real(in_size - 1) / real(out_size - 1) if out_size > 1 else real(0)
        elif scale is not None:
            ratio = real(1.0 / scale)
        else:
            ratio = real(in_size) / real(out_size)
        if align_corners:
            source = ratio * positions.astype(dtype)
        else:
            source = (np.float64(ratio) * (positions + 0.5) - 0.5).astype(dtype)
            source = np.maximum(source, real(0))
        index0 = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
        lambda1 = np.clip(source - index0.astype(dtype), real(0), real(1)).astype(dtype)
    index1 = index0 + (index0 < in_size - 1)
    indices = np.stack([index0, index1], axis=1)
    weights = np.stack([real(1) - lambda1, lambda1], axis=1).astype(dtype)
    return np.ascontiguousarray(indices), np.ascontiguousarray(weights)


def _output_shape(
    shape: tuple[int, ...], size: object, scale_factor: object, mode: object, align_corners: object,
    recompute_scale_factor: object, name: str,
) -> tuple[tuple[int, int], tuple[float | None, float | None], str, bool]:
    mode, corners = _check_mode(mode, align_corners)
    if shape[2] < 1 or shape[3] < 1:
        raise ValueError(f"{name} must have a non-empty plane to interpolate, got shape {shape}")
    out_hw, scales = _plan((shape[2], shape[3]), size, scale_factor, recompute_scale_factor)
    return out_hw, scales, mode, corners


def _check_4d(name: str, ndim: int, shape: tuple[int, ...]) -> None:
    if ndim != 4:
        raise ValueError(
            f"{name} must be 4-dimensional (N, C, H, W), got shape {shape}; convx interpolates in 2-D only (a "
            f"(C, H, W) array needs its batch axis, x[None]: PyTorch reads 3-D input as 1-D (N, C, L))"
        )


def _work(plane: int, out_plane: int, mode: str) -> int:
    return plane + (5 if mode == "bilinear" else 2) * out_plane


def interpolate(
    x: NDArray[Float], size: SizeArg = None, scale_factor: ScaleArg = None, mode: InterpolateMode = "nearest",
    align_corners: bool | None = None, recompute_scale_factor: bool | None = None,
) -> NDArray[Float]:
    """Resize the planes of ``x``, as ``torch.nn.functional.interpolate`` (2-D modes).

    Each output element ``(i, j)`` reads source position ``(src(i), src(j))`` of its plane:

    * ``'nearest'``: ``floor(o * r)`` with ``r = 1 / scale_factor`` when a scale factor is used,
      else ``in / out`` (float32 arithmetic; equal sizes copy, doubled sizes take ``o // 2``), as
      PyTorch's legacy nearest;
    * ``'nearest-exact'``: ``floor((o + 0.5) * r)`` (pixel centres, as PIL and scikit-image);
    * ``'bilinear'``: ``r * (o + 0.5) - 0.5`` clamped at 0 (``align_corners=False``) or
      ``o * (in - 1) / (out - 1)`` (``align_corners=True``), blending the two neighbours along each
      axis by the distance to them.

    Source indices never exceed the input (the last element is repeated).

    Parameters
    ----------
    x : ndarray of float32 or float64, shape (N, C, H, W)
        Input with ``H, W >= 1``, any memory layout; not modified.
    size : int or (int, int), optional
        Output ``(out_h, out_w)``, positive. Exactly one of ``size`` and ``scale_factor`` is given.
    scale_factor : float or (float, float), optional
        Positive; the output size is ``floor(H * scale_factor)`` (and likewise for ``W``), at least 1.
    mode : {'nearest', 'nearest-exact', 'bilinear'}, default 'nearest'
    align_corners : bool, optional
        Bilinear only (None means False): map the corner pixels' centres onto each other instead of
        the corners of the planes.
    recompute_scale_factor : bool, optional
        With ``scale_factor``: True computes the source indices from the output size alone (as if
        ``size`` had been given), False or None from ``1 / scale_factor``.

    Returns
    -------
    y : ndarray, shape (N, C, out_h, out_w)
        Same dtype as ``x``.

    Raises
    ------
    TypeError
        For a dtype other than float32/float64 or non-numeric sizes and factors.
    ValueError
        For a wrong ndim, an empty plane, both or neither of ``size`` and ``scale_factor``,
        non-positive sizes, ``align_corners`` with a nearest mode or an unknown mode.

    See Also
    --------
    interpolate_backward : the gradient with respect to ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import interpolate
    >>> x = np.array([[[[0.0, 1.0], [2.0, 3.0]]]])
    >>> interpolate(x, scale_factor=2)[0, 0]
    array([[0., 0., 1., 1.],
           [0., 0., 1., 1.],
           [2., 2., 3., 3.],
           [2., 2., 3., 3.]])
    >>> interpolate(x, size=(2, 3), mode="bilinear", align_corners=True)[0, 0]
    array([[0. , 0.5, 1. ],
           [2. , 2.5, 3. ]])
    """
    x = as_float_array("x", x, range(33))
    _check_4d("x", x.ndim, x.shape)
    (out_h, out_w), scales, kind, corners = _output_shape(
        x.shape, size, scale_factor, mode, align_corners, recompute_scale_factor, "x"
    )
    n, c, height, width = x.shape
    y = _allocate((n, c, out_h, out_w), x.dtype, "size" if size is not None else "scale_factor")
    if y.size:
        planes = contiguous(x).reshape(n * c, height, width)
        out = y.reshape(n * c, out_h, out_w)
        parts = sub_batches(n * c, _work(height * width, out_h * out_w, kind))
        if kind == "bilinear":
            rows, row_weights = _linear_table(height, out_h, scales[0], corners, x.dtype)
            cols, col_weights = _linear_table(width, out_w, scales[1], corners, x.dtype)
            for part in parts:
                _core.bilinear2d_forward(planes[part], out[part], rows, row_weights, cols, col_weights,
                                         kernel_threads(elements=out[part].size))
        else:
            rows, cols = _nearest_tables(height, width, out_h, out_w, scales, kind)
            run = counting_run(cols)
            for part in parts:
                _core.gather2d_forward(planes[part], out[part], rows, cols, *run, 0.0,
                                       kernel_threads(elements=out[part].size))
    return y


def _nearest_tables(
    height: int, width: int, out_h: int, out_w: int, scales: tuple[float | None, float | None], kind: str
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    exact = kind == "nearest-exact"
    return _nearest_table(height, out_h, scales[0], exact), _nearest_table(width, out_w, scales[1], exact)


def interpolate_backward(
    grad_out: NDArray[Float], input_shape: Shape, size: SizeArg = None, scale_factor: ScaleArg = None,
    mode: InterpolateMode = "nearest", align_corners: bool | None = None,
    recompute_scale_factor: bool | None = None,
) -> NDArray[Float]:
    """Gradient of :func:`interpolate` with respect to its input.

    Every output's gradient goes back to the input elements it read, times the weight it read them
    with (the adjoint of the forward), summed in output order.

    Parameters
    ----------
    grad_out : ndarray of float32 or float64, shape (N, C, out_h, out_w)
        Gradient of the loss with respect to the output of ``interpolate(x, ...)``.
    input_shape : tuple of int
        ``(N, C, H, W)``, the shape of the forward's ``x``.
    size, scale_factor, mode, align_corners, recompute_scale_factor
        As given to :func:`interpolate`; they must produce ``grad_out``'s shape.

    Returns
    -------
    grad_x : ndarray, shape ``input_shape``
        Same dtype as ``grad_out``.

    Raises
    ------
    TypeError, ValueError
        As :func:`interpolate`, and where ``grad_out`` does not have the output's shape.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import interpolate_backward
    >>> interpolate_backward(np.ones((1, 1, 4, 4)), (1, 1, 2, 2), scale_factor=2)[0, 0]
    array([[4., 4.],
           [4., 4.]])
    """
    grad_out = as_float_array("grad_out", grad_out, range(33))
    shape = as_shape("input_shape", input_shape, (4,))
    _check_4d("grad_out", grad_out.ndim, grad_out.shape)
    (out_h, out_w), scales, kind, corners = _output_shape(
        shape, size, scale_factor, mode, align_corners, recompute_scale_factor, "input_shape"
    )
    n, c, height, width = shape
    if grad_out.shape != (n, c, out_h, out_w):
        raise ValueError(
            f"grad_out must have the output's shape {(n, c, out_h, out_w)} for input_shape {shape} and these "
            f"arguments, got shape {grad_out.shape}"
        )
    grad_x = _allocate(shape, grad_out.dtype, "input_shape")
    if grad_x.size:
        grad_planes = contiguous(grad_out).reshape(n * c, out_h, out_w)
        planes = grad_x.reshape(n * c, height, width)
        parts = sub_batches(n * c, _work(height * width, out_h * out_w, kind))
        if kind == "bilinear":
            rows, row_weights = _linear_table(height, out_h, scales[0], corners, grad_out.dtype)
            cols, col_weights = _linear_table(width, out_w, scales[1], corners, grad_out.dtype)
            for part in parts:
                _core.bilinear2d_backward(grad_planes[part], planes[part], rows, row_weights, cols, col_weights,
                                          kernel_threads(elements=planes[part].size))
        else:
            rows, cols = _nearest_tables(height, width, out_h, out_w, scales, kind)
            for part in parts:
                _core.gather2d_backward(grad_planes[part], planes[part], rows, cols,
                                        kernel_threads(elements=planes[part].size))
    return grad_x


def _factor(name: str, value: object) -> int:
    return as_int(name, value, 1)


def pixel_shuffle(x: NDArray[Float], upscale_factor: int) -> NDArray[Float]:
    """Rearrange ``(*, C * r**2, H, W)`` into ``(*, C, H * r, W * r)``, as ``torch.nn.functional.pixel_shuffle``.

    ``y[..., c, h * r + i, w * r + j] = x[..., c * r**2 + i * r + j, h, w]``.

    Parameters
    ----------
    x : ndarray of float32 or float64, shape ``(*, C * r**2, H, W)``
        At least 3-D, any memory layout; not modified.
    upscale_factor : int
        ``r``, positive; ``r**2`` must divide the channel count.

    Returns
    -------
    y : ndarray, shape ``(*, C, H * r, W * r)``
        A new C-contiguous array of ``x``'s dtype. Its gradient is ``pixel_unshuffle(grad_y, r)``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import pixel_shuffle
    >>> pixel_shuffle(np.arange(4.0).reshape(1, 4, 1, 1), 2)[0, 0]
    array([[0., 1.],
           [2., 3.]])
    """
    x = as_float_array("x", x, range(3, 33))
    r = _factor("upscale_factor", upscale_factor)
    *lead, channels, height, width = x.shape
    if channels % (r * r):
        raise ValueError(
            f"pixel_shuffle needs the channel count divisible by upscale_factor**2 = {r * r}, got x of shape "
            f"{x.shape} with {channels} channels"
        )
    c = channels // (r * r)
    k: int = len(lead)
    blocks = x.reshape(*lead, c, r, r, height, width)
    order = (*range(k), k, k + 3, k + 1, k + 4, k + 2)
    return np.array(blocks.transpose(order), order="C").reshape(*lead, c, height * r, width * r)


def pixel_unshuffle(x: NDArray[Float], downscale_factor: int) -> NDArray[Float]:
    """Rearrange ``(*, C, H * r, W * r)`` into ``(*, C * r**2, H, W)``, as ``torch.nn.functional.pixel_unshuffle``.

    The inverse of :func:`pixel_shuffle` (and its gradient).

    Parameters
    ----------
    x : ndarray of float32 or float64, shape ``(*, C, H * r, W * r)``
        At least 3-D, any memory layout; not modified.
    downscale_factor : int
        ``r``, positive; it must divide the height and width.

    Returns
    -------
    y : ndarray, shape ``(*, C * r**2, H, W)``
        A new C-contiguous array of ``x``'s dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import pixel_unshuffle
    >>> pixel_unshuffle(np.arange(4.0).reshape(1, 1, 2, 2), 2)[0, :, 0, 0]
    array([0., 1., 2., 3.])
    """
    x = as_float_array("x", x, range(3, 33))
    r = _factor("downscale_factor", downscale_factor)
    *lead, channels, height, width = x.shape
    if height % r or width % r:
        raise ValueError(
            f"pixel_unshuffle needs height and width divisible by downscale_factor = {r}, got x of shape {x.shape}"
        )
    k: int = len(lead)
    blocks = x.reshape(*lead, channels, height // r, r, width // r, r)
    order = (*range(k), k, k + 2, k + 4, k + 1, k + 3)
    return np.array(blocks.transpose(order), order="C").reshape(*lead, channels * r * r, height // r, width // r)
