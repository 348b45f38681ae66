"""Fusion (issue 18, item 2): ``conv2d(..., activation=)``, ``batch_norm(..., activation=)`` with
its backward, and ``nn.Sequential``'s fused groups (Conv2d + BatchNorm2d folded in evaluation +
activation; Conv2d + an output-reading activation in training; BatchNorm2d + activation).

Each fused result is compared with the same layers run one by one (``fuse=False``, or the
functional ops composed) and with PyTorch given the same weights. Exactly equal where the code
claims identical results (the functional activation epilogues, training-mode Conv2d +
activation, the batch normalisation's forward); within float rounding elsewhere (BatchNorm2d
folded into the convolution: 1e-5 relative in float32, 1e-12 in float64, as issue 18 asks).
"""

import copy
import pickle

import numpy as np
import pytest
from conftest import DTYPES, TOLERANCES, assert_close

import convx
import convx._batching
import convx.functional as F
from convx import nn
from convx.functional import conv as conv_module

pytestmark = pytest.mark.usefixtures("torch_on_one_thread")


# Fused against unfused where the two may round differently: issue 18's bound, relative to the
# largest magnitude of the expected array.
FUSION_TOLERANCES = {
    np.dtype(np.float32): dict(rtol=1e-5, atol=1e-5),
    np.dtype(np.float64): dict(rtol=1e-12, atol=1e-12),
}


def assert_bitwise_equal(actual, expected):
    """Same shape, dtype and bits (so +0 and -0 differ, and NaN equals NaN of the same payload)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (
        actual.dtype, actual.shape, expected.dtype, expected.shape)
    unsigned = np.uint32 if actual.dtype == np.float32 else np.uint64
    differ = np.ascontiguousarray(actual).view(unsigned) != np.ascontiguousarray(expected).view(unsigned)
    assert not differ.any(), (
        f"{int(differ.sum())} of {differ.size} elements differ, first at {np.argwhere(differ)[0]}: "
        f"{actual[tuple(np.argwhere(differ)[0])]!r} against {expected[tuple(np.argwhere(differ)[0])]!r}"
    )


# Gradients behind a folded BatchNorm2d: in float32 a deep net's fused and unfused gradients
# differ by as much as the unfused float32 gradient differs from float64 (measured on mixed_net
# below: up to 1.1e-4 and 1.4e-4 of the largest element, a sum over a batch-statistics layer),
# so float32 is held to the library's usual tolerance, float64 to issue 18's 1e-12.
FUSED_GRAD_TOLERANCES = {
    np.dtype(np.float32): TOLERANCES[np.dtype(np.float32)],
    np.dtype(np.float64): FUSION_TOLERANCES[np.dtype(np.float64)],
}


def assert_fused_close(actual, expected):
    if np.asarray(expected).dtype.kind != "f":
        assert_bitwise_equal(actual, expected)
    else:
        assert_close(actual, expected, tolerances=FUSION_TOLERANCES)


def assert_fused_grad_close(actual, expected):
    assert_close(actual, expected, tolerances=FUSED_GRAD_TOLERANCES)


# (functional name, keyword arguments): every activation with each of its options.
ACTIVATIONS = [
    ("relu", {}),
    ("relu6", {}),
    ("leaky_relu", {}),
    ("leaky_relu", {"negative_slope": 0.2}),
    ("leaky_relu", {"negative_slope": 0.0}),
    ("leaky_relu", {"negative_slope": -0.3}),
    ("leaky_relu", {"negative_slope": 1.5}),
    ("elu", {}),
    ("elu", {"alpha": 0.5}),
    ("elu", {"alpha": -0.7}),
    ("elu", {"alpha": 0.0}),
    ("selu", {}),
    ("sigmoid", {}),
    ("tanh", {}),
    ("silu", {}),
    ("gelu", {}),
    ("gelu", {"approximate": "tanh"}),
    ("hardswish", {}),
    ("hardsigmoid", {}),
    ("softplus", {}),
    ("softplus", {"beta": 2.0, "threshold": 1.5}),
    ("softplus", {"beta": -0.5, "threshold": 3}),
]

def _ids(items):
    return [name + "".join(f"-{k}={v}" for k, v in params.items()) for name, params in items]


ACTIVATION_IDS = _ids(ACTIVATIONS)


# Whose gradient the fused batch normalisation backward takes from the output: relu, relu6,
# sigmoid, tanh, leaky_relu with a non-negative slope, elu and selu with a non-negative alpha.
def _reads_output(name, params):
    if name == "leaky_relu":
        return params.get("negative_slope", 0.01) >= 0
    if name == "elu":
        return params.get("alpha", 1.0) >= 0
    return name in ("relu", "relu6", "selu", "sigmoid", "tanh")


OUTPUT_READING = [item for item in ACTIVATIONS if _reads_output(*item)]
INPUT_READING = [item for item in ACTIVATIONS if item not in OUTPUT_READING]


def unfused_activation(name, params, y):
    return getattr(F, name)(y, **params)


# -- conv2d(..., activation=) -----------------------------------------------------------------

# name -> (x shape, weight shape, conv2d keyword arguments).
GEOMETRIES = {
    "3x3-pad1": ((2, 3, 7, 6), (4, 3, 3, 3), dict(padding=1)),
    "grouped": ((2, 4, 6, 7), (6, 2, 3, 3), dict(padding=1, groups=2)),
    "depthwise": ((2, 4, 6, 6), (4, 1, 3, 3), dict(padding=1, groups=4)),
    "depthwise-x2": ((2, 3, 6, 5), (6, 1, 3, 3), dict(padding=(1, 2), groups=3)),
    "1x1": ((3, 5, 4, 4), (3, 5, 1, 1), {}),
    "1x1-strided": ((2, 5, 5, 5), (3, 5, 1, 1), dict(stride=2)),
    "whole-window": ((3, 2, 3, 3), (4, 2, 3, 3), {}),
    "strided": ((2, 3, 9, 8), (4, 3, 3, 3), dict(stride=(2, 3), padding=1)),
    "dilated": ((2, 3, 9, 9), (2, 3, 3, 2), dict(dilation=(2, 3), padding=2)),
    "same": ((2, 3, 6, 5), (4, 3, 4, 2), dict(padding="same")),
    "valid-5x5": ((1, 2, 8, 9), (3, 2, 5, 5), dict(padding="valid")),
    # Outputs that read only the padding: the "cut" path (bias alone there, then the epilogue).
    "padding-only-outputs": ((2, 3, 4, 5), (4, 3, 3, 3), dict(padding=(5, 4))),
    "padding-only-strided": ((2, 2, 3, 3), (3, 2, 2, 2), dict(padding=6, stride=3)),
}


def _conv_arrays(rng, dtype, x_shape, w_shape, bias=True):
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype) if bias else None
    return x, weight, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "params"), ACTIVATIONS, ids=ACTIVATION_IDS)
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_conv2d_activation_is_the_activation_of_conv2d_bit_for_bit(geometry, name, params, dtype, rng):
    x_shape, w_shape, kwargs = GEOMETRIES[geometry]
    x, weight, bias = _conv_arrays(rng, dtype, x_shape, w_shape, bias=geometry != "same")
    expected = unfused_activation(name, params, F.conv2d(x, weight, bias, **kwargs))
    fused = F.conv2d(x, weight, bias, **kwargs, activation=name, activation_params=params)
    assert_bitwise_equal(fused, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "params"), ACTIVATIONS, ids=ACTIVATION_IDS)
@pytest.mark.parametrize("algorithm", ["direct", "winograd", "auto"])
def test_conv2d_activation_with_every_algorithm(algorithm, name, params, dtype, rng):
    # 16 channels each way: 'auto' picks Winograd here.
    x, weight, bias = _conv_arrays(rng, dtype, (2, 16, 6, 7), (16, 16, 3, 3))
    expected = unfused_activation(name, params, F.conv2d(x, weight, bias, padding=1, algorithm=algorithm))
    fused = F.conv2d(x, weight, bias, padding=1, algorithm=algorithm, activation=name, activation_params=params)
    assert_bitwise_equal(fused, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "params"), [("relu", {}), ("gelu", {"approximate": "tanh"}), ("elu", {"alpha": -0.7}),
                                              ("softplus", {"beta": 2.0, "threshold": 1.5})])
@pytest.mark.parametrize("geometry", ["3x3-pad1", "depthwise", "1x1", "padding-only-outputs"])
def test_conv2d_activation_unbatched(geometry, name, params, dtype, rng):
    x_shape, w_shape, kwargs = GEOMETRIES[geometry]
    x, weight, bias = _conv_arrays(rng, dtype, x_shape[1:], w_shape)
    expected = unfused_activation(name, params, F.conv2d(x, weight, bias, **kwargs))
    fused = F.conv2d(x, weight, bias, **kwargs, activation=name, activation_params=params)
    assert fused.ndim == 3
    assert_bitwise_equal(fused, expected)


@pytest.mark.parametrize("work", [1, 64, 700])
@pytest.mark.parametrize(("name", "params"), [("relu", {}), ("silu", {}), ("tanh", {}), ("hardswish", {}),
                                              ("leaky_relu", {"negative_slope": 0.2})])
@pytest.mark.parametrize("geometry", ["3x3-pad1", "depthwise", "1x1", "padding-only-outputs", "strided"])
def test_conv2d_activation_in_sub_batches(geometry, name, params, work, monkeypatch, rng):
    x_shape, w_shape, kwargs = GEOMETRIES[geometry]
    x, weight, bias = _conv_arrays(rng, np.float32, (5, *x_shape[1:]), w_shape)
    expected = unfused_activation(name, params, F.conv2d(x, weight, bias, **kwargs))
    monkeypatch.setattr(convx._batching, "SUB_BATCH_WORK", work)
    fused = F.conv2d(x, weight, bias, **kwargs, activation=name, activation_params=params)
    assert_bitwise_equal(fused, expected)
    # Unfused under the same sub-batches too.
    assert_bitwise_equal(unfused_activation(name, params, F.conv2d(x, weight, bias, **kwargs)), expected)


# Geometries that the settings below send through every forward implementation (direct rows
# and images, plane, flat, packed, im2col), with row tiles that end short and lanes past C_out.
IMPLEMENTATION_GEOMETRIES = {
    "3x3": ((9, 16, 11, 13), (40, 16, 3, 3), dict(padding=1)),
    "strided-grouped": ((3, 12, 10, 9), (36, 6, 3, 3), dict(stride=2, padding=1, groups=2)),
    "1x1": ((2, 24, 7, 9), (33, 24, 1, 1), {}),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", list(IMPLEMENTATION_GEOMETRIES))
def test_conv2d_activation_inside_every_implementation_is_the_activation_after_it(geometry, dtype, rng):
    # The direct kernels apply the epilogue to each register tile, im2col to each chunk of rows,
    # the others after the product: all of them give the unfused result bit for bit.
    x_shape, w_shape, kwargs = IMPLEMENTATION_GEOMETRIES[geometry]
    x, weight, bias = _conv_arrays(rng, dtype, x_shape, w_shape)
    x[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    ran = set()
    for gemm in convx._core.supported_gemm_kernels():
        for direct in convx._core.DIRECT_MODES:
            with convx._core.ConvConfig(gemm, direct):
                plain = F.conv2d(x, weight, bias, **kwargs)
                for name, params in ACTIVATIONS:
                    fused = F.conv2d(x, weight, bias, **kwargs, activation=name, activation_params=params)
                    assert_bitwise_equal(fused, unfused_activation(name, params, plain))
                ran.add(convx._core.conv_ran()["forward"])
    if len(convx._core.supported_gemm_kernels()) > 1:
        assert "blas/im2col" in ran and any("direct" in name for name in ran), ran


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", convx._core.DEPTHWISE_KERNELS)
def test_conv2d_activation_inside_each_depthwise_kernel_is_the_activation_after_it(kernel, dtype, rng):
    x, weight, bias = _conv_arrays(rng, dtype, (5, 6, 13, 11), (12, 1, 3, 3))
    x[1, 2, 3, :2] = [np.nan, np.inf]
    for kwargs in (dict(padding=1, groups=6), dict(stride=2, padding=1, groups=6)):
        with convx._core.ConvConfig(None, None, kernel):
            plain = F.conv2d(x, weight, bias, **kwargs)
            for name, params in ACTIVATIONS:
                fused = F.conv2d(x, weight, bias, **kwargs, activation=name, activation_params=params)
                assert_bitwise_equal(fused, unfused_activation(name, params, plain))


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_conv2d_activation_thread_counts_agree(n_threads, rng):
    x, weight, bias = _conv_arrays(rng, np.float32, (4, 8, 9, 9), (8, 8, 3, 3))
    expected = F.gelu(F.conv2d(x, weight, bias, padding=1))
    previous = convx.get_num_threads()
    convx.set_num_threads(n_threads)
    try:
        fused = F.conv2d(x, weight, bias, padding=1, activation="gelu")
    finally:
        convx.set_num_threads(previous)
    assert_bitwise_equal(fused, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_activation_propagates_nan_and_inf_as_unfused(dtype, rng):
    x, weight, bias = _conv_arrays(rng, dtype, (2, 16, 6, 6), (16, 16, 3, 3))
    x[0, 0, 2, 2] = np.nan
    x[1, 3, 0, 0] = np.inf
    for algorithm in ("direct", "winograd"):
        for name, params in ACTIVATIONS:
            expected = unfused_activation(name, params, F.conv2d(x, weight, bias, padding=1, algorithm=algorithm))
            fused = F.conv2d(x, weight, bias, padding=1, algorithm=algorithm, activation=name,
                             activation_params=params)
            assert_bitwise_equal(fused, expected)


def test_conv2d_activation_leaves_inputs_alone_and_accepts_read_only_and_strided_inputs(rng):
    x, weight, bias = _conv_arrays(rng, np.float64, (2, 3, 12, 7), (4, 3, 3, 3))
    x_strided = x[:, :, ::2]
    for array in (x_strided, weight, bias):
        array.flags.writeable = False
    before = [array.copy() for array in (x_strided, weight, bias)]
    fused = F.conv2d(x_strided, weight, bias, padding=1, activation="silu")
    assert_bitwise_equal(fused, F.silu(F.conv2d(np.ascontiguousarray(x_strided), weight, bias, padding=1)))
    for array, copy_ in zip((x_strided, weight, bias), before):
        assert_bitwise_equal(array, copy_)


def test_conv2d_activation_of_an_empty_batch(rng):
    x, weight, bias = _conv_arrays(rng, np.float32, (0, 3, 5, 5), (4, 3, 3, 3))
    out = F.conv2d(x, weight, bias, activation="relu")
    assert out.shape == (0, 4, 3, 3) and out.dtype == np.float32
    with pytest.raises(ValueError, match="activation"):
        F.conv2d(x, weight, bias, activation="nope")


def test_conv2d_activation_matches_torch(torch, rng):
    torch_f = torch.nn.functional
    x, weight, bias = _conv_arrays(rng, np.float64, (2, 4, 7, 6), (6, 2, 3, 3))
    conv = torch_f.conv2d(torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias), padding=1, groups=2)
    cases = {
        ("relu", ()): torch_f.relu(conv),
        ("leaky_relu", (("negative_slope", -0.3),)): torch_f.leaky_relu(conv, -0.3),
        ("elu", (("alpha", 0.5),)): torch_f.elu(conv, 0.5),
        ("gelu", (("approximate", "tanh"),)): torch_f.gelu(conv, approximate="tanh"),
        ("softplus", (("beta", 2.0), ("threshold", 1.5))): torch_f.softplus(conv, 2.0, 1.5),
        ("hardswish", ()): torch_f.hardswish(conv),
        ("selu", ()): torch_f.selu(conv),
    }
    for (name, params), expected in cases.items():
        fused = F.conv2d(x, weight, bias, padding=1, groups=2, activation=name, activation_params=dict(params))
        assert_close(fused, expected.numpy())


# Bad activation arguments: (activation, activation_params, error, words the message must contain).
BAD_ACTIVATIONS = [
    ("nope", None, ValueError, ["activation", "'nope'", "relu"]),
    ("ReLU", None, ValueError, ["activation", "'ReLU'"]),
    ("", None, ValueError, ["activation"]),
    (3, None, ValueError, ["activation", "3"]),
    (F.relu, None, ValueError, ["activation"]),
    ("relu", [("inplace", True)], TypeError, ["activation_params", "list"]),
    ("relu", "negative_slope", TypeError, ["activation_params", "str"]),
    ("relu", {"inplace": True}, TypeError, ["activation_params", "'relu'", "inplace"]),
    ("leaky_relu", {"slope": 0.1}, TypeError, ["activation_params", "slope"]),
    ("leaky_relu", {"negative_slope": "0.1"}, TypeError, ["negative_slope"]),
    ("leaky_relu", {"negative_slope": True}, TypeError, ["negative_slope"]),
    ("leaky_relu", {"negative_slope": np.nan}, ValueError, ["negative_slope"]),
    ("elu", {"alpha": np.inf}, ValueError, ["alpha"]),
    ("elu", {"alpha": None}, TypeError, ["alpha"]),
    ("gelu", {"approximate": "fast"}, ValueError, ["approximate", "fast"]),
    ("softplus", {"beta": 0}, ValueError, ["beta"]),
    ("softplus", {"threshold": "x"}, TypeError, ["threshold"]),
    ("selu", {"alpha": 1.0}, TypeError, ["activation_params", "alpha"]),
    ("sigmoid", {"inplace": False}, TypeError, ["activation_params", "inplace"]),
]
BAD_IDS = [f"{case[0]!s:.12}-{case[1]!r:.30}" for case in BAD_ACTIVATIONS]


@pytest.mark.parametrize(("activation", "params", "error", "words"), BAD_ACTIVATIONS, ids=BAD_IDS)
def test_conv2d_refuses_bad_activations_before_computing_anything(activation, params, error, words, monkeypatch, rng):
    x, weight, bias = _conv_arrays(rng, np.float32, (2, 3, 5, 5), (4, 3, 3, 3))

    def no_kernel(*args, **kwargs):
        raise AssertionError("a convolution kernel ran before the activation was validated")

    monkeypatch.setattr(conv_module, "_forward", no_kernel)
    with pytest.raises(error) as info:
        F.conv2d(x, weight, bias, padding=1, activation=activation, activation_params=params)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize(("activation", "params", "error", "words"), BAD_ACTIVATIONS, ids=BAD_IDS)
def test_batch_norm_refuses_bad_activations_before_touching_the_running_statistics(activation, params, error,
                                                                                   words, rng):
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    running_mean, running_var = np.full(3, 0.5, np.float32), np.full(3, 2.0, np.float32)
    with pytest.raises(error) as info:
        F.batch_norm(x, running_mean, running_var, training=True, activation=activation, activation_params=params)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert_bitwise_equal(running_mean, np.full(3, 0.5, np.float32))
    assert_bitwise_equal(running_var, np.full(3, 2.0, np.float32))


@pytest.mark.parametrize("params", [{"negative_slope": 0.2}, 5])
def test_activation_params_without_an_activation_is_refused(params, rng):
    x, weight, bias = _conv_arrays(rng, np.float32, (2, 3, 5, 5), (4, 3, 3, 3))
    with pytest.raises((TypeError, ValueError), match="activation"):
        F.conv2d(x, weight, bias, activation_params=params)


# -- batch_norm(..., activation=) and its backward ----------------------------------------------

BN_SHAPES = [(6, 3), (4, 3, 7), (3, 2, 5, 4), (2, 3, 2, 3, 4)]
BN_SHAPE_IDS = ["NC", "NCL", "NCHW", "NCDHW"]


def _bn_arrays(rng, dtype, shape):
    channels = shape[1]
    x = (rng.standard_normal(shape) * 2 + 0.3).astype(dtype)
    weight = rng.uniform(-1.5, 1.5, channels).astype(dtype)
    bias = rng.standard_normal(channels).astype(dtype)
    running_mean = rng.standard_normal(channels).astype(dtype)
    running_var = rng.uniform(0.5, 3.0, channels).astype(dtype)
    return x, weight, bias, running_mean, running_var


# (training, affine, with running statistics)
BN_MODES = [(training, affine, running) for training in (True, False) for affine in (True, False)
            for running in (True, False)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES, ids=BN_SHAPE_IDS)
@pytest.mark.parametrize(("name", "params"), ACTIVATIONS, ids=ACTIVATION_IDS)
def test_batch_norm_activation_forward_is_the_activation_of_batch_norm(name, params, shape, dtype, rng):
    x, weight, bias, running_mean, running_var = _bn_arrays(rng, dtype, shape)
    for training, affine, running in BN_MODES:
        affine_args = (weight, bias) if affine else (None, None)
        stats_fused = (running_mean.copy(), running_var.copy()) if running else (None, None)
        stats_plain = (running_mean.copy(), running_var.copy()) if running else (None, None)
        fused, mean_f, inv_f = F.batch_norm_forward(x, *stats_fused, *affine_args, training, 0.3, 1e-3,
                                                    activation=name, activation_params=params)
        plain, mean_p, inv_p = F.batch_norm_forward(x, *stats_plain, *affine_args, training, 0.3, 1e-3)
        assert_bitwise_equal(fused, unfused_activation(name, params, plain))
        assert_bitwise_equal(mean_f, mean_p)
        assert_bitwise_equal(inv_f, inv_p)
        for after_fused, after_plain in zip(stats_fused, stats_plain):
            if running:
                assert_bitwise_equal(after_fused, after_plain)
        stats = (running_mean.copy(), running_var.copy()) if running else (None, None)
        short = F.batch_norm(x, *stats, *affine_args, training, 0.3, 1e-3, activation=name, activation_params=params)
        assert_bitwise_equal(short, fused)


def _bn_backward_cases(rng, dtype, shape):
    """(x, (weight, bias) or (None, None), fresh running statistics, training) for training and
    evaluation, affine or not."""
    x, weight, bias, running_mean, running_var = _bn_arrays(rng, dtype, shape)
    for training in (True, False):
        for affine in (True, False):
            yield x, (weight, bias) if affine else (None, None), (running_mean.copy(), running_var.copy()), training


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES, ids=BN_SHAPE_IDS)
@pytest.mark.parametrize(("name", "params"), OUTPUT_READING, ids=_ids(OUTPUT_READING))
def test_batch_norm_activation_backward_is_the_chain_rule(name, params, shape, dtype, rng):
    grad_out = rng.standard_normal(shape).astype(dtype)
    for x, (weight, bias), running, training in _bn_backward_cases(rng, dtype, shape):
        y, mean, inv_std = F.batch_norm_forward(x, *running, weight, bias, training, 0.1, 1e-3,
                                                activation=name, activation_params=params)
        fused = F.batch_norm_backward(grad_out, x, mean, inv_std, weight, training, weight is not None,
                                      activation=name, activation_params=params, output=y)
        # The same gradient from the output, then the batch normalisation's backward: the same
        # kernels on the same values.
        through_output = F.activation_backward(name, grad_out, y, saved_is="output", **params)
        plain = F.batch_norm_backward(through_output, x, mean, inv_std, weight, training, weight is not None)
        for got, expected in zip(fused, plain):
            assert (got is None) == (expected is None)
            if got is not None:
                assert_bitwise_equal(got, expected)
        # And from the input, as the unfused layer computes ELU's and SELU's: equal up to rounding.
        normalized = F.batch_norm(x, *(s.copy() for s in running), weight, bias, training, 0.1, 1e-3)
        through_input = F.activation_backward(name, grad_out, normalized, saved_is="input", **params) \
            if name not in ("sigmoid", "tanh") else through_output
        plain = F.batch_norm_backward(through_input, x, mean, inv_std, weight, training, weight is not None)
        for got, expected in zip(fused, plain):
            if got is not None:
                assert_close(got, expected)


TORCH_ACTIVATIONS = {
    "relu": lambda torch, t, **k: torch.nn.functional.relu(t),
    "relu6": lambda torch, t, **k: torch.nn.functional.relu6(t),
    "leaky_relu": lambda torch, t, negative_slope=0.01: torch.nn.functional.leaky_relu(t, negative_slope),
    "elu": lambda torch, t, alpha=1.0: torch.nn.functional.elu(t, alpha),
    "selu": lambda torch, t: torch.nn.functional.selu(t),
    "sigmoid": lambda torch, t: torch.sigmoid(t),
    "tanh": lambda torch, t: torch.tanh(t),
    "silu": lambda torch, t: torch.nn.functional.silu(t),
    "gelu": lambda torch, t, approximate="none": torch.nn.functional.gelu(t, approximate=approximate),
    "hardswish": lambda torch, t: torch.nn.functional.hardswish(t),
    "hardsigmoid": lambda torch, t: torch.nn.functional.hardsigmoid(t),
    "softplus": lambda torch, t, beta=1.0, threshold=20.0: torch.nn.functional.softplus(t, beta, threshold),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6, 3), (3, 2, 5, 4), (2, 3, 2, 3, 4)], ids=["NC", "NCHW", "NCDHW"])
@pytest.mark.parametrize(("name", "params"), OUTPUT_READING, ids=_ids(OUTPUT_READING))
def test_batch_norm_activation_forward_and_backward_match_torch(name, params, shape, dtype, torch, rng):
    grad_out = rng.standard_normal(shape).astype(dtype)
    for x, (weight, bias), running, training in _bn_backward_cases(rng, dtype, shape):
        ours_running = tuple(s.copy() for s in running)
        y, mean, inv_std = F.batch_norm_forward(x, *ours_running, weight, bias, training, 0.1, 1e-3,
                                                activation=name, activation_params=params)
        grads = F.batch_norm_backward(grad_out, x, mean, inv_std, weight, training, weight is not None,
                                      activation=name, activation_params=params, output=y)
        x_t = torch.from_numpy(x.copy()).requires_grad_(True)
        affine_t = [None if a is None else torch.from_numpy(a.copy()).requires_grad_(True) for a in (weight, bias)]
        running_t = [torch.from_numpy(s.copy()) for s in running]
        y_t = TORCH_ACTIVATIONS[name](torch, torch.nn.functional.batch_norm(x_t, *running_t, *affine_t, training,
                                                                            0.1, 1e-3), **params)
        y_t.backward(torch.from_numpy(grad_out))
        assert_close(y, y_t.detach().numpy())
        assert_close(grads[0], x_t.grad.numpy())
        if weight is not None:
            assert_close(grads[1], affine_t[0].grad.numpy())
            assert_close(grads[2], affine_t[1].grad.numpy())
        for ours_stat, torch_stat in zip(ours_running, running_t):
            assert_close(ours_stat, torch_stat.numpy())


@pytest.mark.parametrize(("name", "params"), INPUT_READING, ids=_ids(INPUT_READING))
def test_batch_norm_backward_refuses_activations_whose_gradient_reads_their_input(name, params, rng):
    x = rng.standard_normal((4, 3, 5))
    y, mean, inv_std = F.batch_norm_forward(x, training=True, activation=name, activation_params=params)
    with pytest.raises(ValueError, match=f"gradient of '{name}'.*needs its input") as info:
        F.batch_norm_backward(np.ones_like(x), x, mean, inv_std, activation=name, activation_params=params,
                              output=y)
    assert "relu" in str(info.value) and "sigmoid" in str(info.value)  # says which would do


def test_batch_norm_backward_with_an_activation_needs_a_matching_output(rng):
    x = rng.standard_normal((4, 3, 5))
    y, mean, inv_std = F.batch_norm_forward(x, training=True, activation="relu")
    grad_out = np.ones_like(x)
    for bad in (y[:2], y.astype(np.float32), y.reshape(4, 15)):
        with pytest.raises(ValueError, match="output must have x's shape and dtype"):
            F.batch_norm_backward(grad_out, x, mean, inv_std, activation="relu", output=bad)
    with pytest.raises(TypeError, match="output"):
        F.batch_norm_backward(grad_out, x, mean, inv_std, activation="relu", output="y")
    with pytest.raises(ValueError, match="activation must be None or one of"):
        F.batch_norm_backward(grad_out, x, mean, inv_std, activation="swish", output=y)
    with pytest.raises(TypeError, match="activation_params"):
        F.batch_norm_backward(grad_out, x, mean, inv_std, activation="relu", activation_params=[1], output=y)
    # A non-contiguous output is read as it is.
    y_strided = np.asfortranarray(y)
    expected = F.batch_norm_backward(grad_out, x, mean, inv_std, activation="relu", output=y)
    got = F.batch_norm_backward(grad_out, x, mean, inv_std, activation="relu", output=y_strided)
    for a, b in zip(got, expected):
        assert_bitwise_equal(a, b)


def test_batch_norm_backward_refuses_an_output_without_an_activation(rng):
    x = rng.standard_normal((4, 3, 5))
    _, mean, inv_std = F.batch_norm_forward(x, training=True)
    with pytest.raises((TypeError, ValueError), match="output"):
        F.batch_norm_backward(np.ones_like(x), x, mean, inv_std, output="not an array")
    with pytest.raises(ValueError, match="bias= are read only with an activation"):
        F.batch_norm_backward(np.ones_like(x), x, mean, inv_std, bias=np.zeros(3))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "params"), [("relu", {}), ("relu6", {}), ("leaky_relu", {"negative_slope": 0.2}),
                                              ("elu", {"alpha": 0.5}), ("selu", {}), ("sigmoid", {}), ("tanh", {})])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_backward_recomputes_the_output_bit_for_bit(name, params, training, affine, dtype, rng):
    # Without output=, each pass recomputes the activation's output from x as the forward did
    # (reading x and grad_out only): the gradients are those computed from the output itself.
    x, weight, bias, running_mean, running_var = _bn_arrays(rng, dtype, (6, 5, 7, 9))
    x *= 4
    x[0, 1, 2, :3] = [np.nan, np.inf, -np.inf]
    if not affine:
        weight = bias = None
    grad_out = rng.standard_normal(x.shape).astype(dtype)
    y, mean, inv_std = F.batch_norm_forward(x, running_mean, running_var, weight, bias, training,
                                            activation=name, activation_params=params)
    kwargs = dict(activation=name, activation_params=params)
    expected = F.batch_norm_backward(grad_out, x, mean, inv_std, weight, training, output=y, **kwargs)
    got = F.batch_norm_backward(grad_out, x, mean, inv_std, weight, training, bias=bias, **kwargs)
    for a, b in zip(got, expected):
        assert_bitwise_equal(a, b)


def test_batch_norm_backward_bias_is_validated(rng):
    x = rng.standard_normal((4, 3, 5))
    y, mean, inv_std = F.batch_norm_forward(x, training=True, activation="relu")
    grad_out = np.ones_like(x)
    with pytest.raises(ValueError, match="not both"):
        F.batch_norm_backward(grad_out, x, mean, inv_std, activation="relu", output=y, bias=np.zeros(3))
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        F.batch_norm_backward(grad_out, x, mean, inv_std, activation="relu", bias=np.zeros(4))
    with pytest.raises(TypeError, match="bias must have x's dtype"):
        F.batch_norm_backward(grad_out, x, mean, inv_std, activation="relu", bias=np.zeros(3, np.float32))


@pytest.mark.parametrize("work", [1, 40])
@pytest.mark.parametrize(("name", "params"), [("relu", {}), ("tanh", {}), ("selu", {}), ("silu", {})])
def test_batch_norm_activation_in_sub_batches(name, params, work, monkeypatch, rng):
    x, weight, bias, running_mean, running_var = _bn_arrays(rng, np.float32, (7, 3, 4, 5))
    grad_out = rng.standard_normal(x.shape).astype(np.float32)
    y, mean, inv_std = F.batch_norm_forward(x, None, None, weight, bias, True)
    expected_y = unfused_activation(name, params, y)
    monkeypatch.setattr(convx._batching, "SUB_BATCH_WORK", work)
    fused_y, _, _ = F.batch_norm_forward(x, None, None, weight, bias, True, activation=name, activation_params=params)
    assert_bitwise_equal(fused_y, expected_y)
    if (name, params) in OUTPUT_READING:
        fused = F.batch_norm_backward(grad_out, x, mean, inv_std, weight, activation=name, activation_params=params,
                                      output=fused_y)
        through = F.activation_backward(name, grad_out, fused_y, saved_is="output", **params)
        for got, expected in zip(fused, F.batch_norm_backward(through, x, mean, inv_std, weight)):
            assert_bitwise_equal(got, expected)


def test_batch_norm_activation_leaves_its_inputs_alone(rng):
    x, weight, bias, running_mean, running_var = _bn_arrays(rng, np.float64, (4, 3, 5, 2))
    arrays = (x, weight, bias)
    before = [a.copy() for a in arrays]
    y, mean, inv_std = F.batch_norm_forward(x, None, None, weight, bias, True, activation="relu6")
    grad_out = rng.standard_normal(x.shape)
    kept = [grad_out.copy(), y.copy()]
    F.batch_norm_backward(grad_out, x, mean, inv_std, weight, activation="relu6", output=y)
    for a, b in zip((*arrays, grad_out, y), (*before, *kept)):
        assert_bitwise_equal(a, b)


# -- nn.Sequential ------------------------------------------------------------------------------

# Activation layers: (class name, keyword arguments). PyTorch builds the same without inplace.
ACT_LAYERS = [
    ("ReLU", {}), ("ReLU", {"inplace": True}), ("ReLU6", {}), ("ReLU6", {"inplace": True}),
    ("LeakyReLU", {"negative_slope": 0.1}), ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
    ("LeakyReLU", {"negative_slope": 0.0}), ("LeakyReLU", {"negative_slope": -0.2}),
    ("ELU", {}), ("ELU", {"alpha": 0.6, "inplace": True}), ("ELU", {"alpha": -0.5}),
    ("SELU", {}), ("SELU", {"inplace": True}), ("Sigmoid", {}), ("Tanh", {}),
    ("SiLU", {}), ("SiLU", {"inplace": True}), ("GELU", {}), ("GELU", {"approximate": "tanh"}),
    ("Hardswish", {}), ("Hardswish", {"inplace": True}), ("Hardsigmoid", {}), ("Hardsigmoid", {"inplace": True}),
    ("Softplus", {"beta": 2.0, "threshold": 1.0}),
]
ACT_IDS = [f"{cls}({','.join(f'{k}={v}' for k, v in kw.items())})" for cls, kw in ACT_LAYERS]


def make_act(lib, spec):
    cls, kwargs = spec
    if lib is not nn:
        kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}
    return getattr(lib, cls)(**kwargs)


def conv_takes(spec):
    """Whether a training Conv2d fuses with this activation: its layer's gradient reads its output
    (so the fused run is the unfused one, bit for bit)."""
    cls, kwargs = spec
    if cls == "LeakyReLU":
        return kwargs["negative_slope"] >= 0
    if cls in ("ELU", "SELU"):
        return bool(kwargs.get("inplace"))
    return cls in ("ReLU", "ReLU6", "Sigmoid", "Tanh")


def bn_takes(spec):
    """Whether a training BatchNorm2d fuses with this activation: the layer itself keeps its output
    for its gradient (so the fused layers keep nothing the unfused ones do not): ReLU, ReLU6,
    Sigmoid, Tanh, LeakyReLU with a non-negative slope, ELU and SELU only in place."""
    cls, kwargs = spec
    if cls == "LeakyReLU":
        return kwargs["negative_slope"] >= 0
    if cls in ("ELU", "SELU"):
        return kwargs.get("inplace", False) and kwargs.get("alpha", 1.0) >= 0
    return cls in ("ReLU", "ReLU6", "Sigmoid", "Tanh")


def _kwargs(lib, dtype, seed):
    """Constructor options for layers with random parameters and for the others (none for torch)."""
    if lib is nn:
        return dict(dtype=dtype, rng=np.random.default_rng(seed)), dict(dtype=dtype)
    return {}, {}


def pattern_net(lib, pattern, spec, dtype=np.float32, seed=0):
    random_init, fixed_init = _kwargs(lib, dtype, seed)
    conv = lambda c_in, c_out, **kw: lib.Conv2d(c_in, c_out, 3, padding=1, **kw, **random_init)  # noqa: E731
    layers = {
        "conv-bn-act": lambda: [conv(3, 4), lib.BatchNorm2d(4, **fixed_init), make_act(lib, spec)],
        "conv-act": lambda: [conv(3, 4), make_act(lib, spec)],
        "bn-act": lambda: [lib.BatchNorm2d(3, **fixed_init), make_act(lib, spec)],
        "conv-bn": lambda: [conv(3, 4, bias=False), lib.BatchNorm2d(4, **fixed_init)],  # spec unused
        "conv-bn-act-conv-act": lambda: [conv(3, 4), lib.BatchNorm2d(4, **fixed_init), make_act(lib, spec),
                                         conv(4, 2), make_act(lib, spec)],
    }[pattern]()
    return lib.Sequential(*layers)


def expected_fusions(pattern, spec, training):
    if not training:
        return {"conv-bn-act": [(0, 3)], "conv-act": [(0, 2)], "bn-act": [(0, 2)], "conv-bn": [(0, 2)],
                "conv-bn-act-conv-act": [(0, 3), (3, 5)]}[pattern]
    if pattern == "conv-bn":
        return []
    bn = [(1, 3)] if bn_takes(spec) else []
    return {"conv-bn-act": bn, "conv-act": [(0, 2)] if conv_takes(spec) else [],
            "bn-act": [(0, 2)] if bn_takes(spec) else [],
            "conv-bn-act-conv-act": bn + ([(3, 5)] if conv_takes(spec) else [])}[pattern]


@pytest.fixture
def fusions(monkeypatch):
    """The (start, stop) of every fused group run, in order: so that a test knows that it compared
    a fused run (Sequential._run_fused) and not two unfused ones."""
    seen = []
    original = nn.Sequential._run_fused

    def recording(self, fusion, x, *rest):
        seen.append((fusion.start, fusion.stop))
        return original(self, fusion, x, *rest)

    monkeypatch.setattr(nn.Sequential, "_run_fused", recording)
    return seen


def set_fuse(model, flag):
    """``fuse`` on a Sequential and every Sequential nested in it."""
    if isinstance(model, nn.Sequential):
        model.fuse = flag
        for layer in model:
            set_fuse(layer, flag)
    return model


def _all_batch_norms(model):
    if isinstance(model, nn.Sequential):
        for layer in model:
            yield from _all_batch_norms(layer)
    elif isinstance(model, nn.BatchNorm2d):
        yield model


def fused_and_unfused(build, seed=0):
    """Two copies of one model with the same (randomized) state: fuse=True and fuse=False."""
    fused, unfused = build(), build()
    rng = np.random.default_rng(seed + 1)
    for batch_norm in _all_batch_norms(fused):
        channels = batch_norm.num_features
        if batch_norm.affine:
            batch_norm.params["weight"][...] = rng.uniform(0.5, 1.5, channels) * rng.choice([-1, 1], channels)
            batch_norm.params["bias"][...] = rng.standard_normal(channels)
        if batch_norm.track_running_stats:
            batch_norm.buffers["running_mean"][...] = rng.standard_normal(channels)
            batch_norm.buffers["running_var"][...] = rng.uniform(0.3, 2.5, channels)
            batch_norm.buffers["num_batches_tracked"][...] = 3
    state = fused.state_dict()
    unfused.load_state_dict(state)
    return set_fuse(fused, True), set_fuse(unfused, False), state


def as_torch(torch, build_torch, state, dtype):
    model = build_torch().to(torch.float64 if dtype == np.float64 else torch.float32)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    return model


def step(model, x, grad_out):
    """Forward and backward: (output, input gradient, parameter gradients, state_dict), all copies."""
    y = model(x).copy()
    grad_x = model.backward(grad_out)
    grads = {name: None if g is None else g.copy() for name, g in model.grads.items()}
    return y, grad_x, grads, model.state_dict()


def torch_step(torch, model, x, grad_out):
    x_t = torch.from_numpy(x.copy()).requires_grad_(True)
    y = model(x_t)
    y.backward(torch.from_numpy(grad_out))
    grads = {name: p.grad.numpy() for name, p in model.named_parameters()}
    return y.detach().numpy(), x_t.grad.numpy(), grads, {k: v.numpy() for k, v in model.state_dict().items()}


def assert_as_accurate(actual, expected, reference):
    """``actual`` is as close to the float64 ``reference`` as ``expected`` is, within a factor of 4
    (or within a few float32 ulps of the reference's largest element)."""
    scale = max(1.0, float(np.max(np.abs(reference))))
    error = float(np.max(np.abs(actual.astype(np.float64) - reference)))
    expected_error = float(np.max(np.abs(expected.astype(np.float64) - reference)))
    assert error <= 4 * expected_error + 8 * np.finfo(np.float32).eps * scale, (error, expected_error)


def compare_steps(fused, unfused, forward_exact, backward_exact, reference=None):
    """``reference``: the unfused step in float64, for float32 gradients that are not exact (the
    fused ones must then be as accurate as the unfused ones)."""
    y, grad_x, grads, state = fused
    y_ref, grad_x_ref, grads_ref, state_ref = unfused
    (assert_bitwise_equal if forward_exact else assert_fused_close)(y, y_ref)
    if backward_exact:
        same = assert_bitwise_equal
    elif reference is not None:
        references = iter([reference[1], *reference[2].values()])
        same = lambda got, expected: assert_as_accurate(got, expected, next(references))  # noqa: E731
    else:
        same = assert_fused_grad_close
    same(grad_x, grad_x_ref)
    assert list(grads) == list(grads_ref)
    for name in grads:
        same(grads[name], grads_ref[name])
    assert list(state) == list(state_ref)
    for name in state:
        # Running statistics come from the same batch statistics either way; evaluation leaves them.
        assert_bitwise_equal(state[name], state_ref[name])


# PyTorch's float64 Hardsigmoid backward multiplies by float32's 1/6 (3e-8 off; see
# test_activations.py): gradients through it are compared at this relative tolerance.
HARDSIGMOID_TORCH_TOLERANCES = {**TOLERANCES, np.dtype(np.float64): dict(rtol=1e-7, atol=1e-12)}


def compare_with_torch(ours, theirs, has_hardsigmoid=False):
    y, grad_x, grads, state = ours
    y_t, grad_x_t, grads_t, state_t = theirs
    grad_tolerances = HARDSIGMOID_TORCH_TOLERANCES if has_hardsigmoid else TOLERANCES
    assert_close(y, y_t)
    assert_close(grad_x, grad_x_t, tolerances=grad_tolerances)
    assert list(grads) == list(grads_t)
    for name in grads:
        assert_close(grads[name], grads_t[name], tolerances=grad_tolerances)
    assert list(state) == list(state_t)
    for name in state:
        if name.endswith("num_batches_tracked"):
            assert state[name] == state_t[name]
        else:
            assert_close(state[name], state_t[name])


PATTERN_CASES = [
    pytest.param(pattern, spec, id=f"{pattern}-{spec_id}")
    for pattern in ["conv-bn-act", "conv-act", "bn-act", "conv-bn-act-conv-act"]
    for spec, spec_id in zip(ACT_LAYERS, ACT_IDS)
] + [pytest.param("conv-bn", None, id="conv-bn")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(("pattern", "spec"), PATTERN_CASES)
def test_sequential_fused_matches_unfused_and_torch(pattern, spec, training, dtype, fusions, torch, rng):
    fused, unfused, state = fused_and_unfused(lambda: pattern_net(nn, pattern, spec, dtype))
    for model in (fused, unfused):
        model.train(training)
    x = rng.standard_normal((3, 3, 5, 4)).astype(dtype)
    x_before = x.copy()
    # Two forwards (the running statistics move twice in training), then the backward.
    grad_out = rng.standard_normal(fused(x).shape).astype(dtype)
    grad_before = grad_out.copy()
    fusions.clear()
    fused_result = step(fused, x, grad_out)
    assert fusions == expected_fusions(pattern, spec, training)
    unfused(x)
    unfused_result = step(unfused, x, grad_out)
    assert fusions == expected_fusions(pattern, spec, training), "fuse=False must not fuse"
    assert_bitwise_equal(x, x_before)
    assert_bitwise_equal(grad_out, grad_before)

    # Exactly equal where the same kernels run on the same values. Not: the forward of a
    # BatchNorm2d folded into the convolution, and the backward behind it; the gradient of a
    # training BatchNorm2d + ELU/SELU, taken from the output fused and from the input unfused.
    folded = not training and "conv-bn" in pattern
    reads_input = spec is not None and spec[0] in ("ELU", "SELU") and not conv_takes(spec) and bn_takes(spec)
    if training:
        backward_exact = not ("bn-act" in pattern and reads_input)
    else:
        backward_exact = pattern != "conv-bn-act-conv-act"
    compare_steps(fused_result, unfused_result, forward_exact=not folded, backward_exact=backward_exact)

    theirs = as_torch(torch, lambda: pattern_net(torch.nn, pattern, spec), state, dtype)
    theirs.train(training)
    theirs(torch.from_numpy(x.copy()))
    compare_with_torch(fused_result, torch_step(torch, theirs, x, grad_out),
                       has_hardsigmoid=spec is not None and spec[0] == "Hardsigmoid")


def _conv(lib, *args, algorithm=None, **kwargs):
    if lib is nn and algorithm is not None:
        kwargs["algorithm"] = algorithm
    return lib.Conv2d(*args, **kwargs)


def mixed_net(lib, dtype=np.float32, seed=0):
    """Every padding mode, bias or not, groups, BatchNorm2d variants (with batch statistics in
    both modes first: behind it, gradients sum terms that cancel, which float32 cannot compare
    closely), pooling, a nested Sequential, Flatten and Linear at the end. Input (N, 3, 8, 8)."""
    r, f = _kwargs(lib, dtype, seed)
    return lib.Sequential(
        lib.BatchNorm2d(3, track_running_stats=False, **f),
        make_act(lib, ("ReLU6", {})),
        lib.Conv2d(3, 8, 3, padding=1, bias=False, **r),
        lib.BatchNorm2d(8, **f),
        make_act(lib, ("ReLU", {"inplace": True})),
        lib.MaxPool2d(2),
        lib.Conv2d(8, 8, 3, padding=1, padding_mode="reflect", groups=2, **r),
        lib.BatchNorm2d(8, affine=False, momentum=None, **f),
        make_act(lib, ("LeakyReLU", {"negative_slope": 0.1})),
        lib.Conv2d(8, 6, 3, padding=1, padding_mode="circular", **r),
        lib.BatchNorm2d(6, momentum=None, **f),
        lib.SiLU(),
        lib.Conv2d(6, 6, 1, padding=1, padding_mode="replicate", **r),
        lib.Tanh(),
        lib.Sequential(
            lib.Conv2d(6, 4, 3, padding=1, padding_mode="replicate", **r),
            lib.BatchNorm2d(4, **f),
            make_act(lib, ("Hardswish", {"inplace": True})),
        ),
        lib.Flatten(),
        lib.Linear(4 * 6 * 6, 5, **r),
    )


def separable_net(lib, dtype=np.float32, seed=0):
    """MobileNet-like: strided, depthwise, 1x1 and dilated grouped convolutions, each with
    BatchNorm2d and an activation, nested blocks. Input (N, 3, 8, 8)."""
    r, f = _kwargs(lib, dtype, seed)
    return lib.Sequential(
        lib.Conv2d(3, 6, 3, stride=2, padding=1, **r), lib.BatchNorm2d(6, **f), lib.ReLU6(),
        lib.Sequential(
            lib.Conv2d(6, 6, 3, padding=1, groups=6, bias=False, **r), lib.BatchNorm2d(6, **f), lib.ELU(),
            lib.Conv2d(6, 8, 1, **r), lib.BatchNorm2d(8, eps=0.1, **f), lib.Sigmoid(),
        ),
        lib.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4, padding_mode="reflect", **r), lib.GELU(),
        lib.Conv2d(8, 4, 3, padding=1, **r), lib.BatchNorm2d(4, **f),
        lib.Flatten(), lib.Linear(4 * 4 * 4, 3, **r),
    )


def winograd_net(lib, dtype=np.float32, seed=0):
    """Convolutions run by Winograd (BatchNorm2d folded into their weights in evaluation).
    Input (N, 16, 6, 6)."""
    r, f = _kwargs(lib, dtype, seed)
    return lib.Sequential(
        _conv(lib, 16, 16, 3, padding=1, algorithm="winograd", **r), lib.BatchNorm2d(16, **f), lib.ReLU(),
        _conv(lib, 16, 16, 3, padding=1, algorithm="auto", bias=False, **r), lib.BatchNorm2d(16, **f),
        make_act(lib, ("Hardswish", {})),
        lib.MaxPool2d(2), lib.Flatten(), lib.Linear(16 * 3 * 3, 4, **r),
    )


# (builder, input shape, whether a training run is bit for bit the unfused one)
NETS = {
    "mixed": (mixed_net, (4, 3, 8, 8), True),
    "separable": (separable_net, (4, 3, 8, 8), False),  # BatchNorm2d + ELU: gradient from the output
    "winograd": (winograd_net, (3, 16, 6, 6), True),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("net", list(NETS))
def test_networks_fused_match_unfused_and_torch(net, training, dtype, fusions, torch, rng):
    build, x_shape, train_exact = NETS[net]
    fused, unfused, state = fused_and_unfused(lambda: build(nn, dtype))
    for model in (fused, unfused):
        model.train(training)
    x = rng.standard_normal(x_shape).astype(dtype)
    x_before = x.copy()
    grad_out = rng.standard_normal(fused(x).shape).astype(dtype)
    assert fusions, "nothing was fused"
    fused_result = step(fused, x, grad_out)
    count = len(fusions)
    unfused(x)
    unfused_result = step(unfused, x, grad_out)
    assert len(fusions) == count
    assert_bitwise_equal(x, x_before)
    exact = training and train_exact
    reference = None
    if dtype == np.float32 and not exact:
        twin = set_fuse(build(nn, np.float64), False)
        twin.load_state_dict(state)
        twin.train(training)
        twin(x.astype(np.float64))
        reference = step(twin, x.astype(np.float64), grad_out.astype(np.float64))
    compare_steps(fused_result, unfused_result, forward_exact=exact, backward_exact=exact, reference=reference)

    theirs = as_torch(torch, lambda: build(torch.nn), state, dtype)
    theirs.train(training)
    theirs(torch.from_numpy(x.copy()))
    compare_with_torch(fused_result, torch_step(torch, theirs, x, grad_out))


@pytest.mark.parametrize("net", list(NETS))
def test_training_steps_with_an_optimizer_fused_and_unfused(net, rng):
    build, x_shape, train_exact = NETS[net]
    fused, unfused, _ = fused_and_unfused(lambda: build(nn, np.float64))
    target = rng.integers(0, 3, x_shape[0])
    optimizers = [convx.optim.SGD(model.parameters(), lr=0.05, momentum=0.9) for model in (fused, unfused)]
    for _ in range(3):
        x = rng.standard_normal(x_shape)
        for model, optimizer in zip((fused, unfused), optimizers):
            loss = nn.CrossEntropyLoss()
            loss(model(x), target)
            model.backward(loss.backward())
            optimizer.step()
    fused.eval()
    unfused.eval()
    x = rng.standard_normal(x_shape)
    same = assert_bitwise_equal if train_exact else assert_fused_close
    for name, value in fused.state_dict().items():
        same(value, unfused.state_dict()[name])
    assert_fused_close(fused(x), unfused(x))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck_on_fused_sequentials(training, fusions, rng):
    models = [
        nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, dtype=np.float64, rng=0), nn.BatchNorm2d(3, dtype=np.float64),
                      nn.Tanh(), nn.Conv2d(3, 2, 3, padding_mode="reflect", padding=1, dtype=np.float64, rng=1),
                      nn.Sigmoid()),
        nn.Sequential(nn.BatchNorm2d(2, dtype=np.float64), nn.ELU(alpha=0.7),
                      nn.Conv2d(2, 3, 3, groups=1, dtype=np.float64, rng=2), nn.BatchNorm2d(3, dtype=np.float64),
                      nn.SELU(inplace=True)),
        nn.Sequential(nn.Conv2d(2, 4, 3, padding=2, dilation=2, groups=2, dtype=np.float64, rng=3),
                      nn.BatchNorm2d(4, dtype=np.float64), nn.GELU(),
                      nn.Sequential(nn.Conv2d(4, 2, 1, dtype=np.float64, rng=4), nn.LeakyReLU(0.1))),
    ]
    x = rng.standard_normal((3, 2, 5, 4))
    for model in models:
        for batch_norm in _all_batch_norms(model):
            batch_norm.buffers["running_mean"][...] = rng.standard_normal(batch_norm.num_features)
            batch_norm.buffers["running_var"][...] = rng.uniform(0.5, 2.0, batch_norm.num_features)
            batch_norm.params["weight"][...] = rng.uniform(0.5, 1.5, batch_norm.num_features)
        model.train(training)
        fusions.clear()
        assert convx.gradcheck(model, x)
        assert fusions


# -- the forward's mode, state and the recomputation after an evaluation fusion -----------------

def conv_bn_act(dtype=np.float64, act=None, seed=0):
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, dtype=dtype, rng=seed), nn.BatchNorm2d(3, dtype=dtype),
                         act if act is not None else nn.ReLU())


@pytest.mark.parametrize(("pattern", "act"), [
    ("conv-bn-act", nn.ReLU),
    ("conv-bn-act", nn.SiLU),
    ("bn-act", nn.SiLU),
    ("bn-act", nn.ReLU),  # not recomputed: the activation's gradient is taken in the batch norm's backward
    ("conv-act", nn.GELU),  # recomputed, but nothing there depends on the mode
])
def test_backward_after_an_evaluation_forward_then_train_mode_is_the_evaluation_gradient(pattern, act, rng):
    def build():
        layers = conv_bn_act(act=act()).layers
        return nn.Sequential(*{"conv-bn-act": layers, "bn-act": layers[1:], "conv-act": layers[::2]}[pattern])

    fused, unfused, state = fused_and_unfused(build)
    x = rng.standard_normal((4, 3, 5, 5) if pattern == "bn-act" else (4, 2, 5, 5))
    results = []
    for model in (fused, unfused):
        model.eval()
        y = model(x)
        model.train()
        grad_out = np.ones_like(y)
        results.append((model.backward(grad_out), model.state_dict()))
    assert_bitwise_equal(results[0][0], results[1][0])
    for name, value in results[0][1].items():
        assert_bitwise_equal(value, state[name])
        assert_bitwise_equal(value, results[1][1][name])


@pytest.mark.parametrize("act", [nn.ReLU, nn.GELU, nn.Tanh])
def test_backward_after_a_training_forward_then_evaluation_mode(act, rng):
    fused, unfused, _ = fused_and_unfused(lambda: nn.Sequential(
        *conv_bn_act(act=act()).layers, nn.Conv2d(3, 2, 1, rng=5, dtype=np.float64), act()))
    x = rng.standard_normal((4, 2, 5, 5))
    results = []
    for model in (fused, unfused):
        y = model(x)
        model.eval()
        results.append((model.backward(np.ones_like(y) * 0.5), model.grads, model.state_dict()))
    assert_bitwise_equal(results[0][0], results[1][0])
    for name in results[0][1]:
        assert_bitwise_equal(results[0][1][name], results[1][1][name])
        assert_bitwise_equal(results[0][2][name], results[1][2][name])


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_two_forwards_then_one_backward_differentiate_the_second(training, rng):
    fused, unfused, _ = fused_and_unfused(lambda: nn.Sequential(*conv_bn_act(act=nn.SiLU()).layers,
                                                                nn.Conv2d(3, 3, 3, padding=1, rng=3, dtype=np.float64),
                                                                nn.ReLU(), nn.BatchNorm2d(3, dtype=np.float64),
                                                                nn.Sigmoid()))
    first, second = rng.standard_normal((2, 3, 2, 5, 5))
    results = []
    for model in (fused, unfused):
        model.train(training)
        model(first)
        y = model(second)
        grad_out = np.cos(np.arange(y.size)).reshape(y.shape)
        grad_x = model.backward(grad_out)
        results.append((grad_x, dict(model.grads)))
        with pytest.raises(RuntimeError, match="preceding forward"):
            model.backward(grad_out)
    same = assert_fused_grad_close if not training else assert_bitwise_equal
    same(results[0][0], results[1][0])
    for name in results[0][1]:
        same(results[0][1][name], results[1][1][name])


@pytest.mark.parametrize("momentum", [0.1, None])
def test_evaluation_forwards_and_backwards_leave_the_running_statistics_alone(momentum, fusions, rng):
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, dtype=np.float64, rng=0),
                          nn.BatchNorm2d(3, momentum=momentum, dtype=np.float64), nn.SiLU(),
                          nn.BatchNorm2d(3, momentum=momentum, dtype=np.float64), nn.ReLU())
    model.train()
    model(rng.standard_normal((4, 2, 5, 5)) + 2)  # statistics worth keeping
    before = model.state_dict()
    model.eval()
    fusions.clear()
    for _ in range(2):
        y = model(rng.standard_normal((4, 2, 5, 5)))
        model.backward(np.ones_like(y))
    assert fusions == [(0, 3), (3, 5)] * 2
    for name, value in model.state_dict().items():
        assert_bitwise_equal(value, before[name])


def test_mixed_modes_never_fuse_across_a_mode_boundary(fusions, torch, rng):
    """Every split of Conv2d, BatchNorm2d, ReLU, Conv2d, SiLU into training and evaluation layers."""
    x = rng.standard_normal((3, 2, 5, 5))
    grad_out = rng.standard_normal((3, 2, 5, 5))
    for modes in np.ndindex(2, 2, 2, 2, 2):

        def build(lib=nn):
            r, f = _kwargs(lib, np.float64, 0)
            return lib.Sequential(lib.Conv2d(2, 3, 3, padding=1, **r), lib.BatchNorm2d(3, **f), lib.ReLU(),
                                  lib.Conv2d(3, 2, 3, padding=1, **r), lib.SiLU())

        fused, unfused, state = fused_and_unfused(build)
        theirs = as_torch(torch, lambda: build(torch.nn), state, np.float64)
        for model, layers in ((fused, fused.layers), (unfused, unfused.layers), (theirs, list(theirs))):
            for layer, mode in zip(layers, modes):
                layer.train(bool(mode))
        fusions.clear()
        fused_result = step(fused, x, grad_out)
        for start, stop in fusions:
            assert len({modes[i] for i in range(start, stop)}) == 1, (modes, fusions)
        unfused_result = step(unfused, x, grad_out)
        folded = (0, 2) in fusions or (0, 3) in fusions
        compare_steps(fused_result, unfused_result, forward_exact=not folded, backward_exact=not folded)
        compare_with_torch(fused_result, torch_step(torch, theirs, x, grad_out))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_a_batch_norm_that_does_not_fit_the_convolution_raises_its_own_error(training, fusions, rng):
    cases = [
        (nn.BatchNorm2d(4, dtype=np.float32), ValueError),  # 3 channels come out of the convolution
        (nn.BatchNorm2d(3, dtype=np.float64), TypeError),   # float64 parameters, float32 data
    ]
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    for batch_norm, error in cases:
        messages = []
        for fuse in (True, False):
            model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, rng=0), copy.deepcopy(batch_norm), nn.ReLU())
            model.fuse = fuse
            model.train(training)
            with pytest.raises(error, match="BatchNorm2d") as info:
                model(x)
            messages.append(str(info.value))
        assert messages[0] == messages[1]
        # The convolution ran alone (a BatchNorm2d + ReLU group may be tried, and BatchNorm2d refuses).
        assert all(start != 0 for start, _ in fusions), fusions


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_unbatched_input_to_a_convolution_and_batch_norm_raises_the_batch_norms_error(training, rng):
    x = rng.standard_normal((2, 5, 5))
    messages = []
    for fuse in (True, False):
        model = conv_bn_act()
        model.fuse = fuse
        model.train(training)
        with pytest.raises(ValueError, match="x must have 4 dimensions|ndim|dimension") as info:
            model(x)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("act", [nn.ReLU, nn.Hardswish, nn.Sigmoid])
def test_unbatched_input_to_a_convolution_and_activation(act, training, fusions, rng):
    fused, unfused, _ = fused_and_unfused(
        lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, dtype=np.float64, rng=0), act(),
                              nn.Conv2d(3, 2, 3, dtype=np.float64, rng=1), nn.Tanh()))
    x = rng.standard_normal((2, 5, 5))
    results = []
    for model in (fused, unfused):
        model.train(training)
        y = model(x)
        assert y.shape == (2, 3, 3)
        results.append(step(model, x, np.sin(y)))
    assert fusions
    compare_steps(results[0], results[1], forward_exact=True, backward_exact=True)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_empty_batches_through_fused_groups(training, rng):
    fused, unfused, _ = fused_and_unfused(lambda: nn.Sequential(
        *conv_bn_act().layers, nn.BatchNorm2d(3, dtype=np.float64), nn.Sigmoid()))
    x = np.empty((0, 2, 5, 5))
    results = []
    for model in (fused, unfused):
        model.train(training)
        results.append(step(model, x, np.empty((0, 3, 5, 5))))
    compare_steps(results[0], results[1], forward_exact=True, backward_exact=True)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_the_users_input_is_never_modified_even_with_inplace_activations(training, rng):
    def build():
        return nn.Sequential(
            # (Hardswish keeps a copy of its input, so the ReLU after it may overwrite its output;
            # the other way round ReLU's kept output would be overwritten: see
            # test_an_inplace_activation_after_an_output_keeping_one_is_refused_or_right.)
            nn.Conv2d(2, 3, 3, padding=1, dtype=np.float64, rng=0), nn.Hardswish(inplace=True),
            nn.ReLU(inplace=True),
            nn.Sequential(nn.Conv2d(3, 3, 1, dtype=np.float64, rng=1), nn.BatchNorm2d(3, dtype=np.float64),
                          nn.SiLU(inplace=True)),
            nn.ELU(inplace=True), nn.BatchNorm2d(3, dtype=np.float64), nn.LeakyReLU(0.2, inplace=True),
            nn.MaxPool2d(2), nn.SELU(inplace=True),
        )

    fused, unfused, _ = fused_and_unfused(build)
    x = rng.standard_normal((3, 2, 6, 6))
    x_before = x.copy()
    x.flags.writeable = False  # and it need not be writeable
    grad_out = rng.standard_normal((3, 3, 3, 3))
    grad_before = grad_out.copy()
    results = []
    for model in (fused, unfused):
        model.train(training)
        model(x)
        results.append(step(model, x, grad_out))
        assert_bitwise_equal(x, x_before)
        assert_bitwise_equal(grad_out, grad_before)
    compare_steps(results[0], results[1], forward_exact=training, backward_exact=training)


def test_an_output_kept_by_the_caller_survives_the_backward_of_an_evaluation_fusion(rng):
    # The recomputation must not write into the array the fused forward returned.
    model = conv_bn_act(act=nn.ReLU(inplace=True))
    model.eval()
    x = rng.standard_normal((2, 2, 4, 4))
    y = model(x)
    kept = y.copy()
    model.backward(np.ones_like(y))
    assert_bitwise_equal(y, kept)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_state_dict_identical_after_fused_and_unfused_runs(training, rng):
    fused, unfused, _ = fused_and_unfused(lambda: mixed_net(nn, np.float64))
    inputs = rng.standard_normal((2, 2, 3, 8, 8))
    for model in (fused, unfused):
        model.train(training)
        for x in inputs:
            y = model(x)
            model.backward(np.ones_like(y))
    fused_state, unfused_state = fused.state_dict(), unfused.state_dict()
    assert list(fused_state) == list(unfused_state)
    for name in fused_state:
        assert_bitwise_equal(fused_state[name], unfused_state[name])


@pytest.mark.parametrize("work", [1, 300])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_fused_sequential_in_sub_batches(training, work, monkeypatch, rng):
    fused, unfused, _ = fused_and_unfused(lambda: mixed_net(nn, np.float32))
    x = rng.standard_normal((5, 3, 8, 8)).astype(np.float32)
    for model in (fused, unfused):
        model.train(training)
    # Sub-batches sum weight gradients in another order: both runs take the same ones.
    monkeypatch.setattr(convx._batching, "SUB_BATCH_WORK", work)
    expected = step(unfused, x, np.ones((5, 5), np.float32))
    got = step(fused, x, np.ones((5, 5), np.float32))
    compare_steps(got, expected, forward_exact=training, backward_exact=training)


# -- what a user does with a model after a fused forward --------------------------------------

@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_of_a_model_after_a_fused_forward_backpropagate_alike(how, training, fusions, rng):
    fused, unfused, _ = fused_and_unfused(lambda: mixed_net(nn, np.float64))
    x = rng.standard_normal((2, 3, 8, 8))
    grad_out = rng.standard_normal((2, 5))
    fused.train(training)
    fused(x)
    assert fusions
    clone = copy.deepcopy(fused) if how == "deepcopy" else pickle.loads(pickle.dumps(fused))
    clone_grad = clone.backward(grad_out)
    clone_state = clone.state_dict()
    original_grad = fused.backward(grad_out)
    assert_bitwise_equal(clone_grad, original_grad)
    for name, value in fused.grads.items():
        assert_bitwise_equal(clone.grads[name], value)
    for name, value in fused.state_dict().items():
        assert_bitwise_equal(clone_state[name], value)
    # The clone is a model of its own: its parameters are not the original's.
    clone.params["2.weight"][...] = 0
    assert fused.params["2.weight"].any()


def test_layer_by_layer_backward_after_a_training_conv_activation_fusion(fusions, rng):
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, dtype=np.float64, rng=0), nn.ReLU(),
                          nn.Conv2d(3, 2, 3, dtype=np.float64, rng=1), nn.Tanh())
    reference = copy.deepcopy(model)
    x = rng.standard_normal((2, 2, 5, 5))
    y = model(x)
    assert fusions == [(0, 2), (2, 4)]
    grad = np.cos(y)
    for layer in reversed(model.layers):
        grad = layer.backward(grad)
    reference(x)
    assert_bitwise_equal(grad, reference.backward(np.cos(y)))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_layer_backward_after_a_fused_forward_never_uses_an_earlier_forward(training, rng):
    model = nn.Sequential(nn.BatchNorm2d(3, dtype=np.float64), nn.ReLU())
    model.train(training)
    model.fuse = False
    model(rng.standard_normal((2, 3, 4, 4)) + 3)  # an unfused forward: ReLU keeps its output
    model.fuse = True
    y = model(rng.standard_normal((2, 3, 4, 4)))
    grad_out = np.ones_like(y)
    try:
        grad = model.layers[1].backward(grad_out)
    except RuntimeError:
        return  # refusing is fine
    assert_bitwise_equal(grad, grad_out * (y > 0))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_layer_backward_after_an_evaluation_fusion_is_refused(training, rng):
    # The fused layers kept nothing for their own backward: calling it directly is a RuntimeError,
    # even after an earlier unfused forward had filled their caches.
    model = conv_bn_act(act=nn.SiLU())
    model.fuse = False
    model(rng.standard_normal((2, 2, 4, 4)))
    model.fuse = True
    model.eval()
    y = model(rng.standard_normal((2, 2, 4, 4)))
    for layer, grad in zip(reversed(model.layers), (np.ones_like(y),) * 3):
        with pytest.raises(RuntimeError, match="preceding forward"):
            layer.backward(grad)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("pattern", ["conv-bn-act", "bn-act", "conv-act"])
def test_a_refused_grad_out_can_be_retried_after_a_fused_forward(pattern, training, rng):
    def build():
        layers = conv_bn_act(act=nn.ReLU()).layers
        return nn.Sequential(*{"conv-bn-act": layers, "bn-act": layers[1:], "conv-act": layers[::2]}[pattern])

    fused, unfused, _ = fused_and_unfused(build)
    x = rng.standard_normal((4, 3, 5, 5) if pattern == "bn-act" else (4, 2, 5, 5))
    grads = []
    for model in (fused, unfused):
        model.train(training)
        y = model(x)
        with pytest.raises(ValueError, match="grad_out must have the forward output's shape"):
            model.backward(np.ones((1, *y.shape[1:])))
        with pytest.raises(TypeError, match="grad_out must have the forward output's dtype"):
            model.backward(np.ones(y.shape, np.float32))
        grads.append(model.backward(np.cos(np.arange(y.size)).reshape(y.shape)))
    assert_bitwise_equal(grads[0], grads[1])


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_an_input_of_the_wrong_dtype_is_refused_as_unfused(training, rng):
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    for build in (conv_bn_act, lambda: nn.Sequential(*conv_bn_act(act=nn.SiLU()).layers[1:])):
        messages = []
        for fuse in (True, False):
            model = build()
            model.fuse = fuse
            model.train(training)
            with pytest.raises(TypeError, match="float64 parameters but x has dtype float32") as info:
                model(x if len(model) == 3 else x[:, :1].repeat(3, axis=1))
            messages.append(str(info.value))
        assert messages[0] == messages[1]


@pytest.mark.parametrize(("act", "inplace_layer"), [(nn.SELU, nn.Hardsigmoid), (nn.ELU, nn.Hardswish),
                                                    (nn.ELU, nn.SiLU)])
def test_an_inplace_layer_after_a_fused_batch_norm_and_elu_leaves_the_gradient_alone(act, inplace_layer, rng):
    fused, unfused, _ = fused_and_unfused(
        lambda: nn.Sequential(nn.BatchNorm2d(3, dtype=np.float64), act(), inplace_layer(inplace=True)))
    x = rng.standard_normal((4, 3, 5, 5))
    grad_out = rng.standard_normal(x.shape)
    results = [step(model, x, grad_out) for model in (fused, unfused)]
    compare_steps(results[0], results[1], forward_exact=True, backward_exact=False)


@pytest.mark.parametrize("fuse", [True, False])
def test_an_inplace_activation_after_an_output_keeping_one_is_refused_or_right(fuse, rng):
    def build(inplace):
        return nn.Sequential(nn.Conv2d(3, 3, 1, dtype=np.float64, rng=0), nn.Tanh(), nn.Hardsigmoid(inplace=inplace))

    x = rng.standard_normal((4, 3, 5, 5))
    grad_out = rng.standard_normal(x.shape)
    reference = build(False)
    reference(x)
    expected = reference.backward(grad_out)
    model = build(True)
    model.fuse = fuse
    model(x)
    try:
        got = model.backward(grad_out)
    except (RuntimeError, ValueError):
        return
    assert_fused_grad_close(got, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_nan_and_inf_go_where_they_go_unfused(training, dtype, rng):
    def build():
        return nn.Sequential(nn.Conv2d(2, 16, 3, padding=1, dtype=dtype, rng=0), nn.BatchNorm2d(16, dtype=dtype),
                             nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, algorithm="winograd", dtype=dtype, rng=1),
                             nn.Tanh(), nn.BatchNorm2d(16, dtype=dtype), nn.ELU())

    fused, unfused, _ = fused_and_unfused(build)
    x = rng.standard_normal((2, 2, 7, 7)).astype(dtype)
    x[0, 0, 1, 1] = np.nan
    x[1, 1, 5, 2] = np.inf
    x[1, 0, 0, 6] = -np.inf
    outputs = []
    for model in (fused, unfused):
        model.train(training)
        outputs.append(model(x))
    fused_y, unfused_y = outputs
    np.testing.assert_array_equal(np.isnan(fused_y), np.isnan(unfused_y))
    np.testing.assert_array_equal(np.isposinf(fused_y), np.isposinf(unfused_y))
    np.testing.assert_array_equal(np.isneginf(fused_y), np.isneginf(unfused_y))
    finite = np.isfinite(unfused_y)
    (assert_bitwise_equal if training else assert_fused_close)(fused_y[finite], unfused_y[finite])
