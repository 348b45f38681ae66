"""Reference activations in NumPy, written from the formulas: the test oracle for
``convx.functional.activations``.

Every function computes in float64 whatever the input's dtype and returns float64: the tests
compare convx (in the input's dtype) against it with that dtype's tolerance. Each activation
``f`` has its derivative ``f'(x)`` in :func:`derivative`, so that a gradient is
``grad_out * derivative(name, x)``; at a kink the derivative takes PyTorch's one-sided value
(ReLU's at 0 is 0, Hardswish's at 3 is 1). Arguments are trusted; no branch evaluates an
exponential that could overflow (the test suite turns RuntimeWarnings into errors).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "derivative",
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

#: SELU's constants, from Klambauer et al. (2017), to more digits than a float64 holds.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

_erfc = np.frompyfunc(math.erfc, 1, 1)


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def relu(x):
    """max(x, 0)."""
    x = _f64(x)
    return np.where(x > 0, x, 0.0)


def relu6(x):
    """min(max(x, 0), 6)."""
    x = _f64(x)
    return np.where(x > 6, 6.0, np.where(x > 0, x, 0.0))


def leaky_relu(x, negative_slope=0.01):
    """x for x > 0, negative_slope * x elsewhere."""
    x = _f64(x)
    return np.where(x > 0, x, negative_slope * x)


def elu(x, alpha=1.0):
    """x for x > 0, alpha * (e^x - 1) elsewhere."""
    x = _f64(x)
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))


def selu(x):
    """scale * elu(x, alpha), with the self-normalising alpha and scale."""
    return SELU_SCALE * elu(x, SELU_ALPHA)


def sigmoid(x):
    """1 / (1 + e^-x), as e^x / (1 + e^x) for x < 0 (no overflow)."""
    x = _f64(x)
    decaying = np.exp(-np.abs(x))  # e^-|x| <= 1
    return np.where(x >= 0, 1.0 / (1.0 + decaying), decaying / (1.0 + decaying))


def tanh(x):
    """The hyperbolic tangent."""
    return np.tanh(_f64(x))


def silu(x):
    """x * sigmoid(x)."""
    x = _f64(x)
    return x * sigmoid(x)


def _normal_cdf(x):
    """Phi(x) = erfc(-x / sqrt(2)) / 2: no cancellation for x << 0, where erf would give 1 - 1."""
    return 0.5 * np.asarray(_erfc(-x / math.sqrt(2.0)), dtype=np.float64)


_TANH_GELU_BETA = math.sqrt(2.0 / math.pi)
_TANH_GELU_KAPPA = 0.044715


def gelu(x, approximate="none"):
    """x * Phi(x), Phi the standard normal CDF; or x/2 * (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    x = _f64(x)
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(_TANH_GELU_BETA * (x + _TANH_GELU_KAPPA * x**3)))
    return x * _normal_cdf(x)


def hardsigmoid(x):
    """relu6(x + 3) / 6."""
    return relu6(_f64(x) + 3.0) / 6.0


def hardswish(x):
    """x * relu6(x + 3) / 6."""
    x = _f64(x)
    return x * relu6(x + 3.0) / 6.0


def softplus(x, beta=1.0, threshold=20.0):
    """log(1 + e^(beta x)) / beta, and x itself where beta * x > threshold."""
    x = _f64(x)
    z = beta * x
    # log(1 + e^z) = max(z, 0) + log(1 + e^-|z|): no overflow for large z.
    smooth = (np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))) / beta
    return np.where(z > threshold, x, smooth)


def derivative(name, x, **options):
    """d f(x) / dx of activation ``name`` (the functional's name) with the forward's ``options``."""
    x = _f64(x)
    if name == "relu":
        return np.where(x > 0, 1.0, 0.0)
    if name == "relu6":
        return np.where((x > 0) & (x < 6), 1.0, 0.0)
    if name == "leaky_relu":
        return np.where(x > 0, 1.0, options.get("negative_slope", 0.01))
    if name in ("elu", "selu"):
        alpha, scale = (SELU_ALPHA, SELU_SCALE) if name == "selu" else (options.get("alpha", 1.0), 1.0)
        return scale * np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0.0)))
    if name == "sigmoid":
        s = sigmoid(x)
        return s * (1.0 - s)
    if name == "tanh":
        return 1.0 - np.tanh(x) ** 2
    if name == "silu":
        s = sigmoid(x)
        return s * (1.0 + x * (1.0 - s))
    if name == "gelu":
        if options.get("approximate", "none") == "tanh":
            t = np.tanh(_TANH_GELU_BETA * (x + _TANH_GELU_KAPPA * x**3))
            inner = _TANH_GELU_BETA * (1.0 + 3.0 * _TANH_GELU_KAPPA * x**2)
            return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * inner
        pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        return _normal_cdf(x) + x * pdf
    if name == "hardswish":
        return np.where(x <= -3, 0.0, np.where(x >= 3, 1.0, (2.0 * x + 3.0) / 6.0))
    if name == "hardsigmoid":
        return np.where((x > -3) & (x < 3), 1.0 / 6.0, 0.0)
    if name == "softplus":
        beta, threshold = options.get("beta", 1.0), options.get("threshold", 20.0)
        return np.where(beta * x > threshold, 1.0, sigmoid(beta * x))
    raise ValueError(f"unknown activation {name!r}")
