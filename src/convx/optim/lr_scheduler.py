"""Learning-rate schedulers with ``torch.optim.lr_scheduler``'s semantics.

A scheduler changes ``optimizer.param_groups[i]['lr']`` (and, for :class:`OneCycleLR`, the
momentum or ``betas[0]``); the optimizer reads those entries on every ``step()``, in its NumPy
and its compiled form alike, so the next update uses the new rate.

As in PyTorch, constructing a scheduler performs its first step (``last_epoch`` becomes 0 and
the learning rates take their first scheduled values), and ``scheduler.step()`` is called once
per epoch (once per batch for :class:`OneCycleLR`) *after* ``optimizer.step()``::

    for epoch in range(epochs):
        for x, target in batches:
            optimizer.zero_grad()
            loss = loss_fn(model(x), target)
            model.backward(loss_fn.backward())
            optimizer.step()
        scheduler.step()  # ReduceLROnPlateau: scheduler.step(validation_loss)

The schedules are computed with PyTorch's own recurrences (StepLR, MultiStepLR, ExponentialLR
and CosineAnnealingLR update the current rate, so a change another piece of code makes to
``'lr'`` carries on; OneCycleLR evaluates its closed form), so they give the same floats as
``torch.optim.lr_scheduler`` step for step. Unlike PyTorch, ``step`` takes no ``epoch``
argument (deprecated there) and stepping :class:`OneCycleLR` past ``total_steps`` raises before
anything changes.
"""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from .._checks import as_bool, as_int
from . import Optimizer

__all__ = [
    "CosineAnnealingLR",
    "ExponentialLR",
    "LRScheduler",
    "MultiStepLR",
    "OneCycleLR",
    "ReduceLROnPlateau",
    "StepLR",
]


def _as_real(name: str, value: object, minimum: float | None = None, below: float | None = None,
             strictly_above: float | None = None) -> float:
    """A finite real number, at least ``minimum``, below ``below``, above ``strictly_above``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {number}")
    if strictly_above is not None and number <= strictly_above:
        raise ValueError(f"{name} must be greater than {strictly_above}, got {number}")
    if below is not None and number >= below:
        raise ValueError(f"{name} must be less than {below}, got {number}")
    return number


def _per_group(name: str, value: object, n_groups: int, **bounds: float) -> list[float]:
    """A number for every parameter group: one number for all, or a list with one per group."""
    if isinstance(value, (list, tuple)):
        if len(value) != n_groups:
            raise ValueError(f"{name} must be a number or a list of {n_groups} (one per parameter group), "
                             f"got a list of {len(value)}: {value!r}")
        return [_as_real(f"{name}[{i}]", v, **bounds) for i, v in enumerate(value)]
    return [_as_real(name, value, **bounds)] * n_groups


@contextlib.contextmanager
def _groups_restored_on_error(optimizer: Optimizer) -> Iterator[None]:
    """Put every parameter group's options back as they were if the block raises."""
    saved = [dict(group) for group in optimizer.param_groups]
    try:
        yield
    except BaseException:
        for group, options in zip(optimizer.param_groups, saved):
            group.clear()
            group.update(options)
        raise


def _check_optimizer(optimizer: object) -> Optimizer:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a convx.optim.Optimizer, got {type(optimizer).__name__}")
    return optimizer


class LRScheduler:
    """Base class: holds the optimizer, ``last_epoch``, ``base_lrs`` and performs the steps.

    Subclasses define :meth:`get_lr`, the rates for the step ``last_epoch`` that ``step`` has
    just reached; ``step`` writes them into ``optimizer.param_groups[i]['lr']``.

    Parameters
    ----------
    optimizer : Optimizer
        The convx optimizer whose learning rates are scheduled.
    last_epoch : int, default -1
        Index of the last step taken: -1 to start the schedule. A value of 0 or more resumes
        one, and needs the ``'initial_lr'`` entry a scheduler leaves in each parameter group.

    Attributes
    ----------
    optimizer : Optimizer
    last_epoch : int
        Steps taken since the start of the schedule (0 right after construction).
    base_lrs : list of float
        Each group's ``'initial_lr'``: its learning rate when the schedule started.
    """

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        self.optimizer = _check_optimizer(optimizer)
        last_epoch = as_int("last_epoch", last_epoch, -1)
        with _groups_restored_on_error(optimizer):
            self._start(optimizer, last_epoch)

    def _start(self, optimizer: Optimizer, last_epoch: int) -> None:
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"param_groups[{i}] has no 'initial_lr': resuming a schedule with last_epoch={last_epoch} "
                        "needs the optimizer of the run being resumed (or pass last_epoch=-1 to start afresh)"
                    )
        self.base_lrs: list[float] = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def get_lr(self) -> list[float]:  # pragma: no cover - abstract
        """The learning rate of each parameter group at step ``last_epoch``."""
        raise NotImplementedError

    def step(self) -> None:
        """Advance the schedule by one step and set every group's ``'lr'`` (after ``optimizer.step()``)."""
        self.last_epoch += 1
        try:
            values = self.get_lr()
        except Exception:
            self.last_epoch -= 1
            raise
        if len(values) != len(self.optimizer.param_groups):
            self.last_epoch -= 1
            raise ValueError(f"{type(self).__name__}.get_lr() returned {len(values)} rates for "
                             f"{len(self.optimizer.param_groups)} parameter groups")
        self._step_count += 1
        for group, lr in zip(self.optimizer.param_groups, values):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        """The learning rates that the latest step set, one per parameter group."""
        return list(self._last_lr)

    def _current_lrs(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state (every attribute except the optimizer), as copies."""
        return {key: copy.deepcopy(value) for key, value in vars(self).items() if key != "optimizer"}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a state returned by :meth:`state_dict` of a scheduler of the same class.

        As in PyTorch, the optimizer's learning rates are not touched: restore the optimizer's
        parameter groups separately (or construct the scheduler before loading them).

        Raises
        ------
        KeyError
            The keys differ from this scheduler's (a state from another scheduler class).
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict from {type(self).__name__}.state_dict(), "
                            f"got {type(state_dict).__name__}")
        expected = set(vars(self)) - {"optimizer"}
        missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
        if missing or unexpected:
            raise KeyError(f"state_dict does not match {type(self).__name__}: missing keys {missing}, "
                           f"unexpected keys {unexpected}")
        self.__dict__.update(copy.deepcopy(dict(state_dict)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, lr={self._last_lr})"


#: The name PyTorch kept for :class:`LRScheduler` (older code subclasses ``_LRScheduler``).
_LRScheduler = LRScheduler


class StepLR(LRScheduler):
    """Multiply every group's learning rate by ``gamma`` every ``step_size`` steps, as ``torch.optim.lr_scheduler.StepLR``.

    The rate at step ``t`` is ``base_lr * gamma ** (t // step_size)`` (computed, as in PyTorch,
    by multiplying the current ``'lr'`` at each multiple of ``step_size``).

    Parameters
    ----------
    optimizer : Optimizer
    step_size : int
        Period of the decay, positive.
    gamma : float, default 0.1
        Multiplicative factor, at least 0.
    last_epoch : int, default -1

    Examples
    --------
    >>> from convx import nn, optim
    >>> optimizer = optim.SGD(nn.Linear(2, 1, rng=0).parameters(), lr=1.0)
    >>> scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    >>> rates = []
    >>> for epoch in range(6):
    ...     rates.append(optimizer.param_groups[0]["lr"])
    ...     optimizer.step()
    ...     scheduler.step()
    >>> rates
    [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    """

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1) -> None:
        self.step_size = as_int("step_size", step_size, 1)
        self.gamma = _as_real("gamma", gamma, minimum=0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]


class MultiStepLR(LRScheduler):
    """Multiply every group's learning rate by ``gamma`` at each milestone, as ``torch.optim.lr_scheduler.MultiStepLR``.

    The rate at step ``t`` is ``base_lr * gamma ** (number of milestones <= t)``.

    Parameters
    ----------
    optimizer : Optimizer
    milestones : iterable of int
        Step indices, non-negative and strictly increasing.
    gamma : float, default 0.1
        Multiplicative factor, at least 0.
    last_epoch : int, default -1

    Examples
    --------
    >>> from convx import nn, optim
    >>> optimizer = optim.SGD(nn.Linear(2, 1, rng=0).parameters(), lr=1.0)
    >>> scheduler = optim.lr_scheduler.MultiStepLR(optimizer, milestones=[1, 3], gamma=0.1)
    >>> rates = []
    >>> for epoch in range(4):
    ...     rates.append(round(scheduler.get_last_lr()[0], 6))
    ...     optimizer.step()
    ...     scheduler.step()
    >>> rates
    [1.0, 0.1, 0.1, 0.01]
    """

    def __init__(self, optimizer: Optimizer, milestones: Iterable[int], gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Iterable):
            raise TypeError(f"milestones must be a list of ints, got {milestones!r}")
        values = [as_int(f"milestones[{i}]", m, 0) for i, m in enumerate(milestones)]
        if any(b <= a for a, b in zip(values, values[1:])):
            raise ValueError(f"milestones must be strictly increasing, got {values}")
        self.milestones = values
        self.gamma = _as_real("gamma", gamma, minimum=0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch not in self.milestones:
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]


class ExponentialLR(LRScheduler):
    """Multiply every group's learning rate by ``gamma`` at every step, as ``torch.optim.lr_scheduler.ExponentialLR``.

    The rate at step ``t`` is ``base_lr * gamma ** t`` (a running product, as in PyTorch).

    Parameters
    ----------
    optimizer : Optimizer
    gamma : float
        Multiplicative factor, at least 0.
    last_epoch : int, default -1

    Examples
    --------
    >>> from convx import nn, optim
    >>> optimizer = optim.SGD(nn.Linear(2, 1, rng=0).parameters(), lr=1.0)
    >>> scheduler = optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.5)
    >>> optimizer.step(); scheduler.step(); optimizer.step(); scheduler.step()
    >>> scheduler.get_last_lr(), scheduler.last_epoch
    ([0.25], 2)
    """

    def __init__(self, optimizer: Optimizer, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = _as_real("gamma", gamma, minimum=0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self._is_initial:
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from each group's initial rate to ``eta_min`` over ``T_max`` steps, as ``torch.optim.lr_scheduler.CosineAnnealingLR``.

    The rate at step ``t`` is ``eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2``,
    computed as PyTorch does by the recurrence
    ``lr_t = eta_min + (lr_{t-1} - eta_min) * (1 + cos(pi t / T_max)) / (1 + cos(pi (t-1) / T_max))``
    (with PyTorch's special case at the bottom of each cosine). Past ``T_max`` the rate rises
    again along the cosine (no restarts).

    Parameters
    ----------
    optimizer : Optimizer
    T_max : int
        Steps in half a cosine period, positive.
    eta_min : float, default 0
        The lowest learning rate, at least 0.
    last_epoch : int, default -1

    Examples
    --------
    >>> from convx import nn, optim
    >>> optimizer = optim.SGD(nn.Linear(2, 1, rng=0).parameters(), lr=1.0)
    >>> scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)
    >>> rates = []
    >>> for epoch in range(5):
    ...     rates.append(round(scheduler.get_last_lr()[0], 6))
    ...     optimizer.step()
    ...     scheduler.step()
    >>> rates
    [1.0, 0.853553, 0.5, 0.146447, 0.0]
    """

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1) -> None:
        self.T_max = as_int("T_max", T_max, 1)
        self.eta_min = _as_real("eta_min", eta_min, minimum=0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        t, period, eta_min = self.last_epoch, self.T_max, self.eta_min
        if self._is_initial:
            return self._current_lrs()
        if (t - 1 - period) % (2 * period) == 0:
            # The step away from the bottom of the cosine, where the ratio below would be 0/0.
            return [lr + (base - eta_min) * (1 - math.cos(math.pi / period)) / 2
                    for lr, base in zip(self._current_lrs(), self.base_lrs)]
        ratio = (1 + math.cos(math.pi * t / period)) / (1 + math.cos(math.pi * (t - 1) / period))
        return [ratio * (lr - eta_min) + eta_min for lr in self._current_lrs()]


class OneCycleLR(LRScheduler):
    """The 1cycle policy (Smith & Topin), as ``torch.optim.lr_scheduler.OneCycleLR``; step it after every batch.

    The rate rises from ``max_lr / div_factor`` to ``max_lr`` over the first ``pct_start`` of the
    ``total_steps`` steps, then falls to ``max_lr / div_factor / final_div_factor``. With
    ``three_phase``, it falls back to ``max_lr / div_factor`` over as many steps as it rose, and
    only then to the minimum. Each phase is a half cosine (``anneal_strategy='cos'``) or a
    straight line (``'linear'``). With ``cycle_momentum`` the momentum (SGD, RMSprop) or
    ``betas[0]`` (Adam, AdamW) moves the opposite way, between ``max_momentum`` and
    ``base_momentum``.

    Parameters
    ----------
    optimizer : Optimizer
    max_lr : float or list of float
        The peak rate, for all groups or one per group; positive.
    total_steps : int, optional
        Steps in the cycle, positive. Without it, both ``epochs`` and ``steps_per_epoch``
        are needed (``total_steps = epochs * steps_per_epoch``); given with them, it must
        equal their product.
    epochs, steps_per_epoch : int, optional
        Positive.
    pct_start : float, default 0.3
        Fraction of the cycle spent raising the rate, in [0, 1].
    anneal_strategy : {'cos', 'linear'}, default 'cos'
    cycle_momentum : bool, default True
        Needs an optimizer with ``momentum`` or ``betas`` (a ValueError otherwise).
    base_momentum, max_momentum : float or list of float, default 0.85 and 0.95
        At least 0 (and below 1 for ``betas``).
    div_factor : float, default 25
        ``initial_lr = max_lr / div_factor``; positive.
    final_div_factor : float, default 1e4
        ``min_lr = initial_lr / final_div_factor``; positive.
    three_phase : bool, default False
    last_epoch : int, default -1
        Batches already taken, to resume a cycle.

    Raises
    ------
    ValueError
        From ``step()``, when the cycle would pass ``total_steps`` steps (PyTorch raises too;
        here the scheduler is left as it was).

    Notes
    -----
    Each parameter group gets the entries ``'initial_lr'``, ``'max_lr'`` and ``'min_lr'`` (and
    ``'max_momentum'``, ``'base_momentum'`` with ``cycle_momentum``), as in PyTorch.

    Examples
    --------
    >>> from convx import nn, optim
    >>> optimizer = optim.SGD(nn.Linear(2, 1, rng=0).parameters(), lr=0.1, momentum=0.9)
    >>> scheduler = optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1.0, total_steps=10,
    ...                                           anneal_strategy="linear")
    >>> optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["momentum"]
    (0.04, 0.95)
    >>> for batch in range(2):
    ...     optimizer.step()
    ...     scheduler.step()
    >>> optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["momentum"]
    (1.0, 0.85)
    """

    def __init__(
        self, optimizer: Optimizer, max_lr: float | list[float], total_steps: int | None = None,
        epochs: int | None = None, steps_per_epoch: int | None = None, pct_start: float = 0.3,
        anneal_strategy: str = "cos", cycle_momentum: bool = True, base_momentum: float | list[float] = 0.85,
        max_momentum: float | list[float] = 0.95, div_factor: float = 25.0, final_div_factor: float = 1e4,
        three_phase: bool = False, last_epoch: int = -1,
    ) -> None:
        optimizer = _check_optimizer(optimizer)
        if total_steps is not None:
            self.total_steps = as_int("total_steps", total_steps, 1)
            if epochs is not None or steps_per_epoch is not None:
                product = as_int("epochs", epochs, 1) * as_int("steps_per_epoch", steps_per_epoch, 1)
                if product != self.total_steps:
                    raise ValueError(f"total_steps={self.total_steps} disagrees with epochs * steps_per_epoch = "
                                     f"{epochs} * {steps_per_epoch} = {product}; give one or the other")
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = as_int("epochs", epochs, 1) * as_int("steps_per_epoch", steps_per_epoch, 1)
        else:
            raise ValueError("OneCycleLR needs total_steps, or both epochs and steps_per_epoch, "
                             f"got total_steps={total_steps}, epochs={epochs}, steps_per_epoch={steps_per_epoch}")
        pct_start = _as_real("pct_start", pct_start, minimum=0.0)
        if pct_start > 1:
            raise ValueError(f"pct_start must be in [0, 1], got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        self.three_phase = as_bool("three_phase", three_phase)
        div_factor = _as_real("div_factor", div_factor, strictly_above=0.0)
        final_div_factor = _as_real("final_div_factor", final_div_factor, strictly_above=0.0)
        groups = optimizer.param_groups
        max_lrs = _per_group("max_lr", max_lr, len(groups), strictly_above=0.0)
        self.cycle_momentum = as_bool("cycle_momentum", cycle_momentum)
        self.use_beta1 = "betas" in optimizer.defaults
        max_momentums: list[float] = []
        base_momentums: list[float] = []
        if self.cycle_momentum:
            if "momentum" not in optimizer.defaults and not self.use_beta1:
                raise ValueError(f"cycle_momentum=True needs an optimizer with momentum or betas; "
                                 f"{type(optimizer).__name__} has neither (pass cycle_momentum=False)")
            bounds: dict[str, float] = {"minimum": 0.0, "below": 1.0} if self.use_beta1 else {"minimum": 0.0}
            max_momentums = _per_group("max_momentum", max_momentum, len(groups), **bounds)
            base_momentums = _per_group("base_momentum", base_momentum, len(groups), **bounds)

        # Phases as PyTorch lays them out: each ends at a (possibly fractional) step index.
        phase_end = float(pct_start * self.total_steps) - 1
        if self.three_phase:
            self._phases = [
                (phase_end, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (float(2 * pct_start * self.total_steps) - 2, "max_lr", "initial_lr", "base_momentum", "max_momentum"),
                (float(self.total_steps - 1), "initial_lr", "min_lr", "max_momentum", "max_momentum"),
            ]
        else:
            self._phases = [
                (phase_end, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (float(self.total_steps - 1), "max_lr", "min_lr", "base_momentum", "max_momentum"),
            ]

        with _groups_restored_on_error(optimizer):
            self._set_up_groups(optimizer, as_int("last_epoch", last_epoch, -1), max_lrs, div_factor,
                                final_div_factor, max_momentums, base_momentums)
            super().__init__(optimizer, last_epoch)

    def _set_up_groups(self, optimizer: Optimizer, last_epoch: int, max_lrs: list[float], div_factor: float,
                       final_div_factor: float, max_momentums: list[float], base_momentums: list[float]) -> None:
        groups = optimizer.param_groups
        if last_epoch == -1:
            for group, peak in zip(groups, max_lrs):
                group["initial_lr"] = peak / div_factor
                group["max_lr"] = peak
                group["min_lr"] = group["initial_lr"] / final_div_factor
            if self.cycle_momentum:
                for group, high, low in zip(groups, max_momentums, base_momentums):
                    if self.use_beta1:
                        group["betas"] = (high, *group["betas"][1:])
                    else:
                        group["momentum"] = high
                    group["max_momentum"] = high
                    group["base_momentum"] = low

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self) -> list[float]:
        t = self.last_epoch
        if t > self.total_steps:
            raise ValueError(f"OneCycleLR stepped {t} times, past its total_steps={self.total_steps}: "
                             "the cycle is over (make a new scheduler to run another)")
        lrs = []
        for group in self.optimizer.param_groups:
            start_step = 0.0
            for i, (end_step, start_lr, end_lr, start_m, end_m) in enumerate(self._phases):
                if t <= end_step or i == len(self._phases) - 1:
                    if end_step == start_step:
                        raise ValueError(
                            f"OneCycleLR phase {i} is empty at step {t} (pct_start * total_steps leaves it no "
                            f"steps, total_steps={self.total_steps}): choose another pct_start"
                        )
                    pct = (t - start_step) / (end_step - start_step)
                    lrs.append(self._anneal(group[start_lr], group[end_lr], pct))
                    if self.cycle_momentum:
                        momentum = self._anneal(group[start_m], group[end_m], pct)
                        if self.use_beta1:
                            group["betas"] = (momentum, *group["betas"][1:])
                        else:
                            group["momentum"] = momentum
                    break
                start_step = end_step
        return lrs


class ReduceLROnPlateau(LRScheduler):
    """Reduce the learning rates when a metric stops improving, as ``torch.optim.lr_scheduler.ReduceLROnPlateau``.

    Call ``step(metric)`` once per epoch with the monitored value (a validation loss, say).
    A value is an improvement when it beats the best so far by more than ``threshold``
    (``best * (1 - threshold)`` in ``'rel'`` mode, ``best - threshold`` in ``'abs'`` mode, and
    the mirror images with ``mode='max'``). After more than ``patience`` epochs without one,
    every group's ``'lr'`` becomes ``max(lr * factor, min_lr)`` (unless that changes it by no
    more than ``eps``), and the next ``cooldown`` epochs do not count as bad.

    Parameters
    ----------
    optimizer : Optimizer
    mode : {'min', 'max'}, default 'min'
        Whether the metric should decrease (a loss) or increase (an accuracy).
    factor : float, default 0.1
        In [0, 1).
    patience : int, default 10
        Epochs without improvement tolerated, at least 0.
    threshold : float, default 1e-4
        At least 0.
    threshold_mode : {'rel', 'abs'}, default 'rel'
    cooldown : int, default 0
        At least 0.
    min_lr : float or list of float, default 0
        A floor on the learning rates, for all groups or one per group; at least 0.
    eps : float, default 1e-8
        At least 0.

    Examples
    --------
    >>> from convx import nn, optim
    >>> optimizer = optim.SGD(nn.Linear(2, 1, rng=0).parameters(), lr=1.0)
    >>> scheduler = optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=1)
    >>> for loss in [3.0, 2.0, 2.0, 2.0, 2.0, 1.0]:
    ...     scheduler.step(loss)
    ...     print(scheduler.get_last_lr())
    [1.0]
    [1.0]
    [1.0]
    [0.5]
    [0.5]
    [0.5]
    """

    def __init__(
        self, optimizer: Optimizer, mode: str = "min", factor: float = 0.1, patience: int = 10,
        threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
        min_lr: float | list[float] = 0.0, eps: float = 1e-8,
    ) -> None:
        self.optimizer = _check_optimizer(optimizer)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.mode = mode
        self.threshold_mode = threshold_mode
        self.factor = _as_real("factor", factor, minimum=0.0, below=1.0)
        self.patience = as_int("patience", patience, 0)
        self.threshold = _as_real("threshold", threshold, minimum=0.0)
        self.cooldown = as_int("cooldown", cooldown, 0)
        self.eps = _as_real("eps", eps, minimum=0.0)
        n_groups = len(optimizer.param_groups)
        self.min_lrs = _per_group("min_lr", min_lr, n_groups, minimum=0.0)
        self.default_min_lr = None if isinstance(min_lr, (list, tuple)) else self.min_lrs[0]
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.last_epoch = 0
        self._last_lr = self._current_lrs()
        self.best = self.mode_worse
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    def _is_better(self, value: float) -> bool:
        if self.mode == "min":
            if self.threshold_mode == "rel":
                return value < self.best * (1.0 - self.threshold)
            return value < self.best - self.threshold
        if self.threshold_mode == "rel":
            return value > self.best * (self.threshold + 1.0)
        return value > self.best + self.threshold

    def step(self, metrics: float) -> None:  # type: ignore[override]
        """Record one epoch's metric (a real number or 0-d array) and reduce the rates if it is time."""
        value = np.asarray(metrics) if not isinstance(metrics, numbers.Real) else None
        if isinstance(metrics, (bool, np.bool_)) or (value is not None and (value.ndim != 0 or value.dtype.kind not in "fiu")):
            raise TypeError(f"metrics must be a real number (or a 0-d array), got {metrics!r}")
        current = float(metrics)
        self.last_epoch += 1
        if self._is_better(current):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            if len(self.optimizer.param_groups) != len(self.min_lrs):
                if self.default_min_lr is None:
                    raise RuntimeError(
                        f"the optimizer has {len(self.optimizer.param_groups)} parameter groups, but min_lr was a "
                        f"list for {len(self.min_lrs)}: set scheduler.min_lrs to one value per group"
                    )
                self.min_lrs = [self.default_min_lr] * len(self.optimizer.param_groups)
            for group, floor in zip(self.optimizer.param_groups, self.min_lrs):
                old_lr = float(group["lr"])
                new_lr = max(old_lr * self.factor, floor)
                if old_lr - new_lr > self.eps:
                    group["lr"] = new_lr
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = self._current_lrs()

    @property
    def in_cooldown(self) -> bool:
        """Whether the epochs after the latest reduction are still being ignored."""
        return self.cooldown_counter > 0
