"""Reference 3-D pooling in pure NumPy, written from the formulas: the test oracle for
``convx.functional.pooling3d``.

Signatures mirror the public functions (and ``torch.nn.functional``), padding in every spelling
they take (per side, 'valid', 'same', 'same_lower'), channels first only; arguments are trusted.
Everything is vectorised over N and C and over the outputs; the loops run over kernel taps in
window order (depth, then rows, then columns) or over adaptive outputs. Indices of maxima are
flat ``d * H * W + h * W + w`` positions in each unpadded volume, as PyTorch's.
"""

from __future__ import annotations

import itertools

import numpy as np

from .._shapes import adaptive_window, pool_output_size
from .pooling import _taps_within

__all__ = [
    "adaptive_avg_pool3d",
    "adaptive_avg_pool3d_backward",
    "adaptive_max_pool3d",
    "avg_pool3d",
    "avg_pool3d_backward",
    "max_pool3d",
    "max_pool3d_backward",
]


def _triple(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value, value)


def _batched(x: np.ndarray) -> tuple[np.ndarray, bool]:
    x = np.asarray(x)
    return (x[np.newaxis], True) if x.ndim == 4 else (x, False)


def _unbatch(array: np.ndarray, unbatched: bool) -> np.ndarray:
    return array[0] if unbatched else array


def _sides(padding, sizes, kernel, stride, dilation) -> tuple:
    """``padding`` as ((front, back), (top, bottom), (left, right)).

    ``p`` pads every side, ``(pd, ph, pw)`` both sides of each axis, nested pairs each side as
    given; ``'valid'`` pads nothing. ``'same'`` (ONNX's SAME_UPPER) pads an axis of length ``n`` by
    the least total that gives ``ceil(n / s)`` windows, ``(ceil(n / s) - 1) * s + d * (k - 1) + 1 -
    n`` (not below 0), half before and the odd one after; ``'same_lower'`` puts the odd one before.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0), (0, 0)
        sides = []
        for n, k, s, d in zip(sizes, kernel, stride, dilation):
            total = max((-(-n // s) - 1) * s + d * (k - 1) + 1 - n, 0)
            half, rest = total // 2, total - total // 2
            sides.append((half, rest) if padding == "same" else (rest, half))
        return tuple(sides)
    if isinstance(padding, (tuple, list)) and isinstance(padding[0], (tuple, list)):
        return tuple((int(before), int(after)) for before, after in padding)
    return tuple((p, p) for p in _triple(padding))


def _geometry(sizes, kernel_size, stride, padding, dilation, ceil_mode):
    """kernel, stride, the padding before each axis, dilation, the output sizes and the padding
    after each axis."""
    kernel = _triple(kernel_size)
    stride = kernel if stride is None else _triple(stride)
    dilation = _triple(dilation)
    sides = _sides(padding, sizes, kernel, stride, dilation)
    before, after = tuple(b for b, _ in sides), tuple(a for _, a in sides)
    out = tuple(
        pool_output_size(size, k, s, b, d, ceil_mode, a)
        for size, k, s, b, a, d in zip(sizes, kernel, stride, before, after, dilation)
    )
    return kernel, stride, before, dilation, out, after


def _tap_positions(offsets, out, stride, padding, dilation):
    """Per axis, the input position ``o*s - p + t*d`` of tap ``t`` for every output ``o``."""
    return [np.arange(o) * s - p + t * d for t, o, s, p, d in zip(offsets, out, stride, padding, dilation)]


def _gather(x, positions, sizes):
    """x at the (clipped) positions, shape (N, C, D_out, H_out, W_out), and which positions are inside."""
    d, h, w = (np.clip(pos, 0, size - 1) for pos, size in zip(positions, sizes))
    inside = [(pos >= 0) & (pos < size) for pos, size in zip(positions, sizes)]
    mask = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    return x[:, :, d[:, None, None], h[None, :, None], w[None, None, :]], mask


def max_pool3d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """y = max over the in-input taps of each window (padding is -inf): the last NaN if any, else the first maximum.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.reference.pooling3d import max_pool3d
    >>> max_pool3d(np.arange(8.0).reshape(1, 2, 2, 2), 2, return_indices=True)
    (array([[[[7.]]]]), array([[[[7]]]]))
    """
    x, unbatched = _batched(x)
    n, c, *sizes = x.shape
    kernel, stride, padding, dilation, out, after = _geometry(sizes, kernel_size, stride, padding, dilation, ceil_mode)
    best = np.full((n, c, *out), -np.inf, dtype=x.dtype)
    where = np.full((n, c, *out), -1, dtype=np.int64)
    for offsets in itertools.product(*(range(k) for k in kernel)):
        positions = _tap_positions(offsets, out, stride, padding, dilation)
        value, inside = _gather(x, positions, sizes)
        # The first tap inside the input is taken whatever it holds (even -inf), as PyTorch starts there.
        take = inside & ((where < 0) | (value > best) | np.isnan(value))
        flat = (positions[0][:, None, None] * sizes[1] + positions[1][None, :, None]) * sizes[2] + positions[2]
        best = np.where(take, value, best)
        where = np.where(take, flat, where)
    if return_indices:
        return _unbatch(best, unbatched), _unbatch(where, unbatched)
    return _unbatch(best, unbatched)


def max_pool3d_backward(grad_out, indices, input_shape):
    """grad_x[n, c].flat[indices[n, c, od, oh, ow]] += grad_out[n, c, od, oh, ow]."""
    grad_out, unbatched = _batched(grad_out)
    indices, _ = _batched(indices)
    n, c = grad_out.shape[:2]
    volume = int(np.prod(input_shape[-3:]))
    outputs = int(np.prod(grad_out.shape[2:]))
    grad_x = np.zeros((n * c, volume), dtype=grad_out.dtype)
    np.add.at(grad_x, (np.arange(n * c)[:, None], indices.reshape(n * c, outputs)), grad_out.reshape(n * c, outputs))
    return grad_x.reshape(tuple(input_shape))


def _avg_divisor(sizes, out, kernel, stride, padding, dilation, count_include_pad, divisor_override, after):
    """(D_out, H_out, W_out) divisors: the override; the window's taps inside the padded input,
    ``padding`` before and ``after`` after each axis (a ceil_mode window clipped to it); or those
    inside the input."""
    if divisor_override is not None:
        return np.full(out, divisor_override, dtype=np.int64)
    counts = [_taps_within(o, k, s, p, d, (-p, size + a) if count_include_pad else (0, size))
              for size, o, k, s, p, d, a in zip(sizes, out, kernel, stride, padding, dilation, after)]
    return counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :]


def avg_pool3d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None,
               dilation=1):
    """y = (sum of the in-input taps of each window) / divisor.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.reference.pooling3d import avg_pool3d
    >>> avg_pool3d(np.arange(8.0).reshape(1, 2, 2, 2), 2)
    array([[[[3.5]]]])
    """
    x, unbatched = _batched(x)
    n, c, *sizes = x.shape
    kernel, stride, padding, dilation, out, after = _geometry(sizes, kernel_size, stride, padding, dilation, ceil_mode)
    total = np.zeros((n, c, *out), dtype=x.dtype)
    with np.errstate(invalid="ignore"):  # inf - inf is NaN, as in the kernels
        for offsets in itertools.product(*(range(k) for k in kernel)):
            value, inside = _gather(x, _tap_positions(offsets, out, stride, padding, dilation), sizes)
            total += np.where(inside, value, 0)
    divisor = _avg_divisor(sizes, out, kernel, stride, padding, dilation, count_include_pad, divisor_override, after)
    return _unbatch(total / divisor.astype(x.dtype), unbatched)


def avg_pool3d_backward(
    grad_out, input_shape, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
    divisor_override=None, dilation=1,
):
    """The adjoint of :func:`avg_pool3d`: every in-input tap of a window gets grad_out / divisor."""
    grad_out, unbatched = _batched(grad_out)
    n, c = grad_out.shape[:2]
    sizes = tuple(input_shape[-3:])
    kernel, stride, padding, dilation, out, after = _geometry(sizes, kernel_size, stride, padding, dilation, ceil_mode)
    share = grad_out / _avg_divisor(sizes, out, kernel, stride, padding, dilation, count_include_pad,
                                    divisor_override, after).astype(grad_out.dtype)
    grad_x = np.zeros((n, c, *sizes), dtype=grad_out.dtype)
    for offsets in itertools.product(*(range(k) for k in kernel)):
        d, h, w = _tap_positions(offsets, out, stride, padding, dilation)
        d_in, h_in, w_in = ((pos >= 0) & (pos < size) for pos, size in zip((d, h, w), sizes))
        # One tap maps distinct outputs to distinct inputs, so a fancy-indexed += is exact.
        grad_x[:, :, d[d_in][:, None, None], h[h_in][None, :, None], w[w_in][None, None, :]] += (
            share[:, :, d_in][:, :, :, h_in][:, :, :, :, w_in])
    return _unbatch(grad_x, unbatched)


def _adaptive_size(output_size, sizes):
    return tuple(size if o is None else o for o, size in zip(_triple(output_size), sizes))


def _adaptive_windows(sizes, out):
    """Every adaptive output (od, oh, ow) with its window's slices."""
    for index in itertools.product(*(range(o) for o in out)):
        yield index, tuple(slice(*adaptive_window(i, size, o)) for i, size, o in zip(index, sizes, out))


def adaptive_avg_pool3d(x, output_size):
    """y[..., od, oh, ow] = mean of x over ``[floor(o*In/Out), ceil((o+1)*In/Out))`` along each axis.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.reference.pooling3d import adaptive_avg_pool3d
    >>> adaptive_avg_pool3d(np.arange(8.0).reshape(1, 2, 2, 2), (1, 1, 2))
    array([[[[3., 4.]]]])
    """
    x, unbatched = _batched(x)
    n, c, *sizes = x.shape
    out = _adaptive_size(output_size, sizes)
    y = np.empty((n, c, *out), dtype=x.dtype)
    with np.errstate(invalid="ignore"):  # inf - inf is NaN, as in the kernels
        for index, window in _adaptive_windows(sizes, out):
            y[(slice(None), slice(None), *index)] = x[(..., *window)].mean(axis=(2, 3, 4))
    return _unbatch(y, unbatched)


def adaptive_avg_pool3d_backward(grad_out, input_shape):
    """Every element of window (od, oh, ow) gets grad_out[..., od, oh, ow] / (window size)."""
    grad_out, unbatched = _batched(grad_out)
    n, c, *out = grad_out.shape
    sizes = tuple(input_shape[-3:])
    grad_x = np.zeros((n, c, *sizes), dtype=grad_out.dtype)
    for index, window in _adaptive_windows(sizes, out):
        count = np.prod([s.stop - s.start for s in window])
        grad_x[(..., *window)] += grad_out[(slice(None), slice(None), *index)][..., None, None, None] / count
    return _unbatch(grad_x, unbatched)


def adaptive_max_pool3d(x, output_size, return_indices=False):
    """y[..., od, oh, ow] = max of x over the adaptive window: the last NaN if any, else the first maximum.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.reference.pooling3d import adaptive_max_pool3d
    >>> adaptive_max_pool3d(np.arange(8.0).reshape(1, 2, 2, 2), (1, 1, 2), return_indices=True)
    (array([[[[6., 7.]]]]), array([[[[6, 7]]]]))
    """
    x, unbatched = _batched(x)
    n, c, *sizes = x.shape
    out = _adaptive_size(output_size, sizes)
    y = np.empty((n, c, *out), dtype=x.dtype)
    indices = np.empty((n, c, *out), dtype=np.int64)
    for index, window in _adaptive_windows(sizes, out):
        extent = tuple(s.stop - s.start for s in window)
        # Explicit sizes: -1 cannot be inferred for an empty batch.
        values = x[(..., *window)].reshape(n, c, int(np.prod(extent)))
        is_nan = np.isnan(values)
        last_nan = values.shape[-1] - 1 - np.argmax(is_nan[..., ::-1], axis=-1)
        first_max = np.argmax(np.where(is_nan, -np.inf, values), axis=-1)
        local = np.where(is_nan.any(axis=-1), last_nan, first_max)
        at = (slice(None), slice(None), *index)
        y[at] = np.take_along_axis(values, local[..., None], axis=-1)[..., 0]
        d, h, w = np.unravel_index(local, extent)
        indices[at] = ((d + window[0].start) * sizes[1] + h + window[1].start) * sizes[2] + w + window[2].start
    if return_indices:
        return _unbatch(y, unbatched), _unbatch(indices, unbatched)
    return _unbatch(y, unbatched)
