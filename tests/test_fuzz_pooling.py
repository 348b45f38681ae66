"""Property-based tests of the pooling ops (Hypothesis; profiles in conftest.py).

Random planes (empty batches and channels too), windows, strides, paddings (pairs, per side
and the words 'valid', 'same' and 'same_lower'), dilations (average pooling's too), flags,
argument spellings and memory layouts, values with ties, NaN and +-inf: calls that PyTorch's
rules allow, with ONNX's padding (modelled here from those rules, not from convx's checks), agree with
``convx.reference.pooling``, forward and backward, indices included; the others raise
ValueError or TypeError with a message. Then one argument at a time is replaced by a value
that is wrong in any context.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("hypothesis")

from _fuzz import (  # noqa: E402
    DTYPES,
    LAYOUT_NAMES,
    assert_matches,
    assert_refused,
    bad_array,
    bad_geometry_values,
    in_layout,
    spelled,
)
from hypothesis import assume, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import convx.functional as F  # noqa: E402
import convx.functional.pooling  # noqa: E402
from convx.reference import pooling as reference  # noqa: E402


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
    """PyTorch's pooling_output_shape, written out again, with the padding per side (ONNX's)."""
    numerator = size + before + after - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1
    if ceil_mode and (out - 1) * stride >= size + before:
        out -= 1
    return out


def _has_empty_window(size, out, kernel, stride, before, dilation) -> bool:
    return any(
        not any(0 <= o * stride - before + t * dilation < size for t in range(kernel)) for o in range(max(out, 0))
    )


PADDING_WORDS = ("valid", "same", "same_lower")


def _model_sides(padding, sizes, kernel, stride, dilation):
    """((top, bottom), (left, right)) of a padding spelled as a pair, per side or as a word: 'same'
    (ONNX's SAME_UPPER) gives ceil(size / stride) outputs with the least total padding, the odd one
    after; 'same_lower' puts it before; 'valid' pads nothing."""
    if padding == "valid":
        return ((0, 0), (0, 0))
    if isinstance(padding, str):
        sides = []
        for size, k, s, d in zip(sizes, kernel, stride, dilation):
            total = max(0, (-(-size // s) - 1) * s + d * (k - 1) + 1 - size)
            half, rest = total // 2, total - total // 2
            sides.append((rest, half) if padding == "same_lower" else (half, rest))
        return tuple(sides)
    if isinstance(padding[0], tuple):
        return padding
    return tuple((p, p) for p in padding)


def _window_reasons(height, width, kernel, stride, padding, dilation, ceil_mode) -> tuple[str, ...]:
    """Empty when the rules allow the window sweep (PyTorch's, with ONNX's padding: per side, up to
    dilation * (kernel - 1) on each, and the words, which fix the output size and so take no
    ceil_mode), else words one of which the error names."""
    if padding in ("same", "same_lower") and ceil_mode:
        return ("ceil_mode", "padding")
    sides = _model_sides(padding, (height, width), kernel, stride, dilation)
    words = []
    if any(side > d * (k - 1) for pair, k, d in zip(sides, kernel, dilation) for side in pair):
        words += ["padding"]
    outs = [_pool_out(size, k, s, before, after, d, ceil_mode)
            for size, k, s, (before, after), d in zip((height, width), kernel, stride, sides, dilation)]
    if min(outs) < 1:
        words += ["output", "would be"]
    elif any(_has_empty_window(size, out, k, s, before, d) for size, out, k, s, (before, _), d in
             zip((height, width), outs, kernel, stride, sides, dilation)):
        words += ["padding", "dilation"]
    return tuple(words)


@st.composite
def planes(draw, max_size=10):
    """(shape, unbatched, dtype, values kind, layout, seed) of a pooling input."""
    unbatched = draw(st.booleans())
    batch = draw(st.integers(0, 3))
    channels = draw(st.integers(0, 3))
    height, width = draw(st.integers(0, max_size)), draw(st.integers(0, max_size))
    shape = (channels, height, width) if unbatched else (batch, channels, height, width)
    return dict(shape=shape, dtype=draw(st.sampled_from(DTYPES)),
                kind=draw(st.sampled_from(["normal", "ties", "special"])),
                layout=draw(st.sampled_from(LAYOUT_NAMES)), seed=draw(st.integers(0, 2**32 - 1)))


def _make(plane):
    rng = np.random.default_rng(plane["seed"])
    x = _values(rng, plane["shape"], plane["dtype"], plane["kind"])
    grad_rng = np.random.default_rng(plane["seed"] + 1)
    return x, in_layout(x, plane["layout"]), grad_rng


def _pair_draw(draw, low, high):
    return (draw(st.integers(low, high)), draw(st.integers(low, high)))


@st.composite
def paddings(draw):
    """(spelling, plain value) of a padding: a pair as ``spelled``, per side ((top, bottom), (left,
    right)) as tuples or lists of Python or NumPy ints, or a word."""
    form = draw(st.sampled_from(["pair", "pair", "sides", "word"]))
    if form == "word":
        word = draw(st.sampled_from(PADDING_WORDS))
        return word, word
    if form == "pair":
        pair = _pair_draw(draw, 0, 3)
        return draw(spelled(pair)), pair
    sides = (_pair_draw(draw, 0, 3), _pair_draw(draw, 0, 3))
    inner = [draw(st.sampled_from([tuple, list]))((np.int64(before) if draw(st.booleans()) else before, after))
             for before, after in sides]
    return draw(st.sampled_from([tuple, list]))(inner), sides


@st.composite
def window_args(draw, with_dilation):
    kernel = _pair_draw(draw, 1, 5)
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 4), st.integers(1, 4))))
    padding_spelling, padding = draw(paddings())
    dilation = _pair_draw(draw, 1, 3) if with_dilation else (1, 1)
    spelling = dict(kernel_size=draw(spelled(kernel)), stride=None if stride is None else draw(spelled(stride)),
                    padding=padding_spelling)
    if with_dilation:
        spelling["dilation"] = draw(spelled(dilation))
    plain = dict(kernel=kernel, stride=kernel if stride is None else stride, padding=padding, dilation=dilation)
    return spelling, plain


def _plain_kwargs(geometry, with_dilation):
    """The geometry as plain Python ints for the reference, which trusts its arguments."""
    kwargs = dict(kernel_size=geometry["kernel"], stride=geometry["stride"], padding=geometry["padding"])
    if with_dilation:
        kwargs["dilation"] = geometry["dilation"]
    return kwargs


@given(plane=planes(), window=window_args(with_dilation=True), ceil_mode=st.booleans(),
       return_indices=st.booleans())
def test_max_pool2d_and_backward_match_the_reference_or_refuse(plane, window, ceil_mode, return_indices):
    x, laid_out, grad_rng = _make(plane)
    kwargs, geometry = window
    reasons = _window_reasons(*plane["shape"][-2:], *geometry.values(), ceil_mode)
    call = lambda: F.max_pool2d(laid_out, **kwargs, ceil_mode=ceil_mode, return_indices=return_indices)  # noqa: E731
    if reasons:
        assert_refused(call, reasons)
        return
    saved = laid_out.copy()
    result = call()
    expected_y, expected_indices = reference.max_pool2d(x, **_plain_kwargs(geometry, True), ceil_mode=ceil_mode,
                                                        return_indices=True)
    y, indices = result if return_indices else (result, None)
    assert_matches(y, expected_y, plane["dtype"])
    np.testing.assert_array_equal(laid_out, saved)
    if indices is None:
        return
    assert indices.dtype == np.int64
    assert_matches(indices, expected_indices, plane["dtype"])
    grad_out = grad_rng.standard_normal(y.shape).astype(plane["dtype"])
    grad_x = F.max_pool2d_backward(grad_out, indices, x.shape)
    assert_matches(grad_x, reference.max_pool2d_backward(grad_out, indices, x.shape), plane["dtype"])


@given(plane=planes(), window=window_args(with_dilation=True), ceil_mode=st.booleans(),
       count_include_pad=st.booleans(), divisor_override=st.one_of(st.none(), st.integers(1, 7)))
def test_avg_pool2d_and_backward_match_the_reference_or_refuse(plane, window, ceil_mode, count_include_pad,
                                                               divisor_override):
    x, laid_out, grad_rng = _make(plane)
    kwargs, geometry = window
    flags = dict(ceil_mode=ceil_mode, count_include_pad=count_include_pad, divisor_override=divisor_override)
    reasons = _window_reasons(*plane["shape"][-2:], *geometry.values(), ceil_mode)
    if reasons:
        assert_refused(lambda: F.avg_pool2d(laid_out, **kwargs, **flags), reasons)
        grad_out = np.zeros((*plane["shape"][:-2], 1, 1), dtype=plane["dtype"])
        assert_refused(lambda: F.avg_pool2d_backward(grad_out, x.shape, **kwargs, **flags), reasons)
        return
    y = F.avg_pool2d(laid_out, **kwargs, **flags)
    plain = _plain_kwargs(geometry, True)
    with np.errstate(invalid="ignore"):
        assert_matches(y, reference.avg_pool2d(x, **plain, **flags), plane["dtype"])
    grad_out = _values(grad_rng, y.shape, plane["dtype"], plane["kind"])
    grad_x = F.avg_pool2d_backward(in_layout(grad_out, plane["layout"]), x.shape, **kwargs, **flags)
    with np.errstate(invalid="ignore"):
        expected = reference.avg_pool2d_backward(grad_out, x.shape, **plain, **flags)
    assert_matches(grad_x, expected, plane["dtype"])
    # A grad_out of another output size is refused.
    wrong = np.zeros((*y.shape[:-1], y.shape[-1] + 1), dtype=plane["dtype"])
    assert_refused(lambda: F.avg_pool2d_backward(wrong, x.shape, **kwargs, **flags), ("grad_out",))


@st.composite
def lines(draw):
    """A 1-D pooling call's input and window: (shape, dtype, values kind, channels last, seed),
    and (spelling, plain) of kernel, stride, padding and dilation as ``window_args`` gives them,
    the padding an int, ``(p,)``, ``((left, right),)`` or a word."""
    batch, channels, length = draw(st.integers(0, 3)), draw(st.integers(0, 3)), draw(st.integers(0, 12))
    line = dict(shape=(batch, channels, length), dtype=draw(st.sampled_from(DTYPES)),
                kind=draw(st.sampled_from(["normal", "ties", "special"])), last=draw(st.booleans()),
                seed=draw(st.integers(0, 2**32 - 1)))
    kernel, dilation = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    stride = draw(st.one_of(st.none(), st.integers(1, 4)))
    form = draw(st.sampled_from(["int", "1-tuple", "sides", "word"]))
    if form == "word":
        padding = spelling = draw(st.sampled_from(PADDING_WORDS))
    else:
        before, after = draw(st.integers(0, 3)), draw(st.integers(0, 3))
        if form != "sides":
            after = before
        padding = ((0, 0), (before, after))
        spelling = {"int": before, "1-tuple": (before,), "sides": ((before, after),)}[form]
    plain = dict(kernel=(1, kernel), stride=(1, kernel if stride is None else stride), padding=padding,
                 dilation=(1, dilation))
    return line, dict(kernel_size=kernel, stride=stride, padding=spelling, dilation=dilation), plain


@given(call=lines(), ceil_mode=st.booleans(), count_include_pad=st.booleans())
def test_pool1d_padding_spellings_match_the_2d_reference_or_refuse(call, ceil_mode, count_include_pad):
    # The 1-D ops against the 2-D reference on a height-1 view: kernel, stride and dilation 1
    # along the height, and no padding there ('same' and 'same_lower' give none over one row).
    line, kwargs, plain = call
    rng = np.random.default_rng(line["seed"])
    x = _values(rng, line["shape"], line["dtype"], line["kind"])
    layout = "NWC" if line["last"] else "NCW"

    def laid(array):
        """A (N, C, 1, L) reference result as the 1-D op in ``layout`` gives it."""
        return np.moveaxis(array[:, :, 0], 1, -1) if line["last"] else array[:, :, 0]

    laid_out = laid(x[:, :, np.newaxis])
    reasons = _window_reasons(1, line["shape"][-1], *plain.values(), ceil_mode)
    max_call = lambda: F.max_pool1d(laid_out, **kwargs, ceil_mode=ceil_mode, return_indices=True,  # noqa: E731
                                    layout=layout)
    avg_flags = dict(ceil_mode=ceil_mode, count_include_pad=count_include_pad)
    avg_call = lambda: F.avg_pool1d(laid_out, **kwargs, **avg_flags, layout=layout)  # noqa: E731
    if reasons:
        assert_refused(max_call, reasons)
        assert_refused(avg_call, reasons)
        return
    geometry = dict(kernel_size=plain["kernel"], stride=plain["stride"], padding=plain["padding"],
                    dilation=plain["dilation"])
    view = x[:, :, np.newaxis, :]
    y, indices = max_call()
    expected_y, expected_indices = reference.max_pool2d(view, **geometry, ceil_mode=ceil_mode, return_indices=True)
    assert_matches(y, laid(expected_y), line["dtype"])
    assert_matches(indices, laid(expected_indices), line["dtype"])
    grad_out = _values(rng, expected_y.shape, line["dtype"], "normal")
    grad_x = F.max_pool1d_backward(laid(grad_out), indices, laid_out.shape, layout=layout)
    expected = reference.max_pool2d_backward(grad_out, expected_indices, view.shape)
    assert_matches(grad_x, laid(expected), line["dtype"])
    with np.errstate(invalid="ignore"):
        assert_matches(avg_call(), laid(reference.avg_pool2d(view, **geometry, **avg_flags)), line["dtype"])
        grad_x = F.avg_pool1d_backward(laid(grad_out), laid_out.shape, **kwargs, **avg_flags, layout=layout)
        expected = reference.avg_pool2d_backward(grad_out, view.shape, **geometry, **avg_flags)
        assert_matches(grad_x, laid(expected), line["dtype"])


@st.composite
def output_sizes(draw):
    """(spelling, function of (H, W) giving the model's (out_h, out_w))."""
    kind = draw(st.sampled_from(["int", "pair", "none"]))
    if kind == "int":
        size = draw(st.integers(1, 8))
        return draw(st.sampled_from([size, np.int64(size)])), lambda h, w: (size, size)
    sizes = _pair_draw(draw, 1, 8)
    if kind == "pair":
        return draw(spelled(sizes)), lambda h, w: sizes
    keep = draw(st.sampled_from([0, 1]))
    spelling = (None, sizes[1]) if keep == 0 else (sizes[0], None)
    return spelling, lambda h, w: (h if keep == 0 else sizes[0], w if keep == 1 else sizes[1])


@pytest.mark.parametrize("pool", ["avg", "max"])
@given(plane=planes(), output_size=output_sizes(), return_indices=st.booleans())
def test_adaptive_pools_match_the_reference_or_refuse(pool, plane, output_size, return_indices):
    x, laid_out, grad_rng = _make(plane)
    spelling, model = output_size
    height, width = plane["shape"][-2:]
    out_h, out_w = model(height, width)
    if pool == "avg":
        call = lambda: F.adaptive_avg_pool2d(laid_out, spelling)  # noqa: E731
    else:
        call = lambda: F.adaptive_max_pool2d(laid_out, spelling, return_indices=return_indices)  # noqa: E731
    if min(height, width, out_h, out_w) < 1:
        assert_refused(call, ("x", "plane", "output_size"))
        return
    result = call()
    if pool == "avg":
        with np.errstate(invalid="ignore"):
            assert_matches(result, reference.adaptive_avg_pool2d(x, (out_h, out_w)), plane["dtype"])
        grad_out = _values(grad_rng, result.shape, plane["dtype"], plane["kind"])
        grad_x = F.adaptive_avg_pool2d_backward(in_layout(grad_out, plane["layout"]), x.shape)
        with np.errstate(invalid="ignore"):
            assert_matches(grad_x, reference.adaptive_avg_pool2d_backward(grad_out, x.shape), plane["dtype"])
        return
    expected_y, expected_indices = reference.adaptive_max_pool2d(x, (out_h, out_w), return_indices=True)
    y, indices = result if return_indices else (result, None)
    assert y.shape[-2:] == (out_h, out_w)
    assert_matches(y, expected_y, plane["dtype"])
    if indices is not None:
        assert_matches(indices, expected_indices, plane["dtype"])
        grad_out = grad_rng.standard_normal(y.shape).astype(plane["dtype"])
        assert_matches(F.max_pool2d_backward(grad_out, indices, x.shape),
                       reference.max_pool2d_backward(grad_out, indices, x.shape), plane["dtype"])


# ---------------------------------------------------------------------------------------------
# One argument replaced by a value that is wrong whatever the rest of the call.

X = np.random.default_rng(0).standard_normal((2, 3, 7, 8))


def _base_calls():
    """(function, valid keyword arguments) of every pooling op, on X with 3x3 windows."""
    y, indices = F.max_pool2d(X, 3, 2, 1, return_indices=True)
    avg_kwargs = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False,
                      divisor_override=None)
    return {
        "max_pool2d": (F.max_pool2d, dict(x=X, kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=False,
                                          return_indices=True)),
        "max_pool2d_backward": (F.max_pool2d_backward, dict(grad_out=y, indices=indices, input_shape=X.shape)),
        "avg_pool2d": (F.avg_pool2d, dict(x=X, **avg_kwargs)),
        "avg_pool2d_backward": (F.avg_pool2d_backward,
                                dict(grad_out=F.avg_pool2d(X, **avg_kwargs), input_shape=X.shape, **avg_kwargs)),
        "adaptive_avg_pool2d": (F.adaptive_avg_pool2d, dict(x=X, output_size=(3, None))),
        "adaptive_avg_pool2d_backward": (F.adaptive_avg_pool2d_backward,
                                         dict(grad_out=np.ones((2, 3, 3, 4)), input_shape=X.shape)),
        "adaptive_max_pool2d": (F.adaptive_max_pool2d, dict(x=X, output_size=4, return_indices=False)),
    }


BASE_CALLS = _base_calls()
BAD_FLAGS = [1, 0, "True", None, np.array(True), [True], 1.0]
BAD_SHAPES = [None, 3, "abc", (1, 2), (1, 2, 3, 4, 5), (2, 3, -7, 8), (2.0, 3, 7, 8), (2, 3, 7, None),
              (3, 3, 7, 8), (2, 4, 7, 8), {2, 3, 7, 8}]
BAD_OUTPUT_SIZES = [0, -1, (0, 2), (2, 0), (None, -1), 1.5, True, "2", (1, 2, 3), (), np.array([2, 2]), (1.0, 2)]


def _bad_value(data, op, name, value):
    """A value of argument ``name`` that is wrong for every rest of the call."""
    if name in ("kernel_size", "stride", "dilation"):
        return data.draw(bad_geometry_values(1), label="bad")
    if name == "padding":
        # Also more than the kernel less one (3 - 1 = 2), ONNX's limit, and four numbers.
        return data.draw(st.one_of(bad_geometry_values(0), st.sampled_from([3, (1, 3), (5, 0), (1, 0, 1, 0)])),
                         label="bad")
    if name in ("ceil_mode", "count_include_pad", "return_indices"):
        return data.draw(st.sampled_from(BAD_FLAGS), label="bad")
    if name == "divisor_override":
        return data.draw(st.sampled_from([0, -1, 2**31, 2**63, 1.5, True, "2", (2,)]), label="bad")
    if name == "output_size":
        return data.draw(st.sampled_from(BAD_OUTPUT_SIZES), label="bad")
    if name == "input_shape":
        return data.draw(st.sampled_from(BAD_SHAPES), label="bad")
    if name == "indices":
        return data.draw(st.sampled_from([
            value.astype(np.int32), value.astype(np.float64), value.tolist(), value[..., :-1], value - 10**6,
            value + X.shape[2] * X.shape[3], np.full_like(value, -1), np.full_like(value, 2**62), None,
        ]), label="bad")
    if op.endswith("_backward") and name == "grad_out":
        wrong = [value[0]]
        if op != "adaptive_avg_pool2d_backward":  # which takes any output size
            wrong.append(np.zeros((*value.shape[:-1], value.shape[-1] + 1)))
        return data.draw(st.one_of(bad_array(value), st.sampled_from(wrong)), label="bad")
    bad = data.draw(bad_array(value), label="bad")
    # The max pools take the 8-bit integers too (issue 20): no wrong dtype for them.
    assume(not (op in ("max_pool2d", "adaptive_max_pool2d") and getattr(bad, "dtype", None) in (np.int8, np.uint8)))
    return bad


@pytest.mark.parametrize("op", list(BASE_CALLS))
@given(data=st.data())
def test_one_bad_argument_is_refused_with_a_message(op, data):
    function, kwargs = BASE_CALLS[op]
    kwargs = dict(kwargs)
    function(**kwargs)  # the base call is valid
    name = data.draw(st.sampled_from(sorted(kwargs)), label="argument")
    bad = _bad_value(data, op, name, kwargs[name])
    assume(not (name == "stride" and bad is None))  # stride=None means kernel_size
    kwargs[name] = bad
    names = {"grad_out": ("grad_out", "indices", "input_shape"), "indices": ("indices",),
             "input_shape": ("input_shape", "grad_out"), "padding": ("padding",)}.get(name, (name,))
    assert_refused(lambda: function(**kwargs), names)


@st.composite
def _large_window_calls(draw):
    """A plane and a window geometry PyTorch allows, the windows often far larger than the plane."""
    height, width = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    geometry = []
    for size in (height, width):
        kernel = draw(st.one_of(st.integers(1, 4), st.integers(size, 3 * size + 40)))
        dilation = draw(st.sampled_from([1, 1, 2, 3]))
        padding = draw(st.integers(0, kernel // 2))
        stride = draw(st.one_of(st.integers(1, 3), st.integers(1, 2 * kernel + 2)))
        geometry.append((kernel, stride, padding, dilation))
    ceil_mode = draw(st.booleans())
    kernel, stride, padding, dilation = (tuple(pair) for pair in zip(*geometry))
    return (height, width), (kernel, stride, padding, dilation, ceil_mode)


@given(call=_large_window_calls(), kind=st.sampled_from(["normal", "ties", "special"]),
       dtype=st.sampled_from(DTYPES), force=st.sampled_from([None, 0, 10**12]), seed=st.integers(0, 2**32 - 1))
def test_max_pool2d_any_window_matches_the_reference_with_either_kernel(call, kind, dtype, force, seed):
    # Windows up to several times the plane (issue 25): the phase split and the separable kernel
    # (by blocks and by deque) forced in turn, or chosen as convx.functional.pooling chooses.
    plane, args = call
    x = _values(np.random.default_rng(seed), (2, 2, *plane), dtype, kind)
    try:
        expected = reference.max_pool2d(x, *args, return_indices=True)
    except ValueError:  # an empty output: the reference cannot allocate it
        assume(False)
    assume(expected[0].size > 0)
    with pytest.MonkeyPatch.context() as patch:
        if force is not None:
            patch.setattr(convx.functional.pooling, "PHASE_TAP_RATIO", force)
        try:
            result = F.max_pool2d(x, *args, return_indices=True)
        except ValueError as error:  # a window wholly in the padding (PyTorch refuses it too)
            assert "padding" in str(error)
            return
    np.testing.assert_array_equal(result[0], expected[0])
    np.testing.assert_array_equal(result[1], expected[1])
