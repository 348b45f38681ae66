"""Convolution layers over the convx kernels: Conv2d, ConvTranspose2d, Conv1d and ConvTranspose1d."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import DTypeLike

from .. import functional
from ..functional.conv import check_algorithm, transpose_padding
from ..functional.conv1d import check_algorithm_1d
from .._checks import (
    as_bool,
    as_data_layout,
    as_int,
    as_padding,
    as_padding_1d,
    as_pair,
    as_shape,
    as_single,
    channels_first,
    channels_first_shape,
    channels_last,
)
from .._shapes import NUMPY_PAD_MODES as _NUMPY_PAD_MODES
from .._shapes import NumpyPadMode as _NumpyPadMode
from .._shapes import padded_source as _padded_source
from .._shapes import padding_sides
from .._typing import IntPair, IntSingle, Padding, Padding1d, PaddingWord
from .init import RngLike, default_weight_and_bias
from .module import Module, as_dtype, check_input

PADDING_MODES = ("zeros", *_NUMPY_PAD_MODES)


_LAYOUTS = {
    "NCW": "(N, C, L) or (C, L)", "NWC": "(N, L, C) or (L, C)", "NCHW": "(N, C, H, W) or (C, H, W)", "NHWC": "(N, H, W, C) or (H, W, C)",
    "NCDHW": "(N, C, D, H, W) or (C, D, H, W)", "NDHWC": "(N, D, H, W, C) or (D, H, W, C)",
}
# The channels-last layouts among them.
_LAST_LAYOUTS = ("NWC", "NHWC", "NDHWC")


def _check_channels(module: Module, x: np.ndarray, expected: int, dims: int = 2, layout: str | None = None) -> None:
    """x's channels (axis -dims-1 of an input with ``dims`` spatial axes, -1 channels last) are ``expected``."""
    layout = layout or {1: "NCW", 2: "NCHW", 3: "NCDHW"}[dims]
    channels = x.shape[-1 if layout in _LAST_LAYOUTS else -dims - 1]
    if channels != expected:
        raise ValueError(
            f"{type(module).__name__} expects {expected} input channels, got x of shape {x.shape} "
            f"with {channels} channels (layout {_LAYOUTS[layout]})"
        )


def _check_groups(in_channels: int, out_channels: int, groups: int) -> None:
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"groups={groups} must divide both in_channels ({in_channels}) and out_channels ({out_channels})"
        )


def _init_params(
    module: Module, weight_shape: tuple[int, ...], out_channels: int, bias: bool, rng: RngLike, dtype: DTypeLike
) -> None:
    """PyTorch's initial weight, and a bias of ``out_channels`` values unless ``bias`` is False."""
    has_bias = as_bool("bias", bias)
    weight, bias_values = default_weight_and_bias(weight_shape, out_channels if has_bias else None, rng, dtype)
    module._add_param("weight", weight)
    if bias_values is not None:
        module._add_param("bias", bias_values)


class _ReadAxis(NamedTuple):
    """Along one axis, the elements of a padded input that a convolution reads, as the input elements they copy
    (``source``), and the stride and dilation of the convolution over them."""

    source: np.ndarray
    stride: int
    dilation: int
    identity: int | None  # where source runs 0, 1, ..., size - 1 (the unpadded input), if it does


def _read_axis(size: int, pads: tuple[int, int], kernel: int, stride: int, dilation: int,
               mode: _NumpyPadMode) -> _ReadAxis | None:
    """The padded axis up to the last position read (stride and dilation as given), or, where that is
    longer, each window's taps side by side (stride = kernel, dilation 1: out * kernel positions, so that a
    padding of 10**8 with a stride of 10**8 copies a few elements, not 10**8). None where no window fits."""
    before, after = pads
    span = dilation * (kernel - 1) + 1
    out = (size + before + after - span) // stride + 1
    if out < 1:
        return None
    reach = (out - 1) * stride + span
    if reach <= out * kernel:
        source = _padded_source(np.arange(reach) - before, size, mode)
        return _ReadAxis(source, stride, dilation, before if before + size <= reach else None)
    positions = (np.arange(out)[:, None] * stride + np.arange(kernel)[None, :] * dilation).ravel() - before
    return _ReadAxis(_padded_source(positions, size, mode), kernel, 1, None)


def _check_padding_mode_limit(mode: str, axis_name: str, size: int, pads: tuple[int, int]) -> None:
    """PyTorch refuses these instead of reflecting or wrapping more than once."""
    before, after = pads
    if mode == "reflect" and max(before, after) >= size:
        raise ValueError(
            f"padding_mode='reflect' needs padding smaller than the input: padding ({before}, {after}) "
            f"along the {axis_name} of size {size}"
        )
    if mode == "circular" and max(before, after) > size:
        raise ValueError(
            f"padding_mode='circular' needs padding at most the input size: padding ({before}, {after}) "
            f"along the {axis_name} of size {size}"
        )


def _fold_read(grad: np.ndarray, axis: int, read: _ReadAxis, size: int) -> np.ndarray:
    """Adjoint of taking ``read.source`` along ``axis``: each read position's gradient added to the element it
    copies (the unpadded run, where there is one, as one slice)."""
    grad = np.moveaxis(grad, axis, -1)
    others = np.arange(len(read.source))
    if read.identity is None:
        folded = np.zeros((*grad.shape[:-1], size), dtype=grad.dtype)
    else:
        folded = grad[..., read.identity: read.identity + size].copy()
        others = np.concatenate([others[: read.identity], others[read.identity + size:]])
    if len(others):
        np.add.at(folded, (Ellipsis, read.source[others]), grad[..., others])  # type: ignore[arg-type]
    return np.moveaxis(folded, -1, axis)


class _ConvOps(NamedTuple):
    """The functional ops of one dimensionality, for the layers that share their logic."""

    conv: Callable[..., np.ndarray]
    backward: Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]
    backward_input: Callable[..., np.ndarray]
    backward_weight: Callable[..., np.ndarray]
    backward_bias: Callable[..., np.ndarray]
    transpose: Callable[..., np.ndarray]


_OPS_1D = _ConvOps(functional.conv1d, functional.conv1d_backward, functional.conv1d_backward_input,
                   functional.conv1d_backward_weight, functional.conv1d_backward_bias, functional.conv_transpose1d)
_OPS_2D = _ConvOps(functional.conv2d, functional.conv2d_backward, functional.conv2d_backward_input,
                   functional.conv2d_backward_weight, functional.conv2d_backward_bias, functional.conv_transpose2d)


def _conv_gradients(
    module: Module, ops: _ConvOps, grad_out: np.ndarray, conv_input: np.ndarray, stride: Any, padding: Any,
    dilation: Any, groups: int, algorithm: str, layout: dict[str, str] | None = None,
) -> np.ndarray:
    """A convolution layer's backward for the convolution of ``conv_input``: records the gradients of
    the parameters that need one and returns the gradient of ``conv_input``. ``layout``: the ops'
    ``layout`` keyword, where the layer has one."""
    weight = module._params["weight"]
    grad_bias: np.ndarray | None
    layout = layout or {}
    if module._needs_grad("weight"):
        grad_input, grad_weight, grad_bias = ops.backward(
            grad_out, conv_input, weight, stride, padding, dilation, groups, algorithm=algorithm, **layout,
        )
        module._store_grad("weight", grad_weight)
    else:  # frozen: the input gradient alone
        grad_input = ops.backward_input(
            grad_out, weight, conv_input.shape, stride, padding, dilation, groups, algorithm=algorithm, **layout,
        )
        grad_bias = ops.backward_bias(grad_out, **layout) if module._needs_grad("bias") else None
    if module._needs_grad("bias"):
        module._store_grad("bias", grad_bias)
    return grad_input


class Conv2d(Module):
    """2-D convolution layer, ``torch.nn.Conv2d`` on the convx kernels.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int or (int, int)
    stride : int or (int, int), default 1
    padding : int, (int, int), ((int, int), (int, int)), 'valid', 'same' or 'same_lower', default 0
        Zeros on both sides of each axis, or ``((top, bottom), (left, right))``. ``'same'`` gives
        ``ceil(size / stride)`` outputs per axis, the extra row/column of an odd total at the
        bottom/right (PyTorch's 'same' at stride 1; TensorFlow's and ONNX's SAME_UPPER at any
        stride); ``'same_lower'`` puts it at the top/left (ONNX's SAME_LOWER).
    dilation : int or (int, int), default 1
    groups : int, default 1
        Must divide ``in_channels`` and ``out_channels``.
    bias : bool, default True
    padding_mode : {'zeros', 'reflect', 'replicate', 'circular'}, default 'zeros'
        What fills the padding: zeros, a mirror image without the edge (``reflect``, padding
        smaller than the input), copies of the edge, or the opposite side (``circular``, padding
        at most the input size).
    algorithm : {'direct', 'winograd', 'auto'}, default 'direct'
        How forward and backward compute: see :func:`convx.conv2d`. ``'auto'`` takes Winograd's
        faster F(4x4, 3x3) for 3x3 stride-1 layers of 16 or more channels (whose transformed
        weight fits in 256 MiB).
    dtype : float32 or float64, default float32
    rng : None, int or numpy.random.Generator
        Source of the initial weights (PyTorch's default: :func:`convx.nn.init.kaiming_uniform`
        with ``a = sqrt(5)``, bias ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``).
    layout : {'NCHW', 'NHWC'}, default 'NCHW'
        The layout of the input and output (:func:`convx.conv2d`): channels last, input (N, H, W,
        C_in) and output (N, H_out, W_out, C_out). The weight is (C_out, C_in / groups, kH, kW) in
        both, so a state_dict moves between them unchanged.

    Attributes
    ----------
    params : dict
        ``'weight'`` of shape (C_out, C_in / groups, kH, kW) and, with ``bias``, ``'bias'`` (C_out,).

    Notes
    -----
    Input (N, C_in, H, W) or (C_in, H, W); output (N, C_out, H_out, W_out) with
    ``H_out = floor((H + pad_top + pad_bottom - dH*(kH - 1) - 1) / sH) + 1``.
    ``backward(grad_out)`` returns the input gradient and overwrites ``grads``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> conv = nn.Conv2d(3, 8, kernel_size=3, padding="same", rng=0)
    >>> x = np.ones((2, 3, 16, 16), dtype=np.float32)
    >>> conv(x).shape
    (2, 8, 16, 16)
    >>> grad_x = conv.backward(np.ones((2, 8, 16, 16), dtype=np.float32))
    >>> grad_x.shape, conv.grads["weight"].shape, conv.grads["bias"].shape
    ((2, 3, 16, 16), (8, 3, 3, 3), (8,))
    """

    padding: tuple[int, int] | tuple[tuple[int, int], tuple[int, int]] | Literal["valid", "same", "same_lower"]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: Padding = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        algorithm: str = "direct",
        dtype: DTypeLike = np.float32,
        rng: RngLike = None,
        layout: str = "NCHW",
    ) -> None:
        super().__init__()
        self._channels_last = as_data_layout(layout)
        self.layout = layout
        self.in_channels = as_int("in_channels", in_channels, 1)
        self.out_channels = as_int("out_channels", out_channels, 1)
        self.kernel_size = as_pair("kernel_size", kernel_size, 1)
        self.stride = as_pair("stride", stride, 1)
        self.dilation = as_pair("dilation", dilation, 1)
        self.groups = as_int("groups", groups, 1)
        _check_groups(self.in_channels, self.out_channels, self.groups)
        check_algorithm(algorithm, self.kernel_size, self.stride, self.dilation, self.groups)
        self.algorithm = algorithm
        sides = as_padding(padding)
        # PyTorch's form where it has one: a word, or (pad_h, pad_w) for symmetric padding
        self.padding = (
            sides if isinstance(sides, str) or sides[0][0] != sides[0][1] or sides[1][0] != sides[1][1]
            else (sides[0][0], sides[1][0])
        )
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        self.dtype = as_dtype(dtype)
        weight_shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        _init_params(self, weight_shape, self.out_channels, bias, rng, dtype)

    def _pads(self, sizes: tuple[int, int] | None) -> tuple[tuple[int, int], tuple[int, int]]:
        """((top, bottom), (left, right)) for an input of spatial ``sizes`` (None: any size, which
        'same' and 'same_lower' allow at stride 1 only)."""
        padding = as_padding(self.padding)
        if sizes is None:
            if isinstance(padding, str) and padding != "valid" and self.stride != (1, 1):
                raise ValueError(f"padding={padding!r} at stride {self.stride} depends on the input size")
            sizes = (1, 1)  # no side depends on it here
        return padding_sides(padding, sizes, self.kernel_size, self.stride, self.dilation)

    def _read_input(self, x: np.ndarray) -> tuple[np.ndarray, tuple[_ReadAxis, _ReadAxis]]:
        """The padded input as far as the convolution reads it (``_read_axis``), and how it was read."""
        self._check_padding_mode_limits(x)
        mode = _NUMPY_PAD_MODES[self.padding_mode]
        pads = self._pads(x.shape[-2:])
        reads = [
            _read_axis(size, axis_pads, kernel, stride, dilation, mode)
            for size, axis_pads, kernel, stride, dilation in zip(
                x.shape[-2:], pads, self.kernel_size, self.stride, self.dilation
            )
        ]
        read_h, read_w = reads
        if read_h is None or read_w is None:
            # Refused here, from the sizes: padding the input only for conv2d to find no window in it
            # would copy all of the padding (2 GiB for a padding of 10**4).
            (kernel_h, kernel_w), (dilation_h, dilation_w) = self.kernel_size, self.dilation
            raise ValueError(
                f"the dilated kernel ({dilation_h * (kernel_h - 1) + 1}x{dilation_w * (kernel_w - 1) + 1}: "
                f"kernel_size={self.kernel_size}, dilation={self.dilation}) is larger than the padded input "
                f"({x.shape[-2] + sum(pads[0])}x{x.shape[-1] + sum(pads[1])}: x of shape {x.shape}, "
                f"padding={self.padding}, padding_mode={self.padding_mode!r})"
            )
        return np.take(np.take(x, read_h.source, axis=-2), read_w.source, axis=-1), (read_h, read_w)

    def _check_padding_mode_limits(self, x: np.ndarray) -> None:
        for axis_name, size, pads in zip(("height", "width"), x.shape[-2:], self._pads(x.shape[-2:])):
            _check_padding_mode_limit(self.padding_mode, axis_name, size, pads)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Convolve ``x`` (N, C_in, H, W) or (C_in, H, W); returns (N, C_out, H_out, W_out) or unbatched."""
        return self._convolve(x, self._params["weight"], self._params.get("bias"))

    def _convolve(
        self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, activation: str | None = None,
        activation_params: dict[str, Any] | None = None, save: bool = True,
    ) -> np.ndarray:
        """The forward with this layer's geometry and the given weight and bias (BatchNorm folded in,
        for nn.Sequential), followed by an activation in place; ``save`` keeps what backward needs."""
        x = check_input(self, x, (3, 4), self.dtype)
        _check_channels(self, x, self.in_channels, layout=self.layout)
        conv_padding: Padding
        reads = None
        stride, dilation = self.stride, self.dilation
        first = channels_first(x) if self._channels_last else x
        if self.padding_mode == "zeros":
            conv_input, conv_padding = x, self.padding
        else:
            # Only the padded elements that windows read are copied: replicate padding may be any size.
            (conv_input, reads), conv_padding = self._read_input(first), 0
            if self._channels_last:
                conv_input = np.ascontiguousarray(channels_last(conv_input))
            stride = (reads[0].stride, reads[1].stride)
            dilation = (reads[0].dilation, reads[1].dilation)
        y = functional.conv2d(conv_input, weight, bias, stride, conv_padding, dilation, self.groups,
                              algorithm=self.algorithm, activation=activation, activation_params=activation_params,
                              layout=self.layout)
        if save:
            self._save_for_backward(y, conv_input, conv_padding, reads, first.shape[-2:])
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out`` (the output's shape); overwrites ``grads['weight'|'bias']``."""
        grad_out, (conv_input, conv_padding, reads, input_hw) = self._saved_for_backward(grad_out)
        stride, dilation = self.stride, self.dilation
        if reads is not None:
            stride, dilation = (reads[0].stride, reads[1].stride), (reads[0].dilation, reads[1].dilation)
        grad_input = _conv_gradients(self, _OPS_2D, grad_out, conv_input, stride, conv_padding, dilation,
                                     self.groups, self.algorithm, {"layout": self.layout})
        if reads is None:  # padding_mode 'zeros'
            return grad_input
        if self._channels_last:
            grad_input = channels_first(grad_input)
        folded = _fold_read(_fold_read(grad_input, -1, reads[1], input_hw[1]), -2, reads[0], input_hw[0])
        return np.ascontiguousarray(channels_last(folded) if self._channels_last else folded)

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding not in ((0, 0), "valid"):
            text += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if "bias" not in self._params:
            text += ", bias=False"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode!r}"
        if self.algorithm != "direct":
            text += f", algorithm={self.algorithm!r}"
        if self._channels_last:
            text += f", layout={self.layout!r}"
        return text + f", dtype={self.dtype}"


class _ConvTransposeNd(Module):
    """The forward, backward and repr of ConvTranspose1d and ConvTranspose2d."""

    _OPS: _ConvOps
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: Any  # PyTorch's spelling where it has one: a word, (p,) / (pH, pW), or the sides
    output_padding: tuple[int, ...]
    dilation: tuple[int, ...]
    in_channels: int
    out_channels: int
    groups: int
    algorithm: str
    dtype: np.dtype[Any]
    layout: str | None = None  # the 2-D layer's; the 1-D layer's ops take channels first only

    def _layout(self) -> dict[str, str]:
        """The ops' layout keyword, where the layer has one."""
        return {} if self.layout is None else {"layout": self.layout}

    def _padding_per_axis(self) -> PaddingWord | tuple[tuple[int, int], ...]:
        """The padding as a word or ``(before, after)`` per axis."""
        if len(self.kernel_size) == 1:
            sides_1d = as_padding_1d(self.padding)
            return sides_1d if isinstance(sides_1d, str) else (sides_1d,)
        sides_2d = as_padding(self.padding)
        return sides_2d if isinstance(sides_2d, str) else tuple(sides_2d)

    def forward(self, x: np.ndarray, output_size: Any = None) -> np.ndarray:
        """Transposed convolution of ``x``, shape ``(N, C_in, *spatial)`` or ``(C_in, *spatial)``.

        ``output_size`` (the spatial sizes, alone or after (N, C_out)) picks the output's size as
        PyTorch's ``forward(x, output_size)``: with numeric padding it replaces output_padding,
        with 'same' / 'same_lower' the input size times the stride (see
        :func:`convx.functional.conv_transpose2d`).
        """
        dims = len(self.kernel_size)
        x = check_input(self, x, (dims + 1, dims + 2), self.dtype)
        _check_channels(self, x, self.in_channels, dims, self.layout)
        last = self.layout in _LAST_LAYOUTS
        if last and output_size is not None and not isinstance(output_size, int) and len(output_size) == dims + 2:
            output_size = channels_first_shape(as_shape("output_size", output_size, (dims + 2,)), dims)
        padding = self._padding_per_axis()
        numeric = not isinstance(padding, str) or padding == "valid"
        output_padding = (0,) * dims if output_size is not None and numeric else self.output_padding
        sizes = x.shape[-dims - 1:-1] if last else x.shape[-dims:]
        sides, output_padding = transpose_padding(padding, output_padding, output_size, sizes,
                                                  self.kernel_size, self.stride, self.dilation)
        y = self._OPS.transpose(
            x, self._params["weight"], self._params.get("bias"), self.stride, sides, output_padding, self.groups,
            self.dilation, algorithm=self.algorithm, **self._layout(),
        )
        self._save_for_backward(y, x, sides)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out`` (the output's shape); overwrites ``grads['weight'|'bias']``."""
        grad_out, (x, sides) = self._saved_for_backward(grad_out)
        weight = self._params["weight"]
        # The transposed convolution is the adjoint of the convolution by weight as a map of its input,
        # so its input gradient is that convolution, and its weight gradient is the convolution's weight
        # gradient with the roles of input and output gradient swapped.
        grad_x = self._OPS.conv(grad_out, weight, None, self.stride, sides, self.dilation, self.groups,
                                algorithm=self.algorithm, **self._layout())
        dims = len(self.kernel_size)
        if self.layout in _LAST_LAYOUTS:
            # the same steps on channels-first views
            grad_x, x, grad_out = channels_first(grad_x, dims), channels_first(x, dims), channels_first(grad_out, dims)
        sizes = x.shape[-dims:]
        if grad_x.shape[-dims:] != sizes:
            # output_padding >= stride (possible when dilation > stride): the forward pass saw x
            # extended by zeros that the convolution's output still covers; zeros contribute
            # nothing to the weight gradient, and their input gradient is dropped.
            extra = [(0, out - size) for out, size in zip(grad_x.shape[-dims:], sizes)]
            x = np.pad(x, [(0, 0)] * (x.ndim - dims) + extra)
            crop: tuple[Any, ...] = (Ellipsis,) + tuple(slice(0, size) for size in sizes)
            grad_x = np.ascontiguousarray(grad_x[crop])
        if self.layout in _LAST_LAYOUTS:
            grad_x, x, grad_out = channels_last(grad_x, dims), channels_last(x, dims), channels_last(grad_out, dims)
        if self._needs_grad("weight"):
            self._store_grad("weight", self._OPS.backward_weight(
                x, grad_out, weight.shape, self.stride, sides, self.dilation, self.groups, algorithm=self.algorithm,
                **self._layout(),
            ))
        if self._needs_grad("bias"):
            self._store_grad("bias", self._OPS.backward_bias(grad_out, **self._layout()))
        return np.ascontiguousarray(grad_x)

    def extra_repr(self) -> str:
        zeros, ones = (0,) * len(self.kernel_size), (1,) * len(self.kernel_size)
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != zeros:
            text += f", padding={self.padding!r}"
        if self.output_padding != zeros:
            text += f", output_padding={self.output_padding}"
        if self.dilation != ones:
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if "bias" not in self._params:
            text += ", bias=False"
        if self.algorithm != "direct":
            text += f", algorithm={self.algorithm!r}"
        if self.layout in _LAST_LAYOUTS:
            text += f", layout={self.layout!r}"
        return text + f", dtype={self.dtype}"


class ConvTranspose2d(_ConvTransposeNd):
    """2-D transposed convolution layer, ``torch.nn.ConvTranspose2d`` on the convx kernels.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int or (int, int)
    stride : int or (int, int), default 1
    padding : int, (int, int), ((int, int), (int, int)), 'valid', 'same' or 'same_lower', default 0
        Removes ``padding`` rows/columns from each side of the full transposed convolution, or per
        side ``((top, bottom), (left, right))``; 'same' / 'same_lower' give an output of the input
        size times the stride (ONNX's SAME_UPPER / SAME_LOWER, see
        :func:`convx.functional.conv_transpose2d`).
    output_padding : int or (int, int), default 0
        Extra rows/columns at the bottom/right; smaller than the stride or the dilation.
    groups : int, default 1
    bias : bool, default True
    dilation : int or (int, int), default 1
    algorithm : {'direct', 'winograd', 'auto'}, default 'direct'
        As for :class:`Conv2d`: Winograd's F(4x4, 3x3) applies with a 3x3 kernel, stride 1,
        dilation 1 and groups=1.
    dtype : float32 or float64, default float32
    rng : None, int or numpy.random.Generator
        Source of the initial weights (PyTorch's defaults, with PyTorch's fan-in
        ``C_out / groups * kH * kW``).
    layout : {'NCHW', 'NHWC'}, default 'NCHW'
        The layout of the input and output (:func:`convx.conv_transpose2d`); the weight is the
        same in both.

    Attributes
    ----------
    params : dict
        ``'weight'`` of shape (C_in, C_out / groups, kH, kW) and, with ``bias``, ``'bias'`` (C_out,).

    Notes
    -----
    Input (N, C_in, H, W) or (C_in, H, W); output (N, C_out, H_out, W_out) with
    ``H_out = (H - 1)*sH - top - bottom + dH*(kH - 1) + output_padding_H + 1``; ``forward(x,
    output_size)`` picks ``(H_out, W_out)`` as PyTorch's does (output_padding derived from it).

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> up = nn.ConvTranspose2d(4, 2, kernel_size=2, stride=2, rng=0)
    >>> up(np.ones((1, 4, 5, 5), dtype=np.float32)).shape
    (1, 2, 10, 10)
    >>> down_then_up = nn.ConvTranspose2d(4, 2, kernel_size=3, stride=2, padding=1, rng=0)
    >>> down_then_up(np.ones((1, 4, 5, 5), dtype=np.float32), output_size=(10, 10)).shape
    (1, 2, 10, 10)
    """

    _OPS = _OPS_2D

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: Padding = 0,
        output_padding: IntPair = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: IntPair = 1,
        *,
        algorithm: str = "direct",
        dtype: DTypeLike = np.float32,
        rng: RngLike = None,
        layout: str = "NCHW",
    ) -> None:
        super().__init__()
        as_data_layout(layout)
        self.layout = layout
        self.in_channels = as_int("in_channels", in_channels, 1)
        self.out_channels = as_int("out_channels", out_channels, 1)
        self.kernel_size = as_pair("kernel_size", kernel_size, 1)
        self.stride = as_pair("stride", stride, 1)
        sides = as_padding(padding)
        # PyTorch's form where it has one: a word, or (pH, pW) for the same padding on both sides
        self.padding = (
            sides if isinstance(sides, str) or sides[0][0] != sides[0][1] or sides[1][0] != sides[1][1]
            else (sides[0][0], sides[1][0])
        )
        self.output_padding = as_pair("output_padding", output_padding, 0)
        self.dilation = as_pair("dilation", dilation, 1)
        self.groups = as_int("groups", groups, 1)
        _check_groups(self.in_channels, self.out_channels, self.groups)
        for axis in range(2):
            if self.output_padding[axis] >= max(self.stride[axis], self.dilation[axis]):
                raise ValueError(
                    f"output_padding must be smaller than either stride or dilation, got "
                    f"output_padding={self.output_padding}, stride={self.stride}, dilation={self.dilation}"
                )
        check_algorithm(algorithm, self.kernel_size, self.stride, self.dilation, self.groups)
        self.algorithm = algorithm
        self.dtype = as_dtype(dtype)
        weight_shape = (self.in_channels, self.out_channels // self.groups, *self.kernel_size)
        _init_params(self, weight_shape, self.out_channels, bias, rng, dtype)


class Conv1d(Module):
    """1-D convolution layer, ``torch.nn.Conv1d`` on the convx kernels (:func:`convx.conv1d`).

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int or (int,)
    stride : int or (int,), default 1
    padding : int, (int,), ((int, int),), 'valid', 'same' or 'same_lower', default 0
        Zeros on both ends, or ``((left, right),)``. ``'same'`` gives ``ceil(L / stride)`` outputs,
        the extra element of an odd total on the right (PyTorch's 'same' at stride 1, ONNX's
        SAME_UPPER at any stride); ``'same_lower'`` puts it on the left.
    dilation : int or (int,), default 1
    groups : int, default 1
        Must divide ``in_channels`` and ``out_channels``.
    bias : bool, default True
    padding_mode : {'zeros', 'reflect', 'replicate', 'circular'}, default 'zeros'
        What fills the padding, as for :class:`Conv2d`.
    algorithm : {'direct', 'auto'}, default 'direct'
    dtype : float32 or float64, default float32
    rng : None, int or numpy.random.Generator
        Source of the initial weights (PyTorch's default: kaiming-uniform with ``a = sqrt(5)``,
        bias ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, ``fan_in = C_in / groups * K``).
    layout : {'NCW', 'NWC'}, default 'NCW'
        The layout of the input and output (:func:`convx.conv1d`); the weight is the same in both.

    Attributes
    ----------
    params : dict
        ``'weight'`` of shape (C_out, C_in / groups, K) and, with ``bias``, ``'bias'`` (C_out,):
        PyTorch's names and shapes, so that its ``state_dict`` loads.

    Notes
    -----
    Input (N, C_in, L) or (C_in, L); output (N, C_out, L_out) with
    ``L_out = floor((L + left + right - d*(K - 1) - 1) / s) + 1``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> conv = nn.Conv1d(3, 8, kernel_size=5, padding="same", rng=0)
    >>> conv(np.ones((2, 3, 20), dtype=np.float32)).shape
    (2, 8, 20)
    >>> conv.backward(np.ones((2, 8, 20), dtype=np.float32)).shape, conv.grads["weight"].shape
    ((2, 3, 20), (8, 3, 5))
    """

    padding: tuple[int] | tuple[tuple[int, int]] | Literal["valid", "same", "same_lower"]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntSingle,
        stride: IntSingle = 1,
        padding: Padding1d = 0,
        dilation: IntSingle = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        algorithm: str = "direct",
        dtype: DTypeLike = np.float32,
        rng: RngLike = None,
        layout: str = "NCW",
    ) -> None:
        super().__init__()
        self._channels_last = as_data_layout(layout, 1)
        self.layout = layout
        self.in_channels = as_int("in_channels", in_channels, 1)
        self.out_channels = as_int("out_channels", out_channels, 1)
        self.kernel_size = (as_single("kernel_size", kernel_size, 1),)
        self.stride = (as_single("stride", stride, 1),)
        self.dilation = (as_single("dilation", dilation, 1),)
        self.groups = as_int("groups", groups, 1)
        _check_groups(self.in_channels, self.out_channels, self.groups)
        check_algorithm_1d(algorithm)
        self.algorithm = algorithm
        sides = as_padding_1d(padding)
        # PyTorch's form where it has one: a word, or (p,) for the same padding at both ends
        self.padding = sides if isinstance(sides, str) else (sides[0],) if sides[0] == sides[1] else (sides,)
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        self.dtype = as_dtype(dtype)
        weight_shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        _init_params(self, weight_shape, self.out_channels, bias, rng, dtype)

    def _read_input(self, x: np.ndarray) -> tuple[np.ndarray, _ReadAxis]:
        """The padded input as far as the convolution reads it (``_read_axis``), and how it was read."""
        length = x.shape[-1]
        sides = as_padding_1d(self.padding)
        if isinstance(sides, str):
            _, sides = padding_sides(sides, (1, length), (1, *self.kernel_size), (1, *self.stride),
                                     (1, *self.dilation))
        _check_padding_mode_limit(self.padding_mode, "length", length, sides)
        (kernel,), (stride,), (dilation,) = self.kernel_size, self.stride, self.dilation
        read = _read_axis(length, sides, kernel, stride, dilation, _NUMPY_PAD_MODES[self.padding_mode])
        if read is None:
            raise ValueError(
                f"the dilated kernel ({dilation * (kernel - 1) + 1}: kernel_size={kernel}, dilation={dilation}) is "
                f"longer than the padded input ({length + sum(sides)}: x of shape {x.shape}, padding={self.padding}, "
                f"padding_mode={self.padding_mode!r})"
            )
        return np.take(x, read.source, axis=-1), read

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Convolve ``x`` (N, C_in, L) or (C_in, L); returns (N, C_out, L_out) or (C_out, L_out)."""
        x = check_input(self, x, (2, 3), self.dtype)
        _check_channels(self, x, self.in_channels, dims=1, layout=self.layout)
        conv_padding: Padding1d
        read = None
        stride, dilation = self.stride[0], self.dilation[0]
        first = channels_first(x, 1) if self._channels_last else x
        if self.padding_mode == "zeros":
            conv_input, conv_padding = x, self.padding
        else:
            # Only the padded elements that windows read are copied: replicate padding may be any size.
            (conv_input, read), conv_padding = self._read_input(first), 0
            if self._channels_last:
                conv_input = np.ascontiguousarray(channels_last(conv_input, 1))
            stride, dilation = read.stride, read.dilation
        y = functional.conv1d(conv_input, self._params["weight"], self._params.get("bias"), stride, conv_padding,
                              dilation, self.groups, algorithm=self.algorithm, layout=self.layout)
        self._save_for_backward(y, conv_input, conv_padding, stride, dilation, read, first.shape[-1])
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out`` (the output's shape); overwrites ``grads['weight'|'bias']``."""
        grad_out, (conv_input, conv_padding, stride, dilation, read, length) = self._saved_for_backward(grad_out)
        grad_input = _conv_gradients(self, _OPS_1D, grad_out, conv_input, stride, conv_padding, dilation,
                                     self.groups, self.algorithm, {"layout": self.layout})
        if read is None:  # padding_mode 'zeros'
            return grad_input
        if self._channels_last:
            return np.ascontiguousarray(channels_last(_fold_read(channels_first(grad_input, 1), -1, read, length), 1))
        return np.ascontiguousarray(_fold_read(grad_input, -1, read, length))

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding not in ((0,), "valid"):
            text += f", padding={self.padding!r}"
        if self.dilation != (1,):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if "bias" not in self._params:
            text += ", bias=False"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode!r}"
        if self.algorithm != "direct":
            text += f", algorithm={self.algorithm!r}"
        if self._channels_last:
            text += f", layout={self.layout!r}"
        return text + f", dtype={self.dtype}"


class ConvTranspose1d(_ConvTransposeNd):
    """1-D transposed convolution layer, ``torch.nn.ConvTranspose1d`` on the convx kernels.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int or (int,)
    stride : int or (int,), default 1
    padding : int, (int,), ((int, int),), 'valid', 'same' or 'same_lower', default 0
        Removes ``padding`` elements from each end of the full transposed convolution, or
        ``((left, right),)``; 'same' / 'same_lower' give ``L * s`` outputs (ONNX's SAME_UPPER /
        SAME_LOWER).
    output_padding : int or (int,), default 0
        Extra elements on the right; smaller than the stride or the dilation.
    groups : int, default 1
    bias : bool, default True
    dilation : int or (int,), default 1
    algorithm : {'direct', 'auto'}, default 'direct'
    dtype : float32 or float64, default float32
    rng : None, int or numpy.random.Generator
        Source of the initial weights (PyTorch's defaults, with PyTorch's fan-in ``C_out / groups * K``).

    Attributes
    ----------
    params : dict
        ``'weight'`` of shape (C_in, C_out / groups, K) and, with ``bias``, ``'bias'`` (C_out,).

    Notes
    -----
    Input (N, C_in, L) or (C_in, L); output (N, C_out, L_out) with
    ``L_out = (L - 1)*s - left - right + d*(K - 1) + output_padding + 1``; ``forward(x,
    output_size)`` picks ``L_out`` as PyTorch's does.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> up = nn.ConvTranspose1d(4, 2, kernel_size=2, stride=2, rng=0)
    >>> up(np.ones((1, 4, 5), dtype=np.float32)).shape
    (1, 2, 10)
    """

    _OPS = _OPS_1D

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntSingle,
        stride: IntSingle = 1,
        padding: Padding1d = 0,
        output_padding: IntSingle = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: IntSingle = 1,
        *,
        algorithm: str = "direct",
        dtype: DTypeLike = np.float32,
        rng: RngLike = None,
    ) -> None:
        super().__init__()
        self.in_channels = as_int("in_channels", in_channels, 1)
        self.out_channels = as_int("out_channels", out_channels, 1)
        self.kernel_size = (as_single("kernel_size", kernel_size, 1),)
        self.stride = (as_single("stride", stride, 1),)
        sides_1d = as_padding_1d(padding)
        self.padding = (
            sides_1d if isinstance(sides_1d, str) else (sides_1d[0],) if sides_1d[0] == sides_1d[1] else (sides_1d,)
        )
        self.output_padding = (as_single("output_padding", output_padding, 0),)
        self.dilation = (as_single("dilation", dilation, 1),)
        self.groups = as_int("groups", groups, 1)
        _check_groups(self.in_channels, self.out_channels, self.groups)
        if self.output_padding[0] >= max(self.stride[0], self.dilation[0]):
            raise ValueError(
                f"output_padding must be smaller than either stride or dilation, got "
                f"output_padding={self.output_padding[0]}, stride={self.stride[0]}, dilation={self.dilation[0]}"
            )
        check_algorithm_1d(algorithm)
        self.algorithm = algorithm
        self.dtype = as_dtype(dtype)
        weight_shape = (self.in_channels, self.out_channels // self.groups, *self.kernel_size)
        _init_params(self, weight_shape, self.out_channels, bias, rng, dtype)
