"""3-D convolution layers over the convx kernels: Conv3d and ConvTranspose3d."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from .. import functional
from .._checks import as_data_layout, as_int, as_triple
from .._typing import IntTriple, PaddingWord
from ..functional.conv3d import Padding3d, as_padding3d
from .conv import _check_channels, _check_groups, _ConvOps, _ConvTransposeNd, _init_params
from .init import RngLike
from .module import Module, as_dtype, check_input


def _no_algorithm(op: Any) -> Any:
    """``op`` taking (and ignoring) the ``algorithm='direct'`` keyword the 1-D and 2-D ops take, so that
    the layers' shared logic calls it as theirs."""

    def call(*args: Any, algorithm: str = "direct", **kwargs: Any) -> Any:
        return op(*args, **kwargs)

    return call


_OPS_3D = _ConvOps(
    _no_algorithm(functional.conv3d), _no_algorithm(functional.conv3d_backward),
    _no_algorithm(functional.conv3d_backward_input), _no_algorithm(functional.conv3d_backward_weight),
    _no_algorithm(functional.conv3d_backward_bias), _no_algorithm(functional.conv_transpose3d),
)


def _torch_padding(sides: PaddingWord | tuple[tuple[int, int], ...]) -> Any:
    """PyTorch's spelling where it has one: a word, or (pD, pH, pW) where both sides agree."""
    if isinstance(sides, str) or any(before != after for before, after in sides):
        return sides
    return tuple(before for before, _ in sides)


class Conv3d(Module):
    """3-D convolution layer, ``torch.nn.Conv3d`` on the convx kernels (:func:`convx.conv3d`).

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int or (int, int, int)
    stride : int or (int, int, int), default 1
    padding : int, (int, int, int), ((int, int), (int, int), (int, int)), 'valid', 'same' or 'same_lower', default 0
        Zeros on both sides of each axis, or ``((front, back), (top, bottom), (left, right))``;
        ``'same'`` gives ``ceil(size / stride)`` outputs per axis (see :func:`convx.conv3d`).
    dilation : int or (int, int, int), default 1
    groups : int, default 1
        Must divide ``in_channels`` and ``out_channels``.
    bias : bool, default True
    padding_mode : {'zeros'}, default 'zeros'
        Only zeros: the other modes of ``torch.nn.Conv3d`` are refused.
    dtype : float32 or float64, default float32
    rng : None, int or numpy.random.Generator
        Source of the initial weights (PyTorch's default: :func:`convx.nn.init.kaiming_uniform`
        with ``a = sqrt(5)``, bias ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``).
    layout : {'NCDHW', 'NDHWC'}, default 'NCDHW'
        The layout of the input and output (:func:`convx.conv3d`): channels last, input (N, D, H,
        W, C_in) and output (N, D_out, H_out, W_out, C_out); the weight is the same in both.

    Attributes
    ----------
    params : dict
        ``'weight'`` of shape (C_out, C_in / groups, kD, kH, kW) and, with ``bias``, ``'bias'`` (C_out,).

    Notes
    -----
    Input (N, C_in, D, H, W) or (C_in, D, H, W); output (N, C_out, D_out, H_out, W_out) (channels
    last: (N, D, H, W, C_in) and (N, D_out, H_out, W_out, C_out)).
    ``backward(grad_out)`` returns the input gradient and overwrites ``grads``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> conv = nn.Conv3d(2, 4, kernel_size=3, padding=1, rng=0)
    >>> x = np.ones((1, 2, 4, 6, 6), dtype=np.float32)
    >>> conv(x).shape
    (1, 4, 4, 6, 6)
    >>> conv.backward(np.ones((1, 4, 4, 6, 6), dtype=np.float32)).shape, conv.grads["weight"].shape
    ((1, 2, 4, 6, 6), (4, 2, 3, 3, 3))
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntTriple,
        stride: IntTriple = 1,
        padding: Padding3d = 0,
        dilation: IntTriple = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        dtype: DTypeLike = np.float32,
        rng: RngLike = None,
        layout: str = "NCDHW",
    ) -> None:
        super().__init__()
        as_data_layout(layout, 3)
        self.layout = layout
        self.in_channels = as_int("in_channels", in_channels, 1)
        self.out_channels = as_int("out_channels", out_channels, 1)
        self.kernel_size = as_triple("kernel_size", kernel_size, 1)
        self.stride = as_triple("stride", stride, 1)
        self.dilation = as_triple("dilation", dilation, 1)
        self.groups = as_int("groups", groups, 1)
        _check_groups(self.in_channels, self.out_channels, self.groups)
        self.padding = _torch_padding(as_padding3d(padding))
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode must be 'zeros' (the only mode Conv3d supports), got {padding_mode!r}")
        self.padding_mode = padding_mode
        self.dtype = as_dtype(dtype)
        weight_shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        _init_params(self, weight_shape, self.out_channels, bias, rng, dtype)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Convolve ``x`` (N, C_in, D, H, W) or (C_in, D, H, W); returns (N, C_out, D_out, H_out, W_out) or
        unbatched (channels last: (N, D, H, W, C_in) to (N, D_out, H_out, W_out, C_out))."""
        x = check_input(self, x, (4, 5), self.dtype)
        _check_channels(self, x, self.in_channels, 3, self.layout)
        y = functional.conv3d(x, self._params["weight"], self._params.get("bias"), self.stride, self.padding,
                              self.dilation, self.groups, layout=self.layout)
        self._save_for_backward(y, x)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out`` (the output's shape); overwrites ``grads['weight'|'bias']``."""
        grad_out, (x,) = self._saved_for_backward(grad_out)
        weight = self._params["weight"]
        grad_bias: np.ndarray | None = None
        if self._needs_grad("weight"):
            grad_x, grad_weight, grad_bias = functional.conv3d_backward(
                grad_out, x, weight, self.stride, self.padding, self.dilation, self.groups, layout=self.layout
            )
            self._store_grad("weight", grad_weight)
        else:
            grad_x = functional.conv3d_backward_input(
                grad_out, weight, x.shape, self.stride, self.padding, self.dilation, self.groups, layout=self.layout
            )
        if self._needs_grad("bias"):
            self._store_grad("bias", grad_bias if grad_bias is not None
                             else functional.conv3d_backward_bias(grad_out, layout=self.layout))
        return grad_x

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding not in ((0, 0, 0), "valid"):
            text += f", padding={self.padding!r}"
        if self.dilation != (1, 1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if "bias" not in self._params:
            text += ", bias=False"
        if self.layout != "NCDHW":
            text += f", layout={self.layout!r}"
        return text + f", dtype={self.dtype}"


class ConvTranspose3d(_ConvTransposeNd):
    """3-D transposed convolution layer, ``torch.nn.ConvTranspose3d`` on the convx kernels.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int or (int, int, int)
    stride : int or (int, int, int), default 1
    padding : int, (int, int, int), ((int, int), (int, int), (int, int)), 'valid', 'same' or 'same_lower', default 0
        Removed from each side of the full transposed convolution, or per side; 'same' /
        'same_lower' give an output of the input size times the stride (see
        :func:`convx.conv_transpose3d`).
    output_padding : int or (int, int, int), default 0
        Extra elements at the end of each axis; smaller than the stride or the dilation.
    groups : int, default 1
    bias : bool, default True
    dilation : int or (int, int, int), default 1
    dtype : float32 or float64, default float32
    rng : None, int or numpy.random.Generator
        Source of the initial weights (PyTorch's defaults, with PyTorch's fan-in
        ``C_out / groups * kD * kH * kW``).
    layout : {'NCDHW', 'NDHWC'}, default 'NCDHW'
        The layout of the input and output (:func:`convx.conv_transpose3d`); the weight is the
        same in both.

    Attributes
    ----------
    params : dict
        ``'weight'`` of shape (C_in, C_out / groups, kD, kH, kW) and, with ``bias``, ``'bias'`` (C_out,).

    Notes
    -----
    Input (N, C_in, D, H, W) or (C_in, D, H, W); output (N, C_out, D_out, H_out, W_out) with
    ``D_out = (D - 1)*sD - front - back + dD*(kD - 1) + output_padding_D + 1``; ``forward(x,
    output_size)`` picks the output size as PyTorch's does.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> up = nn.ConvTranspose3d(4, 2, kernel_size=2, stride=2, rng=0)
    >>> up(np.ones((1, 4, 3, 5, 5), dtype=np.float32)).shape
    (1, 2, 6, 10, 10)
    """

    _OPS = _OPS_3D

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntTriple,
        stride: IntTriple = 1,
        padding: Padding3d = 0,
        output_padding: IntTriple = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: IntTriple = 1,
        *,
        dtype: DTypeLike = np.float32,
        rng: RngLike = None,
        layout: str = "NCDHW",
    ) -> None:
        super().__init__()
        as_data_layout(layout, 3)
        self.layout = layout
        self.in_channels = as_int("in_channels", in_channels, 1)
        self.out_channels = as_int("out_channels", out_channels, 1)
        self.kernel_size = as_triple("kernel_size", kernel_size, 1)
        self.stride = as_triple("stride", stride, 1)
        self.padding = _torch_padding(as_padding3d(padding))
        self.output_padding = as_triple("output_padding", output_padding, 0)
        self.dilation = as_triple("dilation", dilation, 1)
        self.groups = as_int("groups", groups, 1)
        _check_groups(self.in_channels, self.out_channels, self.groups)
        for axis in range(3):
            if self.output_padding[axis] >= max(self.stride[axis], self.dilation[axis]):
                raise ValueError(
                    f"output_padding must be smaller than either stride or dilation, got "
                    f"output_padding={self.output_padding}, stride={self.stride}, dilation={self.dilation}"
                )
        self.algorithm = "direct"
        self.dtype = as_dtype(dtype)
        weight_shape = (self.in_channels, self.out_channels // self.groups, *self.kernel_size)
        _init_params(self, weight_shape, self.out_channels, bias, rng, dtype)

    def _padding_per_axis(self) -> PaddingWord | tuple[tuple[int, int], ...]:
        return as_padding3d(self.padding)

    def forward(self, x: np.ndarray, output_size: Any = None) -> np.ndarray:
        """Transposed convolution of ``x`` (N, C_in, D, H, W) or (C_in, D, H, W); ``output_size`` (the
        spatial sizes, alone or after (N, C_out)) picks the output's size as PyTorch's
        ``forward(x, output_size)``."""
        x = check_input(self, x, (4, 5), self.dtype)
        _check_channels(self, x, self.in_channels, 3, self.layout)
        return super().forward(x, output_size)
