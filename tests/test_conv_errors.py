"""Bad arguments to the convolution ops: ValueError for shapes and values, TypeError for types.

Every message must name the argument at fault. Each test starts from a valid call (which
passes, see ``test_base_calls_are_valid``) and breaks one argument.
"""

import numpy as np
import pytest

import convx.functional as F

GEOMETRY = dict(stride=1, padding=0, dilation=1, groups=2)


def _base(op):
    """Valid keyword arguments for ``op``: x (2, 4, 7, 6), weight (6, 2, 3, 2), groups 2, output 5x5."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 7, 6))
    weight = rng.standard_normal((6, 2, 3, 2))
    grad_out = rng.standard_normal((2, 6, 5, 5))
    if op == "conv2d":
        return dict(x=x, weight=weight, bias=rng.standard_normal(6), **GEOMETRY)
    if op == "conv2d_backward_input":
        return dict(grad_out=grad_out, weight=weight, input_shape=x.shape, **GEOMETRY)
    if op == "conv2d_backward_weight":
        return dict(grad_out=grad_out, x=x, weight_shape=weight.shape, **GEOMETRY)
    if op == "conv2d_backward_bias":
        return dict(grad_out=grad_out)
    if op == "conv2d_backward":
        return dict(grad_out=grad_out, x=x, weight=weight, **GEOMETRY)
    if op == "conv_transpose2d":
        # x (2, 4, 5, 5) -> y (2, 6, 7, 6): the adjoint of the conv2d above.
        return dict(
            x=grad_out[:, :4],
            weight=rng.standard_normal((4, 3, 3, 2)),
            bias=rng.standard_normal(6),
            output_padding=0,
            **GEOMETRY,
        )
    raise AssertionError(op)


def _call(op, **overrides):
    kwargs = _base(op)
    kwargs.update(overrides)
    return getattr(F, op)(**kwargs)


ALL_OPS = [
    "conv2d",
    "conv2d_backward_input",
    "conv2d_backward_weight",
    "conv2d_backward_bias",
    "conv2d_backward",
    "conv_transpose2d",
]
GEOMETRY_OPS = [op for op in ALL_OPS if op != "conv2d_backward_bias"]
ARRAY_ARGS = [(op, name) for op in ALL_OPS for name, value in _base(op).items() if isinstance(value, np.ndarray)]
ARRAY_IDS = [f"{op}-{name}" for op, name in ARRAY_ARGS]


def _name(argument):
    """A regex for the argument's name as a word (so 'weight' does not match 'weight_shape')."""
    return rf"\b{argument}\b"


@pytest.mark.parametrize("op", ALL_OPS)
def test_base_calls_are_valid(op):
    _call(op)


# --- dtypes ---------------------------------------------------------------------------------

BAD_DTYPES = [np.int32, np.int64, np.uint8, np.bool_, np.float16, np.longdouble, np.complex64, np.complex128, object]


@pytest.mark.parametrize("bad_dtype", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("op_and_arg", ARRAY_ARGS, ids=ARRAY_IDS)
def test_unsupported_dtype_is_type_error(op_and_arg, bad_dtype):
    op, argument = op_and_arg
    value = _base(op)[argument]
    if np.dtype(bad_dtype).kind in "iub":
        value = np.ones(value.shape, dtype=bad_dtype)
    else:
        value = value.astype(bad_dtype)
    with pytest.raises(TypeError, match="float32") as info:
        _call(op, **{argument: value})
    assert "float64" in str(info.value)


@pytest.mark.parametrize(
    "op_and_arg",
    [(op, a) for op, a in ARRAY_ARGS if op != "conv2d_backward_bias"],
    ids=[i for i in ARRAY_IDS if not i.startswith("conv2d_backward_bias")],
)
@pytest.mark.parametrize("odd_one", [np.float32, np.float64], ids=["float32-among-float64", "float64-among-float32"])
def test_mixed_precision_is_type_error(op_and_arg, odd_one):
    op, argument = op_and_arg
    others = np.float64 if odd_one is np.float32 else np.float32
    kwargs = {k: v.astype(others) if isinstance(v, np.ndarray) else v for k, v in _base(op).items()}
    kwargs[argument] = kwargs[argument].astype(odd_one)
    with pytest.raises(TypeError, match="float32") as info:
        getattr(F, op)(**kwargs)
    assert "float64" in str(info.value)


@pytest.mark.parametrize("value", [None, 3.0, "x", [[1.0, 2.0], [3.0]]], ids=["None", "float", "str", "ragged"])
@pytest.mark.parametrize(
    "op_and_arg",
    [(op, a) for op, a in ARRAY_ARGS if a != "bias"],
    ids=[i for i in ARRAY_IDS if not i.endswith("-bias")],
)
def test_non_array_is_type_error(op_and_arg, value):
    op, argument = op_and_arg
    with pytest.raises(TypeError, match=_name(argument)):
        _call(op, **{argument: value})


# --- ndim and shapes -------------------------------------------------------------------------

WRONG_NDIMS = {"x": [2, 5], "weight": [3, 5], "grad_out": [2, 5], "bias": [0, 2]}


@pytest.mark.parametrize("which", [0, 1], ids=["too-few", "too-many"])
@pytest.mark.parametrize("op_and_arg", ARRAY_ARGS, ids=ARRAY_IDS)
def test_wrong_ndim_is_value_error(op_and_arg, which):
    op, argument = op_and_arg
    ndim = WRONG_NDIMS[argument][which]
    value = np.ones((3,) * ndim)
    with pytest.raises(ValueError, match=_name(argument)):
        _call(op, **{argument: value})


@pytest.mark.parametrize("op", ["conv2d_backward_weight", "conv2d_backward"])
def test_batched_and_unbatched_mixed_is_value_error(op):
    base = _base(op)
    with pytest.raises(ValueError, match=r"\bx\b|grad_out"):
        _call(op, x=base["x"][0])
    with pytest.raises(ValueError, match=r"\bx\b|grad_out"):
        _call(op, grad_out=base["grad_out"][0])


@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d"])
@pytest.mark.parametrize("length", [5, 7, 1], ids=str)
def test_bias_of_wrong_length_is_value_error(op, length):
    with pytest.raises(ValueError, match=_name("bias")):
        _call(op, bias=np.ones(length))


@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d"])
def test_bias_of_wrong_ndim_is_value_error(op):
    with pytest.raises(ValueError, match=_name("bias")):
        _call(op, bias=np.ones((6, 1)))
    with pytest.raises(ValueError, match=_name("bias")):
        _call(op, bias=np.ones(()))


@pytest.mark.parametrize("shape", [(2, 6, 4, 5), (2, 6, 5, 6), (2, 5, 5, 5), (3, 6, 5, 5), (1, 6, 5, 5)], ids=str)
@pytest.mark.parametrize("op", ["conv2d_backward_input", "conv2d_backward_weight", "conv2d_backward"])
def test_grad_out_not_of_the_output_shape_is_value_error(op, shape):
    with pytest.raises(ValueError, match=_name("grad_out")):
        _call(op, grad_out=np.ones(shape))


def test_grad_out_shape_follows_stride_padding_dilation():
    # grad_out (2, 6, 5, 5) fits stride 1; with stride 2 the output is 3x3.
    for op in ["conv2d_backward_input", "conv2d_backward_weight", "conv2d_backward"]:
        with pytest.raises(ValueError, match=_name("grad_out")):
            _call(op, stride=2)
        with pytest.raises(ValueError, match=_name("grad_out")):
            _call(op, padding=1)
        with pytest.raises(ValueError, match=_name("grad_out")):
            _call(op, dilation=(2, 1))


@pytest.mark.parametrize(
    "input_shape, error",
    [
        ((4, 7, 6), ValueError),  # 3 entries with a batched grad_out
        ((2, 4, 7, 6, 1), ValueError),
        ((2, 4, -7, 6), ValueError),
        ((2, 4, 7.0, 6), TypeError),
        ((2, True, 7, 6), TypeError),
        (24, TypeError),
        ("2476", TypeError),
        (None, TypeError),
    ],
    ids=["too-short", "too-long", "negative", "float-entry", "bool-entry", "int", "str", "None"],
)
def test_bad_input_shape(input_shape, error):
    with pytest.raises(error, match="input_shape"):
        _call("conv2d_backward_input", input_shape=input_shape)


def test_unbatched_grad_out_takes_a_three_entry_input_shape():
    base = _base("conv2d_backward_input")
    with pytest.raises(ValueError, match="input_shape"):
        _call("conv2d_backward_input", grad_out=base["grad_out"][0], input_shape=(1, 4, 7, 6))


@pytest.mark.parametrize(
    "input_shape",
    [(2, 4, 9, 6), (2, 4, 7, 8), (3, 4, 7, 6), (2, 6, 7, 6), (2, 3, 7, 6)],
    ids=["height", "width", "batch", "channels", "channels-not-multiple-of-groups"],
)
def test_input_shape_inconsistent_with_grad_out_or_weight_is_value_error(input_shape):
    with pytest.raises(ValueError, match=r"input_shape|grad_out|\bweight\b|groups"):
        _call("conv2d_backward_input", input_shape=input_shape)


@pytest.mark.parametrize(
    "weight_shape, error",
    [
        ((6, 2, 3), ValueError),
        ((6, 2, 3, 2, 1), ValueError),
        ((6, 2, 3.0, 2), TypeError),
        ((6, 2, 3, True), TypeError),
        (6, TypeError),
        (None, TypeError),
    ],
    ids=["too-short", "too-long", "float-entry", "bool-entry", "int", "None"],
)
def test_bad_weight_shape(weight_shape, error):
    with pytest.raises(error, match="weight_shape"):
        _call("conv2d_backward_weight", weight_shape=weight_shape)


@pytest.mark.parametrize(
    "weight_shape",
    [(6, 3, 3, 2), (6, 1, 3, 2), (5, 2, 3, 2), (6, 2, 5, 2), (6, 2, 3, 3)],
    ids=[
        "c-in-per-group-too-big",
        "c-in-per-group-too-small",
        "c-out-not-multiple-of-groups",
        "kernel-height",
        "kernel-width",
    ],
)
def test_weight_shape_inconsistent_with_x_or_grad_out_is_value_error(weight_shape):
    with pytest.raises(ValueError, match=r"weight_shape|\bx\b|grad_out|groups"):
        _call("conv2d_backward_weight", weight_shape=weight_shape)


# --- channels and groups ---------------------------------------------------------------------

CONV_WEIGHT_OPS = ["conv2d", "conv2d_backward_input", "conv2d_backward_weight", "conv2d_backward"]


def _with_weight_shape(op, shape, **extra):
    """Overrides giving ``op`` a weight (or weight_shape) of ``shape`` and a matching grad_out."""
    overrides = dict(extra)
    if op == "conv2d_backward_weight":
        overrides["weight_shape"] = shape
    else:
        overrides["weight"] = np.ones(shape)
    if op != "conv2d":
        overrides["grad_out"] = np.ones((2, shape[0], 7 - shape[2] + 1, 6 - shape[3] + 1))
    return overrides


@pytest.mark.parametrize("op", CONV_WEIGHT_OPS)
def test_input_channels_not_divisible_by_groups(op):
    # C_in = 4 with groups = 3.
    with pytest.raises(ValueError, match="groups"):
        _call(op, **_with_weight_shape(op, (6, 1, 3, 2), groups=3))


@pytest.mark.parametrize("op", CONV_WEIGHT_OPS)
def test_output_channels_not_divisible_by_groups(op):
    # C_in = 4 with groups = 4 divides, C_out = 6 does not.
    with pytest.raises(ValueError, match="groups"):
        _call(op, **_with_weight_shape(op, (6, 1, 3, 2), groups=4))


@pytest.mark.parametrize("weight_c_in", [1, 3, 4])
@pytest.mark.parametrize("op", CONV_WEIGHT_OPS)
def test_weight_channels_times_groups_must_equal_input_channels(op, weight_c_in):
    argument = r"weight_shape|\bx\b" if op == "conv2d_backward_weight" else r"\bweight\b"
    with pytest.raises(ValueError, match=argument):
        _call(op, **_with_weight_shape(op, (6, weight_c_in, 3, 2)))


def test_conv_transpose2d_weight_must_start_with_the_input_channels():
    with pytest.raises(ValueError, match=_name("weight")):
        _call("conv_transpose2d", weight=np.ones((6, 3, 3, 2)))
    with pytest.raises(ValueError, match=_name("weight")):
        _call("conv_transpose2d", weight=np.ones((2, 3, 3, 2)))


def test_conv_transpose2d_input_channels_not_divisible_by_groups():
    with pytest.raises(ValueError, match="groups"):
        _call("conv_transpose2d", groups=3)


def test_conv_transpose2d_empty_output_names_every_term_of_its_size():
    # A smaller dilation (not a larger padding) is what empties this output: the message must say
    # which terms make the size, so that whichever argument was wrong is named (found by the fuzz).
    x, weight = np.zeros((1, 1, 1), np.float32), np.zeros((1, 1, 1, 3), np.float32)
    with pytest.raises(ValueError, match=r"1x-1.*padding=\(0, 2\).*stride=\(1, 1\).*dilation=\(1, 1\)"):
        F.conv_transpose2d(x, weight, padding=(0, 2), dilation=1)
    assert F.conv_transpose2d(x, weight, padding=(0, 2), dilation=(1, 2)).shape == (1, 1, 1)


# --- integer arguments -------------------------------------------------------------------------

POSITIVE_ARGS = ["stride", "dilation", "groups"]


NON_POSITIVE = [
    (op, argument, value)
    for op in GEOMETRY_OPS
    for argument in POSITIVE_ARGS
    for value in ([0, -1] if argument == "groups" else [0, -1, (1, 0), (-2, 1)])
]


@pytest.mark.parametrize("op, argument, value", NON_POSITIVE, ids=[f"{o}-{a}-{v}" for o, a, v in NON_POSITIVE])
def test_non_positive_is_value_error(op, argument, value):
    with pytest.raises(ValueError, match=argument):
        _call(op, **{argument: value})


@pytest.mark.parametrize("value", [-1, (0, -1), (-3, 0)], ids=str)
@pytest.mark.parametrize("op", GEOMETRY_OPS)
def test_negative_padding_is_value_error(op, value):
    with pytest.raises(ValueError, match="padding"):
        _call(op, padding=value)


@pytest.mark.parametrize("value", [-1, (0, -1)], ids=str)
def test_negative_output_padding_is_value_error(value):
    with pytest.raises(ValueError, match="output_padding"):
        _call("conv_transpose2d", output_padding=value)


PAIR_ARGS = {
    op: ["stride", "padding", "dilation"] + (["output_padding"] if op == "conv_transpose2d" else [])
    for op in GEOMETRY_OPS
}
PAIR_CASES = [(op, argument) for op in GEOMETRY_OPS for argument in PAIR_ARGS[op]]
PAIR_IDS = [f"{op}-{argument}" for op, argument in PAIR_CASES]


@pytest.mark.parametrize("value", [(1, 1, 1), (1,), ()], ids=["3", "1", "0"])
@pytest.mark.parametrize("op_and_arg", PAIR_CASES, ids=PAIR_IDS)
def test_tuple_of_wrong_length_is_value_error(op_and_arg, value):
    op, argument = op_and_arg
    with pytest.raises(ValueError, match=argument):
        _call(op, **{argument: value})


NON_INTEGERS = {
    "float": 1.0,
    "np-float": np.float64(1.0),
    "fraction": 1.5,
    "str": "1",
    "None": None,
    "complex": 1j,
    "pair-with-float": (1, 1.0),
}
BOOLS = {"True": True, "False": False, "np.True_": np.True_, "pair-with-bool": (1, True)}


def _int_cases(values):
    """(op, argument, value) for every int-or-pair argument (groups takes no pairs, padding takes strings)."""
    cases, ids = [], []
    for op in GEOMETRY_OPS:
        for argument in PAIR_ARGS[op] + ["groups"]:
            for label, value in values.items():
                if argument == "groups" and isinstance(value, tuple):
                    continue
                if argument == "padding" and isinstance(value, str):
                    continue  # a string padding is a mode; unknown ones are tested below
                cases.append((op, argument, value))
                ids.append(f"{op}-{argument}-{label}")
    return cases, ids


NON_INTEGER_CASES, NON_INTEGER_IDS = _int_cases(NON_INTEGERS)
BOOL_CASES, BOOL_IDS = _int_cases(BOOLS)


@pytest.mark.parametrize("op, argument, value", NON_INTEGER_CASES, ids=NON_INTEGER_IDS)
def test_non_integer_is_type_error(op, argument, value):
    with pytest.raises(TypeError, match=argument):
        _call(op, **{argument: value})


@pytest.mark.parametrize("op, argument, value", BOOL_CASES, ids=BOOL_IDS)
def test_bool_is_type_error(op, argument, value):
    with pytest.raises(TypeError, match=argument):
        _call(op, **{argument: value})


@pytest.mark.parametrize("op", GEOMETRY_OPS)
def test_array_as_an_int_argument_is_type_error(op):
    with pytest.raises(TypeError, match="stride"):
        _call(op, stride=np.array([1, 1]))


# --- padding strings ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["full", "SAME", "Valid", "", "same "], ids=repr)
@pytest.mark.parametrize("op", [op for op in GEOMETRY_OPS if op != "conv_transpose2d"])
def test_unknown_padding_string_is_value_error(op, value):
    with pytest.raises(ValueError, match="padding"):
        _call(op, padding=value)


@pytest.mark.parametrize(
    "value, match",
    [((1, 0, 1, 0), "ambiguous"), ([1, 2, 3, 4], "ambiguous"), (((1, 0), 2), r"\(\(top, bottom\)"),
     (((1, 0), (1, -1)), r"padding\[1\]\[1\] must be at least 0"), (((1, 0, 2), (1, 1)), "pair"),
     ("same_upper", "'same_lower', got 'same_upper'")],
    ids=str,
)
@pytest.mark.parametrize("op", [op for op in GEOMETRY_OPS if op != "conv_transpose2d"])
def test_padding_sides_are_refused_when_malformed(op, value, match):
    with pytest.raises(ValueError, match=match):
        _call(op, padding=value)


@pytest.mark.parametrize("value", ["full", "SAME", (1, 2, 3, 4)])
def test_conv_transpose2d_takes_no_other_padding_strings(value):
    # 'valid', 'same' and 'same_lower' are taken (tests/test_conv_transpose_padding.py); nothing else.
    with pytest.raises((TypeError, ValueError), match="padding"):
        _call("conv_transpose2d", padding=value)


# --- sizes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        dict(weight=np.ones((6, 2, 8, 2))),  # taller than the 7-row input
        dict(weight=np.ones((6, 2, 3, 7))),
        dict(dilation=(4, 1)),  # spans 9 rows
        dict(dilation=(1, 6)),
    ],
    ids=["kernel-height", "kernel-width", "dilated-height", "dilated-width"],
)
def test_kernel_larger_than_padded_input_is_value_error(overrides):
    with pytest.raises(ValueError, match=r"kernel|\bweight\b|\bx\b"):
        _call("conv2d", **overrides)
    # With enough padding the same kernel fits.
    _call("conv2d", padding=3, **overrides)


@pytest.mark.parametrize("op", ["conv2d_backward_input", "conv2d_backward_weight", "conv2d_backward"])
def test_kernel_larger_than_padded_input_in_backward_passes(op):
    small = dict(input_shape=(2, 4, 2, 6)) if op == "conv2d_backward_input" else dict(x=np.ones((2, 4, 2, 6)))
    with pytest.raises(ValueError, match=r"kernel|\bweight\b|weight_shape|input_shape|\bx\b"):
        _call(op, grad_out=np.ones((2, 6, 1, 5)), **small)


@pytest.mark.parametrize("padding", [4, (1, 3), (5, 0)], ids=str)
def test_conv_transpose2d_output_size_below_one_is_value_error(padding):
    # x 5x5, kernel 3x2, stride 1: the output is (6 - 2*pH) x (6 - 2*pW).
    with pytest.raises(ValueError, match="padding"):
        _call("conv_transpose2d", padding=padding)


@pytest.mark.parametrize("kernel", [(0, 2), (3, 0), (0, 0)], ids=str)
@pytest.mark.parametrize("op", CONV_WEIGHT_OPS + ["conv_transpose2d"])
def test_zero_size_kernel_is_value_error(op, kernel):
    if op == "conv2d_backward_weight":
        overrides = dict(weight_shape=(6, 2, *kernel))
    elif op == "conv_transpose2d":
        overrides = dict(weight=np.ones((4, 3, *kernel)))
    else:
        overrides = dict(weight=np.ones((6, 2, *kernel)))
    with pytest.raises(ValueError, match=r"kernel|weight"):
        _call(op, **overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(stride=2, output_padding=2),
        dict(stride=1, output_padding=1),
        dict(stride=(2, 3), output_padding=(1, 3)),
        dict(stride=1, dilation=3, output_padding=3),
        dict(stride=(1, 2), dilation=(2, 1), output_padding=(2, 0)),
    ],
    ids=["equal-to-stride", "stride-one", "second-axis", "equal-to-dilation", "first-axis-with-dilation"],
)
def test_output_padding_must_be_below_stride_or_dilation(overrides):
    with pytest.raises(ValueError, match="output_padding"):
        _call("conv_transpose2d", **overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(stride=2, output_padding=1),
        dict(stride=1, dilation=3, output_padding=2),
        dict(stride=(3, 1), output_padding=(2, 0)),
    ],
    ids=["below-stride", "below-dilation", "per-axis"],
)
def test_output_padding_below_stride_or_dilation_is_accepted(overrides):
    _call("conv_transpose2d", **overrides)
