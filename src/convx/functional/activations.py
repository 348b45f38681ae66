"""Element-wise activations and their gradients, as ``torch.nn.functional``'s.

Every function takes a float32 or float64 array of any shape and returns a new array of the same
shape and dtype, unless ``inplace=True`` asks it to overwrite ``x`` (which must then be writeable,
C-contiguous and aligned). The work is split between threads and sub-batches like every convx op.

Each activation's gradient is computed by :func:`activation_backward` from whichever of the
forward's input ``x`` or output ``y`` suffices (:data:`BACKWARD_READS` says which), so a layer keeps
no other copy: ReLU's gradient needs only ``y``, GELU's needs ``x``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

from .. import _core
from .. import _batching
from .._checks import as_bool, as_float_array, contiguous
from .._threads import kernel_threads

__all__ = [
    "BACKWARD_READS",
    "activation_backward",
    "add",
    "elu",
    "gelu",
    "hardsigmoid",
    "hardswish",
    "leaky_relu",
    "relu",
    "relu6",
    "selu",
    "sigmoid",
    "silu",
    "softplus",
    "tanh",
]

_ANY_NDIM = range(33)

#: SELU's constants (Klambauer et al., 2017), as ``torch.nn.SELU``.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

#: What :func:`activation_backward` reads for each activation: the forward's ``'input'`` or its
#: ``'output'``. ``'leaky_relu'`` reads the output only for a non-negative slope; ``'elu'`` and
#: ``'selu'`` read the input (as PyTorch, exact), or the output for a non-negative alpha when asked
#: (``saved_is='output'``, what an in-place forward leaves; see :func:`activation_backward`).
BACKWARD_READS: dict[str, Literal["input", "output"]] = {
    "relu": "output",
    "relu6": "output",
    "leaky_relu": "output",
    "elu": "input",
    "selu": "input",
    "sigmoid": "output",
    "tanh": "output",
    "silu": "input",
    "gelu": "input",
    "hardswish": "input",
    "hardsigmoid": "input",
    "softplus": "input",
}


def _real(name: str, value: object) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    return number


def _writeable_target(x: NDArray[Any]) -> NDArray[Any]:
    if not (x.flags.writeable and x.flags.c_contiguous and x.flags.aligned):
        raise ValueError(
            "inplace=True needs x writeable, C-contiguous and aligned (it is overwritten); got an array "
            f"with writeable={x.flags.writeable}, c_contiguous={x.flags.c_contiguous}, "
            f"aligned={x.flags.aligned}: pass inplace=False for a new array"
        )
    return x


def _chunks(size: int) -> list[slice]:
    """Runs of at most SUB_BATCH_WORK elements per thread, so that Ctrl-C is acted on between them."""
    most = max(1, _batching.SUB_BATCH_WORK * kernel_threads())
    parts = max(1, -(-size // most))
    return [slice(k * size // parts, (k + 1) * size // parts) for k in range(parts)]


def _forward(x: object, name: str, kind: str, p0: float = 0.0, p1: float = 0.0, inplace: bool = False) -> NDArray[Any]:
    array = as_float_array("x", x, _ANY_NDIM)
    if as_bool("inplace", inplace):
        out = _writeable_target(array)
        source = out
    else:
        source = contiguous(array)
        out = np.empty(array.shape, dtype=array.dtype)
    flat_in, flat_out = source.reshape(-1), out.reshape(-1)
    code = _core.ACTIVATIONS[kind]
    for part in _chunks(flat_in.size):
        _core.activation_forward(flat_in[part], flat_out[part], code, p0, p1,
                                 kernel_threads(elements=part.stop - part.start))
    return out


def relu(x: NDArray[Any], inplace: bool = False) -> NDArray[Any]:
    """``max(x, 0)`` (NaN stays NaN), as ``torch.nn.functional.relu``.

    Parameters
    ----------
    x : ndarray of float32 or float64, any shape
    inplace : bool, default False
        Overwrite ``x`` with the result and return it.

    Returns
    -------
    ndarray, the shape and dtype of ``x``

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import relu
    >>> relu(np.array([-1.0, 0.5, np.nan]))
    array([0. , 0.5, nan])
    """
    return _forward(x, "relu", "relu", inplace=inplace)


def relu6(x: NDArray[Any], inplace: bool = False) -> NDArray[Any]:
    """``min(max(x, 0), 6)``, as ``torch.nn.functional.relu6``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import relu6
    >>> relu6(np.array([-1.0, 3.0, 9.0]))
    array([0., 3., 6.])
    """
    return _forward(x, "relu6", "relu6", inplace=inplace)


def leaky_relu(x: NDArray[Any], negative_slope: float = 0.01, inplace: bool = False) -> NDArray[Any]:
    """``x`` where positive, ``negative_slope * x`` elsewhere, as ``torch.nn.functional.leaky_relu``.

    In place needs a non-negative slope: with a negative one the output's sign no longer tells
    which branch an element took, and the gradient needs the input (PyTorch refuses it too).

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import leaky_relu
    >>> leaky_relu(np.array([-2.0, 2.0]), 0.1)
    array([-0.2,  2. ])
    """
    slope = _real("negative_slope", negative_slope)
    if as_bool("inplace", inplace) and slope < 0:
        raise ValueError(f"inplace=True needs a non-negative negative_slope, got {slope}")
    return _forward(x, "leaky_relu", "leaky_relu", slope, inplace=inplace)


def elu(x: NDArray[Any], alpha: float = 1.0, inplace: bool = False) -> NDArray[Any]:
    """``x`` where positive, ``alpha * (exp(x) - 1)`` elsewhere, as ``torch.nn.functional.elu``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import elu
    >>> elu(np.array([-1.0, 2.0]))
    array([-0.63212056,  2.        ])
    """
    value = _real("alpha", alpha)
    if as_bool("inplace", inplace) and value < 0:
        raise ValueError(f"inplace=True needs a non-negative alpha, got {value}")
    return _forward(x, "elu", "elu", value, 1.0, inplace=inplace)


def selu(x: NDArray[Any], inplace: bool = False) -> NDArray[Any]:
    """``scale * elu(x, alpha)`` with the self-normalising constants, as ``torch.nn.functional.selu``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import selu
    >>> selu(np.array([1.0]))
    array([1.05070099])
    """
    return _forward(x, "selu", "elu", SELU_ALPHA, SELU_SCALE, inplace=inplace)


def sigmoid(x: NDArray[Any]) -> NDArray[Any]:
    """``1 / (1 + exp(-x))``, as ``torch.sigmoid``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import sigmoid
    >>> sigmoid(np.array([0.0, -np.inf]))
    array([0.5, 0. ])
    """
    return _forward(x, "sigmoid", "sigmoid")


def tanh(x: NDArray[Any]) -> NDArray[Any]:
    """The hyperbolic tangent, as ``torch.tanh``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import tanh
    >>> tanh(np.array([0.0]))
    array([0.])
    """
    return _forward(x, "tanh", "tanh")


def silu(x: NDArray[Any], inplace: bool = False) -> NDArray[Any]:
    """``x * sigmoid(x)`` (Swish), as ``torch.nn.functional.silu``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import silu
    >>> silu(np.array([0.0, 1.0]))
    array([0.        , 0.73105858])
    """
    return _forward(x, "silu", "silu", inplace=inplace)


def gelu(x: NDArray[Any], approximate: str = "none") -> NDArray[Any]:
    """``x * Phi(x)`` with Phi the standard normal CDF, or its tanh approximation, as
    ``torch.nn.functional.gelu``.

    Parameters
    ----------
    x : ndarray of float32 or float64, any shape
    approximate : {'none', 'tanh'}, default 'none'

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import gelu
    >>> gelu(np.array([0.0, 1.0]))
    array([0.        , 0.84134475])
    """
    return _forward(x, "gelu", _gelu_kind(approximate))


def _gelu_kind(approximate: object) -> str:
    if approximate == "none" and isinstance(approximate, str):
        return "gelu"
    if approximate == "tanh" and isinstance(approximate, str):
        return "gelu_tanh"
    raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")


def hardswish(x: NDArray[Any], inplace: bool = False) -> NDArray[Any]:
    """``x * relu6(x + 3) / 6``, as ``torch.nn.functional.hardswish``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import hardswish
    >>> hardswish(np.array([-4.0, 1.0, 4.0]))
    array([-0.        ,  0.66666667,  4.        ])
    """
    return _forward(x, "hardswish", "hardswish", inplace=inplace)


def hardsigmoid(x: NDArray[Any], inplace: bool = False) -> NDArray[Any]:
    """``relu6(x + 3) / 6``, as ``torch.nn.functional.hardsigmoid``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import hardsigmoid
    >>> hardsigmoid(np.array([-4.0, 0.0, 4.0]))
    array([0. , 0.5, 1. ])
    """
    return _forward(x, "hardsigmoid", "hardsigmoid", inplace=inplace)


def softplus(x: NDArray[Any], beta: float = 1.0, threshold: float = 20.0) -> NDArray[Any]:
    """``log(1 + exp(beta * x)) / beta``, and ``x`` where ``beta * x > threshold``, as
    ``torch.nn.functional.softplus``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import softplus
    >>> softplus(np.array([0.0, 30.0]))
    array([ 0.69314718, 30.        ])
    """
    beta_value = _real("beta", beta)
    if beta_value == 0:
        raise ValueError("beta must be non-zero, got 0.0")
    return _forward(x, "softplus", "softplus", beta_value, _real("threshold", threshold))


# name -> (kernel, p0, p1) from the keyword arguments of the forward.
_FORWARD: dict[str, Callable[..., tuple[str, float, float]]] = {
    "relu": lambda: ("relu", 0.0, 0.0),
    "relu6": lambda: ("relu6", 0.0, 0.0),
    "leaky_relu": lambda negative_slope=0.01: ("leaky_relu", _real("negative_slope", negative_slope), 0.0),
    "elu": lambda alpha=1.0: ("elu", _real("alpha", alpha), 1.0),
    "selu": lambda: ("elu", SELU_ALPHA, SELU_SCALE),
    "sigmoid": lambda: ("sigmoid", 0.0, 0.0),
    "tanh": lambda: ("tanh", 0.0, 0.0),
    "silu": lambda: ("silu", 0.0, 0.0),
    "gelu": lambda approximate="none": (_gelu_kind(approximate), 0.0, 0.0),
    "hardswish": lambda: ("hardswish", 0.0, 0.0),
    "hardsigmoid": lambda: ("hardsigmoid", 0.0, 0.0),
    "softplus": lambda beta=1.0, threshold=20.0: ("softplus", _nonzero_beta(beta), _real("threshold", threshold)),
}


def _nonzero_beta(beta: object) -> float:
    value = _real("beta", beta)
    if value == 0:
        raise ValueError("beta must be non-zero, got 0.0")
    return value


def _kernel_args(
    table: dict[str, Callable[..., tuple[str, float, float]]], name: object, params: Mapping[str, Any] | None
) -> tuple[str, float, float]:
    if not isinstance(name, str) or name not in table:
        raise ValueError(f"activation must be None or one of {sorted(table)}, got {name!r}")
    if params is not None and not isinstance(params, Mapping):
        raise TypeError(f"activation_params must be a dict of keyword arguments, got {type(params).__name__}")
    try:
        return table[name](**(params or {}))
    except TypeError as exc:
        raise TypeError(f"activation_params for {name!r}: {exc}") from None


def forward_kernel(name: object, params: Mapping[str, Any] | None = None) -> tuple[int, float, float]:
    """The kernel code and its two parameters for activation ``name`` with keyword arguments
    ``params`` (both validated)."""
    kind, p0, p1 = _kernel_args(_FORWARD, name, params)
    return _core.ACTIVATIONS[kind], p0, p1


def output_backward_kernel(name: object, params: Mapping[str, Any] | None = None) -> tuple[int, float, float]:
    """Like :func:`forward_kernel`, for the gradient computed from the activation's output; a
    ValueError for the activations whose gradient needs their input."""
    kind, p0, p1 = _kernel_args(_BACKWARD, name, params)
    if kind == "elu_input" and p0 >= 0:
        kind = "elu"
    if kind not in _FROM_OUTPUT or (kind == "leaky_relu" and p0 < 0):
        raise ValueError(
            f"the gradient of {name!r} with these parameters needs its input, not its output; the activations "
            "whose gradient reads the output: relu, relu6, leaky_relu (slope >= 0), elu and selu (alpha >= 0), "
            "sigmoid, tanh"
        )
    return _core.ACTIVATIONS[kind], p0, p1


def check_no_activation_params(activation: object, params: object) -> None:
    """activation_params make sense only with an activation."""
    if activation is None and params is not None:
        raise ValueError(f"activation_params={params!r} given without an activation: pass activation= too, or drop them")


class Epilogue(NamedTuple):
    """Activation ``kind`` (a kernel code) with parameters ``p0``, ``p1``, as a convolution
    applies it to its output: inside the kernels (``conv2d_forward``'s last three arguments), or
    by calling it on an output computed without."""

    kind: int
    p0: float
    p1: float

    def __call__(self, out: NDArray[Any]) -> None:
        """Apply the activation in place to the C-contiguous float array ``out``."""
        flat = out.reshape(-1)
        for part in _chunks(flat.size):
            _core.activation_forward(flat[part], flat[part], self.kind, self.p0, self.p1,
                                     kernel_threads(elements=part.stop - part.start))


def activation_epilogue(name: object, params: Mapping[str, Any] | None = None) -> Epilogue:
    """Activation ``name`` with keyword arguments ``params`` as a convolution's epilogue
    (both validated now)."""
    return Epilogue(*forward_kernel(name, params))


# name -> (kernel, p0, p1, reads) from the keyword arguments of the forward, for the backward.
_BACKWARD: dict[str, Callable[..., tuple[str, float, float]]] = {
    "relu": lambda: ("relu", 0.0, 0.0),
    "relu6": lambda: ("relu6", 0.0, 0.0),
    "leaky_relu": lambda negative_slope=0.01: ("leaky_relu", _real("negative_slope", negative_slope), 0.0),
    "elu": lambda alpha=1.0: ("elu_input", _real("alpha", alpha), 1.0),
    "selu": lambda: ("elu_input", SELU_ALPHA, SELU_SCALE),
    "sigmoid": lambda: ("sigmoid", 0.0, 0.0),
    "tanh": lambda: ("tanh", 0.0, 0.0),
    "silu": lambda: ("silu", 0.0, 0.0),
    "gelu": lambda approximate="none": (_gelu_kind(approximate), 0.0, 0.0),
    "hardswish": lambda: ("hardswish", 0.0, 0.0),
    "hardsigmoid": lambda: ("hardsigmoid", 0.0, 0.0),
    "softplus": lambda beta=1.0, threshold=20.0: ("softplus", _nonzero_beta(beta), _real("threshold", threshold)),
}

# The kernels whose gradient can be computed from the activation's output.
_FROM_OUTPUT = ("relu", "relu6", "leaky_relu", "elu", "sigmoid", "tanh")


def activation_backward(
    name: str, grad_out: NDArray[Any], saved: NDArray[Any], *, saved_is: str | None = None, **options: Any
) -> NDArray[Any]:
    """The input gradient of activation ``name``: ``grad_out * act'(x)``.

    Parameters
    ----------
    name : str
        One of the activations of this module (``'relu'``, ``'gelu'``, ``'selu'``...).
    grad_out : ndarray, the shape and dtype of the forward's output
    saved : ndarray, the same shape and dtype
        The forward's input ``x`` or its output ``y``, as ``saved_is`` says.
    saved_is : {'input', 'output'}, optional
        What ``saved`` is; by default :data:`BACKWARD_READS`'s entry for ``name`` (``'input'``
        for ``'selu'``). From the output: ReLU, ReLU6, Sigmoid, Tanh, LeakyReLU with a
        non-negative slope, ELU and SELU with a non-negative alpha (``y + alpha * scale`` is the
        slope where ``y <= 0``: no exponential). From the input: every activation but
        Sigmoid and Tanh.
    **options
        The forward's keyword arguments (``negative_slope``, ``alpha``, ``approximate``,
        ``beta``, ``threshold``).

    Returns
    -------
    ndarray
        ``grad_x``, a new array of ``grad_out``'s shape and dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import activation_backward, relu
    >>> x = np.array([-1.0, 2.0])
    >>> activation_backward("relu", np.array([5.0, 5.0]), relu(x))
    array([0., 5.])
    """
    if not isinstance(name, str) or name not in _BACKWARD:
        raise ValueError(f"name must be one of {sorted(_BACKWARD)}, got {name!r}")
    try:
        kind, p0, p1 = _BACKWARD[name](**options)
    except TypeError as exc:
        raise TypeError(f"activation_backward({name!r}): {exc}") from None
    default = BACKWARD_READS.get(name, "input")
    reads = default if saved_is is None else saved_is
    if reads not in ("input", "output"):
        raise ValueError(f"saved_is must be 'input' or 'output', got {saved_is!r}")
    if reads == "output" and kind in ("elu_input",):
        if p0 < 0:
            raise ValueError(f"{name}'s gradient from its output needs a non-negative alpha, got {p0}")
        kind = "elu"
    elif reads == "output" and kind not in ("relu", "relu6", "leaky_relu", "sigmoid", "tanh"):
        raise ValueError(f"{name}'s gradient needs the forward's input, not its output (saved_is='input')")
    elif reads == "output" and kind == "leaky_relu" and p0 < 0:
        raise ValueError(f"leaky_relu's gradient from its output needs a non-negative slope, got {p0}")
    elif reads == "input" and kind in ("sigmoid", "tanh"):
        raise ValueError(f"{name}'s gradient is computed from its output: pass y with saved_is='output'")
    grad = as_float_array("grad_out", grad_out, _ANY_NDIM)
    values = as_float_array("saved", saved, _ANY_NDIM)
    if grad.shape != values.shape or grad.dtype != values.dtype:
        raise ValueError(
            f"grad_out and saved must have one shape and dtype, got {grad.shape} {grad.dtype} and "
            f"{values.shape} {values.dtype}"
        )
    grad, values = contiguous(grad), contiguous(values)
    grad_in = np.empty(grad.shape, dtype=grad.dtype)
    flat_grad, flat_saved, flat_in = grad.reshape(-1), values.reshape(-1), grad_in.reshape(-1)
    code = _core.ACTIVATIONS[kind]
    for part in _chunks(flat_grad.size):
        _core.activation_backward(flat_grad[part], flat_saved[part], flat_in[part], code, p0, p1,
                                  kernel_threads(elements=part.stop - part.start))
    return grad_in


def add(
    a: NDArray[Any], b: NDArray[Any], *, activation: str | None = None,
    activation_params: Mapping[str, Any] | None = None,
) -> NDArray[Any]:
    """``a + b``, then an activation, in one threaded pass: a residual connection's sum.

    Parameters
    ----------
    a, b : ndarray of float32 or float64, one shape and dtype (no broadcasting)
    activation : str, optional
        An activation of this module applied to the sum in the same pass (ResNet's ``relu(x +
        shortcut)``); its gradient, from the result, is :func:`activation_backward`'s.
    activation_params : dict, optional
        The activation's keyword arguments.

    Returns
    -------
    ndarray
        A new array, ``a``'s shape and dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from convx.functional import add
    >>> add(np.array([1.0, -3.0]), np.array([1.0, 1.0]), activation="relu")
    array([2., 0.])
    """
    check_no_activation_params(activation, activation_params)
    first = as_float_array("a", a, _ANY_NDIM)
    second = as_float_array("b", b, _ANY_NDIM)
    if first.shape != second.shape or first.dtype != second.dtype:
        raise ValueError(
            f"a and b must have one shape and dtype (add does not broadcast), got {first.shape} {first.dtype} "
            f"and {second.shape} {second.dtype}"
        )
    code, p0, p1 = (-1, 0.0, 0.0) if activation is None else forward_kernel(activation, activation_params)
    first, second = contiguous(first), contiguous(second)
    out = np.empty(first.shape, dtype=first.dtype)
    flat_a, flat_b, flat_out = first.reshape(-1), second.reshape(-1), out.reshape(-1)
    for part in _chunks(flat_a.size):
        _core.add(flat_a[part], flat_b[part], flat_out[part], code, p0, p1,
                  kernel_threads(elements=part.stop - part.start))
    return out
