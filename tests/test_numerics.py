"""Numbers at the edges: NaN and +-inf, float32 accumulation accuracy, offsets beyond 2**31.

* Non-finite values propagate as IEEE arithmetic on the definitions says: every op is a sum of
  products in which the zero padding takes part (``0 * inf`` and ``0 * NaN`` are NaN), as in the
  NumPy reference and PyTorch; max pooling lets NaN win, average pooling sums the taps inside.
* float32 results stay within the worst-case bound of a float32 sum of ``K`` products,
  ``K * 2**-24 * sum |products|``, of the float64 reference (README, "Guarantees").
* Arrays with more than 2**31 elements index correctly (``slow``: run with ``--run-slow``).
"""

import numpy as np
import pytest
from _helpers import CONV_OPS, DTYPE_IDS, ConvCase, TransposeCase, run_conv_op
from conftest import DTYPES, assert_close

import convx.functional as F
from convx.reference import conv as reference
from convx.reference import pooling as reference_pooling


def assert_same_values(actual, expected, dtype):
    """NaN exactly where expected, +-inf exactly where expected (with its sign), the rest close."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(actual), np.isposinf(expected))
    np.testing.assert_array_equal(np.isneginf(actual), np.isneginf(expected))
    finite = np.isfinite(expected)
    assert_close(actual[finite], expected[finite], dtype)


# Padded geometries for every kernel family: im2col (dense, grouped), the direct loops
# (depthwise, channel multiplier) and 1x1 with padding (im2col too).
PADDED_CASES = {
    "dense": ConvCase(2, 3, 7, 8, 4, (3, 3), padding=1),
    "grouped-strided": ConvCase(2, 4, 9, 8, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2),
    "depthwise": ConvCase(2, 4, 7, 9, 4, (3, 3), padding=1, groups=4),
    "depthwise-x2-dilated": ConvCase(2, 3, 9, 8, 6, (3, 2), stride=(1, 2), padding=(2, 1), dilation=2, groups=3),
    # Padding only at the bottom/right (the extra zero of 'same' with an even kernel).
    "depthwise-same-even-kernel": ConvCase(2, 3, 5, 6, 3, (2, 2), padding="same", groups=3),
    "1x1-padded": ConvCase(2, 3, 4, 5, 2, (1, 1), padding=1),
}

NON_FINITE = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}


def _poison(array, value, rng, count=2):
    flat = array.reshape(-1)
    flat[rng.choice(flat.size, size=count, replace=False)] = value


@pytest.mark.parametrize("which", ["x", "weight", "bias", "grad_out"])
@pytest.mark.parametrize("value", list(NON_FINITE))
@pytest.mark.parametrize("op", CONV_OPS)
@pytest.mark.parametrize("name", list(PADDED_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_non_finite_values_in_any_operand_propagate_as_in_the_reference(dtype, name, op, value, which, rng):
    # The reference pads with explicit zeros, so a non-finite weight meets the padding in a
    # product 0 * inf = NaN, as PyTorch's does; the depthwise loops used to skip those products.
    case = PADDED_CASES[name]
    arrays = dict(zip(["x", "weight", "bias", "grad_out"], case.arrays(rng, dtype)))
    _poison(arrays[which], NON_FINITE[value], rng, count=1 if which == "bias" else 2)
    outputs = run_conv_op(F, op, *arrays.values(), case.kwargs)
    with np.errstate(invalid="ignore", over="ignore"):
        expected = run_conv_op(reference, op, *arrays.values(), case.kwargs)
    for out, ref in zip(outputs, expected, strict=True):
        assert_same_values(out, ref, dtype)


@pytest.mark.parametrize("value", list(NON_FINITE))
@pytest.mark.parametrize("groups", [1, 3], ids=["dense", "depthwise"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_conv_transpose2d_non_finite_weight(dtype, groups, value, rng):
    case = TransposeCase(2, 3, 5, 6, 3, (3, 3), stride=2, padding=1, output_padding=1, groups=groups)
    x, weight, bias = case.arrays(rng, dtype)
    _poison(weight, NON_FINITE[value], rng, count=1)
    with np.errstate(invalid="ignore"):
        expected = reference.conv_transpose2d(x, weight, bias, **case.kwargs)
    assert_same_values(F.conv_transpose2d(x, weight, bias, **case.kwargs), expected, dtype)
