"""``unfold`` (im2col) and ``fold`` (col2im), ``torch.nn.functional.unfold`` / ``fold`` semantics.

Both run the column builders of convx's im2col convolution path (``_conv_im2col.pxi``) over the
whole ``(C*kH*kW, L)`` column matrix of each image, written straight into the output, one
(image, channel) plane per thread. Each op is the other's adjoint, so each one's backward is the
other: :func:`unfold_backward` is :func:`fold` and :func:`fold_backward` is :func:`unfold`.
"""

from __future__ import annotations

from numpy.typing import NDArray

from .. import _core
from .._checks import as_layout_array, as_pair, as_shape, contiguous
from .._shapes import conv_output_size
from .._threads import kernel_threads
from .._typing import AnyArray, Float, IntPair, Shape
from .pooling import _allocate

__all__ = ["fold", "fold_backward", "unfold", "unfold_backward"]

# The kernels take the geometry as C ints.
_INT32_LIMIT = 2**31 - 1


class _Geometry:
    """unfold/fold's validated kernel_size, dilation, padding and stride (pairs of ints)."""

    def __init__(self, kernel_size: object, dilation: object, padding: object, stride: object) -> None:
        self.kernel = as_pair("kernel_size", kernel_size, 1)
        self.dilation = as_pair("dilation", dilation, 1)
        self.padding = as_pair("padding", padding, 0)
        self.stride = as_pair("stride", stride, 1)
        for name, pair in (("kernel_size", self.kernel), ("dilation", self.dilation), ("padding", self.padding),
                           ("stride", self.stride)):
            if max(pair) > _INT32_LIMIT:
                raise ValueError(f"{name} must be at most {_INT32_LIMIT}, got {pair}")

    def blocks(self, name: str, size: tuple[int, int]) -> tuple[int, int]:
        """The sliding blocks along each axis of a ``size`` image, at least one each."""
        blocks = tuple(
            conv_output_size(s, k, st, p, p, d)
            for s, k, st, p, d in zip(size, self.kernel, self.stride, self.padding, self.dilation)
        )
        if min(blocks) < 1:
            raise ValueError(
                f"the dilated kernel ({self.dilation[0] * (self.kernel[0] - 1) + 1}x"
                f"{self.dilation[1] * (self.kernel[1] - 1) + 1}, kernel_size={self.kernel}, dilation={self.dilation}) "
                f"is larger than the padded {name} ({size[0] + 2 * self.padding[0]}x{size[1] + 2 * self.padding[1]}, "
                f"padding={self.padding}): {blocks[0]}x{blocks[1]} blocks"
            )
        return blocks[0], blocks[1]

    def args(self) -> tuple[int, int, int, int, int, int, int, int]:
        return (*self.kernel, *self.dilation, *self.padding, *self.stride)


def _unfold(x: AnyArray, geometry: _Geometry, name: str) -> AnyArray:
    """The validated op: ``x`` (N, C, H, W) or (C, H, W) to columns (N, C*kH*kW, L) or (C*kH*kW, L)."""
    unbatched = x.ndim == 3
    if unbatched:
        x = x[None]
    batch, channels, height, width = x.shape
    if min(channels, height, width) < 1:
        raise ValueError(f"unfold expects {name} with non-empty channel and spatial axes, got shape {x.shape}")
    out_h, out_w = geometry.blocks(name, (height, width))
    kernel_h, kernel_w = geometry.kernel
    cols = _allocate((batch, channels * kernel_h * kernel_w, out_h * out_w), x.dtype, "unfold's kernel_size")
    if cols.size:
        _core.unfold_forward(contiguous(x), cols, *geometry.args(), out_h, out_w, kernel_threads(elements=cols.size))
    result: AnyArray = cols[0] if unbatched else cols
    return result


def _fold(cols: AnyArray, output_size: tuple[int, int], geometry: _Geometry, name: str) -> AnyArray:
    """The validated op: columns (N, C*kH*kW, L) or (C*kH*kW, L) summed back into (N, C, *output_size)
    or (C, *output_size)."""
    unbatched = cols.ndim == 2
    if unbatched:
        cols = cols[None]
    batch, rows, length = cols.shape
    taps = geometry.kernel[0] * geometry.kernel[1]
    if rows == 0 or rows % taps:
        raise ValueError(
            f"fold expects {name}.shape[-2] to be a positive multiple of kernel_size[0] * kernel_size[1] = {taps} "
            f"(C * kH * kW), got {rows} (shape {cols.shape})"
        )
    if min(output_size) < 1:
        raise ValueError(f"output_size must be positive, got {output_size}")
    out_h, out_w = geometry.blocks("output", output_size)
    if length != out_h * out_w:
        raise ValueError(
            f"fold expects {name}.shape[-1] to be the number of sliding blocks, {out_h}*{out_w} = {out_h * out_w} "
            f"for output_size={output_size}, kernel_size={geometry.kernel}, dilation={geometry.dilation}, "
            f"padding={geometry.padding} and stride={geometry.stride}, got {length} (shape {cols.shape})"
        )
    out = _allocate((batch, rows // taps, *output_size), cols.dtype, "fold's output_size")
    if out.size:
        _core.fold_forward(contiguous(cols), out, *geometry.args(), out_h, out_w, kernel_threads(elements=cols.size))
    result: AnyArray = out[0] if unbatched else out
    return result


def _output_size(value: object) -> tuple[int, int]:
    if isinstance(value, (tuple, list)) and len(value) != 2:
        raise ValueError(f"output_size must be an int or (H, W), got {value!r}")
    return as_pair("output_size", value, 1)


def unfold(
    x: NDArray[Float], kernel_size: IntPair, dilation: IntPair = 1, padding: IntPair = 0, stride: IntPair = 1
) -> NDArray[Float]:
    """Extract the sliding blocks of a batch of images as columns (im2col).

    Column ``l`` of image ``n`` holds the ``C * kH * kW`` values under the kernel's ``l``-th
    position (row-major over the blocks), ordered channel first, then kernel row, then kernel
    column; padding reads zeros. ``conv2d(x, w)`` is ``w.reshape(C_out, -1) @ unfold(x, ...)``
    reshaped to ``(N, C_out, H_out, W_out)``.

    Parameters
    ----------
    x : ndarray of float32 or float64, shape (N, C, H, W) or (C, H, W)
    kernel_size : int or (int, int)
    dilation : int or (int, int), default 1
    padding : int or (int, int), default 0
        Zeros on both sides of each axis.
    stride : int or (int, int), default 1

    Returns
    -------
    cols : ndarray, shape (N, C*kH*kW, L) or (C*kH*kW, L)
        ``L = H_blocks * W_blocks``, ``H_blocks = (H + 2*pH - dH*(kH - 1) - 1) // sH + 1``,
        likewise ``W_blocks``. Same dtype as ``x``.

    Raises
    ------
    TypeError
        For a dtype other than float32/float64 or non-int geometry.
    ValueError
        For a non-positive kernel size, dilation or stride, negative padding, an empty channel or
        spatial axis, or a dilated kernel larger than the padded image.
    MemoryError
        Where the columns would be larger than a process can address.

    See Also
    --------
    fold : the adjoint, which sums the columns back into images.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import unfold
    >>> x = np.arange(9.0).reshape(1, 1, 3, 3)
    >>> unfold(x, 2)[0]
    array([[0., 1., 3., 4.],
           [1., 2., 4., 5.],
           [3., 4., 6., 7.],
           [4., 5., 7., 8.]])
    """
    x = as_layout_array("unfold", "x", x, (3, 4), "(N, C, H, W) or (C, H, W)")
    geometry = _Geometry(kernel_size, dilation, padding, stride)
    return _unfold(x, geometry, "x")


def fold(
    x: NDArray[Float], output_size: IntPair, kernel_size: IntPair, dilation: IntPair = 1, padding: IntPair = 0,
    stride: IntPair = 1,
) -> NDArray[Float]:
    """Sum columns of sliding blocks back into images (col2im), the adjoint of :func:`unfold`.

    Each value of column ``l`` is added to the image element it was taken from by
    :func:`unfold` with the same arguments; elements under several blocks receive the sum, those
    under none are zero, and values that fall in the padding are dropped. ``fold(unfold(x))`` is
    ``x`` times the number of blocks covering each element.

    Parameters
    ----------
    x : ndarray of float32 or float64, shape (N, C*kH*kW, L) or (C*kH*kW, L)
        ``L`` must be the number of blocks of an ``output_size`` image.
    output_size : int or (int, int)
        ``(H, W)`` of the images.
    kernel_size, dilation, padding, stride
        As in :func:`unfold`.

    Returns
    -------
    y : ndarray, shape (N, C, H, W) or (C, H, W)
        Same dtype as ``x``.

    Raises
    ------
    TypeError
        For a dtype other than float32/float64 or non-int geometry.
    ValueError
        For invalid geometry (as :func:`unfold`), a row count not a multiple of ``kH*kW``, or a
        column count other than the number of blocks.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import fold
    >>> fold(np.ones((1, 4, 4)), (3, 3), 2)[0, 0]
    array([[1., 2., 1.],
           [2., 4., 2.],
           [1., 2., 1.]])
    """
    x = as_layout_array("fold", "x", x, (2, 3), "(N, C*kH*kW, L) or (C*kH*kW, L)")
    size = _output_size(output_size)
    geometry = _Geometry(kernel_size, dilation, padding, stride)
    return _fold(x, size, geometry, "x")


def unfold_backward(
    grad_out: NDArray[Float], input_shape: Shape, kernel_size: IntPair, dilation: IntPair = 1, padding: IntPair = 0,
    stride: IntPair = 1,
) -> NDArray[Float]:
    """Gradient of :func:`unfold` with respect to its input: :func:`fold` of ``grad_out``.

    Parameters
    ----------
    grad_out : ndarray of float32 or float64, shape (N, C*kH*kW, L) or (C*kH*kW, L)
        The forward output's shape.
    input_shape : tuple of int
        ``(N, C, H, W)`` or ``(C, H, W)``, the shape of the forward input.
    kernel_size, dilation, padding, stride
        As in :func:`unfold`.

    Returns
    -------
    grad_x : ndarray, shape ``input_shape``

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import unfold_backward
    >>> unfold_backward(np.ones((1, 4, 4)), (1, 1, 3, 3), 2)[0, 0]
    array([[1., 2., 1.],
           [2., 4., 2.],
           [1., 2., 1.]])
    """
    grad_out = as_layout_array("unfold_backward", "grad_out", grad_out, (2, 3), "(N, C*kH*kW, L) or (C*kH*kW, L)")
    dims: tuple[int, ...] = as_shape("input_shape", input_shape, (3, 4))
    geometry = _Geometry(kernel_size, dilation, padding, stride)
    expected = (*dims[:-3], dims[-3] * geometry.kernel[0] * geometry.kernel[1])
    if grad_out.shape[:-1] != expected:
        raise ValueError(
            f"grad_out of shape {grad_out.shape} does not match input_shape {dims}: its leading axes must be "
            f"{expected} (C * kH * kW rows)"
        )
    return _fold(grad_out, (dims[-2], dims[-1]), geometry, "grad_out")


def fold_backward(
    grad_out: NDArray[Float], kernel_size: IntPair, dilation: IntPair = 1, padding: IntPair = 0, stride: IntPair = 1
) -> NDArray[Float]:
    """Gradient of :func:`fold` with respect to its input: :func:`unfold` of ``grad_out``.

    Parameters
    ----------
    grad_out : ndarray of float32 or float64, shape (N, C, H, W) or (C, H, W)
        The forward output's shape.
    kernel_size, dilation, padding, stride
        As in :func:`fold`.

    Returns
    -------
    grad_x : ndarray, shape (N, C*kH*kW, L) or (C*kH*kW, L)
        The forward input's shape.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import fold_backward
    >>> fold_backward(np.ones((1, 1, 3, 3)), 2).shape
    (1, 4, 4)
    """
    grad_out = as_layout_array("fold_backward", "grad_out", grad_out, (3, 4), "(N, C, H, W) or (C, H, W)")
    geometry = _Geometry(kernel_size, dilation, padding, stride)
    return _unfold(grad_out, geometry, "grad_out")

