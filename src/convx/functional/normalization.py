"""Batch, group and layer normalisation, as PyTorch's.

Batch normalisation works over the channels of (N, C, ...) arrays (dimension 1), or of
channels-last ones (``layout='NHWC'``: (N, H, W, C), the channels innermost); group and layer
normalisation over groups of each sample's elements (see the section further down).

Training statistics take one pass over the input (each block of a plane summed twice while it
is in L1, the blocks merged by Chan's update) and the normalisation a second; the backward
takes two (the channel sums, then the input gradient). Statistics and sums run in float64
whatever the dtype; the element-wise passes in the array's dtype. Channels-last arrays run on
their own kernels over the (N*H*W, C) matrix (each pass along rows, the channels contiguous), with
the same formulas and precision: no transposed copy.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .. import _core
from .._batching import sub_batches
from .._checks import DATA_LAYOUTS, as_bool, as_data_layout, as_float_array, as_int, as_layout_array, contiguous
from .._threads import kernel_threads
from .activations import check_no_activation_params, forward_kernel, output_backward_kernel

__all__ = [
    "batch_norm",
    "batch_norm_backward",
    "group_norm",
    "group_norm_backward",
    "group_norm_forward",
    "layer_norm",
    "layer_norm_backward",
    "layer_norm_forward",
]

_NDIMS = range(2, 33)


def _as_nchw(name: str, value: object) -> NDArray[Any]:
    """``value`` validated, as a C-contiguous (N, C, rest) view (or copy)."""
    array = contiguous(as_float_array(name, value, _NDIMS))
    return array.reshape(array.shape[0], array.shape[1], int(np.prod(array.shape[2:])))


# The shape each batch-norm layout names ('NCHW', the default, is PyTorch's (N, C, *): any rank).
_LAYOUT_SHAPES = {
    "NCW": "(N, C, L)", "NWC": "(N, L, C)", "NCHW": "(N, C) or (N, C, ...)", "NHWC": "(N, H, W, C)",
    "NCDHW": "(N, C, D, H, W)", "NDHWC": "(N, D, H, W, C)",
}


def _batch_layout(value: object) -> tuple[str, bool]:
    """A batch norm's ``layout`` and whether it is channels last: a name of DATA_LAYOUTS."""
    dims = len(value) - 2 if isinstance(value, str) and len(value) - 2 in DATA_LAYOUTS else 2
    return str(value), as_data_layout(value, dims)


def _as_layout(name: str, value: object, layout: str, channels_last: bool) -> NDArray[Any]:
    """``value`` validated for ``layout``, as a C-contiguous (N, C, rest) view (or copy), or
    (N, rest, C) channels last: the matrix the channels-last kernels read as (N*rest, C)."""
    if layout == "NCHW":
        return _as_nchw(name, value)
    ndims = (len(layout),)
    array = contiguous(as_layout_array("batch_norm", name, value, ndims, f"{_LAYOUT_SHAPES[layout]} ({layout})"))
    if channels_last:
        return array.reshape(array.shape[0], int(np.prod(array.shape[1:-1])), array.shape[-1])
    return array.reshape(array.shape[0], array.shape[1], int(np.prod(array.shape[2:])))


def _channel_axis(channels_last: bool) -> int:
    """The channel axis of the (N, C, rest) or channels-last (N, rest, C) view of :func:`_as_layout`."""
    return 2 if channels_last else 1


def _kernel(name: str, channels_last: bool) -> Any:
    """The batch-norm kernel ``name`` of a layout (the same arguments in both), looked up at each
    call (so that a test may wrap it)."""
    return getattr(_core, f"batch_norm_{name}_nhwc" if channels_last else f"batch_norm_{name}")


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


def batch_moments(x: NDArray[Any], channels_last: bool = False) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Each channel's mean and biased variance over every axis but the channels' of a validated
    (N, C, L) array, or (N, L, C) ``channels_last``."""
    axis = _channel_axis(channels_last)
    channels = x.shape[axis]
    mean = np.zeros(channels)
    m2 = np.zeros(channels)
    count = 0
    for part in sub_batches(x.shape[0], _work(x)):
        _kernel("moments", channels_last)(x[part], float(count), mean, m2, kernel_threads(elements=x[part].size))
        count += (part.stop - part.start) * x.shape[3 - axis]
    return mean, m2 / max(count, 1)


_NO_ACTIVATION = (-1, 0.0, 0.0)
# The scale and shift the backward kernels read only to recompute an activation's output.
_UNUSED = np.zeros(0)


def normalize(
    x: NDArray[Any], mean: NDArray[np.float64], inv_std: NDArray[np.float64],
    weight: NDArray[np.float64] | None, bias: NDArray[np.float64] | None,
    activation: tuple[int, float, float] = _NO_ACTIVATION, channels_last: bool = False,
) -> NDArray[Any]:
    """``act((x - mean) * inv_std * weight + bias)`` per channel of a validated (N, C, L) array,
    or (N, L, C) ``channels_last``."""
    scale = inv_std if weight is None else inv_std * weight
    shift = np.zeros_like(mean) if bias is None else bias
    out = np.empty(x.shape, dtype=x.dtype)
    for part in sub_batches(x.shape[0], 2 * _work(x)):
        _kernel("normalize", channels_last)(x[part], out[part], mean, scale, shift, *activation,
                                            kernel_threads(elements=x[part].size))
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
    layout: str = "NCHW",
) -> NDArray[Any]:
    """Normalise each channel of ``x``, as ``torch.nn.functional.batch_norm``.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel, with the batch's mean and
    biased variance when ``training`` (or when no running statistics are given), else
    ``running_mean`` and ``running_var``.

    Parameters
    ----------
    x : ndarray of float32 or float64
        Shape (N, C) or (N, C, ...) (``layout='NCHW'``), or channels last, (N, H, W, C)
        (``layout='NHWC'``).
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
    layout : str, default 'NCHW'
        Where x keeps its channels: ``'NCHW'``, dimension 1 of (N, C) or (N, C, ...), PyTorch's;
        ``'NHWC'``, the last of (N, H, W, C), which runs natively (kernels along the rows of
        the (N*H*W, C) matrix, no transposed copy). Also ``'NCW'`` / ``'NWC'`` for (N, C, L) /
        (N, L, C) and ``'NCDHW'`` / ``'NDHWC'`` for 3-D images. The statistics, parameters and
        results are the same in every layout (to rounding: sums are taken in another order).

    Returns
    -------
    ndarray
        ``y`` (after the activation), x's shape (and layout) and dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import batch_norm
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]])
    >>> batch_norm(x, training=True, eps=0.0)
    array([[-1., -1.],
           [ 1.,  1.]])

    Channels last: the same images as (N, H, W, C), the result in that layout.

    >>> images = np.arange(8.0).reshape(2, 2, 1, 2)   # N=2, H=2, W=1, C=2
    >>> batch_norm(images, training=True, eps=0.0, layout="NHWC")[..., 0]
    array([[[-1.34164079],
            [-0.4472136 ]],
    <BLANKLINE>
           [[ 0.4472136 ],
            [ 1.34164079]]])
    >>> np.allclose(batch_norm(images, training=True, layout="NHWC"),
    ...             np.moveaxis(batch_norm(np.moveaxis(images, 3, 1), training=True), 1, 3))
    True
    """
    y, _, _ = batch_norm_forward(x, running_mean, running_var, weight, bias, training, momentum, eps,
                                 activation=activation, activation_params=activation_params, layout=layout)
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
    layout: str = "NCHW",
) -> tuple[NDArray[Any], NDArray[np.float64], NDArray[np.float64]]:
    """:func:`batch_norm`, also returning the mean and ``1 / sqrt(var + eps)`` it used (float64,
    (C,)): what :func:`batch_norm_backward` needs."""
    layout_name, channels_last = _batch_layout(layout)
    array = as_float_array("x", x, _NDIMS)
    shape = array.shape
    flat = _as_layout("x", array, layout_name, channels_last)
    channels = flat.shape[_channel_axis(channels_last)]
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
    count = flat.shape[0] * flat.shape[3 - _channel_axis(channels_last)]
    if count == 0:
        # Nothing to normalise (as PyTorch: an empty result, the running statistics untouched).
        return np.empty(shape, dtype=array.dtype), np.zeros(channels), np.ones(channels)
    if is_training or not stats:
        if is_training and count < 2:
            raise ValueError(f"batch_norm needs more than one value per channel when training, got x of shape {shape}")
        mean, var = batch_moments(flat, channels_last)
        if is_training and stats:
            unbiased = var * (count / (count - 1))
            for running, batch in zip(stats, (mean, unbiased)):
                running *= 1 - momentum_value
                running += (momentum_value * batch).astype(running.dtype)
    else:
        mean, var = stats[0].astype(np.float64), stats[1].astype(np.float64)
    inv_std = 1.0 / np.sqrt(var + eps_value)
    y = normalize(flat, mean, inv_std, weight_vector, bias_vector, act, channels_last)
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
    bias: NDArray[Any] | None = None,
    layout: str = "NCHW",
) -> tuple[NDArray[Any], NDArray[Any] | None, NDArray[Any] | None]:
    """Gradients of :func:`batch_norm` for ``grad_out``.

    Parameters
    ----------
    grad_out, x : ndarray (N, C, ...), or (N, H, W, C) with ``layout='NHWC'``; one shape and dtype
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
    output : ndarray, x's shape and dtype, optional
        The forward's result (after the activation), read with ``activation``. Without it the
        backward recomputes that result from ``x``, ``mean``, ``inv_std``, ``weight`` and ``bias``
        exactly as the forward computed it, and reads a third less memory.
    bias : ndarray (C,), optional
        The forward's shift (0 when absent), read with ``activation`` and no ``output``.
    layout : str, default 'NCHW'
        The forward's layout (see :func:`batch_norm`); ``grad_x`` comes back in it.

    Returns
    -------
    grad_x : ndarray, x's shape (and layout) and dtype
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

    Channels last, with the activation's output recomputed from x (``bias=``):

    >>> images = np.arange(8.0).reshape(2, 2, 1, 2)
    >>> y, mean, inv_std = batch_norm_forward(images, training=True, activation="relu", layout="NHWC")
    >>> grad_x, _, grad_bias = batch_norm_backward(np.ones_like(y), images, mean, inv_std, activation="relu",
    ...                                            bias=np.zeros(2), layout="NHWC")
    >>> grad_x.shape, grad_bias
    ((2, 2, 1, 2), array([2., 2.]))
    """
    layout_name, channels_last = _batch_layout(layout)
    grad = as_float_array("grad_out", grad_out, _NDIMS)
    source = as_float_array("x", x, _NDIMS)
    if grad.shape != source.shape or grad.dtype != source.dtype:
        raise ValueError(
            f"grad_out must have x's shape and dtype {source.shape} {source.dtype}, got {grad.shape} {grad.dtype}"
        )
    flat_x = _as_layout("x", source, layout_name, channels_last)
    flat_grad = _as_layout("grad_out", grad, layout_name, channels_last)
    act = _NO_ACTIVATION
    flat_y = flat_x
    check_no_activation_params(activation, activation_params)
    if activation is None and (output is not None or bias is not None):
        raise ValueError("output= and bias= are read only with an activation (the forward's result after it, or the "
                         "shift to recompute it): pass activation= too, or drop them")
    if output is not None and bias is not None:
        raise ValueError("pass the forward's output (output=) or its bias (bias=, to recompute the output), not both")
    recompute = activation is not None and output is None
    if activation is not None:
        act = output_backward_kernel(activation, activation_params)
    if output is not None:
        y_array = as_float_array("output", output, _NDIMS)
        if y_array.shape != source.shape or y_array.dtype != source.dtype:
            raise ValueError(
                f"output must have x's shape and dtype {source.shape} {source.dtype}, got {y_array.shape} "
                f"{y_array.dtype}"
            )
        flat_y = _as_layout("output", y_array, layout_name, channels_last)
    channels = flat_x.shape[_channel_axis(channels_last)]
    mean64 = as_float_array("mean", mean, (1,)).astype(np.float64)
    inv64 = as_float_array("inv_std", inv_std, (1,)).astype(np.float64)
    if mean64.shape != (channels,) or inv64.shape != (channels,):
        raise ValueError(
            f"mean and inv_std must have shape ({channels},), one entry per channel of x, got {mean64.shape} "
            f"and {inv64.shape}"
        )
    weight_vector = _channel_vector("weight", weight, channels, source.dtype)
    bias_vector = _channel_vector("bias", bias, channels, source.dtype)
    use_batch = as_bool("batch_stats", batch_stats)
    want_params = as_bool("needs_param_grads", needs_param_grads)
    count = flat_x.shape[0] * flat_x.shape[3 - _channel_axis(channels_last)]
    # the forward's scale and shift (see normalize)
    scale = inv64 if weight_vector is None else inv64 * weight_vector
    shift = np.zeros(channels) if bias_vector is None else bias_vector
    grad_weight = grad_bias = None
    if use_batch or want_params:
        sum_grad = np.zeros(channels)
        sum_centered = np.zeros(channels)
        for part in sub_batches(flat_x.shape[0], 2 * _work(flat_x)):
            _kernel("grad_sums", channels_last)(flat_grad[part], flat_x[part], None if recompute else flat_y[part],
                                                *act, mean64, scale, shift, sum_grad, sum_centered,
                                                kernel_threads(elements=flat_x[part].size))
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
        _kernel("input_grad", channels_last)(flat_grad[part], flat_x[part], None if recompute else flat_y[part],
                                             *act, shift, grad_x[part], mean64, scale, k_centered, k_0,
                                             kernel_threads(elements=flat_x[part].size))
    return grad_x.reshape(source.shape), grad_weight, grad_bias


# ---------------------------------------------------------------------------------------------
# Group and layer normalisation
#
# Both normalise groups of contiguous elements by their own mean and variance: GroupNorm the
# C/G*L elements of each (image, group), LayerNorm the K trailing elements of each leading index.
# Seen as (1, rows, K), those rows are batch normalisation's channels, so its kernels compute the
# statistics; GroupNorm's per-channel affine map and its gradients are per (image, channel) plane
# coefficients of batch normalisation's element-wise passes too. LayerNorm's element-wise weight
# has kernels of its own (one row at a time, and the parameter gradients a block of columns at a
# time, each column's rows summed in order).


def _row_moments(rows: NDArray[Any]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean and biased variance of each row of a C-contiguous (R, K) array, K > 0."""
    mean = np.zeros(rows.shape[0])
    m2 = np.zeros(rows.shape[0])
    for part in sub_batches(rows.shape[0], rows.shape[1]):
        _core.batch_norm_moments(rows[part][np.newaxis], 0.0, mean[part], m2[part],
                                 kernel_threads(elements=rows[part].size))
    return mean, m2 / rows.shape[1]


def _plane_normalize(planes: NDArray[Any], mean: NDArray[np.float64], scale: NDArray[np.float64],
                     shift: NDArray[np.float64]) -> NDArray[Any]:
    """``(planes[p] - mean[p]) * scale[p] + shift[p]`` for each row p of a C-contiguous (P, L) array."""
    out = np.empty(planes.shape, dtype=planes.dtype)
    for part in sub_batches(planes.shape[0], 2 * planes.shape[1]):
        _core.batch_norm_normalize(planes[part][np.newaxis], out[part][np.newaxis], mean[part], scale[part],
                                   shift[part], *_NO_ACTIVATION, kernel_threads(elements=planes[part].size))
    return out


def _plane_grad_sums(grad: NDArray[Any], planes: NDArray[Any],
                     mean: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``sum grad[p]`` and ``sum grad[p] * (planes[p] - mean[p])`` for each row p of (P, L) arrays."""
    sum_grad = np.zeros(planes.shape[0])
    sum_centered = np.zeros(planes.shape[0])
    for part in sub_batches(planes.shape[0], 2 * planes.shape[1]):
        view = planes[part][np.newaxis]
        _core.batch_norm_grad_sums(grad[part][np.newaxis], view, view, *_NO_ACTIVATION, mean[part], _UNUSED, _UNUSED,
                                   sum_grad[part], sum_centered[part], kernel_threads(elements=planes[part].size))
    return sum_grad, sum_centered


def _plane_input_grad(grad: NDArray[Any], planes: NDArray[Any], mean: NDArray[np.float64],
                      k_grad: NDArray[np.float64], k_centered: NDArray[np.float64],
                      k_0: NDArray[np.float64]) -> NDArray[Any]:
    """``k_grad[p] * grad[p] + k_centered[p] * (planes[p] - mean[p]) + k_0[p]`` for each row p."""
    grad_in = np.empty(planes.shape, dtype=planes.dtype)
    for part in sub_batches(planes.shape[0], 3 * planes.shape[1]):
        view = planes[part][np.newaxis]
        _core.batch_norm_input_grad(grad[part][np.newaxis], view, view, *_NO_ACTIVATION, _UNUSED,
                                    grad_in[part][np.newaxis], mean[part], k_grad[part], k_centered[part], k_0[part],
                                    kernel_threads(elements=planes[part].size))
    return grad_in


def _group_shape(x: NDArray[Any], num_groups: object) -> tuple[int, int, int, int]:
    """(N, C, G, L) of a validated (N, C, ...) input, L the elements of each channel's plane."""
    groups = as_int("num_groups", num_groups, 1)
    channels = x.shape[1]
    if channels % groups:
        raise ValueError(
            f"num_groups must divide the channels of x: x has {channels} channels (shape {x.shape}), "
            f"not divisible into {groups} groups"
        )
    return x.shape[0], channels, groups, int(np.prod(x.shape[2:]))


def group_norm(
    x: NDArray[Any],
    num_groups: int,
    weight: NDArray[Any] | None = None,
    bias: NDArray[Any] | None = None,
    eps: float = 1e-5,
) -> NDArray[Any]:
    """Normalise each group of channels of each sample, as ``torch.nn.functional.group_norm``.

    The C channels are split into ``num_groups`` groups of consecutive channels;
    ``y = (x - mean) / sqrt(var + eps) * weight[c] + bias[c]``, the mean and biased variance
    taken over each sample's group (its C / num_groups channels and all their positions), in
    float64.

    Parameters
    ----------
    x : ndarray of float32 or float64, shape (N, C, ...)
    num_groups : int
        A divisor of C.
    weight, bias : ndarray (C,) of x's dtype, optional
        The per-channel affine map (1 and 0 when absent).
    eps : float, default 1e-5

    Returns
    -------
    ndarray
        x's shape and dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import group_norm
    >>> x = np.array([[[1.0], [3.0], [10.0], [30.0]]])
    >>> group_norm(x, 2, eps=0.0)[0, :, 0]
    array([-1.,  1., -1.,  1.])
    """
    y, _, _ = group_norm_forward(x, num_groups, weight, bias, eps)
    return y


def group_norm_forward(
    x: object, num_groups: object, weight: object = None, bias: object = None, eps: object = 1e-5,
) -> tuple[NDArray[Any], NDArray[np.float64], NDArray[np.float64]]:
    """:func:`group_norm`, also returning each (sample, group)'s mean and ``1 / sqrt(var + eps)``
    (float64, (N, num_groups)): what :func:`group_norm_backward` needs."""
    array = as_float_array("x", x, _NDIMS)
    n, channels, groups, plane = _group_shape(array, num_groups)
    weight_vector = _channel_vector("weight", weight, channels, array.dtype)
    bias_vector = _channel_vector("bias", bias, channels, array.dtype)
    eps_value = _number("eps", eps, 0.0)
    if n * plane == 0:
        return np.empty(array.shape, dtype=array.dtype), np.zeros((n, groups)), np.ones((n, groups))
    source = contiguous(array)
    mean, var = _row_moments(source.reshape(n * groups, channels // groups * plane))
    inv_std = 1.0 / np.sqrt(var + eps_value)
    per_plane = channels // groups
    plane_mean = np.repeat(mean, per_plane)
    plane_inv = np.repeat(inv_std, per_plane)
    scale = plane_inv if weight_vector is None else plane_inv * np.tile(weight_vector, n)
    shift = np.zeros(n * channels) if bias_vector is None else np.tile(bias_vector, n)
    y = _plane_normalize(source.reshape(n * channels, plane), plane_mean, scale, shift)
    return y.reshape(array.shape), mean.reshape(n, groups), inv_std.reshape(n, groups)


def _statistics(name: str, value: object, shape: tuple[int, ...]) -> NDArray[np.float64]:
    array = as_float_array(name, value, range(33))
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, as the forward returned it, got {array.shape}")
    return np.ascontiguousarray(array, dtype=np.float64).reshape(-1)


def group_norm_backward(
    grad_out: NDArray[Any],
    x: NDArray[Any],
    num_groups: int,
    mean: NDArray[Any],
    inv_std: NDArray[Any],
    weight: NDArray[Any] | None = None,
    needs_param_grads: bool = True,
) -> tuple[NDArray[Any], NDArray[Any] | None, NDArray[Any] | None]:
    """Gradients of :func:`group_norm` for ``grad_out``.

    Parameters
    ----------
    grad_out, x : ndarray (N, C, ...), one shape and dtype
        The output's gradient and the forward's input.
    num_groups : int
    mean, inv_std : ndarray (N, num_groups)
        What the forward normalised with (:func:`group_norm_forward` returns them).
    weight : ndarray (C,), optional
        The forward's scale (1 when absent).
    needs_param_grads : bool, default True
        Whether to return ``grad_weight`` and ``grad_bias`` (else None).

    Returns
    -------
    grad_x : ndarray, x's shape and dtype
    grad_weight, grad_bias : ndarray (C,) of x's dtype, or None

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import group_norm_forward, group_norm_backward
    >>> x = np.array([[[1.0], [3.0]]])
    >>> y, mean, inv_std = group_norm_forward(x, 1, eps=0.0)
    >>> grad_x, grad_weight, grad_bias = group_norm_backward(np.array([[[1.0], [0.0]]]), x, 1, mean, inv_std)
    >>> grad_x[0, :, 0], grad_weight, grad_bias
    (array([0., 0.]), array([-1.,  0.]), array([1., 0.]))
    """
    grad = as_float_array("grad_out", grad_out, _NDIMS)
    source = as_float_array("x", x, _NDIMS)
    if grad.shape != source.shape or grad.dtype != source.dtype:
        raise ValueError(
            f"grad_out must have x's shape and dtype {source.shape} {source.dtype}, got {grad.shape} {grad.dtype}"
        )
    n, channels, groups, plane = _group_shape(source, num_groups)
    mean64 = _statistics("mean", mean, (n, groups))
    inv64 = _statistics("inv_std", inv_std, (n, groups))
    weight_vector = _channel_vector("weight", weight, channels, source.dtype)
    want_params = as_bool("needs_param_grads", needs_param_grads)
    if n * plane == 0:
        zeros = np.zeros(channels, dtype=source.dtype)
        return (np.zeros(source.shape, dtype=source.dtype), zeros if want_params else None,
                zeros.copy() if want_params else None)
    per_plane = channels // groups
    count = per_plane * plane
    planes = contiguous(source).reshape(n * channels, plane)
    grad_planes = contiguous(grad).reshape(n * channels, plane)
    plane_mean = np.repeat(mean64, per_plane)
    plane_inv = np.repeat(inv64, per_plane)
    sum_grad, sum_centered = _plane_grad_sums(grad_planes, planes, plane_mean)
    grad_weight = grad_bias = None
    if want_params:
        grad_weight = (sum_centered * plane_inv).reshape(n, channels).sum(axis=0).astype(source.dtype)
        grad_bias = sum_grad.reshape(n, channels).sum(axis=0).astype(source.dtype)
    plane_weight = np.ones(n * channels) if weight_vector is None else np.tile(weight_vector, n)
    # Sums over each group of weight * grad and of weight * grad * (x - mean).
    group_grad = (plane_weight * sum_grad).reshape(n * groups, per_plane).sum(axis=1)
    group_centered = (plane_weight * sum_centered).reshape(n * groups, per_plane).sum(axis=1)
    k_centered = np.repeat(-inv64**3 * group_centered / count, per_plane)
    k_0 = np.repeat(-inv64 * group_grad / count, per_plane)
    grad_x = _plane_input_grad(grad_planes, planes, plane_mean, plane_inv * plane_weight, k_centered, k_0)
    return grad_x.reshape(source.shape), grad_weight, grad_bias


def _normalized_shape(value: object) -> tuple[int, ...]:
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not value:
        raise TypeError(f"normalized_shape must be an int or a non-empty sequence of ints, got {value!r}")
    return tuple(as_int("normalized_shape", size, 0) for size in value)


def _layer_shape(x: NDArray[Any], normalized_shape: object) -> tuple[tuple[int, ...], int, int]:
    """(normalized_shape, M, K) of a validated input whose trailing dimensions it must match."""
    shape = _normalized_shape(normalized_shape)
    if x.ndim < len(shape) or x.shape[x.ndim - len(shape):] != shape:
        raise ValueError(
            f"normalized_shape {shape} must be the trailing dimensions of x, got x of shape {x.shape}"
        )
    k = int(np.prod(shape))
    return shape, int(np.prod(x.shape[: x.ndim - len(shape)])), k


def _elementwise_param(name: str, value: object, shape: tuple[int, ...], dtype: np.dtype[Any]) -> NDArray[Any] | None:
    if value is None:
        return None
    array = as_float_array(name, value, range(33))
    if array.shape != shape:
        raise ValueError(f"{name} must have the normalized shape {shape}, got {array.shape}")
    if array.dtype != dtype:
        raise TypeError(f"{name} must have x's dtype {dtype}, got {array.dtype}; cast it explicitly")
    return contiguous(array).reshape(-1)


def layer_norm(
    x: NDArray[Any],
    normalized_shape: int | tuple[int, ...],
    weight: NDArray[Any] | None = None,
    bias: NDArray[Any] | None = None,
    eps: float = 1e-5,
) -> NDArray[Any]:
    """Normalise over the trailing dimensions, as ``torch.nn.functional.layer_norm``.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, the mean and biased variance taken (in
    float64) over the last ``len(normalized_shape)`` dimensions, separately for each index of the
    leading ones; ``weight`` and ``bias`` apply element by element.

    Parameters
    ----------
    x : ndarray of float32 or float64, shape ``(..., *normalized_shape)``
    normalized_shape : int or tuple of int
        x's trailing dimensions.
    weight, bias : ndarray of shape normalized_shape and x's dtype, optional
        1 and 0 when absent.
    eps : float, default 1e-5

    Returns
    -------
    ndarray
        x's shape and dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import layer_norm
    >>> layer_norm(np.array([[1.0, 3.0], [10.0, 30.0]]), 2, eps=0.0)
    array([[-1.,  1.],
           [-1.,  1.]])
    """
    y, _, _ = layer_norm_forward(x, normalized_shape, weight, bias, eps)
    return y


def layer_norm_forward(
    x: object, normalized_shape: object, weight: object = None, bias: object = None, eps: object = 1e-5,
) -> tuple[NDArray[Any], NDArray[np.float64], NDArray[np.float64]]:
    """:func:`layer_norm`, also returning the mean and ``1 / sqrt(var + eps)`` of each leading
    index (float64, x's leading shape): what :func:`layer_norm_backward` needs."""
    array = as_float_array("x", x, range(1, 33))
    shape, rows, k = _layer_shape(array, normalized_shape)
    weight_vector = _elementwise_param("weight", weight, shape, array.dtype)
    bias_vector = _elementwise_param("bias", bias, shape, array.dtype)
    eps_value = _number("eps", eps, 0.0)
    leading = array.shape[: array.ndim - len(shape)]
    if rows * k == 0:
        return np.empty(array.shape, dtype=array.dtype), np.zeros(leading), np.ones(leading)
    source = contiguous(array).reshape(rows, k)
    mean, var = _row_moments(source)
    inv_std = 1.0 / np.sqrt(var + eps_value)
    if weight_vector is None and bias_vector is None:
        y = _plane_normalize(source, mean, inv_std, np.zeros(rows))
    else:
        if weight_vector is None:
            weight_vector = np.ones(k, dtype=array.dtype)
        no_bias = np.empty(0, dtype=array.dtype)
        y = np.empty(source.shape, dtype=array.dtype)
        for part in sub_batches(rows, 2 * k):
            _core.layer_norm_normalize(source[part], y[part], mean[part], inv_std[part], weight_vector,
                                       no_bias if bias_vector is None else bias_vector,
                                       kernel_threads(elements=source[part].size))
    return y.reshape(array.shape), mean.reshape(leading), inv_std.reshape(leading)


def layer_norm_backward(
    grad_out: NDArray[Any],
    x: NDArray[Any],
    normalized_shape: int | tuple[int, ...],
    mean: NDArray[Any],
    inv_std: NDArray[Any],
    weight: NDArray[Any] | None = None,
    needs_param_grads: bool = True,
) -> tuple[NDArray[Any], NDArray[Any] | None, NDArray[Any] | None]:
    """Gradients of :func:`layer_norm` for ``grad_out``.

    Parameters
    ----------
    grad_out, x : ndarray ``(..., *normalized_shape)``, one shape and dtype
        The output's gradient and the forward's input.
    normalized_shape : int or tuple of int
    mean, inv_std : ndarray of x's leading shape
        What the forward normalised with (:func:`layer_norm_forward` returns them).
    weight : ndarray of shape normalized_shape, optional
        The forward's scale (1 when absent).
    needs_param_grads : bool, default True
        Whether to return ``grad_weight`` and ``grad_bias`` (else None, and one pass fewer).

    Returns
    -------
    grad_x : ndarray, x's shape and dtype
    grad_weight, grad_bias : ndarray of shape normalized_shape and x's dtype, or None

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import layer_norm_forward, layer_norm_backward
    >>> x = np.array([[1.0, 3.0]])
    >>> y, mean, inv_std = layer_norm_forward(x, 2, eps=0.0)
    >>> layer_norm_backward(np.array([[1.0, 0.0]]), x, 2, mean, inv_std)
    (array([[0., 0.]]), array([-1.,  0.]), array([1., 0.]))
    """
    grad = as_float_array("grad_out", grad_out, range(1, 33))
    source = as_float_array("x", x, range(1, 33))
    if grad.shape != source.shape or grad.dtype != source.dtype:
        raise ValueError(
            f"grad_out must have x's shape and dtype {source.shape} {source.dtype}, got {grad.shape} {grad.dtype}"
        )
    shape, rows, k = _layer_shape(source, normalized_shape)
    leading = source.shape[: source.ndim - len(shape)]
    mean64 = _statistics("mean", mean, leading)
    inv64 = _statistics("inv_std", inv_std, leading)
    weight_vector = _elementwise_param("weight", weight, shape, source.dtype)
    want_params = as_bool("needs_param_grads", needs_param_grads)
    if rows * k == 0:
        zeros = np.zeros(shape, dtype=source.dtype)
        return (np.zeros(source.shape, dtype=source.dtype), zeros if want_params else None,
                zeros.copy() if want_params else None)
    planes = contiguous(source).reshape(rows, k)
    grad_rows = contiguous(grad).reshape(rows, k)
    grad_weight = grad_bias = None
    if want_params:
        sum_weight = np.zeros(k)
        sum_bias = np.zeros(k)
        for part in sub_batches(rows, 2 * k):
            _core.layer_norm_param_grads(grad_rows[part], planes[part], mean64[part], inv64[part], sum_weight,
                                         sum_bias, kernel_threads(elements=planes[part].size))
        grad_weight = sum_weight.astype(source.dtype).reshape(shape)
        grad_bias = sum_bias.astype(source.dtype).reshape(shape)
    if weight_vector is None:
        sum_grad, sum_centered = _plane_grad_sums(grad_rows, planes, mean64)
    else:
        sum_grad = np.empty(rows)
        sum_centered = np.empty(rows)
        for part in sub_batches(rows, 2 * k):
            _core.layer_norm_row_sums(grad_rows[part], planes[part], weight_vector, mean64[part], sum_grad[part],
                                      sum_centered[part], kernel_threads(elements=planes[part].size))
    k_centered = -inv64**3 * sum_centered / k
    k_0 = -inv64 * sum_grad / k
    if weight_vector is None:
        grad_x = _plane_input_grad(grad_rows, planes, mean64, inv64, k_centered, k_0)
    else:
        grad_x = np.empty(planes.shape, dtype=source.dtype)
        for part in sub_batches(rows, 3 * k):
            _core.layer_norm_input_grad(grad_rows[part], planes[part], weight_vector, grad_x[part], mean64[part],
                                        inv64[part], k_centered[part], k_0[part],
                                        kernel_threads(elements=planes[part].size))
    return grad_x.reshape(source.shape), grad_weight, grad_bias
