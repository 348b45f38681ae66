"""Optimizers that update convx.nn parameters in place, following ``torch.optim``'s algorithms.

Each optimizer takes the handles from ``model.parameters()`` (or PyTorch-style parameter groups:
a list of dicts with a ``'params'`` entry and per-group options) and, on ``step()``, reads every
parameter's latest gradient (``param.grad``, i.e. ``layer.grads[name]``) and updates the array
``param.data`` (``layer.params[name]``) in place. Learning-rate schedulers, which change each
group's ``'lr'`` between steps, are in :mod:`convx.optim.lr_scheduler`; gradient clipping is in
:mod:`convx.nn.utils`.

Gradients and ``zero_grad``
---------------------------
convx layers *overwrite* their gradients on every ``backward``; they do not accumulate as in
PyTorch. So skipping ``zero_grad`` cannot mix two batches' gradients. What ``zero_grad()`` does is
mark the gradients as absent (``None``, the default ``set_to_none=True``): ``step()`` skips a
parameter whose gradient is None, exactly as ``torch.optim`` does, so a parameter that the next
``backward`` does not reach is left alone instead of being moved again by a stale gradient. With
``set_to_none=False`` the gradients become zeros, and weight decay and momentum still act.
The usual loop therefore reads as in PyTorch::

    optimizer.zero_grad()
    loss = loss_fn(model(x), target)
    model.backward(loss_fn.backward())
    optimizer.step()
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any, Union

import numpy as np

from .. import _core
from .._checks import as_bool
from .._threads import kernel_threads
from ..nn.module import Module, Parameter

#: What optimizers take: ``model.parameters()``, or parameter groups (dicts with ``'params'``).
ParamsArg = Union[Iterable[Parameter], Iterable[dict[str, Any]]]

__all__ = [
    "SGD",
    "Adadelta",
    "Adagrad",
    "Adam",
    "AdamW",
    "CosineAnnealingLR",
    "ExponentialLR",
    "LRScheduler",
    "MultiStepLR",
    "OneCycleLR",
    "Optimizer",
    "RMSprop",
    "ReduceLROnPlateau",
    "StepLR",
    "lr_scheduler",
]


def _as_number(name: str, value: object, minimum: float = 0.0, below: float | None = None) -> float:
    """A real hyperparameter in ``[minimum, below)`` (or ``[minimum, inf)``)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    number = float(value)
    if not number >= minimum or (below is not None and not number < below):
        valid = f"in [{minimum}, {below})" if below is not None else f"at least {minimum}"
        raise ValueError(f"{name} must be {valid}, got {number}")
    return number


class Optimizer:
    """Base class: parameter groups, per-parameter state, ``zero_grad`` and ``step``.

    Parameters
    ----------
    params : iterable of Parameter, or iterable of dict
        ``model.parameters()``, or parameter groups ``[{'params': [...], 'lr': ...}, ...]`` whose
        entries override ``defaults`` for that group.
    defaults : dict
        Every option of the optimizer with its value for groups that do not set it.

    Attributes
    ----------
    param_groups : list of dict
        Each with ``'params'`` (a list of Parameter) and every option; change ``'lr'`` here to
        schedule the learning rate.
    state : dict
        Per-parameter state (step count, moment estimates...), keyed by Parameter handle.
    """

    def __init__(self, params: ParamsArg, defaults: dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        self.state: dict[Parameter, dict[str, Any]] = {}
        self.param_groups: list[dict[str, Any]] = []
        if isinstance(params, Module):
            raise TypeError(f"pass model.parameters() to the optimizer, not the {type(params).__name__} itself")
        if not isinstance(params, Iterable):
            raise TypeError(f"params must be an iterable of Parameter handles (model.parameters()), got {params!r}")
        entries: list[Any] = list(params)
        if not entries:
            raise ValueError("optimizer got an empty parameter list")
        groups = entries if isinstance(entries[0], dict) else [{"params": entries}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Add a group of parameters (a dict with ``'params'`` and optional per-group options)."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError("a parameter group must be a dict with a 'params' entry")
        unknown = set(group) - {"params"} - set(self.defaults)
        if unknown:
            raise ValueError(f"unknown options {sorted(unknown)} for {type(self).__name__}; valid: {sorted(self.defaults)}")
        params = list(group["params"])
        for param in params:
            if not isinstance(param, Parameter):
                raise TypeError(
                    f"optimizers take the Parameter handles of model.parameters(), got {type(param).__name__}: "
                    "a bare array has no gradient attached"
                )
        seen = {id(p.data) for g in self.param_groups for p in g["params"]}
        for param in params:
            if id(param.data) in seen:
                raise ValueError(f"parameter {param.name!r} appears in more than one place in this optimizer")
            seen.add(id(param.data))
        options = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}}
        self.param_groups.append({"params": params, **self._validate(options)})

    def _validate(self, options: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Mark every gradient absent (``None``) or, with ``set_to_none=False``, set them to zeros.

        See the module docstring: convx gradients never accumulate, so this is about which
        parameters the next ``step`` updates, not about clearing a running sum.
        """
        set_to_none = as_bool("set_to_none", set_to_none)
        for group in self.param_groups:
            for param in group["params"]:
                param.zero_grad(set_to_none)

    def step(self) -> None:
        """Update every parameter that has a gradient and is not frozen, in place."""
        for group in self.param_groups:
            for param in group["params"]:
                grad = param.grad
                if grad is None or not param.requires_grad:
                    continue
                data = param.data
                if grad.shape != data.shape:
                    raise ValueError(f"gradient of {param.name!r} has shape {grad.shape}, the parameter {data.shape}")
                self._update(data, grad, self.state.setdefault(param, {}), group)

    def _update(  # pragma: no cover - abstract
        self, param: np.ndarray, grad: np.ndarray, state: dict[str, Any], group: dict[str, Any]
    ) -> None:
        raise NotImplementedError

    #: Set False to run every update with NumPy (the reference form of each ``_update``).
    compiled = True

    def _compiled_step(
        self, param: np.ndarray, grad: np.ndarray, states: list[np.ndarray | None], hyper: list[float]
    ) -> bool:
        """The update in one threaded pass of the compiled kernel (the same arithmetic as the NumPy
        lines after the call), where it applies: a C-contiguous writeable parameter, a gradient and
        state of its dtype. False leaves the update to NumPy."""
        if not (
            self.compiled and type(param) is np.ndarray and param.flags.c_contiguous and param.flags.writeable
            and param.flags.aligned and param.dtype in (np.float32, np.float64)
            and type(grad) is np.ndarray and grad.dtype == param.dtype and grad.shape == param.shape
            and all(s is None or (s.dtype == param.dtype and s.flags.c_contiguous and s.shape == param.shape)
                    for s in states)
        ):
            return False
        empty = np.empty(0, dtype=param.dtype)
        arrays = [empty if s is None else s.reshape(-1) for s in states] + [empty] * (3 - len(states))
        gradient = np.ascontiguousarray(grad).reshape(-1)
        _core.optimizer_step(
            _core.OPTIMIZERS[self._kernel_name], param.reshape(-1), gradient, arrays[0], arrays[1], arrays[2],
            np.asarray(hyper, dtype=np.float64), kernel_threads(elements=param.size),
        )
        return True

    _kernel_name = ""

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v}" for k, v in self.defaults.items())
        return f"{type(self).__name__}({options})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and weight decay.

    ``g = grad + weight_decay * p``; with momentum, ``b = g`` on the first step, then
    ``b = momentum * b + (1 - dampening) * g``, and ``g = g + momentum * b`` (Nesterov) or
    ``g = b``; finally ``p -= lr * g``, as ``torch.optim.SGD``.

    Parameters
    ----------
    params : iterable of Parameter or of dict
    lr : float, default 1e-3
    momentum : float, default 0
    dampening : float, default 0
    weight_decay : float, default 0
        L2 penalty coefficient, added to the gradient.
    nesterov : bool, default False
        Needs ``momentum > 0`` and ``dampening == 0``.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn, optim
    >>> layer = nn.Linear(2, 1, bias=False, rng=0)
    >>> layer.params["weight"][:] = 1.0
    >>> layer.grads["weight"] = np.array([[0.5, -0.5]], dtype=np.float32)
    >>> optim.SGD(layer.parameters(), lr=0.1).step()
    >>> layer.params["weight"]
    array([[0.95, 1.05]], dtype=float32)
    """

    def __init__(
        self, params: ParamsArg, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
        weight_decay: float = 0.0, nesterov: bool = False,
    ) -> None:
        super().__init__(
            params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
        )

    def _validate(self, options: dict[str, Any]) -> dict[str, Any]:
        options = dict(
            lr=_as_number("lr", options["lr"]),
            momentum=_as_number("momentum", options["momentum"]),
            dampening=_as_number("dampening", options["dampening"]),
            weight_decay=_as_number("weight_decay", options["weight_decay"]),
            nesterov=as_bool("nesterov", options["nesterov"]),
        )
        if options["nesterov"] and (options["momentum"] <= 0 or options["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        return options

    _kernel_name = "SGD"

    def _update(self, param: np.ndarray, grad: np.ndarray, state: dict[str, Any], group: dict[str, Any]) -> None:
        momentum = group["momentum"]
        first = momentum and state.get("momentum_buffer") is None
        buffer_state = None
        if momentum:
            buffer_state = np.empty_like(param) if first else state["momentum_buffer"]
        hyper = [group["lr"], momentum, group["dampening"], group["weight_decay"], group["nesterov"], first]
        if self._compiled_step(param, grad, [buffer_state], hyper):
            if first:
                state["momentum_buffer"] = buffer_state
            return
        if group["weight_decay"]:
            grad = grad + group["weight_decay"] * param
        if momentum:
            buffer = state.get("momentum_buffer")
            if buffer is None:
                buffer = state["momentum_buffer"] = grad.copy()
            else:
                buffer *= momentum
                buffer += (1 - group["dampening"]) * grad
            grad = grad + momentum * buffer if group["nesterov"] else buffer
        param -= group["lr"] * grad


class Adam(Optimizer):
    """Adam (Kingma & Ba), with optional AMSGrad, as ``torch.optim.Adam``.

    ``g = grad + weight_decay * p``; ``m = b1*m + (1 - b1)*g``; ``v = b2*v + (1 - b2)*g**2``;
    ``p -= lr / (1 - b1**t) * m / (sqrt(v) / sqrt(1 - b2**t) + eps)``; AMSGrad uses the running
    maximum of ``v`` in the denominator.

    Parameters
    ----------
    params : iterable of Parameter or of dict
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
        Decay rates of the first and second moment estimates, each in [0, 1).
    eps : float, default 1e-8
    weight_decay : float, default 0
        L2 penalty added to the gradient (see :class:`AdamW` for the decoupled form).
    amsgrad : bool, default False

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn, optim
    >>> model = nn.Linear(3, 1, rng=0)
    >>> optimizer = optim.Adam(model.parameters(), lr=1e-2)
    >>> x = np.ones((4, 3), dtype=np.float32)
    >>> _ = model(x)
    >>> _ = model.backward(np.ones((4, 1), dtype=np.float32))
    >>> before = model.params["bias"].copy()
    >>> optimizer.step()  # the first Adam step moves each entry by about lr
    >>> np.round(before - model.params["bias"], 6)
    array([0.01], dtype=float32)
    """

    _decoupled_weight_decay = False
    _kernel_name = "Adam"

    def __init__(
        self, params: ParamsArg, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        weight_decay: float = 0.0, amsgrad: bool = False,
    ) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad))

    def _validate(self, options: dict[str, Any]) -> dict[str, Any]:
        betas = options["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair of numbers in [0, 1), got {betas!r}")
        return dict(
            lr=_as_number("lr", options["lr"]),
            betas=(_as_number("betas[0]", betas[0], 0.0, 1.0), _as_number("betas[1]", betas[1], 0.0, 1.0)),
            eps=_as_number("eps", options["eps"]),
            weight_decay=_as_number("weight_decay", options["weight_decay"]),
            amsgrad=as_bool("amsgrad", options["amsgrad"]),
        )

    def _update(self, param: np.ndarray, grad: np.ndarray, state: dict[str, Any], group: dict[str, Any]) -> None:
        if not state:
            state.update(step=0, exp_avg=np.zeros_like(param), exp_avg_sq=np.zeros_like(param))
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = np.zeros_like(param)
        state["step"] += 1
        step, lr = state["step"], group["lr"]
        beta1, beta2 = group["betas"]
        step_size = lr / (1 - beta1**step)
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        hyper = [lr, beta1, beta2, group["eps"], group["weight_decay"], self._decoupled_weight_decay, group["amsgrad"],
                 step_size, bias_correction2_sqrt]
        states = [state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq")]
        if self._compiled_step(param, grad, states, hyper):
            return
        if group["weight_decay"]:
            if self._decoupled_weight_decay:
                param *= 1 - lr * group["weight_decay"]
            else:
                grad = grad + group["weight_decay"] * param
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg += (1 - beta1) * (grad - exp_avg)
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * grad * grad
        if group["amsgrad"]:
            np.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            second_moment = state["max_exp_avg_sq"]
        else:
            second_moment = exp_avg_sq
        denom = np.sqrt(second_moment) / bias_correction2_sqrt + group["eps"]
        param -= step_size * (exp_avg / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``.

    Before the Adam update, ``p *= 1 - lr * weight_decay``; the gradient itself is not changed.

    Parameters
    ----------
    params : iterable of Parameter or of dict
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 1e-2
    amsgrad : bool, default False
    """

    _decoupled_weight_decay = True

    def __init__(
        self, params: ParamsArg, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        weight_decay: float = 1e-2, amsgrad: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


class Adagrad(Optimizer):
    """Adagrad, as ``torch.optim.Adagrad``.

    ``g = grad + weight_decay * p``; ``s += g**2``; ``p -= lr / (1 + (t - 1) * lr_decay) * g / (sqrt(s) + eps)``.

    Parameters
    ----------
    params : iterable of Parameter or of dict
    lr : float, default 1e-2
    lr_decay : float, default 0
    weight_decay : float, default 0
    initial_accumulator_value : float, default 0
        Starting value of the sum of squared gradients ``s``.
    eps : float, default 1e-10
    """

    _kernel_name = "Adagrad"

    def __init__(
        self, params: ParamsArg, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0, eps: float = 1e-10,
    ) -> None:
        super().__init__(
            params,
            dict(
                lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                initial_accumulator_value=initial_accumulator_value, eps=eps,
            ),
        )

    def _validate(self, options: dict[str, Any]) -> dict[str, Any]:
        return {name: _as_number(name, value) for name, value in options.items()}

    def _update(self, param: np.ndarray, grad: np.ndarray, state: dict[str, Any], group: dict[str, Any]) -> None:
        if not state:
            state.update(step=0, sum=np.full_like(param, group["initial_accumulator_value"]))
        state["step"] += 1
        current_lr = group["lr"] / (1 + (state["step"] - 1) * group["lr_decay"])
        if self._compiled_step(param, grad, [state["sum"]], [current_lr, group["weight_decay"], group["eps"]]):
            return
        if group["weight_decay"]:
            grad = grad + group["weight_decay"] * param
        state["sum"] += grad * grad
        param -= current_lr * (grad / (np.sqrt(state["sum"]) + group["eps"]))


class RMSprop(Optimizer):
    """RMSprop, optionally centred and with momentum, as ``torch.optim.RMSprop``.

    ``g = grad + weight_decay * p``; ``v = alpha*v + (1 - alpha)*g**2``; the denominator is
    ``sqrt(v) + eps``, or ``sqrt(v - gbar**2) + eps`` centred (``gbar`` the running mean of ``g``);
    ``p -= lr * g / denom``, or with momentum ``b = momentum*b + g / denom; p -= lr * b``.

    Parameters
    ----------
    params : iterable of Parameter or of dict
    lr : float, default 1e-2
    alpha : float, default 0.99
    eps : float, default 1e-8
    weight_decay : float, default 0
    momentum : float, default 0
    centered : bool, default False
    """

    _kernel_name = "RMSprop"

    def __init__(
        self, params: ParamsArg, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
        momentum: float = 0.0, centered: bool = False,
    ) -> None:
        super().__init__(
            params,
            dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum, centered=centered),
        )

    def _validate(self, options: dict[str, Any]) -> dict[str, Any]:
        centered = as_bool("centered", options.pop("centered"))
        return {**{name: _as_number(name, value) for name, value in options.items()}, "centered": centered}

    def _update(self, param: np.ndarray, grad: np.ndarray, state: dict[str, Any], group: dict[str, Any]) -> None:
        if not state:
            state.update(step=0, square_avg=np.zeros_like(param))
            if group["momentum"] > 0:
                state["momentum_buffer"] = np.zeros_like(param)
            if group["centered"]:
                state["grad_avg"] = np.zeros_like(param)
        state["step"] += 1
        alpha = group["alpha"]
        hyper = [group["lr"], alpha, group["eps"], group["weight_decay"], group["momentum"], group["centered"]]
        if self._compiled_step(param, grad, [state["square_avg"], state.get("grad_avg"), state.get("momentum_buffer")],
                               hyper):
            return
        if group["weight_decay"]:
            grad = grad + group["weight_decay"] * param
        square_avg = state["square_avg"]
        square_avg *= alpha
        square_avg += (1 - alpha) * grad * grad
        if group["centered"]:
            grad_avg = state["grad_avg"]
            grad_avg += (1 - alpha) * (grad - grad_avg)
            denom = np.sqrt(square_avg - grad_avg * grad_avg) + group["eps"]
        else:
            denom = np.sqrt(square_avg) + group["eps"]
        if group["momentum"] > 0:
            buffer = state["momentum_buffer"]
            buffer *= group["momentum"]
            buffer += grad / denom
            param -= group["lr"] * buffer
        else:
            param -= group["lr"] * (grad / denom)


class Adadelta(Optimizer):
    """Adadelta (Zeiler), as ``torch.optim.Adadelta``.

    ``g = grad + weight_decay * p``; ``v = rho*v + (1 - rho)*g**2``;
    ``delta = sqrt(u + eps) / sqrt(v + eps) * g``; ``u = rho*u + (1 - rho)*delta**2``;
    ``p -= lr * delta``.

    Parameters
    ----------
    params : iterable of Parameter or of dict
    lr : float, default 1.0
    rho : float, default 0.9
        In [0, 1].
    eps : float, default 1e-6
    weight_decay : float, default 0
    """

    _kernel_name = "Adadelta"

    def __init__(
        self, params: ParamsArg, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6, weight_decay: float = 0.0
    ) -> None:
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay))

    def _validate(self, options: dict[str, Any]) -> dict[str, Any]:
        validated = {name: _as_number(name, value) for name, value in options.items()}
        if validated["rho"] > 1:
            raise ValueError(f"rho must be in [0, 1], got {validated['rho']}")
        return validated

    def _update(self, param: np.ndarray, grad: np.ndarray, state: dict[str, Any], group: dict[str, Any]) -> None:
        if not state:
            state.update(step=0, square_avg=np.zeros_like(param), acc_delta=np.zeros_like(param))
        state["step"] += 1
        rho, eps = group["rho"], group["eps"]
        hyper = [group["lr"], rho, eps, group["weight_decay"]]
        if self._compiled_step(param, grad, [state["square_avg"], state["acc_delta"]], hyper):
            return
        if group["weight_decay"]:
            grad = grad + group["weight_decay"] * param
        square_avg, acc_delta = state["square_avg"], state["acc_delta"]
        square_avg *= rho
        square_avg += (1 - rho) * grad * grad
        delta = np.sqrt(acc_delta + eps) / np.sqrt(square_avg + eps) * grad
        acc_delta *= rho
        acc_delta += (1 - rho) * delta * delta
        param -= group["lr"] * delta


# The schedulers need Optimizer, defined above. They live in convx.optim.lr_scheduler, as in
# torch.optim.lr_scheduler, and are also importable from convx.optim itself.
from . import lr_scheduler  # noqa: E402
from .lr_scheduler import (  # noqa: E402
    CosineAnnealingLR,
    ExponentialLR,
    LRScheduler,
    MultiStepLR,
    OneCycleLR,
    ReduceLROnPlateau,
    StepLR,
)
