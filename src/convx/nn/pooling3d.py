"""3-D pooling layers (``torch.nn.MaxPool3d`` and friends) on :mod:`convx.functional.pooling3d`."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import functional
from .._checks import as_bool, as_int, as_triple
from .._typing import AdaptiveSize3d, IntTriple
from ..functional.conv3d import Padding3d
from ..functional.lppool import _norm_type
from ..functional.pooling3d import _avg_args, _window_args
from .module import Module, check_input
from .pooling import _input_ndims, _layout_arg, _layout_text, _maxima, _MaxUnpoolNd



def _shown(values: tuple[int, int, int]) -> IntTriple:
    """An argument as PyTorch keeps it: an int where every axis has the same value."""
    return values[0] if len(set(values)) == 1 else values


def _padding_kept(spec: Any) -> Any:
    """A layer's checked padding as kept: a word, the per-axis amounts (an int where all agree) where
    every axis is padded alike on both sides, as PyTorch keeps them, or the per-side pairs."""
    if isinstance(spec, str) or any(before != after for before, after in spec):
        return spec
    return _shown((spec[0][0], spec[1][0], spec[2][0]))




class MaxPool3d(Module):
    """3-D max pooling, ``torch.nn.MaxPool3d`` on the convx kernels (:func:`convx.max_pool3d`).

    Parameters
    ----------
    kernel_size : int or (int, int, int)
        Window size ``(kd, kh, kw)``.
    stride : int or (int, int, int), optional
        Defaults to ``kernel_size``.
    padding : int, (int, int, int), ((int, int), (int, int), (int, int)), 'valid', 'same' or 'same_lower', default 0
        Implicit ``-inf``, as :func:`convx.max_pool3d` takes it: per side up to ``dilation *
        (kernel_size - 1)``; ``'same'`` gives ``ceil(size / stride)`` outputs.
    dilation : int or (int, int, int), default 1
    return_indices : bool, default False
        ``forward`` returns ``(y, indices)``, the flat ``d * H * W + h * W + w`` positions of the maxima.
    ceil_mode : bool, default False
        Round the output size up, keeping a last partial window.
    layout : {'NCDHW', 'NDHWC'}, default 'NCDHW'
        Keyword only: channels first (PyTorch's) or channels last, for the input, the output and
        the gradients (``(N, D, H, W, C)``: NDHWC runs natively).

    Notes
    -----
    Input (N, C, D, H, W) or (C, D, H, W); output (N, C, D_out, H_out, W_out) (with
    ``layout='NDHWC'``: (N, D, H, W, C) and (N, D_out, H_out, W_out, C)). ``backward(grad_out)``
    takes the gradient of ``y`` (also with ``return_indices``) and sends each to its window's maximum.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> pool = nn.MaxPool3d(2)
    >>> pool(np.arange(8.0).reshape(1, 1, 2, 2, 2))
    array([[[[[7.]]]]])
    >>> pool.backward(np.ones((1, 1, 1, 1, 1)))[0, 0, 1]
    array([[0., 0.],
           [0., 1.]])
    """

    _DIMS = 3

    def __init__(
        self, kernel_size: IntTriple, stride: IntTriple | None = None, padding: Padding3d = 0,
        dilation: IntTriple = 1, return_indices: bool = False, ceil_mode: bool = False, *, layout: str = "NCDHW",
    ) -> None:
        super().__init__()
        self.layout = _layout_arg(layout, 3)
        self.return_indices = as_bool("return_indices", return_indices)
        self.ceil_mode = as_bool("ceil_mode", ceil_mode)
        kernel, stride_, spec, dilation_ = _window_args(kernel_size, stride, padding, dilation, self.ceil_mode)
        self.kernel_size, self.stride, self.padding, self.dilation = (
            _shown(kernel), _shown(stride_), _padding_kept(spec), _shown(dilation_))

    def forward(self, x: np.ndarray) -> Any:
        """Max over each window of ``x``, shape (N, C, D, H, W) or (C, D, H, W) (channels last with
        ``layout='NDHWC'``); ``(y, indices)`` with ``return_indices``."""
        x = check_input(self, x, _input_ndims(self))
        y, indices = _maxima(self, functional.max_pool3d, x, self.kernel_size, self.stride, self.padding,
                             self.dilation, self.ceil_mode, layout=self.layout)
        self._save_for_backward(y, indices, x.shape)
        return (y, indices) if self.return_indices else y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out`` (the output's shape)."""
        grad_out, (indices, input_shape) = self._saved_for_backward(grad_out)
        return functional.max_pool3d_backward(grad_out, indices, input_shape, layout=self.layout)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}, "
            f"dilation={self.dilation}, ceil_mode={self.ceil_mode}{_layout_text(self)}"
        )


class AvgPool3d(Module):
    """3-D average pooling, ``torch.nn.AvgPool3d`` on the convx kernels (:func:`convx.avg_pool3d`).

    Parameters
    ----------
    kernel_size : int or (int, int, int)
    stride : int or (int, int, int), optional
        Defaults to ``kernel_size``.
    padding : int, (int, int, int), ((int, int), (int, int), (int, int)), 'valid', 'same' or 'same_lower', default 0
        Implicit zeros, as :func:`convx.avg_pool3d` takes them: per side up to ``dilation *
        (kernel_size - 1)``; ``'same'`` gives ``ceil(size / stride)`` outputs.
    ceil_mode : bool, default False
    count_include_pad : bool, default True
        Whether padded zeros count in each window's divisor.
    divisor_override : int, optional
        A positive divisor for every window instead.
    dilation : int or (int, int, int), default 1
        Spacing between a window's taps (ONNX's AveragePool ``dilations``; not in PyTorch).
    layout : {'NCDHW', 'NDHWC'}, default 'NCDHW'
        Keyword only: channels first (PyTorch's) or channels last, for the input, the output and
        the gradients (``(N, D, H, W, C)``: NDHWC runs natively).

    Notes
    -----
    Input (N, C, D, H, W) or (C, D, H, W); output (N, C, D_out, H_out, W_out) (with
    ``layout='NDHWC'``: (N, D, H, W, C) and (N, D_out, H_out, W_out, C)).

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> pool = nn.AvgPool3d(2)
    >>> pool(np.arange(8.0).reshape(1, 1, 2, 2, 2))
    array([[[[[3.5]]]]])
    >>> pool.backward(np.ones((1, 1, 1, 1, 1)))[0, 0, 0]
    array([[0.125, 0.125],
           [0.125, 0.125]])
    """

    _DIMS = 3

    def __init__(
        self, kernel_size: IntTriple, stride: IntTriple | None = None, padding: Padding3d = 0,
        ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None,
        dilation: IntTriple = 1, *, layout: str = "NCDHW",
    ) -> None:
        super().__init__()
        self.layout = _layout_arg(layout, 3)
        kernel, stride_, spec, dilation_, self.ceil_mode, self.count_include_pad, divisor = _avg_args(
            kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, dilation)
        self.kernel_size, self.stride, self.padding = _shown(kernel), _shown(stride_), _padding_kept(spec)
        self.dilation = _shown(dilation_)
        self.divisor_override = divisor or None

    def _options(self) -> dict[str, Any]:
        return dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding, ceil_mode=self.ceil_mode,
                    count_include_pad=self.count_include_pad, divisor_override=self.divisor_override,
                    dilation=self.dilation, layout=self.layout)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Mean over each window of ``x``, shape (N, C, D, H, W) or (C, D, H, W) (channels last with
        ``layout='NDHWC'``)."""
        x = check_input(self, x, _input_ndims(self))
        y = functional.avg_pool3d(x, **self._options())
        self._save_for_backward(y, x.shape)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out`` (the output's shape)."""
        grad_out, (input_shape,) = self._saved_for_backward(grad_out)
        return functional.avg_pool3d_backward(grad_out, input_shape, **self._options())

    def extra_repr(self) -> str:
        text = (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}, "
                f"ceil_mode={self.ceil_mode}, count_include_pad={self.count_include_pad}")
        if self.divisor_override is not None:
            text += f", divisor_override={self.divisor_override}"
        if self.dilation != 1:
            text += f", dilation={self.dilation}"
        return text + _layout_text(self)


def _output_size_arg(value: Any) -> Any:
    """``int | (int | None, int | None, int | None)``: None keeps that input size (as in PyTorch)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 3:
            raise ValueError(
                f"output_size must be an int or a triple, got a sequence of length {len(value)}: {value!r}")
        return tuple(None if v is None else as_int(f"output_size[{i}]", v, 1) for i, v in enumerate(value))
    return as_int("output_size", value, 1)


class AdaptiveAvgPool3d(Module):
    """Average pooling to a fixed output size, ``torch.nn.AdaptiveAvgPool3d`` on the convx kernels.

    Parameters
    ----------
    output_size : int or (int or None, int or None, int or None)
        (D_out, H_out, W_out); None keeps that input size. Output ``i`` averages the input range
        ``[floor(i*D/D_out), ceil((i+1)*D/D_out))`` along depth, likewise the others.
    layout : {'NCDHW', 'NDHWC'}, default 'NCDHW'
        Keyword only: channels first (PyTorch's) or channels last, for the input, the output and
        the gradients (``(N, D, H, W, C)``: NDHWC runs natively).

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.AdaptiveAvgPool3d((1, 1, 2))(np.arange(8.0).reshape(1, 1, 2, 2, 2))[0, 0]
    array([[[3., 4.]]])
    """

    _DIMS = 3

    def __init__(self, output_size: AdaptiveSize3d, *, layout: str = "NCDHW") -> None:
        super().__init__()
        self.layout = _layout_arg(layout, 3)
        self.output_size = _output_size_arg(output_size)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Average ``x``, shape (N, C, D, H, W) or (C, D, H, W) (channels last with ``layout='NDHWC'``),
        down to the output size."""
        x = check_input(self, x, _input_ndims(self))
        y = functional.adaptive_avg_pool3d(x, self.output_size, layout=self.layout)
        self._save_for_backward(y, x.shape)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out`` (the output's shape)."""
        grad_out, (input_shape,) = self._saved_for_backward(grad_out)
        return functional.adaptive_avg_pool3d_backward(grad_out, input_shape, layout=self.layout)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}{_layout_text(self)}"


class AdaptiveMaxPool3d(Module):
    """Max pooling to a fixed output size, ``torch.nn.AdaptiveMaxPool3d`` on the convx kernels.

    Parameters
    ----------
    output_size : int or (int or None, int or None, int or None)
        (D_out, H_out, W_out); None keeps that input size.
    return_indices : bool, default False
        ``forward`` returns ``(y, indices)``, the flat ``d * H * W + h * W + w`` positions of the maxima.
    layout : {'NCDHW', 'NDHWC'}, default 'NCDHW'
        Keyword only: channels first (PyTorch's) or channels last, for the input, the output and
        the gradients (``(N, D, H, W, C)``: NDHWC runs natively).

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.AdaptiveMaxPool3d(1)(np.arange(8.0).reshape(1, 1, 2, 2, 2))
    array([[[[[7.]]]]])
    """

    _DIMS = 3

    def __init__(self, output_size: AdaptiveSize3d, return_indices: bool = False, *, layout: str = "NCDHW") -> None:
        super().__init__()
        self.layout = _layout_arg(layout, 3)
        self.output_size = _output_size_arg(output_size)
        self.return_indices = as_bool("return_indices", return_indices)

    def forward(self, x: np.ndarray) -> Any:
        """Max of ``x``, shape (N, C, D, H, W) or (C, D, H, W) (channels last with ``layout='NDHWC'``), over
        adaptive windows; ``(y, indices)`` with ``return_indices``."""
        x = check_input(self, x, _input_ndims(self))
        y, indices = _maxima(self, functional.adaptive_max_pool3d, x, self.output_size, layout=self.layout)
        self._save_for_backward(y, indices, x.shape)
        return (y, indices) if self.return_indices else y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out`` (the output's shape)."""
        grad_out, (indices, input_shape) = self._saved_for_backward(grad_out)
        return functional.max_pool3d_backward(grad_out, indices, input_shape, layout=self.layout)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}{_layout_text(self)}"


class MaxUnpool3d(_MaxUnpoolNd):
    """Partial inverse of :class:`MaxPool3d`, ``torch.nn.MaxUnpool3d`` (:func:`convx.max_unpool3d`).

    Parameters
    ----------
    kernel_size : int or (int, int, int)
    stride : int or (int, int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int, int), default 0
    layout : {'NCDHW', 'NDHWC'}, default 'NCDHW'
        Keyword only: channels first (PyTorch's) or channels last, for x, the indices and the output.

    Notes
    -----
    ``forward(x, indices, output_size=None)``: x and indices (N, C, D, H, W) or (C, D, H, W), the
    indices flat positions in each output volume (as :func:`convx.max_pool3d` returns them).
    Where two inputs of a volume name one position, the later one is written, as in PyTorch;
    ``backward`` gives each input its position's gradient.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> import convx
    >>> y, indices = convx.max_pool3d(np.arange(8.0).reshape(1, 1, 2, 2, 2), 2, return_indices=True)
    >>> nn.MaxUnpool3d(2)(y, indices).ravel()
    array([0., 0., 0., 0., 0., 0., 0., 7.])
    """

    _DIMS = 3

    def __init__(
        self, kernel_size: IntTriple, stride: IntTriple | None = None, padding: IntTriple = 0, *,
        layout: str = "NCDHW",
    ) -> None:
        super().__init__()
        self.layout = _layout_arg(layout, 3)
        self.kernel_size = as_triple("kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else as_triple("stride", stride, 1)
        self.padding = as_triple("padding", padding, 0)


class LPPool3d(Module):
    """3-D power-average pooling, ``torch.nn.LPPool3d`` (:func:`convx.lp_pool3d`).

    Parameters
    ----------
    norm_type : float
        The power ``p``, positive and finite.
    kernel_size : int or (int, int, int)
    stride : int or (int, int, int), optional
        Defaults to ``kernel_size``.
    ceil_mode : bool, default False
    padding : int, (int, int, int), ((int, int), (int, int), (int, int)), 'valid', 'same' or 'same_lower', default 0
        Keyword only: zeros, as :func:`convx.lp_pool3d` takes them (ONNX's LpPool pads; not in
        PyTorch).
    dilation : int or (int, int, int), default 1
        Keyword only: spacing between a window's taps (ONNX's; not in PyTorch).
    layout : {'NCDHW', 'NDHWC'}, default 'NCDHW'
        Keyword only: channels first (PyTorch's) or channels last, for the input, the output and
        the gradients (``(N, D, H, W, C)``: NDHWC runs natively).

    Notes
    -----
    Input (N, C, D, H, W) or (C, D, H, W); output (N, C, D_out, H_out, W_out) (channels last with
    ``layout='NDHWC'``), each window's ``(sum of x ** p) ** (1 / p)``. The input is kept from
    ``forward`` for the backward pass.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> pool = nn.LPPool3d(2, (1, 1, 2))
    >>> pool(np.array([[[[[3., 4.]]]]]))
    array([[[[[5.]]]]])
    >>> pool.backward(np.ones((1, 1, 1, 1, 1)))
    array([[[[[0.6, 0.8]]]]])
    """

    _DIMS = 3

    def __init__(self, norm_type: float, kernel_size: IntTriple, stride: IntTriple | None = None,
                 ceil_mode: bool = False, *, padding: Padding3d = 0, dilation: IntTriple = 1,
                 layout: str = "NCDHW") -> None:
        super().__init__()
        self.layout = _layout_arg(layout, 3)
        self.norm_type = _norm_type(norm_type)
        self.ceil_mode = as_bool("ceil_mode", ceil_mode)
        kernel, stride_, spec, dilation_ = _window_args(kernel_size, stride, padding, dilation, self.ceil_mode)
        self.kernel_size, self.stride = _shown(kernel), _shown(stride_)
        self.padding, self.dilation = _padding_kept(spec), _shown(dilation_)

    def _options(self) -> tuple[Any, ...]:
        return self.norm_type, self.kernel_size, self.stride, self.ceil_mode

    def _keywords(self) -> dict[str, Any]:
        return dict(padding=self.padding, dilation=self.dilation, layout=self.layout)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The ``norm_type``-norm of each window of ``x``, shape (N, C, D, H, W) or (C, D, H, W) (channels
        last with ``layout='NDHWC'``)."""
        x = check_input(self, x, _input_ndims(self))
        y = functional.lp_pool3d(x, *self._options(), **self._keywords())
        self._save_for_backward(y, x)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out`` (the output's shape)."""
        grad_out, (x,) = self._saved_for_backward(grad_out)
        return functional.lp_pool3d_backward(grad_out, x, *self._options(), **self._keywords())

    def extra_repr(self) -> str:
        text = (f"norm_type={self.norm_type}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"ceil_mode={self.ceil_mode}")
        if self.padding != 0:
            text += f", padding={self.padding!r}"
        if self.dilation != 1:
            text += f", dilation={self.dilation}"
        return text + _layout_text(self)
