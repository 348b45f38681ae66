"""Property-based tests of the 3-D convolutions (Hypothesis; profiles in conftest.py).

Random volumes (empty batches, empty spatial axes), kernels, strides, dilations, groups, every
padding spelling, data layout (NCDHW, NDHWC) and memory layout, values with NaN and +-inf: calls
with a non-empty output agree with ``convx.reference.conv3d`` (channels last: on the transposed
data), forward, both gradients and the transposed convolution; the others raise ValueError naming
what is wrong.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("hypothesis")

from _fuzz import DTYPES, LAYOUT_NAMES, assert_matches, assert_refused, in_layout  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import convx  # noqa: E402
from convx.reference import conv3d as reference  # noqa: E402


def _values(rng, shape, dtype, special):
    values = rng.standard_normal(shape).astype(dtype)
    if special and values.size:
        flat = values.reshape(-1)
        spots = rng.choice(flat.size, size=max(1, flat.size // 8), replace=False)
        flat[spots] = rng.choice(np.array([np.nan, np.inf, -np.inf], dtype=dtype), size=spots.size)
    return values


def _triple(draw, low, high):
    return tuple(draw(st.integers(low, high)) for _ in range(3))


@st.composite
def convolutions(draw):
    groups = draw(st.integers(1, 3))
    c_in = groups * draw(st.integers(1, 2))
    c_out = groups * draw(st.integers(1, 3))
    kernel = _triple(draw, 1, 3)
    stride = _triple(draw, 1, 3)
    dilation = _triple(draw, 1, 2)
    sizes = _triple(draw, 0, 6)
    batch = draw(st.integers(0, 2))
    spelling = draw(st.sampled_from(["int", "triple", "sides", "same", "valid"]))
    if spelling == "int":
        padding = draw(st.integers(0, 2))
    elif spelling == "triple":
        padding = _triple(draw, 0, 2)
    elif spelling == "sides":
        padding = tuple(_triple(draw, 0, 2)[:2] for _ in range(3))
    else:
        padding = spelling
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    special = draw(st.booleans())
    x = _values(rng, (batch, c_in, *sizes), dtype, special)
    weight = _values(rng, (c_out, c_in // groups, *kernel), dtype, False)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    data_layout = draw(st.sampled_from(["NCDHW", "NDHWC"]))
    laid = _to_layout(x, data_layout)
    return x, in_layout(np.ascontiguousarray(laid), draw(st.sampled_from(LAYOUT_NAMES))), weight, kwargs, rng, data_layout


def _to_layout(array, data_layout):
    """A channels-first batch (N, C, D, H, W) in ``data_layout`` (a view)."""
    return np.moveaxis(array, 1, -1) if data_layout == "NDHWC" else array


def _to_first(array, data_layout):
    return np.moveaxis(array, -1, 1) if data_layout == "NDHWC" else array


def _sides(padding, sizes, kernel, stride, dilation):
    if padding == "valid":
        return ((0, 0),) * 3
    if padding == "same":
        sides = []
        for size, k, s, d in zip(sizes, kernel, stride, dilation):
            total = max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
            sides.append((total // 2, total - total // 2))
        return tuple(sides)
    if isinstance(padding, int):
        return ((padding, padding),) * 3
    if isinstance(padding[0], tuple):
        return padding
    return tuple((p, p) for p in padding)


@given(case=convolutions())
def test_conv3d_matches_reference_or_refuses(case):
    x, x_laid, weight, kwargs, rng, data_layout = case
    kwargs = {**kwargs, "layout": data_layout}
    sizes, kernel = x.shape[2:], weight.shape[2:]
    if min(sizes) < 1:
        assert_refused(lambda: convx.conv3d(x_laid, weight, **kwargs), ("non-empty",))
        return
    sides = _sides(kwargs["padding"], sizes, kernel, kwargs["stride"], kwargs["dilation"])
    out = [(n + b + a - d * (k - 1) - 1) // s + 1
           for n, (b, a), k, s, d in zip(sizes, sides, kernel, kwargs["stride"], kwargs["dilation"])]
    if min(out) < 1:
        assert_refused(lambda: convx.conv3d(x_laid, weight, **kwargs), ("dilated kernel",))
        return
    y = convx.conv3d(x_laid, weight, **kwargs)
    grad_out = rng.standard_normal((x.shape[0], weight.shape[0], *out)).astype(x.dtype)
    grad_out_laid = np.ascontiguousarray(_to_layout(grad_out, data_layout))
    grad_x, grad_w, grad_b = convx.conv3d_backward(grad_out_laid, x_laid, weight, **kwargs)
    ref_kwargs = {k: v for k, v in kwargs.items() if k != "layout"}
    with np.errstate(invalid="ignore", over="ignore"):  # the reference's NumPy products of inf and 0
        expected = (reference.conv3d(x, weight, **ref_kwargs),
                    reference.conv3d_backward_input(grad_out, weight, x.shape, **ref_kwargs),
                    reference.conv3d_backward_weight(grad_out, x, weight.shape, **ref_kwargs))
    assert_matches(_to_first(y, data_layout), expected[0], x.dtype)
    assert_matches(_to_first(grad_x, data_layout), expected[1], x.dtype)
    assert_matches(grad_w, expected[2], x.dtype)
    assert_matches(grad_b, grad_out.sum(axis=(0, 2, 3, 4)), x.dtype)
    if x.shape[0] and not isinstance(kwargs["padding"], str):
        # conv_transpose3d is the input gradient, given the input's size
        back = convx.conv_transpose3d(grad_out_laid, weight, stride=kwargs["stride"], padding=sides,
                                      dilation=kwargs["dilation"], groups=kwargs["groups"], output_size=sizes,
                                      layout=data_layout)
        assert_matches(back, grad_x, x.dtype)
