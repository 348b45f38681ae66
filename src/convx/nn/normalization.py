"""Batch normalisation over the channels of NCHW (or NHWC) images; group and layer normalisation over each sample."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from .._checks import DATA_LAYOUTS, as_bool, as_data_layout, as_int
from ..functional.normalization import (
    batch_norm_backward,
    batch_norm_forward,
    group_norm_backward,
    group_norm_forward,
    layer_norm_backward,
    layer_norm_forward,
)
from .module import Module, as_dtype, check_input


class BatchNorm2d(Module):
    """Normalise each channel by batch statistics while training, by running ones in evaluation.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel, as ``torch.nn.BatchNorm2d``.

    Parameters
    ----------
    num_features : int
        Channels C.
    eps : float, default 1e-5
        Added to the variance for stability.
    momentum : float or None, default 0.1
        Running statistics follow ``running = (1 - momentum) * running + momentum * batch``;
        None makes them the cumulative mean over all batches seen.
    affine : bool, default True
        Learn a per-channel scale ``weight`` (init 1) and shift ``bias`` (init 0).
    track_running_stats : bool, default True
        Keep running statistics and use them in evaluation mode; without them the batch's own
        statistics are used in both modes.
    dtype : float32 or float64, default float32
    layout : {'NCHW', 'NHWC'}, default 'NCHW'
        The layout of the input and output: channels first (N, C, H, W), PyTorch's, or
        channels last (N, H, W, C), normalised natively (no transposed copy). Parameters,
        buffers and ``state_dict`` are the same in both.

    Attributes
    ----------
    params : dict
        ``'weight'`` and ``'bias'``, each (C,), when ``affine``.
    buffers : dict
        ``'running_mean'`` (C,), ``'running_var'`` (C,) and ``'num_batches_tracked'`` (0-d int64)
        when ``track_running_stats``. The running variance is the unbiased one (divided by
        ``N*H*W - 1``), the normalisation in training uses the biased one, as in PyTorch.

    Notes
    -----
    Input and output (N, C, H, W), or (N, H, W, C) with ``layout='NHWC'``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> bn = nn.BatchNorm2d(3)
    >>> x = np.random.default_rng(0).normal(5.0, 2.0, (8, 3, 4, 4)).astype(np.float32)
    >>> y = bn(x)
    >>> bool(abs(y.mean()) < 1e-5), bn.buffers["num_batches_tracked"]
    (True, array(1))

    Channels last: the same images as (N, H, W, C).

    >>> bn_last = nn.BatchNorm2d(3, layout="NHWC")
    >>> y_last = bn_last(np.moveaxis(x, 1, 3))
    >>> y_last.shape, bool(np.allclose(y_last, np.moveaxis(y, 1, 3), atol=1e-6))
    ((8, 4, 4, 3), True)
    >>> bn_last
    BatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True, dtype=float32, layout='NHWC')
    """

    _INPUT_NDIMS: tuple[int, ...] = (4,)
    # The spatial dimensions of the layout's names (convx._checks.DATA_LAYOUTS).
    _LAYOUT_DIMS = 2
    _INPUT_LAYOUTS = {"NCHW": "(N, C, H, W)", "NHWC": "(N, H, W, C)"}
    num_features: int
    eps: float
    momentum: float | None
    affine: bool
    track_running_stats: bool
    dtype: np.dtype[Any]
    layout: str

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
        track_running_stats: bool = True, *, dtype: DTypeLike = np.float32, layout: str = "NCHW",
    ) -> None:
        super().__init__()
        self._channels_last = as_data_layout(layout, self._LAYOUT_DIMS)
        self.layout = DATA_LAYOUTS[self._LAYOUT_DIMS][self._channels_last]
        self.num_features = as_int("num_features", num_features, 1)
        if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real) or not float(eps) >= 0:
            raise ValueError(f"eps must be a non-negative number, got {eps!r}")
        self.eps = float(eps)
        if momentum is not None and (
            isinstance(momentum, (bool, np.bool_)) or not isinstance(momentum, numbers.Real) or not 0 <= float(momentum) <= 1
        ):
            raise ValueError(f"momentum must be a number in [0, 1] or None, got {momentum!r}")
        self.momentum = None if momentum is None else float(momentum)
        self.affine = as_bool("affine", affine)
        self.track_running_stats = as_bool("track_running_stats", track_running_stats)
        self.dtype = as_dtype(dtype)
        if self.affine:
            self._add_param("weight", np.ones(self.num_features, dtype=self.dtype))
            self._add_param("bias", np.zeros(self.num_features, dtype=self.dtype))
        if self.track_running_stats:
            self._buffers["running_mean"] = np.zeros(self.num_features, dtype=self.dtype)
            self._buffers["running_var"] = np.ones(self.num_features, dtype=self.dtype)
            self._buffers["num_batches_tracked"] = np.array(0, dtype=np.int64)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Normalise ``x`` (N, C, H, W), or (N, H, W, C) with ``layout='NHWC'``."""
        return self._normalize(x)

    def _functional_layout(self, x: np.ndarray) -> str:
        """The layout to hand convx.functional for a validated input: the layer's, but for
        inputs without spatial axes ((N, C) of BatchNorm1d), which are the same in both."""
        return self.layout if x.ndim > 2 else "NCHW"

    def _normalize(self, x: np.ndarray, activation: str | None = None,
                   activation_params: dict[str, Any] | None = None) -> np.ndarray:
        """The forward, followed by an activation in the same pass (for nn.Sequential)."""
        name = type(self).__name__
        x = check_input(self, x, self._INPUT_NDIMS, self.dtype)
        layout = self._functional_layout(x)
        channel_axis = -1 if self._channels_last else 1
        if x.shape[channel_axis] != self.num_features:
            raise ValueError(
                f"{name} expects {self.num_features} channels, got x of shape {x.shape} (layout "
                f"{self._INPUT_LAYOUTS[self.layout]})"
            )
        use_batch_stats = self.training or not self.track_running_stats
        if self.training and x.size == x.shape[1]:
            raise ValueError(f"{name} needs more than one value per channel when training, got x of shape {x.shape}")
        running: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
        momentum = 0.0
        if self.track_running_stats:
            running = (self._buffers["running_mean"], self._buffers["running_var"])
            if self.training:
                self._buffers["num_batches_tracked"] += 1
                momentum = (
                    1.0 / float(self._buffers["num_batches_tracked"]) if self.momentum is None else self.momentum
                )
        weight = self._params["weight"] if self.affine else None
        bias = self._params["bias"] if self.affine else None
        # The running statistics are updated in place: state_dict consumers and callers may hold them.
        y, mean, inv_std = batch_norm_forward(x, *running, weight, bias, use_batch_stats, momentum, self.eps,
                                              activation=activation, activation_params=activation_params,
                                              layout=layout)
        # The input itself (not a copy): the backward recomputes x_hat (and the activation's
        # output) from it.
        fused = None if activation is None else (activation, activation_params)
        self._save_for_backward(y, x, mean, inv_std, use_batch_stats, fused, layout)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out`` (the output's shape and layout); overwrites
        ``grads['weight'|'bias']``."""
        grad_out, (x, mean, inv_std, used_batch_stats, fused, layout) = self._saved_for_backward(grad_out)
        weight = self._params["weight"] if self.affine else None
        activation, activation_params = (None, None) if fused is None else fused
        bias = self._params["bias"] if self.affine and activation is not None else None
        grad_x, grad_weight, grad_bias = batch_norm_backward(
            grad_out, x, mean, inv_std, weight, used_batch_stats, needs_param_grads=self.affine,
            activation=activation, activation_params=activation_params, bias=bias, layout=layout,
        )
        if self.affine:
            self._store_grad("weight", grad_weight)
            self._store_grad("bias", grad_bias)
        return grad_x

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}, dtype={self.dtype}"
            + ("" if self.layout == DATA_LAYOUTS[self._LAYOUT_DIMS][0] else f", layout={self.layout!r}")
        )


def _eps(value: object) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not float(value) >= 0:
        raise ValueError(f"eps must be a non-negative number, got {value!r}")
    return float(value)


class GroupNorm(Module):
    """Normalise each group of channels of each sample by its own statistics, as ``torch.nn.GroupNorm``.

    The C channels are split into ``num_groups`` groups of consecutive channels;
    ``y = (x - mean) / sqrt(var + eps) * weight[c] + bias[c]``, the mean and biased variance
    taken over one sample's group (C / num_groups channels, all their positions). The same in
    training and evaluation: no running statistics.

    Parameters
    ----------
    num_groups : int
        A divisor of ``num_channels``; 1 normalises each sample as a whole, ``num_channels``
        each channel of each sample (instance normalisation).
    num_channels : int
        Channels C.
    eps : float, default 1e-5
    affine : bool, default True
        Learn a per-channel scale ``weight`` (init 1) and shift ``bias`` (init 0).
    dtype : float32 or float64, default float32

    Attributes
    ----------
    params : dict
        ``'weight'`` and ``'bias'``, each (C,), when ``affine``.

    Notes
    -----
    Input and output (N, C, ...) (at least two dimensions).

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> gn = nn.GroupNorm(2, 4)
    >>> x = np.random.default_rng(0).normal(5.0, 2.0, (3, 4, 5, 5)).astype(np.float32)
    >>> y = gn(x)
    >>> bool(np.abs(y[0, :2].mean()) < 1e-5), bool(np.abs(y[0, :2].std() - 1) < 1e-3)
    (True, True)
    """

    num_groups: int
    num_channels: int
    eps: float
    affine: bool
    dtype: np.dtype[Any]

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, *,
                 dtype: DTypeLike = np.float32) -> None:
        super().__init__()
        self.num_groups = as_int("num_groups", num_groups, 1)
        self.num_channels = as_int("num_channels", num_channels, 1)
        if self.num_channels % self.num_groups:
            raise ValueError(
                f"num_channels must be divisible by num_groups, got num_channels={self.num_channels} and "
                f"num_groups={self.num_groups}"
            )
        self.eps = _eps(eps)
        self.affine = as_bool("affine", affine)
        self.dtype = as_dtype(dtype)
        if self.affine:
            self._add_param("weight", np.ones(self.num_channels, dtype=self.dtype))
            self._add_param("bias", np.zeros(self.num_channels, dtype=self.dtype))

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Normalise ``x`` (N, C, ...)."""
        x = check_input(self, x, range(2, 33), self.dtype)
        if x.shape[1] != self.num_channels:
            raise ValueError(f"GroupNorm expects {self.num_channels} channels, got x of shape {x.shape}")
        weight = self._params["weight"] if self.affine else None
        bias = self._params["bias"] if self.affine else None
        y, mean, inv_std = group_norm_forward(x, self.num_groups, weight, bias, self.eps)
        self._save_for_backward(y, x, mean, inv_std)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out`` (N, C, ...); overwrites ``grads['weight'|'bias']``."""
        grad_out, (x, mean, inv_std) = self._saved_for_backward(grad_out)
        weight = self._params["weight"] if self.affine else None
        wanted = self.affine and (self._needs_grad("weight") or self._needs_grad("bias"))
        grad_x, grad_weight, grad_bias = group_norm_backward(grad_out, x, self.num_groups, mean, inv_std, weight,
                                                             needs_param_grads=wanted)
        if wanted:
            if self._needs_grad("weight"):
                self._store_grad("weight", grad_weight)
            if self._needs_grad("bias"):
                self._store_grad("bias", grad_bias)
        return grad_x

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, dtype={self.dtype}"


class LayerNorm(Module):
    """Normalise over the trailing dimensions of each sample, as ``torch.nn.LayerNorm``.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, the mean and biased variance taken over
    the last ``len(normalized_shape)`` dimensions for each index of the leading ones; ``weight``
    and ``bias`` of ``normalized_shape`` apply element by element. The same in training and
    evaluation.

    Parameters
    ----------
    normalized_shape : int or tuple of int
        The input's trailing dimensions.
    eps : float, default 1e-5
    elementwise_affine : bool, default True
        Learn ``weight`` (init 1) and, with ``bias``, ``bias`` (init 0).
    bias : bool, default True
        Whether the affine map has a shift.
    dtype : float32 or float64, default float32

    Attributes
    ----------
    params : dict
        ``'weight'`` and ``'bias'`` of shape ``normalized_shape``, as the options ask.

    Notes
    -----
    Input and output ``(..., *normalized_shape)``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> ln = nn.LayerNorm(4)
    >>> ln(np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)).round(4)
    array([[-1.3416, -0.4472,  0.4472,  1.3416]], dtype=float32)
    """

    normalized_shape: tuple[int, ...]
    eps: float
    elementwise_affine: bool
    dtype: np.dtype[Any]

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, *, dtype: DTypeLike = np.float32) -> None:
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral) and not isinstance(normalized_shape, (bool, np.bool_)):
            normalized_shape = (int(normalized_shape),)
        if not isinstance(normalized_shape, (tuple, list)) or not normalized_shape:
            raise TypeError(f"normalized_shape must be an int or a non-empty tuple of ints, got {normalized_shape!r}")
        self.normalized_shape = tuple(as_int("normalized_shape", size, 1) for size in normalized_shape)
        self.eps = _eps(eps)
        self.elementwise_affine = as_bool("elementwise_affine", elementwise_affine)
        with_bias = as_bool("bias", bias)
        self.dtype = as_dtype(dtype)
        if self.elementwise_affine:
            self._add_param("weight", np.ones(self.normalized_shape, dtype=self.dtype))
            if with_bias:
                self._add_param("bias", np.zeros(self.normalized_shape, dtype=self.dtype))

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Normalise ``x`` of shape ``(..., *normalized_shape)``."""
        x = check_input(self, x, range(len(self.normalized_shape), 33), self.dtype)
        y, mean, inv_std = layer_norm_forward(x, self.normalized_shape, self._params.get("weight"),
                                              self._params.get("bias"), self.eps)
        self._save_for_backward(y, x, mean, inv_std)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out``; overwrites ``grads['weight'|'bias']``."""
        grad_out, (x, mean, inv_std) = self._saved_for_backward(grad_out)
        keys = [key for key in ("weight", "bias") if key in self._params and self._needs_grad(key)]
        grad_x, grad_weight, grad_bias = layer_norm_backward(grad_out, x, self.normalized_shape, mean, inv_std,
                                                             self._params.get("weight"), needs_param_grads=bool(keys))
        for key, value in (("weight", grad_weight), ("bias", grad_bias)):
            if key in keys:
                self._store_grad(key, value)
        return grad_x

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
            f"bias={'bias' in self._params}, dtype={self.dtype}"
        )


class BatchNorm1d(BatchNorm2d):
    """Normalise each channel of (N, C) or (N, C, L) inputs, as ``torch.nn.BatchNorm1d``.

    The same statistics, parameters, buffers and ``state_dict`` keys as :class:`BatchNorm2d`, over
    the batch (and length) axes; the running variance is divided by ``N*L - 1``.

    Parameters
    ----------
    num_features : int
        Channels C.
    eps, momentum, affine, track_running_stats, dtype
        As for :class:`BatchNorm2d`.
    layout : {'NCW', 'NWC'}, default 'NCW'
        The layout of (N, C, L) inputs, PyTorch's, or channels last, (N, L, C) (natively, as
        :class:`BatchNorm2d`'s ``'NHWC'``). (N, C) inputs are the same in both.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> bn = nn.BatchNorm1d(4)
    >>> y = bn(np.random.default_rng(0).normal(3.0, 2.0, (16, 4, 10)).astype(np.float32))
    >>> y.shape, bool(abs(y.mean()) < 1e-5)
    ((16, 4, 10), True)
    >>> bn(np.ones((8, 4), dtype=np.float32)).shape
    (8, 4)
    >>> nn.BatchNorm1d(4, layout="NWC")(np.ones((8, 10, 4), dtype=np.float32)).shape
    (8, 10, 4)
    """

    _INPUT_NDIMS = (2, 3)
    _LAYOUT_DIMS = 1
    _INPUT_LAYOUTS = {"NCW": "(N, C) or (N, C, L)", "NWC": "(N, C) or (N, L, C)"}

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
        track_running_stats: bool = True, *, dtype: DTypeLike = np.float32, layout: str = "NCW",
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype=dtype, layout=layout)


class BatchNorm3d(BatchNorm2d):
    """Normalise each channel of (N, C, D, H, W) volumes, as ``torch.nn.BatchNorm3d``.

    The same statistics, parameters, buffers and ``state_dict`` keys as :class:`BatchNorm2d`, over
    the batch and the three spatial axes, on the same kernels (a volume is read as one plane of
    D*H*W values, no copy); the running variance is divided by ``N*D*H*W - 1``.

    Parameters
    ----------
    num_features : int
        Channels C.
    eps, momentum, affine, track_running_stats, dtype
        As for :class:`BatchNorm2d`.
    layout : {'NCDHW', 'NDHWC'}, default 'NCDHW'
        The layout of the input and output: channels first, PyTorch's, or channels last,
        (N, D, H, W, C) (natively, as :class:`BatchNorm2d`'s ``'NHWC'``).

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> bn = nn.BatchNorm3d(4)
    >>> y = bn(np.random.default_rng(0).normal(3.0, 2.0, (2, 4, 3, 5, 5)).astype(np.float32))
    >>> y.shape, bool(abs(y.mean()) < 1e-5)
    ((2, 4, 3, 5, 5), True)
    >>> nn.BatchNorm3d(4, layout="NDHWC")(np.ones((2, 3, 5, 5, 4), dtype=np.float32)).shape
    (2, 3, 5, 5, 4)
    """

    _INPUT_NDIMS = (5,)
    _LAYOUT_DIMS = 3
    _INPUT_LAYOUTS = {"NCDHW": "(N, C, D, H, W)", "NDHWC": "(N, D, H, W, C)"}

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
        track_running_stats: bool = True, *, dtype: DTypeLike = np.float32, layout: str = "NCDHW",
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype=dtype, layout=layout)
