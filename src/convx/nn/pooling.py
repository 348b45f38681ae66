"""Pooling layers over the convx pooling kernels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import functional
from .._checks import DATA_LAYOUTS, MAX_POOL_DTYPES, as_bool, as_data_layout, as_int, as_pair, as_single
from .._typing import AdaptiveSize, IntPair, IntSingle, Padding, Padding1d
from ..functional.lppool import _norm_type
from ..functional.pooling import _window_values
from .module import Module, check_input, is_grad_enabled


def _maxima(module: Module, pool: Any, *args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """``pool``'s maxima and their argmax indices, or the maxima and None where nothing will read
    the indices: ``module`` does not return them and keeps nothing for a backward (under
    :class:`no_grad`). The indices are as large as the output again, in int64."""
    if getattr(module, "return_indices", False) or is_grad_enabled():
        y, indices = pool(*args, return_indices=True, **kwargs)
        return y, indices
    return pool(*args, return_indices=False, **kwargs), None


def _padding_arg(padding: Any, kernel_size: Any, dilation: Any, ceil_mode: bool, dims: int) -> Any:
    """A pooling layer's padding, checked as the functional op checks it: a padding word, the
    per-axis amounts where every axis is padded alike on both sides (as PyTorch keeps them), or the
    per-side pairs."""
    _, _, spec, _ = _window_values(kernel_size, None, padding, dilation, dims, ceil_mode)
    if isinstance(spec, str) or any(before != after for before, after in spec):
        return spec
    return spec[0][0] if dims == 1 else (spec[0][0], spec[1][0])


def _output_size_arg(value: Any) -> Any:
    """``int | (int | None, int | None)``: None keeps that input dimension (as in PyTorch)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"output_size must be an int or a pair, got a sequence of length {len(value)}: {value!r}")
        return tuple(None if v is None else as_int(f"output_size[{i}]", v, 1) for i, v in enumerate(value))
    return as_pair("output_size", value, 1)


def _layout_arg(layout: object, dims: int) -> str:
    """A layer's ``layout``: checked as the functional ops check it, kept as given."""
    as_data_layout(layout, dims)
    return str(layout)


def _layout_text(module: Any) -> str:
    """``, layout='NHWC'`` for a channels-last layer's repr; nothing for the default."""
    return "" if module.layout == DATA_LAYOUTS[module._DIMS][0] else f", layout={module.layout!r}"


def _input_ndims(module: Any) -> Any:
    """The ndims check_input allows: any for a channels-last layer, whose op names its layout in the refusal."""
    last = module.layout == DATA_LAYOUTS[module._DIMS][1]
    return range(33) if last else (module._DIMS + 1, module._DIMS + 2)


class _MaxPoolNd(Module):
    """The forward, backward and repr of MaxPool1d and MaxPool2d."""

    _DIMS: int
    return_indices = False
    kernel_size: Any
    stride: Any
    padding: Any
    dilation: Any
    ceil_mode: bool
    layout: str

    def forward(self, x: np.ndarray) -> Any:
        """Max over each window of ``x``, shape ``(N, C, *spatial)`` or ``(C, *spatial)`` (channels last with a
        channels-last ``layout``); ``(y, indices)`` with ``return_indices``."""
        pool = functional.max_pool1d if self._DIMS == 1 else functional.max_pool2d
        x = check_input(self, x, _input_ndims(self), dtypes=MAX_POOL_DTYPES)
        y, indices = _maxima(
            self, pool, x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
            layout=self.layout,
        )
        self._save_for_backward(y, indices, x.shape)
        return (y, indices) if self.return_indices else y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out`` (the output's shape)."""
        grad_out, (indices, input_shape) = self._saved_for_backward(grad_out)
        scatter = functional.max_pool1d_backward if self._DIMS == 1 else functional.max_pool2d_backward
        return scatter(grad_out, indices, input_shape, layout=self.layout)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}, "
            f"dilation={self.dilation}, ceil_mode={self.ceil_mode}{_layout_text(self)}"
        )


class _AvgPoolNd(Module):
    """The forward, backward and repr of AvgPool1d and AvgPool2d."""

    _DIMS: int
    divisor_override: int | None = None
    kernel_size: Any
    stride: Any
    padding: Any
    ceil_mode: bool
    count_include_pad: bool

    dilation: Any
    layout: str

    def _options(self) -> dict[str, Any]:
        options = dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding, ceil_mode=self.ceil_mode,
                       count_include_pad=self.count_include_pad, dilation=self.dilation, layout=self.layout)
        return options if self._DIMS == 1 else {**options, "divisor_override": self.divisor_override}

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Mean over each window of ``x``, shape ``(N, C, *spatial)`` or ``(C, *spatial)``."""
        pool = functional.avg_pool1d if self._DIMS == 1 else functional.avg_pool2d
        x = check_input(self, x, _input_ndims(self))
        y = pool(x, **self._options())
        self._save_for_backward(y, x.shape)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out`` (the output's shape)."""
        grad_out, (input_shape,) = self._saved_for_backward(grad_out)
        gather = functional.avg_pool1d_backward if self._DIMS == 1 else functional.avg_pool2d_backward
        return gather(grad_out, input_shape, **self._options())

    def extra_repr(self) -> str:
        text = f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}, ceil_mode={self.ceil_mode}"
        text += f", count_include_pad={self.count_include_pad}"
        if self.divisor_override is not None:
            text += f", divisor_override={self.divisor_override}"
        if self.dilation not in (1, (1, 1)):
            text += f", dilation={self.dilation}"
        return text + _layout_text(self)


class MaxPool2d(_MaxPoolNd):
    """2-D max pooling, ``torch.nn.MaxPool2d`` on the convx kernels.

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int, (int, int), ((int, int), (int, int)), 'valid', 'same' or 'same_lower', default 0
        Implicit ``-inf``, as :func:`convx.max_pool2d` takes it: per side up to
        ``dilation * (kernel_size - 1)``; ``'same'`` gives ``ceil(size / stride)`` outputs.
    dilation : int or (int, int), default 1
    return_indices : bool, default False
        ``forward`` returns ``(y, indices)``: each maximum's flat ``h * W + w`` in its plane
        (int64, ``y``'s shape), as :func:`convx.max_pool2d` gives them and
        :func:`convx.max_unpool2d` takes them.
    ceil_mode : bool, default False
        Round the output size up, keeping a last partial window.
    layout : {'NCHW', 'NHWC'}, default 'NCHW'
        Keyword only: channels first (PyTorch's) or channels last, for the input, the output
        and the gradients (``(N, H, W, C)``: NHWC runs natively).

    Notes
    -----
    Input (N, C, H, W) or (C, H, W); output (N, C, H_out, W_out) (with ``layout='NHWC'``:
    (N, H, W, C) and (N, H_out, W_out, C)). The backward pass sends each
    output's gradient to the input element that won its window (the first maximum); the winners'
    indices are kept from ``forward``. An int8 or uint8 input is pooled exactly in its dtype (its
    backward is refused: integers have no gradient).

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> pool = nn.MaxPool2d(2)
    >>> pool(np.arange(16.0).reshape(1, 1, 4, 4))[0, 0]
    array([[ 5.,  7.],
           [13., 15.]])
    >>> pool.backward(np.ones((1, 1, 2, 2)))[0, 0]
    array([[0., 0., 0., 0.],
           [0., 1., 0., 1.],
           [0., 0., 0., 0.],
           [0., 1., 0., 1.]])
    >>> nn.MaxPool2d(2, layout="NHWC")(np.arange(16.0).reshape(1, 4, 4, 1))[0, ..., 0]
    array([[ 5.,  7.],
           [13., 15.]])
    """

    _DIMS = 2

    def __init__(
        self, kernel_size: IntPair, stride: IntPair | None = None, padding: Padding = 0, dilation: IntPair = 1,
        return_indices: bool = False, ceil_mode: bool = False, *, layout: str = "NCHW",
    ) -> None:
        super().__init__()
        self.layout = _layout_arg(layout, 2)
        self.return_indices = as_bool("return_indices", return_indices)
        self.kernel_size = as_pair("kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else as_pair("stride", stride, 1)
        self.dilation = as_pair("dilation", dilation, 1)
        self.ceil_mode = as_bool("ceil_mode", ceil_mode)
        self.padding = _padding_arg(padding, self.kernel_size, self.dilation, self.ceil_mode, 2)


class AvgPool2d(_AvgPoolNd):
    """2-D average pooling, ``torch.nn.AvgPool2d`` on the convx kernels.

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int, (int, int), ((int, int), (int, int)), 'valid', 'same' or 'same_lower', default 0
        Implicit zeros, as :func:`convx.avg_pool2d` takes them: per side up to
        ``dilation * (kernel_size - 1)``; ``'same'`` gives ``ceil(size / stride)`` outputs.
    ceil_mode : bool, default False
    count_include_pad : bool, default True
        Whether padded zeros count in each window's divisor.
    divisor_override : int, optional
        Divide every window sum by this instead.
    dilation : int or (int, int), default 1
        Spacing between a window's taps (ONNX's AveragePool ``dilations``; not in PyTorch).
    layout : {'NCHW', 'NHWC'}, default 'NCHW'
        Keyword only: channels first (PyTorch's) or channels last, for the input, the output
        and the gradients (``(N, H, W, C)``: NHWC runs natively).

    Notes
    -----
    Input (N, C, H, W) or (C, H, W); output (N, C, H_out, W_out) (with ``layout='NHWC'``:
    (N, H, W, C) and (N, H_out, W_out, C)).

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.AvgPool2d(2)(np.arange(16.0).reshape(1, 1, 4, 4))[0, 0]
    array([[ 2.5,  4.5],
           [10.5, 12.5]])
    """

    _DIMS = 2

    def __init__(
        self, kernel_size: IntPair, stride: IntPair | None = None, padding: Padding = 0, ceil_mode: bool = False,
        count_include_pad: bool = True, divisor_override: int | None = None, dilation: IntPair = 1, *,
        layout: str = "NCHW",
    ) -> None:
        super().__init__()
        self.layout = _layout_arg(layout, 2)
        self.kernel_size = as_pair("kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else as_pair("stride", stride, 1)
        self.dilation = as_pair("dilation", dilation, 1)
        self.ceil_mode = as_bool("ceil_mode", ceil_mode)
        self.padding = _padding_arg(padding, self.kernel_size, self.dilation, self.ceil_mode, 2)
        self.count_include_pad = as_bool("count_include_pad", count_include_pad)
        self.divisor_override = None if divisor_override is None else as_int("divisor_override", divisor_override, 1)



def _resolve_output_size(
    output_size: tuple[int | None, int | None], x: np.ndarray, channels_last: bool = False
) -> tuple[int, int]:
    plane = x.shape[-3:-1] if channels_last else x.shape[-2:]
    height, width = (size if wanted is None else wanted for wanted, size in zip(output_size, plane))
    return height, width


class _AdaptiveAvgPoolNd(Module):
    """The forward, backward and repr of AdaptiveAvgPool1d and AdaptiveAvgPool2d."""

    _DIMS: int
    output_size: Any
    layout: str

    def _size(self, x: np.ndarray) -> Any:
        if self._DIMS == 1 or x.ndim not in (3, 4):  # (the op refuses a wrong ndim, naming the layout)
            return self.output_size
        return _resolve_output_size(self.output_size, x, self.layout == "NHWC")

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Average ``x``, shape ``(N, C, *spatial)`` or ``(C, *spatial)``, down to the output size."""
        pool = functional.adaptive_avg_pool1d if self._DIMS == 1 else functional.adaptive_avg_pool2d
        x = check_input(self, x, _input_ndims(self))
        y = pool(x, self._size(x), layout=self.layout)
        self._save_for_backward(y, x.shape)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out`` (the output's shape)."""
        grad_out, (input_shape,) = self._saved_for_backward(grad_out)
        gather = functional.adaptive_avg_pool1d_backward if self._DIMS == 1 else functional.adaptive_avg_pool2d_backward
        return gather(grad_out, input_shape, layout=self.layout)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}{_layout_text(self)}"


class _AdaptiveMaxPoolNd(_AdaptiveAvgPoolNd):
    """The forward and backward of AdaptiveMaxPool1d and AdaptiveMaxPool2d."""

    return_indices = False

    def forward(self, x: np.ndarray) -> Any:
        """Max of ``x``, shape ``(N, C, *spatial)`` or ``(C, *spatial)``, over adaptive windows; ``(y, indices)`` with
        ``return_indices``."""
        pool = functional.adaptive_max_pool1d if self._DIMS == 1 else functional.adaptive_max_pool2d
        x = check_input(self, x, _input_ndims(self), dtypes=MAX_POOL_DTYPES)
        y, indices = _maxima(self, pool, x, self._size(x), layout=self.layout)
        self._save_for_backward(y, indices, x.shape)
        return (y, indices) if self.return_indices else y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out`` (the output's shape)."""
        grad_out, (indices, input_shape) = self._saved_for_backward(grad_out)
        scatter = functional.max_pool1d_backward if self._DIMS == 1 else functional.max_pool2d_backward
        return scatter(grad_out, indices, input_shape, layout=self.layout)


class AdaptiveAvgPool2d(_AdaptiveAvgPoolNd):
    """Average pooling to a fixed output size, ``torch.nn.AdaptiveAvgPool2d`` on the convx kernels.

    Parameters
    ----------
    output_size : int or (int or None, int or None)
        (H_out, W_out); None keeps that input dimension. Output ``i`` averages the input range
        ``[floor(i*H/H_out), ceil((i+1)*H/H_out))``.
    layout : {'NCHW', 'NHWC'}, default 'NCHW'
        Keyword only: channels first (PyTorch's) or channels last, for the input, the output
        and the gradients (``(N, H, W, C)``: NHWC runs natively).

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.AdaptiveAvgPool2d((1, 2))(np.arange(8.0).reshape(1, 1, 2, 4))[0, 0]
    array([[2.5, 4.5]])
    """

    _DIMS = 2

    def __init__(self, output_size: AdaptiveSize, *, layout: str = "NCHW") -> None:
        super().__init__()
        self.layout = _layout_arg(layout, 2)
        self.output_size = _output_size_arg(output_size)


class AdaptiveMaxPool2d(_AdaptiveMaxPoolNd):
    """Max pooling to a fixed output size, ``torch.nn.AdaptiveMaxPool2d`` on the convx kernels.

    Parameters
    ----------
    output_size : int or (int or None, int or None)
        (H_out, W_out); None keeps that input dimension.
    return_indices : bool, default False
        ``forward`` returns ``(y, indices)``: each maximum's flat ``h * W + w`` in its plane
        (int64, ``y``'s shape).
    layout : {'NCHW', 'NHWC'}, default 'NCHW'
        Keyword only: channels first (PyTorch's) or channels last, for the input, the output
        and the gradients (``(N, H, W, C)``: NHWC runs natively).

    Notes
    -----
    Takes float32, float64, int8 and uint8 input, as :func:`convx.adaptive_max_pool2d` (the
    backward of an integer forward is refused).

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.AdaptiveMaxPool2d(1)(np.arange(8.0).reshape(1, 1, 2, 4))[0, 0]
    array([[7.]])
    """

    _DIMS = 2

    def __init__(self, output_size: AdaptiveSize, return_indices: bool = False, *, layout: str = "NCHW") -> None:
        super().__init__()
        self.layout = _layout_arg(layout, 2)
        self.return_indices = as_bool("return_indices", return_indices)
        self.output_size = _output_size_arg(output_size)


class _GlobalPool2d(Module):
    """The layout handling of GlobalAvgPool2d and GlobalMaxPool2d: adaptive pooling to 1x1."""

    _DIMS = 2
    keepdims: bool
    layout: str

    def _squeezed(self, y: np.ndarray) -> np.ndarray:
        """The 1x1 pooled ``y`` without its spatial axes, unless ``keepdims``."""
        if self.keepdims:
            return y
        return y[..., 0, 0, :] if self.layout == "NHWC" else y[..., 0, 0]

    def _pooled_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The 1x1 pooled shape of an input of ``input_shape``, with its spatial axes."""
        if self.layout == "NHWC":
            return (*input_shape[:-3], 1, 1, input_shape[-1])
        return (*input_shape[:-2], 1, 1)

    def extra_repr(self) -> str:
        return f"keepdims={self.keepdims}{_layout_text(self)}"


class GlobalAvgPool2d(_GlobalPool2d):
    """Mean over all spatial positions of each channel.

    Parameters
    ----------
    keepdims : bool, default False
        Output (N, C, 1, 1) instead of (N, C) (or (C, 1, 1) instead of (C,) unbatched).
    layout : {'NCHW', 'NHWC'}, default 'NCHW'
        Keyword only: channels first (PyTorch's) or channels last for the input and the
        gradients: ``(N, H, W, C)`` or ``(H, W, C)`` in, ``(N, C)`` out (``(N, 1, 1, C)`` with
        ``keepdims``). NHWC runs natively, on the channels-last adaptive average kernels.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.GlobalAvgPool2d()(np.ones((2, 3, 4, 4), dtype=np.float32)).shape
    (2, 3)
    >>> nn.GlobalAvgPool2d(keepdims=True, layout="NHWC")(np.ones((2, 4, 4, 3), dtype=np.float32)).shape
    (2, 1, 1, 3)
    """

    def __init__(self, keepdims: bool = False, *, layout: str = "NCHW") -> None:
        super().__init__()
        self.keepdims = as_bool("keepdims", keepdims)
        self.layout = _layout_arg(layout, 2)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Channel means of ``x`` (N, C, H, W) or (C, H, W): (N, C), or (N, C, 1, 1) with keepdims
        (with ``layout='NHWC'``: ``x`` (N, H, W, C), (N, 1, 1, C) with keepdims)."""
        x = check_input(self, x, _input_ndims(self))
        y = self._squeezed(functional.adaptive_avg_pool2d(x, (1, 1), layout=self.layout))
        self._save_for_backward(y, x.shape)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out`` (the output's shape): each position gets 1/(H*W) of its channel's."""
        grad_out, (input_shape,) = self._saved_for_backward(grad_out)
        return functional.adaptive_avg_pool2d_backward(grad_out.reshape(self._pooled_shape(input_shape)), input_shape,
                                                       layout=self.layout)


class GlobalMaxPool2d(_GlobalPool2d):
    """Maximum over all spatial positions of each channel.

    Parameters
    ----------
    keepdims : bool, default False
        Output (N, C, 1, 1) instead of (N, C) (or (C, 1, 1) instead of (C,) unbatched).
    layout : {'NCHW', 'NHWC'}, default 'NCHW'
        Keyword only: channels first (PyTorch's) or channels last for the input and the
        gradients: ``(N, H, W, C)`` or ``(H, W, C)`` in, ``(N, C)`` out (``(N, 1, 1, C)`` with
        ``keepdims``). NHWC runs natively, on the channels-last adaptive max kernels.

    Notes
    -----
    Takes float32, float64, int8 and uint8 input, as :func:`convx.adaptive_max_pool2d` (the
    backward of an integer forward is refused).

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.GlobalMaxPool2d()(np.arange(8.0).reshape(1, 2, 2, 2))
    array([[3., 7.]])
    >>> nn.GlobalMaxPool2d(layout="NHWC")(np.arange(8.0).reshape(1, 2, 2, 2))
    array([[6., 7.]])
    """

    def __init__(self, keepdims: bool = False, *, layout: str = "NCHW") -> None:
        super().__init__()
        self.keepdims = as_bool("keepdims", keepdims)
        self.layout = _layout_arg(layout, 2)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Channel maxima of ``x`` (N, C, H, W) or (C, H, W): (N, C), or (N, C, 1, 1) with keepdims
        (with ``layout='NHWC'``: ``x`` (N, H, W, C), (N, 1, 1, C) with keepdims)."""
        x = check_input(self, x, _input_ndims(self), dtypes=MAX_POOL_DTYPES)
        y, indices = _maxima(self, functional.adaptive_max_pool2d, x, (1, 1), layout=self.layout)
        y = self._squeezed(y)
        self._save_for_backward(y, indices, x.shape)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out`` (the output's shape): each channel's goes to its (first) maximum."""
        grad_out, (indices, input_shape) = self._saved_for_backward(grad_out)
        return functional.max_pool2d_backward(grad_out.reshape(indices.shape), indices, input_shape,
                                              layout=self.layout)


class MaxPool1d(_MaxPoolNd):
    """1-D max pooling, ``torch.nn.MaxPool1d`` on the convx kernels (:func:`convx.max_pool1d`).

    Parameters
    ----------
    kernel_size : int or (int,)
    stride : int or (int,), optional
        Defaults to ``kernel_size``.
    padding : int, (int,), ((int, int),), 'valid', 'same' or 'same_lower', default 0
        Implicit ``-inf``, as :func:`convx.max_pool1d` takes it (per side up to
        ``dilation * (kernel_size - 1)``).
    dilation : int or (int,), default 1
    return_indices : bool, default False
        ``forward`` returns ``(y, indices)``, the positions in ``[0, L)`` of the maxima.
    ceil_mode : bool, default False
        Round the output length up, keeping a last partial window.
    layout : {'NCW', 'NWC'}, default 'NCW'
        Keyword only: channels first (PyTorch's) or channels last, ``(N, L, C)``, for the input,
        the output and the gradients.

    Notes
    -----
    Input (N, C, L) or (C, L); output (N, C, L_out). ``backward(grad_out)`` takes the gradient of
    ``y`` (also with ``return_indices``) and sends each to its window's (first) maximum. An int8
    or uint8 input is pooled exactly in its dtype (its backward is refused).

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> pool = nn.MaxPool1d(2, return_indices=True)
    >>> pool(np.array([[[1., 3., 2., 5., 4.]]]))
    (array([[[3., 5.]]]), array([[[1, 3]]]))
    >>> pool.backward(np.ones((1, 1, 2)))
    array([[[0., 1., 0., 1., 0.]]])
    """

    _DIMS = 1

    def __init__(
        self, kernel_size: IntSingle, stride: IntSingle | None = None, padding: Padding1d = 0,
        dilation: IntSingle = 1, return_indices: bool = False, ceil_mode: bool = False, *, layout: str = "NCW",
    ) -> None:
        super().__init__()
        self.layout = _layout_arg(layout, 1)
        self.kernel_size = as_single("kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else as_single("stride", stride, 1)
        self.dilation = as_single("dilation", dilation, 1)
        self.return_indices = as_bool("return_indices", return_indices)
        self.ceil_mode = as_bool("ceil_mode", ceil_mode)
        self.padding = _padding_arg(padding, self.kernel_size, self.dilation, self.ceil_mode, 1)


class AvgPool1d(_AvgPoolNd):
    """1-D average pooling, ``torch.nn.AvgPool1d`` on the convx kernels (:func:`convx.avg_pool1d`).

    Parameters
    ----------
    kernel_size : int or (int,)
    stride : int or (int,), optional
        Defaults to ``kernel_size``.
    padding : int, (int,), ((int, int),), 'valid', 'same' or 'same_lower', default 0
        Implicit zeros, as :func:`convx.avg_pool1d` takes them (per side up to
        ``dilation * (kernel_size - 1)``).
    ceil_mode : bool, default False
    count_include_pad : bool, default True
        Whether padded zeros count in each window's divisor.
    dilation : int or (int,), default 1
        Spacing between a window's taps (ONNX's AveragePool ``dilations``; not in PyTorch).
    layout : {'NCW', 'NWC'}, default 'NCW'
        Keyword only: channels first (PyTorch's) or channels last, ``(N, L, C)``, for the input,
        the output and the gradients.

    Notes
    -----
    Input (N, C, L) or (C, L); output (N, C, L_out) (``(N, L, C)``, ``(N, L_out, C)`` with ``layout='NWC'``).

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.AvgPool1d(2)(np.array([[[1., 2., 3., 4., 5.]]]))
    array([[[1.5, 3.5]]])
    """

    _DIMS = 1

    def __init__(
        self, kernel_size: IntSingle, stride: IntSingle | None = None, padding: Padding1d = 0,
        ceil_mode: bool = False, count_include_pad: bool = True, dilation: IntSingle = 1, *, layout: str = "NCW",
    ) -> None:
        super().__init__()
        self.layout = _layout_arg(layout, 1)
        self.kernel_size = as_single("kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else as_single("stride", stride, 1)
        self.dilation = as_single("dilation", dilation, 1)
        self.ceil_mode = as_bool("ceil_mode", ceil_mode)
        self.padding = _padding_arg(padding, self.kernel_size, self.dilation, self.ceil_mode, 1)
        self.count_include_pad = as_bool("count_include_pad", count_include_pad)



class AdaptiveAvgPool1d(_AdaptiveAvgPoolNd):
    """Average pooling to a fixed output length, ``torch.nn.AdaptiveAvgPool1d`` on the convx kernels.

    Parameters
    ----------
    output_size : int or (int,)
        L_out; output ``i`` averages the input range ``[floor(i*L/L_out), ceil((i+1)*L/L_out))``.
    layout : {'NCW', 'NWC'}, default 'NCW'
        Keyword only: channels first (PyTorch's) or channels last, ``(N, L, C)``, for the input,
        the output and the gradients.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.AdaptiveAvgPool1d(1)(np.arange(8.0).reshape(1, 2, 4))
    array([[[1.5],
            [5.5]]])
    """

    _DIMS = 1

    def __init__(self, output_size: IntSingle, *, layout: str = "NCW") -> None:
        super().__init__()
        self.layout = _layout_arg(layout, 1)
        self.output_size = as_single("output_size", output_size, 1)


class AdaptiveMaxPool1d(_AdaptiveMaxPoolNd):
    """Max pooling to a fixed output length, ``torch.nn.AdaptiveMaxPool1d`` on the convx kernels.

    Parameters
    ----------
    output_size : int or (int,)
        L_out.
    return_indices : bool, default False
        ``forward`` returns ``(y, indices)``, the positions in ``[0, L)`` of the maxima.
    layout : {'NCW', 'NWC'}, default 'NCW'
        Keyword only: channels first (PyTorch's) or channels last, ``(N, L, C)``, for the input,
        the output and the gradients.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.AdaptiveMaxPool1d(2)(np.array([[[1., 5., 2., 4., 3.]]]))
    array([[[5., 4.]]])
    """

    _DIMS = 1

    def __init__(self, output_size: IntSingle, return_indices: bool = False, *, layout: str = "NCW") -> None:
        super().__init__()
        self.layout = _layout_arg(layout, 1)
        self.output_size = as_single("output_size", output_size, 1)
        self.return_indices = as_bool("return_indices", return_indices)


class _MaxUnpoolNd(Module):
    """The forward and backward of MaxUnpool1d, MaxUnpool2d and MaxUnpool3d."""

    _DIMS: int
    kernel_size: Any
    stride: Any
    padding: Any
    layout: str

    def forward(  # type: ignore[override]  # PyTorch's signature: the indices are a second input
        self, x: np.ndarray, indices: np.ndarray, output_size: Sequence[int] | None = None
    ) -> np.ndarray:
        """Write ``x`` at ``indices`` (a max pooling's) in zero planes; see :func:`convx.max_unpool2d`."""
        unpool = {1: functional.max_unpool1d, 2: functional.max_unpool2d, 3: functional.max_unpool3d}[self._DIMS]
        y = unpool(x, indices, self.kernel_size, self.stride, self.padding, output_size, layout=self.layout)
        # The indices are the forward's to gather with: a copy, so that the caller may reuse its array.
        self._save_for_backward(y, np.array(indices))
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Gradient of ``x`` for ``grad_out`` (the output's shape): ``grad_out`` gathered at the indices."""
        grad_out, (indices,) = self._saved_for_backward(grad_out)
        gather = {
            1: functional.max_unpool1d_backward, 2: functional.max_unpool2d_backward, 3: functional.max_unpool3d_backward,
        }[self._DIMS]
        return gather(grad_out, indices, layout=self.layout)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}{_layout_text(self)}"


class MaxUnpool2d(_MaxUnpoolNd):
    """Partial inverse of :class:`MaxPool2d`, ``torch.nn.MaxUnpool2d`` (:func:`convx.max_unpool2d`).

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int), default 0
    layout : {'NCHW', 'NHWC'}, default 'NCHW'
        Keyword only: channels first (PyTorch's) or channels last, for x, the indices and the output.

    Notes
    -----
    ``forward(x, indices, output_size=None)``: x and indices (N, C, H, W) or (C, H, W), the indices
    flat positions in each output plane (as :func:`convx.max_pool2d` returns them). Where two
    inputs of a plane name one position, the later one (row-major) is written, as in PyTorch;
    ``backward`` gives each input its position's gradient.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> import convx
    >>> y, indices = convx.max_pool2d(np.arange(16.0).reshape(1, 1, 4, 4), 2, return_indices=True)
    >>> nn.MaxUnpool2d(2)(y, indices)[0, 0]
    array([[ 0.,  0.,  0.,  0.],
           [ 0.,  5.,  0.,  7.],
           [ 0.,  0.,  0.,  0.],
           [ 0., 13.,  0., 15.]])
    """

    _DIMS = 2

    def __init__(
        self, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0, *, layout: str = "NCHW"
    ) -> None:
        super().__init__()
        self.layout = _layout_arg(layout, 2)
        self.kernel_size = as_pair("kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else as_pair("stride", stride, 1)
        self.padding = as_pair("padding", padding, 0)


class MaxUnpool1d(_MaxUnpoolNd):
    """Partial inverse of :class:`MaxPool1d`, ``torch.nn.MaxUnpool1d`` (:func:`convx.max_unpool1d`).

    Parameters
    ----------
    kernel_size : int or (int,)
    stride : int or (int,), optional
        Defaults to ``kernel_size``.
    padding : int or (int,), default 0
    layout : {'NCW', 'NWC'}, default 'NCW'
        Keyword only: channels first (PyTorch's) or channels last, for x, the indices and the output.

    Notes
    -----
    ``forward(x, indices, output_size=None)``: x and indices (N, C, L) or (C, L), the indices
    positions in the output (as :func:`convx.max_pool1d` returns them).

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> y, indices = nn.MaxPool1d(2, return_indices=True)(np.array([[[1., 3., 2., 5., 4.]]]))
    >>> nn.MaxUnpool1d(2)(y, indices, output_size=(5,))
    array([[[0., 3., 0., 5., 0.]]])
    """

    _DIMS = 1

    def __init__(
        self, kernel_size: IntSingle, stride: IntSingle | None = None, padding: IntSingle = 0, *, layout: str = "NCW"
    ) -> None:
        super().__init__()
        self.layout = _layout_arg(layout, 1)
        self.kernel_size = as_single("kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else as_single("stride", stride, 1)
        self.padding = as_single("padding", padding, 0)


class _LPPoolNd(Module):
    """The forward, backward and repr of LPPool1d and LPPool2d."""

    _DIMS: int
    norm_type: float
    kernel_size: Any
    stride: Any
    ceil_mode: bool
    layout: str

    def _options(self) -> tuple[Any, ...]:
        return self.norm_type, self.kernel_size, self.stride, self.ceil_mode

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The ``norm_type``-norm of each window of ``x``, shape ``(N, C, *spatial)`` or ``(C, *spatial)``."""
        pool = functional.lp_pool1d if self._DIMS == 1 else functional.lp_pool2d
        x = check_input(self, x, _input_ndims(self))
        y = pool(x, *self._options(), layout=self.layout)
        self._save_for_backward(y, x)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out`` (the output's shape)."""
        grad_out, (x,) = self._saved_for_backward(grad_out)
        gather = functional.lp_pool1d_backward if self._DIMS == 1 else functional.lp_pool2d_backward
        return gather(grad_out, x, *self._options(), layout=self.layout)

    def extra_repr(self) -> str:
        return (
            f"norm_type={self.norm_type}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"ceil_mode={self.ceil_mode}{_layout_text(self)}"
        )


class LPPool2d(_LPPoolNd):
    """2-D power-average pooling, ``torch.nn.LPPool2d`` (:func:`convx.lp_pool2d`).

    Parameters
    ----------
    norm_type : float
        The power ``p``, positive and finite.
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    ceil_mode : bool, default False
    layout : {'NCHW', 'NHWC'}, default 'NCHW'
        Keyword only: channels first (PyTorch's) or channels last, for the input, the output
        and the gradients.

    Notes
    -----
    Input (N, C, H, W) or (C, H, W); output (N, C, H_out, W_out), each window's
    ``(sum of x ** p) ** (1 / p)``. The input is kept from ``forward`` for the backward pass.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> pool = nn.LPPool2d(2, (1, 2))
    >>> pool(np.array([[[[3., 4.]]]]))
    array([[[[5.]]]])
    >>> pool.backward(np.ones((1, 1, 1, 1)))
    array([[[[0.6, 0.8]]]])
    """

    _DIMS = 2

    def __init__(
        self, norm_type: float, kernel_size: IntPair, stride: IntPair | None = None, ceil_mode: bool = False, *,
        layout: str = "NCHW",
    ) -> None:
        super().__init__()
        self.layout = _layout_arg(layout, 2)
        self.norm_type = _norm_type(norm_type)
        self.kernel_size = as_pair("kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else as_pair("stride", stride, 1)
        self.ceil_mode = as_bool("ceil_mode", ceil_mode)


class LPPool1d(_LPPoolNd):
    """1-D power-average pooling, ``torch.nn.LPPool1d`` (:func:`convx.lp_pool1d`).

    Parameters
    ----------
    norm_type : float
        The power ``p``, positive and finite.
    kernel_size : int or (int,)
    stride : int or (int,), optional
        Defaults to ``kernel_size``.
    ceil_mode : bool, default False
    layout : {'NCW', 'NWC'}, default 'NCW'
        Keyword only: channels first (PyTorch's) or channels last, ``(N, L, C)``.

    Notes
    -----
    Input (N, C, L) or (C, L); output (N, C, L_out).

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.LPPool1d(1, 2)(np.array([[[1., 2., 3., 4.]]]))
    array([[[3., 7.]]])
    """

    _DIMS = 1

    def __init__(
        self, norm_type: float, kernel_size: IntSingle, stride: IntSingle | None = None, ceil_mode: bool = False, *,
        layout: str = "NCW",
    ) -> None:
        super().__init__()
        self.layout = _layout_arg(layout, 1)
        self.norm_type = _norm_type(norm_type)
        self.kernel_size = as_single("kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else as_single("stride", stride, 1)
        self.ceil_mode = as_bool("ceil_mode", ceil_mode)
