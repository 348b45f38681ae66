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
from convx.functional import activations as A
from convx.functional import conv as conv_module
from convx.functional import normalization as norm_module

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


def assert_fused_close(actual, expected):
    assert_close(actual, expected, tolerances=FUSION_TOLERANCES)


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
ACTIVATION_IDS = [name + "".join(f"-{k}={v}" for k, v in params.items()) for name, params in ACTIVATIONS]

# Whose gradient the fused batch normalisation backward takes from the output.
OUTPUT_READING = [
    ("relu", {}), ("relu6", {}), ("leaky_relu", {}), ("leaky_relu", {"negative_slope": 0.0}),
    ("leaky_relu", {"negative_slope": 1.5}), ("elu", {}), ("elu", {"alpha": 0.5}), ("elu", {"alpha": 0.0}),
    ("selu", {}), ("sigmoid", {}), ("tanh", {}),
]
INPUT_READING = [item for item in ACTIVATIONS if item not in OUTPUT_READING]


def _ids(items):
    return [name + "".join(f"-{k}={v}" for k, v in params.items()) for name, params in items]


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


@pytest.mark.xfail(strict=True, reason="activation_params without activation is silently ignored (not validated)")
@pytest.mark.parametrize("params", [{"negative_slope": 0.2}, 5])
def test_activation_params_without_an_activation_is_refused(params, rng):
    x, weight, bias = _conv_arrays(rng, np.float32, (2, 3, 5, 5), (4, 3, 3, 3))
    with pytest.raises((TypeError, ValueError), match="activation"):
        F.conv2d(x, weight, bias, activation_params=params)
