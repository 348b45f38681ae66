"""Padding layers: ZeroPad2d, ConstantPad2d, ReflectionPad2d, ReplicationPad2d, CircularPad2d."""

from __future__ import annotations

import numbers
from typing import Union

import numpy as np

from .. import functional
from .._checks import as_int
from ..functional.padding import PadMode
from .module import Module, check_input

#: A padding layer's ``padding``: one int for all four sides, or ``(left, right, top, bottom)``.
Padding2d = Union[int, tuple[int, int, int, int]]


def _four_sides(padding: object) -> tuple[int, int, int, int]:
    if isinstance(padding, (tuple, list)):
        if len(padding) != 4:
            raise ValueError(
                f"padding must be an int or a 4-tuple (left, right, top, bottom), got a sequence of length "
                f"{len(padding)}: {padding!r}"
            )
        left, right, top, bottom = (as_int(f"padding[{k}]", v) for k, v in enumerate(padding))
        return left, right, top, bottom
    if isinstance(padding, np.ndarray):
        raise TypeError("padding must be an int or a tuple of four ints, got an ndarray")
    side = as_int("padding", padding)
    return side, side, side, side


class _Pad2d(Module):
    """Pads the last two axes of (N, C, H, W) or (C, H, W) inputs with :func:`convx.functional.pad`."""

    mode: PadMode = "constant"

    def __init__(self, padding: Padding2d) -> None:
        super().__init__()
        self.padding = _four_sides(padding)

    def _value(self) -> float | None:
        return None

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x`` (N, C, H, W) or (C, H, W) padded to (…, H + top + bottom, W + left + right)."""
        x = check_input(self, x, (3, 4))
        y = functional.pad(x, self.padding, self.mode, self._value())
        self._save_for_backward(y, x.shape)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Input gradient for ``grad_out`` (the output's shape)."""
        grad_out, (input_shape,) = self._saved_for_backward(grad_out)
        return functional.pad_backward(grad_out, input_shape, self.padding, self.mode)

    def extra_repr(self) -> str:
        return f"padding={self.padding}"


class ConstantPad2d(_Pad2d):
    """Pad with a constant, ``torch.nn.ConstantPad2d``.

    Parameters
    ----------
    padding : int or (int, int, int, int)
        ``(left, right, top, bottom)``; negative values crop.
    value : float
        The fill.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.ConstantPad2d((1, 0, 0, 1), 7.0)(np.ones((1, 1, 1, 2)))[0, 0]
    array([[7., 1., 1.],
           [7., 7., 7.]])
    """

    value: float

    def __init__(self, padding: Padding2d, value: float) -> None:
        super().__init__(padding)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"value must be a real number, got {value!r} of type {type(value).__name__}")
        self.value = float(value)

    def _value(self) -> float | None:
        return self.value

    def extra_repr(self) -> str:
        return f"padding={self.padding}, value={self.value}"


class ZeroPad2d(ConstantPad2d):
    """Pad with zeros, ``torch.nn.ZeroPad2d``.

    Parameters
    ----------
    padding : int or (int, int, int, int)
        ``(left, right, top, bottom)``; negative values crop.

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.ZeroPad2d((1, 1, 0, 0))(np.ones((1, 1, 1, 2)))[0, 0]
    array([[0., 1., 1., 0.]])
    """

    def __init__(self, padding: Padding2d) -> None:
        super().__init__(padding, 0.0)

    def extra_repr(self) -> str:
        return f"padding={self.padding}"


class ReflectionPad2d(_Pad2d):
    """Pad with the mirror image of the input, edges not repeated, ``torch.nn.ReflectionPad2d``.

    Parameters
    ----------
    padding : int or (int, int, int, int)
        ``(left, right, top, bottom)``, each smaller than the axis it pads (negative values crop).

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.ReflectionPad2d((2, 1, 0, 0))(np.arange(3.0).reshape(1, 1, 3))[0]
    array([[2., 1., 0., 1., 2., 1.]])
    """

    mode: PadMode = "reflect"


class ReplicationPad2d(_Pad2d):
    """Pad with copies of the edge elements, ``torch.nn.ReplicationPad2d``.

    Parameters
    ----------
    padding : int or (int, int, int, int)
        ``(left, right, top, bottom)`` (negative values crop).

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.ReplicationPad2d((2, 1, 0, 0))(np.arange(3.0).reshape(1, 1, 3))[0]
    array([[0., 0., 0., 1., 2., 2.]])
    """

    mode: PadMode = "replicate"


class CircularPad2d(_Pad2d):
    """Pad with the opposite side of the input (periodic), ``torch.nn.CircularPad2d``.

    Parameters
    ----------
    padding : int or (int, int, int, int)
        ``(left, right, top, bottom)``, each at most the axis it pads (negative values crop first).

    Examples
    --------
    >>> import numpy as np
    >>> from convx import nn
    >>> nn.CircularPad2d((2, 1, 0, 0))(np.arange(3.0).reshape(1, 1, 3))[0]
    array([[1., 2., 0., 1., 2., 0.]])
    """

    mode: PadMode = "circular"
