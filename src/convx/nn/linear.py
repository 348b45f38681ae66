"""Fully connected layer and the reshape that feeds it."""

from __future__ import annotations

import numpy as np
from numpy.typing import DTypeLike

from .._checks import as_bool, as_int
from .._products import matmul
from .init import RngLike, default_weight_and_bias
from .module import Module, as_dtype, check_input


class Linear(Module):
    """Affine map ``y = x @ weight.T + bias``, ``torch.nn.Linear`` in NumPy.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, default True
    dtype : float32 or float64, default float32
    rng : None, int or numpy.random.Generator
        Source of the initial weights (PyTorch's default: ``U(-1/sqrt(in), 1/sqrt(in))`` for
        both weight and bias).

    Attributes
    ----------
    params : dict
        ``'weight'`` of shape (out_features, in_features) and, with ``bias``, ``'bias'``
        (out_features,).

    Notes
    -----
    Input (..., in_features), output (..., out_features).

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> fc = nn.Linear(4, 3, rng=0)
    >>> y = fc(np.ones((2, 4), dtype=np.float32))
    >>> grad_x = fc.backward(np.ones_like(y))
    >>> y.shape, grad_x.shape, fc.grads["weight"].shape
    ((2, 3), (2, 4), (3, 4))
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, dtype: DTypeLike = np.float32,
        rng: RngLike = None,
    ) -> None:
        super().__init__()
        self.in_features = as_int("in_features", in_features, 1)
        self.out_features = as_int("out_features", out_features, 1)
        self.dtype = as_dtype(dtype)
        has_bias = as_bool("bias", bias)
        weight, bias_values = default_weight_and_bias(
            (self.out_features, self.in_features), self.out_features if has_bias else None, rng, dtype
        )
        self._add_param("weight", weight)
        if bias_values is not None:
            self._add_param("bias", bias_values)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x`` (..., in_features) to (..., out_features)."""
        x = check_input(self, x, range(1, 33), self.dtype)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Linear expects {self.in_features} input features, got x of shape {x.shape}")
        rows = x.reshape(-1, self.in_features)
        y = matmul(rows, self._params["weight"].T).reshape(*x.shape[:-1], self.out_features)
        if "bias" in self._params:
            y += self._params["bias"]
        self._save_for_backward(y, x)
        result: np.ndarray = y
        return result

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out`` (..., out_features); overwrites ``grads['weight'|'bias']``."""
        grad_out, (x,) = self._saved_for_backward(grad_out)
        grad_rows = grad_out.reshape(-1, self.out_features)
        self._store_grad("weight", matmul(grad_rows.T, x.reshape(-1, self.in_features)))
        if "bias" in self._params:
            self._store_grad("bias", grad_rows.sum(axis=0))
        result: np.ndarray = matmul(grad_rows, self._params["weight"]).reshape(*grad_out.shape[:-1], self.in_features)
        return result

    def extra_repr(self) -> str:
        bias = "" if "bias" in self._params else ", bias=False"
        return f"in_features={self.in_features}, out_features={self.out_features}{bias}, dtype={self.dtype}"


class Flatten(Module):
    """Merge the dimensions ``start_dim`` to ``end_dim`` into one, as ``torch.nn.Flatten``.

    Parameters
    ----------
    start_dim : int, default 1
        First dimension to merge (1 keeps the batch dimension).
    end_dim : int, default -1
        Last dimension to merge; negative counts from the end.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.Flatten()(np.zeros((2, 3, 4, 4))).shape
    (2, 48)
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim = as_int("start_dim", start_dim)
        self.end_dim = as_int("end_dim", end_dim)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x`` with dimensions ``start_dim..end_dim`` merged (a view when possible)."""
        x = check_input(self, x, range(33))
        ndim = max(x.ndim, 1)
        start = self.start_dim + ndim if self.start_dim < 0 else self.start_dim
        end = self.end_dim + ndim if self.end_dim < 0 else self.end_dim
        if not (0 <= start < ndim and 0 <= end < ndim) or start > end:
            raise ValueError(
                f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim}) does not fit x of shape {x.shape}"
            )
        y = x.reshape(*x.shape[:start], -1, *x.shape[end + 1 :]) if x.ndim else x.reshape(1)
        self._save_for_backward(y, x.shape)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """``grad_out`` reshaped to the input's shape."""
        grad_out, saved = self._saved_for_backward(grad_out)
        input_shape: tuple[int, ...] = saved[0]
        return grad_out.reshape(input_shape)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
