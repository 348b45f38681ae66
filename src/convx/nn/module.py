"""The layer base class and the parameter handles that optimizers update.

Gradient contract
-----------------
Every ``backward`` call *overwrites* ``layer.grads[name]`` with a freshly allocated array:
the gradient of the loss for the batch of the latest ``forward``. Nothing accumulates across
calls, so, unlike PyTorch, no ``zero_grad`` is needed to keep one step's gradients out of the
next, and an array a caller took from ``grads`` is never written to again. Before the first
``backward`` (and after ``zero_grad()``) a gradient is ``None``, and optimizers skip it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .._checks import SUPPORTED_DTYPES, as_float_array


def as_dtype(dtype: Any) -> np.dtype[Any]:
    """``dtype`` as a NumPy dtype, float32 or float64 only."""
    try:
        resolved: np.dtype[Any] = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if resolved not in SUPPORTED_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {resolved}")
    return resolved


class Parameter:
    """A handle on one trainable array of a module: its live value and its latest gradient.

    ``Module.parameters()`` returns these; optimizers read ``grad`` and update ``data`` in place,
    so the module sees every update without any copying back.

    Attributes
    ----------
    name : str
        Qualified name, the key of this array in ``state_dict()`` (``'0.weight'`` in a Sequential).
    module : Module
        The layer that owns the array.
    key : str
        The array's key in ``module.params`` and ``module.grads`` (``'weight'``).
    """

    __slots__ = ("name", "module", "key")

    def __init__(self, name: str, module: Module, key: str) -> None:
        self.name = name
        self.module = module
        self.key = key

    @property
    def data(self) -> np.ndarray:
        """The live parameter array (``module.params[key]``)."""
        return self.module.params[self.key]

    @property
    def grad(self) -> np.ndarray | None:
        """The gradient from the latest ``backward`` (``module.grads[key]``), or None."""
        return self.module.grads[self.key]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradient (``None``), or, with ``set_to_none=False``, make it zeros."""
        self.module.grads[self.key] = None if set_to_none else np.zeros_like(self.data)

    def __repr__(self) -> str:
        return f"Parameter({self.name!r}, shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class of every convx layer.

    A layer caches in ``forward`` what its ``backward`` needs, and ``backward`` consumes that
    cache: each ``forward`` supports exactly one ``backward`` (calling ``backward`` first, or twice,
    is a RuntimeError), and the cached activations are released as soon as they are used.

    Attributes
    ----------
    params : dict of str to ndarray
        The layer's own trainable arrays, live (optimizers update them in place), with PyTorch's
        names and shapes.
    grads : dict of str to ndarray or None
        Same keys as ``params``; each ``backward`` replaces the values with fresh arrays (see the
        module docstring: gradients overwrite, they do not accumulate).
    buffers : dict of str to ndarray
        Non-trainable state saved in ``state_dict`` (BatchNorm2d's running statistics).
    training : bool
        Training or evaluation mode (matters to Dropout and BatchNorm2d), set by ``train``/``eval``.
    """

    def __init__(self) -> None:
        self.training = True
        self._params: dict[str, np.ndarray] = {}
        self._grads: dict[str, np.ndarray | None] = {}
        self._buffers: dict[str, np.ndarray] = {}
        self._cache: tuple[Any, ...] | _Overwritten | None = None

    # -- arrays ------------------------------------------------------------------------------
    @property
    def params(self) -> dict[str, np.ndarray]:
        return self._params

    @property
    def grads(self) -> dict[str, np.ndarray | None]:
        return self._grads

    @property
    def buffers(self) -> dict[str, np.ndarray]:
        return self._buffers

    def _add_param(self, key: str, value: np.ndarray) -> None:
        self._params[key] = value
        self._grads[key] = None

    def _needs_grad(self, key: str) -> bool:
        """Whether ``backward`` should compute the gradient of ``params[key]`` (not for a frozen one)."""
        return key in self._params

    def _store_grad(self, key: str, value: np.ndarray | None) -> None:
        """Record the gradient of ``params[key]`` that a ``backward`` computed."""
        self._grads[key] = value

    def children(self) -> Iterator[tuple[str, Module]]:
        """(name, sub-module) pairs; leaf layers have none."""
        return iter(())

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """(qualified name, :class:`Parameter`) for this module's arrays, then its children's."""
        for key in self._params:
            yield prefix + key, Parameter(prefix + key, self, key)
        for child_name, child in self.children():
            yield from child.named_parameters(f"{prefix}{child_name}.")

    def parameters(self) -> list[Parameter]:
        """Handles on every trainable array, in ``state_dict`` order: pass them to an optimizer."""
        return [param for _, param in self.named_parameters()]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget every gradient (``None``) or, with ``set_to_none=False``, set them to zeros."""
        for param in self.parameters():
            param.zero_grad(set_to_none)

    # -- modes -------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Set training mode (``mode=True``) or evaluation mode here and in every child; returns self."""
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"mode must be a bool, got {mode!r}")
        self.training = bool(mode)
        for _, child in self.children():
            child.train(mode)
        return self

    def eval(self) -> Module:
        """Set evaluation mode (``train(False)``); returns self."""
        return self.train(False)

    # -- state -------------------------------------------------------------------------------
    def _named_state(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        for key, value in self._params.items():
            yield prefix + key, value
        for key, value in self._buffers.items():
            yield prefix + key, value
        for child_name, child in self.children():
            yield from child._named_state(f"{prefix}{child_name}.")

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer, keyed as PyTorch keys its ``state_dict``.

        Returns
        -------
        state : dict of str to ndarray
            ``'weight'``, ``'bias'``, ``'running_mean'``... prefixed by the position in each
            enclosing Sequential (``'0.weight'``). The arrays are copies: training on does not
            change them.
        """
        return {name: value.copy() for name, value in self._named_state()}

    def load_state_dict(self, state: Mapping[str, np.ndarray], strict: bool = True) -> None:
        """Copy arrays into this module's parameters and buffers, in place.

        Parameters
        ----------
        state : mapping of str to array-like
            As returned by :meth:`state_dict` (or a PyTorch ``state_dict`` converted with
            ``{k: v.numpy() for k, v in sd.items()}``). Values are cast to the module's dtypes.
        strict : bool, default True
            Require exactly this module's keys. Without it, missing and unexpected keys are
            ignored; a shape mismatch is an error either way.

        Raises
        ------
        KeyError
            ``strict`` and the keys differ; the message lists missing and unexpected keys.
        ValueError
            A value's shape differs from the array it would replace.
        """
        targets = dict(self._named_state())
        if strict:
            missing = [k for k in targets if k not in state]
            unexpected = [k for k in state if k not in targets]
            if missing or unexpected:
                raise KeyError(
                    f"state does not match {type(self).__name__}: missing keys {missing}, unexpected keys {unexpected}"
                )
        for name, target in targets.items():
            if name not in state:
                continue
            value = np.asarray(state[name])
            if value.shape != target.shape:
                raise ValueError(f"state[{name!r}] has shape {value.shape}, but the module's array has {target.shape}")
            # Copy into the existing arrays: optimizers and callers hold references to them.
            np.copyto(target, value, casting="same_kind")

    def save(self, file: str | os.PathLike[str]) -> None:
        """Write :meth:`state_dict` to an uncompressed ``.npz`` file (``numpy.savez``)."""
        np.savez(file, **self.state_dict())  # type: ignore[arg-type]  # numpy types **kwds as bool

    def load(self, file: str | os.PathLike[str], strict: bool = True) -> None:
        """Load a file written by :meth:`save` into this module (see :meth:`load_state_dict`)."""
        with np.load(file, allow_pickle=False) as archive:
            self.load_state_dict({name: archive[name] for name in archive.files}, strict=strict)

    # -- computation -------------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, grad_out: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def _save_for_backward(self, output: np.ndarray, *values: Any) -> None:
        """Keep ``values`` for backward, with the output's shape and dtype to check grad_out against."""
        self._cache = (output.shape, output.dtype, values)

    def _mark_overwritten(self, array: np.ndarray, by: str) -> None:
        """If this layer (or one inside it) kept ``array`` for its backward, make that backward
        refuse: ``by`` (an in-place layer) is about to overwrite it."""
        for _, child in self.children():
            child._mark_overwritten(array, by)
        if self._cache is not None and not isinstance(self._cache, _Overwritten) and _holds(self._cache[2], array):
            self._cache = _Overwritten(by)

    def _saved_for_backward(self, grad_out: object) -> tuple[np.ndarray, tuple[Any, ...]]:
        """Validate ``grad_out`` against the forward output, then release the cache.

        Returns ``(grad_out, values)``. A rejected ``grad_out`` leaves the cache in place, so the
        caller can retry; a successful call releases it (a second backward needs a new forward).
        """
        if isinstance(self._cache, _Overwritten):
            raise RuntimeError(
                f"{type(self).__name__}.backward(): the array it kept for its gradient was overwritten by the "
                f"in-place {self._cache.by} after it; build that layer with inplace=False"
            )
        if self._cache is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward() needs a preceding forward(): call forward(x) first "
                "(each forward supports one backward)"
            )
        shape, dtype, values = self._cache
        checked = check_grad_out(self, grad_out, shape, dtype)
        self._cache = None
        return checked, values

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


class _Overwritten:
    """A layer's cache once an in-place layer after it overwrote what it kept (as PyTorch's
    version counters catch): its backward refuses instead of computing a wrong gradient."""

    def __init__(self, by: str) -> None:
        self.by = by


def _holds(values: Any, array: np.ndarray) -> bool:
    """Whether ``array`` itself is among ``values`` (nested tuples searched)."""
    if values is array:
        return True
    return isinstance(values, tuple) and any(_holds(value, array) for value in values)


def check_input(module: Module, x: object, ndims: Sequence[int], dtype: np.dtype[Any] | None = None) -> np.ndarray:
    """Validate a layer's input: a float32/float64 ndarray of an allowed ndim and, for layers
    with parameters, of the parameters' dtype."""
    array = as_float_array("x", x, ndims)
    if dtype is not None and array.dtype != dtype:
        raise TypeError(
            f"{type(module).__name__} has {dtype} parameters but x has dtype {array.dtype}; cast x "
            f"(x.astype(np.{dtype})) or build the layer with dtype=np.{array.dtype}"
        )
    return array


def check_grad_out(module: Module, grad_out: object, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    """Validate ``grad_out`` against the forward output's shape and dtype."""
    array = as_float_array("grad_out", grad_out, range(33))
    if array.shape != tuple(shape):
        raise ValueError(
            f"{type(module).__name__}.backward: grad_out must have the forward output's shape {tuple(shape)}, "
            f"got {array.shape}"
        )
    if array.dtype != dtype:
        raise TypeError(
            f"{type(module).__name__}.backward: grad_out must have the forward output's dtype {dtype}, "
            f"got {array.dtype}"
        )
    return array
