"""Losses: ``forward(...)`` returns a float, ``backward()`` the gradient of that float."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._checks import as_float_array, same_dtype

_REDUCTIONS = ("mean", "sum")


class _Loss:
    def __init__(self, reduction: str = "mean") -> None:
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self._cache: tuple[Any, ...] | None = None

    def forward(self, prediction: np.ndarray, target: np.ndarray) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, prediction: np.ndarray, target: np.ndarray) -> float:
        return self.forward(prediction, target)

    def _saved_for_backward(self) -> tuple[Any, ...]:
        if self._cache is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward() needs a preceding forward(): compute the loss first "
                "(each forward supports one backward)"
            )
        cache, self._cache = self._cache, None
        return cache

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reduction={self.reduction!r})"


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy between logits and integer class labels.

    ``loss_n = logsumexp(logits[n]) - logits[n, target[n]]``, averaged (or summed) over the batch,
    computed with the maximum logit subtracted so that large logits neither overflow nor lose
    precision.

    Parameters
    ----------
    reduction : {'mean', 'sum'}, default 'mean'

    Notes
    -----
    ``forward(logits, target)``: logits (N, C) float32/float64, target (N,) integers in [0, C).
    ``backward()`` returns the gradient with respect to the logits, (N, C):
    ``(softmax(logits) - one_hot(target)) / N`` for the mean.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> loss_fn = nn.CrossEntropyLoss()
    >>> round(loss_fn(np.zeros((2, 4)), np.array([0, 3])), 6)  # log(4)
    1.386294
    >>> loss_fn.backward()
    array([[-0.375,  0.125,  0.125,  0.125],
           [ 0.125,  0.125,  0.125, -0.375]])
    """

    def forward(self, logits: np.ndarray, target: np.ndarray) -> float:
        """Loss of ``logits`` (N, C) for labels ``target`` (N,)."""
        logits = as_float_array("logits", logits, (2,))
        target = np.asarray(target)
        if not np.issubdtype(target.dtype, np.integer):
            raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
        batch, classes = logits.shape
        if target.shape != (batch,):
            raise ValueError(f"target must have shape ({batch},), one label per row of logits, got {target.shape}")
        if batch and (target.min() < 0 or target.max() >= classes):
            bad = target[(target < 0) | (target >= classes)][0]
            raise ValueError(f"target values must be class indices in [0, {classes}), got {bad}")
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        log_probs = shifted - log_norm
        rows = np.arange(batch)
        losses = -log_probs[rows, target]
        self._cache = (log_probs, target)
        return float(losses.sum() if self.reduction == "sum" else losses.mean())

    def backward(self) -> np.ndarray:
        """Gradient of the loss with respect to the logits, (N, C), in the logits' dtype."""
        log_probs, target = self._saved_for_backward()
        grad: np.ndarray = np.exp(log_probs)
        grad[np.arange(len(target)), target] -= 1
        if self.reduction == "mean" and len(target):
            grad /= len(target)
        return grad


class MSELoss(_Loss):
    """Mean squared error, ``mean((prediction - target)**2)`` over all elements (or their sum).

    Parameters
    ----------
    reduction : {'mean', 'sum'}, default 'mean'

    Notes
    -----
    ``forward(prediction, target)``: two arrays of one shape and dtype. ``backward()`` returns the
    gradient with respect to ``prediction``: ``2 * (prediction - target) / size`` for the mean.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> loss_fn = nn.MSELoss()
    >>> loss_fn(np.array([1.0, 2.0]), np.array([0.0, 0.0]))
    2.5
    >>> loss_fn.backward()
    array([1., 2.])
    """

    def forward(self, prediction: np.ndarray, target: np.ndarray) -> float:
        """Loss of ``prediction`` against ``target``, same shape and dtype."""
        prediction = as_float_array("prediction", prediction, range(33))
        target = as_float_array("target", target, range(33))
        same_dtype(prediction=prediction, target=target)
        if prediction.shape != target.shape:
            raise ValueError(f"prediction and target must have one shape, got {prediction.shape} and {target.shape}")
        difference = prediction - target
        self._cache = (difference,)
        squared = difference * difference
        return float(squared.sum() if self.reduction == "sum" else squared.mean())

    def backward(self) -> np.ndarray:
        """Gradient of the loss with respect to ``prediction``, in its shape and dtype."""
        (difference,) = self._saved_for_backward()
        grad: np.ndarray = 2 * difference
        if self.reduction == "mean" and difference.size:
            grad /= difference.size
        return grad
