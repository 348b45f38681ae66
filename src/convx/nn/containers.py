"""Sequential: a chain of layers trained as one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import overload

import numpy as np

from .module import Module


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

    def children(self) -> Iterator[tuple[str, Module]]:
        return ((str(index), layer) for index, layer in enumerate(self.layers))

    @property
    def params(self) -> dict[str, np.ndarray]:
        return {name: param.data for name, param in self.named_parameters()}

    @property
    def grads(self) -> dict[str, np.ndarray | None]:
        return {name: param.grad for name, param in self.named_parameters()}

    @property
    def buffers(self) -> dict[str, np.ndarray]:
        return {
            f"{child_name}.{key}": value
            for child_name, child in self.children()
            for key, value in child.buffers.items()
        }

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
            return Sequential(*self.layers[index])
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Module]:
        return iter(self.layers)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x`` through every layer in order."""
        for layer in self.layers:
            x = layer(x)
        return x

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """``grad_out`` back through every layer in reverse; returns the input gradient.

        Each layer overwrites its ``grads``.
        """
        for layer in reversed(self.layers):
            grad_out = layer.backward(grad_out)
        return grad_out

    def __repr__(self) -> str:
        if not self.layers:
            return "Sequential()"
        lines = [f"  ({index}): {layer!r}".replace("\n", "\n  ") for index, layer in enumerate(self.layers)]
        return "Sequential(\n" + "\n".join(lines) + "\n)"
