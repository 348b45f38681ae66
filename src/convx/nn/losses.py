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


class _ElementwiseLoss(_Loss):
    """A loss of each element of ``prediction`` against ``target`` (one shape and dtype), reduced by
    mean, sum or not at all; subclasses give the losses and their derivative in the prediction."""

    def __init__(self, reduction: str = "mean") -> None:
        if reduction not in _REDUCTIONS + ("none",):
            raise ValueError(f"reduction must be one of ('mean', 'sum', 'none'), got {reduction!r}")
        self.reduction = reduction
        self._cache = None

    def _losses(self, prediction: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, Any]:
        """The losses (prediction's shape) and what ``_derivative`` needs."""
        raise NotImplementedError  # pragma: no cover - abstract

    def _derivative(self, saved: Any) -> Any:
        """d loss_i / d prediction_i."""
        raise NotImplementedError  # pragma: no cover - abstract

    def _check(self, prediction: object, target: object) -> tuple[np.ndarray, np.ndarray]:
        prediction = as_float_array("prediction", prediction, range(33))
        target = as_float_array("target", target, range(33))
        same_dtype(prediction=prediction, target=target)
        if prediction.shape != target.shape:
            raise ValueError(f"prediction and target must have one shape, got {prediction.shape} and {target.shape}")
        return prediction, target

    def forward(self, prediction: np.ndarray, target: np.ndarray) -> Any:
        """The loss of ``prediction`` against ``target`` (one shape and dtype): a float, or with
        ``reduction='none'`` the array of per-element losses."""
        prediction, target = self._check(prediction, target)
        losses, saved = self._losses(prediction, target)
        losses = np.asarray(losses, dtype=prediction.dtype)
        self._cache = (saved, prediction.shape, prediction.dtype)
        if self.reduction == "none":
            return losses
        total = float(losses.sum(dtype=np.float64))
        if self.reduction == "sum":
            return total
        return total / losses.size if losses.size else float("nan")

    def backward(self, grad_output: np.ndarray | None = None) -> np.ndarray:
        """Gradient with respect to ``prediction``, its shape and dtype; with reduction='none', of
        ``sum(grad_output * losses)`` (``grad_output`` of the losses' shape; ones when omitted)."""
        if grad_output is not None and self.reduction != "none":
            raise ValueError("grad_output is for reduction='none' only: a reduced loss is one number")
        if self._cache is None:
            self._saved_for_backward()  # raises what went wrong
        assert self._cache is not None
        saved, shape, dtype = self._cache
        scale = None
        if grad_output is not None:
            scale = as_float_array("grad_output", grad_output, range(33))
            if scale.shape != shape:
                raise ValueError(f"grad_output must have the losses' shape {shape}, got {scale.shape}")
        self._cache = None
        grad = np.asarray(self._derivative(saved))
        if scale is not None:
            grad = grad * scale
        elif self.reduction == "mean" and grad.size:
            grad = grad / grad.size
        return np.ascontiguousarray(grad, dtype=dtype)


class MSELoss(_ElementwiseLoss):
    """Mean squared error, ``(prediction - target)**2`` per element, averaged (or summed, or kept).

    Parameters
    ----------
    reduction : {'mean', 'sum', 'none'}, default 'mean'

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

    def _losses(self, prediction: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, Any]:
        difference = prediction - target
        return difference * difference, difference

    def _derivative(self, saved: Any) -> Any:
        grad: np.ndarray = 2 * saved
        return grad


class L1Loss(_ElementwiseLoss):
    """Mean absolute error, ``|prediction - target|`` per element (gradient ``sign``, 0 where equal).

    Parameters
    ----------
    reduction : {'mean', 'sum', 'none'}, default 'mean'

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> loss_fn = nn.L1Loss(reduction="sum")
    >>> loss_fn(np.array([1.0, -2.0, 0.5]), np.array([0.0, 0.0, 0.5]))
    3.0
    >>> loss_fn.backward()
    array([ 1., -1.,  0.])
    """

    def _losses(self, prediction: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, Any]:
        difference = prediction - target
        return np.abs(difference), difference

    def _derivative(self, saved: Any) -> Any:
        return np.sign(saved)


class SmoothL1Loss(_ElementwiseLoss):
    """``0.5 * z**2 / beta`` where ``|z| < beta``, else ``|z| - 0.5 * beta``, for ``z = prediction - target``.

    Parameters
    ----------
    reduction : {'mean', 'sum', 'none'}, default 'mean'
    beta : float, default 1.0
        Non-negative; 0 is the L1 loss.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.SmoothL1Loss(reduction="none")(np.array([0.5, 3.0]), np.zeros(2))
    array([0.125, 2.5  ])
    """

    def __init__(self, reduction: str = "mean", beta: float = 1.0) -> None:
        super().__init__(reduction)
        self.beta = _non_negative("beta", beta)

    def _losses(self, prediction: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, Any]:
        z = prediction - target
        size = np.abs(z)
        if self.beta == 0:
            return size, z
        return np.where(size < self.beta, 0.5 * z * z / self.beta, size - 0.5 * self.beta), z

    def _derivative(self, saved: Any) -> Any:
        if self.beta == 0:
            return np.sign(saved)
        return np.where(np.abs(saved) < self.beta, saved / self.beta, np.sign(saved))

    def __repr__(self) -> str:
        return f"SmoothL1Loss(reduction={self.reduction!r}, beta={self.beta})"


class HuberLoss(_ElementwiseLoss):
    """``0.5 * z**2`` where ``|z| < delta``, else ``delta * (|z| - 0.5 * delta)``, for ``z = prediction - target``.

    Parameters
    ----------
    reduction : {'mean', 'sum', 'none'}, default 'mean'
    delta : float, default 1.0
        Positive.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.HuberLoss(reduction="none", delta=2.0)(np.array([1.0, 3.0]), np.zeros(2))
    array([0.5, 4. ])
    """

    def __init__(self, reduction: str = "mean", delta: float = 1.0) -> None:
        super().__init__(reduction)
        self.delta = _non_negative("delta", delta)
        if self.delta == 0:
            raise ValueError("delta must be positive, got 0.0")

    def _losses(self, prediction: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, Any]:
        z = prediction - target
        size = np.abs(z)
        return np.where(size < self.delta, 0.5 * z * z, self.delta * (size - 0.5 * self.delta)), z

    def _derivative(self, saved: Any) -> Any:
        return np.where(np.abs(saved) < self.delta, saved, self.delta * np.sign(saved))

    def __repr__(self) -> str:
        return f"HuberLoss(reduction={self.reduction!r}, delta={self.delta})"


def _non_negative(name: str, value: object) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not float(value) >= 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    if not np.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _broadcast_weight(name: str, weight: np.ndarray | None, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray | None:
    if weight is None:
        return None
    if weight.dtype != dtype:
        raise TypeError(f"{name} has dtype {weight.dtype} but prediction has {dtype}; give them one dtype")
    try:
        np.broadcast_shapes(weight.shape, shape)
    except ValueError:
        raise ValueError(f"{name} of shape {weight.shape} does not broadcast to prediction's shape {shape}") from None
    if np.broadcast_shapes(weight.shape, shape) != shape:
        raise ValueError(f"{name} of shape {weight.shape} would broadcast prediction's shape {shape} to a larger one")
    return weight


class BCEWithLogitsLoss(_ElementwiseLoss):
    """Binary cross-entropy of ``sigmoid(prediction)`` against targets in [0, 1], computed from the
    logits without overflow: ``w * ((1 - t) * softplus(x) + p * t * softplus(-x))``.

    Parameters
    ----------
    weight : ndarray, optional
        Broadcast against the prediction (a weight per element, per class...).
    reduction : {'mean', 'sum', 'none'}, default 'mean'
    pos_weight : ndarray, optional
        ``p``: the weight of positive targets, broadcast against the prediction (one per class,
        the last axis, in the multi-label case).

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> loss_fn = nn.BCEWithLogitsLoss()
    >>> round(loss_fn(np.array([0.0, 100.0]), np.array([1.0, 1.0])), 6)
    0.346574
    >>> loss_fn.backward()
    array([-0.25,  0.  ])
    """

    def __init__(self, weight: np.ndarray | None = None, reduction: str = "mean",
                 pos_weight: np.ndarray | None = None) -> None:
        super().__init__(reduction)
        self.weight = None if weight is None else as_float_array("weight", weight, range(33)).copy()
        self.pos_weight = None if pos_weight is None else as_float_array("pos_weight", pos_weight, range(33)).copy()

    def _losses(self, prediction: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, Any]:
        weight = _broadcast_weight("weight", self.weight, prediction.shape, prediction.dtype)
        pos_weight = _broadcast_weight("pos_weight", self.pos_weight, prediction.shape, prediction.dtype)
        # softplus(x) = max(x, 0) + log1p(exp(-|x|)); softplus(-x) = softplus(x) - x
        softplus = np.maximum(prediction, 0) + np.log1p(np.exp(-np.abs(prediction)))
        if pos_weight is None:
            losses = softplus - target * prediction
        else:
            losses = (1 - target) * softplus + pos_weight * target * (softplus - prediction)
        if weight is not None:
            losses = losses * weight
        return losses, (prediction, target, weight, pos_weight)

    def _derivative(self, saved: Any) -> Any:
        prediction, target, weight, pos_weight = saved
        probability = _sigmoid(prediction)
        if pos_weight is None:
            grad = probability - target
        else:  # (1 - t) * s - p * t * (1 - s)
            grad = (1 - target) * probability - pos_weight * target * (1 - probability)
        return grad if weight is None else grad * weight

    def __repr__(self) -> str:
        text = f"reduction={self.reduction!r}"
        if self.weight is not None:
            text += ", weight=..."
        if self.pos_weight is not None:
            text += ", pos_weight=..."
        return f"BCEWithLogitsLoss({text})"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow in exp."""
    e = np.exp(-np.abs(x))
    result: np.ndarray = np.where(x >= 0, 1 / (1 + e), e / (1 + e))
    return result


class BCELoss(_ElementwiseLoss):
    """Binary cross-entropy of probabilities in [0, 1]: ``-w * (t * log(p) + (1 - t) * log(1 - p))``,
    each log clamped at -100 as PyTorch does (prefer :class:`BCEWithLogitsLoss` on logits).

    Parameters
    ----------
    weight : ndarray, optional
        Broadcast against the prediction.
    reduction : {'mean', 'sum', 'none'}, default 'mean'

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> round(nn.BCELoss()(np.array([0.5, 1.0]), np.array([1.0, 1.0])), 6)
    0.346574
    """

    def __init__(self, weight: np.ndarray | None = None, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.weight = None if weight is None else as_float_array("weight", weight, range(33)).copy()

    def _losses(self, prediction: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, Any]:
        if prediction.size and not (np.all(prediction >= 0) and np.all(prediction <= 1)):
            raise ValueError("BCELoss takes probabilities in [0, 1] as prediction (for logits use BCEWithLogitsLoss)")
        weight = _broadcast_weight("weight", self.weight, prediction.shape, prediction.dtype)
        with np.errstate(divide="ignore"):
            log_p = np.maximum(np.log(prediction), -100)
            log_q = np.maximum(np.log1p(-prediction), -100)
        losses = -(target * log_p + (1 - target) * log_q)
        if weight is not None:
            losses = losses * weight
        return losses, (prediction, target, weight)

    def _derivative(self, saved: Any) -> Any:
        prediction, target, weight = saved
        eps = float(np.float32(1e-12))  # PyTorch's constant is a float 1e-12
        grad = (prediction - target) / np.maximum((1 - prediction) * prediction, eps)
        return grad if weight is None else grad * weight

    def __repr__(self) -> str:
        return f"BCELoss(reduction={self.reduction!r}{', weight=...' if self.weight is not None else ''})"
