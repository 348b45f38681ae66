"""Property-based tests of the convolution ops (Hypothesis; profiles in conftest.py).

Random geometries, batch sizes (empty ones too), unbatched input, every argument spelling,
memory layout and an occasional NaN or +-inf: a call that the definitions allow agrees with
``convx.reference.conv`` (values, shape, dtype, inputs untouched); a call they do not allow
raises ValueError or TypeError with a message, decided by an independent model of the rules
written here from the formulas (never by convx's own checks). One argument at a time is
then replaced by a value that is wrong in any context, which must be refused the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    sprinkle,
)
from _helpers import CONV_OPS  # noqa: E402
from hypothesis import assume, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import convx.functional as F  # noqa: E402
from convx.reference import conv as reference  # noqa: E402

NON_FINITE = [None, None, None, np.nan, np.inf, -np.inf]


@dataclass
class ConvCall:
    """One drawn conv2d geometry, the arrays, and how each argument is spelled."""

    dtype: np.dtype
    batch: int | None  # None: unbatched (C, H, W)
    c_in: int
    height: int
    width: int
    c_out: int
    c_in_group: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: object  # (int, int), ((top, bottom), (left, right)), 'valid', 'same' or 'same_lower'
    dilation: tuple[int, int]
    groups: int
    spelling: dict
    layouts: dict
    seed: int
    non_finite: object
    poisoned: str
    bias: bool
    channels_last: bool = False  # x, grad_out and grad_x given and returned as (N, H, W, C)

    def pads(self):
        """((top, bottom), (left, right)) by the spec: 'same' / 'same_lower' give ceil(size / stride)
        outputs, the odd one of the padding after / before."""
        if self.padding == "valid":
            return (0, 0), (0, 0)
        if self.padding in ("same", "same_lower"):
            sides = []
            for size, k, s, d in zip((self.height, self.width), self.kernel, self.stride, self.dilation):
                total = max(0, (-(-size // s) - 1) * s + d * (k - 1) + 1 - size)
                sides.append((total // 2, total - total // 2) if self.padding == "same"
                             else (total - total // 2, total // 2))
            return tuple(sides)
        if isinstance(self.padding[0], tuple):
            return self.padding
        return tuple((p, p) for p in self.padding)

    def out_size(self):
        return tuple(
            (size + before + after - d * (k - 1) - 1) // s + 1
            for size, (before, after), k, s, d in zip(
                (self.height, self.width), self.pads(), self.kernel, self.stride, self.dilation
            )
        )

    def why_invalid(self) -> tuple[str, ...]:
        """Empty when the definitions allow this call, else words one of which the error names
        (several rules may be broken at once; any of them may be reported)."""
        words = []
        if self.c_in % self.groups or self.c_out % self.groups:
            words += ["groups"]
        if self.c_in_group * self.groups != self.c_in:
            words += ["weight", "groups"]
        if min(self.out_size()) < 1:
            words += ["kernel", "padd", "output"]
        return tuple(words)

    def x_shape(self):
        shape = (self.c_in, self.height, self.width)
        return shape if self.batch is None else (self.batch, *shape)

    def weight_shape(self):
        return (self.c_out, self.c_in_group, *self.kernel)

    def out_shape(self):
        out_h, out_w = (max(1, v) for v in self.out_size())
        shape = (self.c_out, out_h, out_w)
        return shape if self.batch is None else (self.batch, *shape)

    def arrays(self):
        """x, weight, bias and grad_out (the output's shape, or 1x1 planes when there is none)."""
        rng = np.random.default_rng(self.seed)
        arrays = {
            "x": rng.standard_normal(self.x_shape()).astype(self.dtype),
            "weight": rng.standard_normal(self.weight_shape()).astype(self.dtype),
            "bias": rng.standard_normal(self.c_out).astype(self.dtype) if self.bias else None,
            "grad_out": rng.standard_normal(self.out_shape()).astype(self.dtype),
        }
        sprinkle(rng, arrays, self.non_finite, self.poisoned)
        return arrays

    def kwargs(self):
        return dict(stride=self.spelling["stride"], padding=self.spelling["padding"],
                    dilation=self.spelling["dilation"], groups=self.groups)

    def reference_kwargs(self):
        padding = self.padding if isinstance(self.padding, str) else self.padding
        return dict(stride=self.stride, padding=padding, dilation=self.dilation, groups=self.groups)


@st.composite
def conv_calls(draw, valid_only=False):
    groups = draw(st.integers(1, 3))
    c_in_group = draw(st.integers(1, 3))
    c_out_group = draw(st.integers(1, 3))
    c_in = c_in_group * groups
    c_out = c_out_group * groups
    # Now and then a weight or channel count that does not fit the groups.
    if not valid_only and draw(st.integers(0, 15)) == 0:
        c_in = draw(st.integers(1, 7))
    if not valid_only and draw(st.integers(0, 15)) == 0:
        c_out = draw(st.integers(1, 7))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding_kind = draw(st.sampled_from(["pair", "pair", "valid", "same", "same_lower", "sides"]))
    if padding_kind in ("same", "same_lower"):
        if draw(st.booleans()):
            stride = (1, 1)
        padding, padding_spelling = padding_kind, padding_kind
    elif padding_kind == "valid":
        padding, padding_spelling = "valid", "valid"
    elif padding_kind == "sides":
        padding = tuple((draw(st.integers(0, 4)), draw(st.integers(0, 4))) for _ in range(2))
        padding_spelling = draw(st.sampled_from([padding, [list(side) for side in padding]]))
    else:
        padding = (draw(st.integers(0, 4)), draw(st.integers(0, 4)))
        padding_spelling = draw(spelled(padding))
    call = ConvCall(
        dtype=draw(st.sampled_from(DTYPES)),
        batch=draw(st.one_of(st.none(), st.integers(0, 4))),
        c_in=c_in,
        height=draw(st.integers(1, 11)),
        width=draw(st.integers(1, 11)),
        c_out=c_out,
        c_in_group=c_in_group,
        kernel=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        spelling=dict(stride=draw(spelled(stride)), padding=padding_spelling, dilation=draw(spelled(dilation))),
        layouts={name: draw(st.sampled_from(LAYOUT_NAMES)) for name in ["x", "weight", "bias", "grad_out"]},
        seed=draw(st.integers(0, 2**32 - 1)),
        non_finite=draw(st.sampled_from(NON_FINITE)),
        poisoned=draw(st.sampled_from(["x", "weight", "bias", "grad_out"])),
        bias=draw(st.booleans()),
        channels_last=draw(st.integers(0, 3)) == 0,
    )
    if valid_only:
        assume(not call.why_invalid())
    return call


def _last(array):
    """(N, C, H, W) or (C, H, W) channels last."""
    return np.moveaxis(array, -3, -1)


def _first(array):
    """A channels-last output (checked C-contiguous, as every output must be) as channels first."""
    assert array.flags.c_contiguous
    return np.ascontiguousarray(np.moveaxis(array, -1, -3))


def _channels_last_outputs(op, arrays, call, kwargs):
    """The op's outputs with layout='NHWC', x and grad_out given channels last, each output brought
    back channels first (the reference's layout)."""
    x, grad_out = _last(arrays["x"]), _last(arrays["grad_out"])
    x_shape = call.x_shape()[:-3] + (call.height, call.width, call.c_in)
    kwargs = dict(kwargs, layout="NHWC")
    if op == "forward":
        return (_first(F.conv2d(x, arrays["weight"], arrays["bias"], **kwargs)),)
    if op == "backward_input":
        return (_first(F.conv2d_backward_input(grad_out, arrays["weight"], x_shape, **kwargs)),)
    if op == "backward_weight":
        return (F.conv2d_backward_weight(grad_out, x, call.weight_shape(), **kwargs),)
    if op == "backward_bias":
        return (F.conv2d_backward_bias(grad_out, layout="NHWC"),)
    grad_x, grad_w, grad_b = F.conv2d_backward(grad_out, x, arrays["weight"], **kwargs)
    return _first(grad_x), grad_w, grad_b


def _outputs(module, op, arrays, call, kwargs):
    """The op's outputs as a tuple; the reference has no fused backward, so its parts stand in."""
    if module is F and call.channels_last:
        return _channels_last_outputs(op, arrays, call, kwargs)
    x, weight, bias, grad_out = (arrays[k] for k in ("x", "weight", "bias", "grad_out"))
    if op == "forward":
        return (module.conv2d(x, weight, bias, **kwargs),)
    if op == "backward_input":
        return (module.conv2d_backward_input(grad_out, weight, call.x_shape(), **kwargs),)
    if op == "backward_weight":
        return (module.conv2d_backward_weight(grad_out, x, call.weight_shape(), **kwargs),)
    if op == "backward_bias":
        return (module.conv2d_backward_bias(grad_out),)
    if module is F:
        return tuple(F.conv2d_backward(grad_out, x, weight, **kwargs))
    return (
        module.conv2d_backward_input(grad_out, weight, call.x_shape(), **kwargs),
        module.conv2d_backward_weight(grad_out, x, call.weight_shape(), **kwargs),
        module.conv2d_backward_bias(grad_out),
    )


@pytest.mark.parametrize("op", CONV_OPS)
@given(call=conv_calls())
def test_conv_ops_match_the_reference_or_refuse(op, call):
    arrays = call.arrays()
    laid_out = {k: None if v is None else in_layout(v, call.layouts[k]) for k, v in arrays.items()}
    saved = {k: None if v is None else v.copy() for k, v in laid_out.items()}
    reasons = call.why_invalid()
    if op == "backward_bias":
        reasons = ()  # grad_out alone: every float array of 3 or 4 dimensions is fine
    if reasons:
        assert_refused(lambda: _outputs(F, op, laid_out, call, call.kwargs()), reasons)
        return
    outputs = _outputs(F, op, laid_out, call, call.kwargs())
    with np.errstate(invalid="ignore", over="ignore"):
        expected = _outputs(reference, op, arrays, call, call.reference_kwargs())
    for out, ref in zip(outputs, expected, strict=True):
        assert_matches(out, ref, call.dtype)
        for array in laid_out.values():
            assert array is None or not np.shares_memory(out, array)
    for name, array in laid_out.items():
        if array is not None:
            np.testing.assert_array_equal(array, saved[name])


@st.composite
def transpose_calls(draw):
    """(x, weight, bias, kwargs, model output size or None when the definitions refuse it)."""
    groups = draw(st.integers(1, 3))
    c_in = groups * draw(st.integers(1, 3))
    c_out_group = draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 4)), draw(st.integers(0, 4)))
    output_padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    batch = draw(st.one_of(st.none(), st.integers(0, 3)))
    height, width = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (c_in, height, width) if batch is None else (batch, c_in, height, width)
    arrays = {
        "x": rng.standard_normal(shape).astype(dtype),
        "weight": rng.standard_normal((c_in, c_out_group, *kernel)).astype(dtype),
        "bias": rng.standard_normal(c_out_group * groups).astype(dtype) if draw(st.booleans()) else None,
    }
    sprinkle(rng, arrays, draw(st.sampled_from(NON_FINITE)), draw(st.sampled_from(["x", "weight", "bias"])))
    out_size = tuple(
        (size - 1) * s - 2 * p + d * (k - 1) + op + 1
        for size, s, p, d, k, op in zip((height, width), stride, padding, dilation, kernel, output_padding)
    )
    valid = min(out_size) >= 1 and all(op < max(s, d) for op, s, d in zip(output_padding, stride, dilation))
    kwargs = dict(stride=draw(spelled(stride)), padding=draw(spelled(padding)),
                  output_padding=draw(spelled(output_padding)), groups=groups, dilation=draw(spelled(dilation)))
    plain = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups, dilation=dilation)
    layouts = {k: draw(st.sampled_from(LAYOUT_NAMES)) for k in arrays}
    return dtype, arrays, layouts, kwargs, plain, out_size if valid else None


@given(args=transpose_calls())
def test_conv_transpose2d_matches_the_reference_or_refuses(args):
    dtype, arrays, layouts, kwargs, plain, out_size = args
    laid_out = {k: None if v is None else in_layout(v, layouts[k]) for k, v in arrays.items()}
    if out_size is None:
        assert_refused(lambda: F.conv_transpose2d(**laid_out, **kwargs), ("output_padding", "padding", "output"))
        return
    y = F.conv_transpose2d(**laid_out, **kwargs)
    with np.errstate(invalid="ignore", over="ignore"):
        expected = reference.conv_transpose2d(**arrays, **plain)
    assert y.shape[-2:] == out_size
    assert_matches(y, expected, dtype)


# ---------------------------------------------------------------------------------------------
# One argument replaced by a value that is wrong whatever the rest of the call.

def _valid_call(op, call):
    """(function, keyword arguments) of a valid call of ``op`` drawn from ``call``."""
    arrays = call.arrays()
    geometry = call.kwargs()
    x, weight, bias, grad_out = (arrays[k] for k in ("x", "weight", "bias", "grad_out"))
    if op == "forward":
        return F.conv2d, dict(x=x, weight=weight, bias=bias, **geometry)
    if op == "backward_input":
        return F.conv2d_backward_input, dict(grad_out=grad_out, weight=weight, input_shape=call.x_shape(), **geometry)
    if op == "backward_weight":
        return F.conv2d_backward_weight, dict(grad_out=grad_out, x=x, weight_shape=call.weight_shape(), **geometry)
    if op == "backward_bias":
        return F.conv2d_backward_bias, dict(grad_out=grad_out)
    return F.conv2d_backward, dict(grad_out=grad_out, x=x, weight=weight, **geometry)


BAD_SHAPES = [None, 3, 3.0, "abc", (1, 2), (1, 2, 3, 4, 5), (1, 2, -3, 4), (1.0, 2, 3, 4), (1, 2, 3, None),
              (True, 1, 1, 1), np.zeros((2, 2)), {1, 2, 3, 4}]
BAD_GROUPS = [0, -1, 2**63, 1.0, True, None, "1", (1, 1), np.array(1)]


@pytest.mark.parametrize("op", CONV_OPS)
@given(call=conv_calls(valid_only=True), data=st.data())
def test_one_bad_argument_is_refused_with_a_message(op, call, data):
    function, kwargs = _valid_call(op, call)
    name = data.draw(st.sampled_from(sorted(kwargs)), label="argument")
    value = kwargs[name]
    if name in ("stride", "dilation"):
        bad = data.draw(bad_geometry_values(1), label="bad")
        names = (name, "dilated") if name == "dilation" else (name,)
    elif name == "padding":
        bad = data.draw(st.one_of(bad_geometry_values(0), st.sampled_from(["SAME", "full", "", "valid "])),
                        label="bad")
        names = ("padding", "padded")
    elif name == "groups":
        bad = data.draw(st.sampled_from(BAD_GROUPS), label="bad")
        names = ("groups",)
    elif name in ("input_shape", "weight_shape"):
        bad = data.draw(st.sampled_from(BAD_SHAPES), label="bad")
        names = (name,)
    elif value is None:  # an absent bias
        bad = data.draw(bad_array(np.zeros(call.c_out, dtype=call.dtype), optional=True), label="bad")
        names = (name,)
    else:
        names = (name,)
        # Axes along which a larger array is wrong whatever the rest of the call; another
        # dtype is wrong wherever a second array has to match.
        axes = [axis for axis in range(value.ndim) if _stays_invalid(op, name, axis, call)]
        kinds = ["bad-array"] + (["other-dtype"] if op != "backward_bias" else []) + (["wrong-shape"] if axes else [])
        kind = data.draw(st.sampled_from(kinds), label="kind")
        if kind == "bad-array":
            bad = data.draw(bad_array(value, optional=name == "bias"), label="bad")
        elif kind == "other-dtype":
            bad = value.astype(DTYPES[1] if value.dtype == DTYPES[0] else DTYPES[0])
        else:
            axis = data.draw(st.sampled_from(axes), label="axis")
            grown = list(value.shape)
            grown[axis] += data.draw(st.integers(1, 3), label="by")
            bad = np.zeros(grown, dtype=value.dtype)
            names = ("shape", "channels", "groups", "grad_out", "weight", "bias", "x", "input")
    kwargs[name] = bad
    assert_refused(lambda: function(**kwargs), names)


def _stays_invalid(op, name, axis, call) -> bool:
    """Whether growing ``name`` along ``axis`` is wrong whatever the rest of the call.

    A larger plane or kernel may leave the output size unchanged (the stride swallows it), and
    a forward call without bias accepts more output channels or images, so those are left out.
    """
    if op == "backward_bias":
        return False  # any float grad_out of 3 or 4 dimensions is fine
    if name in ("bias", "grad_out"):
        return True
    if name == "x":
        logical = ("channel", "h", "w") if call.batch is None else ("batch", "channel", "h", "w")
        return logical[axis] == "channel" or (logical[axis] == "batch" and op != "forward")
    if name == "weight":
        return axis == 1 or (axis == 0 and (op != "forward" or call.bias))
    return False


@given(args=transpose_calls().filter(lambda args: args[-1] is not None), data=st.data())
def test_conv_transpose2d_one_bad_argument_is_refused_with_a_message(args, data):
    dtype, arrays, _, kwargs, _, _ = args
    kwargs = {**arrays, **kwargs}
    name = data.draw(st.sampled_from(sorted(kwargs)), label="argument")
    value = kwargs[name]
    names = (name,)
    if name in ("stride", "dilation"):
        bad = data.draw(bad_geometry_values(1), label="bad")
        names = (name, "dilated", "output_padding")
    elif name in ("padding", "output_padding"):
        # 'same' is a padding of transposed convolutions too (ONNX's auto_pad), not an output_padding
        word = "full" if name == "padding" else "same"
        bad = data.draw(st.one_of(bad_geometry_values(0), st.just(word)), label="bad")
        names = ("padding", "output")
    elif name == "groups":
        bad = data.draw(st.sampled_from(BAD_GROUPS), label="bad")
    elif value is None or name == "bias":
        c_out = arrays["weight"].shape[1] * kwargs["groups"]
        like = np.zeros(c_out, dtype=dtype) if value is None else value
        bad = data.draw(st.one_of(bad_array(like, optional=True), st.just(np.zeros(like.size + 1, dtype=dtype))),
                        label="bad")
    else:
        kind = data.draw(st.sampled_from(["bad-array", "other-dtype", "wrong-shape"]), label="kind")
        if kind == "bad-array":
            bad = data.draw(bad_array(value), label="bad")
        elif kind == "other-dtype":
            bad = value.astype(DTYPES[1] if value.dtype == DTYPES[0] else DTYPES[0])
        else:
            # More input channels than the weight's first axis, or the other way round.
            grown = list(value.shape)
            grown[-3 if name == "x" else 0] += data.draw(st.integers(1, 3), label="by")
            bad = np.zeros(grown, dtype=value.dtype)
            names = ("channels", "weight", "groups")
    kwargs[name] = bad
    assert_refused(lambda: F.conv_transpose2d(**kwargs), names)
