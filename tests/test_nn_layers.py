"""Every convx.nn layer: backward against finite differences (float64) and against torch.nn
with shared weights (float32 and float64), plus argument and call-order errors."""

import numpy as np
import pytest
from conftest import DTYPES, assert_close

import convx
from convx import nn
from convx.nn.conv import _fold_read, _read_axis


def away_from_kinks(x, margin=1e-3):
    """Move entries off 0, where ReLU-like activations have no derivative."""
    return np.where(np.abs(x) < margin, x + 10 * margin, x)


def compare_with_torch(torch, ours, theirs, x, rng):
    """Load our weights into the torch module, then compare output, input gradient and every
    parameter gradient for one random output gradient."""
    dtype = x.dtype
    theirs = theirs.to(torch.float64 if dtype == np.float64 else torch.float32)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    y = ours.forward(x)
    x_torch = torch.from_numpy(x.copy()).requires_grad_(True)
    y_torch = theirs(x_torch)
    assert y.dtype == dtype
    assert_close(y, y_torch.detach().numpy())
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    grad_x = ours.backward(grad_out)
    y_torch.backward(torch.from_numpy(grad_out))
    assert grad_x.dtype == dtype
    assert_close(grad_x, x_torch.grad.numpy())
    torch_params = dict(theirs.named_parameters())
    assert sorted(ours.grads) == sorted(torch_params)
    for name, param in torch_params.items():
        assert ours.grads[name].dtype == dtype
        assert_close(ours.grads[name], param.grad.numpy())


# ---------------------------------------------------------------------------------- Conv2d
CONV2D_CASES = [
    dict(in_channels=4, out_channels=6, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=2, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=(1, 2), padding=(2, 0), dilation=(2, 1)),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding="same", dilation=2),
    dict(in_channels=4, out_channels=6, kernel_size=(2, 3), padding="same"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding="valid", groups=2),
    dict(in_channels=4, out_channels=8, kernel_size=3, padding=1, groups=4),
    dict(in_channels=4, out_channels=6, kernel_size=1, bias=False),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=(1, 2), padding_mode="reflect"),
    dict(in_channels=4, out_channels=6, kernel_size=(2, 3), padding="same", padding_mode="reflect"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=(2, 1), stride=2, padding_mode="replicate"),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding=(1, 3), groups=2, padding_mode="circular"),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), padding="same", dilation=(1, 3), padding_mode="circular"),
]


def _case_id(case):
    return ",".join(f"{k}={v}" for k, v in case.items() if k not in ("in_channels", "out_channels"))


@pytest.mark.parametrize("case", CONV2D_CASES, ids=_case_id)
def test_conv2d_gradcheck(case, rng):
    layer = nn.Conv2d(**case, dtype=np.float64, rng=1)
    x = rng.standard_normal((2, 4, 6, 5))
    assert convx.gradcheck(layer, x)


# PyTorch's own performance note about its zero-padded copy, not a problem of the test.
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV2D_CASES, ids=_case_id)
def test_conv2d_matches_torch(case, dtype, torch, rng):
    ours = nn.Conv2d(**case, dtype=dtype, rng=2)
    theirs = torch.nn.Conv2d(**case)
    x = rng.standard_normal((3, 4, 7, 6)).astype(dtype)
    compare_with_torch(torch, ours, theirs, x, rng)


def test_conv2d_unbatched_input_matches_torch(torch, rng):
    case = dict(in_channels=2, out_channels=3, kernel_size=3, padding=1, padding_mode="replicate")
    ours = nn.Conv2d(**case, dtype=np.float64, rng=0)
    compare_with_torch(torch, ours, torch.nn.Conv2d(**case), rng.standard_normal((2, 5, 5)), rng)


def _fold_padding(grad_padded, shape, pads, mode):
    """The padded axes read whole (a 1-tap kernel, stride 1), and the adjoint of that read."""
    reads = [_read_axis(size, axis_pads, 1, 1, 1, mode) for size, axis_pads in zip(shape[-2:], pads)]
    folded = _fold_read(_fold_read(grad_padded, -1, reads[1], shape[-1]), -2, reads[0], shape[-2])
    return reads, folded


@pytest.mark.parametrize("mode", ["reflect", "edge", "wrap"])
@pytest.mark.parametrize("pads", [((1, 2), (0, 3)), ((2, 2), (1, 1)), ((0, 0), (4, 1))])
def test_fold_padding_is_the_adjoint_of_numpy_pad(mode, pads, rng):
    x = rng.standard_normal((2, 3, 5, 4))
    padded = np.pad(x, [(0, 0), (0, 0), *pads], mode=mode)
    grad_padded = rng.standard_normal(padded.shape)
    reads, folded = _fold_padding(grad_padded, x.shape, pads, mode)
    # the read copies what numpy.pad copies
    np.testing.assert_array_equal(np.take(np.take(x, reads[0].source, axis=-2), reads[1].source, axis=-1), padded)
    assert folded.shape == x.shape
    assert np.vdot(grad_padded, padded) == pytest.approx(np.vdot(folded, x), rel=1e-12)


def test_fold_padding_replicate_pad_larger_than_input():
    grad = np.ones((1, 1, 1, 7))
    _, folded = _fold_padding(grad, (1, 1, 1, 2), ((0, 0), (3, 2)), "edge")
    np.testing.assert_array_equal(folded, [[[[4.0, 3.0]]]])


@pytest.mark.parametrize(
    "mode, padding, size, message",
    [("reflect", 2, 2, "reflect"), ("circular", 3, 2, "circular")],
)
def test_conv2d_padding_mode_limits_match_torch(mode, padding, size, message, torch):
    layer = nn.Conv2d(1, 1, 3, padding=padding, padding_mode=mode)
    x = np.zeros((1, 1, size, size), dtype=np.float32)
    with pytest.raises(ValueError, match=message):
        layer(x)
    with pytest.raises((RuntimeError, ValueError)):
        torch.nn.Conv2d(1, 1, 3, padding=padding, padding_mode=mode)(torch.zeros(1, 1, size, size))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(in_channels=3, out_channels=4, kernel_size=3, groups=2), ValueError, "groups=2 must divide"),
        (dict(in_channels=2, out_channels=4, kernel_size=3, padding="full"), ValueError, "'same_lower', got 'full'"),
        (dict(in_channels=2, out_channels=4, kernel_size=3, padding=(1, 0, 1, 0)), ValueError, "ambiguous"),
        (dict(in_channels=2, out_channels=4, kernel_size=3, padding=((1, 0), 1)), ValueError,
         r"\(\(top, bottom\), \(left, right\)\)"),
        (dict(in_channels=2, out_channels=4, kernel_size=3, padding_mode="mirror"), ValueError, "padding_mode"),
        (dict(in_channels=2, out_channels=4, kernel_size=0), ValueError, "kernel_size must be positive"),
        (dict(in_channels=2, out_channels=4, kernel_size=2.0), TypeError, "kernel_size must be an int"),
        (dict(in_channels=2, out_channels=4, kernel_size=3, padding=-1), ValueError, "padding must be at least 0"),
        (dict(in_channels=2, out_channels=4, kernel_size=3, bias=1), TypeError, "bias must be a bool"),
        (dict(in_channels=2, out_channels=4, kernel_size=3, dtype=np.int32), TypeError, "float32 or float64"),
        (dict(in_channels=2, out_channels=4, kernel_size=3, rng=1.5), TypeError, "rng must be"),
    ],
)
def test_conv2d_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        nn.Conv2d(**kwargs)


def test_conv2d_rejects_mismatched_input():
    layer = nn.Conv2d(3, 4, 3)
    with pytest.raises(TypeError, match="float32 parameters but x has dtype float64"):
        layer(np.zeros((1, 3, 5, 5)))
    with pytest.raises(ValueError, match="expects 3 input channels"):
        layer(np.zeros((1, 2, 5, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="3 or 4-dimensional"):
        layer(np.zeros((5, 5), dtype=np.float32))


# ------------------------------------------------------------------------- ConvTranspose2d
CONV_TRANSPOSE_CASES = [
    dict(in_channels=4, out_channels=6, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, output_padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(2, 1), padding=(0, 1), bias=False),
    dict(in_channels=4, out_channels=6, kernel_size=3, groups=2, dilation=2, stride=2),
    # output_padding >= stride, allowed because it is below the dilation: the forward input is
    # implicitly extended by zeros that backward has to account for.
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=1, dilation=2, output_padding=1),
    dict(in_channels=4, out_channels=4, kernel_size=2, stride=2, groups=4),
]


@pytest.mark.parametrize("case", CONV_TRANSPOSE_CASES, ids=_case_id)
def test_conv_transpose2d_gradcheck(case, rng):
    layer = nn.ConvTranspose2d(**case, dtype=np.float64, rng=3)
    assert convx.gradcheck(layer, rng.standard_normal((2, 4, 4, 3)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_TRANSPOSE_CASES, ids=_case_id)
def test_conv_transpose2d_matches_torch(case, dtype, torch, rng):
    ours = nn.ConvTranspose2d(**case, dtype=dtype, rng=4)
    x = rng.standard_normal((3, 4, 5, 4)).astype(dtype)
    compare_with_torch(torch, ours, torch.nn.ConvTranspose2d(**case), x, rng)


def test_conv_transpose2d_rejects_bad_arguments():
    with pytest.raises(ValueError, match="output_padding must be smaller"):
        nn.ConvTranspose2d(2, 2, 3, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="padding must be an int, .*'same_lower', got 'full'"):
        nn.ConvTranspose2d(2, 2, 3, padding="full")
    with pytest.raises(ValueError, match="groups=2 must divide"):
        nn.ConvTranspose2d(2, 3, 3, groups=2)


# --------------------------------------------------------------------------------- Pooling
POOLING_CASES = [
    ("MaxPool2d", dict(kernel_size=2)),
    ("MaxPool2d", dict(kernel_size=3, stride=2, padding=1)),
    ("MaxPool2d", dict(kernel_size=(2, 3), stride=(1, 2), dilation=(2, 1), ceil_mode=True)),
    ("AvgPool2d", dict(kernel_size=2)),
    ("AvgPool2d", dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ("AvgPool2d", dict(kernel_size=(3, 2), stride=2, padding=1, ceil_mode=True)),
    ("AvgPool2d", dict(kernel_size=2, stride=1, divisor_override=3)),
    ("AdaptiveAvgPool2d", dict(output_size=(3, 2))),
    ("AdaptiveAvgPool2d", dict(output_size=(None, 4))),
    ("AdaptiveMaxPool2d", dict(output_size=3)),
    ("AdaptiveMaxPool2d", dict(output_size=(2, None))),
]


def _pool_id(case):
    name, kwargs = case
    return name + "(" + ",".join(f"{k}={v}" for k, v in kwargs.items()) + ")"


@pytest.mark.parametrize("case", POOLING_CASES, ids=_pool_id)
def test_pooling_gradcheck(case, rng):
    name, kwargs = case
    # Distinct values (a permutation) keep max pooling away from ties.
    x = rng.permutation(2 * 3 * 7 * 6).reshape(2, 3, 7, 6) / 10.0
    assert convx.gradcheck(getattr(nn, name)(**kwargs), x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOLING_CASES, ids=_pool_id)
def test_pooling_matches_torch(case, dtype, torch, rng):
    name, kwargs = case
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    compare_with_torch(torch, getattr(nn, name)(**kwargs), getattr(torch.nn, name)(**kwargs), x, rng)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pooling_return_indices_as_torch(dtype, layout, torch, rng):
    # PyTorch's positional order (kernel_size, stride, padding, dilation, return_indices, ceil_mode):
    # (y, indices) from forward, PyTorch's pair exactly; backward still takes y's gradient alone.
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    tx = torch.from_numpy(x)
    last = (lambda a: np.ascontiguousarray(np.moveaxis(a, 1, -1))) if layout == "NHWC" else (lambda a: a)
    first = (lambda a: np.moveaxis(a, -1, 1)) if layout == "NHWC" else (lambda a: a)
    for ours, theirs in [
        (nn.MaxPool2d(3, 2, 1, 1, True, True, layout=layout), torch.nn.MaxPool2d(3, 2, 1, 1, True, True)),
        (nn.MaxPool2d(2, return_indices=True, layout=layout), torch.nn.MaxPool2d(2, return_indices=True)),
        (nn.AdaptiveMaxPool2d((3, 2), True, layout=layout), torch.nn.AdaptiveMaxPool2d((3, 2), True)),
    ]:
        y, indices = ours(last(x))
        ty, tindices = theirs(tx)
        np.testing.assert_array_equal(first(y), ty.numpy())
        np.testing.assert_array_equal(first(indices), tindices.numpy())
        assert indices.dtype == np.int64
        grad = rng.standard_normal(y.shape).astype(dtype)
        tx.requires_grad_(True)
        theirs(tx)[0].backward(torch.from_numpy(first(grad).copy()))
        np.testing.assert_array_equal(first(ours.backward(grad)), tx.grad.numpy())
        tx = torch.from_numpy(x)
    assert not isinstance(nn.MaxPool2d(2)(x), tuple) and not isinstance(nn.AdaptiveMaxPool2d(2)(x), tuple)
    with pytest.raises(TypeError, match="return_indices must be a bool"):
        nn.MaxPool2d(2, return_indices="yes")
    with pytest.raises(TypeError, match="return_indices must be a bool"):
        nn.AdaptiveMaxPool2d(2, return_indices=1)


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["Avg", "Max"])
def test_global_pooling_matches_torch_adaptive_pooling(kind, dtype, keepdims, torch, rng):
    ours = getattr(nn, f"Global{kind}Pool2d")(keepdims=keepdims)
    adaptive = getattr(torch.nn, f"Adaptive{kind}Pool2d")(1)
    theirs = adaptive if keepdims else torch.nn.Sequential(adaptive, torch.nn.Flatten())
    x = rng.standard_normal((3, 4, 5, 6)).astype(dtype)
    compare_with_torch(torch, ours, theirs, x, rng)
    assert ours.forward(x).shape == ((3, 4, 1, 1) if keepdims else (3, 4))


@pytest.mark.parametrize("kind", ["Avg", "Max"])
def test_global_pooling_gradcheck_unbatched(kind, rng):
    layer = getattr(nn, f"Global{kind}Pool2d")()
    x = rng.permutation(3 * 4 * 5).reshape(3, 4, 5) / 10.0
    assert layer.forward(x).shape == (3,)
    assert convx.gradcheck(layer, x)


def test_pooling_layers_reject_bad_arguments():
    with pytest.raises(ValueError, match="kernel_size must be positive"):
        nn.MaxPool2d(0)
    with pytest.raises(TypeError, match="ceil_mode must be a bool"):
        nn.AvgPool2d(2, ceil_mode=1)
    with pytest.raises(ValueError, match="divisor_override must be positive"):
        nn.AvgPool2d(2, divisor_override=0)
    with pytest.raises(ValueError, match="output_size"):
        nn.AdaptiveAvgPool2d((1, 2, 3))
    with pytest.raises(TypeError, match="keepdims must be a bool"):
        nn.GlobalMaxPool2d(keepdims="yes")


# ------------------------------------------------------------------------- Linear, Flatten
LINEAR_CASES = [
    (dict(in_features=5, out_features=3), (4, 5)),
    (dict(in_features=5, out_features=3, bias=False), (4, 5)),
    (dict(in_features=5, out_features=2), (2, 3, 5)),
    (dict(in_features=5, out_features=2), (5,)),
]


@pytest.mark.parametrize("case, shape", LINEAR_CASES)
def test_linear_gradcheck(case, shape, rng):
    assert convx.gradcheck(nn.Linear(**case, dtype=np.float64, rng=5), rng.standard_normal(shape))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case, shape", LINEAR_CASES)
def test_linear_matches_torch(case, shape, dtype, torch, rng):
    ours = nn.Linear(**case, dtype=dtype, rng=6)
    compare_with_torch(torch, ours, torch.nn.Linear(**case), rng.standard_normal(shape).astype(dtype), rng)


def test_linear_rejects_wrong_features():
    with pytest.raises(ValueError, match="expects 5 input features"):
        nn.Linear(5, 2)(np.zeros((3, 4), dtype=np.float32))


@pytest.mark.parametrize("start_dim, end_dim", [(1, -1), (0, -1), (2, 3), (1, 2), (-3, -2)])
def test_flatten_matches_torch(start_dim, end_dim, torch, rng):
    x = rng.standard_normal((2, 3, 4, 5))
    compare_with_torch(torch, nn.Flatten(start_dim, end_dim), torch.nn.Flatten(start_dim, end_dim), x, rng)


def test_flatten_rejects_dims_outside_input():
    with pytest.raises(ValueError, match="does not fit"):
        nn.Flatten(start_dim=3)(np.zeros((2, 3)))


# ----------------------------------------------------------------------------- Activations
ACTIVATIONS = [
    ("ReLU", {}),
    ("LeakyReLU", dict(negative_slope=0.2)),
    ("PReLU", {}),
    ("PReLU", dict(num_parameters=3, init=0.1)),
    ("ELU", dict(alpha=0.7)),
    ("SELU", {}),
    ("Sigmoid", {}),
    ("Tanh", {}),
]


def _make_activation(name, kwargs, dtype):
    cls = getattr(nn, name)
    return cls(**kwargs, dtype=dtype) if name == "PReLU" else cls(**kwargs)


@pytest.mark.parametrize("name, kwargs", ACTIVATIONS)
def test_activation_gradcheck(name, kwargs, rng):
    x = away_from_kinks(rng.standard_normal((2, 3, 4, 3)))
    assert convx.gradcheck(_make_activation(name, kwargs, np.float64), x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, kwargs", ACTIVATIONS)
def test_activation_matches_torch(name, kwargs, dtype, torch, rng):
    x = (3 * rng.standard_normal((2, 3, 4, 3))).astype(dtype)
    theirs = getattr(torch.nn, name)(**kwargs)
    compare_with_torch(torch, _make_activation(name, kwargs, dtype), theirs, x, rng)


@pytest.mark.parametrize("name", ["ELU", "SELU", "Sigmoid", "Tanh"])
def test_activations_do_not_overflow(name):
    x = np.array([-1e4, -100.0, 0.0, 100.0, 1e4], dtype=np.float32)
    layer = getattr(nn, name)()
    y = layer(x)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(layer.backward(np.ones_like(y))))


def test_prelu_rejects_channel_mismatch():
    with pytest.raises(ValueError, match="3 slopes"):
        nn.PReLU(3)(np.zeros((2, 4), dtype=np.float32))


# ----------------------------------------------------------------- the layer contract
def _all_layers(dtype=np.float32):
    layers = [
        nn.Conv2d(3, 4, 3, padding=1, dtype=dtype),
        nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular", dtype=dtype),
        nn.ConvTranspose2d(3, 4, 2, stride=2, dtype=dtype),
        nn.Linear(6, 2, dtype=dtype),
        nn.Flatten(),
        nn.ReLU(),
        nn.LeakyReLU(),
        nn.PReLU(dtype=dtype),
        nn.ELU(),
        nn.SELU(),
        nn.Sigmoid(),
        nn.Tanh(),
        nn.Dropout(0.5, rng=0),
        nn.BatchNorm2d(3, dtype=dtype),
        nn.Sequential(nn.Conv2d(3, 2, 1, dtype=dtype), nn.ReLU()),
        nn.MaxPool2d(2),
        nn.AvgPool2d(2),
        nn.AdaptiveAvgPool2d(2),
        nn.AdaptiveMaxPool2d(2),
        nn.GlobalAvgPool2d(),
        nn.GlobalMaxPool2d(),
    ]
    return layers


@pytest.mark.parametrize("layer", _all_layers(), ids=lambda layer: type(layer).__name__)
def test_backward_needs_a_preceding_forward(layer):
    x = np.ones((2, 3, 4, 6), dtype=np.float32)
    with pytest.raises(RuntimeError, match=r"backward\(\) needs a preceding forward"):
        layer.backward(np.ones((2, 3, 4, 6), dtype=np.float32))
    grad_out = np.ones_like(layer.forward(x))
    layer.backward(grad_out)
    with pytest.raises(RuntimeError, match=r"backward\(\) needs a preceding forward"):
        layer.backward(grad_out)


@pytest.mark.parametrize("layer", _all_layers(), ids=lambda layer: type(layer).__name__)
def test_backward_checks_grad_out_and_keeps_the_cache_when_rejecting_it(layer):
    y = layer.forward(np.ones((2, 3, 4, 6), dtype=np.float32))
    with pytest.raises(ValueError, match="grad_out must have the forward output's shape"):
        layer.backward(np.ones(y.shape + (1,), dtype=np.float32))
    with pytest.raises(TypeError, match="dtype"):
        layer.backward(np.ones(y.shape, dtype=np.float64))
    assert layer.backward(np.ones(y.shape, dtype=np.float32)).shape == (2, 3, 4, 6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer_index", range(len(_all_layers())))
def test_outputs_and_gradients_keep_the_dtype(layer_index, dtype):
    layer = _all_layers(dtype)[layer_index]
    x = np.linspace(-1, 1, 2 * 3 * 4 * 6).reshape(2, 3, 4, 6).astype(dtype)
    y = layer(x)
    grad_x = layer.backward(np.ones_like(y))
    assert y.dtype == dtype and grad_x.dtype == dtype and grad_x.shape == x.shape
    for name, param in layer.params.items():
        assert param.dtype == dtype
        assert layer.grads[name].dtype == dtype and layer.grads[name].shape == param.shape


def test_backward_overwrites_gradients_with_fresh_arrays(rng):
    layer = nn.Conv2d(2, 3, 3, dtype=np.float64, rng=0)
    x1, x2 = rng.standard_normal((2, 2, 2, 5, 5))
    grad_out = rng.standard_normal((2, 3, 3, 3))
    assert layer.grads == {"weight": None, "bias": None}
    layer.forward(x1)
    layer.backward(grad_out)
    first = layer.grads["weight"]
    first_copy = first.copy()
    layer.forward(x2)
    layer.backward(grad_out)
    second = layer.grads["weight"]
    # The second gradient is that of the second batch alone, in a new array.
    assert second is not first
    np.testing.assert_array_equal(first, first_copy)
    assert_close(second, convx.conv2d_backward_weight(grad_out, x2, layer.params["weight"].shape))
