"""Unfold (im2col) and Fold (col2im) layers, ``torch.nn.Unfold`` / ``torch.nn.Fold``."""

from __future__ import annotations

import numpy as np

from .. import functional
from .._checks import as_pair
from .._typing import IntPair
from .module import Module, check_input


class _SlidingBlocks(Module):
    """The geometry Unfold and Fold share, validated once."""

    def __init__(self, kernel_size: IntPair, dilation: IntPair = 1, padding: IntPair = 0, stride: IntPair = 1) -> None:
        super().__init__()
        self.kernel_size = as_pair("kernel_size", kernel_size, 1)
        self.dilation = as_pair("dilation", dilation, 1)
        self.padding = as_pair("padding", padding, 0)
        self.stride = as_pair("stride", stride, 1)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, dilation={self.dilation}, padding={self.padding}, stride={self.stride}"


class Unfold(_SlidingBlocks):
    """Sliding blocks of (N, C, H, W) images as columns (N, C*kH*kW, L), ``torch.nn.Unfold``.

    See :func:`convx.functional.unfold`; the backward is :func:`convx.functional.fold`.

    Parameters
    ----------
    kernel_size : int or (int, int)
    dilation : int or (int, int), default 1
    padding : int or (int, int), default 0
    stride : int or (int, int), default 1

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> unfold = nn.Unfold(kernel_size=2)
    >>> unfold(np.zeros((1, 3, 4, 5))).shape
    (1, 12, 12)
    >>> unfold.backward(np.ones((1, 12, 12))).shape
    (1, 3, 4, 5)
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x`` (N, C, H, W) or (C, H, W) to its columns (N, C*kH*kW, L) or (C*kH*kW, L)."""
        x = check_input(self, x, (3, 4))
        y = functional.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        self._save_for_backward(y, x.shape)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out``: the columns folded back, overlaps summed."""
        grad_out, (input_shape,) = self._saved_for_backward(grad_out)
        return functional.unfold_backward(
            grad_out, input_shape, self.kernel_size, self.dilation, self.padding, self.stride
        )


class Fold(_SlidingBlocks):
    """Columns (N, C*kH*kW, L) summed back into (N, C, H, W) images, ``torch.nn.Fold``.

    See :func:`convx.functional.fold`; the backward is :func:`convx.functional.unfold`.

    Parameters
    ----------
    output_size : int or (int, int)
        ``(H, W)`` of the images.
    kernel_size : int or (int, int)
    dilation : int or (int, int), default 1
    padding : int or (int, int), default 0
    stride : int or (int, int), default 1

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> fold = nn.Fold(output_size=(4, 5), kernel_size=2)
    >>> fold(np.ones((1, 12, 12))).shape
    (1, 3, 4, 5)
    >>> fold.backward(np.ones((1, 3, 4, 5))).shape
    (1, 12, 12)
    """

    def __init__(
        self, output_size: IntPair, kernel_size: IntPair, dilation: IntPair = 1, padding: IntPair = 0,
        stride: IntPair = 1,
    ) -> None:
        super().__init__(kernel_size, dilation, padding, stride)
        self.output_size = as_pair("output_size", output_size, 1)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Columns ``x`` (N, C*kH*kW, L) or (C*kH*kW, L) to images (N, C, H, W) or (C, H, W)."""
        x = check_input(self, x, (2, 3))
        y = functional.fold(x, self.output_size, self.kernel_size, self.dilation, self.padding, self.stride)
        self._save_for_backward(y)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out``: its sliding blocks as columns."""
        grad_out, _ = self._saved_for_backward(grad_out)
        return functional.fold_backward(grad_out, self.kernel_size, self.dilation, self.padding, self.stride)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, {super().extra_repr()}"
