"""Argument validation shared by every public op.

Everything a kernel relies on (dtype, ndim, shapes, integer ranges) is checked here, in
Python, before any compiled code runs. Messages name the argument, the value received and
what would be valid.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from ._typing import PaddingWord

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_DTYPE_NAMES = "float32 or float64"
# Max pooling compares and copies, so it also takes the 8-bit integers, exactly.
MAX_POOL_DTYPES = (*SUPPORTED_DTYPES, np.dtype(np.int8), np.dtype(np.uint8))


def _dtype_names(dtypes: Sequence[np.dtype[Any]]) -> str:
    """``float32 or float64``; ``float32, float64, int8 or uint8``."""
    names = [str(dtype) for dtype in dtypes]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _names(dtypes: Sequence[np.dtype[Any]]) -> str:
    """The dtypes' names for an error message (only then: naming a dtype takes microseconds)."""
    return _DTYPE_NAMES if dtypes is SUPPORTED_DTYPES else _dtype_names(dtypes)


def as_float_array(
    name: str, value: object, ndims: Sequence[int], dtypes: Sequence[np.dtype[Any]] = SUPPORTED_DTYPES
) -> npt.NDArray[Any]:
    """Return ``value`` as a float32/float64 ndarray (or one of ``dtypes``) with one of the allowed ``ndims``.

    The array is not copied or cast; another dtype is a TypeError. A subclass
    comes back as a plain ndarray view of its data (see :func:`plain_array`).
    """
    if type(value) is not np.ndarray and isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"{name} must be a plain numpy.ndarray, got a masked array (its mask would be ignored)")
    if isinstance(value, np.ndarray):
        value = plain_array(value)
    else:
        if np.isscalar(value) or value is None:
            raise TypeError(f"{name} must be a numpy.ndarray of {_names(dtypes)}, got {type(value).__name__}")
        try:
            value = np.asarray(value)
        except Exception as exc:  # ragged sequences and other non-arrays
            raise TypeError(f"{name} must be a numpy.ndarray of {_names(dtypes)}, got {type(value).__name__}") from exc
    if value.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {_names(dtypes)}, got dtype {value.dtype}; cast it explicitly first")
    if value.ndim not in ndims:
        allowed = " or ".join(str(n) for n in ndims)
        raise ValueError(f"{name} must be {allowed}-dimensional, got an array of shape {value.shape}")
    return value


def plain_array(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``array`` itself, or for an ndarray subclass a base-class view of the same memory.

    A subclass's Python-level ``shape``, ``dtype`` or ``__getitem__`` could tell validation one
    thing and hand the kernel another (a slice of another size, another buffer): past this point
    only the ndarray's own C-level description of its memory is read.
    """
    return array if type(array) is np.ndarray else np.asarray(array)


def same_dtype(**arrays: npt.NDArray[Any] | None) -> np.dtype[Any]:
    """Check that every non-None array shares one dtype and return it (no mixed precision)."""
    present = {name: a for name, a in arrays.items() if a is not None}
    dtypes = {a.dtype for a in present.values()}
    if len(dtypes) > 1:
        listing = ", ".join(f"{name}: {a.dtype}" for name, a in present.items())
        raise TypeError(
            f"all arrays must share one dtype ({_DTYPE_NAMES}), got {listing}; cast them to one dtype explicitly"
        )
    return next(iter(dtypes))


def as_int(name: str, value: object, minimum: int | None = None) -> int:
    """``value`` as a Python int (bools and floats refused), at least ``minimum``."""
    if type(value) is int:  # the common case, without the ABC check below (bool is not int here)
        if minimum is None or value >= minimum:
            return value
    elif isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        bound = "positive" if minimum == 1 else f"at least {minimum}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def as_pair(name: str, value: object, minimum: int | None = None) -> tuple[int, int]:
    """``int | (int, int)`` normalised to a pair of Python ints, each at least ``minimum``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got a sequence of length {len(value)}: {value!r}")
        return (as_int(f"{name}[0]", value[0], minimum), as_int(f"{name}[1]", value[1], minimum))
    if isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be an int or a tuple of two ints, got an ndarray")
    v = as_int(name, value, minimum)
    return v, v


def as_triple(name: str, value: object, minimum: int | None = None) -> tuple[int, int, int]:
    """``int | (int, int, int)`` normalised to a triple of Python ints (depth, height, width), each at
    least ``minimum``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 3:
            raise ValueError(
                f"{name} must be an int or a triple of ints (depth, height, width), got a sequence of length "
                f"{len(value)}: {value!r}"
            )
        first, second, third = (as_int(f"{name}[{k}]", v, minimum) for k, v in enumerate(value))
        return first, second, third
    if isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be an int or a tuple of three ints, got an ndarray")
    v = as_int(name, value, minimum)
    return v, v, v


def as_single(name: str, value: object, minimum: int | None = None) -> int:
    """A 1-D op's size argument: an int or PyTorch's 1-tuple ``(int,)``, at least ``minimum``.

    A pair is refused: a 1-D op has one spatial axis, and a 2-D op's ``(kh, kw)`` given to it by
    mistake must not be read as something else.
    """
    if isinstance(value, (tuple, list)):
        if len(value) != 1:
            raise ValueError(
                f"{name} of a 1-D op must be an int or a 1-tuple (int,), got a sequence of length {len(value)}: "
                f"{value!r}"
            )
        return as_int(f"{name}[0]", value[0], minimum)
    if isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be an int or a tuple of one int, got an ndarray")
    return as_int(name, value, minimum)


def as_layout_array(
    op: str, name: str, value: object, ndims: Sequence[int], layout: str,
    dtypes: Sequence[np.dtype[Any]] = SUPPORTED_DTYPES,
) -> npt.NDArray[Any]:
    """:func:`as_float_array` for an op whose arrays have a named layout: a wrong ndim is refused
    naming the op and the layouts it takes (``conv1d expects x of shape (N, C_in, L) or (C_in, L)``)."""
    array = as_float_array(name, value, range(33), dtypes)
    if array.ndim not in ndims:
        raise ValueError(f"{op} expects {name} of shape {layout}, got an array of shape {array.shape}")
    return array


# The memory layouts of an op's images, by spatial dimensions: channels first, then channels last.
DATA_LAYOUTS = {1: ("NCW", "NWC"), 2: ("NCHW", "NHWC"), 3: ("NCDHW", "NDHWC")}


def as_data_layout(value: object, dims: int = 2, name: str = "layout") -> bool:
    """Whether ``value`` names the channels-last layout of ``dims``-D images (``'NHWC'``) rather than
    the channels-first one (``'NCHW'``, PyTorch's); anything else is refused naming both."""
    first, last = DATA_LAYOUTS[dims]
    if isinstance(value, str) and value in (first, last):
        return value == last
    raise ValueError(
        f"{name} must be {first!r} (channels first, PyTorch's) or {last!r} (channels last), got {value!r}"
    )


def channels_first(array: npt.NDArray[Any], dims: int = 2) -> npt.NDArray[Any]:
    """A view of a channels-last batch or image, (N, *spatial, C) or (*spatial, C), as channels
    first, (N, C, *spatial) or (C, *spatial): no copy, the channel axis moved."""
    return np.moveaxis(array, -1, -dims - 1)


def channels_last(array: npt.NDArray[Any], dims: int = 2) -> npt.NDArray[Any]:
    """The inverse view of :func:`channels_first`."""
    return np.moveaxis(array, -dims - 1, -1)


def channels_first_shape(shape: Sequence[int], dims: int = 2) -> tuple[int, ...]:
    """A channels-last shape as channels first: (N, H, W, C) -> (N, C, H, W), (H, W, C) -> (C, H, W)."""
    shape = tuple(shape)
    if len(shape) < dims + 1:
        return shape
    return (*shape[: -dims - 1], shape[-1], *shape[-dims - 1 : -1])


def channels_last_shape(shape: Sequence[int], dims: int = 2) -> tuple[int, ...]:
    """The inverse of :func:`channels_first_shape`."""
    shape = tuple(shape)
    if len(shape) < dims + 1:
        return shape
    return (*shape[: -dims - 1], *shape[-dims:], shape[-dims - 1])


PADDING_WORDS = ("valid", "same", "same_lower")


def as_padding(value: object, name: str = "padding") -> PaddingWord | tuple[tuple[int, int], tuple[int, int]]:
    """A convolution's padding: ``'valid'``, ``'same'`` or ``'same_lower'``, or
    ``((top, bottom), (left, right))`` of ints >= 0 from an int (every side), ``(pad_h, pad_w)``
    (both sides of each axis) or the nested pairs themselves."""
    if isinstance(value, str):
        if value not in PADDING_WORDS:
            raise ValueError(
                f"{name} must be an int, (pad_h, pad_w), ((top, bottom), (left, right)), 'valid', 'same' or "
                f"'same_lower', got {value!r}"
            )
        return cast(PaddingWord, value)
    if isinstance(value, (tuple, list)) and len(value) == 4:
        raise ValueError(
            f"{name} as four numbers {tuple(value)!r} is ambiguous (PyTorch's F.pad reads them as (left, right, top, "
            f"bottom), other libraries as (top, bottom, left, right)): give ((top, bottom), (left, right))"
        )
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (tuple, list)) for v in value):
        return as_pair(f"{name}[0]", value[0], 0), as_pair(f"{name}[1]", value[1], 0)
    if isinstance(value, (tuple, list)) and len(value) == 2 and any(isinstance(v, (tuple, list)) for v in value):
        raise ValueError(f"{name} must be (pad_h, pad_w) or ((top, bottom), (left, right)), got {value!r}")
    pad_h, pad_w = as_pair(name, value, 0)
    return (pad_h, pad_h), (pad_w, pad_w)


def as_padding_1d(value: object, name: str = "padding") -> PaddingWord | tuple[int, int]:
    """A 1-D convolution's padding: ``'valid'``, ``'same'`` or ``'same_lower'``, or ``(left, right)``
    of ints >= 0 from an int, PyTorch's ``(p,)``, or ``((left, right),)``.

    A flat pair is refused: ``(1, 2)`` could mean per-side padding or a 2-D op's ``(pad_h, pad_w)``.
    """
    spellings = "an int, (p,), ((left, right),), 'valid', 'same' or 'same_lower'"
    if isinstance(value, str):
        if value not in PADDING_WORDS:
            raise ValueError(f"{name} must be {spellings}, got {value!r}")
        return cast(PaddingWord, value)
    if isinstance(value, (tuple, list)):
        if len(value) == 1 and isinstance(value[0], (tuple, list)):
            if len(value[0]) != 2:
                raise ValueError(f"{name} per side must be ((left, right),), got {value!r}")
            return as_int(f"{name}[0][0]", value[0][0], 0), as_int(f"{name}[0][1]", value[0][1], 0)
        if len(value) == 1:
            pad = as_int(f"{name}[0]", value[0], 0)
            return pad, pad
        raise ValueError(f"{name} of a 1-D convolution must be {spellings} (per side: ((left, right),)), got {value!r}")
    if isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be {spellings}, got an ndarray")
    pad = as_int(name, value, 0)
    return pad, pad


def as_shape(name: str, value: object, ndims: Sequence[int]) -> tuple[int, ...]:
    """A shape argument (sequence of non-negative ints) with one of the allowed lengths."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise TypeError(f"{name} must be a tuple of ints, got {value!r} of type {type(value).__name__}")
    if len(value) not in ndims:
        allowed = " or ".join(str(n) for n in ndims)
        raise ValueError(f"{name} must have {allowed} entries, got {tuple(value)!r}")
    return tuple(as_int(f"{name}[{i}]", v, 0) for i, v in enumerate(value))


def as_bool(name: str, value: object) -> bool:
    """A flag: Python or NumPy bool only."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r} of type {type(value).__name__}")
    return bool(value)


def contiguous(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """A C-contiguous view of ``array``, copying only when its layout requires it.

    The caller's array is never written to; the kernels take const memoryviews, so
    read-only arrays pass as they are. Misaligned data (from a packed buffer) is copied:
    the kernels load whole floats, which is undefined behaviour there (and a fault on some
    CPUs), and ``np.ascontiguousarray`` alone keeps a contiguous but misaligned array.
    """
    if array.flags.c_contiguous and array.flags.aligned:
        return array
    return np.array(array, order="C", copy=True)
