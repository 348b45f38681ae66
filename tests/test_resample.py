"""interpolate / interpolate_backward and the Upsample layers: a NumPy reference written from the
formulas below, PyTorch (forward and backward), gradient checks, threads, layouts and bad arguments.

The reference resamples each axis with a dense matrix M (out, in): y = M_h x M_w^T, and the
gradient is M_h^T g M_w. Row o of M holds the weights output o reads its input with:

* nearest: 1 at ``min(floor(o * r), in - 1)``, r = 1 / scale_factor when a factor is used, else
  in / out, in float32 arithmetic as PyTorch; equal sizes copy and doubled sizes take o // 2.
* nearest-exact: 1 at ``min(floor((o + 0.5) * r), in - 1)`` (float32), no special cases.
* bilinear: source ``s = o * (in - 1) / (out - 1)`` (align_corners, 0 for out == 1) or
  ``max(r * (o + 0.5) - 0.5, 0)``; ``i0 = min(floor(s), in - 1)``, ``i1 = min(i0 + 1, in - 1)``,
  ``l = s - i0`` clipped to [0, 1]: weights 1 - l at i0 and l at i1. Equal sizes copy.
"""

import math

import numpy as np
import pytest
from conftest import DTYPES, assert_close

import convx
import convx.functional as F
from convx import nn


def _output_size(size, scale):
    return size if scale is None else int(math.floor(size * scale))


def _axis_matrix(in_size, out_size, scale, mode, align_corners):
    matrix = np.zeros((out_size, in_size))
    for o in range(out_size):
        if mode == "bilinear":
            if out_size == in_size:
                matrix[o, o] = 1.0
                continue
            if align_corners:
                source = o * (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
            else:
                ratio = 1.0 / scale if scale is not None else in_size / out_size
                source = max(ratio * (o + 0.5) - 0.5, 0.0)
            i0 = min(math.floor(source), in_size - 1)
            i1 = min(i0 + 1, in_size - 1)
            lam = min(max(source - i0, 0.0), 1.0)
            matrix[o, i0] += 1.0 - lam
            matrix[o, i1] += lam
            continue
        exact = mode == "nearest-exact"
        if not exact and out_size == in_size:
            index = o
        elif not exact and out_size == 2 * in_size:
            index = o // 2
        else:
            ratio = np.float32(1.0 / scale) if scale is not None else np.float32(in_size) / np.float32(out_size)
            position = np.float32(o + 0.5) * ratio if exact else np.float32(o) * ratio
            index = min(int(math.floor(position)), in_size - 1)
        matrix[o, index] = 1.0
    return matrix


def _reference_matrices(in_hw, size=None, scale_factor=None, mode="nearest", align_corners=None,
                        recompute_scale_factor=None):
    if size is not None:
        out_hw = (size, size) if isinstance(size, int) else tuple(size)
        scales = (None, None)
    else:
        scales = (scale_factor, scale_factor) if not isinstance(scale_factor, tuple) else scale_factor
        out_hw = tuple(_output_size(n, s) for n, s in zip(in_hw, scales))
        if recompute_scale_factor:
            scales = (None, None)
    corners = bool(align_corners)
    return (_axis_matrix(in_hw[0], out_hw[0], scales[0], mode, corners),
            _axis_matrix(in_hw[1], out_hw[1], scales[1], mode, corners))


def reference_interpolate(x, **kwargs):
    rows, cols = _reference_matrices(x.shape[2:], **kwargs)
    return np.einsum("oh,nchw,pw->ncop", rows, x.astype(np.float64), cols)


def reference_interpolate_backward(grad_out, input_shape, **kwargs):
    rows, cols = _reference_matrices(input_shape[2:], **kwargs)
    return np.einsum("oh,ncop,pw->nchw", rows, grad_out.astype(np.float64), cols)


# (input (H, W), keyword arguments): up- and downsampling, integer and fractional factors, size-1
# inputs and outputs, equal and doubled sizes, factors near 2, recomputed factors.
CASES = [
    ((4, 5), dict(scale_factor=2)),
    ((4, 5), dict(scale_factor=2.0000001)),
    ((3, 7), dict(scale_factor=(1.5, 0.5))),
    ((7, 6), dict(scale_factor=(0.3, 1.7321))),
    ((5, 5), dict(scale_factor=1.04)),
    ((5, 8), dict(scale_factor=1 / 3, recompute_scale_factor=True)),
    ((6, 9), dict(scale_factor=(2.5, 0.75), recompute_scale_factor=False)),
    ((6, 9), dict(scale_factor=(2.5, 0.75), recompute_scale_factor=True)),
    ((1, 1), dict(size=(3, 4))),
    ((1, 6), dict(size=(5, 1))),
    ((9, 4), dict(size=1)),
    ((14, 20), dict(size=(20, 14))),
    ((2, 26), dict(size=(3, 22))),
    ((8, 8), dict(size=(3, 5))),
    ((3, 3), dict(size=(3, 3))),
    ((2, 3), dict(size=(11, 13))),
]
MODES = [("nearest", None), ("nearest-exact", None), ("bilinear", False), ("bilinear", True), ("bilinear", None)]


def _case_id(case):
    (h, w), kwargs = case
    return f"{h}x{w}-" + "-".join(f"{k}={v}" for k, v in kwargs.items())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode, align_corners", MODES)
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_matches_the_reference(case, mode, align_corners, dtype, rng):
    (h, w), kwargs = case
    x = rng.standard_normal((2, 3, h, w)).astype(dtype)
    y = F.interpolate(x, mode=mode, align_corners=align_corners, **kwargs)
    expected = reference_interpolate(x, mode=mode, align_corners=align_corners, **kwargs)
    assert y.dtype == dtype and y.flags.c_contiguous
    assert_close(y, expected, dtype)
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    grad_x = F.interpolate_backward(grad_out, x.shape, mode=mode, align_corners=align_corners, **kwargs)
    assert grad_x.dtype == dtype
    assert_close(grad_x, reference_interpolate_backward(grad_out, x.shape, mode=mode, align_corners=align_corners,
                                                        **kwargs), dtype)


def _torch_pair(torch, x, grad_out_fn, **kwargs):
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.interpolate(tx, **kwargs)
    grad_out = grad_out_fn(tuple(ty.shape))
    ty.backward(torch.tensor(grad_out))
    return ty.detach().numpy(), tx.grad.numpy(), grad_out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode, align_corners", MODES)
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_matches_torch(case, mode, align_corners, dtype, rng, torch):
    (h, w), kwargs = case
    x = rng.standard_normal((2, 3, h, w)).astype(dtype)
    expected, expected_grad, grad_out = _torch_pair(
        torch, x, lambda shape: rng.standard_normal(shape).astype(dtype), mode=mode, align_corners=align_corners,
        **kwargs,
    )
    assert_close(F.interpolate(x, mode=mode, align_corners=align_corners, **kwargs), expected, dtype)
    assert_close(F.interpolate_backward(grad_out, x.shape, mode=mode, align_corners=align_corners, **kwargs),
                 expected_grad, dtype)


def test_random_shapes_and_factors_match_torch(rng, torch):
    factors = [0.3, 0.5, 0.7, 0.9999, 1.0, 1.04, 1.5, 1.7321, 2.0, 2.0000001, 2.5, 3.0, 1 / 3]
    for trial in range(400):
        dtype = DTYPES[trial % 2]
        mode, align_corners = MODES[trial % len(MODES)]
        h, w = (int(v) for v in rng.integers(1, 12, size=2))
        if trial % 2:
            kwargs = dict(size=tuple(int(v) for v in rng.integers(1, 20, size=2)))
        else:
            scales = tuple(float(v) for v in rng.choice(factors, size=2))
            if int(h * scales[0]) < 1 or int(w * scales[1]) < 1:
                continue
            kwargs = dict(scale_factor=scales, recompute_scale_factor=(None, True, False)[trial % 3])
        x = rng.standard_normal((1, 2, h, w)).astype(dtype)
        expected, expected_grad, grad_out = _torch_pair(
            torch, x, lambda shape: rng.standard_normal(shape).astype(dtype), mode=mode,
            align_corners=align_corners, **kwargs,
        )
        got = F.interpolate(x, mode=mode, align_corners=align_corners, **kwargs)
        assert_close(got, expected, dtype)
        assert_close(F.interpolate_backward(grad_out, x.shape, mode=mode, align_corners=align_corners, **kwargs),
                     expected_grad, dtype)


def test_nearest_uses_float32_index_arithmetic_as_torch():
    # 26 -> 22: output 11 reads floor(11 * float32(26 / 22)) = floor(12.999999) = 12, not 11 * 26 // 22 = 13.
    x = np.arange(26.0).reshape(1, 1, 1, 26)
    assert F.interpolate(x, size=(1, 22))[0, 0, 0, 11] == 12.0


@pytest.mark.parametrize("mode, align_corners", MODES)
@pytest.mark.parametrize("kwargs", [dict(scale_factor=(1.5, 0.6)), dict(size=(2, 7)), dict(size=(5, 1))])
def test_gradcheck(mode, align_corners, kwargs, rng):
    x = rng.standard_normal((2, 2, 4, 5))
    args = dict(mode=mode, align_corners=align_corners, **kwargs)
    assert convx.gradcheck(lambda a: F.interpolate(a, **args), x,
                           backward=lambda g: F.interpolate_backward(g, x.shape, **args))


@pytest.mark.parametrize("mode, align_corners", MODES)
def test_upsample_layer_forward_and_backward(mode, align_corners, rng, torch):
    layer = nn.Upsample(scale_factor=(2, 1.5), mode=mode, align_corners=align_corners)
    x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    expected, expected_grad, grad_out = _torch_pair(
        torch, x, lambda shape: rng.standard_normal(shape).astype(np.float32), scale_factor=(2, 1.5), mode=mode,
        align_corners=align_corners,
    )
    assert_close(layer(x), expected)
    assert_close(layer.backward(grad_out), expected_grad)
    assert layer.params == {} and layer.grads == {}
    assert convx.gradcheck(nn.Upsample(size=(3, 7), mode=mode, align_corners=align_corners),
                           rng.standard_normal((1, 2, 4, 5)))


def test_upsampling_nearest_and_bilinear_layers(rng, torch):
    x = rng.standard_normal((1, 2, 3, 4))
    tx = torch.tensor(x)
    assert_close(nn.UpsamplingNearest2d(scale_factor=3)(x),
                 torch.nn.functional.interpolate(tx, scale_factor=3, mode="nearest").numpy())
    bilinear = nn.UpsamplingBilinear2d(size=(7, 5))
    assert_close(bilinear(x),
                 torch.nn.functional.interpolate(tx, size=(7, 5), mode="bilinear", align_corners=True).numpy())
    assert bilinear.align_corners is True and bilinear.mode == "bilinear"
    assert convx.gradcheck(nn.UpsamplingBilinear2d(scale_factor=2), x)
    assert "scale_factor=2" in repr(nn.UpsamplingNearest2d(scale_factor=2))


@pytest.mark.parametrize("mode, align_corners", MODES[:3])
def test_layouts_threads_and_inputs_left_alone(mode, align_corners, rng):
    x = rng.standard_normal((3, 4, 9, 7))
    before = x.copy()
    args = dict(size=(13, 5), mode=mode, align_corners=align_corners)
    expected = F.interpolate(x, **args)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(F.interpolate(np.asfortranarray(x), **args), expected)
    wide = np.zeros((3, 4, 9, 14))
    wide[..., ::2] = x
    np.testing.assert_array_equal(F.interpolate(wide[..., ::2], **args), expected)
    grad_out = rng.standard_normal(expected.shape)
    grad_x = F.interpolate_backward(grad_out, x.shape, **args)
    np.testing.assert_array_equal(F.interpolate_backward(grad_out.transpose(0, 1, 3, 2).copy().transpose(0, 1, 3, 2),
                                                         x.shape, **args), grad_x)
    original = convx.get_num_threads()
    try:
        for threads in (1, 2, 3):
            convx.set_num_threads(threads)
            np.testing.assert_array_equal(F.interpolate(x, **args), expected)
            np.testing.assert_array_equal(F.interpolate_backward(grad_out, x.shape, **args), grad_x)
    finally:
        convx.set_num_threads(original)


def test_empty_batch_and_channels():
    assert F.interpolate(np.zeros((0, 3, 4, 4)), scale_factor=2).shape == (0, 3, 8, 8)
    assert F.interpolate(np.zeros((2, 0, 4, 4)), size=3, mode="bilinear").shape == (2, 0, 3, 3)
    assert F.interpolate_backward(np.zeros((0, 3, 8, 8)), (0, 3, 4, 4), scale_factor=2).shape == (0, 3, 4, 4)


def test_backward_of_copying_sizes_is_the_identity(rng):
    grad_out = rng.standard_normal((2, 3, 5, 6))
    for mode in ("nearest", "nearest-exact", "bilinear"):
        grad_x = F.interpolate_backward(grad_out, grad_out.shape, size=(5, 6), mode=mode)
        np.testing.assert_array_equal(grad_x, grad_out)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(), ValueError, "one of size and scale_factor must be given"),
        (dict(size=4, scale_factor=2), ValueError, "only one of size and scale_factor"),
        (dict(size=0), ValueError, "size must be positive, got 0"),
        (dict(size=(4, -1)), ValueError, r"size\[1\] must be positive"),
        (dict(size=(4, 4, 4)), ValueError, "length 3"),
        (dict(size=2.5), TypeError, "size must be an int"),
        (dict(scale_factor=0.0), ValueError, "scale_factor must be a positive finite number, got 0.0"),
        (dict(scale_factor=-2), ValueError, "positive finite"),
        (dict(scale_factor=float("inf")), ValueError, "positive finite"),
        (dict(scale_factor=True), TypeError, "scale_factor must be a positive real number"),
        (dict(scale_factor=0.1), ValueError, "gives an empty output"),
        (dict(scale_factor=1e300), ValueError, "far too large"),
        (dict(scale_factor=2, mode="nearest", align_corners=True), ValueError, "align_corners can only be set"),
        (dict(scale_factor=2, mode="nearest-exact", align_corners=False), ValueError, "align_corners can only be set"),
        (dict(scale_factor=2, mode="bicubic"), ValueError, "not implemented in convx"),
        (dict(scale_factor=2, mode="Bilinear"), ValueError, "mode must be one of"),
        (dict(scale_factor=2, mode="bilinear", align_corners=1), TypeError, "align_corners must be a bool"),
        (dict(size=8, recompute_scale_factor=True), ValueError, "recompute_scale_factor=True is meaningless"),
        (dict(scale_factor=2, recompute_scale_factor="yes"), TypeError, "recompute_scale_factor must be a bool"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    x = np.zeros((1, 1, 4, 4))
    with pytest.raises(error, match=message):
        F.interpolate(x, **kwargs)
    with pytest.raises(error, match=message):
        F.interpolate_backward(np.zeros((1, 1, 8, 8)), x.shape, **kwargs)


def test_torch_refuses_what_convx_refuses(torch):
    x = torch.zeros(1, 1, 4, 4)
    for kwargs in (dict(), dict(size=4, scale_factor=2), dict(scale_factor=2, mode="nearest", align_corners=True),
                   dict(size=8, recompute_scale_factor=True), dict(size=0), dict(scale_factor=0.1)):
        with pytest.raises((ValueError, RuntimeError)):
            torch.nn.functional.interpolate(x, **kwargs)


def test_bad_arrays():
    with pytest.raises(ValueError, match=r"4-dimensional \(N, C, H, W\).*PyTorch reads 3-D input as 1-D"):
        F.interpolate(np.zeros((3, 4, 4)), scale_factor=2)
    with pytest.raises(ValueError, match="4-dimensional"):
        F.interpolate(np.zeros((1, 1, 3, 4, 4)), scale_factor=2)
    with pytest.raises(TypeError, match="float32 or float64"):
        F.interpolate(np.zeros((1, 1, 4, 4), dtype=np.int64), scale_factor=2)
    with pytest.raises(ValueError, match="non-empty plane"):
        F.interpolate(np.zeros((1, 1, 0, 4)), size=3)
    with pytest.raises(ValueError, match=r"grad_out must have the output's shape \(1, 1, 8, 8\)"):
        F.interpolate_backward(np.zeros((1, 1, 8, 7)), (1, 1, 4, 4), scale_factor=2)
    with pytest.raises(ValueError, match="input_shape must have 4 entries"):
        F.interpolate_backward(np.zeros((1, 1, 8, 8)), (1, 4, 4), scale_factor=2)


def test_huge_outputs_are_refused_naming_the_argument():
    with pytest.raises((MemoryError, ValueError), match="scale_factor asks for an array"):
        F.interpolate(np.zeros((1, 1, 2, 2)), scale_factor=1e9)
    with pytest.raises((MemoryError, ValueError), match="size asks for an array"):
        F.interpolate(np.zeros((1, 1, 2, 2)), size=(10**9, 10**9))


def test_layer_arguments_are_checked_at_construction():
    with pytest.raises(ValueError, match="exactly one of size and scale_factor"):
        nn.Upsample()
    with pytest.raises(ValueError, match="exactly one of size and scale_factor"):
        nn.Upsample(size=3, scale_factor=2)
    with pytest.raises(ValueError, match="align_corners can only be set"):
        nn.Upsample(scale_factor=2, align_corners=True)
    with pytest.raises(ValueError, match="size must be positive"):
        nn.UpsamplingNearest2d(size=0)
    with pytest.raises(ValueError, match="positive finite"):
        nn.UpsamplingBilinear2d(scale_factor=-1.0)
    with pytest.raises(ValueError, match="4-dimensional"):
        nn.Upsample(scale_factor=2)(np.zeros((1, 4, 4)))
    layer = nn.Upsample(scale_factor=2)
    layer(np.zeros((1, 1, 2, 2)))
    with pytest.raises(ValueError, match=r"grad_out must have the forward output's shape \(1, 1, 4, 4\)"):
        layer.backward(np.zeros((1, 1, 2, 2)))
