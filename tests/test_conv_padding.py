"""Convolution padding per side and 'same' / 'same_lower' at any stride (ONNX's SAME_UPPER /
SAME_LOWER), for every op and nn.Conv2d: against the NumPy reference, against PyTorch on the
input padded explicitly (F.pad, then a convolution without padding), and the output sizes from
the definition (ceil(size / stride) for the 'same' forms)."""

import math

import numpy as np
import pytest
from _helpers import run_conv_op
from conftest import DTYPES, assert_close

import convx
import convx.functional as F
from convx.reference import conv as reference

OPS = ["forward", "backward_input", "backward_weight", "backward"]

# (x shape, weight shape, stride, padding, dilation, groups)
GEOMETRIES = {
    "sides": ((2, 3, 9, 8), (4, 3, 3, 3), 1, ((1, 0), (2, 1)), 1, 1),
    "sides-top-only": ((2, 3, 7, 9), (5, 3, 2, 4), 1, ((3, 0), (0, 0)), 1, 1),
    "sides-strided-dilated": ((2, 4, 13, 11), (6, 2, 3, 2), (2, 3), ((0, 2), (3, 1)), (2, 1), 2),
    "sides-beyond-kernel": ((1, 2, 4, 5), (3, 2, 2, 2), 1, ((4, 1), (0, 5)), 1, 1),
    "same-stride-2-odd": ((2, 3, 9, 11), (4, 3, 3, 3), 2, "same", 1, 1),
    "same-stride-2-even-kernel": ((2, 3, 10, 7), (4, 3, 4, 2), 2, "same", 1, 1),
    "same-stride-3-dilated": ((2, 2, 14, 13), (3, 2, 3, 3), 3, "same", 2, 1),
    "same-stride-asymmetric": ((2, 3, 8, 15), (5, 3, 5, 1), (3, 2), "same", 1, 1),
    "same-stride-exceeds-kernel": ((2, 3, 10, 11), (4, 3, 2, 2), 4, "same", 1, 1),
    "same-stride-1-depthwise": ((2, 4, 9, 10), (8, 1, 4, 3), 1, "same", 1, 4),
    "same-lower-stride-1-even": ((2, 3, 7, 6), (4, 3, 4, 2), 1, "same_lower", 1, 1),
    "same-lower-stride-2": ((2, 3, 9, 10), (4, 3, 3, 4), 2, "same_lower", (1, 2), 1),
    "same-lower-depthwise-strided": ((2, 6, 11, 9), (6, 1, 3, 3), 2, "same_lower", 1, 6),
    # every window in the padding: nothing for the kernels to compute
    "no-window-reads-the-input": ((2, 2, 1, 5), (3, 2, 2, 2), (2, 1), ((2, 0), (0, 0)), 1, 1),
    "no-window-reads-the-input-depthwise": ((2, 3, 4, 1), (3, 1, 2, 3), (1, 3), ((0, 0), (4, 0)), 1, 3),
}


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _sides(x_shape, w_shape, stride, padding, dilation):
    """((top, bottom), (left, right)), worked out from the definition here for the test."""
    if not isinstance(padding, str):
        return padding
    sides = []
    for size, k, s, d in zip(x_shape[2:], w_shape[2:], _pair(stride), _pair(dilation)):
        span = d * (k - 1) + 1
        out = math.ceil(size / s)
        total = max(0, (out - 1) * s + span - size)
        extra = total % 2
        sides.append((total // 2, total // 2 + extra) if padding == "same" else (total // 2 + extra, total // 2))
    return tuple(sides)


def _arrays(name, dtype, rng):
    x_shape, w_shape, stride, padding, dilation, groups = GEOMETRIES[name]
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    bias = rng.standard_normal(w_shape[0]).astype(dtype)
    out_shape = reference.conv2d(x, weight, bias, **kwargs).shape
    grad_out = rng.standard_normal(out_shape).astype(dtype)
    return x, weight, bias, grad_out, kwargs


@pytest.mark.parametrize("name", GEOMETRIES)
def test_output_size_follows_the_sides(name, rng):
    x, weight, bias, _, kwargs = _arrays(name, np.float64, rng)
    (top, bottom), (left, right) = _sides(x.shape, weight.shape, kwargs["stride"], kwargs["padding"],
                                          kwargs["dilation"])
    expected = [
        (size + before + after - d * (k - 1) - 1) // s + 1
        for size, before, after, k, s, d in zip(x.shape[2:], (top, left), (bottom, right), weight.shape[2:],
                                                _pair(kwargs["stride"]), _pair(kwargs["dilation"]))
    ]
    y = convx.conv2d(x, weight, bias, **kwargs)
    assert list(y.shape[2:]) == expected
    if isinstance(kwargs["padding"], str):
        assert list(y.shape[2:]) == [math.ceil(size / s) for size, s in zip(x.shape[2:], _pair(kwargs["stride"]))]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", GEOMETRIES)
def test_matches_reference(name, dtype, op, rng):
    x, weight, bias, grad_out, kwargs = _arrays(name, dtype, rng)
    got = run_conv_op(F, op, x, weight, bias, grad_out, kwargs)
    expected = run_conv_op(reference, op, x, weight, bias, grad_out, kwargs)
    for actual, want in zip(got, expected):
        assert_close(actual, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", GEOMETRIES)
def test_matches_torch_on_the_explicitly_padded_input(name, dtype, rng, torch):
    x, weight, bias, grad_out, kwargs = _arrays(name, dtype, rng)
    (top, bottom), (left, right) = _sides(x.shape, weight.shape, kwargs["stride"], kwargs["padding"],
                                          kwargs["dilation"])
    tx = torch.from_numpy(x).requires_grad_(True)
    tw = torch.from_numpy(weight).requires_grad_(True)
    tb = torch.from_numpy(bias).requires_grad_(True)
    padded = torch.nn.functional.pad(tx, (left, right, top, bottom))
    ty = torch.nn.functional.conv2d(padded, tw, tb, _pair(kwargs["stride"]), 0, _pair(kwargs["dilation"]),
                                    kwargs["groups"])
    ty.backward(torch.from_numpy(grad_out))
    assert_close(convx.conv2d(x, weight, bias, **kwargs), ty.detach().numpy(), dtype)
    grad_x, grad_w, grad_b = convx.conv2d_backward(grad_out, x, weight, **kwargs)
    assert_close(grad_x, tx.grad.numpy(), dtype)
    assert_close(grad_w, tw.grad.numpy(), dtype)
    assert_close(grad_b, tb.grad.numpy(), dtype)


def test_symmetric_sides_equal_the_pair_form(rng):
    x, weight, bias, grad_out, _ = _arrays("sides", np.float64, rng)
    nested = convx.conv2d(x, weight, bias, padding=((1, 1), (2, 2)))
    np.testing.assert_array_equal(nested, convx.conv2d(x, weight, bias, padding=(1, 2)))
    np.testing.assert_array_equal(convx.conv2d(x, weight, bias, padding=[[1, 1], [2, 2]]), nested)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
def test_same_at_stride_one_is_pytorchs_same(rng, torch):
    x, weight, bias, _, _ = _arrays("same-lower-stride-1-even", np.float64, rng)
    expected = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias),
                                          padding="same").numpy()
    assert_close(convx.conv2d(x, weight, bias, padding="same"), expected, np.float64)
    lower = convx.conv2d(x, weight, bias, padding="same_lower")
    assert lower.shape == expected.shape and not np.allclose(lower, expected)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("name", ["sides", "same-stride-2-odd", "same-lower-stride-2"])
def test_layer_pads_each_side_with_its_mode(name, padding_mode, rng, torch):
    x_shape, w_shape, stride, padding, dilation, groups = GEOMETRIES[name]
    layer = convx.nn.Conv2d(x_shape[1], w_shape[0], w_shape[2:], stride, padding, dilation, groups,
                            padding_mode=padding_mode, dtype=np.float64, rng=0)
    x = rng.standard_normal(x_shape)
    (top, bottom), (left, right) = _sides(x_shape, w_shape, stride, padding, dilation)
    tx = torch.from_numpy(x).requires_grad_(True)
    mode = "constant" if padding_mode == "zeros" else padding_mode
    padded = torch.nn.functional.pad(tx, (left, right, top, bottom), mode=mode)
    tw = torch.from_numpy(layer.weight.copy()).requires_grad_(True)
    tb = torch.from_numpy(layer.bias.copy()).requires_grad_(True)
    ty = torch.nn.functional.conv2d(padded, tw, tb, _pair(stride), 0, _pair(dilation), groups)
    y = layer.forward(x)
    assert_close(y, ty.detach().numpy(), np.float64)
    grad = rng.standard_normal(y.shape)
    ty.backward(torch.from_numpy(grad))
    assert_close(layer.backward(grad), tx.grad.numpy(), np.float64)
    assert_close(layer.grads["weight"], tw.grad.numpy(), np.float64)
    assert_close(layer.grads["bias"], tb.grad.numpy(), np.float64)


def test_layer_keeps_pytorchs_form_where_it_has_one():
    assert convx.nn.Conv2d(2, 3, 3, padding=((1, 1), (2, 2))).padding == (1, 2)
    assert convx.nn.Conv2d(2, 3, 3, padding=((1, 0), (2, 2))).padding == ((1, 0), (2, 2))
    assert convx.nn.Conv2d(2, 3, 3, stride=2, padding="same").padding == "same"
    assert "padding=((1, 0), (2, 2))" in repr(convx.nn.Conv2d(2, 3, 3, padding=((1, 0), (2, 2))))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("padding", [((2, 0), (0, 1)), ((0, 2), (1, 0)), ((1, 1), (2, 2))], ids=str)
def test_winograd_takes_the_sides(padding, op, rng):
    x = rng.standard_normal((2, 16, 9, 10))
    weight = rng.standard_normal((16, 16, 3, 3))
    bias = rng.standard_normal(16)
    kwargs = dict(padding=padding)
    grad_out = rng.standard_normal(reference.conv2d(x, weight, bias, **kwargs).shape)
    got = run_conv_op(F, op, x, weight, bias, grad_out, dict(kwargs, algorithm="winograd"))
    expected = run_conv_op(reference, op, x, weight, bias, grad_out, kwargs)
    for actual, want in zip(got, expected):
        assert_close(actual, want, np.float64)


@pytest.mark.parametrize("name", ["no-window-reads-the-input", "no-window-reads-the-input-depthwise"])
def test_windows_all_in_the_padding_with_autotuning_and_explain(name, rng):
    x, weight, bias, grad_out, kwargs = _arrays(name, np.float64, rng)
    convx.set_autotune(True)
    try:
        for op in OPS:
            got = run_conv_op(F, op, x, weight, bias, grad_out, kwargs)
            for actual, want in zip(got, run_conv_op(reference, op, x, weight, bias, grad_out, kwargs)):
                assert_close(actual, want, np.float64)
    finally:
        convx.set_autotune(False)
        convx.clear_autotune()
    assert convx.explain(x, weight, **kwargs).ops["forward"].implementation.startswith("none")
