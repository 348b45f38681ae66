"""Transposed convolutions with per-side padding, 'same' / 'same_lower' (ONNX ConvTranspose's
auto_pad) and ``output_size`` (PyTorch's ConvTranspose2d.forward(x, output_size)): against a NumPy
reference written here, PyTorch, ONNX Runtime where installed, central differences, and refusals.
ONNX's own ConvTranspose conformance cases run in test_onnx_conformance.py."""

from __future__ import annotations

import numpy as np
import pytest

import convx
import convx.functional as F
from convx import nn
from conftest import DTYPES, assert_close


def reference(x, weight, bias, stride, sides, output_padding, groups, dilation):
    """Each input pixel times the kernel scattered into the full output, which is then cropped:
    ``sides`` is ((top, bottom), (left, right))."""
    (sh, sw), (dh, dw), (oph, opw) = stride, dilation, output_padding
    (top, bottom), (left, right) = sides
    n, c_in, h, w = x.shape
    _, c_out_g, kh, kw = weight.shape
    c_in_g = c_in // groups
    full_h = (h - 1) * sh + dh * (kh - 1) + 1 + oph
    full_w = (w - 1) * sw + dw * (kw - 1) + 1 + opw
    full = np.zeros((n, c_out_g * groups, full_h, full_w), np.float64)
    for ci in range(c_in):
        g = ci // c_in_g
        for r in range(h):
            for s in range(w):
                for i in range(kh):
                    for j in range(kw):
                        full[:, g * c_out_g:(g + 1) * c_out_g, r * sh + i * dh, s * sw + j * dw] += (
                            x[:, ci, r, s, None] * weight[ci, :, i, j]
                        )
    y = full[:, :, top:full_h - bottom, left:full_w - right]
    if bias is not None:
        y = y + bias[:, None, None]
    return y


def _same_sides(word, size, kernel, stride, dilation, output_padding, out=None):
    """ONNX's formula: total padding split evenly, the extra at the end (SAME_UPPER) or start."""
    out = size * stride if out is None else out
    total = stride * (size - 1) + output_padding + dilation * (kernel - 1) + 1 - out
    return (total // 2, total - total // 2) if word == "same" else (total - total // 2, total // 2)


# (x shape, weight shape, stride, dilation, groups)
GEOMETRIES = [
    ((2, 4, 5, 6), (4, 3, 3, 3), (2, 2), (1, 1), 1),
    ((1, 4, 4, 7), (4, 1, 3, 2), (2, 3), (1, 2), 2),
    ((2, 2, 3, 3), (2, 2, 4, 4), (2, 2), (1, 1), 1),
    ((1, 3, 5, 4), (3, 2, 5, 3), (3, 1), (2, 1), 1),
    ((2, 6, 2, 2), (6, 1, 3, 3), (3, 3), (1, 1), 6),
]
SIDES = [((0, 0), (0, 0)), ((1, 0), (0, 2)), ((0, 2), (1, 1)), ((2, 1), (0, 0))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sides", SIDES)
@pytest.mark.parametrize("x_shape, w_shape, stride, dilation, groups", GEOMETRIES)
def test_per_side_padding_matches_the_reference(x_shape, w_shape, stride, dilation, groups, sides, dtype, rng):
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    bias = rng.standard_normal(w_shape[1] * groups).astype(dtype)
    y = F.conv_transpose2d(x, weight, bias, stride, sides, 0, groups, dilation)
    assert y.dtype == dtype
    assert_close(y, reference(x, weight, bias, stride, sides, (0, 0), groups, dilation), dtype)
    # 1-D: the width axis alone.
    x1, w1 = x[:, :, 0], weight[:, :, 0]
    y1 = F.conv_transpose1d(x1, w1, bias, stride[1], (sides[1],), 0, groups, dilation[1])
    expected = reference(x1[:, :, None], w1[:, :, None], bias, (1, stride[1]), ((0, 0), sides[1]), (0, 0), groups,
                         (1, dilation[1]))[:, :, 0]
    assert_close(y1, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("word", ["same", "same_lower"])
@pytest.mark.parametrize("x_shape, w_shape, stride, dilation, groups", GEOMETRIES[:4])
def test_same_padding_gives_input_size_times_stride(x_shape, w_shape, stride, dilation, groups, word, dtype, rng):
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    output_padding = (stride[0] - 1, 0) if max(stride[0], dilation[0]) > 1 else (0, 0)
    try:
        y = F.conv_transpose2d(x, weight, None, stride, word, output_padding, groups, dilation)
    except ValueError as error:  # a kernel that cannot reach size * stride
        assert "cannot give" in str(error)
        return
    assert y.shape[2:] == (x_shape[2] * stride[0], x_shape[3] * stride[1])
    sides = tuple(
        _same_sides(word, size, k, s, d, op)
        for size, k, s, d, op in zip(x_shape[2:], w_shape[2:], stride, dilation, output_padding)
    )
    assert_close(y, reference(x, weight, None, stride, sides, output_padding, groups, dilation), dtype)
    y1 = F.conv_transpose1d(x[:, :, 0], weight[:, :, 0], None, stride[1], word, 0, groups, dilation[1])
    assert y1.shape[-1] == x_shape[3] * stride[1]
    assert_close(y1, y if x_shape[2] == 1 else F.conv_transpose2d(
        x[:, :, :1], weight[:, :, :1], None, (1, stride[1]), word, 0, groups, (1, dilation[1]))[:, :, 0], dtype)


def test_same_puts_the_odd_element_at_the_end_and_same_lower_at_the_start():
    # A 3-tap kernel at stride 2 over [1, 2, 3]: the full output has 7 elements, 6 are kept.
    x = np.array([[[1.0, 2.0, 3.0]]])
    weight = np.ones((1, 1, 3))
    full = F.conv_transpose1d(x, weight, stride=2)
    np.testing.assert_array_equal(full, [[[1, 1, 3, 2, 5, 3, 3]]])
    np.testing.assert_array_equal(F.conv_transpose1d(x, weight, stride=2, padding="same"), full[..., :6])
    np.testing.assert_array_equal(F.conv_transpose1d(x, weight, stride=2, padding="same_lower"), full[..., 1:])
    np.testing.assert_array_equal(F.conv_transpose1d(x, weight, stride=2, padding="valid"), full)


@pytest.mark.parametrize("word", ["SAME_UPPER", "SAME_LOWER"])
def test_same_padding_matches_onnx_runtime(word, rng):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = rng.standard_normal((2, 4, 5, 6)).astype(np.float32)
    weight = rng.standard_normal((4, 3, 4, 3)).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], auto_pad=word, strides=[2, 3],
                            output_padding=[1, 0])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape),
                      helper.make_tensor_value_info("w", TensorProto.FLOAT, weight.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x, "w": weight})[0]
    padding = "same" if word == "SAME_UPPER" else "same_lower"
    y = F.conv_transpose2d(x, weight, stride=(2, 3), padding=padding, output_padding=(1, 0))
    assert y.shape == expected.shape == (2, 3, 10, 18)
    assert_close(y, expected, np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding, stride, dilation", [(1, 2, 1), ((0, 2), (3, 2), (1, 2)), (2, (2, 1), 3)])
def test_output_size_matches_torch(padding, stride, dilation, dtype, rng, torch):
    layer = torch.nn.ConvTranspose2d(4, 6, (3, 2), stride=stride, padding=padding, dilation=dilation, groups=2)
    layer = layer.to(getattr(torch, np.dtype(dtype).name))
    x = rng.standard_normal((2, 4, 5, 6)).astype(dtype)
    weight, bias = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    ours = nn.ConvTranspose2d(4, 6, (3, 2), stride=stride, padding=padding, dilation=dilation, groups=2,
                              dtype=dtype)
    ours.load_state_dict({"weight": weight.copy(), "bias": bias.copy()})
    smallest = F.conv_transpose2d(x, weight, bias, stride, padding, 0, 2, dilation).shape[2:]
    steps = np.broadcast_to(stride, (2,))
    for extra in np.ndindex(*steps):  # every size PyTorch's module takes: output_padding < stride
        size = (smallest[0] + extra[0], smallest[1] + extra[1])
        expected = layer(torch.from_numpy(x), output_size=size).detach().numpy()
        y = F.conv_transpose2d(x, weight, bias, stride, padding, 0, 2, dilation, output_size=size)
        assert y.shape[2:] == size
        assert_close(y, expected, dtype)
        assert_close(F.conv_transpose2d(x, weight, bias, stride, padding, 0, 2, dilation,
                                        output_size=(2, 6, *size)), expected, dtype)
        assert_close(ours(x, output_size=size), expected, dtype)
        grad = rng.standard_normal(y.shape).astype(dtype)
        tx = torch.from_numpy(x).requires_grad_()
        layer.zero_grad()
        layer(tx, output_size=size).backward(torch.from_numpy(grad))
        assert_close(ours.backward(grad), tx.grad.numpy(), dtype)
        assert_close(ours.grads["weight"], layer.weight.grad.numpy(), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_output_size_1d_matches_torch(dtype, rng, torch):
    layer = torch.nn.ConvTranspose1d(3, 2, 3, stride=3, padding=1).to(getattr(torch, np.dtype(dtype).name))
    x = rng.standard_normal((2, 3, 7)).astype(dtype)
    ours = nn.ConvTranspose1d(3, 2, 3, stride=3, padding=1, output_padding=1, dtype=dtype)
    ours.load_state_dict({k: v.detach().numpy().copy() for k, v in layer.state_dict().items()})
    for size in (19, 20, 21):
        expected = layer(torch.from_numpy(x), output_size=[size]).detach().numpy()
        for spelling in (size, (size,), (2, 2, size)):
            y = F.conv_transpose1d(x, layer.weight.detach().numpy(), layer.bias.detach().numpy(), 3, 1,
                                   output_size=spelling)
            assert_close(y, expected, dtype)
        # The layer's own output_padding gives way to output_size, as PyTorch's.
        assert_close(ours(x, output_size=[size]), expected, dtype)
        ours.backward(np.ones_like(expected))
    assert ours(x).shape == (2, 2, 20)


def test_unbatched_empty_batch_and_layers(rng):
    x = rng.standard_normal((4, 5, 6))
    weight = rng.standard_normal((4, 3, 3, 3))
    batched = F.conv_transpose2d(x[None], weight, stride=2, padding=((1, 0), (0, 1)))
    np.testing.assert_array_equal(F.conv_transpose2d(x, weight, stride=2, padding=((1, 0), (0, 1))), batched[0])
    assert F.conv_transpose2d(np.zeros((0, 4, 5, 6)), weight, stride=2, padding="same").shape == (0, 3, 10, 12)
    assert F.conv_transpose1d(np.zeros((0, 4, 5)), weight[:, :, 0], stride=2, padding="same").shape == (0, 3, 10)
    layer = nn.ConvTranspose2d(4, 3, 3, stride=2, padding="same_lower", dtype=np.float64, rng=0)
    assert layer(x).shape == (3, 10, 12)
    assert layer.backward(np.ones((3, 10, 12))).shape == x.shape
    assert "padding='same_lower'" in repr(layer)
    assert nn.ConvTranspose2d(4, 3, 3, padding=((1, 1), (2, 2))).padding == (1, 2)
    assert nn.ConvTranspose2d(4, 3, 3, padding=((1, 0), (2, 2))).padding == ((1, 0), (2, 2))
    assert nn.ConvTranspose1d(4, 3, 3, padding=((1, 0),)).padding == ((1, 0),)


class _WithOutputSize(nn.Module):
    """A transposed-convolution layer called with a fixed output_size, as gradcheck's one-input layer."""

    def __init__(self, layer, size):
        super().__init__()
        self.layer, self.size = layer, size

    def forward(self, x):
        return self.layer(x, output_size=self.size)

    def backward(self, grad_out):
        return self.layer.backward(grad_out)


@pytest.mark.parametrize("make", [
    lambda: nn.ConvTranspose2d(2, 4, 3, stride=2, padding=((1, 0), (0, 2)), groups=2, dtype=np.float64, rng=0),
    lambda: nn.ConvTranspose2d(2, 3, (3, 2), stride=(2, 2), padding="same", dilation=(2, 1), dtype=np.float64,
                               rng=0),
    lambda: nn.ConvTranspose2d(2, 3, 4, stride=2, padding="same_lower", output_padding=1, dtype=np.float64, rng=0),
    lambda: nn.ConvTranspose1d(2, 3, 3, stride=2, padding=((0, 1),), dtype=np.float64, rng=0),
    lambda: nn.ConvTranspose1d(2, 3, 3, stride=2, padding="same_lower", dtype=np.float64, rng=0),
])
def test_central_differences(make, rng):
    layer = make()
    shape = (2, 2, 4, 3) if len(layer.kernel_size) == 2 else (2, 2, 5)
    assert convx.gradcheck(layer, rng.standard_normal(shape))


def test_central_differences_with_output_size(rng):
    layer = nn.ConvTranspose2d(2, 3, 3, stride=(2, 3), padding=1, dtype=np.float64, rng=0)
    assert convx.gradcheck(_WithOutputSize(layer, (8, 9)), rng.standard_normal((2, 2, 4, 3)))
    layer_1d = nn.ConvTranspose1d(2, 3, 3, stride=3, padding=1, dtype=np.float64, rng=0)
    assert convx.gradcheck(_WithOutputSize(layer_1d, (14,)), rng.standard_normal((2, 2, 5)))


X = np.zeros((1, 4, 5, 6))
W = np.zeros((4, 3, 3, 3))


@pytest.mark.parametrize("call, error, match", [
    (lambda: F.conv_transpose2d(X, W, stride=2, padding=1, output_size=(12, 11)), ValueError,
     r"output_size=\(12, 11\) cannot be reached: this 5x6 input gives sizes from \(9, 11\) to \(10, 12\)"),
    (lambda: F.conv_transpose2d(X, W, stride=2, padding=1, output_size=(8, 11)), ValueError, "cannot be reached"),
    (lambda: F.conv_transpose2d(X, W, stride=2, output_size=(11, 13, 1)), ValueError,
     "output_size must have 2 or 4 entries"),
    (lambda: F.conv_transpose2d(X, W, stride=2, output_size=11), TypeError, "output_size must be a tuple"),
    (lambda: F.conv_transpose2d(X, W, stride=2, output_size=(0, 13)), ValueError, "output_size must be positive"),
    (lambda: F.conv_transpose2d(X, W, stride=2, output_padding=1, output_size=(11, 14)), ValueError,
     r"output_padding=\(1, 1\) disagrees with output_size=\(11, 14\), which needs output_padding=\(0, 1\)"),
    (lambda: F.conv_transpose2d(X, np.zeros((4, 3, 1, 1)), stride=3, padding="same"), ValueError,
     r"padding='same' cannot give a 15x18 output: the full transposed convolution of this 5x6 input is only 13x16"),
    (lambda: F.conv_transpose2d(X, W, padding=(1, 0, 1, 0)), ValueError, "ambiguous"),
    (lambda: F.conv_transpose2d(X, W, padding=((1, -1), (0, 0))), ValueError, r"padding\[0\]\[1\] must be at least 0"),
    (lambda: F.conv_transpose2d(X, W, padding=((9, 9), (0, 0))), ValueError,
     r"output would be -11x8: padding=\(9, 0\) is too large"),
    (lambda: F.conv_transpose2d(X, W, padding="full"), ValueError, "got 'full'"),
    (lambda: F.conv_transpose1d(X[:, :, 0], W[:, :, 0], padding=(1, 2)), ValueError,
     r"per side: \(\(left, right\),\)"),
    (lambda: F.conv_transpose1d(X[:, :, 0], W[:, :, 0], stride=2, output_size=(1, 9)), ValueError,
     "output_size must have 1 or 3 entries"),
    (lambda: F.conv_transpose1d(X[:, :, 0], W[:, :, 0], stride=2, output_size=20), ValueError,
     "output_size=20 cannot be reached: this 6 input gives sizes from 13 to 14"),
    (lambda: nn.ConvTranspose2d(4, 3, 3)(X.astype(np.float32), output_size=(9, 9)), ValueError, "cannot be reached"),
])
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()
