"""Sequential: a chain of layers trained as one."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple, overload

import numpy as np

from .._checks import as_int
from .activations import _Activation
from .conv import Conv2d
from .module import Module, is_grad_enabled
from .normalization import BatchNorm2d


class _Fusion(NamedTuple):
    """Layers [start, stop) that run as one: a convolution with ``batch_norm`` folded into it
    (evaluation only) and ``activation`` applied in place to its output; or (``conv`` None) a
    batch normalisation with the activation in the same pass."""

    start: int
    stop: int
    conv: Conv2d | None
    batch_norm: BatchNorm2d | None
    activation: _Activation | None


def _fusion_at(layers: list[Module], start: int) -> _Fusion | None:
    """The fusion that begins with layers[start], if any.

    In evaluation a Conv2d takes a BatchNorm2d with running statistics after it (folded into its
    weight and bias, exact up to rounding) and then any activation. In training the batch
    statistics are not known before the convolution, and the activation's backward must be able
    to read the convolution's output: a Conv2d takes only an activation whose gradient reads its
    output (ReLU, ReLU6, LeakyReLU with a non-negative slope, Sigmoid, Tanh).
    """
    conv = layers[start]
    if type(conv) is BatchNorm2d:
        return _batch_norm_fusion(layers, start)
    if type(conv) is not Conv2d:
        return None
    stop = start + 1
    batch_norm = None
    following = layers[stop] if stop < len(layers) else None
    if (
        not conv.training and type(following) is BatchNorm2d and not following.training
        and following.track_running_stats and following.num_features == conv.out_channels
        and following.dtype == conv.dtype and following.layout == conv.layout
    ):
        batch_norm, stop = following, stop + 1
    following = layers[stop] if stop < len(layers) else None
    activation = None
    both_evaluating = not conv.training and not getattr(following, "training", True)
    both_training = conv.training and getattr(following, "training", False)
    if isinstance(following, _Activation) and (
        both_evaluating or (both_training and batch_norm is None and following._reads() == "output")
    ):
        activation, stop = following, stop + 1
    if batch_norm is None and activation is None:
        return None
    return _Fusion(start, stop, conv, batch_norm, activation)


def _batch_norm_fusion(layers: list[Module], start: int) -> _Fusion | None:
    """A BatchNorm2d with the activation after it: in evaluation any activation, in training one
    whose gradient reads its output (the backward takes the gradient through it on the fly)."""
    batch_norm = layers[start]
    assert isinstance(batch_norm, BatchNorm2d)
    following = layers[start + 1] if start + 1 < len(layers) else None
    if not isinstance(following, _Activation) or following.training != batch_norm.training:
        return None
    if batch_norm.training and following._reads() != "output":
        # The fused backward reads the activation's output: only where the layer itself keeps its
        # output does the fused layer keep nothing else than the unfused ones (an in-place layer
        # after them would overwrite it for both).
        return None
    return _Fusion(start, start + 2, None, batch_norm, following)


class _Run:
    """What one forward of a Sequential leaves its backward besides the layers' own caches."""

    __slots__ = ("recompute", "absorbed")

    def __init__(self) -> None:
        # Evaluation fusions, by stop index, with their input: backward reruns those layers one
        # by one first (the fused forward kept nothing for them).
        self.recompute: dict[int, tuple[_Fusion, np.ndarray]] = {}
        # Activations whose backward runs inside the layer before them.
        self.absorbed: set[int] = set()


class Sequential(Module):
    """Layers applied in order; ``backward`` runs through them in reverse.

    Parameters
    ----------
    *layers : Module
        The layers, including nested Sequentials. Their names in :meth:`state_dict` and
        :meth:`parameters` are their positions: ``'0.weight'``, ``'3.running_mean'``, as PyTorch
        names the entries of its ``nn.Sequential``.

    Attributes
    ----------
    params, grads, buffers : dict
        Flat views built on access, keyed by qualified name (``'0.weight'``); the arrays in
        ``params`` and ``buffers`` are the layers' live arrays.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn, optim
    >>> model = nn.Sequential(nn.Linear(4, 8, rng=0), nn.ReLU(), nn.Linear(8, 3, rng=1))
    >>> loss_fn = nn.CrossEntropyLoss()
    >>> optimizer = optim.SGD(model.parameters(), lr=0.1)
    >>> x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    >>> target = np.arange(16) % 3
    >>> losses = []
    >>> for step in range(20):
    ...     losses.append(loss_fn(model(x), target))
    ...     _ = model.backward(loss_fn.backward())
    ...     optimizer.step()
    >>> losses[-1] < losses[0]
    True
    >>> sorted(model.state_dict())
    ['0.bias', '0.weight', '2.bias', '2.weight']
    """

    def __init__(self, *layers: Module) -> None:
        super().__init__()
        for index, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential takes convx.nn layers, got {type(layer).__name__} at position {index}")
        self.layers: list[Module] = list(layers)
        #: Run a Conv2d with the BatchNorm2d (evaluation) and the activation after it as one
        #: convolution (see :meth:`forward`); False runs every layer on its own.
        self.fuse = True

    def children(self) -> Iterator[tuple[str, Module]]:
        return ((str(index), layer) for index, layer in enumerate(self.layers))

    def append(self, layer: Module) -> Sequential:
        """Add ``layer`` at the end; returns self."""
        if not isinstance(layer, Module):
            raise TypeError(f"Sequential takes convx.nn layers, got {type(layer).__name__}")
        self.layers.append(layer)
        return self

    @overload
    def __getitem__(self, index: int) -> Module: ...
    @overload
    def __getitem__(self, index: slice) -> Sequential: ...
    def __getitem__(self, index: int | slice) -> Module:
        if isinstance(index, slice):
            part = Sequential(*self.layers[index])
            part.fuse = self.fuse
            return part
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Module]:
        return iter(self.layers)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x`` through every layer in order.

        With ``fuse`` (the default), a Conv2d runs together with what follows it: in evaluation
        mode a BatchNorm2d (its running statistics and affine map folded into the convolution's
        weight and bias, equal to the two layers up to float rounding) and an activation (applied
        in place to each sub-batch of the convolution's output); in training mode an activation
        whose layer keeps its output for its gradient (ReLU, ReLU6, LeakyReLU with a non-negative
        slope, Sigmoid, Tanh; ELU and SELU in place), with results identical to the separate
        layers. A BatchNorm2d likewise takes the activation after it into its own two passes (in
        training, the same activations). ``backward`` works after either; after an evaluation
        fusion it first reruns those layers separately, in evaluation mode. An in-place layer that
        overwrites an array an earlier layer kept for its backward makes that backward refuse (a
        RuntimeError), as PyTorch's version counters do.
        """
        run = _Run()
        index = 0
        while index < len(self.layers):
            fusion = _fusion_at(self.layers, index) if self.fuse else None
            if fusion is not None and fusion.batch_norm is not None and np.ndim(x) != 4:
                fusion = None  # BatchNorm2d's own forward says what is wrong with x
            if fusion is None:
                layer = self.layers[index]
                if layer.__dict__.get("inplace", False) is True and isinstance(x, np.ndarray):
                    for earlier in self.layers[:index]:
                        earlier._mark_overwritten(x, type(layer).__name__)
                x = layer(x)
                index += 1
                continue
            x = self._run_fused(fusion, x, run)
            index = fusion.stop
        self._push(run)
        return x

    def _run_fused(self, fusion: _Fusion, x: np.ndarray, run: _Run) -> np.ndarray:
        conv, batch_norm, activation = fusion.conv, fusion.batch_norm, fusion.activation
        for layer in self.layers[fusion.start:fusion.stop]:
            layer._begin_pass()
        if conv is None:
            assert batch_norm is not None and activation is not None
            y = batch_norm._normalize(x, activation.name, activation._options())
            if batch_norm.training or activation._reads() == "output":
                # The activation's gradient is taken inside the batch normalisation's backward.
                run.absorbed.add(fusion.start + 1)
            else:
                if is_grad_enabled():
                    batch_norm._pop()
                run.recompute[fusion.stop] = (fusion, x)
            return y
        weight, bias = conv.params["weight"], conv.params.get("bias")
        if batch_norm is not None:
            inv_std = 1.0 / np.sqrt(batch_norm.buffers["running_var"].astype(np.float64) + batch_norm.eps)
            scale = inv_std if not batch_norm.affine else inv_std * batch_norm.params["weight"]
            shift = (0.0 if bias is None else bias) - batch_norm.buffers["running_mean"].astype(np.float64)
            shift = shift * scale + (batch_norm.params["bias"] if batch_norm.affine else 0.0)
            weight = (weight * scale[:, None, None, None]).astype(conv.dtype)
            bias = shift.astype(conv.dtype)
        name, options = (None, None) if activation is None else (activation.name, activation._options())
        training = conv.training
        y = conv._convolve(x, weight, bias, name, options, save=training)
        if training:
            assert activation is not None
            activation._save_for_backward(y, y)
        else:
            run.recompute[fusion.stop] = (fusion, x)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """``grad_out`` back through every layer in reverse; returns the input gradient.

        Each layer overwrites its ``grads``.
        """
        run: _Run = self._peek()
        for stop in range(len(self.layers), 0, -1):
            if stop in run.recompute:
                fusion, x = run.recompute[stop]
                for layer in self.layers[fusion.start:fusion.stop]:
                    # In the mode of the forward (evaluation), whatever train() said since.
                    mode, layer.training = layer.training, False
                    try:
                        x = layer(x)
                    finally:
                        layer.training = mode
            if stop - 1 in run.absorbed:
                continue
            grad_out = self.layers[stop - 1].backward(grad_out)
        # Kept until here: a grad_out the last layer rejects leaves everything for a retry.
        self._pop()
        return grad_out


class ModuleList(Module):
    """A list of modules, registered: their parameters, buffers and modes follow the owner's.

    It has no ``forward``: the owner's ``forward`` calls its entries (and its ``backward`` calls
    theirs in reverse), as with ``torch.nn.ModuleList``. Entries are named by position in
    :meth:`state_dict` (``'blocks.0.weight'``).

    Parameters
    ----------
    modules : iterable of Module, optional

    Examples
    --------
    >>> from convx import nn
    >>> layers = nn.ModuleList([nn.Linear(4, 4, rng=i) for i in range(3)])
    >>> len(layers), sorted(layers.state_dict())[:2]
    (3, ['0.bias', '0.weight'])
    """

    def __init__(self, modules: Iterable[Module] | None = None) -> None:
        super().__init__()
        if modules is not None:
            self.extend(modules)

    @staticmethod
    def _checked(module: object) -> Module:
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList holds convx.nn Modules, got {type(module).__name__}")
        return module

    def _entries(self) -> list[Module]:
        return [module for module in self._modules.values() if module is not None]

    def _reset(self, modules: list[Module]) -> None:
        self._modules.clear()
        for index, module in enumerate(modules):
            self._modules[str(index)] = module

    def append(self, module: Module) -> ModuleList:
        """Add ``module`` at the end; returns self."""
        self._modules[str(len(self._modules))] = self._checked(module)
        return self

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        """Append each of ``modules``; returns self."""
        if isinstance(modules, Module) and not isinstance(modules, ModuleList):
            raise TypeError("ModuleList.extend takes an iterable of modules: use append for one module")
        for module in list(modules):
            self.append(module)
        return self

    def insert(self, index: int, module: Module) -> None:
        """Insert ``module`` before position ``index``."""
        entries = self._entries()
        entries.insert(as_int("index", index), self._checked(module))
        self._reset(entries)

    def _index(self, index: object) -> int:
        position = as_int("index", index)
        size = len(self._modules)
        if not -size <= position < size:
            raise IndexError(f"ModuleList index {position} is out of range for {size} modules")
        return position % size

    @overload
    def __getitem__(self, index: int) -> Module: ...
    @overload
    def __getitem__(self, index: slice) -> ModuleList: ...
    def __getitem__(self, index: int | slice) -> Module:
        if isinstance(index, slice):
            return ModuleList(self._entries()[index])
        return self._entries()[self._index(index)]

    def __setitem__(self, index: int, module: Module) -> None:
        self._modules[str(self._index(index))] = self._checked(module)

    def __delitem__(self, index: int | slice) -> None:
        entries = self._entries()
        if isinstance(index, slice):
            del entries[index]
        else:
            del entries[self._index(index)]
        self._reset(entries)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._entries())

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError(
            "ModuleList is a container without a forward: call its modules from your module's forward"
        )


class ModuleDict(Module):
    """A dict of modules by name, registered: their parameters, buffers and modes follow the owner's.

    Like :class:`ModuleList` it has no ``forward``. Keys are the names in :meth:`state_dict`
    (``'heads.cls.weight'``); insertion order is kept.

    Parameters
    ----------
    modules : mapping or iterable of (str, Module) pairs, optional

    Examples
    --------
    >>> from convx import nn
    >>> heads = nn.ModuleDict({"cls": nn.Linear(8, 3, rng=0), "box": nn.Linear(8, 4, rng=1)})
    >>> list(heads), heads["box"].out_features
    (['cls', 'box'], 4)
    """

    def __init__(self, modules: Mapping[str, Module] | Iterable[tuple[str, Module]] | None = None) -> None:
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __setitem__(self, key: str, module: Module) -> None:
        if not isinstance(key, str) or not key or "." in key:
            raise KeyError(f"ModuleDict keys must be non-empty strings without '.', got {key!r}")
        if not isinstance(module, Module):
            raise TypeError(f"ModuleDict holds convx.nn Modules, got {type(module).__name__} for key {key!r}")
        self._modules[key] = module

    def __getitem__(self, key: str) -> Module:
        module = self._modules[key]
        assert module is not None
        return module

    def __delitem__(self, key: str) -> None:
        del self._modules[key]

    def __contains__(self, key: object) -> bool:
        return key in self._modules

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._modules))

    def keys(self) -> list[str]:
        """The names, in insertion order."""
        return list(self._modules)

    def values(self) -> list[Module]:
        """The modules, in insertion order."""
        return [self[key] for key in self._modules]

    def items(self) -> list[tuple[str, Module]]:
        """(name, module) pairs, in insertion order."""
        return [(key, self[key]) for key in self._modules]

    def update(self, modules: Mapping[str, Module] | Iterable[tuple[str, Module]]) -> None:
        """Add or replace entries from a mapping or from (name, module) pairs."""
        pairs = modules.items() if isinstance(modules, Mapping) else modules
        for entry in pairs:
            if not (isinstance(entry, tuple) and len(entry) == 2):
                raise TypeError(f"ModuleDict.update takes a mapping or (name, module) pairs, got {entry!r}")
            self[entry[0]] = entry[1]

    def pop(self, key: str) -> Module:
        """Remove ``key`` and return its module."""
        module = self[key]
        del self._modules[key]
        return module

    def clear(self) -> None:
        """Remove every entry."""
        self._modules.clear()

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError(
            "ModuleDict is a container without a forward: call its modules from your module's forward"
        )
