"""Dropout: random zeroing in training mode, identity in evaluation mode."""

from __future__ import annotations

import numbers

import numpy as np

from .init import RngLike, as_generator
from .module import Module, check_input


class Dropout(Module):
    """Zero each element with probability ``p`` while training, scaling the rest by ``1 / (1 - p)``.

    In evaluation mode (``eval()``) the layer is the identity, so the expected activation is the
    same in both modes.

    Parameters
    ----------
    p : float, default 0.5
        Probability of zeroing an element, in [0, 1].
    rng : None, int or numpy.random.Generator
        Source of the masks: a seed makes the sequence of masks reproducible.

    Notes
    -----
    Any input shape. ``backward`` applies the mask of the preceding ``forward``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> drop = nn.Dropout(0.5, rng=0)
    >>> y = drop(np.ones(8))
    >>> sorted(set(y.tolist()))
    [0.0, 2.0]
    >>> drop.eval()(np.ones(3))
    array([1., 1., 1.])
    """

    p: float
    rng: np.random.Generator

    def __init__(self, p: float = 0.5, *, rng: RngLike = None) -> None:
        super().__init__()
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real) or not 0 <= float(p) <= 1:
            raise ValueError(f"dropout probability p must be a number in [0, 1], got {p!r}")
        self.p = float(p)
        self.rng = as_generator(rng)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x`` of any shape, masked and rescaled in training mode."""
        x = check_input(self, x, range(33))
        y: np.ndarray
        if not self.training or self.p == 0:
            y = x.copy()
            self._save_for_backward(y, None)
            return y
        keep = self.rng.random(x.shape) >= self.p
        # p == 1 keeps nothing; avoid the division by zero of the usual scale.
        scale = 0.0 if self.p == 1 else 1.0 / (1.0 - self.p)
        mask = keep.astype(x.dtype) * x.dtype.type(scale)
        y = x * mask
        self._save_for_backward(y, mask)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """``grad_out`` times the forward pass's mask (unchanged in evaluation mode)."""
        grad_out, saved = self._saved_for_backward(grad_out)
        mask: np.ndarray | None = saved[0]
        grad_x: np.ndarray = grad_out.copy() if mask is None else grad_out * mask
        return grad_x

    def extra_repr(self) -> str:
        return f"p={self.p}"
