"""Blocks with more than one path: identity, residual sums, parallel branches, and the two-input
operations (sum, concatenation) of user-written graphs."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._checks import as_float_array, as_int
from ..functional import activations as F
from .activations import _Activation
from .module import Module, check_input

_ANY_NDIM = range(33)


class Identity(Module):
    """Returns its input unchanged (the same array); the gradient passes through.

    Arguments are accepted and ignored, as ``torch.nn.Identity``'s are, so that it can stand in
    for a layer that a configuration switches off.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> x = np.ones((2, 3))
    >>> nn.Identity()(x) is x
    True
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x`` itself, any shape."""
        x = check_input(self, x, _ANY_NDIM)
        self._save_for_backward(x)
        return x

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """``grad_out`` itself."""
        grad_out, _ = self._saved_for_backward(grad_out)
        return grad_out


def _fusable(activation: Module | None) -> _Activation | None:
    """The activation if it can run inside the sum's pass: a compiled one whose gradient reads
    its output, not in place (the result is a new array anyway)."""
    if isinstance(activation, _Activation) and activation._reads() == "output" and not activation.inplace:
        return activation
    return None


class Residual(Module):
    """``activation(body(x) + shortcut(x))``: a residual block; the shortcut is the identity by default.

    Parameters
    ----------
    body : Module
        The main path (for ResNet's basic block, conv-BN-ReLU-conv-BN).
    shortcut : Module, optional
        The projection path (a 1x1 convolution with the body's stride, and BatchNorm); None adds
        ``x`` itself.
    activation : Module, optional
        Applied to the sum (``nn.ReLU()`` in ResNet). ReLU, ReLU6, LeakyReLU (non-negative slope),
        Sigmoid and Tanh run in the same threaded pass as the sum.

    Attributes
    ----------
    body, shortcut, activation : Module or None
        The children, under these names in :meth:`state_dict` (``'body.0.weight'``,
        ``'shortcut.0.weight'``).

    Notes
    -----
    ``backward`` sends the gradient of the sum down both paths and returns the sum of the two
    input gradients. The body's output and the shortcut's must have one shape and dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> block = nn.Residual(
    ...     nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, rng=0), nn.BatchNorm2d(4), nn.ReLU(),
    ...                   nn.Conv2d(4, 4, 3, padding=1, rng=1), nn.BatchNorm2d(4)),
    ...     activation=nn.ReLU())
    >>> x = np.random.default_rng(0).normal(size=(2, 4, 6, 6)).astype(np.float32)
    >>> y = block(x)
    >>> block.backward(np.ones_like(y)).shape
    (2, 4, 6, 6)
    >>> sorted(block.state_dict())[:2]
    ['body.0.bias', 'body.0.weight']
    """

    body: Module
    shortcut: Module | None
    activation: Module | None

    def __init__(self, body: Module, shortcut: Module | None = None, activation: Module | None = None) -> None:
        super().__init__()
        for name, value in (("body", body), ("shortcut", shortcut), ("activation", activation)):
            if value is not None and not isinstance(value, Module):
                raise TypeError(f"Residual's {name} must be a convx.nn Module{'' if name == 'body' else ' or None'}, "
                                f"got {type(value).__name__}")
        if body is None:
            raise TypeError("Residual's body must be a convx.nn Module, got None")
        self.body = body
        self.shortcut = shortcut
        self.activation = activation

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x`` through both paths, summed, then the activation."""
        main = self.body(x)
        skip = x if self.shortcut is None else self.shortcut(x)
        main = as_float_array("the body's output", main, _ANY_NDIM)
        skip = as_float_array("the shortcut's output", skip, _ANY_NDIM)
        if main.shape != skip.shape or main.dtype != skip.dtype:
            what = "x" if self.shortcut is None else "the shortcut's output"
            raise ValueError(
                f"Residual: the body's output {main.shape} {main.dtype} and {what} {skip.shape} {skip.dtype} must have "
                "one shape and dtype; give a shortcut that maps x to the body's output (a 1x1 Conv2d with the "
                "body's stride and channels)"
            )
        fused = _fusable(self.activation)
        if fused is not None:
            fused._begin_pass()  # its own forward does not run: nothing stale for its backward
            y = F.add(main, skip, activation=fused.name, activation_params=fused._options())
            self._save_for_backward(y, y)
        else:
            y = F.add(main, skip)
            self._save_for_backward(y, None)
            if self.activation is not None:
                y = self.activation(y)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """The input gradient: the body's plus the shortcut's, for the gradient of the sum."""
        fused = _fusable(self.activation)
        if fused is None and self.activation is not None:
            grad_out = self.activation.backward(grad_out)
        grad_sum, (output,) = self._saved_for_backward(grad_out)
        if fused is not None:
            grad_sum = F.activation_backward(fused.name, grad_sum, output, saved_is="output", **fused._options())
        grad_main = self.body.backward(grad_sum)
        grad_skip = grad_sum if self.shortcut is None else self.shortcut.backward(grad_sum)
        return F.add(as_float_array("the body's input gradient", grad_main, _ANY_NDIM),
                     as_float_array("the shortcut's input gradient", grad_skip, _ANY_NDIM))


class Concat(Module):
    """Parallel branches on one input, their outputs concatenated along ``dim`` (Inception, DenseNet).

    Parameters
    ----------
    *branches : Module
        Each gets the same input; their outputs must agree in every dimension but ``dim``. Their
        names in :meth:`state_dict` are their positions (``'0.weight'``), as in a Sequential.
    dim : int, default 1
        The channel axis of (N, C, H, W) outputs; negative counts from the end.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> inception = nn.Concat(nn.Conv2d(3, 4, 1, rng=0), nn.Conv2d(3, 2, 3, padding=1, rng=1), nn.Identity())
    >>> y = inception(np.ones((2, 3, 5, 5), dtype=np.float32))
    >>> y.shape, inception.backward(np.ones_like(y)).shape
    ((2, 9, 5, 5), (2, 3, 5, 5))
    """

    def __init__(self, *branches: Module, dim: int = 1) -> None:
        super().__init__()
        if not branches:
            raise ValueError("Concat needs at least one branch")
        for index, branch in enumerate(branches):
            if not isinstance(branch, Module):
                raise TypeError(f"Concat takes convx.nn Modules, got {type(branch).__name__} at position {index}")
            self.register_module(str(index), branch)
        self.dim = as_int("dim", dim, None)

    def __len__(self) -> int:
        return len(self._modules)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Every branch on ``x``; their outputs joined along ``dim``."""
        outputs = [as_float_array(f"branch {index}'s output", branch(x), _ANY_NDIM)
                   for index, (_, branch) in enumerate(self.children())]
        y, sizes = _concatenate(self, outputs, self.dim)
        self._save_for_backward(y, sizes)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """The sum of the branches' input gradients, each for its part of ``grad_out``."""
        grad_out, (sizes,) = self._saved_for_backward(grad_out)
        parts = _split(grad_out, sizes, self.dim)
        total: np.ndarray | None = None
        for part, (_, branch) in zip(reversed(parts), reversed(list(self.children()))):
            grad = as_float_array("a branch's input gradient", branch.backward(part), _ANY_NDIM)
            total = grad if total is None else F.add(total, grad)
        assert total is not None
        return total

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def _axis(module: Module, dim: int, ndim: int) -> int:
    if not -ndim <= dim < ndim:
        raise ValueError(f"{type(module).__name__}: dim={dim} is out of range for inputs of {ndim} dimensions")
    return dim % ndim


def _concatenate(module: Module, arrays: list[np.ndarray], dim: int) -> tuple[np.ndarray, tuple[int, ...]]:
    first = arrays[0]
    axis = _axis(module, dim, first.ndim)
    for index, array in enumerate(arrays[1:], 1):
        if (array.ndim != first.ndim or array.dtype != first.dtype
                or array.shape[:axis] + array.shape[axis + 1:] != first.shape[:axis] + first.shape[axis + 1:]):
            raise ValueError(
                f"{type(module).__name__}: input {index} of shape {array.shape} {array.dtype} cannot be joined to "
                f"input 0 of shape {first.shape} {first.dtype} along dim {dim}: every other dimension and the "
                "dtype must agree"
            )
    return np.concatenate(arrays, axis=axis), tuple(array.shape[axis] for array in arrays)


def _split(grad: np.ndarray, sizes: tuple[int, ...], dim: int) -> list[np.ndarray]:
    axis = dim % grad.ndim
    bounds = np.cumsum(sizes)[:-1]
    return [np.ascontiguousarray(part) for part in np.split(grad, bounds, axis=axis)]


def _unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``grad`` summed over the dimensions that broadcasting added or stretched to reach its shape."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        extra + index for index, size in enumerate(shape) if size == 1 and grad.shape[extra + index] != 1
    )
    return np.ascontiguousarray(grad.sum(axis=axes).reshape(shape))


class Add(Module):
    """The sum of its inputs (NumPy broadcasting), for graphs written by hand; ``backward`` returns
    one gradient per input.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> add = nn.Add()
    >>> y = add(np.ones((2, 3)), np.arange(3.0))
    >>> grad_a, grad_b = add.backward(np.ones((2, 3)))
    >>> grad_a.shape, grad_b
    ((2, 3), array([2., 2., 2.]))
    """

    def forward(self, *inputs: np.ndarray) -> np.ndarray:
        """``inputs[0] + inputs[1] + ...`` (at least one input, one dtype)."""
        if not inputs:
            raise TypeError("Add needs at least one input")
        arrays = [as_float_array(f"input {index}", x, _ANY_NDIM) for index, x in enumerate(inputs)]
        for index, array in enumerate(arrays[1:], 1):
            if array.dtype != arrays[0].dtype:
                raise TypeError(f"Add: input {index} has dtype {array.dtype}, input 0 {arrays[0].dtype}; cast one")
        try:
            shape = np.broadcast_shapes(*(array.shape for array in arrays))
        except ValueError:
            raise ValueError(f"Add: the inputs' shapes {[a.shape for a in arrays]} do not broadcast") from None
        if all(array.shape == shape for array in arrays) and len(arrays) > 1:
            y = F.add(arrays[0], arrays[1])
            for array in arrays[2:]:
                y = F.add(y, array)
        else:
            y = np.array(arrays[0], copy=True) if len(arrays) == 1 else np.add(arrays[0], arrays[1])
            for array in arrays[2:]:
                y = y + array
            y = np.ascontiguousarray(np.broadcast_to(y, shape))
        self._save_for_backward(y, tuple(array.shape for array in arrays))
        return y

    def backward(self, grad_out: np.ndarray) -> tuple[np.ndarray, ...]:  # type: ignore[override]
        """One gradient per input, each of that input's shape (``grad_out`` summed over what
        broadcasting stretched); inputs of the output's shape share one array."""
        grad_out, (shapes,) = self._saved_for_backward(grad_out)
        return tuple(_unbroadcast(grad_out, shape) for shape in shapes)


class Cat(Module):
    """Its inputs concatenated along ``dim`` (U-Net's skip connections); ``backward`` returns one
    gradient per input.

    Parameters
    ----------
    dim : int, default 1
        The channel axis of NCHW arrays; negative counts from the end.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> cat = nn.Cat()
    >>> y = cat(np.ones((2, 3, 4, 4)), np.zeros((2, 5, 4, 4)))
    >>> [g.shape for g in cat.backward(np.ones_like(y))]
    [(2, 3, 4, 4), (2, 5, 4, 4)]
    """

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = as_int("dim", dim, None)

    def forward(self, *inputs: np.ndarray) -> np.ndarray:
        """The inputs joined along ``dim``."""
        if not inputs:
            raise TypeError("Cat needs at least one input")
        arrays = [as_float_array(f"input {index}", x, _ANY_NDIM) for index, x in enumerate(inputs)]
        y, sizes = _concatenate(self, arrays, self.dim)
        self._save_for_backward(y, sizes)
        return y

    def backward(self, grad_out: np.ndarray) -> tuple[np.ndarray, ...]:  # type: ignore[override]
        """``grad_out`` split back into the inputs' parts."""
        grad_out, (sizes,) = self._saved_for_backward(grad_out)
        return tuple(_split(grad_out, sizes, self.dim))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


__all__ = ["Add", "Cat", "Concat", "Identity", "Residual"]
