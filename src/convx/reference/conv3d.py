"""Reference 3-D convolutions in pure NumPy, written from the formulas.

As in :mod:`convx.reference.conv`, each op pads explicitly and loops only over the
``kD * kH * kW`` kernel offsets. For the offset ``(a, b, c)`` the input voxels it meets form one
strided slice of the padded input, ``x_pad[..., a*dD :: sD, b*dH :: sH, c*dW :: sW]`` cut to the
output size, so an offset's whole contribution is one product per group over the channels:

* forward: ``y[n, g, o] += sum_ci w[g, o, ci, a, b, c] * x_pad[n, g, ci, window(a, b, c)]``;
* input gradient (the adjoint, a scatter-add): ``grad_x_pad[n, g, ci, window(a, b, c)] +=
  sum_o w[g, o, ci, a, b, c] * grad_y[n, g, o]``, the padding cropped at the end;
* weight gradient: ``grad_w[g, o, ci, a, b, c] = sum_{n, voxels} grad_y[n, g, o] * x_pad[n, g, ci, window(a, b, c)]``;
* transposed convolution: every input voxel is spread over the output through the kernel, then
  the padding is cropped from each side.

Arguments are trusted. Semantics are PyTorch's (``torch.nn.functional.conv3d``,
``conv_transpose3d`` and ``torch.nn.grad.conv3d_input`` / ``conv3d_weight``), NCDHW, with an
unbatched ``(C, D, H, W)`` input giving an unbatched output.
"""

from __future__ import annotations

import itertools

import numpy as np

__all__ = [
    "conv3d",
    "conv3d_backward_input",
    "conv3d_backward_weight",
    "conv_transpose3d",
]


def _triple(value) -> tuple[int, int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value, value)


def _sides(padding, sizes, kernel, stride, dilation) -> tuple[tuple[int, int], ...]:
    """(before, after) zeros per axis for an int, a triple, three (before, after) pairs, 'valid' or
    'same' (``ceil(size / stride)`` outputs, the extra zero of an odd total after)."""
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * 3
        sides = []
        for size, k, s, d in zip(sizes, kernel, stride, dilation):
            total = max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
            sides.append((total // 2, total - total // 2))
        return tuple(sides)
    if isinstance(padding, (tuple, list)) and any(isinstance(p, (tuple, list)) for p in padding):
        return tuple(tuple(p) for p in padding)
    return tuple((p, p) for p in _triple(padding))


def _window(offset: int, stride: int, count: int) -> slice:
    """The ``count`` positions ``offset, offset + stride, ...`` as a slice."""
    return slice(offset, offset + stride * (count - 1) + 1, stride)


def _windows(offsets, stride, dilation, counts) -> tuple[slice, ...]:
    return tuple(_window(t * d, s, n) for t, s, d, n in zip(offsets, stride, dilation, counts))


def _geometry(sizes, kernel, stride, padding, dilation):
    stride, dilation = _triple(stride), _triple(dilation)
    sides = _sides(padding, sizes, kernel, stride, dilation)
    out = tuple(
        (size + before + after - d * (k - 1) - 1) // s + 1
        for size, k, s, d, (before, after) in zip(sizes, kernel, stride, dilation, sides)
    )
    return stride, dilation, sides, out


def conv3d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Reference 3-D convolution (cross-correlation), as ``torch.nn.functional.conv3d``.

    ``y[n, co, od, oh, ow] = bias[co] + sum_{ci, a, b, c} weight[co, ci, a, b, c] *
    x_pad[n, g * C_in / groups + ci, od*sD + a*dD, oh*sH + b*dH, ow*sW + c*dW]``, ``g`` the group of ``co``.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, D, H, W) or (C_in, D, H, W)
    weight : ndarray, shape (C_out, C_in / groups, kD, kH, kW)
    bias : ndarray, shape (C_out,), optional
    stride, dilation : int or (int, int, int), default 1
    padding : int, (int, int, int), ((int, int), (int, int), (int, int)), 'valid' or 'same', default 0
        Zeros on both sides of each axis, or (before, after) per axis.
    groups : int, default 1

    Returns
    -------
    y : ndarray, shape (N, C_out, D_out, H_out, W_out) or (C_out, D_out, H_out, W_out)
        ``D_out = floor((D + before + after - dD*(kD - 1) - 1) / sD) + 1``, likewise ``H_out``, ``W_out``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.reference.conv3d import conv3d
    >>> conv3d(np.ones((1, 1, 3, 3, 3)), np.ones((1, 1, 2, 2, 2)), padding=((0, 0), (0, 0), (1, 0)))[0, 0, 0]
    array([[4., 8., 8.],
           [4., 8., 8.]])
    """
    if x.ndim == 4:
        return conv3d(x[None], weight, bias, stride, padding, dilation, groups)[0]
    n, c_in = x.shape[:2]
    c_out, c_in_group, *kernel = weight.shape
    stride, dilation, sides, out = _geometry(x.shape[2:], kernel, stride, padding, dilation)
    x_pad = np.pad(x, ((0, 0), (0, 0), *sides)).reshape(n, groups, c_in_group, *(
        size + before + after for size, (before, after) in zip(x.shape[2:], sides)))
    w = weight.reshape(groups, c_out // groups, c_in_group, *kernel)
    y = np.zeros((n, groups, c_out // groups, *out), dtype=x.dtype)
    for offsets in itertools.product(*(range(k) for k in kernel)):
        patch = x_pad[(..., *_windows(offsets, stride, dilation, out))]
        y += np.einsum("goc,ngcdhw->ngodhw", w[(..., *offsets)], patch)
    y = y.reshape(n, c_out, *out)
    if bias is not None:
        y += bias[:, None, None, None]
    return y


def conv3d_backward_input(grad_out, weight, input_shape, stride=1, padding=0, dilation=1, groups=1):
    """Reference gradient of :func:`conv3d` with respect to ``x``, as ``torch.nn.grad.conv3d_input``.

    The adjoint scatter-add: the padded input voxel that ``weight[co, ci, a, b, c]`` multiplied into
    ``y[n, co, od, oh, ow]`` receives ``weight[co, ci, a, b, c] * grad_out[n, co, od, oh, ow]``.

    Parameters
    ----------
    grad_out : ndarray, shape (N, C_out, D_out, H_out, W_out) or (C_out, D_out, H_out, W_out)
    weight : ndarray, shape (C_out, C_in / groups, kD, kH, kW)
    input_shape : tuple of int, (N, C_in, D, H, W) or (C_in, D, H, W)
    stride, padding, dilation, groups
        As given to :func:`conv3d`.

    Returns
    -------
    grad_x : ndarray, shape ``input_shape``

    Examples
    --------
    >>> import numpy as np
    >>> from convx.reference.conv3d import conv3d_backward_input
    >>> conv3d_backward_input(np.ones((1, 1, 1, 1, 2)), np.ones((1, 1, 1, 1, 2)), (1, 1, 1, 1, 3))[0, 0, 0, 0]
    array([1., 2., 1.])
    """
    if grad_out.ndim == 4:
        return conv3d_backward_input(grad_out[None], weight, (1, *input_shape), stride, padding, dilation, groups)[0]
    n, c_in, *sizes = input_shape
    c_out, c_in_group, *kernel = weight.shape
    out = grad_out.shape[2:]
    stride, dilation, sides, _ = _geometry(sizes, kernel, stride, padding, dilation)
    padded = tuple(size + before + after for size, (before, after) in zip(sizes, sides))
    grad_x_pad = np.zeros((n, groups, c_in_group, *padded), dtype=grad_out.dtype)
    w = weight.reshape(groups, c_out // groups, c_in_group, *kernel)
    grad_y = grad_out.reshape(n, groups, c_out // groups, *out)
    for offsets in itertools.product(*(range(k) for k in kernel)):
        grad_x_pad[(..., *_windows(offsets, stride, dilation, out))] += np.einsum(
            "goc,ngodhw->ngcdhw", w[(..., *offsets)], grad_y)
    crop = tuple(slice(before, before + size) for size, (before, _) in zip(sizes, sides))
    return grad_x_pad.reshape(n, c_in, *padded)[(..., *crop)].copy()


def conv3d_backward_weight(grad_out, x, weight_shape, stride=1, padding=0, dilation=1, groups=1):
    """Reference gradient of :func:`conv3d` with respect to ``weight``, as ``torch.nn.grad.conv3d_weight``.

    ``grad_w[co, ci, a, b, c] = sum_{n, od, oh, ow} grad_out[n, co, od, oh, ow] *
    x_pad[n, ci', od*sD + a*dD, oh*sH + b*dH, ow*sW + c*dW]``.

    Parameters
    ----------
    grad_out : ndarray, shape (N, C_out, D_out, H_out, W_out) or (C_out, D_out, H_out, W_out)
    x : ndarray, shape (N, C_in, D, H, W) or (C_in, D, H, W)
        The forward input.
    weight_shape : tuple of int, (C_out, C_in / groups, kD, kH, kW)
    stride, padding, dilation, groups
        As given to :func:`conv3d`.

    Returns
    -------
    grad_w : ndarray, shape ``weight_shape``

    Examples
    --------
    >>> import numpy as np
    >>> from convx.reference.conv3d import conv3d_backward_weight
    >>> x = np.arange(3.0).reshape(1, 1, 1, 1, 3)
    >>> conv3d_backward_weight(np.ones((1, 1, 1, 1, 2)), x, (1, 1, 1, 1, 2))[0, 0, 0, 0]
    array([1., 3.])
    """
    if x.ndim == 4:
        x, grad_out = x[None], grad_out[None]
    n, c_in, *sizes = x.shape
    c_out, c_in_group, *kernel = weight_shape
    out = grad_out.shape[2:]
    stride, dilation, sides, _ = _geometry(sizes, kernel, stride, padding, dilation)
    padded = tuple(size + before + after for size, (before, after) in zip(sizes, sides))
    x_pad = np.pad(x, ((0, 0), (0, 0), *sides)).reshape(n, groups, c_in_group, *padded)
    grad_y = grad_out.reshape(n, groups, c_out // groups, *out)
    grad_w = np.zeros((groups, c_out // groups, c_in_group, *kernel), dtype=x.dtype)
    for offsets in itertools.product(*(range(k) for k in kernel)):
        patch = x_pad[(..., *_windows(offsets, stride, dilation, out))]
        grad_w[(..., *offsets)] = np.einsum("ngodhw,ngcdhw->goc", grad_y, patch)
    return grad_w.reshape(tuple(weight_shape))


def conv_transpose3d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Reference 3-D transposed convolution, as ``torch.nn.functional.conv_transpose3d``.

    ``y_full[n, co, d*sD + a*dD, h*sH + b*dH, w*sW + c*dW] += x[n, ci, d, h, w] * weight[ci, co', a, b, c]``
    (``co`` in the group of ``ci``), then the padding is cropped: ``p`` from both ends of an axis or
    ``(before, after)``; the ``output_padding`` extra elements at the end of each axis are kept.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, D, H, W) or (C_in, D, H, W)
    weight : ndarray, shape (C_in, C_out / groups, kD, kH, kW)
    bias : ndarray, shape (C_out,), optional
    stride, output_padding, dilation : int or (int, int, int)
    padding : int, (int, int, int) or ((int, int), (int, int), (int, int))
    groups : int, default 1

    Returns
    -------
    y : ndarray, shape (N, C_out, D_out, H_out, W_out) or (C_out, D_out, H_out, W_out)
        ``D_out = (D - 1)*sD - before - after + dD*(kD - 1) + output_padding_D + 1``, likewise the others.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.reference.conv3d import conv_transpose3d
    >>> conv_transpose3d(np.ones((1, 1, 1, 1, 2)), np.ones((1, 1, 1, 1, 2)))[0, 0, 0, 0]
    array([1., 2., 1.])
    """
    if x.ndim == 4:
        return conv_transpose3d(x[None], weight, bias, stride, padding, output_padding, groups, dilation)[0]
    n, c_in, *sizes = x.shape
    _, c_out_group, *kernel = weight.shape
    stride, dilation, extra = _triple(stride), _triple(dilation), _triple(output_padding)
    sides = _sides(padding, sizes, kernel, stride, dilation)
    full = tuple((size - 1) * s + d * (k - 1) + 1 + e for size, k, s, d, e in zip(sizes, kernel, stride, dilation, extra))
    y_full = np.zeros((n, groups, c_out_group, *full), dtype=x.dtype)
    w = weight.reshape(groups, c_in // groups, c_out_group, *kernel)
    x_groups = x.reshape(n, groups, c_in // groups, *sizes)
    for offsets in itertools.product(*(range(k) for k in kernel)):
        y_full[(..., *_windows(offsets, stride, dilation, sizes))] += np.einsum(
            "gco,ngcdhw->ngodhw", w[(..., *offsets)], x_groups)
    crop = tuple(slice(before, size - after) for size, (before, after) in zip(full, sides))
    y = y_full.reshape(n, groups * c_out_group, *full)[(..., *crop)].copy()
    if bias is not None:
        y += bias[:, None, None, None]
    return y
