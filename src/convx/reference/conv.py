"""Reference convolutions in pure NumPy, written from the formulas.

Each op pads explicitly and then loops only over the ``kH * kW`` kernel offsets. For the
offset ``(i, j)`` the input pixels it meets form one strided slice of the padded input,
``x_pad[..., i*dH :: sH, j*dW :: sW]`` cut to the output size, so an offset's whole
contribution is one matrix product per group: the group's channels by the pixels of every
image (the batch folded into the columns, so BLAS sees one large product, not N thin ones).
With ``X[g]`` the ``(C / groups, N * pixels)`` matrix of group ``g``:

* forward: ``Y[g] += w[g, :, :, i, j] @ X_pad[g, window(i, j)]``;
* input gradient (the adjoint, written as a scatter-add, not derived from the forward):
  ``grad_X_pad[g, window(i, j)] += w[g, :, :, i, j].T @ grad_Y[g]``;
* weight gradient: ``grad_w[g, :, :, i, j] = grad_Y[g] @ X_pad[g, window(i, j)].T``;
* transposed convolution: every input pixel is spread over the output through the kernel,
  ``Y_full[g, (h*sH + i*dH, w*sW + j*dW)] += w[g, :, :, i, j].T @ X[g, (h, w)]``,
  then ``padding`` rows and columns are cropped from each side.

Arguments are trusted: the public functions in :mod:`convx.functional` validate, these do not.
Semantics are PyTorch's (``torch.nn.functional.conv2d``, ``conv_transpose2d`` and
``torch.nn.grad``), NCHW, with unbatched ``(C, H, W)`` input giving unbatched output.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = [
    "conv2d",
    "conv2d_backward_bias",
    "conv2d_backward_input",
    "conv2d_backward_weight",
    "conv_transpose2d",
]


def _pair(value) -> tuple[int, int]:
    if isinstance(value, numbers.Integral):
        return int(value), int(value)
    first, second = value
    return int(first), int(second)


def _paddings(padding, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
              sizes: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """((top, bottom), (left, right)) zeros for an int, a pair, the sides themselves, 'valid',
    'same' or 'same_lower'."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding in ("same", "same_lower"):
            # ceil(size / stride) outputs: the last window starts at (out - 1) * stride and spans
            # dilation * (kernel - 1) + 1; what it reaches past the input is padding, split in two
            # with the odd one after ('same', as PyTorch at stride 1 and ONNX's SAME_UPPER) or
            # before ('same_lower').
            sides = []
            for size, k, s, d in zip(sizes, kernel, stride, dilation):
                out = math.ceil(size / s)
                total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
                sides.append((total // 2, total - total // 2) if padding == "same" else (total - total // 2, total // 2))
            return tuple(sides)
        raise ValueError(f"padding must be an int, a pair, the sides, 'valid', 'same' or 'same_lower', got {padding!r}")
    if isinstance(padding, (tuple, list)) and all(isinstance(p, (tuple, list)) for p in padding):
        return tuple((int(p[0]), int(p[1])) for p in padding)
    pad_h, pad_w = _pair(padding)
    return (pad_h, pad_h), (pad_w, pad_w)


def _output_size(size: int, kernel: int, stride: int, pads: tuple[int, int], dilation: int) -> int:
    """``floor((size + pad_before + pad_after - dilation * (kernel - 1) - 1) / stride) + 1``."""
    return (size + pads[0] + pads[1] - dilation * (kernel - 1) - 1) // stride + 1


def _window(offset: int, stride: int, count: int) -> slice:
    """The ``count`` positions ``offset, offset + stride, ...`` as a slice."""
    return slice(offset, offset + stride * (count - 1) + 1, stride)


def _geometry(spatial_shape, weight_shape, stride, padding, dilation):
    """Normalised stride/dilation pairs, paddings and the output size of a convolution."""
    kernel = tuple(weight_shape[2:])
    stride, dilation = _pair(stride), _pair(dilation)
    pads = _paddings(padding, kernel, stride, dilation, tuple(spatial_shape))
    out_shape = tuple(
        _output_size(size, k, s, p, d) for size, k, s, p, d in zip(spatial_shape, kernel, stride, pads, dilation)
    )
    return stride, dilation, pads, out_shape


def _by_group(images: np.ndarray, groups: int) -> np.ndarray:
    """(N, C, H, W) -> (groups, C / groups, N * H * W): a group's channels by the pixels of all images."""
    n, channels, height, width = images.shape
    grouped = images.reshape(n, groups, channels // groups, height * width).transpose(1, 2, 0, 3)
    return grouped.reshape(groups, channels // groups, n * height * width)


def _from_groups(columns: np.ndarray, n: int, height: int, width: int) -> np.ndarray:
    """The inverse of :func:`_by_group`: (groups, C / groups, N * H * W) -> (N, C, H, W)."""
    groups, channels_per_group, _ = columns.shape
    return columns.reshape(groups * channels_per_group, n, height, width).transpose(1, 0, 2, 3)


def _channel_product(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``weights @ values`` over the last two axes, per group.

    With a single channel to sum over (depthwise convolutions) it is the same product written
    as a broadcast multiplication, which NumPy runs far faster than thousands of 1-deep matmuls.
    """
    if weights.shape[-1] == 1:
        return weights * values
    return weights @ values


def _pad(x: np.ndarray, pads) -> np.ndarray:
    return np.pad(x, ((0, 0), (0, 0), *pads))


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Reference 2-D convolution (cross-correlation), as ``torch.nn.functional.conv2d``.

    ``y[n, co, oh, ow] = bias[co] + sum_{ci, i, j} weight[co, ci, i, j] *
    x_pad[n, g * C_in / groups + ci, oh*sH + i*dH, ow*sW + j*dW]`` where ``g`` is the group
    of output channel ``co``.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W) or (C_in, H, W)
    weight : ndarray, shape (C_out, C_in / groups, kH, kW)
    bias : ndarray, shape (C_out,), optional
    stride : int or (int, int), default 1
    padding : int, (int, int), 'valid' or 'same', default 0
        ``'same'`` (stride 1) puts the extra zero of an odd total at the bottom/right.
    dilation : int or (int, int), default 1
    groups : int, default 1

    Returns
    -------
    y : ndarray, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)
        ``H_out = floor((H + pad_top + pad_bottom - dH*(kH - 1) - 1) / sH) + 1``, likewise ``W_out``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.reference.conv import conv2d
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> conv2d(x, np.ones((1, 1, 2, 2)), stride=2)[0, 0]
    array([[10., 18.],
           [42., 50.]])
    """
    if x.ndim == 3:
        return conv2d(x[None], weight, bias, stride, padding, dilation, groups)[0]
    n, _, height, width = x.shape
    c_out, c_in_group, kernel_h, kernel_w = weight.shape
    stride, dilation, pads, (out_h, out_w) = _geometry((height, width), weight.shape, stride, padding, dilation)
    x_pad = _pad(x, pads)
    w = weight.reshape(groups, c_out // groups, c_in_group, kernel_h, kernel_w)
    y = np.zeros((groups, c_out // groups, n * out_h * out_w), dtype=x.dtype)
    for i in range(kernel_h):
        for j in range(kernel_w):
            rows = _window(i * dilation[0], stride[0], out_h)
            cols = _window(j * dilation[1], stride[1], out_w)
            y += _channel_product(w[..., i, j], _by_group(x_pad[:, :, rows, cols], groups))
    y = np.ascontiguousarray(_from_groups(y, n, out_h, out_w))
    if bias is not None:
        y += bias[:, None, None]
    return y


def conv2d_backward_input(grad_out, weight, input_shape, stride=1, padding=0, dilation=1, groups=1):
    """Reference gradient of :func:`conv2d` with respect to ``x``, as ``torch.nn.grad.conv2d_input``.

    Written as the adjoint scatter-add: the input pixel ``x_pad[n, ci', oh*sH + i*dH, ow*sW + j*dW]``
    was multiplied by ``weight[co, ci, i, j]`` into ``y[n, co, oh, ow]``, so it receives
    ``weight[co, ci, i, j] * grad_out[n, co, oh, ow]``; the padding is cropped at the end.

    Parameters
    ----------
    grad_out : ndarray, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)
    weight : ndarray, shape (C_out, C_in / groups, kH, kW)
    input_shape : tuple of int, (N, C_in, H, W) or (C_in, H, W)
        The forward input's shape (3 entries with an unbatched ``grad_out``).
    stride, padding, dilation, groups
        As given to :func:`conv2d`.

    Returns
    -------
    grad_x : ndarray, shape ``input_shape``

    Examples
    --------
    >>> import numpy as np
    >>> from convx.reference.conv import conv2d_backward_input
    >>> conv2d_backward_input(np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)), (1, 1, 3, 3))[0, 0]
    array([[1., 2., 1.],
           [2., 4., 2.],
           [1., 2., 1.]])
    """
    if grad_out.ndim == 3:
        return conv2d_backward_input(grad_out[None], weight, (1, *input_shape), stride, padding, dilation, groups)[0]
    n, c_in, height, width = input_shape
    c_out, c_in_group, kernel_h, kernel_w = weight.shape
    _, _, out_h, out_w = grad_out.shape
    stride, dilation, pads, _ = _geometry((height, width), weight.shape, stride, padding, dilation)
    (top, bottom), (left, right) = pads
    grad_x_pad = np.zeros((n, c_in, height + top + bottom, width + left + right), dtype=grad_out.dtype)
    w = weight.reshape(groups, c_out // groups, c_in_group, kernel_h, kernel_w)
    grad_y = _by_group(grad_out, groups)
    for i in range(kernel_h):
        for j in range(kernel_w):
            rows = _window(i * dilation[0], stride[0], out_h)
            cols = _window(j * dilation[1], stride[1], out_w)
            contribution = _channel_product(w[..., i, j].swapaxes(1, 2), grad_y)
            grad_x_pad[:, :, rows, cols] += _from_groups(contribution, n, out_h, out_w)
    return grad_x_pad[:, :, top : top + height, left : left + width].copy()


def conv2d_backward_weight(grad_out, x, weight_shape, stride=1, padding=0, dilation=1, groups=1):
    """Reference gradient of :func:`conv2d` with respect to ``weight``, as ``torch.nn.grad.conv2d_weight``.

    ``grad_w[co, ci, i, j] = sum_{n, oh, ow} grad_out[n, co, oh, ow] * x_pad[n, ci', oh*sH + i*dH, ow*sW + j*dW]``.

    Parameters
    ----------
    grad_out : ndarray, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)
    x : ndarray, shape (N, C_in, H, W) or (C_in, H, W)
        The forward input.
    weight_shape : tuple of int, (C_out, C_in / groups, kH, kW)
    stride, padding, dilation, groups
        As given to :func:`conv2d`.

    Returns
    -------
    grad_w : ndarray, shape ``weight_shape``

    Examples
    --------
    >>> import numpy as np
    >>> from convx.reference.conv import conv2d_backward_weight
    >>> x = np.arange(9.0).reshape(1, 1, 3, 3)
    >>> conv2d_backward_weight(np.ones((1, 1, 2, 2)), x, (1, 1, 2, 2))[0, 0]
    array([[ 8., 12.],
           [20., 24.]])
    """
    if x.ndim == 3:
        x, grad_out = x[None], grad_out[None]
    n, _, height, width = x.shape
    c_out, c_in_group, kernel_h, kernel_w = weight_shape
    _, _, out_h, out_w = grad_out.shape
    stride, dilation, pads, _ = _geometry((height, width), weight_shape, stride, padding, dilation)
    x_pad = _pad(x, pads)
    grad_y = _by_group(grad_out, groups)
    grad_w = np.zeros((groups, c_out // groups, c_in_group, kernel_h, kernel_w), dtype=x.dtype)
    for i in range(kernel_h):
        for j in range(kernel_w):
            rows = _window(i * dilation[0], stride[0], out_h)
            cols = _window(j * dilation[1], stride[1], out_w)
            grad_w[..., i, j] = grad_y @ _by_group(x_pad[:, :, rows, cols], groups).swapaxes(1, 2)
    return grad_w.reshape(tuple(weight_shape))


def conv2d_backward_bias(grad_out):
    """Reference gradient of :func:`conv2d` with respect to ``bias``: ``grad_out`` summed over N, H, W.

    Parameters
    ----------
    grad_out : ndarray, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)

    Returns
    -------
    grad_b : ndarray, shape (C_out,)

    Examples
    --------
    >>> import numpy as np
    >>> from convx.reference.conv import conv2d_backward_bias
    >>> conv2d_backward_bias(np.ones((2, 3, 4, 5)))
    array([40., 40., 40.])
    """
    axes = (1, 2) if grad_out.ndim == 3 else (0, 2, 3)
    return grad_out.sum(axis=axes)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Reference transposed convolution, as ``torch.nn.functional.conv_transpose2d``.

    Every input pixel is spread over the output through the kernel,
    ``y_full[n, co, h*sH + i*dH, w*sW + j*dW] += x[n, ci, h, w] * weight[ci, co', i, j]`` (``co``
    in the group of ``ci``), then ``padding`` rows/columns are cropped from each side; the
    ``output_padding`` extra rows/columns at the bottom/right are kept.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W) or (C_in, H, W)
    weight : ndarray, shape (C_in, C_out / groups, kH, kW)
    bias : ndarray, shape (C_out,), optional
    stride, padding, output_padding, dilation : int or (int, int)
    groups : int, default 1

    Returns
    -------
    y : ndarray, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)
        ``H_out = (H - 1)*sH - 2*pH + dH*(kH - 1) + output_padding_H + 1``, likewise ``W_out``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.reference.conv import conv_transpose2d
    >>> conv_transpose2d(np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)))[0, 0]
    array([[1., 2., 1.],
           [2., 4., 2.],
           [1., 2., 1.]])
    """
    if x.ndim == 3:
        return conv_transpose2d(x[None], weight, bias, stride, padding, output_padding, groups, dilation)[0]
    n, c_in, height, width = x.shape
    _, c_out_group, kernel_h, kernel_w = weight.shape
    (stride_h, stride_w), (dil_h, dil_w) = _pair(stride), _pair(dilation)
    (pad_h, pad_w), (extra_h, extra_w) = _pair(padding), _pair(output_padding)
    full_h = (height - 1) * stride_h + dil_h * (kernel_h - 1) + 1 + extra_h
    full_w = (width - 1) * stride_w + dil_w * (kernel_w - 1) + 1 + extra_w
    c_out = c_out_group * groups
    y_full = np.zeros((n, c_out, full_h, full_w), dtype=x.dtype)
    w = weight.reshape(groups, c_in // groups, c_out_group, kernel_h, kernel_w)
    x_groups = _by_group(x, groups)
    for i in range(kernel_h):
        for j in range(kernel_w):
            rows = _window(i * dil_h, stride_h, height)
            cols = _window(j * dil_w, stride_w, width)
            contribution = _channel_product(w[..., i, j].swapaxes(1, 2), x_groups)
            y_full[:, :, rows, cols] += _from_groups(contribution, n, height, width)
    y = y_full[:, :, pad_h : full_h - pad_h, pad_w : full_w - pad_w].copy()
    if bias is not None:
        y += bias[:, None, None]
    return y
