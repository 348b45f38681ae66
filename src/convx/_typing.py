"""Type aliases for the public signatures (PyTorch's ``_size_2_t`` and friends)."""

from __future__ import annotations

from typing import Any, Literal, TypeVar, Union

import numpy as np
import numpy.typing as npt

#: The two dtypes every op supports; an op returns arrays of its inputs' dtype.
Float = TypeVar("Float", np.float32, np.float64)

#: Max pooling's dtypes: the two floating ones and the 8-bit integers (compared exactly).
MaxPooled = TypeVar("MaxPooled", np.float32, np.float64, np.int8, np.uint8)

#: An ``int`` for both spatial axes, or ``(height, width)``.
IntPair = Union[int, tuple[int, int]]

#: A 1-D op's size argument: an ``int`` or PyTorch's 1-tuple ``(int,)`` (``_size_1_t``).
IntSingle = Union[int, tuple[int]]

#: :func:`convx.conv2d`'s padding: an ``IntPair``, ``((top, bottom), (left, right))``,
#: ``'valid'``, ``'same'`` or ``'same_lower'``.
PaddingWord = Literal["valid", "same", "same_lower"]
Padding = Union[IntPair, tuple[tuple[int, int], tuple[int, int]], PaddingWord]

#: :func:`convx.conv1d`'s padding: an ``IntSingle``, ``((left, right),)``, ``'valid'``, ``'same'`` or
#: ``'same_lower'``.
Padding1d = Union[IntSingle, tuple[tuple[int, int]], PaddingWord]

#: Adaptive pooling's output size: an int, or ``(height, width)`` where ``None`` keeps that input size.
AdaptiveSize = Union[int, tuple[Union[int, None], Union[int, None]]]
# A 3-D op's size argument, one int for every axis or (depth, height, width).
IntTriple = Union[int, tuple[int, int, int]]
AdaptiveSize3d = Union[int, tuple[Union[int, None], Union[int, None], Union[int, None]]]

#: A shape argument such as ``input_shape`` (a tuple of ints).
Shape = tuple[int, ...]

#: An array whose dtype is not known statically.
AnyArray = npt.NDArray[Any]
