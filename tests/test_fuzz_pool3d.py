"""Property-based tests of the 3-D pooling ops (Hypothesis; profiles in conftest.py).

Random volumes (empty batches and channels too), windows, strides, paddings in every spelling (an
int, a triple, per-side pairs, 'valid', 'same', 'same_lower'), dilations, flags, memory layouts and
both data layouts (NCDHW, NDHWC), values with ties, NaN and +-inf: calls that the rules allow
(modelled here from them: each side's padding at most ``dilation * (kernel_size - 1)``, ONNX's
limit, no padding word with ``ceil_mode``, a non-empty output, and no window wholly in the padding)
agree with ``convx.reference.pooling3d``, forward and backward, indices included; the others raise
ValueError naming what is wrong.
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


def _pool_out(size, kernel, stride, before, after, dilation, ceil_mode):
    """PyTorch's pooling_output_shape, written out again, with the padding per side."""
    numerator = size + before + after - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1
    if ceil_mode and (out - 1) * stride >= size + before:
        out -= 1
    return out


def _has_empty_window(size, out, kernel, stride, before, dilation) -> bool:
    return any(
        not any(0 <= o * stride - before + t * dilation < size for t in range(kernel)) for o in range(max(out, 0))
    )


def _sides(padding, sizes, kernel, stride, dilation):
    """The padding as (before, after) per axis: ONNX's SAME_UPPER / SAME_LOWER for the words."""
    if padding == "valid":
        return ((0, 0),) * 3
    if isinstance(padding, str):
        sides = []
        for n, k, s, d in zip(sizes, kernel, stride, dilation):
            total = max((-(-n // s) - 1) * s + d * (k - 1) + 1 - n, 0)
            small, large = total // 2, total - total // 2
            sides.append((small, large) if padding == "same" else (large, small))
        return tuple(sides)
    return padding


def _reasons(sizes, kernel, stride, padding, dilation, ceil_mode) -> tuple[str, ...]:
    """Empty when the rules allow the window sweep, else words one of which the error names."""
    if isinstance(padding, str) and padding != "valid" and ceil_mode:
        return ("ceil_mode",)
    if not isinstance(padding, str) and any(side > d * (k - 1) for pair, k, d in zip(padding, kernel, dilation)
                                            for side in pair):
        return ("padding",)
    sides = _sides(padding, sizes, kernel, stride, dilation)
    outs = [_pool_out(size, k, s, before, after, d, ceil_mode)
            for size, k, s, (before, after), d in zip(sizes, kernel, stride, sides, dilation)]
    if min(outs) < 1:
        return ("would be",)
    if any(_has_empty_window(size, out, k, s, before, d)
           for size, out, k, s, (before, _), d in zip(sizes, outs, kernel, stride, sides, dilation)):
        return ("padding", "dilation")
    return ()


def _spelled(values):
    return values[0] if len(set(values)) == 1 else values


def _last(array):
    """A channels-first array, batched or not, as channels last (a view)."""
    return np.moveaxis(array, -4, -1)


def _first(array):
    """A channels-last result as channels first, checked C-contiguous in its own layout first."""
    assert array.flags.c_contiguous
    return np.ascontiguousarray(np.moveaxis(array, -1, -4))


def _shape_last(shape):
    return (*shape[:-4], *shape[-3:], shape[-4])


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
def paddings(draw):
    """A padding as the reference takes it (per-side pairs or a word) and as spelled to convx."""
    kind = draw(st.sampled_from(["int", "triple", "sides", "valid", "same", "same_lower"]))
    if kind in ("valid", "same", "same_lower"):
        return kind, kind
    if kind == "int":
        p = draw(st.integers(0, 3))
        return ((p, p),) * 3, p
    if kind == "triple":
        triple = _triple(draw, 0, 3)
        return tuple((p, p) for p in triple), _spelled(triple)
    sides = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(3))
    return sides, sides


@st.composite
def windows(draw, with_dilation):
    kernel = _triple(draw, 1, 4)
    stride = _triple(draw, 1, 3)
    padding, spelled = draw(paddings())
    dilation = _triple(draw, 1, 3) if with_dilation else (1, 1, 1)
    return kernel, stride, (padding, spelled), dilation, draw(st.booleans())


layouts = st.sampled_from(["NCDHW", "NDHWC"])


@given(volume=volumes(), window=windows(with_dilation=True), layout=layouts)
def test_max_pool3d_matches_reference_or_refuses(volume, window, layout):
    x, x_laid, rng = volume
    kernel, stride, (padding, spelled), dilation, ceil_mode = window
    last = layout == "NDHWC"
    x_in = _last(x_laid) if last else x_laid
    args = (_spelled(kernel), _spelled(stride), spelled, _spelled(dilation), ceil_mode)
    reasons = _reasons(x.shape[-3:], kernel, stride, padding, dilation, ceil_mode)
    if reasons:
        assert_refused(lambda: F.max_pool3d(x_in, *args, layout=layout), reasons)
        return
    y, indices = F.max_pool3d(x_in, *args, return_indices=True, layout=layout)
    if last:
        y, indices = _first(y), _first(indices)
    y_ref, indices_ref = reference.max_pool3d(x, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    assert_matches(y, y_ref, x.dtype)
    assert_matches(indices, indices_ref, x.dtype)
    grad_out = rng.standard_normal(y.shape).astype(x.dtype)
    expected = reference.max_pool3d_backward(grad_out, indices_ref, x.shape)
    if last:
        grad_x = _first(F.max_pool3d_backward(_last(grad_out), _last(indices), _shape_last(x.shape), layout=layout))
    else:
        grad_x = F.max_pool3d_backward(grad_out, indices, x.shape)
    assert_matches(grad_x, expected, x.dtype)


@given(volume=volumes(), window=windows(with_dilation=True), count_include_pad=st.booleans(),
       divisor=st.one_of(st.none(), st.integers(1, 9)), layout=layouts)
def test_avg_pool3d_matches_reference_or_refuses(volume, window, count_include_pad, divisor, layout):
    x, x_laid, rng = volume
    kernel, stride, (padding, spelled), dilation, ceil_mode = window
    last = layout == "NDHWC"
    x_in = _last(x_laid) if last else x_laid
    args = (_spelled(kernel), _spelled(stride), spelled, ceil_mode, count_include_pad, divisor, _spelled(dilation))
    reasons = _reasons(x.shape[-3:], kernel, stride, padding, dilation, ceil_mode)
    if reasons:
        assert_refused(lambda: F.avg_pool3d(x_in, *args, layout=layout), reasons)
        return
    y = F.avg_pool3d(x_in, *args, layout=layout)
    plain = (kernel, stride, padding, ceil_mode, count_include_pad, divisor, dilation)
    assert_matches(_first(y) if last else y, reference.avg_pool3d(x, *plain), x.dtype)
    grad_out = in_layout(rng.standard_normal((_first(y) if last else y).shape).astype(x.dtype), "c-contiguous")
    expected = reference.avg_pool3d_backward(grad_out, x.shape, *plain)
    if last:
        grad_x = _first(F.avg_pool3d_backward(_last(grad_out), _shape_last(x.shape), *args, layout=layout))
    else:
        grad_x = F.avg_pool3d_backward(grad_out, x.shape, *args)
    assert_matches(grad_x, expected, x.dtype)


@given(volume=volumes(), output_size=st.tuples(*(st.one_of(st.none(), st.integers(1, 8)) for _ in range(3))),
       layout=layouts)
def test_adaptive_pool3d_matches_reference_or_refuses(volume, output_size, layout):
    x, x_laid, rng = volume
    last = layout == "NDHWC"
    x_in = _last(x_laid) if last else x_laid
    if min(x.shape[-3:]) < 1:
        assert_refused(lambda: F.adaptive_avg_pool3d(x_in, output_size, layout=layout), ("non-empty volume",))
        assert_refused(lambda: F.adaptive_max_pool3d(x_in, output_size, layout=layout), ("non-empty volume",))
        return
    y = F.adaptive_avg_pool3d(x_in, output_size, layout=layout)
    y = _first(y) if last else y
    assert_matches(y, reference.adaptive_avg_pool3d(x, output_size), x.dtype)
    grad_out = rng.standard_normal(y.shape).astype(x.dtype)
    expected = reference.adaptive_avg_pool3d_backward(grad_out, x.shape)
    if last:
        grad_x = _first(F.adaptive_avg_pool3d_backward(_last(grad_out), _shape_last(x.shape), layout=layout))
    else:
        grad_x = F.adaptive_avg_pool3d_backward(grad_out, x.shape)
    assert_matches(grad_x, expected, x.dtype)
    y, indices = F.adaptive_max_pool3d(x_in, output_size, return_indices=True, layout=layout)
    if last:
        y, indices = _first(y), _first(indices)
    y_ref, indices_ref = reference.adaptive_max_pool3d(x, output_size, return_indices=True)
    assert_matches(y, y_ref, x.dtype)
    assert_matches(indices, indices_ref, x.dtype)
