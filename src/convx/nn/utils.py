"""Gradient clipping and flat parameter vectors, as ``torch.nn.utils``.

The clipping functions change gradients in place by writing into the arrays ``param.grad``
(``layer.grads[name]``) that the latest ``backward`` stored. That is safe and is what PyTorch does
to ``.grad``: convx's ``backward`` stores freshly allocated arrays on every call (see
:mod:`convx.nn.module`), so no array a layer or a caller still uses for something else is
touched. Call them between ``model.backward(...)`` and ``optimizer.step()``. Parameters whose
gradient is ``None`` are skipped.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, Union

import numpy as np

from .._checks import SUPPORTED_DTYPES, as_bool
from .module import Module, Parameter

__all__ = ["clip_grad_norm_", "clip_grad_value_", "parameters_to_vector", "vector_to_parameters"]

#: A single Parameter handle, or an iterable of them (``model.parameters()``).
ParametersArg = Union[Parameter, Iterable[Parameter]]


def _as_parameters(parameters: object) -> list[Parameter]:
    if isinstance(parameters, Parameter):
        return [parameters]
    if isinstance(parameters, Module):
        raise TypeError(f"pass model.parameters(), not the {type(parameters).__name__} itself")
    if isinstance(parameters, np.ndarray) or not isinstance(parameters, Iterable):
        raise TypeError(f"parameters must be a Parameter or an iterable of Parameter handles (model.parameters()), "
                        f"got {type(parameters).__name__}")
    params = list(parameters)
    for i, param in enumerate(params):
        if not isinstance(param, Parameter):
            raise TypeError(f"parameters[{i}] must be a Parameter handle from model.parameters(), "
                            f"got {type(param).__name__}")
    return params


def _gradients(params: list[Parameter]) -> list[np.ndarray]:
    """The gradient arrays that are present, each once, checked to be writeable float arrays."""
    grads: list[np.ndarray] = []
    seen: set[int] = set()
    for param in params:
        grad = param.grad
        if grad is None or id(grad) in seen:
            continue
        if not isinstance(grad, np.ndarray) or grad.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"the gradient of {param.name!r} must be a float32 or float64 array, "
                            f"got {type(grad).__name__} {getattr(grad, 'dtype', '')}")
        if not grad.flags.writeable:
            raise ValueError(f"the gradient of {param.name!r} is a read-only array: it cannot be clipped in place")
        seen.add(id(grad))
        grads.append(grad)
    return grads


def _as_norm_type(norm_type: object) -> float:
    if isinstance(norm_type, str) and norm_type == "inf":
        return math.inf
    if isinstance(norm_type, (bool, np.bool_)) or not isinstance(norm_type, numbers.Real):
        raise TypeError(f"norm_type must be a positive number or inf, got {norm_type!r}")
    value = float(norm_type)
    if not value > 0:
        raise ValueError(f"norm_type must be a positive number or inf, got {value}")
    return value


def _vector_norm(values: np.ndarray, norm_type: float) -> Any:
    """The ``norm_type``-norm of the flattened array, in its dtype."""
    magnitudes = np.abs(values.reshape(-1))
    if magnitudes.size == 0:
        return values.dtype.type(0)
    if norm_type == math.inf:
        return magnitudes.max()
    if norm_type == 2.0:
        return np.sqrt(np.dot(magnitudes, magnitudes))
    if norm_type == 1.0:
        return magnitudes.sum()
    return (magnitudes**norm_type).sum() ** (1.0 / norm_type)


def clip_grad_norm_(
    parameters: ParametersArg, max_norm: float, norm_type: float | str = 2.0, error_if_nonfinite: bool = False
) -> float:
    """Scale the gradients in place so that their joint norm is at most ``max_norm``, as ``torch.nn.utils.clip_grad_norm_``.

    The total norm is the ``norm_type``-norm of all the gradients together (the norm of the
    per-gradient norms). Every gradient is multiplied by ``min(1, max_norm / (total + 1e-6))``.

    Parameters
    ----------
    parameters : Parameter or iterable of Parameter
        ``model.parameters()``; parameters whose gradient is None are skipped.
    max_norm : float
        At least 0.
    norm_type : float or 'inf', default 2.0
        Positive; ``math.inf`` (or ``'inf'``) for the largest absolute value.
    error_if_nonfinite : bool, default False
        Raise instead of scaling when the total norm is NaN or infinite (then every
        gradient would become NaN or 0, as in PyTorch).

    Returns
    -------
    total_norm : float
        The total norm of the gradients *before* clipping, as a Python float (computed in the
        gradients' dtype; PyTorch returns it as a 0-d tensor). 0.0 when no gradient is present.

    Raises
    ------
    RuntimeError
        ``error_if_nonfinite`` and the total norm is not finite; no gradient is changed.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> layer = nn.Linear(2, 1, rng=0)
    >>> layer.grads["weight"] = np.array([[3.0, 0.0]], dtype=np.float32)
    >>> layer.grads["bias"] = np.array([4.0], dtype=np.float32)
    >>> nn.utils.clip_grad_norm_(layer.parameters(), max_norm=1.0)
    5.0
    >>> np.round(layer.grads["weight"], 4), np.round(layer.grads["bias"], 4)
    (array([[0.6, 0. ]], dtype=float32), array([0.8], dtype=float32))
    """
    params = _as_parameters(parameters)
    if isinstance(max_norm, (bool, np.bool_)) or not isinstance(max_norm, numbers.Real):
        raise TypeError(f"max_norm must be a real number, got {max_norm!r}")
    max_norm = float(max_norm)
    if not max_norm >= 0:
        raise ValueError(f"max_norm must be at least 0, got {max_norm}")
    p = _as_norm_type(norm_type)
    error_if_nonfinite = as_bool("error_if_nonfinite", error_if_nonfinite)
    grads = _gradients(params)
    if not grads:
        return 0.0
    dtype = np.result_type(*grads)
    # Overflow to inf, and inf * 0 = NaN when scaling by an infinite norm, are results here (as in
    # PyTorch), not accidents to warn about.
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.array([_vector_norm(g, p) for g in grads], dtype=dtype)
        total = _vector_norm(norms, p)
        if error_if_nonfinite and not np.isfinite(total):
            raise RuntimeError(
                f"the total norm of order {p} of the gradients is {float(total)}, so they cannot be clipped; "
                "pass error_if_nonfinite=False to scale them by it anyway"
            )
        coefficient = np.minimum(dtype.type(max_norm) / (total + dtype.type(1e-6)), dtype.type(1.0))
        if not coefficient == 1.0:
            for grad in grads:
                grad *= grad.dtype.type(coefficient)
    return float(total)


def clip_grad_value_(parameters: ParametersArg, clip_value: float) -> None:
    """Clip every gradient entry to ``[-clip_value, clip_value]`` in place, as ``torch.nn.utils.clip_grad_value_``.

    Parameters
    ----------
    parameters : Parameter or iterable of Parameter
        ``model.parameters()``; parameters whose gradient is None are skipped.
    clip_value : float
        At least 0. NaN gradient entries stay NaN.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> layer = nn.Linear(3, 1, bias=False, rng=0)
    >>> layer.grads["weight"] = np.array([[-2.0, 0.5, 3.0]], dtype=np.float32)
    >>> nn.utils.clip_grad_value_(layer.parameters(), 1.0)
    >>> layer.grads["weight"]
    array([[-1. ,  0.5,  1. ]], dtype=float32)
    """
    params = _as_parameters(parameters)
    if isinstance(clip_value, (bool, np.bool_)) or not isinstance(clip_value, numbers.Real):
        raise TypeError(f"clip_value must be a real number, got {clip_value!r}")
    clip_value = float(clip_value)
    if not clip_value >= 0:
        raise ValueError(f"clip_value must be at least 0, got {clip_value}")
    for grad in _gradients(params):
        bound = grad.dtype.type(clip_value)
        np.clip(grad, -bound, bound, out=grad)


def parameters_to_vector(parameters: ParametersArg) -> np.ndarray:
    """The parameters' values concatenated into one new 1-D array, as ``torch.nn.utils.parameters_to_vector``.

    Parameters
    ----------
    parameters : Parameter or iterable of Parameter
        All of one dtype.

    Returns
    -------
    vector : ndarray, shape (total number of entries,)
        A copy, in the order of ``parameters``, with their dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> layer = nn.Linear(3, 2, rng=0)
    >>> nn.utils.parameters_to_vector(layer.parameters()).shape
    (8,)
    """
    params = _as_parameters(parameters)
    if not params:
        raise ValueError("parameters_to_vector got no parameters")
    dtypes = {param.data.dtype for param in params}
    if len(dtypes) > 1:
        raise TypeError(f"the parameters must share one dtype, got {sorted(str(d) for d in dtypes)}")
    return np.concatenate([param.data.reshape(-1) for param in params])


def vector_to_parameters(vec: np.ndarray, parameters: ParametersArg) -> None:
    """Copy consecutive slices of ``vec`` into the parameters' arrays, in place (the inverse of :func:`parameters_to_vector`).

    Unlike ``torch.nn.utils.vector_to_parameters``, which rebinds each ``param.data``, the values
    are copied into the existing arrays, which optimizers and callers hold.

    Parameters
    ----------
    vec : ndarray, shape (total number of entries,)
        Of the parameters' dtype.
    parameters : Parameter or iterable of Parameter

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> layer = nn.Linear(2, 1, rng=0)
    >>> nn.utils.vector_to_parameters(np.arange(3, dtype=np.float32), layer.parameters())
    >>> layer.params["weight"], layer.params["bias"]
    (array([[0., 1.]], dtype=float32), array([2.], dtype=float32))
    """
    if not isinstance(vec, np.ndarray):
        raise TypeError(f"vec must be a NumPy array, got {type(vec).__name__}")
    if vec.ndim != 1:
        raise ValueError(f"vec must be 1-D, got shape {vec.shape}")
    params = _as_parameters(parameters)
    total = sum(param.data.size for param in params)
    if vec.size != total:
        raise ValueError(f"vec has {vec.size} entries, the parameters {total}")
    start = 0
    for param in params:
        if vec.dtype != param.data.dtype:
            raise TypeError(f"vec has dtype {vec.dtype}, parameter {param.name!r} {param.data.dtype}; "
                            "cast vec explicitly")
    for param in params:
        size = param.data.size
        param.data[...] = vec[start:start + size].reshape(param.data.shape)
        start += size
