"""Batch normalisation over the channels of NCHW images."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from .._checks import as_bool, as_int
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

    def _update_running_stats(self, batch_mean: np.ndarray, batch_var: np.ndarray, count: int) -> None:
        self._buffers["num_batches_tracked"] += 1
        if self.momentum is None:
            factor = 1.0 / float(self._buffers["num_batches_tracked"])
        else:
            factor = self.momentum
        unbiased_var = batch_var * (count / (count - 1))
        # In place: state_dict consumers and callers may hold the arrays.
        running_mean, running_var = self._buffers["running_mean"], self._buffers["running_var"]
        running_mean *= 1 - factor
        running_mean += factor * batch_mean
        running_var *= 1 - factor
        running_var += factor * unbiased_var

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Normalise ``x`` (N, C, H, W)."""
        x = check_input(self, x, (4,), self.dtype)
        if x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2d expects {self.num_features} channels, got x of shape {x.shape}")
        use_batch_stats = self.training or not self.track_running_stats
        if use_batch_stats:
            count = x.shape[0] * x.shape[2] * x.shape[3]
            if self.training and count < 2:
                raise ValueError(
                    f"BatchNorm2d needs more than one value per channel when training, got x of shape {x.shape}"
                )
            mean = x.mean(axis=(0, 2, 3))
            var = x.var(axis=(0, 2, 3))
            if self.training and self.track_running_stats:
                self._update_running_stats(mean, var, count)
        else:
            mean, var = self._buffers["running_mean"], self._buffers["running_var"]
        inv_std = 1.0 / np.sqrt(var + self.eps)
        x_hat = (x - mean[:, None, None]) * inv_std[:, None, None]
        y: np.ndarray
        if self.affine:
            y = x_hat * self._params["weight"][:, None, None] + self._params["bias"][:, None, None]
        else:
            y = x_hat.copy()  # x_hat itself stays private to backward
        self._save_for_backward(y, x_hat, inv_std, use_batch_stats)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out`` (N, C, H, W); overwrites ``grads['weight'|'bias']``."""
        grad_out, saved = self._saved_for_backward(grad_out)
        x_hat: np.ndarray = saved[0]
        inv_std: np.ndarray = saved[1]
        used_batch_stats: bool = saved[2]
        if self.affine:
            self._grads["weight"] = (grad_out * x_hat).sum(axis=(0, 2, 3))
            self._grads["bias"] = grad_out.sum(axis=(0, 2, 3))
            grad_x_hat = grad_out * self._params["weight"][:, None, None]
        else:
            grad_x_hat = grad_out
        if not used_batch_stats:
            result: np.ndarray = grad_x_hat * inv_std[:, None, None]
            return result
        # With batch statistics the mean and variance depend on x too:
        # grad_x = inv_std * (grad_x_hat - mean(grad_x_hat) - x_hat * mean(grad_x_hat * x_hat)).
        mean_grad = grad_x_hat.mean(axis=(0, 2, 3))
        mean_grad_dot_x_hat = (grad_x_hat * x_hat).mean(axis=(0, 2, 3))
        grad_x: np.ndarray = (
            grad_x_hat - mean_grad[:, None, None] - x_hat * mean_grad_dot_x_hat[:, None, None]
        ) * inv_std[:, None, None]
        return grad_x

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}, dtype={self.dtype}"
        )
