"""algorithm="winograd" / "auto": Winograd F(4x4, 3x3) for 3x3 stride-1 convolutions.

Every op against the float64 NumPy reference (written from the definition, not from Winograd)
and PyTorch, over geometries that stress the tiling: planes smaller than a tile, sizes that
are not multiples of 4, padding 0..3 (the input gradient then reads with padding 2 - p, a crop
for p > 2), runs of tile rows that cross images, several chunks per call. Non-finite values
and overflow must come out exactly as with algorithm="direct".
"""

import numpy as np
import pytest
from _helpers import ConvCase, torch_conv2d
from conftest import DTYPES, WINOGRAD_TOLERANCES, assert_close

import convx
import convx.functional as F
from convx import nn
from convx.reference import conv as reference

DTYPE_IDS = ["float32", "float64"]

CASES = {
    "small": ConvCase(2, 3, 9, 11, 5, (3, 3), padding=1),
    "no-bias": ConvCase(2, 4, 7, 6, 3, (3, 3), padding=1, bias=False),
    "valid": ConvCase(3, 2, 8, 8, 3, (3, 3)),
    "valid-string": ConvCase(2, 3, 10, 7, 2, (3, 3), padding="valid"),
    "same": ConvCase(2, 3, 13, 6, 4, (3, 3), padding="same"),
    "padding-2": ConvCase(2, 3, 5, 7, 4, (3, 3), padding=2),
    "padding-3-crop-in-input-gradient": ConvCase(2, 5, 6, 4, 3, (3, 3), padding=3),
    "padding-asymmetric": ConvCase(2, 3, 9, 6, 4, (3, 3), padding=(2, 0)),
    "kernel-equals-input": ConvCase(3, 4, 3, 3, 2, (3, 3)),
    "one-pixel": ConvCase(2, 3, 1, 1, 2, (3, 3), padding=1),
    "one-row": ConvCase(2, 3, 1, 9, 2, (3, 3), padding=(1, 0)),
    "one-channel": ConvCase(3, 1, 9, 8, 1, (3, 3), padding=1),
    "many-small-images": ConvCase(37, 3, 5, 7, 4, (3, 3), padding=1),
    "unbatched": ConvCase(1, 3, 8, 9, 4, (3, 3), padding=1, unbatched=True),
    # 30 tile rows of 10 tiles, 22 rows per chunk: two chunks, transform runs across images.
    "two-chunks": ConvCase(3, 64, 40, 40, 64, (3, 3), padding=1),
    # 175 tiles per tile row: one tile row per chunk and per run.
    "wide-rows": ConvCase(1, 64, 10, 700, 64, (3, 3), padding=1),
}


def _reference(case, x, weight, bias, grad_out):
    x, weight, grad_out = (a.astype(np.float64) for a in (x, weight, grad_out))
    bias = None if bias is None else bias.astype(np.float64)
    kwargs = case.kwargs
    return (
        reference.conv2d(x, weight, bias, **kwargs),
        reference.conv2d_backward_input(grad_out, weight, x.shape, **kwargs),
        reference.conv2d_backward_weight(grad_out, x, weight.shape, **kwargs),
        reference.conv2d_backward_bias(grad_out),
    )


def _winograd_ops(case, x, weight, bias, grad_out, algorithm="winograd"):
    kwargs = dict(case.kwargs, algorithm=algorithm)
    return (
        F.conv2d(x, weight, bias, **kwargs),
        F.conv2d_backward_input(grad_out, weight, x.shape, **kwargs),
        F.conv2d_backward_weight(grad_out, x, weight.shape, **kwargs),
        F.conv2d_backward(grad_out, x, weight, **kwargs),
    )


def _assert_matches(case, x, weight, bias, grad_out, expected, dtype):
    y, grad_x, grad_w, fused = _winograd_ops(case, x, weight, bias, grad_out)
    for actual, wanted in [(y, expected[0]), (grad_x, expected[1]), (grad_w, expected[2]),
                           (fused[0], expected[1]), (fused[1], expected[2])]:
        assert actual.dtype == dtype and actual.flags.c_contiguous
        assert_close(actual, wanted, dtype, WINOGRAD_TOLERANCES)
    assert_close(fused[2], expected[3], dtype)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_winograd_matches_the_reference(name, dtype, rng):
    case = CASES[name]
    x, weight, bias, grad_out = case.arrays(rng, dtype)
    _assert_matches(case, x, weight, bias, grad_out, _reference(case, x, weight, bias, grad_out), dtype)


@pytest.mark.parametrize("name", ["small", "padding-3-crop-in-input-gradient", "many-small-images", "two-chunks"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_winograd_matches_torch(torch, name, dtype, rng):
    case = CASES[name]
    x, weight, bias, grad_out = case.arrays(rng, dtype)
    expected = torch_conv2d(torch, x, weight, bias, grad_out, case.kwargs)
    _assert_matches(case, x, weight, bias, grad_out,
                    (expected.y, expected.grad_x, expected.grad_w, expected.grad_b), dtype)


@pytest.mark.parametrize("padding", [0, 1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_winograd_conv_transpose2d(padding, dtype, rng):
    x = rng.standard_normal((3, 5, 7, 6)).astype(dtype)
    weight = rng.standard_normal((5, 4, 3, 3)).astype(dtype)
    bias = rng.standard_normal(4).astype(dtype)
    expected = reference.conv_transpose2d(x.astype(np.float64), weight.astype(np.float64),
                                          bias.astype(np.float64), padding=padding)
    actual = F.conv_transpose2d(x, weight, bias, padding=padding, algorithm="winograd")
    assert_close(actual, expected, dtype, WINOGRAD_TOLERANCES)


def test_winograd_gradients_match_central_differences(rng):
    x = rng.standard_normal((2, 3, 6, 5))
    weight = rng.standard_normal((4, 3, 3, 3))
    grad_out = rng.standard_normal((2, 4, 6, 5))
    inputs = [x, weight]

    def forward(x, weight):
        return F.conv2d(x, weight, padding=1, algorithm="winograd")

    def backward(g):
        return (F.conv2d_backward_input(g, weight, x.shape, padding=1, algorithm="winograd"),
                F.conv2d_backward_weight(g, x, weight.shape, padding=1, algorithm="winograd"))

    assert convx.gradcheck(forward, inputs, backward)
    assert grad_out.shape == forward(x, weight).shape


@pytest.mark.parametrize("where", ["x", "weight", "grad_out"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_non_finite_values_give_exactly_what_direct_gives(where, value, dtype, rng):
    # A transform spreads one non-finite value over its tile; convx then recomputes directly.
    case = CASES["two-chunks"]
    x, weight, bias, grad_out = case.arrays(rng, dtype)
    arrays = dict(x=x, weight=weight, grad_out=grad_out)
    arrays[where][(1, 2, 2, 1) if where == "weight" else (1, 2, 3, 17)] = value
    with np.errstate(invalid="ignore", over="ignore"):
        winograd = _winograd_ops(case, x, weight, bias, grad_out)
        direct = _winograd_ops(case, x, weight, bias, grad_out, algorithm="direct")
    # (result, the arrays it reads): those that read the poisoned array are direct's, bit for bit.
    results = [(0, None, "x weight"), (1, None, "grad_out weight"), (2, None, "grad_out x"),
               (3, 0, "grad_out weight"), (3, 1, "grad_out x")]
    for op, part, reads in results:
        actual = winograd[op] if part is None else winograd[op][part]
        expected = direct[op] if part is None else direct[op][part]
        if where in reads.split():
            assert not np.isfinite(expected).all()
            np.testing.assert_array_equal(actual, expected)
        else:
            assert_close(actual, expected, dtype, WINOGRAD_TOLERANCES)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_overflow_in_the_transforms_falls_back_to_direct(dtype, rng):
    # Finite inputs whose transforms overflow (B^T scales by up to 25 per dimension) while the
    # direct sums stay finite: the result must be direct's, not inf.
    big = np.finfo(dtype).max / 4
    x = np.zeros((1, 1, 6, 6), dtype=dtype)
    x[0, 0, 2, 2] = big
    weight = np.zeros((1, 1, 3, 3), dtype=dtype)
    weight[0, 0, 1, 1] = 1
    y = F.conv2d(x, weight, padding=1, algorithm="winograd")
    np.testing.assert_array_equal(y, F.conv2d(x, weight, padding=1))
    assert np.isfinite(y).all()


def test_results_do_not_depend_on_the_thread_count(rng):
    case = CASES["two-chunks"]
    x, weight, bias, grad_out = case.arrays(rng, np.float32)
    original = convx.get_num_threads()
    try:
        results = []
        for n_threads in (1, 2):
            convx.set_num_threads(n_threads)
            results.append(_winograd_ops(case, x, weight, bias, grad_out))
    finally:
        convx.set_num_threads(original)
    for one, two in zip(results[0][:3] + results[0][3], results[1][:3] + results[1][3]):
        np.testing.assert_array_equal(one, two)


def test_any_layout_and_read_only_inputs_are_left_untouched(rng):
    case = CASES["small"]
    x, weight, bias, grad_out = case.arrays(rng, np.float64)
    expected = _winograd_ops(case, x, weight, bias, grad_out)
    x_f, weight_f, grad_f = (np.asfortranarray(a) for a in (x, weight, grad_out))
    for a in (x_f, weight_f, grad_f, bias):
        a.flags.writeable = False
    copies = [a.copy() for a in (x_f, weight_f, grad_f, bias)]
    actual = _winograd_ops(case, x_f, weight_f, bias, grad_f)
    for got, wanted in zip(actual[:3] + actual[3], expected[:3] + expected[3]):
        np.testing.assert_array_equal(got, wanted)
    for a, copy in zip((x_f, weight_f, grad_f, bias), copies):
        np.testing.assert_array_equal(a, copy)


def test_empty_batch(rng):
    x = np.empty((0, 3, 5, 5), dtype=np.float32)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    assert F.conv2d(x, weight, padding=1, algorithm="winograd").shape == (0, 4, 5, 5)
    grad_w = F.conv2d_backward_weight(np.empty((0, 4, 5, 5), np.float32), x, weight.shape, padding=1,
                                      algorithm="winograd")
    np.testing.assert_array_equal(grad_w, np.zeros_like(weight))


@pytest.mark.parametrize("channels, winograd", [((15, 64), False), ((64, 15), False), ((16, 16), True)])
def test_auto_takes_winograd_for_16_or_more_channels(channels, winograd, rng):
    c_in, c_out = channels
    x = rng.standard_normal((2, c_in, 9, 9))
    weight = rng.standard_normal((c_out, c_in, 3, 3))
    expected = F.conv2d(x, weight, padding=1, algorithm="winograd" if winograd else "direct")
    np.testing.assert_array_equal(F.conv2d(x, weight, padding=1, algorithm="auto"), expected)


def test_auto_keeps_the_transformed_weight_under_256_mib(rng):
    # 36 * 1024 * 1024 float64 = 288 MiB of transformed weight: 'auto' stays direct.
    x = rng.standard_normal((1, 1024, 3, 3))
    weight = rng.standard_normal((1024, 1024, 3, 3))
    np.testing.assert_array_equal(F.conv2d(x, weight, algorithm="auto"), F.conv2d(x, weight))
    small = weight[:512]  # 144 MiB: Winograd
    np.testing.assert_array_equal(F.conv2d(x, small, algorithm="auto"), F.conv2d(x, small, algorithm="winograd"))


@pytest.mark.parametrize("kwargs", [dict(stride=2), dict(dilation=2), dict(groups=2), dict(stride=(1, 2))])
def test_auto_falls_back_to_direct_where_winograd_does_not_apply(kwargs, rng):
    x = rng.standard_normal((2, 32, 9, 9))
    weight = rng.standard_normal((32, 32 // kwargs.get("groups", 1), 3, 3))
    np.testing.assert_array_equal(F.conv2d(x, weight, padding=1, algorithm="auto", **kwargs),
                                  F.conv2d(x, weight, padding=1, **kwargs))
    with pytest.raises(ValueError, match="algorithm='winograd' needs a 3x3 kernel, stride 1, dilation 1"):
        F.conv2d(x, weight, padding=1, algorithm="winograd", **kwargs)


def test_winograd_refuses_other_kernel_sizes(rng):
    x = rng.standard_normal((1, 2, 9, 9))
    for kernel in [(5, 5), (3, 2), (1, 1)]:
        weight = rng.standard_normal((2, 2, *kernel))
        with pytest.raises(ValueError, match=rf"got kernel \({kernel[0]}, {kernel[1]}\)"):
            F.conv2d(x, weight, algorithm="winograd")
        with pytest.raises(ValueError, match="algorithm='winograd' needs"):
            F.conv2d_backward_weight(np.ones((1, 2, 10 - kernel[0], 10 - kernel[1])), x, weight.shape,
                                     algorithm="winograd")


@pytest.mark.parametrize("algorithm", ["fast", "Winograd", "", None, 1, ("winograd",)])
def test_unknown_algorithms_are_refused_by_every_op(algorithm, rng):
    x = rng.standard_normal((1, 2, 5, 5))
    weight = rng.standard_normal((2, 2, 3, 3))
    grad_out = np.ones((1, 2, 3, 3))
    message = "algorithm must be one of 'direct', 'winograd', 'auto'"
    calls = [
        lambda: F.conv2d(x, weight, algorithm=algorithm),
        lambda: F.conv2d_backward_input(grad_out, weight, x.shape, algorithm=algorithm),
        lambda: F.conv2d_backward_weight(grad_out, x, weight.shape, algorithm=algorithm),
        lambda: F.conv2d_backward(grad_out, x, weight, algorithm=algorithm),
        lambda: F.conv_transpose2d(grad_out, weight, algorithm=algorithm),
        lambda: nn.Conv2d(2, 2, 3, algorithm=algorithm),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=message):
            call()


def test_conv2d_layer_with_winograd(rng):
    layer = nn.Conv2d(16, 24, 3, padding=1, algorithm="winograd", dtype=np.float64, rng=0)
    assert "algorithm='winograd'" in repr(layer)
    x = rng.standard_normal((3, 16, 10, 7))
    y = layer(x)
    grad_out = rng.standard_normal(y.shape)
    grad_x = layer.backward(grad_out)
    weight, bias = layer.params["weight"], layer.params["bias"]
    expected = _reference(ConvCase(3, 16, 10, 7, 24, (3, 3), padding=1), x, weight, bias, grad_out)
    for actual, wanted in [(y, expected[0]), (grad_x, expected[1]), (layer.grads["weight"], expected[2]),
                           (layer.grads["bias"], expected[3])]:
        assert_close(actual, wanted, np.float64, WINOGRAD_TOLERANCES)
    with pytest.raises(ValueError, match="algorithm='winograd' needs"):
        nn.Conv2d(16, 24, 3, stride=2, algorithm="winograd")


def test_conv_transpose2d_layer_with_winograd(rng):
    direct = nn.ConvTranspose2d(16, 20, 3, padding=1, dtype=np.float64, rng=0)
    layer = nn.ConvTranspose2d(16, 20, 3, padding=1, algorithm="auto", dtype=np.float64, rng=0)
    assert "algorithm='auto'" in repr(layer)
    x = rng.standard_normal((2, 16, 9, 7))
    y = layer(x)
    assert_close(y, direct(x), np.float64, WINOGRAD_TOLERANCES)
    grad_out = rng.standard_normal(y.shape)
    assert_close(layer.backward(grad_out), direct.backward(grad_out), np.float64, WINOGRAD_TOLERANCES)
    for name in ("weight", "bias"):
        assert_close(layer.grads[name], direct.grads[name], np.float64, WINOGRAD_TOLERANCES)
    # Winograd ran (its rounding differs from the direct sums'), it was not a silent fallback.
    assert not np.array_equal(y, direct(x))
    with pytest.raises(ValueError, match="algorithm='winograd' needs"):
        nn.ConvTranspose2d(16, 20, 3, stride=2, algorithm="winograd")
