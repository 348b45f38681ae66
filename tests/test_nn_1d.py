"""The 1-D layers of convx.nn: PyTorch's constructor arguments, parameters, initialisation and
state_dict keys, forward and backward against PyTorch, central differences, refusals; and a small
1-D network against the same PyTorch network."""

from __future__ import annotations

import math

import numpy as np
import pytest

import convx
from convx import nn

LAYERS = {
    "conv": (lambda dtype: nn.Conv1d(4, 6, 3, stride=2, padding=1, dtype=dtype, rng=0),
             lambda t: t.nn.Conv1d(4, 6, 3, stride=2, padding=1)),
    "conv-grouped-same-dilated": (lambda dtype: nn.Conv1d(4, 6, 3, padding="same", dilation=2, groups=2, dtype=dtype,
                                                          rng=0),
                                  lambda t: t.nn.Conv1d(4, 6, 3, padding="same", dilation=2, groups=2)),
    "conv-depthwise-nobias": (lambda dtype: nn.Conv1d(4, 4, 5, padding=(2,), groups=4, bias=False, dtype=dtype, rng=0),
                              lambda t: t.nn.Conv1d(4, 4, 5, padding=(2,), groups=4, bias=False)),
    "conv-reflect": (lambda dtype: nn.Conv1d(4, 3, 3, padding=2, padding_mode="reflect", dtype=dtype, rng=0),
                     lambda t: t.nn.Conv1d(4, 3, 3, padding=2, padding_mode="reflect")),
    "conv-replicate-strided": (lambda dtype: nn.Conv1d(4, 3, 4, stride=3, padding=3, padding_mode="replicate",
                                                       dtype=dtype, rng=0),
                               lambda t: t.nn.Conv1d(4, 3, 4, stride=3, padding=3, padding_mode="replicate")),
    "conv-circular": (lambda dtype: nn.Conv1d(4, 3, 3, padding=1, padding_mode="circular", dtype=dtype, rng=0),
                      lambda t: t.nn.Conv1d(4, 3, 3, padding=1, padding_mode="circular")),
    "conv-transpose": (lambda dtype: nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2,
                                                        dtype=dtype, rng=0),
                       lambda t: t.nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)),
    "conv-transpose-dilated": (lambda dtype: nn.ConvTranspose1d(4, 2, 2, stride=2, output_padding=2, dilation=3,
                                                                dtype=dtype, rng=0),
                               lambda t: t.nn.ConvTranspose1d(4, 2, 2, stride=2, output_padding=2, dilation=3)),
    "batch-norm": (lambda dtype: nn.BatchNorm1d(4, dtype=dtype), lambda t: t.nn.BatchNorm1d(4)),
    "max-pool": (lambda dtype: nn.MaxPool1d(3, 2, 1, ceil_mode=True), lambda t: t.nn.MaxPool1d(3, 2, 1, ceil_mode=True)),
    "max-pool-dilated": (lambda dtype: nn.MaxPool1d(3, 1, 1, dilation=2), lambda t: t.nn.MaxPool1d(3, 1, 1, dilation=2)),
    "avg-pool": (lambda dtype: nn.AvgPool1d(4, 3, 2, ceil_mode=True, count_include_pad=False),
                 lambda t: t.nn.AvgPool1d(4, 3, 2, ceil_mode=True, count_include_pad=False)),
    "adaptive-avg": (lambda dtype: nn.AdaptiveAvgPool1d(4), lambda t: t.nn.AdaptiveAvgPool1d(4)),
    "adaptive-max": (lambda dtype: nn.AdaptiveMaxPool1d(3), lambda t: t.nn.AdaptiveMaxPool1d(3)),
}

TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}


def _torch_twin(torch, make_torch, layer, dtype):
    """The PyTorch layer, in the dtype, with convx's parameters loaded through its state_dict."""
    twin = make_torch(torch).to(torch.float32 if dtype == np.float32 else torch.float64)
    state = layer.state_dict()
    assert sorted(state) == sorted(twin.state_dict())
    twin.load_state_dict({key: torch.tensor(np.asarray(value)) for key, value in state.items()})
    return twin


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", LAYERS)
def test_layer_matches_torch(name, dtype, rng, torch):
    make, make_torch = LAYERS[name]
    layer = make(dtype)
    twin = _torch_twin(torch, make_torch, layer, dtype)
    for x in (rng.standard_normal((3, 4, 11)).astype(dtype), rng.standard_normal((4, 9)).astype(dtype)):
        if name == "batch-norm" and x.ndim == 2:
            x = rng.standard_normal((5, 4)).astype(dtype)  # BatchNorm1d's (N, C)
        tx = torch.tensor(x, requires_grad=True)
        ty = twin(tx)
        y = layer(x)
        np.testing.assert_allclose(y, ty.detach().numpy(), **TOL[dtype])
        grad_out = rng.standard_normal(y.shape).astype(dtype)
        ty.backward(torch.tensor(grad_out))
        np.testing.assert_allclose(layer.backward(grad_out), tx.grad.numpy(), **TOL[dtype])
        for key, parameter in twin.named_parameters():
            np.testing.assert_allclose(layer.grads[key], parameter.grad.numpy(), **TOL[dtype])
            parameter.grad = None
        for key, buffer in twin.named_buffers():
            np.testing.assert_allclose(layer.buffers[key], buffer.numpy(), **TOL[dtype])


def test_batch_norm1d_in_evaluation_uses_running_statistics(rng, torch):
    layer = nn.BatchNorm1d(3, momentum=None, dtype=np.float64)
    twin = _torch_twin(torch, lambda t: t.nn.BatchNorm1d(3, momentum=None), layer, np.float64)
    for _ in range(3):
        x = rng.normal(2.0, 3.0, (6, 3, 5))
        layer(x), twin(torch.tensor(x))
    layer.eval(), twin.eval()
    x = rng.standard_normal((4, 3))
    np.testing.assert_allclose(layer(x), twin(torch.tensor(x)).detach().numpy(), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="BatchNorm1d needs more than one value per channel"):
        nn.BatchNorm1d(3)(np.ones((1, 3), np.float32))


@pytest.mark.parametrize("make, fan_in, weight_shape", [
    (lambda: nn.Conv1d(6, 8, 5, groups=2, rng=1), 3 * 5, (8, 3, 5)),
    (lambda: nn.ConvTranspose1d(6, 8, 5, groups=2, rng=1), 4 * 5, (6, 4, 5)),
])
def test_initialisation_is_pytorch_s(make, fan_in, weight_shape):
    """kaiming_uniform(a=sqrt(5)): U(-b, b) with b = sqrt(6 / ((1 + 5) fan_in)) = 1/sqrt(fan_in); the bias U(-1/sqrt(fan_in), +)."""
    layer = make()
    weight, bias = layer.params["weight"], layer.params["bias"]
    assert weight.shape == weight_shape and weight.dtype == np.float32 and bias.shape == (8,)
    bound = 1 / math.sqrt(fan_in)
    assert np.abs(weight).max() <= bound and np.abs(weight).max() > 0.8 * bound
    assert np.abs(bias).max() <= bound
    assert abs(weight.mean()) < 0.2 * bound
    np.testing.assert_array_equal(make().params["weight"], weight)  # rng seeds reproduce


def test_attributes_are_pytorch_s(torch):
    conv, twin = nn.Conv1d(2, 3, 3, stride=2, padding=1), torch.nn.Conv1d(2, 3, 3, stride=2, padding=1)
    for attribute in ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"):
        assert getattr(conv, attribute) == getattr(twin, attribute)
    assert nn.Conv1d(2, 3, 3, padding="same").padding == "same"
    assert nn.Conv1d(2, 3, 3, padding=((2, 0),)).padding == ((2, 0),)
    transposed = nn.ConvTranspose1d(2, 3, 3, stride=2, padding=1, output_padding=1)
    twin_t = torch.nn.ConvTranspose1d(2, 3, 3, stride=2, padding=1, output_padding=1)
    for attribute in ("kernel_size", "stride", "padding", "output_padding", "dilation"):
        assert getattr(transposed, attribute) == getattr(twin_t, attribute)


def test_return_indices_layers_give_pairs(rng):
    x = rng.standard_normal((2, 3, 10))
    pool = nn.MaxPool1d(2, return_indices=True)
    y, indices = pool(x)
    np.testing.assert_array_equal((y, indices), convx.max_pool1d(x, 2, return_indices=True))
    assert pool.backward(np.ones_like(y)).shape == x.shape
    y, indices = nn.AdaptiveMaxPool1d(3, return_indices=True)(x)
    np.testing.assert_array_equal(np.take_along_axis(x, indices, -1), y)


@pytest.mark.parametrize("name", ["conv", "conv-grouped-same-dilated", "conv-reflect", "conv-replicate-strided",
                                  "conv-transpose-dilated", "batch-norm", "avg-pool", "adaptive-avg"])
def test_layer_gradients_by_central_differences(name, rng):
    layer = LAYERS[name][0](np.float64)
    assert convx.gradcheck(layer, rng.standard_normal((2, 4, 9)))


def test_max_pool_layers_by_central_differences(rng):
    x = rng.permutation(72).astype(np.float64).reshape(2, 4, 9) / 5  # distinct values: unique maxima
    assert convx.gradcheck(nn.MaxPool1d(3, 2, 1), x)
    assert convx.gradcheck(nn.AdaptiveMaxPool1d(4), x)


def test_frozen_conv1d_still_gives_the_input_gradient(rng):
    layer = nn.Conv1d(4, 6, 3, padding=1, dtype=np.float64, rng=0)
    x = rng.standard_normal((2, 4, 7))
    expected = layer.backward(np.ones_like(layer(x)))
    layer.requires_grad_(False)
    np.testing.assert_allclose(layer.backward(np.ones_like(layer(x))), expected, rtol=1e-12)
    assert layer.grads.get("weight") is None and layer.grads.get("bias") is None


@pytest.mark.parametrize("call, exception, message", [
    (lambda: nn.Conv1d(4, 6, (3, 3)), ValueError, "kernel_size of a 1-D op must be an int or a 1-tuple"),
    (lambda: nn.Conv1d(4, 6, 3, padding=(1, 1)), ValueError, "padding of a 1-D convolution must be"),
    (lambda: nn.Conv1d(4, 6, 3, groups=4), ValueError, r"groups=4 must divide both in_channels \(4\) and "
                                                        r"out_channels \(6\)"),
    (lambda: nn.Conv1d(4, 6, 3, padding_mode="mirror"), ValueError, "padding_mode must be one of"),
    (lambda: nn.Conv1d(4, 6, 3, algorithm="winograd"), ValueError, "1-D convolution takes 'direct' or 'auto'"),
    (lambda: nn.Conv1d(4, 6, 3)(np.ones((2, 4, 5, 5), np.float32)), ValueError, "x must be 2 or 3-dimensional"),
    (lambda: nn.Conv1d(4, 6, 3)(np.ones((2, 3, 5), np.float32)), ValueError,
     r"Conv1d expects 4 input channels, got x of shape \(2, 3, 5\) with 3 channels \(layout \(N, C, L\) or \(C, L\)\)"),
    (lambda: nn.Conv1d(4, 6, 3)(np.ones((2, 4, 5))), TypeError, "Conv1d has float32 parameters but x has dtype float64"),
    (lambda: nn.Conv1d(4, 6, 3, padding=2, padding_mode="reflect")(np.ones((1, 4, 2), np.float32)), ValueError,
     r"padding_mode='reflect' needs padding smaller than the input: padding \(2, 2\) along the length of size 2"),
    (lambda: nn.Conv1d(4, 6, 5, padding_mode="circular")(np.ones((1, 4, 3), np.float32)), ValueError,
     r"the dilated kernel \(5: kernel_size=5, dilation=1\) is longer than the padded input"),
    (lambda: nn.ConvTranspose1d(4, 6, 3, stride=2, output_padding=2), ValueError,
     "output_padding must be smaller than either stride or dilation, got output_padding=2, stride=2, dilation=1"),
    (lambda: nn.ConvTranspose1d(4, 6, 3, padding="full"), ValueError, "padding must be an int, .* got 'full'"),
    (lambda: nn.MaxPool1d((2, 2)), ValueError, "kernel_size of a 1-D op"),
    (lambda: nn.MaxPool1d(2)(np.ones((1, 2, 3, 4))), ValueError, "x must be 2 or 3-dimensional"),
    (lambda: nn.AvgPool1d(2, padding=(1, 1)), ValueError, "padding of a 1-D op"),
    (lambda: nn.AdaptiveAvgPool1d((2, 2)), ValueError, "output_size of a 1-D op"),
    (lambda: nn.AdaptiveMaxPool1d(2, return_indices=1), TypeError, "return_indices must be a bool"),
    (lambda: nn.BatchNorm1d(3)(np.ones((2, 3, 4, 4), np.float32)), ValueError, "x must be 2 or 3-dimensional"),
    (lambda: nn.BatchNorm1d(3)(np.ones((2, 4, 5), np.float32)), ValueError,
     r"BatchNorm1d expects 3 channels, got x of shape \(2, 4, 5\) \(layout \(N, C\) or \(N, C, L\)\)"),
])
def test_bad_arguments(call, exception, message):
    with pytest.raises(exception, match=message):
        call()


def test_small_network_matches_torch(rng, torch):
    """Conv1d, BatchNorm1d, ReLU, MaxPool1d, AdaptiveAvgPool1d, Flatten, Linear: the same net in PyTorch with
    the same weights, forward and every gradient, in float64."""
    net = nn.Sequential(
        nn.Conv1d(3, 8, 5, padding=2, dtype=np.float64, rng=0),
        nn.BatchNorm1d(8, dtype=np.float64),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(8, 8, 3, padding="same", groups=4, dtype=np.float64, rng=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(3),
        nn.Flatten(),
        nn.Linear(24, 5, dtype=np.float64, rng=2),
    )
    twin = torch.nn.Sequential(
        torch.nn.Conv1d(3, 8, 5, padding=2), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.MaxPool1d(2),
        torch.nn.Conv1d(8, 8, 3, padding="same", groups=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool1d(3),
        torch.nn.Flatten(), torch.nn.Linear(24, 5),
    ).double()
    state = net.state_dict()
    assert sorted(state) == sorted(twin.state_dict())
    twin.load_state_dict({key: torch.tensor(np.asarray(value)) for key, value in state.items()})
    x = rng.standard_normal((4, 3, 21))
    tx = torch.tensor(x, requires_grad=True)
    ty = twin(tx)
    y = net(x)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-13)
    grad_out = rng.standard_normal(y.shape)
    ty.backward(torch.tensor(grad_out))
    np.testing.assert_allclose(net.backward(grad_out), tx.grad.numpy(), rtol=1e-12, atol=1e-13)
    for key, parameter in twin.named_parameters():
        layer_name, param_name = key.split(".")
        got = net[int(layer_name)].grads[param_name]
        np.testing.assert_allclose(got, parameter.grad.numpy(), rtol=1e-12, atol=1e-13, err_msg=key)
    for key, buffer in twin.named_buffers():
        layer_name, buffer_name = key.split(".")
        np.testing.assert_allclose(net[int(layer_name)].buffers[buffer_name], buffer.numpy(), rtol=1e-12)
