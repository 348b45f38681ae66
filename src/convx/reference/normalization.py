"""Reference batch normalisation in NumPy, written from the formulas: the test oracle for
``convx.functional.normalization``.

Everything is computed in float64 with two passes over the data (the mean, then the squared
deviations from it), whatever the input's dtype; results are float64. Channels are axis 1 of
an (N, C, ...) array, and the statistics run over every other axis (``M`` values per channel).

* forward: ``x_hat = (x - mean) / sqrt(var + eps)``, ``y = weight * x_hat + bias``, with the
  batch's mean and biased variance (training, or no running statistics), else the running ones;
* running statistics: ``running = (1 - momentum) * running + momentum * batch``, the batch's
  variance unbiased (``* M / (M - 1)``);
* backward with batch statistics (which depend on x):
  ``grad_x = weight / sqrt(var + eps) * (g - mean(g) - x_hat * mean(g * x_hat))``;
  with fixed statistics ``grad_x = weight / sqrt(var + eps) * g``; in both,
  ``grad_weight = sum(g * x_hat)`` and ``grad_bias = sum(g)``.

Arguments are trusted: :mod:`convx.functional.normalization` validates, these do not.
"""

from __future__ import annotations

import numpy as np

__all__ = ["batch_moments", "batch_norm", "batch_norm_backward"]


def _axes(x: np.ndarray) -> tuple[int, ...]:
    return (0,) + tuple(range(2, x.ndim))


def _per_channel(vector, ndim: int) -> np.ndarray:
    return np.asarray(vector, dtype=np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def batch_moments(x):
    """Each channel's mean and biased variance (two passes, float64), shape (C,)."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=_axes(x))
    var = ((x - _per_channel(mean, x.ndim)) ** 2).mean(axis=_axes(x))
    return mean, var


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-5):
    """``(y, mean, var, new_running_mean, new_running_var)``: the output and the statistics it
    used (float64), and the running statistics after the update (None when not given; the
    given arrays are not modified)."""
    x = np.asarray(x, dtype=np.float64)
    new_mean = new_var = None
    if training or running_mean is None:
        mean, var = batch_moments(x)
        if training and running_mean is not None:
            count = x.size // x.shape[1]
            new_mean = (1 - momentum) * np.asarray(running_mean, np.float64) + momentum * mean
            new_var = (1 - momentum) * np.asarray(running_var, np.float64) + momentum * var * count / (count - 1)
    else:
        mean, var = np.asarray(running_mean, np.float64), np.asarray(running_var, np.float64)
    x_hat = (x - _per_channel(mean, x.ndim)) / np.sqrt(_per_channel(var, x.ndim) + eps)
    y = x_hat
    if weight is not None:
        y = y * _per_channel(weight, x.ndim)
    if bias is not None:
        y = y + _per_channel(bias, x.ndim)
    return y, mean, var, new_mean, new_var


def batch_norm_backward(grad_out, x, mean, var, weight=None, batch_stats=True, eps=1e-5):
    """``(grad_x, grad_weight, grad_bias)`` (float64) for the forward that normalised ``x`` with
    ``mean`` and ``var``."""
    g = np.asarray(grad_out, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    inv_std = 1.0 / np.sqrt(np.asarray(var, np.float64) + eps)
    x_hat = (x - _per_channel(mean, x.ndim)) * _per_channel(inv_std, x.ndim)
    scale = inv_std if weight is None else inv_std * np.asarray(weight, np.float64)
    grad_weight = (g * x_hat).sum(axis=_axes(x))
    grad_bias = g.sum(axis=_axes(x))
    if batch_stats:
        count = x.size // x.shape[1]
        centred = g - _per_channel(grad_bias / count, x.ndim) - x_hat * _per_channel(grad_weight / count, x.ndim)
        grad_x = _per_channel(scale, x.ndim) * centred
    else:
        grad_x = _per_channel(scale, x.ndim) * g
    return grad_x, grad_weight, grad_bias
