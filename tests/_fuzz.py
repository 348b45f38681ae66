"""Pieces shared by the property-based tests (test_fuzz_*.py): argument spellings, layouts,
bad values, and the check that a call either matches the reference or is refused cleanly."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from _helpers import LAYOUTS
from conftest import assert_close
from hypothesis import strategies as st

DTYPES = [np.dtype(np.float32), np.dtype(np.float64)]
LAYOUT_NAMES = ["c-contiguous", *LAYOUTS]


def in_layout(array: np.ndarray, layout: str) -> np.ndarray:
    """``array`` with the same values in another memory layout (from tests/_helpers.py).

    Empty arrays keep theirs: they have no elements to misalign or spread out.
    """
    if layout == "c-contiguous" or array.size == 0:
        return array
    return LAYOUTS[layout](array)


@st.composite
def spelled(draw, pair: tuple[int, int]):
    """An ``int | (int, int)`` argument equal to ``pair``, in any of the spellings convx accepts."""
    first, second = pair
    forms = [(first, second), [first, second], (np.int64(first), second), (first, np.int32(second))]
    if first == second:
        forms += [first, np.int64(first), np.uint8(first) if 0 <= first < 256 else first]
    return draw(st.sampled_from(forms))


# Values that are wrong for an int-or-pair geometry argument whatever the rest of the call:
# wrong types (TypeError) or values out of range for every geometry (ValueError).
BAD_INT_TYPES = [
    1.0, 2.5, float("nan"), float("inf"), True, np.True_, None, "1", b"1", 1 + 0j, Fraction(1), Decimal(1),
    np.float64(2.0), np.array([1, 1]), np.array(1), {1: 1}, {1}, object(),
]
BAD_PAIR_SHAPES = [(), (1,), (1, 1, 1), [], [1, 2, 3], ((1, 1), 1), (1, 1.0), (1, None), (1, "1"), (True, 1)]


def bad_geometry_values(minimum: int) -> st.SearchStrategy:
    """Bad values for an int-or-pair argument whose entries must be at least ``minimum``."""
    too_small = [minimum - 1, minimum - 2, -(2**40), (minimum, minimum - 1), (minimum - 1, minimum)]
    too_large = [2**31, 2**63, 10**30, (1, 2**31), (2**40, 1)]
    return st.sampled_from(BAD_INT_TYPES + BAD_PAIR_SHAPES + too_small + too_large)


BAD_DTYPES = [np.int64, np.int32, np.uint8, np.float16, np.complex64, np.complex128, np.bool_, object,
              np.longdouble]


@st.composite
def bad_array(draw, like: np.ndarray, optional: bool = False):
    """Something that is not a valid stand-in for the float array ``like``: wrong dtype,
    wrong ndim, not an array, a masked array (never None for an ``optional`` argument)."""
    kind = draw(st.sampled_from(["dtype", "ndim", "non-array", "masked"]))
    if kind == "dtype":
        dtype = draw(st.sampled_from(BAD_DTYPES))
        if np.dtype(dtype) == np.longdouble and np.dtype(np.longdouble) in DTYPES:
            dtype = np.int16
        return np.zeros(like.shape, dtype=dtype)
    if kind == "ndim":
        ndim = draw(st.sampled_from([0, 1, 2, 5, 6]).filter(lambda n: n != like.ndim))
        return np.zeros((2,) * ndim, dtype=like.dtype)
    if kind == "masked":
        return np.ma.masked_array(like, mask=np.zeros(like.shape, dtype=bool))
    others = [1.0, 3, "x", b"x", {"a": 1}, [[1.0, 2.0], [3.0]], object()]
    return draw(st.sampled_from(others if optional else [None, *others]))


def sprinkle(rng: np.random.Generator, arrays: dict, value, which: str) -> None:
    """Set one element of ``arrays[which]`` to ``value`` (NaN or +-inf), if it has any."""
    array = arrays.get(which)
    if value is None or array is None or array.size == 0:
        return
    array.reshape(-1)[rng.integers(array.size)] = value


def assert_matches(actual, expected, dtype) -> None:
    """Same shape and dtype, NaN and +-inf in the same places, finite values within tolerance."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if actual.dtype.kind == "i":
        np.testing.assert_array_equal(actual, expected)
        return
    assert actual.dtype == dtype, (actual.dtype, dtype)
    assert actual.flags.c_contiguous
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(actual), np.isposinf(expected))
    np.testing.assert_array_equal(np.isneginf(actual), np.isneginf(expected))
    finite = np.isfinite(expected)
    assert_close(actual[finite], expected[finite], dtype)


def assert_refused(call, names=()) -> None:
    """``call()`` raises ValueError or TypeError whose message is a sentence naming one of ``names``."""
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    message = str(info.value)
    assert len(message) > 15, message
    if names:
        assert any(name in message for name in names), (names, message)
