"""Element-wise activations in NumPy. Output and gradients keep the input's dtype."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from numpy.typing import DTypeLike
from scipy.special import expit

from .._checks import as_int
from .module import Module, as_dtype, check_input

_ANY_NDIM = range(33)


def _as_float(name: str, value: object) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    return float(value)


class ReLU(Module):
    """``max(x, 0)``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> relu = nn.ReLU()
    >>> relu(np.array([-1.0, 2.0]))
    array([0., 2.])
    >>> relu.backward(np.array([5.0, 5.0]))
    array([0., 5.])
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x`` of any shape."""
        x = check_input(self, x, _ANY_NDIM)
        y: np.ndarray = np.maximum(x, 0)
        self._save_for_backward(y, x > 0)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """``grad_out`` where the input was positive, 0 elsewhere."""
        grad_out, (positive,) = self._saved_for_backward(grad_out)
        return np.where(positive, grad_out, 0)


class LeakyReLU(Module):
    """``x`` where positive, ``negative_slope * x`` elsewhere.

    Parameters
    ----------
    negative_slope : float, default 0.01

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.LeakyReLU(0.1)(np.array([-1.0, 2.0]))
    array([-0.1,  2. ])
    """

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = _as_float("negative_slope", negative_slope)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x`` of any shape."""
        x = check_input(self, x, _ANY_NDIM)
        positive = x > 0
        y = np.where(positive, x, x * self.negative_slope)
        self._save_for_backward(y, positive)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """``grad_out`` scaled by 1 or ``negative_slope``."""
        grad_out, (positive,) = self._saved_for_backward(grad_out)
        return np.where(positive, grad_out, grad_out * self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class PReLU(Module):
    """Leaky ReLU with a learnt slope, one per channel (dimension 1) or shared.

    Parameters
    ----------
    num_parameters : int, default 1
        1 (one slope for every channel) or the number of channels C.
    init : float, default 0.25
        Initial slope.
    dtype : float32 or float64, default float32

    Attributes
    ----------
    params : dict
        ``'weight'`` of shape (num_parameters,).

    Notes
    -----
    Input (N, C, ...) (or any shape when ``num_parameters == 1``).

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> prelu = nn.PReLU()
    >>> prelu(np.array([[-2.0, 3.0]], dtype=np.float32))
    array([[-0.5,  3. ]], dtype=float32)
    """

    def __init__(self, num_parameters: int = 1, init: float = 0.25, *, dtype: DTypeLike = np.float32) -> None:
        super().__init__()
        self.num_parameters = as_int("num_parameters", num_parameters, 1)
        self.dtype = as_dtype(dtype)
        self._add_param("weight", np.full(self.num_parameters, _as_float("init", init), dtype=self.dtype))

    def _broadcast_weight(self, ndim: int) -> np.ndarray:
        weight = self._params["weight"]
        if self.num_parameters == 1:
            return weight.reshape(())
        return weight.reshape((-1,) + (1,) * (ndim - 2))

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x`` of shape (N, C, ...)."""
        x = check_input(self, x, _ANY_NDIM, self.dtype)
        if self.num_parameters > 1 and (x.ndim < 2 or x.shape[1] != self.num_parameters):
            raise ValueError(
                f"PReLU has {self.num_parameters} slopes, one per channel, but x of shape {x.shape} "
                f"does not have that many channels in dimension 1"
            )
        positive = x > 0
        y = np.where(positive, x, x * self._broadcast_weight(x.ndim))
        self._save_for_backward(y, x, positive)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient; overwrites ``grads['weight']``."""
        grad_out, (x, positive) = self._saved_for_backward(grad_out)
        grad_slope = np.where(positive, 0, grad_out * x)
        if self.num_parameters == 1:
            self._grads["weight"] = np.atleast_1d(grad_slope.sum()).astype(self.dtype, copy=False)
        else:
            axes = (0,) + tuple(range(2, x.ndim))
            self._grads["weight"] = grad_slope.sum(axis=axes)
        return np.where(positive, grad_out, grad_out * self._broadcast_weight(x.ndim))

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}, dtype={self.dtype}"


class ELU(Module):
    """``x`` where positive, ``alpha * (exp(x) - 1)`` elsewhere.

    Parameters
    ----------
    alpha : float, default 1.0

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.ELU()(np.array([0.0, 1.0]))
    array([0., 1.])
    """

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = _as_float("alpha", alpha)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x`` of any shape."""
        x = check_input(self, x, _ANY_NDIM)
        positive = x > 0
        # exp of the clipped input: no overflow for large positive x, whose branch is discarded.
        exp_negative = np.exp(np.minimum(x, 0))
        y = np.where(positive, x, self.alpha * np.expm1(np.minimum(x, 0)))
        self._save_for_backward(y, positive, exp_negative)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient: ``grad_out`` times 1 or ``alpha * exp(x)``."""
        grad_out, (positive, exp_negative) = self._saved_for_backward(grad_out)
        return np.where(positive, grad_out, grad_out * (self.alpha * exp_negative))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class SELU(Module):
    """Scaled ELU, ``scale * ELU(x, alpha)`` with the self-normalising constants of Klambauer et al.

    ``alpha = 1.6732632423543772``, ``scale = 1.0507009873554805``, as ``torch.nn.SELU``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.SELU()(np.array([1.0]))
    array([1.05070099])
    """

    ALPHA = 1.6732632423543772848170429916717
    SCALE = 1.0507009873554804934193349852946

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x`` of any shape."""
        x = check_input(self, x, _ANY_NDIM)
        positive = x > 0
        exp_negative = np.exp(np.minimum(x, 0))
        y = self.SCALE * np.where(positive, x, self.ALPHA * np.expm1(np.minimum(x, 0)))
        self._save_for_backward(y, positive, exp_negative)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient: ``grad_out`` times ``scale`` or ``scale * alpha * exp(x)``."""
        grad_out, (positive, exp_negative) = self._saved_for_backward(grad_out)
        return np.where(positive, self.SCALE * grad_out, grad_out * (self.SCALE * self.ALPHA * exp_negative))


class Sigmoid(Module):
    """``1 / (1 + exp(-x))``, computed without overflow.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.Sigmoid()(np.array([0.0]))
    array([0.5])
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x`` of any shape."""
        x = check_input(self, x, _ANY_NDIM)
        y: np.ndarray = expit(x)
        self._save_for_backward(y, y)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient: ``grad_out * y * (1 - y)``."""
        grad_out, saved = self._saved_for_backward(grad_out)
        y: np.ndarray = saved[0]
        result: np.ndarray = grad_out * y * (1 - y)
        return result


class Tanh(Module):
    """Hyperbolic tangent.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.Tanh()(np.array([0.0]))
    array([0.])
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x`` of any shape."""
        x = check_input(self, x, _ANY_NDIM)
        y: np.ndarray = np.tanh(x)
        self._save_for_backward(y, y)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient: ``grad_out * (1 - y**2)``."""
        grad_out, saved = self._saved_for_backward(grad_out)
        y: np.ndarray = saved[0]
        result: np.ndarray = grad_out * (1 - y * y)
        return result
