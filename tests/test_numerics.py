"""Numbers at the edges: NaN and +-inf, float32 accumulation accuracy, offsets beyond 2**31.

* Non-finite values propagate as IEEE arithmetic on the definitions says: every op is a sum of
  products in which the zero padding takes part (``0 * inf`` and ``0 * NaN`` are NaN), as in the
  NumPy reference and PyTorch; max pooling lets NaN win, average pooling sums the taps inside.
* float32 results stay within the worst-case bound of a float32 sum of ``K`` products,
  ``K * 2**-24 * sum |products|``, of the float64 reference (README, "Guarantees").
* Arrays with more than 2**31 elements index correctly (``slow``: run with ``--run-slow``).
"""

import math
import mmap

import numpy as np
import pytest
from _helpers import CONV_OPS, DTYPE_IDS, ConvCase, TransposeCase, run_conv_op
from conftest import DTYPES, assert_close

import convx._batching
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
    # Wide enough for the 3x3 kernels' register blocks (16 columns at a time).
    "depthwise-wide": ConvCase(2, 3, 6, 40, 3, (3, 3), padding=1, groups=3),
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


# ---------------------------------------------------------------------------------------------
# float32 accumulation: within the worst-case bound of a float32 sum of K products.

UNIT_ROUNDOFF = 2.0**-24


def _gamma(terms):
    """gamma_K = K u / (1 - K u): the bound on the relative error of any float32 sum of K products."""
    return terms * UNIT_ROUNDOFF / (1 - terms * UNIT_ROUNDOFF)


def assert_within_sum_bound(actual, exact, magnitude, terms):
    """|actual - exact| <= gamma_K * sum |terms|, elementwise (``magnitude`` is that sum): the
    guarantee. On random data rounding errors mostly cancel, so the error also stays under
    4 sqrt(K) u sum |terms|, a far tighter check (of the summation, e.g. that no partial sum
    is kept in a narrower type or dropped)."""
    error = np.abs(actual.astype(np.float64) - exact)
    tiny = np.finfo(np.float64).tiny
    worst = np.max(error / np.maximum(_gamma(terms) * magnitude, tiny))
    assert worst <= 1, f"error {worst:.3g} times the bound gamma_{terms}"
    typical = np.max(error / np.maximum(4 * np.sqrt(terms) * UNIT_ROUNDOFF * magnitude, tiny))
    assert typical <= 1, f"error {typical:.3g} times 4 sqrt({terms}) u sum |terms|"


ACCURACY_CASES = {
    # C_in * kH * kW = 2304 products per output.
    "wide-reduction": ConvCase(2, 256, 8, 9, 8, (3, 3), padding=1),
    # A weight gradient over N * H_out * W_out = 64 * 32 * 32 = 65536 products.
    "large-batch": ConvCase(64, 2, 32, 32, 3, (3, 3), padding=1),
    "grouped-large-batch": ConvCase(48, 4, 24, 24, 4, (5, 5), padding=2, groups=2),
    "depthwise-large-batch": ConvCase(64, 3, 32, 32, 3, (3, 3), padding=1, groups=3),
}


@pytest.mark.parametrize("sub_batches", ["one-call", "one-image-per-call"])
@pytest.mark.parametrize("name", list(ACCURACY_CASES))
def test_float32_sums_stay_within_the_bound_of_the_float64_reference(name, sub_batches, monkeypatch):
    case = ACCURACY_CASES[name]
    if sub_batches == "one-image-per-call":
        # Weight and bias gradients are then summed across sub-batches too.
        monkeypatch.setattr(convx._batching, "SUB_BATCH_WORK", 1)
    rng = np.random.default_rng(7)
    x, weight, bias, grad_out = case.arrays(rng, np.float32)
    exact = {k: v.astype(np.float64) for k, v in dict(x=x, weight=weight, bias=bias, grad_out=grad_out).items()}
    absolute = {k: np.abs(v) for k, v in exact.items()}
    kwargs = case.kwargs
    k_h, k_w = case.kernel
    c_in_group, c_out_group = case.c_in // case.groups, case.c_out // case.groups
    out_pixels = case.n * int(np.prod(case.out_size()))

    def both(f, *names, **extra):
        return f(*(exact[n] for n in names), **extra), f(*(absolute[n] for n in names), **extra)

    checks = [
        (F.conv2d(x, weight, bias, **kwargs),
         both(reference.conv2d, "x", "weight", "bias", **kwargs), c_in_group * k_h * k_w + 1),
        (F.conv2d_backward_input(grad_out, weight, x.shape, **kwargs),
         both(lambda g, w: reference.conv2d_backward_input(g, w, x.shape, **kwargs), "grad_out", "weight"),
         c_out_group * k_h * k_w),
        (F.conv2d_backward_weight(grad_out, x, weight.shape, **kwargs),
         both(lambda g, a: reference.conv2d_backward_weight(g, a, weight.shape, **kwargs), "grad_out", "x"),
         out_pixels),
        (F.conv2d_backward_bias(grad_out), both(reference.conv2d_backward_bias, "grad_out"), out_pixels),
    ]
    fused = F.conv2d_backward(grad_out, x, weight, **kwargs)
    checks += [(fused[i], checks[j][1], checks[j][2]) for i, j in ((0, 1), (1, 2), (2, 3))]
    for actual, (exact_value, magnitude), terms in checks:
        assert actual.dtype == np.float32
        assert_within_sum_bound(actual, exact_value, magnitude, terms)


@pytest.mark.parametrize("sub_batches", ["one-call", "one-image-per-call"])
def test_float32_pooling_sums_stay_within_the_bound(sub_batches, monkeypatch):
    if sub_batches == "one-image-per-call":
        monkeypatch.setattr(convx._batching, "SUB_BATCH_WORK", 1)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 2, 256, 192)).astype(np.float32)
    exact, absolute = x.astype(np.float64), np.abs(x.astype(np.float64))
    # Global average pooling: 49152 terms, two divisions; a 15x15 average: 225 terms, one.
    for actual, f, terms in [
        (F.adaptive_avg_pool2d(x, 1), lambda a: reference_pooling.adaptive_avg_pool2d(a, 1), 256 * 192 + 2),
        (F.adaptive_avg_pool2d(x, (3, 5)), lambda a: reference_pooling.adaptive_avg_pool2d(a, (3, 5)),
         86 * 39 + 2),
        (F.avg_pool2d(x, 15, 4, 7), lambda a: reference_pooling.avg_pool2d(a, 15, 4, 7), 15 * 15 + 1),
    ]:
        assert_within_sum_bound(actual, f(exact), f(absolute), terms)
    grad = rng.standard_normal((3, 2, 3, 5)).astype(np.float32)
    actual = F.adaptive_avg_pool2d_backward(grad, x.shape)
    expected = reference_pooling.adaptive_avg_pool2d_backward(grad.astype(np.float64), x.shape)
    magnitude = reference_pooling.adaptive_avg_pool2d_backward(np.abs(grad.astype(np.float64)), x.shape)
    assert_within_sum_bound(actual, expected, magnitude, 2 * 2 + 2)


# ---------------------------------------------------------------------------------------------
# Offsets beyond 2**31 elements. The arrays are anonymous mappings that are mostly never
# written: reading them maps the operating system's shared zero page (huge pages where the
# kernel allows), so they cost gigabytes of address space, not of memory. The values that
# matter are planted where an offset computed in 32 bits would have wrapped. Only ops whose
# outputs are small run here: an output as large as the input would be real memory.

# Two planes of 32770 x 32770 float32: 2**31 + 262152 elements (8.6 GB of address space),
# each plane within the C int that the convolution's BLAS calls take; the last quarter of the
# second plane lies beyond element 2**31.
HUGE_BATCH = (2, 1, 32770, 32770)


def _huge_zeros(shape):
    """A C-contiguous, writable float32 array of zeros on a fresh anonymous mapping."""
    buffer = mmap.mmap(-1, math.prod(shape) * 4, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        buffer.madvise(mmap.MADV_HUGEPAGE)
    x = np.frombuffer(buffer, dtype=np.float32).reshape(shape)
    assert x.size > 2**31 and x.flags.c_contiguous and x.flags.writeable
    return x


@pytest.mark.slow
def test_conv_ops_index_beyond_two_to_the_31_elements():
    x = _huge_zeros(HUGE_BATCH)
    # Stride 16384 with a 2x2 kernel reads 3 x 3 windows per image, at rows and columns
    # {0, 1, 16384, 16385, 32768, 32769}; the last windows of image 1 lie past element 2**31.
    stride = 16384
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((3, 1, 2, 2)).astype(np.float32)
    taps = [0, 1, stride, stride + 1, 2 * stride, 2 * stride + 1]
    planted = rng.integers(-4, 5, size=(2, 6, 6)).astype(np.float32)
    x[:, 0][(slice(None), *np.ix_(taps, taps))] = planted
    assert np.flatnonzero(x.reshape(-1)[2**31:]).size > 0  # values beyond element 2**31
    small = planted[:, None]  # (2, 1, 6, 6): the same windows, side by side
    y = F.conv2d(x, weight, stride=stride)
    assert y.shape == (2, 3, 3, 3)
    np.testing.assert_allclose(y, reference.conv2d(small.astype(np.float64), weight.astype(np.float64), stride=2),
                               rtol=1e-6)
    grad_out = rng.standard_normal(y.shape).astype(np.float32)
    grad_w = F.conv2d_backward_weight(grad_out, x, weight.shape, stride=stride)
    np.testing.assert_allclose(
        grad_w, reference.conv2d_backward_weight(grad_out.astype(np.float64), small.astype(np.float64),
                                                 weight.shape, stride=2), rtol=1e-5, atol=1e-5)
    # The same two planes as two channels of one image, through the depthwise kernels.
    depthwise = rng.standard_normal((2, 1, 2, 2)).astype(np.float32)
    y = F.conv2d(x.reshape(1, 2, *HUGE_BATCH[2:]), depthwise, stride=stride, groups=2)
    np.testing.assert_allclose(
        y, reference.conv2d(small.reshape(1, 2, 6, 6).astype(np.float64), depthwise.astype(np.float64), stride=2,
                            groups=2), rtol=1e-6)
    # A reduction over every element: the bias gradient of the whole batch.
    np.testing.assert_allclose(F.conv2d_backward_bias(x), [planted.sum()], rtol=1e-6)


@pytest.mark.slow
def test_pooling_indexes_beyond_two_to_the_31_elements():
    x = _huge_zeros(HUGE_BATCH)
    height, width = HUGE_BATCH[2:]
    x[1, 0, -1, -2] = 7  # element 2**31 + 262150 of the batch
    x[1, 0, 5, 3] = -9
    x[0, 0, 100, 200] = 3
    y, indices = F.max_pool2d(x, (height, width), return_indices=True)
    np.testing.assert_array_equal(y.ravel(), [3, 7])
    np.testing.assert_array_equal(indices.ravel(), [100 * width + 200, (height - 1) * width + width - 2])
    y, indices = F.adaptive_max_pool2d(x, 1, return_indices=True)
    np.testing.assert_array_equal(indices.ravel(), [100 * width + 200, (height - 1) * width + width - 2])
    np.testing.assert_allclose(F.adaptive_avg_pool2d(x, 1).ravel(), np.array([3, -2]) / (height * width), rtol=1e-6)


@pytest.mark.slow
def test_pooling_indexes_a_plane_of_more_than_two_to_the_31_elements():
    # One plane of 46341 x 46341 > 2**31 elements: the argmax itself no longer fits a C int.
    side = 46341
    x = _huge_zeros((1, 1, side, side))
    x[0, 0, -1, -3] = 5
    expected_index = side * side - 3
    assert expected_index > 2**31
    y, indices = F.max_pool2d(x, side, return_indices=True)
    assert y.ravel().tolist() == [5] and indices.ravel().tolist() == [expected_index]
    y, indices = F.adaptive_max_pool2d(x, 1, return_indices=True)
    assert indices.ravel().tolist() == [expected_index]
