"""Batch normalisation over the channels of NCHW images."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from .._checks import as_bool, as_int
from ..functional.normalization import batch_norm_backward, batch_norm_forward
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
    Input and output (N, C, H, W).

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> bn = nn.BatchNorm2d(3)
    >>> x = np.random.default_rng(0).normal(5.0, 2.0, (8, 3, 4, 4)).astype(np.float32)
    >>> y = bn(x)
    >>> bool(abs(y.mean()) < 1e-5), bn.buffers["num_batches_tracked"]
    (True, array(1))
    """

    num_features: int
    eps: float
    momentum: float | None
    affine: bool
    track_running_stats: bool
    dtype: np.dtype[Any]

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
        track_running_stats: bool = True, *, dtype: DTypeLike = np.float32,
    ) -> None:
        super().__init__()
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
        """Normalise ``x`` (N, C, H, W)."""
        return self._normalize(x)

    def _normalize(self, x: np.ndarray, activation: str | None = None,
                   activation_params: dict[str, Any] | None = None) -> np.ndarray:
        """The forward, followed by an activation in the same pass (for nn.Sequential)."""
        x = check_input(self, x, (4,), self.dtype)
        if x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2d expects {self.num_features} channels, got x of shape {x.shape}")
        use_batch_stats = self.training or not self.track_running_stats
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            raise ValueError(
                f"BatchNorm2d needs more than one value per channel when training, got x of shape {x.shape}"
            )
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
                                              activation=activation, activation_params=activation_params)
        # The input itself (not a copy): the backward recomputes x_hat from it.
        fused = None if activation is None else (activation, activation_params, y)
        self._save_for_backward(y, x, mean, inv_std, use_batch_stats, fused)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out`` (N, C, H, W); overwrites ``grads['weight'|'bias']``."""
        grad_out, (x, mean, inv_std, used_batch_stats, fused) = self._saved_for_backward(grad_out)
        weight = self._params["weight"] if self.affine else None
        activation, activation_params, output = (None, None, None) if fused is None else fused
        grad_x, grad_weight, grad_bias = batch_norm_backward(
            grad_out, x, mean, inv_std, weight, used_batch_stats, needs_param_grads=self.affine,
            activation=activation, activation_params=activation_params, output=output,
        )
        if self.affine:
            self._store_grad("weight", grad_weight)
            self._store_grad("bias", grad_bias)
        return grad_x

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}, dtype={self.dtype}"
        )
