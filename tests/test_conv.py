"""convx's convolution ops against the NumPy reference (convx.reference.conv).

A stacked grid of dtype x stride x padding x dilation x channels/groups x odd shapes for every
op, named special geometries (1x1, depthwise, 'same' with even kernels, stride > kernel, ...),
memory layouts, empty batches, images large enough to be split into row chunks, and NaN/inf
propagation.
"""

import doctest

import numpy as np
import pytest
from _helpers import (
    CHANNELS,
    CONV_OPS,
    DILATIONS,
    DTYPE_IDS,
    IMAGES,
    LAYOUTS,
    PADDINGS,
    SPECIAL_CASES,
    STRIDES,
    TRANSPOSE_CASES,
    ConvCase,
    TransposeCase,
    check_fresh_outputs,
    expected_shapes,
    pair,
    run_conv_op,
)
from conftest import DTYPES, assert_close

import convx
import convx.functional as F
from convx.reference import conv as reference


def _check_conv_op(case: ConvCase, op: str, dtype, rng):
    """Run ``op`` in convx and in the reference on the same data and compare everything."""
    x, weight, bias, grad_out = case.arrays(rng, dtype)
    inputs = (x, weight, bias, grad_out)
    saved = [None if a is None else a.copy() for a in inputs]
    outputs = run_conv_op(F, op, x, weight, bias, grad_out, case.kwargs)
    expected = run_conv_op(reference, op, x, weight, bias, grad_out, case.kwargs)
    assert [out.shape for out in outputs] == expected_shapes(op, case)
    for out, ref in zip(outputs, expected, strict=True):
        assert_close(out, ref, dtype)
    check_fresh_outputs(outputs, inputs, dtype)
    for array, copy in zip(inputs, saved):
        if array is not None:
            np.testing.assert_array_equal(array, copy)


def _check_conv_transpose(case: TransposeCase, dtype, rng):
    x, weight, bias = case.arrays(rng, dtype)
    saved = [None if a is None else a.copy() for a in (x, weight, bias)]
    y = F.conv_transpose2d(x, weight, bias, **case.kwargs)
    expected = reference.conv_transpose2d(x, weight, bias, **case.kwargs)
    batch = () if case.unbatched else (case.n,)
    assert y.shape == (*batch, case.c_out, *case.out_size())
    assert_close(y, expected, dtype)
    check_fresh_outputs([y], (x, weight, bias), dtype)
    for array, copy in zip((x, weight, bias), saved):
        if array is not None:
            np.testing.assert_array_equal(array, copy)


@pytest.mark.parametrize("op", CONV_OPS)
@pytest.mark.parametrize("image", list(IMAGES))
@pytest.mark.parametrize("channels", list(CHANNELS))
@pytest.mark.parametrize("dilation", DILATIONS, ids=str)
@pytest.mark.parametrize("padding", PADDINGS, ids=str)
@pytest.mark.parametrize("stride", STRIDES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_conv_grid_matches_reference(dtype, stride, padding, dilation, channels, image, op, rng):
    c_in, c_out, groups = CHANNELS[channels]
    n, height, width, kernel = IMAGES[image]
    case = ConvCase(n, c_in, height, width, c_out, kernel, stride, padding, dilation, groups)
    _check_conv_op(case, op, dtype, rng)


@pytest.mark.parametrize("op", CONV_OPS)
@pytest.mark.parametrize("name", list(SPECIAL_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_conv_special_cases_match_reference(dtype, name, op, rng):
    _check_conv_op(SPECIAL_CASES[name], op, dtype, rng)


@pytest.mark.parametrize("output_padding", ["zero", "largest"])
@pytest.mark.parametrize("image", list(IMAGES))
@pytest.mark.parametrize("channels", list(CHANNELS))
@pytest.mark.parametrize("dilation", DILATIONS, ids=str)
@pytest.mark.parametrize("padding", PADDINGS, ids=str)
@pytest.mark.parametrize("stride", STRIDES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_conv_transpose2d_grid_matches_reference(
    dtype, stride, padding, dilation, channels, image, output_padding, rng
):
    c_in, c_out, groups = CHANNELS[channels]
    n, height, width, kernel = IMAGES[image]
    if output_padding == "largest":
        # The largest allowed: one less than max(stride, dilation) on each axis.
        extra = tuple(max(s, d) - 1 for s, d in zip(pair(stride), pair(dilation)))
    else:
        extra = 0
    case = TransposeCase(n, c_in, height, width, c_out, kernel, stride, padding, extra, dilation, groups)
    _check_conv_transpose(case, dtype, rng)


@pytest.mark.parametrize("name", list(TRANSPOSE_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_conv_transpose2d_special_cases_match_reference(dtype, name, rng):
    _check_conv_transpose(TRANSPOSE_CASES[name], dtype, rng)


LAYOUT_CASE = ConvCase(2, 4, 7, 9, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
DEPTHWISE_LAYOUT_CASE = ConvCase(2, 3, 7, 9, 6, (3, 3), stride=(1, 2), padding=1, groups=3)


@pytest.mark.parametrize("op", CONV_OPS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("case", [LAYOUT_CASE, DEPTHWISE_LAYOUT_CASE], ids=["grouped", "depthwise"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_conv_accepts_any_memory_layout(dtype, case, layout, op, rng):
    arrays = case.arrays(rng, dtype)
    relaid = [None if a is None else LAYOUTS[layout](a) for a in arrays]
    for original, copy in zip(arrays, relaid):
        if copy is not None:
            np.testing.assert_array_equal(copy, original)
    saved = [None if a is None else a.copy() for a in relaid]
    outputs = run_conv_op(F, op, *relaid, case.kwargs)
    expected = run_conv_op(reference, op, *arrays, case.kwargs)
    for out, ref in zip(outputs, expected, strict=True):
        assert_close(out, ref, dtype)
    check_fresh_outputs(outputs, relaid, dtype)
    for array, copy in zip(relaid, saved):
        if array is not None:
            np.testing.assert_array_equal(array, copy)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_conv_transpose2d_accepts_any_memory_layout(dtype, layout, rng):
    case = TransposeCase(2, 4, 5, 6, 6, (3, 2), stride=2, padding=1, output_padding=1, groups=2)
    arrays = case.arrays(rng, dtype)
    relaid = [LAYOUTS[layout](a) for a in arrays]
    y = F.conv_transpose2d(*relaid, **case.kwargs)
    assert_close(y, reference.conv_transpose2d(*arrays, **case.kwargs), dtype)
    check_fresh_outputs([y], relaid, dtype)
    for array, original in zip(relaid, arrays):
        np.testing.assert_array_equal(array, original)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_outputs_are_not_views_of_inputs_for_identity_kernels(dtype):
    # A 1x1 identity kernel with stride 1 is where an implementation could hand back its input.
    x = np.arange(2 * 3 * 4 * 5, dtype=dtype).reshape(2, 3, 4, 5)
    identity = np.eye(3, dtype=dtype).reshape(3, 3, 1, 1)
    y = F.conv2d(x, identity)
    np.testing.assert_array_equal(y, x)
    grad_x = F.conv2d_backward_input(x, identity, x.shape)
    np.testing.assert_array_equal(grad_x, x)
    transposed = F.conv_transpose2d(x, identity)
    np.testing.assert_array_equal(transposed, x)
    check_fresh_outputs([y, grad_x, transposed], [x, identity], dtype)


@pytest.mark.parametrize("op", CONV_OPS)
@pytest.mark.parametrize(
    "case",
    [
        ConvCase(0, 3, 7, 6, 4, (3, 2), stride=2, padding=1),
        ConvCase(0, 4, 5, 5, 4, (3, 3), padding="same", groups=4),
        ConvCase(0, 4, 6, 5, 2, (1, 1), groups=2),
    ],
    ids=["dense", "depthwise", "1x1-grouped"],
)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_empty_batch(dtype, case, op, rng):
    x, weight, bias, grad_out = case.arrays(rng, dtype)
    outputs = run_conv_op(F, op, x, weight, bias, grad_out, case.kwargs)
    assert [out.shape for out in outputs] == expected_shapes(op, case)
    expected = run_conv_op(reference, op, x, weight, bias, grad_out, case.kwargs)
    for out, ref in zip(outputs, expected, strict=True):
        # The weight and bias gradients of an empty batch are sums of nothing: zeros.
        assert_close(out, ref, dtype)
    check_fresh_outputs(outputs, (x, weight, bias, grad_out), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_conv_transpose2d_empty_batch(dtype, rng):
    case = TransposeCase(0, 4, 5, 6, 6, (3, 2), stride=2, padding=1, groups=2)
    x, weight, bias = case.arrays(rng, dtype)
    y = F.conv_transpose2d(x, weight, bias, **case.kwargs)
    assert y.shape == (0, 6, *case.out_size())
    assert y.dtype == dtype


def test_large_image_forward_and_backward_in_row_chunks(rng):
    # 1 x 3 x 1100 x 1100 with a 3x3 kernel: 27 x 1.2M column elements, far beyond one
    # thread's column budget, so every pass runs in row chunks.
    case = ConvCase(1, 3, 1100, 1100, 4, (3, 3), padding=1)
    x, weight, bias, grad_out = case.arrays(rng, np.float32)
    assert_close(F.conv2d(x, weight, bias, padding=1), reference.conv2d(x, weight, bias, padding=1))
    grad_x, grad_w, grad_b = F.conv2d_backward(grad_out, x, weight, padding=1)
    assert_close(grad_x, reference.conv2d_backward_input(grad_out, weight, x.shape, padding=1))
    assert_close(grad_w, reference.conv2d_backward_weight(grad_out, x, weight.shape, padding=1))
    assert_close(grad_b, reference.conv2d_backward_bias(grad_out))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("batch", [2, 3, 5, 9, 17, 47, 64])
def test_small_planes_blocked_in_balanced_tiles(rng, batch, threads):
    # 5x5 outputs from 80 input channels: images are blocked together into one GEMM and the
    # blocks are spread evenly over the team (sizes differ by at most one image); every pass
    # must still see every image exactly once. Enough work that the thread count applies.
    case = ConvCase(batch, 80, 7, 7, 96, (3, 3))
    x, weight, bias, grad_out = case.arrays(rng, np.float64)
    previous = convx.get_num_threads()
    convx.set_num_threads(threads)
    try:
        assert_close(F.conv2d(x, weight, bias), reference.conv2d(x, weight, bias))
        grad_x, grad_w, grad_b = F.conv2d_backward(grad_out, x, weight)
        assert_close(grad_x, reference.conv2d_backward_input(grad_out, weight, x.shape))
        assert_close(grad_w, reference.conv2d_backward_weight(grad_out, x, weight.shape))
        assert_close(grad_b, reference.conv2d_backward_bias(grad_out))
        assert_close(F.conv2d_backward_weight(grad_out, x, weight.shape),
                     reference.conv2d_backward_weight(grad_out, x, weight.shape))
    finally:
        convx.set_num_threads(previous)


def test_large_image_separate_backward_passes_strided(rng):
    case = ConvCase(1, 3, 1100, 1100, 2, (3, 3), stride=(1, 2), padding=(0, 1), dilation=2)
    x, weight, _, grad_out = case.arrays(rng, np.float32)
    kwargs = case.kwargs
    assert_close(
        F.conv2d_backward_input(grad_out, weight, x.shape, **kwargs),
        reference.conv2d_backward_input(grad_out, weight, x.shape, **kwargs),
    )
    assert_close(
        F.conv2d_backward_weight(grad_out, x, weight.shape, **kwargs),
        reference.conv2d_backward_weight(grad_out, x, weight.shape, **kwargs),
    )


FLOAT32_ACCURACY_CASES = {
    "many-channels": ConvCase(4, 64, 14, 13, 48, (3, 3), padding=1),
    "grouped-large-reduction": ConvCase(8, 8, 40, 44, 8, (3, 3), stride=(1, 2), padding=1, groups=2),
    "depthwise-large-plane": ConvCase(2, 3, 250, 230, 6, (3, 3), padding=1, dilation=(1, 2), groups=3),
    "1x1-large-reduction": ConvCase(8, 96, 20, 20, 32, (1, 1)),
}


@pytest.mark.parametrize("op", CONV_OPS)
@pytest.mark.parametrize("name", list(FLOAT32_ACCURACY_CASES))
def test_float32_results_are_accurate_against_float64(name, op, rng):
    # float32 inputs, compared with the float64 reference on the same (float32-representable)
    # values: the float32 accumulation error must stay within the float32 tolerance.
    case = FLOAT32_ACCURACY_CASES[name]
    arrays = case.arrays(rng, np.float32)
    outputs = run_conv_op(F, op, *arrays, case.kwargs)
    exact = run_conv_op(reference, op, *[None if a is None else a.astype(np.float64) for a in arrays], case.kwargs)
    for out, truth in zip(outputs, exact, strict=True):
        assert out.dtype == np.float32
        assert_close(out, truth, np.float32)


def _coverage(op, case, x_mask=None, grad_mask=None):
    """Which outputs of ``op`` read a masked input: the reference run on 0/1 indicators and |w| = 1."""
    ones_weight = np.ones(case.weight_shape)
    if op == "forward":
        return reference.conv2d(x_mask.astype(float), ones_weight, None, **case.kwargs) > 0
    if op == "backward_input":
        return reference.conv2d_backward_input(grad_mask.astype(float), ones_weight, case.x_shape, **case.kwargs) > 0
    if op == "backward_weight":
        return (
            reference.conv2d_backward_weight(
                grad_mask.astype(float), x_mask.astype(float), case.weight_shape, **case.kwargs
            )
            > 0
        )
    raise AssertionError(op)


NAN_CASES = [
    ConvCase(2, 4, 9, 8, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2),
    ConvCase(2, 3, 9, 11, 6, (3, 3), stride=(1, 2), padding=1, groups=3),
    ConvCase(2, 3, 6, 7, 4, (1, 1)),
    ConvCase(1, 2, 40, 9, 3, (3, 3), stride=2),
]
NAN_IDS = ["grouped", "depthwise", "1x1", "strided-gaps"]


@pytest.mark.parametrize("bad_value", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("case", NAN_CASES, ids=NAN_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_non_finite_input_reaches_exactly_the_windows_that_cover_it(dtype, case, bad_value, rng):
    x, weight, bias, grad_out = case.arrays(rng, dtype)
    x_mask = np.zeros(x.shape, dtype=bool)
    # One poisoned pixel inside, one on the border, and one in a row that stride 2 may skip.
    x_mask[0, 0, 1, 1] = x_mask[-1, -1, -1, 0] = x_mask[0, -1, 3, -1] = True
    x[x_mask] = bad_value
    y = F.conv2d(x, weight, bias, **case.kwargs)
    covered = _coverage("forward", case, x_mask=x_mask)
    assert covered.any() and not covered.all()
    np.testing.assert_array_equal(~np.isfinite(y), covered)
    if np.isnan(bad_value):
        assert np.isnan(y[covered]).all()

    grad_w = F.conv2d_backward_weight(grad_out, x, weight.shape, **case.kwargs)
    touched = _coverage("backward_weight", case, x_mask=x_mask, grad_mask=np.ones(grad_out.shape, dtype=bool))
    np.testing.assert_array_equal(~np.isfinite(grad_w), touched)


@pytest.mark.parametrize("case", NAN_CASES, ids=NAN_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_nan_in_grad_out_reaches_exactly_the_inputs_under_its_window(dtype, case, rng):
    x, weight, bias, grad_out = case.arrays(rng, dtype)
    grad_mask = np.zeros(grad_out.shape, dtype=bool)
    grad_mask[0, 0, 0, 1] = grad_mask[-1, -1, -1, -1] = True
    grad_out[grad_mask] = np.nan
    grad_x = F.conv2d_backward_input(grad_out, weight, x.shape, **case.kwargs)
    reached = _coverage("backward_input", case, grad_mask=grad_mask)
    assert reached.any() and not reached.all()
    np.testing.assert_array_equal(np.isnan(grad_x), reached)
    assert np.isfinite(grad_x[~reached]).all()

    # A NaN gradient times a padding zero is NaN as well, so only the weights whose taps met
    # the NaN's window inside the image must be NaN, and the channels without NaN stay finite.
    clean_channels = ~grad_mask.any(axis=(0, 2, 3))
    touched = _coverage("backward_weight", case, x_mask=np.ones(x.shape, dtype=bool), grad_mask=grad_mask)
    grad_b_nan = ~clean_channels
    for grad_w in (
        F.conv2d_backward_weight(grad_out, x, weight.shape, **case.kwargs),
        F.conv2d_backward(grad_out, x, weight, **case.kwargs)[1],
    ):
        assert np.isnan(grad_w[touched]).all()
        assert np.isfinite(grad_w[clean_channels]).all()

    grad_b = F.conv2d_backward_bias(grad_out)
    np.testing.assert_array_equal(np.isnan(grad_b), grad_b_nan)

    fused_x, _, fused_b = F.conv2d_backward(grad_out, x, weight, **case.kwargs)
    np.testing.assert_array_equal(np.isnan(fused_x), reached)
    np.testing.assert_array_equal(np.isnan(fused_b), grad_b_nan)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_conv_transpose2d_nan_spreads_over_its_kernel_footprint(dtype, rng):
    case = TransposeCase(2, 4, 5, 6, 6, (3, 2), stride=2, padding=1, output_padding=1, groups=2)
    x, weight, bias = case.arrays(rng, dtype)
    x_mask = np.zeros(x.shape, dtype=bool)
    x_mask[1, 2, 2, 3] = True
    x[x_mask] = np.nan
    y = F.conv_transpose2d(x, weight, bias, **case.kwargs)
    footprint = reference.conv_transpose2d(x_mask.astype(float), np.ones(case.weight_shape), None, **case.kwargs) > 0
    assert footprint.any() and not footprint.all()
    np.testing.assert_array_equal(np.isnan(y), footprint)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_integer_like_arguments(dtype, rng):
    case = ConvCase(2, 4, 9, 8, 6, (3, 2), stride=2, padding=1, dilation=(1, 2), groups=2)
    x, weight, bias, _ = case.arrays(rng, dtype)
    expected = F.conv2d(x, weight, bias, **case.kwargs)
    # NumPy integers, lists and mixed pairs are ints and pairs too.
    forms = dict(stride=np.int64(2), padding=[1, np.int32(1)], dilation=[1, 2], groups=np.int16(2))
    assert_close(F.conv2d(x, weight, bias, **forms), expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_valid_and_zero_padding_agree(dtype, rng):
    case = ConvCase(2, 3, 7, 6, 4, (4, 2), stride=(2, 1), dilation=(1, 2))
    x, weight, bias, _ = case.arrays(rng, dtype)
    np.testing.assert_array_equal(
        F.conv2d(x, weight, bias, stride=(2, 1), padding="valid", dilation=(1, 2)),
        F.conv2d(x, weight, bias, stride=(2, 1), padding=0, dilation=(1, 2)),
    )


@pytest.mark.parametrize("kernel", [(3, 3), (4, 2), (2, 5), (1, 4)], ids=str)
@pytest.mark.parametrize("dilation", [1, (2, 3)], ids=str)
def test_same_padding_keeps_size_and_pads_bottom_right(kernel, dilation, rng):
    x = rng.standard_normal((2, 3, 7, 8))
    weight = rng.standard_normal((4, 3, *kernel))
    y = F.conv2d(x, weight, padding="same", dilation=dilation)
    assert y.shape == (2, 4, 7, 8)
    # PyTorch's rule: the total dilation * (k - 1) is split with the extra zero after.
    pads = []
    for k, d in zip(kernel, pair(dilation)):
        total = d * (k - 1)
        pads.append((total // 2, total - total // 2))
    x_padded = np.pad(x, ((0, 0), (0, 0), *pads))
    assert_close(y, reference.conv2d(x_padded, weight, dilation=dilation))


def test_unbatched_matches_batch_of_one(rng):
    case = ConvCase(1, 4, 9, 8, 6, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2), groups=2)
    x, weight, bias, grad_out = case.arrays(rng, np.float64)
    kwargs = case.kwargs
    assert_close(F.conv2d(x[0], weight, bias, **kwargs), F.conv2d(x, weight, bias, **kwargs)[0])
    assert_close(
        F.conv2d_backward_input(grad_out[0], weight, x.shape[1:], **kwargs),
        F.conv2d_backward_input(grad_out, weight, x.shape, **kwargs)[0],
    )
    assert_close(
        F.conv2d_backward_weight(grad_out[0], x[0], weight.shape, **kwargs),
        F.conv2d_backward_weight(grad_out, x, weight.shape, **kwargs),
    )
    assert_close(F.conv2d_backward_bias(grad_out[0]), F.conv2d_backward_bias(grad_out))
    unbatched = F.conv2d_backward(grad_out[0], x[0], weight, **kwargs)
    batched = F.conv2d_backward(grad_out, x, weight, **kwargs)
    assert [a.shape for a in unbatched] == [x.shape[1:], weight.shape, (6,)]
    for a, b in zip(unbatched, (batched[0][0], batched[1], batched[2])):
        assert_close(a, b)


def test_top_level_names():
    for name in [
        "conv2d",
        "conv2d_backward",
        "conv2d_backward_bias",
        "conv2d_backward_input",
        "conv2d_backward_weight",
        "conv_transpose2d",
    ]:
        assert getattr(convx, name) is getattr(F, name)
        assert name in convx.__all__
    assert convx.set_num_threads is convx._threads.set_num_threads
    assert convx.get_num_threads is convx._threads.get_num_threads


def test_reference_docstring_examples():
    result = doctest.testmod(reference, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 5
    assert result.failed == 0


def _random_case(seed):
    """A seeded random valid geometry: groups, channels, kernel, stride, padding, dilation, batch, size."""
    rng = np.random.default_rng(seed)
    while True:
        groups = int(rng.choice([1, 1, 2, 3, 4]))
        c_in = groups * int(rng.choice([1, 1, 2, 3]))
        c_out = groups * int(rng.integers(1, 4))
        kernel = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        dilation = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        padding = (int(rng.integers(0, 4)), int(rng.integers(0, 4)))
        if rng.random() < 0.15:
            stride, padding = 1, "same"
        n = int(rng.choice([0, 1, 2, 3, 5, 9, 17]))
        case = ConvCase(
            n,
            c_in,
            int(rng.integers(1, 25)),
            int(rng.integers(1, 25)),
            c_out,
            kernel,
            stride,
            padding,
            dilation,
            groups,
            bias=bool(rng.random() < 0.7),
        )
        if min(case.out_size()) >= 1:
            return case


@pytest.mark.parametrize("seed", range(60))
def test_random_geometries_match_reference(seed):
    case = _random_case(seed)
    dtype = DTYPES[seed % 2]
    for op in CONV_OPS:
        _check_conv_op(case, op, dtype, np.random.default_rng(seed))
    if not isinstance(case.padding, str):
        rng = np.random.default_rng(seed)
        extra = tuple(int(rng.integers(0, max(s, d))) for s, d in zip(pair(case.stride), pair(case.dilation)))
        transposed = TransposeCase(
            case.n,
            case.c_in,
            case.height,
            case.width,
            case.c_out,
            case.kernel,
            case.stride,
            case.padding,
            extra,
            case.dilation,
            case.groups,
        )
        if min(transposed.out_size()) >= 1:
            _check_conv_transpose(transposed, dtype, rng)


# Windows that cover the whole input (a 1x1 output, no padding inside the window, dilation 1,
# one group): one matrix product over the batch, through numpy's BLAS (functional.conv).
WHOLE_WINDOW_CASES = {
    "lenet-c5": ConvCase(5, 4, 5, 5, 7, (5, 5)),
    "non-square": ConvCase(3, 2, 3, 6, 5, (3, 6), stride=(2, 3)),
    "1x1-planes": ConvCase(6, 9, 1, 1, 4, (1, 1)),
    "unbatched-no-bias": ConvCase(1, 3, 2, 2, 5, (2, 2), unbatched=True, bias=False),
    "one-image": ConvCase(1, 6, 3, 3, 2, (3, 3)),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("op", CONV_OPS)
@pytest.mark.parametrize("name", list(WHOLE_WINDOW_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_whole_window_convolutions_match_reference(dtype, name, op, threads, rng, monkeypatch):
    case = WHOLE_WINDOW_CASES[name]
    products = []
    real_matmul = F.conv.matmul

    def counting(a, b, out, n_threads):
        products.append(out.shape)
        return real_matmul(a, b, out, n_threads)

    monkeypatch.setattr(F.conv, "matmul", counting)
    saved = convx.get_num_threads()
    convx.set_num_threads(threads)
    try:
        _check_conv_op(case, op, dtype, rng)
    finally:
        convx.set_num_threads(saved)
    assert len(products) == {"forward": 1, "backward_input": 1, "backward_weight": 1, "backward_bias": 0,
                             "backward": 2}[op], products


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_whole_window_convolution_transposed_and_not_finite(dtype, rng):
    # conv_transpose2d from 1x1 inputs is the adjoint product; NaN and inf propagate as in the
    # sums of products (inf * 0 is NaN), from a non-contiguous, read-only input.
    x = rng.standard_normal((3, 4, 1, 1)).astype(dtype)
    weight = rng.standard_normal((4, 2, 3, 3)).astype(dtype)
    assert_close(F.conv_transpose2d(x, weight), reference.conv_transpose2d(x, weight), dtype)
    image = rng.standard_normal((2, 3, 4, 8)).astype(dtype)[:, :, :, ::2]
    image[0, 1, 2, 3] = np.nan
    image[1, 0, 0, 0] = np.inf
    image.flags.writeable = False
    filters = rng.standard_normal((5, 3, 4, 4)).astype(dtype)
    filters[2] = 0
    y = F.conv2d(image, filters)
    assert np.isnan(y[0]).all() and np.isnan(y[1, 2]) and np.isinf(y[1, [0, 1, 3, 4]]).all()
    with np.errstate(all="ignore"):
        expected = reference.conv2d(image, filters)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    assert_close(np.nan_to_num(y), np.nan_to_num(expected), dtype)


# Depthwise convolutions (one input channel per group, any channel multiplier) have two
# implementations (src/convx/_depthwise.pxi): the phase-split sweeps and the direct row loops.
# Each is forced in turn over the geometries of depthwise layers (strides 2 and 3, 5x5 and 7x7,
# dilation, multipliers, planes of 1x1 to 4x4 stacked many to a sweep, odd sizes, planes large
# enough to go in bands), as is the automatic choice between them.
DEPTHWISE_CASES = {
    "3x3-stride2": ConvCase(3, 4, 16, 16, 4, (3, 3), stride=2, padding=1, groups=4),
    "3x3-stride2-odd": ConvCase(2, 3, 15, 13, 3, (3, 3), stride=2, padding=1, groups=3),
    "3x3-stride3": ConvCase(2, 3, 11, 13, 3, (3, 3), stride=3, padding=1, groups=3),
    "5x5-stride1": ConvCase(2, 3, 9, 10, 3, (5, 5), padding=2, groups=3),
    "5x5-stride2-x2": ConvCase(2, 3, 9, 10, 6, (5, 5), stride=2, padding=2, groups=3),
    "7x7-stride2": ConvCase(2, 2, 13, 12, 2, (7, 7), stride=2, padding=3, groups=2),
    "3x3-dilated": ConvCase(2, 3, 12, 11, 3, (3, 3), padding=2, dilation=2, groups=3),
    "3x3-dilated-strided-x2": ConvCase(2, 2, 12, 11, 4, (3, 3), stride=2, padding=2, dilation=(2, 3), groups=2),
    "1x1-planes": ConvCase(5, 3, 1, 1, 3, (3, 3), padding=1, groups=3),
    "2x2-planes": ConvCase(9, 3, 2, 2, 3, (3, 3), padding=1, groups=3),
    "3x3-planes-stride2": ConvCase(7, 2, 3, 3, 2, (3, 3), stride=2, padding=1, groups=2),
    "4x4-planes-many-images": ConvCase(70, 2, 4, 4, 2, (3, 3), padding=1, groups=2),
    "4x4-planes-x2": ConvCase(9, 2, 4, 4, 4, (3, 3), padding=1, groups=2),
    "8x8-planes-x3-stride2": ConvCase(33, 2, 8, 8, 6, (3, 3), stride=2, padding=1, groups=2),
    "asymmetric": ConvCase(3, 2, 10, 9, 2, (3, 5), stride=(2, 1), padding=(1, 2), groups=2),
    "even-kernel-same": ConvCase(2, 3, 8, 9, 3, (4, 2), padding="same", groups=3),
    "stride-past-kernel": ConvCase(2, 2, 11, 10, 2, (2, 2), stride=3, groups=2),
    "1x1-kernel-stride2": ConvCase(2, 3, 7, 6, 3, (1, 1), stride=2, groups=3),
    "no-padding-stride2": ConvCase(2, 2, 9, 9, 2, (3, 3), stride=2, groups=2),
    "3x3-wide-rows": ConvCase(2, 2, 9, 70, 2, (3, 3), padding=1, groups=2),
    "large-plane-bands-5x5-stride2": ConvCase(1, 2, 150, 140, 2, (5, 5), stride=2, padding=2, groups=2),
    "large-plane-bands-3x3": ConvCase(1, 2, 130, 120, 4, (3, 3), padding=1, groups=2),
}
DEPTHWISE_OPS = ["forward", "backward_input", "backward_weight", "backward"]


@pytest.fixture(params=["auto", "split", "direct"])
def depthwise_kernel(request):
    """Each depthwise implementation forced in turn (convx._core.set_depthwise_kernel), and the choice."""
    saved = convx._core.depthwise_kernel()
    convx._core.set_depthwise_kernel(request.param)
    yield request.param
    convx._core.set_depthwise_kernel(saved)


@pytest.mark.parametrize("op", DEPTHWISE_OPS)
@pytest.mark.parametrize("name", list(DEPTHWISE_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_depthwise_implementations_match_reference(depthwise_kernel, dtype, name, op, rng):
    _check_conv_op(DEPTHWISE_CASES[name], op, dtype, rng)


@pytest.mark.parametrize("name", ["3x3-stride2", "5x5-stride2-x2", "4x4-planes-many-images", "large-plane-bands-3x3"])
def test_depthwise_thread_count_changes_no_bit(depthwise_kernel, name, rng):
    """Every output (and every weight-gradient sum) is computed by one thread in an order of its own, so 1, 2
    and 3 threads give the same bits."""
    case = DEPTHWISE_CASES[name]
    x, weight, bias, grad_out = case.arrays(rng, np.float32)
    previous = convx.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            convx.set_num_threads(threads)
            results.append([F.conv2d(x, weight, bias, **case.kwargs),
                            *F.conv2d_backward(grad_out, x, weight, **case.kwargs),
                            F.conv2d_backward_weight(grad_out, x, weight.shape, **case.kwargs)])
    finally:
        convx.set_num_threads(previous)
    for other in results[1:]:
        for got, first in zip(other, results[0], strict=True):
            np.testing.assert_array_equal(got, first)


def _same_non_finite(actual, expected, dtype):
    """NaN, +inf and -inf exactly where ``expected`` has them; the finite values close."""
    for test in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(test(actual), test(expected))
    finite = np.isfinite(expected)
    assert_close(actual[finite], expected[finite], dtype)


DEPTHWISE_NAN_CASES = ["3x3-stride2", "5x5-stride2-x2", "4x4-planes-many-images", "3x3-dilated",
                       "large-plane-bands-5x5-stride2", "3x3-wide-rows"]


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["x-inside", "x-corner", "x-last-column-last-image", "weight", "grad_out"])
@pytest.mark.parametrize("name", DEPTHWISE_NAN_CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_depthwise_non_finite_values_as_the_definition(depthwise_kernel, dtype, name, where, value, rng):
    """NaN and +-inf where the definition's sum of products (the padding's zeros included, as im2col
    multiplies them) puts them: a non-finite weight makes the forward's border outputs NaN but not the
    input gradient's (the sweeps read grad_out's padding, which the definition never multiplies), and an
    infinite input value must not meet the zeros of grad_out's lanes past its rows in the weight gradient."""
    case = DEPTHWISE_CASES[name]
    x, weight, bias, grad_out = case.arrays(rng, dtype)
    if where == "x-inside":
        x[0, 0, x.shape[2] // 2, 1] = value
    elif where == "x-corner":
        x[0, 0, 0, 0] = value
    elif where == "x-last-column-last-image":
        x[-1, -1, x.shape[2] // 2, -1] = value
    elif where == "weight":
        weight[0, 0, 0, -1] = value
    else:
        grad_out[0, 0, 0, 0] = grad_out[-1, -1, -1, -1] = value
    with np.errstate(all="ignore"):
        expected = [run_conv_op(reference, op, x, weight, bias, grad_out, case.kwargs)[0]
                    for op in ("forward", "backward_input", "backward_weight")]
    actual = [run_conv_op(F, op, x, weight, bias, grad_out, case.kwargs)[0]
              for op in ("forward", "backward_input", "backward_weight")]
    assert any(not np.isfinite(e).all() for e in expected)
    for got, want in zip(actual, expected, strict=True):
        _same_non_finite(got, want, dtype)


def test_depthwise_non_finite_input_in_an_early_sweep_only(depthwise_kernel, rng):
    """The weight gradient's buffer keeps the zeros of its padding and whatever the previous sweep left
    in the lanes past the last plane: an infinite input in the first of several sweeps of a thread must
    not reach the gradient through the later ones."""
    case = DEPTHWISE_CASES["4x4-planes-many-images"]
    x, weight, bias, grad_out = case.arrays(rng, np.float64)
    x[0, 0, 1, 3] = np.inf
    x[0, 1, 0, 0] = np.nan
    with np.errstate(all="ignore"):
        expected = reference.conv2d_backward_weight(grad_out, x, weight.shape, **case.kwargs)
    for threads in (1, 2):
        previous = convx.get_num_threads()
        convx.set_num_threads(threads)
        try:
            for batch in (70, 69, 40):
                with np.errstate(all="ignore"):
                    want = reference.conv2d_backward_weight(grad_out[:batch], x[:batch], weight.shape, **case.kwargs)
                _same_non_finite(F.conv2d_backward_weight(grad_out[:batch], x[:batch], weight.shape, **case.kwargs),
                                 want, np.float64)
        finally:
            convx.set_num_threads(previous)
    _same_non_finite(F.conv2d_backward_weight(grad_out, x, weight.shape, **case.kwargs), expected, np.float64)


def _depthwise_choice(op, case, dtype=np.float32):
    """convx._core.depthwise_implementation's name for ``op`` of ``case`` (symmetric int padding)."""
    n, c_in, height, width = case.x_shape
    c_out, _, kernel_h, kernel_w = case.weight_shape
    out_h, out_w = case.out_size()
    (stride_h, stride_w), (pad_h, pad_w), (dil_h, dil_w) = pair(case.stride), pair(case.padding), pair(case.dilation)
    return convx._core.depthwise_implementation(
        op, n, c_in, height, width, c_out, kernel_h, kernel_w, out_h, out_w, stride_h, stride_w, pad_h, pad_w,
        dil_h, dil_w, case.groups, np.dtype(dtype).itemsize)[0]


def test_depthwise_choice_follows_the_table():
    """The sweeps for the layers of MobileNet- and EfficientNet-style nets; the direct loops' 3x3 stride-1
    kernels on rows at least DW_DIRECT_FROM long (float32: 56 forward, 48 input gradient, 64 weight
    gradient); the direct loops wherever the sweeps' buffers would span padding far past the plane."""
    assert convx._core.depthwise_kernel() == "auto"
    for case in [ConvCase(64, 32, 32, 32, 32, (3, 3), padding=1, groups=32),
                 ConvCase(64, 64, 32, 32, 64, (3, 3), stride=2, padding=1, groups=64),
                 ConvCase(64, 128, 16, 16, 128, (3, 3), padding=1, groups=128),
                 ConvCase(64, 256, 4, 4, 256, (3, 3), padding=1, groups=256),
                 ConvCase(8, 240, 28, 28, 240, (5, 5), padding=2, groups=240),
                 ConvCase(8, 96, 112, 112, 96, (3, 3), stride=2, padding=1, groups=96),
                 ConvCase(8, 96, 112, 112, 96, (5, 5), padding=2, groups=96)]:
        assert [_depthwise_choice(op, case) for op in ("forward", "input", "weight")] == ["split"] * 3, case
    # a channel multiplier: the direct loops' 3x3 input gradient needs one filter per channel
    doubled = ConvCase(8, 16, 112, 112, 32, (3, 3), padding=1, groups=16)
    assert [_depthwise_choice(op, doubled) for op in ("forward", "input", "weight")] == ["direct", "split", "direct"]
    wide = ConvCase(16, 128, 56, 56, 128, (3, 3), padding=1, groups=128)
    assert [_depthwise_choice(op, wide) for op in ("forward", "input", "weight")] == ["direct", "direct", "split"]
    wider = ConvCase(16, 32, 64, 64, 32, (3, 3), padding=1, groups=32)
    assert [_depthwise_choice(op, wider) for op in ("forward", "input", "weight")] == ["direct"] * 3
    assert [_depthwise_choice(op, wider, np.float64) for op in ("forward", "input", "weight")] == ["direct"] * 3
    small = ConvCase(16, 32, 16, 16, 32, (3, 3), padding=1, groups=32)
    assert [_depthwise_choice(op, small, np.float64) for op in ("forward", "input", "weight")] == ["split"] * 3
    far = ConvCase(1, 4, 2, 3, 4, (3, 3), padding=10**4, dilation=10**4, groups=4)
    assert [_depthwise_choice(op, far) for op in ("forward", "input", "weight")] == ["direct"] * 3


def test_depthwise_choice_forced(depthwise_kernel):
    case = ConvCase(16, 32, 64, 64, 32, (3, 3), padding=1, groups=32)
    far = ConvCase(1, 4, 2, 3, 4, (3, 3), padding=10**4, dilation=10**4, groups=4)
    for op in ("forward", "input", "weight"):
        assert _depthwise_choice(op, far) == "direct"
        if depthwise_kernel != "auto":
            assert _depthwise_choice(op, case) == depthwise_kernel
    with pytest.raises(ValueError, match="depthwise kernel must be one of 'auto', 'split', 'direct', got 'fast'"):
        convx._core.set_depthwise_kernel("fast")
