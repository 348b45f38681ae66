"""Property-based tests of the 3-D pooling ops (Hypothesis; profiles in conftest.py).

Random volumes (empty batches and channels too), windows, strides, paddings, dilations, flags and
memory layouts, values with ties, NaN and +-inf: calls that PyTorch's rules allow (modelled here
from those rules: padding at most half the kernel, a non-empty output, and, as convx adds, no
window wholly in the padding) agree with ``convx.reference.pooling3d``, forward and backward,
indices included; the others raise ValueError naming what is wrong.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("hypothesis")

from _fuzz import DTYPES, LAYOUT_NAMES, assert_matches, assert_refused, in_layout  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import convx.functional as F  # noqa: E402
from convx.reference import pooling3d as reference  # noqa: E402


def _values(rng, shape, dtype, kind):
    """Normal values; small integers (ties everywhere); or integers salted with NaN and +-inf."""
    if kind == "normal":
        return rng.standard_normal(shape).astype(dtype)
    values = rng.integers(-2, 3, size=shape).astype(dtype)
    if kind == "special" and values.size:
        flat = values.reshape(-1)
        spots = rng.choice(flat.size, size=max(1, flat.size // 6), replace=False)
        flat[spots] = rng.choice(np.array([np.nan, np.inf, -np.inf], dtype=dtype), size=spots.size)
    return values


def _pool_out(size, kernel, stride, padding, dilation, ceil_mode):
    """PyTorch's pooling_output_shape, written out again."""
    numerator = size + 2 * padding - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _has_empty_window(size, out, kernel, stride, padding, dilation) -> bool:
    return any(
        not any(0 <= o * stride - padding + t * dilation < size for t in range(kernel)) for o in range(max(out, 0))
    )


def _reasons(sizes, kernel, stride, padding, dilation, ceil_mode) -> tuple[str, ...]:
    """Empty when the rules allow the window sweep, else words one of which the error names."""
    if any(p > k // 2 for p, k in zip(padding, kernel)):
        return ("padding",)
    outs = [_pool_out(*args, ceil_mode) for args in zip(sizes, kernel, stride, padding, dilation)]
    if min(outs) < 1:
        return ("would be",)
    if any(_has_empty_window(size, out, *args) for size, out, *args in zip(sizes, outs, kernel, stride, padding,
                                                                          dilation)):
        return ("padding", "dilation")
    return ()


def _spelled(values):
    return values[0] if len(set(values)) == 1 else values


@st.composite
def volumes(draw, max_size=7):
    unbatched = draw(st.booleans())
    sizes = tuple(draw(st.integers(0, max_size)) for _ in range(3))
    channels = draw(st.integers(0, 3))
    shape = (channels, *sizes) if unbatched else (draw(st.integers(0, 3)), channels, *sizes)
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = _values(rng, shape, dtype, draw(st.sampled_from(["normal", "ties", "special"])))
    return x, in_layout(x, draw(st.sampled_from(LAYOUT_NAMES))), rng


def _triple(draw, low, high):
    return tuple(draw(st.integers(low, high)) for _ in range(3))


@st.composite
def windows(draw, with_dilation):
    kernel = _triple(draw, 1, 4)
    stride = _triple(draw, 1, 3)
    padding = _triple(draw, 0, 2)
    dilation = _triple(draw, 1, 3) if with_dilation else (1, 1, 1)
    return kernel, stride, padding, dilation, draw(st.booleans())


@given(volume=volumes(), window=windows(with_dilation=True))
def test_max_pool3d_matches_reference_or_refuses(volume, window):
    x, x_laid, rng = volume
    kernel, stride, padding, dilation, ceil_mode = window
    args = (_spelled(kernel), _spelled(stride), _spelled(padding), _spelled(dilation), ceil_mode)
    reasons = _reasons(x.shape[-3:], kernel, stride, padding, dilation, ceil_mode)
    if reasons:
        assert_refused(lambda: F.max_pool3d(x_laid, *args), reasons)
        return
    y, indices = F.max_pool3d(x_laid, *args, return_indices=True)
    y_ref, indices_ref = reference.max_pool3d(x, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    assert_matches(y, y_ref, x.dtype)
    assert_matches(indices, indices_ref, x.dtype)
    grad_out = rng.standard_normal(y.shape).astype(x.dtype)
    assert_matches(F.max_pool3d_backward(grad_out, indices, x.shape),
                   reference.max_pool3d_backward(grad_out, indices_ref, x.shape), x.dtype)


@given(volume=volumes(), window=windows(with_dilation=False), count_include_pad=st.booleans(),
       divisor=st.one_of(st.none(), st.integers(1, 9)))
def test_avg_pool3d_matches_reference_or_refuses(volume, window, count_include_pad, divisor):
    x, x_laid, rng = volume
    kernel, stride, padding, _, ceil_mode = window
    args = (_spelled(kernel), _spelled(stride), _spelled(padding), ceil_mode, count_include_pad, divisor)
    reasons = _reasons(x.shape[-3:], kernel, stride, padding, (1, 1, 1), ceil_mode)
    if reasons:
        assert_refused(lambda: F.avg_pool3d(x_laid, *args), reasons)
        return
    y = F.avg_pool3d(x_laid, *args)
    plain = (kernel, stride, padding, ceil_mode, count_include_pad, divisor)
    assert_matches(y, reference.avg_pool3d(x, *plain), x.dtype)
    grad_out = in_layout(rng.standard_normal(y.shape).astype(x.dtype), "c-contiguous")
    assert_matches(F.avg_pool3d_backward(grad_out, x.shape, *args),
                   reference.avg_pool3d_backward(grad_out, x.shape, *plain), x.dtype)


@given(volume=volumes(), output_size=st.tuples(*(st.one_of(st.none(), st.integers(1, 8)) for _ in range(3))))
def test_adaptive_pool3d_matches_reference_or_refuses(volume, output_size):
    x, x_laid, rng = volume
    if min(x.shape[-3:]) < 1:
        assert_refused(lambda: F.adaptive_avg_pool3d(x_laid, output_size), ("non-empty volume",))
        assert_refused(lambda: F.adaptive_max_pool3d(x_laid, output_size), ("non-empty volume",))
        return
    y = F.adaptive_avg_pool3d(x_laid, output_size)
    assert_matches(y, reference.adaptive_avg_pool3d(x, output_size), x.dtype)
    grad_out = rng.standard_normal(y.shape).astype(x.dtype)
    assert_matches(F.adaptive_avg_pool3d_backward(grad_out, x.shape),
                   reference.adaptive_avg_pool3d_backward(grad_out, x.shape), x.dtype)
    y, indices = F.adaptive_max_pool3d(x_laid, output_size, return_indices=True)
    y_ref, indices_ref = reference.adaptive_max_pool3d(x, output_size, return_indices=True)
    assert_matches(y, y_ref, x.dtype)
    assert_matches(indices, indices_ref, x.dtype)
