"""Batch normalisation over the channels (dimension 1) of (N, C, ...) arrays, as PyTorch's.

Training statistics take one pass over the input (each block of a plane summed twice while it
is in L1, the blocks merged by Chan's update) and the normalisation a second; the backward
takes two (the channel sums, then the input gradient). Statistics and sums run in float64
whatever the dtype; the element-wise passes in the array's dtype.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .. import _core
from .._batching import sub_batches
from .._checks import as_bool, as_float_array, contiguous
from .._threads import kernel_threads
from .activations import check_no_activation_params, forward_kernel, output_backward_kernel

__all__ = ["batch_norm", "batch_norm_backward"]

_NDIMS = range(2, 33)


def _as_nchw(name: str, value: object) -> NDArray[Any]:
    """``value`` validated, as a C-contiguous (N, C, rest) view (or copy)."""
    array = contiguous(as_float_array(name, value, _NDIMS))
    return array.reshape(array.shape[0], array.shape[1], int(np.prod(array.shape[2:])))


def _channel_vector(name: str, value: object, channels: int, dtype: np.dtype[Any]) -> NDArray[np.float64] | None:
    if value is None:
        return None
    array = as_float_array(name, value, (1,))
    if array.shape != (channels,):
        raise ValueError(f"{name} must have shape ({channels},), one entry per channel of x, got {array.shape}")
    if array.dtype != dtype:
        raise TypeError(f"{name} must have x's dtype {dtype}, got {array.dtype}; cast it explicitly")
    return array.astype(np.float64)


def _number(name: str, value: object, low: float, high: float | None = None) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    number = float(value)
    if not number >= low or (high is not None and not number <= high):
        valid = f"in [{low}, {high}]" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {valid}, got {number}")
    return number


def _work(x: NDArray[Any]) -> int:
    return int(np.prod(x.shape[1:]))


def batch_moments(x: NDArray[Any]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Each channel's mean and biased variance over every axis but 1 of a validated (N, C, L) array."""
    channels = x.shape[1]
    mean = np.zeros(channels)
    m2 = np.zeros(channels)
    count = 0
    for part in sub_batches(x.shape[0], _work(x)):
        _core.batch_norm_moments(x[part], float(count), mean, m2, kernel_threads())
        count += (part.stop - part.start) * x.shape[2]
    return mean, m2 / max(count, 1)


_NO_ACTIVATION = (-1, 0.0, 0.0)


def normalize(
    x: NDArray[Any], mean: NDArray[np.float64], inv_std: NDArray[np.float64],
    weight: NDArray[np.float64] | None, bias: NDArray[np.float64] | None,
    activation: tuple[int, float, float] = _NO_ACTIVATION,
) -> NDArray[Any]:
    """``act((x - mean) * inv_std * weight + bias)`` per channel of a validated (N, C, L) array."""
    scale = inv_std if weight is None else inv_std * weight
    shift = np.zeros_like(mean) if bias is None else bias
    out = np.empty(x.shape, dtype=x.dtype)
    for part in sub_batches(x.shape[0], 2 * _work(x)):
        _core.batch_norm_normalize(x[part], out[part], mean, scale, shift, *activation, kernel_threads())
    return out


def batch_norm(
    x: NDArray[Any],
    running_mean: NDArray[Any] | None = None,
    running_var: NDArray[Any] | None = None,
    weight: NDArray[Any] | None = None,
    bias: NDArray[Any] | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    activation: str | None = None,
    activation_params: dict[str, Any] | None = None,
) -> NDArray[Any]:
    """Normalise each channel of ``x``, as ``torch.nn.functional.batch_norm``.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel, with the batch's mean and
    biased variance when ``training`` (or when no running statistics are given), else
    ``running_mean`` and ``running_var``.

    Parameters
    ----------
    x : ndarray of float32 or float64, shape (N, C) or (N, C, ...)
    running_mean, running_var : ndarray (C,) of x's dtype, optional
        With ``training``, updated in place (as in PyTorch):
        ``running = (1 - momentum) * running + momentum * batch``, the variance unbiased
        (divided by ``count - 1``).
    weight, bias : ndarray (C,) of x's dtype, optional
        The affine map (1 and 0 when absent).
    training : bool, default False
    momentum : float in [0, 1], default 0.1
    eps : float, default 1e-5
    activation : str, optional
        An activation of :mod:`convx.functional.activations` applied to ``y`` in the same pass
        (each block of a plane while it is in L1): no second output array.
    activation_params : dict, optional
        Its keyword arguments (``{'negative_slope': 0.1}``).

    Returns
    -------
    ndarray
        ``y`` (after the activation), x's shape and dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import batch_norm
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]])
    >>> batch_norm(x, training=True, eps=0.0)
    array([[-1., -1.],
           [ 1.,  1.]])
    """
    y, _, _ = batch_norm_forward(x, running_mean, running_var, weight, bias, training, momentum, eps,
                                 activation=activation, activation_params=activation_params)
    return y


def batch_norm_forward(
    x: object,
    running_mean: object = None,
    running_var: object = None,
    weight: object = None,
    bias: object = None,
    training: object = False,
    momentum: object = 0.1,
    eps: object = 1e-5,
    *,
    activation: str | None = None,
    activation_params: dict[str, Any] | None = None,
) -> tuple[NDArray[Any], NDArray[np.float64], NDArray[np.float64]]:
    """:func:`batch_norm`, also returning the mean and ``1 / sqrt(var + eps)`` it used (float64,
    (C,)): what :func:`batch_norm_backward` needs."""
    array = as_float_array("x", x, _NDIMS)
    shape = array.shape
    flat = _as_nchw("x", array)
    channels = flat.shape[1]
    is_training = as_bool("training", training)
    eps_value = _number("eps", eps, 0.0)
    momentum_value = _number("momentum", momentum, 0.0, 1.0)
    weight_vector = _channel_vector("weight", weight, channels, array.dtype)
    bias_vector = _channel_vector("bias", bias, channels, array.dtype)
    check_no_activation_params(activation, activation_params)
    act = _NO_ACTIVATION if activation is None else forward_kernel(activation, activation_params)
    if (running_mean is None) != (running_var is None):
        raise ValueError("give both running_mean and running_var, or neither")
    stats: list[NDArray[Any]] = []
    for name, value in (("running_mean", running_mean), ("running_var", running_var)):
        if value is not None:
            _channel_vector(name, value, channels, array.dtype)
            stats.append(as_float_array(name, value, (1,)))
    if stats and is_training and not all(s.flags.writeable for s in stats):
        raise ValueError("running_mean and running_var are updated in place when training: pass writeable arrays")
    count = flat.shape[0] * flat.shape[2]
    if count == 0:
        # Nothing to normalise (as PyTorch: an empty result, the running statistics untouched).
        return np.empty(shape, dtype=array.dtype), np.zeros(channels), np.ones(channels)
    if is_training or not stats:
        if is_training and count < 2:
            raise ValueError(f"batch_norm needs more than one value per channel when training, got x of shape {shape}")
        mean, var = batch_moments(flat)
        if is_training and stats:
            unbiased = var * (count / (count - 1))
            for running, batch in zip(stats, (mean, unbiased)):
                running *= 1 - momentum_value
                running += (momentum_value * batch).astype(running.dtype)
    else:
        mean, var = stats[0].astype(np.float64), stats[1].astype(np.float64)
    inv_std = 1.0 / np.sqrt(var + eps_value)
    y = normalize(flat, mean, inv_std, weight_vector, bias_vector, act)
    return y.reshape(shape), mean, inv_std


def batch_norm_backward(
    grad_out: NDArray[Any],
    x: NDArray[Any],
    mean: NDArray[Any],
    inv_std: NDArray[Any],
    weight: NDArray[Any] | None = None,
    batch_stats: bool = True,
    needs_param_grads: bool = True,
    *,
    activation: str | None = None,
    activation_params: dict[str, Any] | None = None,
    output: NDArray[Any] | None = None,
) -> tuple[NDArray[Any], NDArray[Any] | None, NDArray[Any] | None]:
    """Gradients of :func:`batch_norm` for ``grad_out``.

    Parameters
    ----------
    grad_out, x : ndarray (N, C, ...), one shape and dtype
        The output's gradient and the forward's input.
    mean, inv_std : ndarray (C,)
        What the forward normalised with (:func:`batch_norm_forward` returns them).
    weight : ndarray (C,), optional
        The forward's scale (1 when absent).
    batch_stats : bool, default True
        Whether the forward used the batch's own statistics (which then depend on x too) or
        fixed ones.
    needs_param_grads : bool, default True
        Whether to return ``grad_weight`` and ``grad_bias`` (else None: with fixed statistics
        that saves the pass that sums them).
    activation, activation_params : optional
        The activation the forward applied (``grad_out`` is then the gradient of its output);
        only those whose gradient reads their output: relu, relu6, leaky_relu (slope >= 0), elu
        and selu (alpha >= 0), sigmoid, tanh.
    output : ndarray, x's shape and dtype
        The forward's result (after the activation); needed with ``activation``.

    Returns
    -------
    grad_x : ndarray, x's shape and dtype
    grad_weight, grad_bias : ndarray (C,) of x's dtype, or None

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional.normalization import batch_norm_forward, batch_norm_backward
    >>> x = np.array([[1.0], [3.0]])
    >>> y, mean, inv_std = batch_norm_forward(x, training=True, eps=0.0)
    >>> grad_x, grad_weight, grad_bias = batch_norm_backward(np.array([[1.0], [0.0]]), x, mean, inv_std)
    >>> grad_x[:, 0], grad_weight, grad_bias
    (array([0., 0.]), array([-1.]), array([1.]))
    """
    grad = as_float_array("grad_out", grad_out, _NDIMS)
    source = as_float_array("x", x, _NDIMS)
    if grad.shape != source.shape or grad.dtype != source.dtype:
        raise ValueError(
            f"grad_out must have x's shape and dtype {source.shape} {source.dtype}, got {grad.shape} {grad.dtype}"
        )
    flat_grad, flat_x = _as_nchw("grad_out", grad), _as_nchw("x", source)
    act = _NO_ACTIVATION
    flat_y = flat_x
    check_no_activation_params(activation, activation_params)
    if activation is None and output is not None:
        raise ValueError("output= is read only with an activation (the forward's result after it): pass activation= "
                         "too, or drop output")
    if activation is not None:
        act = output_backward_kernel(activation, activation_params)
        if output is None:
            raise ValueError("batch_norm_backward with an activation needs the forward's output (output=)")
        y_array = as_float_array("output", output, _NDIMS)
        if y_array.shape != source.shape or y_array.dtype != source.dtype:
            raise ValueError(
                f"output must have x's shape and dtype {source.shape} {source.dtype}, got {y_array.shape} "
                f"{y_array.dtype}"
            )
        flat_y = _as_nchw("output", y_array)
    channels = flat_x.shape[1]
    mean64 = as_float_array("mean", mean, (1,)).astype(np.float64)
    inv64 = as_float_array("inv_std", inv_std, (1,)).astype(np.float64)
    if mean64.shape != (channels,) or inv64.shape != (channels,):
        raise ValueError(
            f"mean and inv_std must have shape ({channels},), one entry per channel of x, got {mean64.shape} "
            f"and {inv64.shape}"
        )
    weight_vector = _channel_vector("weight", weight, channels, source.dtype)
    use_batch = as_bool("batch_stats", batch_stats)
    want_params = as_bool("needs_param_grads", needs_param_grads)
    count = flat_x.shape[0] * flat_x.shape[2]
    scale = inv64 if weight_vector is None else inv64 * weight_vector
    grad_weight = grad_bias = None
    if use_batch or want_params:
        sum_grad = np.zeros(channels)
        sum_centered = np.zeros(channels)
        for part in sub_batches(flat_x.shape[0], 2 * _work(flat_x)):
            _core.batch_norm_grad_sums(flat_grad[part], flat_x[part], flat_y[part], *act, mean64, sum_grad, sum_centered,
                                       kernel_threads())
        if want_params:
            grad_weight = (sum_centered * inv64).astype(source.dtype)
            grad_bias = sum_grad.astype(source.dtype)
    if use_batch and count > 0:
        k_centered = -scale * inv64 * inv64 * sum_centered / count
        k_0 = -scale * sum_grad / count
    else:
        k_centered = np.zeros(channels)
        k_0 = np.zeros(channels)
    grad_x = np.empty(flat_x.shape, dtype=source.dtype)
    for part in sub_batches(flat_x.shape[0], 3 * _work(flat_x)):
        _core.batch_norm_input_grad(flat_grad[part], flat_x[part], flat_y[part], *act, grad_x[part], mean64, scale,
                                    k_centered, k_0, kernel_threads())
    return grad_x.reshape(source.shape), grad_weight, grad_bias
