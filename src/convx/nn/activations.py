"""Element-wise activations: compiled, threaded kernels (``convx.functional.activations``).

Output and gradients keep the input's dtype. Each layer keeps for its backward only what the
gradient reads: the output for ReLU, ReLU6, LeakyReLU (non-negative slope), Sigmoid and Tanh,
the input (a reference, not a copy) for the others. ``inplace=True`` overwrites the input with
the output, as in PyTorch; for the activations whose gradient reads the input it then keeps a
copy of the input, so it saves memory only for the first group.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from .._checks import as_bool, as_int
from ..functional import activations as F
from ..functional.softmax import log_softmax, log_softmax_backward, softmax, softmax_backward
from .module import Module, as_dtype, check_input

_ANY_NDIM = range(33)


def _as_float(name: str, value: object) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    return float(value)


class _Activation(Module):
    """An element-wise activation computed by ``convx.functional.activations``.

    Subclasses set ``name`` (the functional's name) and ``reads`` (what the backward needs:
    ``'input'`` or ``'output'``), and give their options in ``_options``.
    """

    name: str = ""
    reads: str = "input"

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = as_bool("inplace", inplace)

    def _options(self) -> dict[str, Any]:
        return {}

    def _forward_options(self) -> dict[str, Any]:
        options = self._options()
        if self.inplace:
            options["inplace"] = True
        return options

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x`` of any shape."""
        x = check_input(self, x, _ANY_NDIM)
        reads = self._reads()
        saved_input = x.copy() if self.inplace and reads == "input" else x
        y: np.ndarray = getattr(F, self.name)(x, **self._forward_options())
        self._save_for_backward(y, y if reads == "output" else saved_input)
        return y

    def _reads(self) -> str:
        return self.reads

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient: ``grad_out * act'(x)``."""
        grad_out, (saved,) = self._saved_for_backward(grad_out)
        return F.activation_backward(self.name, grad_out, saved, saved_is=self._reads(), **self._options())

    def extra_repr(self) -> str:
        text = ", ".join(f"{key}={value!r}" for key, value in self._options().items())
        if self.inplace:
            text = f"{text}, inplace=True" if text else "inplace=True"
        return text


class ReLU(_Activation):
    """``max(x, 0)``.

    Parameters
    ----------
    inplace : bool, default False
        Overwrite the input with the output.

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

    name = "relu"
    reads = "output"


class ReLU6(_Activation):
    """``min(max(x, 0), 6)``.

    Parameters
    ----------
    inplace : bool, default False

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.ReLU6()(np.array([-1.0, 2.0, 8.0]))
    array([0., 2., 6.])
    """

    name = "relu6"
    reads = "output"


class LeakyReLU(_Activation):
    """``x`` where positive, ``negative_slope * x`` elsewhere.

    Parameters
    ----------
    negative_slope : float, default 0.01
    inplace : bool, default False
        Needs a non-negative slope.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.LeakyReLU(0.1)(np.array([-1.0, 2.0]))
    array([-0.1,  2. ])
    """

    name = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False) -> None:
        super().__init__(inplace)
        self.negative_slope = _as_float("negative_slope", negative_slope)
        if self.inplace and self.negative_slope < 0:
            raise ValueError(f"inplace=True needs a non-negative negative_slope, got {self.negative_slope}")

    def _options(self) -> dict[str, Any]:
        return {"negative_slope": self.negative_slope}

    def _reads(self) -> str:
        return "output" if self.negative_slope >= 0 else "input"


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
            self._store_grad("weight", np.atleast_1d(grad_slope.sum()).astype(self.dtype, copy=False))
        else:
            axes = (0,) + tuple(range(2, x.ndim))
            self._store_grad("weight", grad_slope.sum(axis=axes))
        grad_in: np.ndarray = grad_out * np.where(positive, 1, self._broadcast_weight(x.ndim)).astype(x.dtype, copy=False)
        return grad_in

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}, dtype={self.dtype}"


class ELU(_Activation):
    """``x`` where positive, ``alpha * (exp(x) - 1)`` elsewhere.

    Parameters
    ----------
    alpha : float, default 1.0
    inplace : bool, default False
        Needs a non-negative alpha; the gradient is then computed from the output.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.ELU()(np.array([0.0, 1.0]))
    array([0., 1.])
    """

    name = "elu"

    def __init__(self, alpha: float = 1.0, inplace: bool = False) -> None:
        super().__init__(inplace)
        self.alpha = _as_float("alpha", alpha)
        if self.inplace and self.alpha < 0:
            raise ValueError(f"inplace=True needs a non-negative alpha, got {self.alpha}")

    def _options(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def _reads(self) -> str:
        # As PyTorch: from the input (exact), unless in place overwrote it.
        return "output" if self.inplace else "input"


class SELU(_Activation):
    """Scaled ELU, ``scale * ELU(x, alpha)`` with the self-normalising constants of Klambauer et al.

    ``alpha = 1.6732632423543772``, ``scale = 1.0507009873554805``, as ``torch.nn.SELU``.

    Parameters
    ----------
    inplace : bool, default False

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.SELU()(np.array([1.0]))
    array([1.05070099])
    """

    ALPHA = F.SELU_ALPHA
    SCALE = F.SELU_SCALE
    name = "selu"

    def _reads(self) -> str:
        return "output" if self.inplace else "input"


class Sigmoid(_Activation):
    """``1 / (1 + exp(-x))``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.Sigmoid()(np.array([0.0]))
    array([0.5])
    """

    name = "sigmoid"
    reads = "output"

    def __init__(self) -> None:
        super().__init__(False)


class Tanh(_Activation):
    """Hyperbolic tangent.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.Tanh()(np.array([0.0]))
    array([0.])
    """

    name = "tanh"
    reads = "output"

    def __init__(self) -> None:
        super().__init__(False)


class SiLU(_Activation):
    """``x * sigmoid(x)`` (Swish).

    Parameters
    ----------
    inplace : bool, default False

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.SiLU()(np.array([0.0]))
    array([0.])
    """

    name = "silu"


class GELU(_Activation):
    """``x * Phi(x)``, Phi the standard normal CDF, or its tanh approximation.

    Parameters
    ----------
    approximate : {'none', 'tanh'}, default 'none'

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.GELU()(np.array([0.0]))
    array([0.])
    """

    name = "gelu"

    def __init__(self, approximate: str = "none") -> None:
        super().__init__(False)
        F._gelu_kind(approximate)
        self.approximate = approximate

    def _options(self) -> dict[str, Any]:
        return {"approximate": self.approximate}


class Hardswish(_Activation):
    """``x * relu6(x + 3) / 6`` (MobileNetV3).

    Parameters
    ----------
    inplace : bool, default False

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.Hardswish()(np.array([-4.0, 4.0]))
    array([-0.,  4.])
    """

    name = "hardswish"


class Hardsigmoid(_Activation):
    """``relu6(x + 3) / 6``.

    Parameters
    ----------
    inplace : bool, default False

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.Hardsigmoid()(np.array([0.0]))
    array([0.5])
    """

    name = "hardsigmoid"


class Softplus(_Activation):
    """``log(1 + exp(beta * x)) / beta``, and ``x`` where ``beta * x > threshold``.

    Parameters
    ----------
    beta : float, default 1.0
    threshold : float, default 20.0

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.Softplus()(np.array([0.0]))
    array([0.69314718])
    """

    name = "softplus"

    def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None:
        super().__init__(False)
        self.beta = _as_float("beta", beta)
        self.threshold = _as_float("threshold", threshold)
        if self.beta == 0:
            raise ValueError("beta must be non-zero, got 0.0")

    def _options(self) -> dict[str, Any]:
        return {"beta": self.beta, "threshold": self.threshold}


class _Softmax(Module):
    """Softmax or log-softmax along ``dim``; the backward reads the output."""

    log_out: bool = False

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = as_int("dim", dim)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x`` of any shape with a dimension ``dim``."""
        x = check_input(self, x, _ANY_NDIM)
        y = (log_softmax if self.log_out else softmax)(x, self.dim)
        self._save_for_backward(y, y)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient, from the forward's output."""
        grad_out, (y,) = self._saved_for_backward(grad_out)
        return (log_softmax_backward if self.log_out else softmax_backward)(grad_out, y, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Softmax(_Softmax):
    """``exp(x) / sum(exp(x))`` along ``dim``, as ``torch.nn.Softmax`` (see
    :func:`convx.functional.softmax`).

    Parameters
    ----------
    dim : int
        The dimension whose slices sum to 1 (negative counts from the end).

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.Softmax(dim=-1)(np.array([[0.0, np.log(3.0)]]))
    array([[0.25, 0.75]])
    """


class LogSoftmax(_Softmax):
    """``x - log(sum(exp(x)))`` along ``dim``, as ``torch.nn.LogSoftmax`` (see
    :func:`convx.functional.log_softmax`).

    Parameters
    ----------
    dim : int
        The dimension to normalise along (negative counts from the end).

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> np.exp(nn.LogSoftmax(dim=1)(np.array([[0.0, np.log(3.0)]])))
    array([[0.25, 0.75]])
    """

    log_out = True
