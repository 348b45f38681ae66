"""Losses: ``forward(...)`` returns a float, ``backward()`` the gradient of that float."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .._checks import as_float_array, as_int, same_dtype
from ..functional.softmax import log_softmax

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
    """Softmax cross-entropy between logits and class labels or class probabilities, as
    ``torch.nn.CrossEntropyLoss``.

    With class indices ``y``: ``loss_n = -w[y_n] * log_softmax(x_n)[y_n]`` (0 where
    ``y_n == ignore_index``); the mean divides the sum by the summed weights of the targets not
    ignored. With ``label_smoothing = e``: ``(1 - e) * loss_n + e / C * smooth_n``, ``smooth_n =
    -sum_c w[c] * log_softmax(x_n)[c]``, reduced the same way. With class probabilities ``t`` (a
    float target of the logits' shape): ``loss_n = -sum_c w[c] * t'[n, c] * log_softmax(x_n)[c]``,
    ``t' = (1 - e) t + e / C``; the mean divides by the number of samples. The log-softmax
    subtracts each row's maximum first, so large logits neither overflow nor lose precision.

    Parameters
    ----------
    weight : ndarray (C,) of the logits' dtype, optional
        A weight per class (1 when absent).
    ignore_index : int, default -100
        Class-index targets equal to it contribute neither to the loss nor to the mean's divisor.
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        ``'none'``: ``forward`` returns the per-sample losses (N, d1, ...) and ``backward`` takes
        their gradient (ones when omitted).
    label_smoothing : float in [0, 1], default 0

    Notes
    -----
    ``forward(logits, target)``: logits (N, C), (N, C, d1, ...) or (C,), float32/float64; target
    integer class indices (N,), (N, d1, ...) or () in [0, C) (or ``ignore_index``), or float
    probabilities of the logits' shape and dtype. ``backward()`` returns the gradient with respect
    to the logits, their shape and dtype: ``(softmax(logits) - one_hot(target)) / N`` for the
    plain mean.

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
    >>> smoothed = nn.CrossEntropyLoss(label_smoothing=0.1, ignore_index=0)
    >>> round(smoothed(np.zeros((2, 4)), np.array([0, 3])), 6)  # only the second sample counts
    1.386294
    """

    weight: np.ndarray | None
    ignore_index: int
    label_smoothing: float

    def __init__(
        self, weight: np.ndarray | None = None, ignore_index: int = -100, reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        if reduction not in _REDUCTIONS + ("none",):
            raise ValueError(f"reduction must be one of ('mean', 'sum', 'none'), got {reduction!r}")
        self.reduction = reduction
        self._cache = None
        self.weight = None if weight is None else as_float_array("weight", weight, (1,)).copy()
        self.ignore_index = as_int("ignore_index", ignore_index)
        if (
            isinstance(label_smoothing, (bool, np.bool_)) or not isinstance(label_smoothing, numbers.Real)
            or not 0 <= float(label_smoothing) <= 1
        ):
            raise ValueError(f"label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def _rows(self, logits: np.ndarray) -> np.ndarray:
        """The logits as (samples, C): the class axis last."""
        if logits.ndim == 1:
            return logits[np.newaxis]
        return np.moveaxis(logits, 1, -1).reshape(-1, logits.shape[1])

    def forward(self, logits: np.ndarray, target: np.ndarray) -> Any:
        """Loss of ``logits`` (N, C, ...) for ``target``: a float, or per sample with reduction='none'."""
        logits = as_float_array("logits", logits, range(1, 33))
        classes = logits.shape[0] if logits.ndim == 1 else logits.shape[1]
        sample_shape = () if logits.ndim == 1 else (logits.shape[0],) + logits.shape[2:]
        weight = self.weight
        if weight is not None:
            if weight.shape != (classes,):
                raise ValueError(f"weight must have one entry per class, shape ({classes},), got {weight.shape}")
            if weight.dtype != logits.dtype:
                raise TypeError(f"weight has dtype {weight.dtype} but logits {logits.dtype}; build the loss with "
                                f"a weight of the logits' dtype")
        target = np.asarray(target)
        rows = self._rows(logits)
        log_probs = log_softmax(rows, 1)
        class_weight = np.ones(classes, dtype=logits.dtype) if weight is None else weight
        smoothing = self.label_smoothing
        if np.issubdtype(target.dtype, np.floating) and target.shape == sample_shape != logits.shape:
            raise TypeError(
                f"target must hold integer class indices (or float class probabilities of the logits' shape "
                f"{logits.shape}), got dtype {target.dtype} of shape {target.shape}"
            )
        if np.issubdtype(target.dtype, np.floating):
            if target.shape != logits.shape or target.dtype != logits.dtype:
                raise ValueError(
                    f"a probability target must have the logits' shape and dtype {logits.shape} {logits.dtype}, "
                    f"got {target.shape} {target.dtype}"
                )
            probabilities = self._rows(target)
            if smoothing:
                probabilities = probabilities * (1 - smoothing) + smoothing / classes
            coefficients = probabilities * class_weight
            losses = -(coefficients * log_probs).sum(axis=1)
            divisor = float(len(losses))
            self._cache = (log_probs, coefficients, None, divisor, logits.shape, sample_shape)
        elif np.issubdtype(target.dtype, np.integer):
            if target.shape != sample_shape:
                raise ValueError(
                    f"target must have shape {sample_shape}, one class index per sample of logits {logits.shape}, "
                    f"got {target.shape}"
                )
            labels = target.reshape(-1).astype(np.int64)
            kept = labels != self.ignore_index
            bad = kept & ((labels < 0) | (labels >= classes))
            if bad.any():
                raise ValueError(
                    f"target values must be class indices in [0, {classes}), got {labels[bad][0]} "
                    f"(ignore_index={self.ignore_index} marks a sample to skip)"
                )
            safe = np.where(kept, labels, 0)
            sample_weight = np.where(kept, class_weight[safe], 0).astype(logits.dtype)
            picked = log_probs[np.arange(len(labels)), safe]
            losses = -sample_weight * picked
            if smoothing:
                smooth = np.where(kept, -(log_probs * class_weight).sum(axis=1), 0)
                losses = (1 - smoothing) * losses + (smoothing / classes) * smooth
            divisor = float(sample_weight.sum())
            self._cache = (log_probs, sample_weight, safe, divisor, logits.shape, sample_shape, kept)
        else:
            raise TypeError(f"target must hold integer class indices or float probabilities, got dtype {target.dtype}")
        if self.reduction == "none":
            per_sample: np.ndarray = losses.astype(logits.dtype, copy=False).reshape(sample_shape)
            return per_sample
        total = float(losses.sum())
        if self.reduction == "sum":
            return total
        return total / divisor if divisor else float("nan")

    def backward(self, grad_output: np.ndarray | None = None) -> np.ndarray:
        """Gradient with respect to the logits, their shape and dtype; with reduction='none', of
        ``sum(grad_output * losses)`` (``grad_output`` of the losses' shape; ones when omitted)."""
        cache = self._saved_for_backward()
        log_probs, coefficients, labels, divisor, logits_shape, sample_shape = cache[:6]
        probs = np.exp(log_probs)
        classes = log_probs.shape[1]
        if labels is None:  # probabilities: d/dx of -sum_c a_c log p_c = p * sum(a) - a
            grad = probs * coefficients.sum(axis=1, keepdims=True) - coefficients
        else:
            kept = cache[6]
            sample_weight = coefficients
            grad = probs * sample_weight[:, None]
            grad[np.arange(len(labels)), labels] -= sample_weight
            smoothing = self.label_smoothing
            if smoothing:
                class_weight = np.ones(classes, dtype=log_probs.dtype) if self.weight is None else self.weight
                smooth = probs * class_weight.sum() - class_weight
                grad = (1 - smoothing) * grad + (smoothing / classes) * np.where(kept[:, None], smooth, 0)
        if self.reduction == "mean":
            # Nothing counted (every target ignored): the loss is NaN, its gradient 0, as in PyTorch.
            grad = grad / divisor if divisor else grad * 0
        elif self.reduction == "none":
            scale = np.ones(len(grad), dtype=grad.dtype) if grad_output is None else np.asarray(grad_output)
            if scale.shape != tuple(sample_shape) and grad_output is not None:
                raise ValueError(f"grad_output must have the losses' shape {tuple(sample_shape)}, got {scale.shape}")
            grad = grad * scale.reshape(-1)[:, None]
        grad = grad.astype(log_probs.dtype, copy=False)
        if len(logits_shape) == 1:
            result: np.ndarray = grad[0]
            return result
        moved = grad.reshape((logits_shape[0],) + tuple(logits_shape[2:]) + (classes,))
        return np.ascontiguousarray(np.moveaxis(moved, -1, 1))

    def __repr__(self) -> str:
        text = f"reduction={self.reduction!r}"
        if self.weight is not None:
            text += ", weight=..."
        if self.ignore_index != -100:
            text += f", ignore_index={self.ignore_index}"
        if self.label_smoothing:
            text += f", label_smoothing={self.label_smoothing}"
        return f"{type(self).__name__}({text})"


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
