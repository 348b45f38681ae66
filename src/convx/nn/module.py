"""The layer base class and the parameter handles that optimizers update.

Gradient contract
-----------------
Every ``backward`` call records fresh arrays in ``layer.grads[name]``: the gradient of the loss for
the batch of the latest top-level ``forward``. Nothing accumulates across training steps, so, unlike
PyTorch, no ``zero_grad`` is needed to keep one step's gradients out of the next, and an array a
caller took from ``grads`` is never written to again. Before the first ``backward`` (and after
``zero_grad()``) a gradient is ``None``, and optimizers skip it.

Layers used more than once
--------------------------
A *pass* begins with each call of a module's ``forward`` that is not made from inside another
module's ``forward`` or ``backward`` (``model(x)``). Within a pass a layer may be called any number
of times (one ``self.relu`` used twice in a block, a shared convolution, a recurrent cell): it keeps
what each call needs, and each ``backward`` consumes the latest call not yet back-propagated, last
in, first out, as autograd walks the graph in reverse. The first ``backward`` of a pass replaces the
layer's gradients; the later ones add to them (into new arrays), so after the whole backward the
gradients are the sums over every use. The next pass forgets what an earlier one kept.

Frozen parameters
-----------------
``requires_grad_(False)`` on a module (or ``param.requires_grad = False``) freezes parameters: their
gradient stays ``None`` (layers skip computing it where that saves work, as a frozen convolution
weight does), and optimizers leave them alone.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from .. import _core
from .._checks import SUPPORTED_DTYPES, as_float_array

_ModuleT = TypeVar("_ModuleT", bound="Module")


def as_dtype(dtype: Any) -> np.dtype[Any]:
    """``dtype`` as a NumPy dtype, float32 or float64 only."""
    try:
        resolved: np.dtype[Any] = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if resolved not in SUPPORTED_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {resolved}")
    return resolved


class _PassState(threading.local):
    """Per thread: how deep inside module calls we are, the current pass, and whether forwards
    keep what their backward needs."""

    depth = 0
    pass_id = 0
    grad_enabled = True


_state = _PassState()
_pass_ids = itertools.count(1)


def _tracked(method: Callable[..., Any], starts_pass: bool) -> Callable[..., Any]:
    """``method`` (a forward or backward) marking the module-call depth; a forward at depth 0
    begins a new pass, a backward at depth 0 resumes the pass of the module's latest forward."""

    @functools.wraps(method)
    def wrapper(self: Module, *args: Any, **kwargs: Any) -> Any:
        state = _state
        depth = state.depth
        if depth == 0:
            if starts_pass:
                state.pass_id = next(_pass_ids)
            else:
                state.pass_id = self.__dict__.get("_last_pass", state.pass_id)
        if starts_pass:
            self.__dict__["_last_pass"] = state.pass_id
        # The depth is set and restored in compiled code: a KeyboardInterrupt at any point of
        # this function leaves it as it was (a stuck depth would merge every later pass).
        if depth:
            with _core._Scope(state, "depth", depth + 1):
                return method(self, *args, **kwargs)
        # The outermost call's arrays come from the memory cache (convx.set_memory_cache).
        with _core._Scope(state, "depth", 1), _core.CachedMemory():
            return method(self, *args, **kwargs)

    wrapper.__convx_tracked__ = True  # type: ignore[attr-defined]
    return wrapper


def is_grad_enabled() -> bool:
    """Whether forwards in this thread keep what their backward needs (see :class:`no_grad`)."""
    return _state.grad_enabled


class set_grad_enabled(_core._Scope):
    """Within the ``with`` block, forwards in this thread keep what their backward needs (``mode``
    True, the default outside any block) or keep nothing (``mode`` False, see :class:`no_grad`).

    Each object is entered once (``with nn.set_grad_enabled(False): ...``); the previous mode
    comes back on leaving the block, also after an exception or a KeyboardInterrupt.
    """

    def __init__(self, mode: bool) -> None:
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"mode must be a bool, got {mode!r}")
        self.mode = bool(mode)
        super().__init__(_state, "grad_enabled", self.mode)


class no_grad(set_grad_enabled):
    """Inference without backward: within the ``with`` block, forwards keep nothing for a backward.

    Each layer otherwise keeps references to what its gradient reads (its input or output) until
    the next pass, so the activations of a whole network stay alive after ``model(x)``; under
    ``no_grad`` they are released as soon as the next layer has used them, as under PyTorch's
    ``torch.no_grad()``. Results are the same. A ``backward`` after such a forward is a RuntimeError.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> model = nn.Sequential(nn.Linear(4, 8, rng=0), nn.ReLU(), nn.Linear(8, 2, rng=1)).eval()
    >>> with nn.no_grad():
    ...     y = model(np.ones((3, 4), dtype=np.float32))
    >>> y.shape
    (3, 2)
    """

    def __init__(self) -> None:
        super().__init__(False)


inference_mode = no_grad


class Parameter:
    """A trainable array: a handle that optimizers update, or a new parameter to assign.

    ``Module.parameters()`` returns handles: optimizers read ``grad`` and update ``data`` in
    place, so the module sees every update without any copying back. ``Parameter(array)`` makes a
    new parameter: assigning it to an attribute of a module (``self.scale = Parameter(np.ones(3))``)
    registers the array in the module's ``params`` under the attribute's name, as
    ``torch.nn.Parameter`` does.

    Parameters
    ----------
    data : array-like, optional
        A new parameter's initial value (float32 or float64; kept as given, not copied if it is
        already a C-contiguous float array).
    requires_grad : bool, default True
        Whether a new parameter is trained (see :meth:`Module.requires_grad_`).

    Attributes
    ----------
    name : str
        Qualified name, the key of this array in ``state_dict()`` (``'0.weight'`` in a Sequential).
    module : Module
        The layer that owns the array.
    key : str
        The array's key in ``module.params`` and ``module.grads`` (``'weight'``).
    """

    __slots__ = ("name", "module", "key", "_data", "_requires_grad")

    def __init__(self, data: Any = None, requires_grad: bool = True) -> None:
        self.name = ""
        self.module: Module | None = None
        self.key = ""
        self._data = None if data is None else np.ascontiguousarray(as_float_array("data", data, range(33)))
        if not isinstance(requires_grad, (bool, np.bool_)):
            raise TypeError(f"requires_grad must be a bool, got {requires_grad!r}")
        self._requires_grad = bool(requires_grad)

    @classmethod
    def _handle(cls, name: str, module: Module, key: str) -> Parameter:
        param = cls()
        param.name, param.module, param.key = name, module, key
        return param

    def _owner(self) -> Module:
        if self.module is None:
            raise RuntimeError(
                "this Parameter is not part of a module yet: assign it to a module attribute "
                "(self.name = Parameter(array)) or pass it to register_parameter"
            )
        return self.module

    @property
    def data(self) -> np.ndarray:
        """The live parameter array (``module.params[key]``)."""
        if self.module is None and self._data is not None:
            return self._data
        return self._owner()._params[self.key]

    @property
    def grad(self) -> np.ndarray | None:
        """The gradient from the latest ``backward`` (``module.grads[key]``), or None."""
        if self.module is None:
            return None
        return self.module._grads[self.key]

    @property
    def requires_grad(self) -> bool:
        """Whether ``backward`` computes this parameter's gradient and optimizers update it."""
        if self.module is None:
            return self._requires_grad
        return self.key not in self.module._frozen

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"requires_grad must be a bool, got {value!r}")
        if self.module is None:
            self._requires_grad = bool(value)
        else:
            self.module._set_requires_grad(self.key, bool(value))

    def requires_grad_(self, requires_grad: bool = True) -> Parameter:
        """Set :attr:`requires_grad`; returns self."""
        self.requires_grad = requires_grad
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradient (``None``), or, with ``set_to_none=False``, make it zeros."""
        module = self._owner()
        frozen = self.key in module._frozen
        module._grads[self.key] = None if set_to_none or frozen else np.zeros_like(self.data)

    def __repr__(self) -> str:
        if self.module is None:
            if self._data is None:
                return "Parameter()"
            return f"Parameter(shape={self._data.shape}, dtype={self._data.dtype})"
        return f"Parameter({self.name!r}, shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class of every convx layer and of user-written blocks.

    A layer caches in ``forward`` what its ``backward`` needs, and ``backward`` consumes that
    cache: each ``forward`` call supports exactly one ``backward`` (calling ``backward`` first, or
    once more than ``forward`` ran, is a RuntimeError), and the cached activations are released as
    soon as they are used. See the module docstring for layers called more than once per pass.

    Sub-modules and parameters assigned as attributes are registered, as in PyTorch::

        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(8, 8, 3, padding=1)   # a child: in parameters(), state_dict()...
                self.relu = nn.ReLU()
                self.scale = nn.Parameter(np.ones((1, 8, 1, 1), np.float32))   # a parameter

            def forward(self, x):
                self.x = x
                return self.relu(self.conv(x)) * self.scale

            def backward(self, grad):
                ...

    Attributes
    ----------
    params : dict of str to ndarray
        The module's own trainable arrays, live (optimizers update them in place), with PyTorch's
        names and shapes.
    grads : dict of str to ndarray or None
        Same keys as ``params``; each ``backward`` records fresh arrays (see the module docstring:
        gradients do not accumulate across passes).
    buffers : dict of str to ndarray
        Non-trainable state saved in ``state_dict`` (BatchNorm2d's running statistics).
    training : bool
        Training or evaluation mode (matters to Dropout and BatchNorm2d), set by ``train``/``eval``.
    """

    training: bool
    _modules: dict[str, Module | None]
    _params: dict[str, np.ndarray]
    _grads: dict[str, np.ndarray | None]
    _buffers: dict[str, np.ndarray]
    _frozen: set[str]
    _caches: list[Any]
    _pass: int
    _grad_pass: dict[str, int]

    def __init__(self) -> None:
        setter = object.__setattr__
        setter(self, "training", True)
        setter(self, "_modules", OrderedDict())
        setter(self, "_params", OrderedDict())
        setter(self, "_grads", {})
        setter(self, "_buffers", OrderedDict())
        setter(self, "_frozen", set())
        setter(self, "_caches", [])
        setter(self, "_pass", 0)
        setter(self, "_grad_pass", {})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, starts_pass in (("forward", True), ("backward", False)):
            method = cls.__dict__.get(name)
            if callable(method) and not getattr(method, "__convx_tracked__", False):
                setattr(cls, name, _tracked(method, starts_pass))

    # -- registration ------------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        registry = self.__dict__.get("_modules")
        if registry is None:
            if isinstance(value, (Module, Parameter)):
                raise AttributeError(
                    f"cannot assign {type(value).__name__} to {type(self).__name__}.{name} before "
                    "Module.__init__(): call super().__init__() first in your __init__"
                )
            object.__setattr__(self, name, value)
            return
        if isinstance(value, Module):
            self._forget(name)
            registry[name] = value
        elif isinstance(value, Parameter):
            self.__dict__.pop(name, None)
            self.register_parameter(name, value)
        elif name in registry:
            if value is not None:
                raise TypeError(
                    f"cannot assign {type(value).__name__} to {type(self).__name__}.{name}, a sub-module: "
                    "assign a convx.nn Module or None"
                )
            registry[name] = None
        elif name in self._params:
            if value is not None:
                raise TypeError(
                    f"cannot assign {type(value).__name__} to {type(self).__name__}.{name}, a parameter: assign "
                    f"Parameter(array), or update the array in place ({name}[...] = new_values)"
                )
            self._forget(name)
        elif name in self._buffers:
            if value is None:
                self._forget(name)
            else:
                self._buffers[name] = np.asarray(value)
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: sub-modules, parameters and buffers.
        state = self.__dict__
        for registry in ("_modules", "_params", "_buffers"):
            entries = state.get(registry)
            if entries is not None and name in entries:
                return entries[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        if name in self._modules or name in self._params or name in self._buffers:
            self._forget(name)
        else:
            object.__delattr__(self, name)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._modules) | set(self._params) | set(self._buffers))

    def _forget(self, name: str) -> None:
        """Unregister ``name`` wherever it is (sub-module, parameter, buffer or plain attribute)."""
        self._modules.pop(name, None)
        if self._params.pop(name, None) is not None:
            self._grads.pop(name, None)
            self._frozen.discard(name)
        self._buffers.pop(name, None)
        self.__dict__.pop(name, None)

    def register_module(self, name: str, module: Module | None) -> None:
        """Add a child module (``self.name = module`` does the same for a valid identifier)."""
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"register_module takes a convx.nn Module or None, got {type(module).__name__}")
        self._check_name(name)
        self._forget(name)
        self._modules[name] = module

    add_module = register_module

    def register_parameter(self, name: str, param: Parameter | np.ndarray | None) -> None:
        """Add a trainable array under ``name`` (``self.name = Parameter(array)`` does the same).

        Parameters
        ----------
        name : str
        param : Parameter, ndarray or None
            A new :class:`Parameter` (its array is taken as it is) or a float array; None removes
            ``name``.
        """
        self._check_name(name)
        if param is None:
            self._forget(name)
            return
        if isinstance(param, Parameter):
            if param.module is not None:
                raise ValueError(
                    f"Parameter {param.name!r} already belongs to a {type(param.module).__name__}; to share a "
                    "parameter, share the module that owns it"
                )
            if param._data is None:
                raise ValueError("cannot register an empty Parameter(): give it an array")
            array, requires_grad = param._data, param._requires_grad
        else:
            array, requires_grad = np.ascontiguousarray(as_float_array(name, param, range(33))), True
        self._forget(name)
        self._add_param(name, array)
        if not requires_grad:
            self._frozen.add(name)
        if isinstance(param, Parameter):
            param.name, param.module, param.key, param._data = name, self, name, None

    def register_buffer(self, name: str, array: Any) -> None:
        """Add non-trainable state saved in ``state_dict`` (running statistics, masks...)."""
        self._check_name(name)
        self._forget(name)
        if array is not None:
            self._buffers[name] = np.asarray(array)

    def _check_name(self, name: str) -> None:
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"a module's attribute name must be a non-empty str without '.', got {name!r}")
        if hasattr(type(self), name) or name in self.__dict__:
            raise KeyError(f"{type(self).__name__} already has an attribute {name!r}")

    # -- arrays ------------------------------------------------------------------------------
    def _is_leaf(self) -> bool:
        return next(iter(self.children()), None) is None

    @property
    def params(self) -> dict[str, np.ndarray]:
        """A layer's own arrays (live dict); for a module with children, a flat view built on
        access, keyed by qualified name (``'conv.weight'``), each parameter once."""
        if self._is_leaf():
            return self._params
        return {name: param.data for name, param in self.named_parameters()}

    @property
    def grads(self) -> dict[str, np.ndarray | None]:
        """Gradients keyed as :attr:`params`."""
        if self._is_leaf():
            return self._grads
        return {name: param.grad for name, param in self.named_parameters()}

    @property
    def buffers(self) -> dict[str, np.ndarray]:
        """Buffers, keyed as :attr:`params` (a flat view for a module with children)."""
        if self._is_leaf():
            return self._buffers
        return dict(self.named_buffers())

    def _add_param(self, key: str, value: np.ndarray) -> None:
        self._params[key] = value
        self._grads[key] = None

    def _needs_grad(self, key: str) -> bool:
        """Whether ``backward`` should compute the gradient of ``params[key]`` (not for a frozen one)."""
        return key in self._params and key not in self._frozen

    def store_grad(self, key: str, value: np.ndarray) -> None:
        """Record the gradient of this module's own parameter ``key``, from its ``backward``.

        The first call in a pass replaces the gradient of an earlier pass, later ones add to it
        (into a new array), as for a layer called more than once; a frozen parameter's gradient
        stays None. A block written by hand calls it for the parameters it owns itself
        (``self.scale = nn.Parameter(...)``); its layers record theirs.

        Parameters
        ----------
        key : str
            The parameter's name in ``self.params`` (the attribute name).
        value : ndarray
            The gradient, of the parameter's shape and dtype.
        """
        if key not in self._params:
            raise KeyError(f"{type(self).__name__} has no parameter {key!r} of its own; it has {list(self._params)}")
        target = self._params[key]
        gradient = as_float_array("value", value, range(33))
        if gradient.shape != target.shape or gradient.dtype != target.dtype:
            raise ValueError(
                f"the gradient of {key!r} must have the parameter's shape {target.shape} and dtype {target.dtype}, "
                f"got {gradient.shape} {gradient.dtype}"
            )
        self._store_grad(key, gradient)

    def _store_grad(self, key: str, value: np.ndarray | None) -> None:
        """Record the gradient of ``params[key]`` that a ``backward`` computed: it replaces the
        gradient of an earlier pass and adds to one of this pass (a layer called more than once)."""
        if key in self._frozen or value is None:
            return
        previous = self._grads.get(key)
        if self._grad_pass.get(key) == self._pass and previous is not None:
            value = previous + value  # a new array: callers may hold the earlier one
        self._grads[key] = value
        self._grad_pass[key] = self._pass

    def _set_requires_grad(self, key: str, requires_grad: bool) -> None:
        if requires_grad:
            self._frozen.discard(key)
        else:
            self._frozen.add(key)
            self._grads[key] = None

    def requires_grad_(self: _ModuleT, requires_grad: bool = True) -> _ModuleT:
        """Freeze (``False``) or unfreeze every parameter of this module and its children; returns self.

        A frozen parameter gets no gradient (``None``) and no optimizer update; layers skip the
        work of its gradient where they can (a frozen Conv2d computes only the input gradient).
        """
        if not isinstance(requires_grad, (bool, np.bool_)):
            raise TypeError(f"requires_grad must be a bool, got {requires_grad!r}")
        for param in self.parameters():
            param.requires_grad = bool(requires_grad)
        return self

    # -- the module tree ---------------------------------------------------------------------
    def children(self) -> Iterator[tuple[str, Module]]:
        """(name, sub-module) pairs: the registered sub-modules, in assignment order.

        Containers override this (Sequential names its layers ``'0'``, ``'1'``...); a user block
        may too (the registered attributes are then ignored).
        """
        return ((name, module) for name, module in self._modules.items() if module is not None)

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """Same as :meth:`children` (PyTorch's name for it)."""
        return self.children()

    def named_modules(self, prefix: str = "", remove_duplicate: bool = True,
                      _seen: set[int] | None = None) -> Iterator[tuple[str, Module]]:
        """(qualified name, module) for this module (name ``prefix``) and every module inside it.

        A module reachable twice (shared) is listed once unless ``remove_duplicate`` is False.
        """
        seen = set() if _seen is None else _seen
        if remove_duplicate:
            if id(self) in seen:
                return
            seen.add(id(self))
        yield prefix, self
        for name, child in self.children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name, remove_duplicate, seen)

    def modules(self) -> Iterator[Module]:
        """This module and every module inside it, each once."""
        return (module for _, module in self.named_modules())

    def apply(self: _ModuleT, fn: Callable[[Module], Any]) -> _ModuleT:
        """Call ``fn(module)`` on every child (recursively, children first) and then on self; returns self.

        Examples
        --------
        >>> import numpy as np
        >>> from convx import nn
        >>> def zero_biases(module):
        ...     if "bias" in module.params:
        ...         module.params["bias"][...] = 0
        >>> net = nn.Sequential(nn.Linear(3, 4, rng=0), nn.ReLU(), nn.Linear(4, 2, rng=1)).apply(zero_biases)
        >>> float(abs(net[2].bias).sum())
        0.0
        """
        for _, child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, Parameter]]:
        """(qualified name, :class:`Parameter`) for this module's arrays, then its children's.

        A parameter reachable twice (a shared module) is listed once unless ``remove_duplicate``
        is False, so an optimizer updates it once.
        """
        seen: set[tuple[int, str]] = set()
        root = prefix[:-1] if prefix.endswith(".") else prefix
        modules = self.named_modules(root, remove_duplicate=False) if recurse else iter([(root, self)])
        for module_name, module in modules:
            qualified = f"{module_name}." if module_name else ""
            for key in module._params:
                if remove_duplicate:
                    if (id(module), key) in seen:
                        continue
                    seen.add((id(module), key))
                yield qualified + key, Parameter._handle(qualified + key, module, key)

    def parameters(self, recurse: bool = True) -> list[Parameter]:
        """Handles on every trainable array, in ``state_dict`` order: pass them to an optimizer."""
        return [param for _, param in self.named_parameters(recurse=recurse)]

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        """(qualified name, array) for every buffer, as in :meth:`state_dict`."""
        root = prefix[:-1] if prefix.endswith(".") else prefix
        for name, module in self.named_modules(root, remove_duplicate=False):
            for key, value in module._buffers.items():
                yield (f"{name}.{key}" if name else key), value

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget every gradient (``None``) or, with ``set_to_none=False``, set them to zeros
        (frozen parameters keep ``None``)."""
        for param in self.parameters():
            param.zero_grad(set_to_none)

    # -- modes -------------------------------------------------------------------------------
    def train(self: _ModuleT, mode: bool = True) -> _ModuleT:
        """Set training mode (``mode=True``) or evaluation mode here and in every child; returns self."""
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"mode must be a bool, got {mode!r}")
        self.training = bool(mode)
        for _, child in self.children():
            child.train(mode)
        return self

    def eval(self: _ModuleT) -> _ModuleT:
        """Set evaluation mode (``train(False)``); returns self."""
        return self.train(False)

    # -- dtype -------------------------------------------------------------------------------
    def to(self: _ModuleT, dtype: Any) -> _ModuleT:
        """Convert every floating parameter and buffer here and in every child to ``dtype``; returns self.

        Parameters
        ----------
        dtype : float32 or float64
            ``np.float32``, ``np.float64`` or their names. (``'cpu'`` is accepted and changes
            nothing, for code written for PyTorch.)

        Notes
        -----
        The arrays are replaced by converted copies and gradients are forgotten; optimizers built
        before keep their state (momentum...) in the old dtype, so build them after the
        conversion, as in PyTorch. Layers' ``dtype`` attribute follows, so inputs are then
        expected in the new dtype. What a forward kept for its backward is released.

        Examples
        --------
        >>> import numpy as np
        >>> from convx import nn
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, rng=0), nn.BatchNorm2d(2)).to(np.float64)
        >>> net[0].weight.dtype, net[1].running_var.dtype, net[1].num_batches_tracked.dtype
        (dtype('float64'), dtype('float64'), dtype('int64'))
        """
        if isinstance(dtype, str) and dtype == "cpu":
            return self
        target = as_dtype(dtype)
        for module in self.modules():
            for key, value in list(module._params.items()):
                if value.dtype != target:
                    module._params[key] = value.astype(target)
                    module._grads[key] = None
            for key, value in list(module._buffers.items()):
                if value.dtype.kind == "f" and value.dtype != target:
                    module._buffers[key] = value.astype(target)
            if isinstance(module.__dict__.get("dtype"), np.dtype):
                object.__setattr__(module, "dtype", target)
            module._caches.clear()
        return self

    def float(self: _ModuleT) -> _ModuleT:
        """``to(np.float32)``."""
        return self.to(np.float32)

    def double(self: _ModuleT) -> _ModuleT:
        """``to(np.float64)``."""
        return self.to(np.float64)

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
            ``'weight'``, ``'bias'``, ``'running_mean'``... prefixed by the attribute names of
            the sub-modules and the position in each enclosing Sequential (``'0.weight'``,
            ``'block.conv.weight'``). A shared module appears under each of its names, as in
            PyTorch. The arrays are copies: training on does not change them.
        """
        return {name: value.copy() for name, value in self._named_state()}

    def load_state_dict(self, state: Mapping[str, np.ndarray], strict: bool = True, *, cast: bool = False) -> None:
        """Copy arrays into this module's parameters and buffers, in place.

        Parameters
        ----------
        state : mapping of str to array-like
            As returned by :meth:`state_dict` (or a PyTorch ``state_dict`` converted with
            ``{k: v.numpy() for k, v in sd.items()}``).
        strict : bool, default True
            Require exactly this module's keys. Without it, missing and unexpected keys are
            ignored; a shape mismatch is an error either way.
        cast : bool, default False
            Allow values whose dtype does not convert to the module's without loss (float64 into
            a float32 module): they are then rounded. Without it such a value is refused; convert
            the module instead (``model.double()``) to keep every digit.

        Raises
        ------
        KeyError
            ``strict`` and the keys differ; the message lists missing and unexpected keys.
        ValueError
            A value's shape differs from the array it would replace.
        TypeError
            A value would lose precision or kind (float into int) and ``cast`` is False.
        """
        targets = dict(self._named_state())
        if strict:
            missing = [k for k in targets if k not in state]
            unexpected = [k for k in state if k not in targets]
            if missing or unexpected:
                raise KeyError(
                    f"state does not match {type(self).__name__}: missing keys {missing}, unexpected keys {unexpected}"
                )
        checked = []
        for name, target in targets.items():
            if name not in state:
                continue
            value = np.asarray(state[name])
            if value.shape != target.shape:
                raise ValueError(f"state[{name!r}] has shape {value.shape}, but the module's array has {target.shape}")
            if not np.can_cast(value.dtype, target.dtype, "safe"):
                if not (cast and np.can_cast(value.dtype, target.dtype, "same_kind")):
                    hint = (
                        f"convert the module first (model.to(np.{value.dtype})) or pass cast=True to round"
                        if value.dtype.kind == "f" and target.dtype.kind == "f"
                        else "give an array of the module's dtype"
                    )
                    raise TypeError(
                        f"state[{name!r}] has dtype {value.dtype}, which does not convert to the module's "
                        f"{target.dtype} without loss: {hint}"
                    )
            checked.append((target, value))
        for target, value in checked:
            # Copy into the existing arrays: optimizers and callers hold references to them.
            np.copyto(target, value, casting="same_kind")

    def save(self, file: str | os.PathLike[str]) -> None:
        """Write :meth:`state_dict` to an uncompressed ``.npz`` file (``numpy.savez``)."""
        np.savez(file, **self.state_dict())  # type: ignore[arg-type]  # numpy types **kwds as bool

    def load(self, file: str | os.PathLike[str], strict: bool = True, *, cast: bool = False) -> None:
        """Load a file written by :meth:`save` into this module (see :meth:`load_state_dict`)."""
        with np.load(file, allow_pickle=False) as archive:
            self.load_state_dict({name: archive[name] for name in archive.files}, strict=strict, cast=cast)

    # -- computation -------------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def backward(self, grad_out: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} has no backward()")

    def __call__(self, *inputs: Any, **kwargs: Any) -> np.ndarray:
        return self.forward(*inputs, **kwargs)

    def _begin_pass(self) -> None:
        """Forget what an earlier pass kept (a layer run inside a fusion calls this for the layers
        it stands in for, so that their own backward cannot use a stale forward)."""
        pass_id = _state.pass_id
        if self._pass != pass_id:
            self._caches.clear()
            object.__setattr__(self, "_pass", pass_id)

    def _push(self, entry: Any) -> None:
        """Keep ``entry`` for the backward of this call (see "Layers used more than once"), unless
        under :class:`no_grad`."""
        self._begin_pass()
        if _state.grad_enabled:
            self._caches.append(entry)

    def _peek(self) -> Any:
        """The entry the next backward consumes (raising what went wrong if there is none)."""
        if not self._caches:
            raise RuntimeError(
                f"{type(self).__name__}.backward() needs a preceding forward(): call forward(x) first "
                "(each forward call supports one backward, and this layer's have all been used; a forward "
                "under nn.no_grad() keeps nothing for one)"
            )
        entry = self._caches[-1]
        if isinstance(entry, _Overwritten):
            raise RuntimeError(
                f"{type(self).__name__}.backward(): the array it kept for its gradient was overwritten by the "
                f"in-place {entry.by} after it; build that layer with inplace=False"
            )
        return entry

    def _pop(self) -> Any:
        entry = self._peek()
        self._caches.pop()
        return entry

    def _save_for_backward(self, output: np.ndarray, *values: Any) -> None:
        """Keep ``values`` for backward, with the output's shape and dtype to check grad_out against."""
        self._push((output.shape, output.dtype, values))

    def _mark_overwritten(self, array: np.ndarray, by: str) -> None:
        """If this layer (or one inside it) kept ``array`` for its backward, make that backward
        refuse: ``by`` (an in-place layer) is about to overwrite it."""
        for _, child in self.children():
            child._mark_overwritten(array, by)
        for index, entry in enumerate(self._caches):
            if isinstance(entry, tuple) and len(entry) == 3 and _holds(entry[2], array):
                self._caches[index] = _Overwritten(by)

    def _saved_for_backward(self, grad_out: object) -> tuple[np.ndarray, tuple[Any, ...]]:
        """Validate ``grad_out`` against the forward output, then release that call's cache.

        Returns ``(grad_out, values)``. A rejected ``grad_out`` leaves the cache in place, so the
        caller can retry; a successful call releases it (a second backward needs a new forward).
        """
        shape, dtype, values = self._peek()
        checked = check_grad_out(self, grad_out, shape, dtype)
        self._caches.pop()
        return checked, values

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        children = list(self.children())
        extra = self.extra_repr()
        if not children:
            return f"{type(self).__name__}({extra})"
        lines = [extra] if extra else []
        lines += [f"({name}): {child!r}".replace("\n", "\n  ") for name, child in children]
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"


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


def check_input(
    module: Module, x: object, ndims: Sequence[int], dtype: np.dtype[Any] | None = None,
    dtypes: Sequence[np.dtype[Any]] = SUPPORTED_DTYPES,
) -> np.ndarray:
    """Validate a layer's input: a float32/float64 (or ``dtypes``) ndarray of an allowed ndim and, for
    layers with parameters, of the parameters' dtype."""
    array = as_float_array("x", x, ndims, dtypes)
    if dtype is not None and array.dtype != dtype:
        raise TypeError(
            f"{type(module).__name__} has {dtype} parameters but x has dtype {array.dtype}; cast x "
            f"(x.astype(np.{dtype})) or build the layer with dtype=np.{array.dtype}"
        )
    return array


def check_grad_out(module: Module, grad_out: object, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    """Validate ``grad_out`` against the forward output's shape and dtype."""
    if dtype.kind != "f":  # a max-pooling layer run forward on int8 or uint8
        raise TypeError(
            f"{type(module).__name__}.backward: the forward input had dtype {dtype}, and integer inputs have no "
            f"gradient; run the forward on float32 or float64 to backpropagate through this layer"
        )
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
