"""Finite-difference gradient checks for user-written layers and functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import math
import numbers

import numpy as np


def _tolerance(name: str, value: object, *, zero_allowed: bool) -> float:
    """``value`` as a finite float, positive (or non-negative where ``zero_allowed``)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (number == 0 and not zero_allowed):
        bound = "non-negative" if zero_allowed else "positive"
        raise ValueError(f"{name} must be a finite {bound} number, got {value!r}")
    return number


def _dtype_error(name: str, array: object) -> TypeError:
    return TypeError(
        f"gradcheck needs float64 arrays (central differences in float32 are dominated by rounding), "
        f"but {name} has dtype {np.asarray(array).dtype}; build layers with dtype=np.float64 and cast inputs"
    )


def _as_list(values: Any) -> list[Any]:
    return list(values) if isinstance(values, (list, tuple)) else [values]


def gradcheck(
    fn: Any,
    inputs: Any,
    backward: Callable[[Any], Any] | None = None,
    *,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    seed: int | np.random.Generator | None = 0,
    check_params: bool = True,
    raise_exception: bool = True,
) -> bool:
    """Compare analytical gradients with central finite differences, in float64.

    With a random output gradient ``g`` (drawn from ``seed``), every element ``a`` of every checked
    array gets the numerical derivative
    ``(<g, f(.., a + eps, ..)> - <g, f(.., a - eps, ..)>) / (2 eps)``, which must match the
    analytical gradient (a vector-Jacobian product) within ``atol + rtol * |numerical|``.

    Parameters
    ----------
    fn : convx.nn.Module or callable
        A layer (anything with ``forward``, ``backward``, ``params`` and ``grads``): its
        ``forward(x)`` is differentiated with respect to ``x`` and, with ``check_params``, each
        array in ``params``, whose gradients are read from ``grads`` after ``backward(g)``.
        Or a function ``fn(*inputs) -> ndarray or float``, which needs ``backward``.
    inputs : ndarray or sequence of ndarray
        float64 points at which to check. For a layer, one array ``x``. They are never modified
        (the check perturbs copies); a layer's parameters are perturbed in place and restored.
    backward : callable, optional
        For a plain function only: ``backward(g)`` returns the gradient of ``<g, fn(*inputs)>``
        with respect to each input (one array, or a sequence with one per input), evaluated at
        ``inputs`` right after a call ``fn(*inputs)``.
    eps : float, default 1e-6
        Finite-difference step.
    atol, rtol : float, default 1e-5, 1e-3
        Tolerances (PyTorch's ``gradcheck`` defaults).
    seed : None, int or numpy.random.Generator, default 0
        Source of the random output gradient.
    check_params : bool, default True
        For a layer, also check the gradients of its parameters.
    raise_exception : bool, default True
        Raise on a mismatch; otherwise return False.

    Returns
    -------
    ok : bool
        True when every gradient matches.

    Raises
    ------
    AssertionError
        A gradient differs, or either derivative is not finite (``raise_exception``); the message
        names the array, the worst element, both values, and the tolerance.
    TypeError
        An input or parameter is not float64, or a tolerance is not a real number.
    ValueError
        ``eps`` is not finite and positive, or ``atol`` / ``rtol`` not finite and non-negative.

    Notes
    -----
    The function must be deterministic and smooth near the point: put Dropout in ``eval()`` mode
    (or it draws a new mask at every call), and keep inputs away from kinks such as ReLU's 0 and
    ties in max pooling. A layer's state (BatchNorm2d's running statistics) is restored afterwards.
    The cost is two forward calls per checked element, so use small shapes.

    Examples
    --------
    A layer, with its parameters:

    >>> import numpy as np, convx
    >>> from convx import nn
    >>> layer = nn.Conv2d(2, 3, kernel_size=3, padding=1, dtype=np.float64, rng=0)
    >>> x = np.random.default_rng(0).normal(size=(2, 2, 5, 5))
    >>> convx.gradcheck(layer, x)
    True

    A function with a hand-written backward (here a wrong one):

    >>> square = lambda a: a * a
    >>> convx.gradcheck(square, np.array([1.0, 2.0]), backward=lambda g: 2 * g * np.array([1.0, 2.0]))
    True
    >>> convx.gradcheck(square, np.array([1.0, 2.0]), backward=lambda g: g, raise_exception=False)
    False
    """
    eps = _tolerance("eps", eps, zero_allowed=False)
    atol = _tolerance("atol", atol, zero_allowed=True)
    rtol = _tolerance("rtol", rtol, zero_allowed=True)
    is_layer = all(hasattr(fn, attr) for attr in ("forward", "backward", "params", "grads"))
    if is_layer:
        if backward is not None:
            raise TypeError("backward is taken from the layer; pass backward only with a plain function")
        inputs = _as_list(inputs)
        if len(inputs) != 1:
            raise ValueError(f"a layer takes one input array, got {len(inputs)}")
    elif not callable(fn):
        raise TypeError(f"fn must be a convx.nn layer or a callable, got {type(fn).__name__}")
    elif backward is None:
        raise TypeError("a plain function needs backward(g) returning the gradient for each input")
    else:
        inputs = _as_list(inputs)

    points = []
    for index, value in enumerate(inputs):
        if not isinstance(value, np.ndarray) or value.dtype != np.float64:
            raise _dtype_error(f"inputs[{index}]", value)
        points.append(value.copy())
    checked: list[tuple[str, np.ndarray]] = [(f"inputs[{i}]", point) for i, point in enumerate(points)]
    if is_layer and check_params:
        for name, param in fn.params.items():
            if param.dtype != np.float64:
                raise _dtype_error(f"parameter {name!r}", param)
            checked.append((f"parameter {name!r}", param))

    saved_state = fn.state_dict() if is_layer and hasattr(fn, "state_dict") else None

    def evaluate() -> Any:
        return fn.forward(points[0]) if is_layer else fn(*points)

    try:
        output = np.asarray(evaluate(), dtype=np.float64)
        grad_out = np.random.default_rng(seed).standard_normal(output.shape)
        if is_layer:
            analytical = [fn.backward(grad_out if output.ndim else grad_out.item())]
            if check_params:
                analytical += [fn.grads[name] for name in fn.params]
        else:
            assert backward is not None
            analytical = _as_list(backward(grad_out if output.ndim else grad_out.item()))
            if len(analytical) != len(points):
                raise ValueError(f"backward returned {len(analytical)} gradients for {len(points)} inputs")

        for (name, array), grad in zip(checked, analytical):
            if grad is None:
                raise ValueError(f"backward left no gradient for {name}")
            grad = np.asarray(grad)
            if grad.shape != array.shape:
                raise ValueError(f"the analytical gradient of {name} has shape {grad.shape}, expected {array.shape}")
            numerical = np.empty(array.shape)
            # Index the array itself: perturbing a reshaped copy would not reach fn.
            for element in np.ndindex(array.shape):
                original = array[element]
                array[element] = original + eps
                plus = float(np.vdot(grad_out, np.asarray(evaluate(), dtype=np.float64)))
                array[element] = original - eps
                minus = float(np.vdot(grad_out, np.asarray(evaluate(), dtype=np.float64)))
                array[element] = original
                numerical[element] = (plus - minus) / (2 * eps)
            error = np.abs(grad - numerical)
            excess = error - (atol + rtol * np.abs(numerical))
            # A non-finite derivative on either side cannot be checked: NaN compares false with
            # every tolerance, so it must fail here rather than pass unseen.
            if np.any(excess > 0) or not (np.all(np.isfinite(grad)) and np.all(np.isfinite(numerical))):
                worst = np.unravel_index(np.nanargmax(np.where(np.isfinite(excess), excess, np.inf)), array.shape)
                if raise_exception:
                    raise AssertionError(
                        f"gradcheck: the analytical gradient of {name} differs from the numerical one; "
                        f"worst at index {tuple(int(i) for i in worst)}: analytical {float(grad[worst])!r}, numerical "
                        f"{float(numerical[worst])!r} (tolerance atol={atol} + rtol={rtol} * |numerical|); "
                        f"{int(np.count_nonzero(excess > 0))} of {array.size} elements out of tolerance"
                    )
                return False
    finally:
        if saved_state is not None:
            fn.load_state_dict(saved_state)
    return True
