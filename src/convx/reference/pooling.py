"""Slow, obviously-correct NumPy pooling, written from the formulas: the test oracle and the
benchmark baseline for ``convx.functional.pooling``.

Signatures mirror the public functions. Arguments are trusted (no validation). Everything is
vectorised over N and C; the loops run over kernel taps (max/avg pooling) or over outputs
(adaptive pooling), so each line reads like the formula it implements. The padding words and
the output sizes of the window sweeps are worked out here again from their definitions (not
with ``convx._shapes``, which the compiled ops use); adaptive windows come from there.
"""

from __future__ import annotations

import numpy as np

from .._shapes import adaptive_window


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _nchw(x: np.ndarray) -> tuple[np.ndarray, bool]:
    x = np.asarray(x)
    return (x[np.newaxis], True) if x.ndim == 3 else (x, False)


def _unbatch(array: np.ndarray, unbatched: bool) -> np.ndarray:
    return array[0] if unbatched else array


def _sides(padding, sizes, kernel, stride, dilation) -> tuple[tuple[int, int], tuple[int, int]]:
    """``padding`` as ((top, bottom), (left, right)).

    ``p`` pads every side, ``(ph, pw)`` both sides of each axis; ``'valid'`` pads nothing.
    ``'same'`` (ONNX's SAME_UPPER) pads an axis of length ``n`` by the least total that gives
    ``ceil(n / s)`` windows, ``(ceil(n / s) - 1) * s + d * (k - 1) + 1 - n`` (not below 0), half
    before and the odd one after; ``'same_lower'`` puts the odd one before.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        sides = []
        for n, k, s, d in zip(sizes, kernel, stride, dilation):
            total = max((-(-n // s) - 1) * s + d * (k - 1) + 1 - n, 0)
            half, rest = total // 2, total - total // 2
            sides.append((half, rest) if padding == "same" else (rest, half))
        return sides[0], sides[1]
    first, second = _pair(padding)
    return _pair(first), _pair(second)


def _out_size(size, kernel, stride, before, after, dilation, ceil_mode) -> int:
    """Windows of span ``d * (k - 1) + 1`` starting every ``s`` over ``before + size + after``:
    ``floor((size + before + after - span) / s) + 1``, rounded up instead with ``ceil_mode``,
    but never a last window starting in the trailing padding."""
    reach = size + before + after - dilation * (kernel - 1) - 1
    out = (-(-reach // stride) if ceil_mode else reach // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + before:
        out -= 1
    return out


def _taps(size, out_size, kernel, stride, padding, dilation):
    """For each tap t in order: positions o*stride - padding + t*dilation of every output o, and which are inside.

    ``padding`` is the padding before the axis. Taps that land outside the input for every output
    (all padding) are skipped: they add nothing, and a huge kernel over a tiny input has billions
    of them.
    """
    start = np.arange(out_size) * stride - padding
    first, end = 0, kernel
    if out_size > 0:
        first = max(0, -(int(start[-1]) // dilation))  # ceil(-start[-1] / dilation): the last window reaches 0
        end = min(kernel, (size - 1 - int(start[0])) // dilation + 1)  # the first window still inside
    for t in range(first, end):
        pos = start + t * dilation
        yield pos, (pos >= 0) & (pos < size)


def _geometry(x_shape, kernel_size, stride, padding, dilation, ceil_mode):
    """kernel, stride, ((top, bottom), (left, right)), dilation, out_h and out_w."""
    _, _, height, width = x_shape
    kernel = _pair(kernel_size)
    stride = kernel if stride is None else _pair(stride)
    dilation = _pair(dilation)
    sides = _sides(padding, (height, width), kernel, stride, dilation)
    out_h, out_w = (_out_size(size, k, s, before, after, d, ceil_mode)
                    for size, k, s, (before, after), d in zip((height, width), kernel, stride, sides, dilation))
    return kernel, stride, sides, dilation, out_h, out_w


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """y = max over the in-input taps of each window; NaN wins (the last one), else the first maximum."""
    x, unbatched = _nchw(x)
    n, c, height, width = x.shape
    (kh, kw), (sh, sw), ((ph, _), (pw, _)), (dh, dw), out_h, out_w = _geometry(
        x.shape, kernel_size, stride, padding, dilation, ceil_mode
    )
    best = np.full((n, c, out_h, out_w), -np.inf, dtype=x.dtype)
    where = np.full((n, c, out_h, out_w), -1, dtype=np.int64)
    # Row-major window order: i outer, j inner.
    for h, h_in in _taps(height, out_h, kh, sh, ph, dh):
        for w, w_in in _taps(width, out_w, kw, sw, pw, dw):
            value = x[:, :, np.clip(h, 0, height - 1)[:, None], np.clip(w, 0, width - 1)[None, :]]
            inside = h_in[:, None] & w_in[None, :]
            # The first tap inside the input is taken whatever it holds (even -inf): PyTorch starts there.
            take = inside & ((where < 0) | (value > best) | np.isnan(value))
            best = np.where(take, value, best)
            where = np.where(take, h[:, None] * width + w[None, :], where)
    if return_indices:
        return _unbatch(best, unbatched), _unbatch(where, unbatched)
    return _unbatch(best, unbatched)


def max_pool2d_backward(grad_out, indices, input_shape):
    """grad_x[n, c].flat[indices[n, c, oh, ow]] += grad_out[n, c, oh, ow]."""
    grad_out, unbatched = _nchw(grad_out)
    indices, _ = _nchw(indices)
    n, c, out_h, out_w = grad_out.shape
    height, width = input_shape[-2:]
    grad_x = np.zeros((n * c, height * width), dtype=grad_out.dtype)
    planes = np.arange(n * c)[:, None]
    # Explicit sizes: -1 cannot be inferred for an empty batch.
    np.add.at(grad_x, (planes, indices.reshape(n * c, out_h * out_w)), grad_out.reshape(n * c, out_h * out_w))
    return grad_x.reshape(input_shape)


def _avg_divisor(height, width, out_h, out_w, kernel, stride, sides, dilation, count_include_pad,
                 divisor_override):
    """The (out_h, out_w) divisors: the override; or the window's taps inside the padded input
    (a ceil_mode window clipped to it); or those inside the input."""
    if divisor_override is not None:
        return np.full((out_h, out_w), divisor_override, dtype=np.int64)
    counts = [
        _taps_within(out_size, k, s, before, d, (-before, size + after) if count_include_pad else (0, size))
        for size, out_size, k, s, (before, after), d in zip((height, width), (out_h, out_w), kernel, stride, sides,
                                                            dilation)
    ]
    return counts[0][:, None] * counts[1][None, :]


def _taps_within(out_size, kernel, stride, before, dilation, bounds):
    """Per output o along one axis, how many of its window's taps ``o*stride - before + i*dilation``
    (i < kernel) lie in ``[low, high) = bounds``: from the first such i to the last, counted, not
    listed (a kernel may have 2**31 taps)."""
    low, high = bounds
    start = np.arange(out_size, dtype=np.int64) * stride - before
    first = np.maximum(0, -((start - low) // dilation))
    end = np.minimum(kernel, -((start - high) // dilation))
    return np.maximum(0, end - first)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None,
               dilation=1):
    """y = (sum of the in-input taps of each window) / divisor."""
    x, unbatched = _nchw(x)
    n, c, height, width = x.shape
    kernel, stride, sides, dilation, out_h, out_w = _geometry(x.shape, kernel_size, stride, padding, dilation,
                                                              ceil_mode)
    total = np.zeros((n, c, out_h, out_w), dtype=x.dtype)
    for h, h_in in _taps(height, out_h, kernel[0], stride[0], sides[0][0], dilation[0]):
        for w, w_in in _taps(width, out_w, kernel[1], stride[1], sides[1][0], dilation[1]):
            value = x[:, :, np.clip(h, 0, height - 1)[:, None], np.clip(w, 0, width - 1)[None, :]]
            total += np.where(h_in[:, None] & w_in[None, :], value, 0)
    divisor = _avg_divisor(height, width, out_h, out_w, kernel, stride, sides, dilation, count_include_pad,
                           divisor_override)
    return _unbatch(total / divisor.astype(x.dtype), unbatched)


def avg_pool2d_backward(
    grad_out, input_shape, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
    divisor_override=None, dilation=1,
):
    """The adjoint of avg_pool2d: every in-input tap of a window gets grad_out / divisor."""
    grad_out, unbatched = _nchw(grad_out)
    n, c = grad_out.shape[:2]
    height, width = input_shape[-2:]
    kernel, stride, sides, dilation, out_h, out_w = _geometry(
        (n, c, height, width), kernel_size, stride, padding, dilation, ceil_mode
    )
    divisor = _avg_divisor(height, width, out_h, out_w, kernel, stride, sides, dilation, count_include_pad,
                           divisor_override)
    share = grad_out / divisor.astype(grad_out.dtype)
    grad_x = np.zeros((n, c, height, width), dtype=grad_out.dtype)
    for h, h_in in _taps(height, out_h, kernel[0], stride[0], sides[0][0], dilation[0]):
        for w, w_in in _taps(width, out_w, kernel[1], stride[1], sides[1][0], dilation[1]):
            # One tap maps distinct outputs to distinct inputs, so a fancy-indexed += is exact.
            grad_x[:, :, h[h_in][:, None], w[w_in][None, :]] += share[:, :, h_in][:, :, :, w_in]
    return _unbatch(grad_x, unbatched)


def _adaptive_size(output_size, height, width):
    out_h, out_w = _pair(output_size)
    return (height if out_h is None else out_h), (width if out_w is None else out_w)


def adaptive_avg_pool2d(x, output_size):
    """y[..., oh, ow] = mean of x over rows [floor(oh*H/out_h), ceil((oh+1)*H/out_h)) and likewise columns."""
    x, unbatched = _nchw(x)
    n, c, height, width = x.shape
    out_h, out_w = _adaptive_size(output_size, height, width)
    y = np.empty((n, c, out_h, out_w), dtype=x.dtype)
    for oh in range(out_h):
        h0, h1 = adaptive_window(oh, height, out_h)
        for ow in range(out_w):
            w0, w1 = adaptive_window(ow, width, out_w)
            y[:, :, oh, ow] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return _unbatch(y, unbatched)


def adaptive_avg_pool2d_backward(grad_out, input_shape):
    """Every element of window (oh, ow) gets grad_out[..., oh, ow] / (window size)."""
    grad_out, unbatched = _nchw(grad_out)
    n, c, out_h, out_w = grad_out.shape
    height, width = input_shape[-2:]
    grad_x = np.zeros((n, c, height, width), dtype=grad_out.dtype)
    for oh in range(out_h):
        h0, h1 = adaptive_window(oh, height, out_h)
        for ow in range(out_w):
            w0, w1 = adaptive_window(ow, width, out_w)
            grad_x[:, :, h0:h1, w0:w1] += grad_out[:, :, oh, ow, None, None] / ((h1 - h0) * (w1 - w0))
    return _unbatch(grad_x, unbatched)


def adaptive_max_pool2d(x, output_size, return_indices=False):
    """y[..., oh, ow] = max of x over the adaptive window: the last NaN if any, else the first maximum."""
    x, unbatched = _nchw(x)
    n, c, height, width = x.shape
    out_h, out_w = _adaptive_size(output_size, height, width)
    y = np.empty((n, c, out_h, out_w), dtype=x.dtype)
    indices = np.empty((n, c, out_h, out_w), dtype=np.int64)
    for oh in range(out_h):
        h0, h1 = adaptive_window(oh, height, out_h)
        for ow in range(out_w):
            w0, w1 = adaptive_window(ow, width, out_w)
            window = x[:, :, h0:h1, w0:w1].reshape(n, c, (h1 - h0) * (w1 - w0))
            is_nan = np.isnan(window)
            last_nan = window.shape[-1] - 1 - np.argmax(is_nan[..., ::-1], axis=-1)
            first_max = np.argmax(np.where(is_nan, -np.inf, window), axis=-1)
            local = np.where(is_nan.any(axis=-1), last_nan, first_max)
            y[:, :, oh, ow] = np.take_along_axis(window, local[..., None], axis=-1)[..., 0]
            indices[:, :, oh, ow] = (h0 + local // (w1 - w0)) * width + w0 + local % (w1 - w0)
    if return_indices:
        return _unbatch(y, unbatched), _unbatch(indices, unbatched)
    return _unbatch(y, unbatched)
