"""Group and layer normalisation: convx.functional's group_norm / layer_norm (with their _forward
and _backward), nn.GroupNorm and nn.LayerNorm.

Against a float64 NumPy reference written from the formulas below and PyTorch
(``torch.nn.functional.group_norm`` / ``layer_norm`` with autograd), float32 and float64: outputs
and the input, weight and bias gradients; groups 1, in between and C; 2-D to 5-D inputs and
several normalized shapes (more than one block of columns for LayerNorm's parameter gradients);
affine on and off (weight without bias, bias without weight); eps; large mean offsets; constant
groups; empty batches; non-contiguous inputs; 1 to 3 threads and sub-batches (identical results);
float64 gradient checks of the layers; bad arguments.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DTYPES, TOLERANCES, assert_close

import convx
import convx._batching
from convx import nn
from convx.functional import (
    group_norm,
    group_norm_backward,
    group_norm_forward,
    layer_norm,
    layer_norm_backward,
    layer_norm_forward,
)

DTYPE_IDS = ["float32", "float64"]


@pytest.fixture
def restore_threads():
    original = convx.get_num_threads()
    yield original
    convx.set_num_threads(original)


# --------------------------------------------------------------------------- the reference
def _normalize_rows(rows, eps):
    """x_hat and 1/sqrt(var + eps) of each row of a float64 (R, K) array (two passes)."""
    mean = rows.mean(axis=1, keepdims=True)
    var = ((rows - mean) ** 2).mean(axis=1, keepdims=True)
    inv_std = 1 / np.sqrt(var + eps)
    return (rows - mean) * inv_std, inv_std


def _rows_backward(grad_hat, x_hat, inv_std):
    """Input gradient of x_hat = (x - mean) / std per row, for the gradient of x_hat:
    inv_std * (g - mean(g) - x_hat * mean(g * x_hat))."""
    return inv_std * (grad_hat - grad_hat.mean(axis=1, keepdims=True)
                      - x_hat * (grad_hat * x_hat).mean(axis=1, keepdims=True))


def reference_group_norm(x, grad_out, groups, weight, bias, eps):
    """y, grad_x, grad_weight, grad_bias in float64."""
    x64, g64 = x.astype(np.float64), grad_out.astype(np.float64)
    n, c = x.shape[:2]
    channel_shape = (1, c) + (1,) * (x.ndim - 2)
    w = np.ones(c) if weight is None else weight.astype(np.float64)
    b = np.zeros(c) if bias is None else bias.astype(np.float64)
    x_hat, inv_std = _normalize_rows(x64.reshape(n * groups, -1), eps)
    x_hat = x_hat.reshape(x.shape)
    y = x_hat * w.reshape(channel_shape) + b.reshape(channel_shape)
    grad_hat = (g64 * w.reshape(channel_shape)).reshape(n * groups, -1)
    grad_x = _rows_backward(grad_hat, x_hat.reshape(n * groups, -1), inv_std).reshape(x.shape)
    axes = (0,) + tuple(range(2, x.ndim))
    return y, grad_x, (g64 * x_hat).sum(axis=axes), g64.sum(axis=axes)


def reference_layer_norm(x, grad_out, shape, weight, bias, eps):
    x64, g64 = x.astype(np.float64), grad_out.astype(np.float64)
    k = int(np.prod(shape))
    w = np.ones(k) if weight is None else weight.astype(np.float64).reshape(-1)
    b = np.zeros(k) if bias is None else bias.astype(np.float64).reshape(-1)
    x_hat, inv_std = _normalize_rows(x64.reshape(-1, k), eps)
    g_rows = g64.reshape(-1, k)
    y = x_hat * w + b
    grad_x = _rows_backward(g_rows * w, x_hat, inv_std)
    return (y.reshape(x.shape), grad_x.reshape(x.shape), (g_rows * x_hat).sum(axis=0).reshape(shape),
            g_rows.sum(axis=0).reshape(shape))


def _torch_norm(torch, kind, x, grad_out, arg, weight, bias, eps):
    def tensor(array):
        return None if array is None else torch.from_numpy(np.array(array, copy=True)).requires_grad_(True)

    x_t, w_t, b_t = tensor(x), tensor(weight), tensor(bias)
    scale = w_t
    if w_t is None and b_t is not None:
        # torch's backward fails on a bias without a weight ("tensor does not have a device"): ones.
        scale = torch.ones(b_t.shape, dtype=b_t.dtype)
    if kind == "group":
        y = torch.nn.functional.group_norm(x_t, arg, scale, b_t, eps)
    else:
        y = torch.nn.functional.layer_norm(x_t, arg, scale, b_t, eps)
    y.backward(torch.from_numpy(grad_out.copy()))
    grad = [None if t is None else t.grad.numpy() for t in (w_t, b_t)]
    return y.detach().numpy(), x_t.grad.numpy(), *grad


def _assert_close_conditioned(actual, expected, dtype, inv_std):
    """assert_close with atol times the largest 1 / std: the normalisation multiplies the rounding
    of x - mean by it (groups of one element and constant groups have 1 / sqrt(eps), where
    float32 results differ from each other by that much)."""
    tol = TOLERANCES[np.dtype(dtype)]
    factor = max(1.0, float(np.max(inv_std, initial=1.0)))
    assert_close(actual, expected, dtype, {np.dtype(dtype): dict(rtol=tol["rtol"], atol=tol["atol"] * factor)})


def _data(rng, shape, dtype, offset=2.0, spread=3.0):
    x = (offset + spread * rng.standard_normal(shape)).astype(dtype)
    return x, rng.standard_normal(shape).astype(dtype)


# --------------------------------------------------------------------------- GroupNorm
GROUP_CASES = [((2, 6, 5, 7), 1), ((2, 6, 5, 7), 3), ((2, 6, 5, 7), 6), ((3, 4), 2), ((3, 4), 4), ((1, 6, 3), 2),
               ((2, 6, 2, 3, 4), 3), ((4, 9, 1, 1), 3), ((1, 1, 7), 1), ((2, 4, 50, 45), 2)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
@pytest.mark.parametrize("shape, groups", GROUP_CASES, ids=str)
def test_group_norm_matches_reference_and_torch(shape, groups, affine, dtype, torch, rng):
    x, grad_out = _data(rng, shape, dtype)
    channels = shape[1]
    weight = rng.uniform(0.5, 1.5, channels).astype(dtype) if affine in ("both", "weight") else None
    bias = rng.standard_normal(channels).astype(dtype) if affine in ("both", "bias") else None
    eps = 1e-5
    y, mean, inv_std = group_norm_forward(x, groups, weight, bias, eps)
    assert y.dtype == dtype and y.shape == shape and y.flags.c_contiguous
    assert mean.shape == inv_std.shape == (shape[0], groups) and mean.dtype == np.float64
    np.testing.assert_array_equal(group_norm(x, groups, weight, bias, eps), y)
    grad_x, grad_weight, grad_bias = group_norm_backward(grad_out, x, groups, mean, inv_std, weight)
    assert grad_x.dtype == grad_weight.dtype == grad_bias.dtype == dtype
    reference = reference_group_norm(x, grad_out, groups, weight, bias, eps)
    theirs = _torch_norm(torch, "group", x, grad_out, groups, weight, bias, eps)
    for ours, ref, other in zip((y, grad_x, grad_weight, grad_bias), reference, theirs):
        _assert_close_conditioned(ours, ref, dtype, inv_std)
        if other is not None:
            _assert_close_conditioned(ours, other, dtype, inv_std)
    _, none_weight, none_bias = group_norm_backward(grad_out, x, groups, mean, inv_std, weight,
                                                    needs_param_grads=False)
    assert none_weight is None and none_bias is None


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("eps", [0.0, 1e-3, 0.5])
def test_group_norm_eps(eps, dtype, torch, rng):
    x, grad_out = _data(rng, (3, 4, 5, 6), dtype, spread=0.2)
    y, mean, inv_std = group_norm_forward(x, 2, eps=eps)
    grads = group_norm_backward(grad_out, x, 2, mean, inv_std)
    reference = reference_group_norm(x, grad_out, 2, None, None, eps)
    theirs = _torch_norm(torch, "group", x, grad_out, 2, None, None, eps)
    for ours, ref, other in zip((y, *grads), reference, theirs):
        assert_close(ours, ref, dtype)
        if other is not None:
            assert_close(ours, other, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("offset", [1e4, -3e5])
@pytest.mark.parametrize("kind", ["group", "layer"])
def test_large_mean_offsets_keep_the_statistics_accurate(kind, offset, dtype, rng):
    """Data ~ offset + N(0, 1), rows of 4100 or 3000 values (several statistics blocks): the
    float64 block-merged statistics against the two-pass float64 reference; the results within
    what the rounding of the mean itself explains."""
    if kind == "group":
        x = (offset + rng.standard_normal((3, 4, 50, 41))).astype(dtype)
        grad_out = rng.standard_normal(x.shape).astype(dtype)
        y, mean, inv_std = group_norm_forward(x, 2)
        grads = group_norm_backward(grad_out, x, 2, mean, inv_std)
        reference = reference_group_norm(x, grad_out, 2, None, None, 1e-5)
        # grad_weight[c] sums each sample's plane of c: the mean's error times each plane's sum of grad_out.
        weight_lever = np.abs(grad_out.astype(np.float64).sum(axis=(2, 3))).sum(axis=0).max()
    else:
        x = (offset + rng.standard_normal((5, 3000))).astype(dtype)
        grad_out = rng.standard_normal(x.shape).astype(dtype)
        y, mean, inv_std = layer_norm_forward(x, 3000)
        grads = layer_norm_backward(grad_out, x, 3000, mean, inv_std)
        reference = reference_layer_norm(x, grad_out, (3000,), None, None, 1e-5)
        weight_lever = np.abs(grad_out.astype(np.float64)).sum(axis=0).max()
    rows = x.astype(np.float64).reshape(mean.size, -1)
    g_rows = grad_out.astype(np.float64).reshape(mean.size, -1)
    np.testing.assert_allclose(mean.reshape(-1), rows.mean(axis=1), rtol=1e-14)
    np.testing.assert_allclose(inv_std.reshape(-1), 1 / np.sqrt(rows.var(axis=1) + 1e-5), rtol=1e-11)
    r_max = float(inv_std.max())
    # y: the mean rounded to x's dtype is off by up to half an ulp of the offset, times 1 / std
    # (the reference's own mean adds as much again in float64).
    ulps = 1 if dtype == np.float32 else 2
    shift = ulps * float(np.spacing(np.dtype(dtype).type(abs(offset))))
    np.testing.assert_allclose(y, reference[0], rtol=0, atol=shift * r_max)
    # grad_x: its term in (x - mean) carries that shift, times inv_std^2 * mean(grad * x_hat).
    x_hat = (rows - rows.mean(axis=1, keepdims=True)) * inv_std.reshape(-1, 1)
    coupling = float(np.abs((g_rows * x_hat).mean(axis=1)).max())
    tol = TOLERANCES[np.dtype(dtype)]
    np.testing.assert_allclose(grads[0], reference[1], rtol=tol["rtol"],
                               atol=tol["atol"] + 2 * shift * r_max**2 * coupling)
    # grad_weight: sums of grad * (x - mean) in float64, so the float64 means' own errors (a few
    # ulps of the offset, in ours and in the reference), times the sums of grad_out they meet.
    mean_error = 8 * float(np.spacing(abs(offset)))
    np.testing.assert_allclose(grads[1], reference[2], rtol=tol["rtol"],
                               atol=tol["atol"] * max(1, np.abs(reference[2]).max())
                               + mean_error * r_max * weight_lever)
    assert_close(grads[2], reference[3], dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_constant_groups(dtype, torch, rng):
    x = np.repeat(rng.standard_normal((2, 2, 1, 1)), 3, axis=1).reshape(2, 6, 1, 1) * np.ones((1, 1, 3, 3))
    x = x.astype(dtype)  # each group of 3 channels constant
    grad_out = rng.standard_normal(x.shape).astype(dtype)
    weight, bias = rng.standard_normal(6).astype(dtype), rng.standard_normal(6).astype(dtype)
    y, mean, inv_std = group_norm_forward(x, 2, weight, bias)
    np.testing.assert_allclose(y, np.broadcast_to(bias.reshape(1, 6, 1, 1), y.shape), atol=1e-6)
    grads = group_norm_backward(grad_out, x, 2, mean, inv_std, weight)
    theirs = _torch_norm(torch, "group", x, grad_out, 2, weight, bias, 1e-5)
    np.testing.assert_allclose(inv_std, 1 / np.sqrt(1e-5), rtol=1e-12)
    for ours, ref, other in zip((y, *grads), reference_group_norm(x, grad_out, 2, weight, bias, 1e-5), theirs):
        assert np.all(np.isfinite(ours))
        _assert_close_conditioned(ours, ref, dtype, inv_std)
        _assert_close_conditioned(ours, other, dtype, inv_std)


def test_group_norm_empty_and_non_contiguous(rng):
    y, mean, inv_std = group_norm_forward(np.zeros((0, 4, 3, 3)), 2)
    assert y.shape == (0, 4, 3, 3) and mean.shape == (0, 2)
    y, mean, inv_std = group_norm_forward(np.zeros((2, 4, 0)), 2)
    assert y.shape == (2, 4, 0) and mean.shape == (2, 2)
    assert group_norm_backward(y, y, 2, mean, inv_std)[0].shape == (2, 4, 0)
    grad_x, grad_weight, grad_bias = group_norm_backward(np.zeros((0, 4, 3)), np.zeros((0, 4, 3)), 2,
                                                         np.zeros((0, 2)), np.ones((0, 2)))
    assert grad_x.shape == (0, 4, 3)
    np.testing.assert_array_equal(grad_weight, 0)
    np.testing.assert_array_equal(grad_bias, 0)
    x = rng.standard_normal((3, 8, 6, 10))[:, ::2, :, ::3]
    grad_out = rng.standard_normal((3, 8, 12, 6)).transpose(0, 1, 3, 2)[:, ::2, :, ::3]
    weight = rng.standard_normal(8)[::2]
    y, mean, inv_std = group_norm_forward(x, 2, weight)
    np.testing.assert_array_equal(y, group_norm(x.copy(), 2, weight.copy()))
    for ours, expected in zip(group_norm_backward(grad_out, x, 2, mean, inv_std, weight),
                              group_norm_backward(grad_out.copy(), x.copy(), 2, mean, inv_std, weight.copy())):
        np.testing.assert_array_equal(ours, expected)
    for ours, ref in zip((y, *group_norm_backward(grad_out, x, 2, mean, inv_std, weight)),
                         reference_group_norm(x, grad_out, 2, weight, None, 1e-5)):
        assert_close(ours, ref)


# --------------------------------------------------------------------------- LayerNorm
LAYER_CASES = [((4, 10), (10,)), ((2, 3, 5, 7), (5, 7)), ((3, 300), (300,)), ((2, 3, 4), (2, 3, 4)),
               ((5, 1), (1,)), ((2, 2, 3, 600), (3, 600)), ((7,), (7,))]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
@pytest.mark.parametrize("shape, normalized", LAYER_CASES, ids=str)
def test_layer_norm_matches_reference_and_torch(shape, normalized, affine, dtype, torch, rng):
    x, grad_out = _data(rng, shape, dtype)
    weight = rng.uniform(0.5, 1.5, normalized).astype(dtype) if affine in ("both", "weight") else None
    bias = rng.standard_normal(normalized).astype(dtype) if affine in ("both", "bias") else None
    y, mean, inv_std = layer_norm_forward(x, normalized, weight, bias)
    leading = shape[: len(shape) - len(normalized)]
    assert y.dtype == dtype and y.shape == shape and mean.shape == inv_std.shape == leading
    np.testing.assert_array_equal(layer_norm(x, list(normalized), weight, bias), y)
    grad_x, grad_weight, grad_bias = layer_norm_backward(grad_out, x, normalized, mean, inv_std, weight)
    assert grad_x.dtype == grad_weight.dtype == grad_bias.dtype == dtype
    assert grad_weight.shape == grad_bias.shape == normalized
    reference = reference_layer_norm(x, grad_out, normalized, weight, bias, 1e-5)
    theirs = _torch_norm(torch, "layer", x, grad_out, normalized, weight, bias, 1e-5)
    for ours, ref, other in zip((y, grad_x, grad_weight, grad_bias), reference, theirs):
        _assert_close_conditioned(ours, ref, dtype, inv_std)
        if other is not None:
            _assert_close_conditioned(ours, other, dtype, inv_std)
    _, none_weight, none_bias = layer_norm_backward(grad_out, x, normalized, mean, inv_std, weight,
                                                    needs_param_grads=False)
    assert none_weight is None and none_bias is None


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("eps", [0.0, 1e-3, 0.5])
def test_layer_norm_eps(eps, dtype, torch, rng):
    x, grad_out = _data(rng, (6, 20), dtype, spread=0.2)
    weight = rng.standard_normal(20).astype(dtype)
    y, mean, inv_std = layer_norm_forward(x, 20, weight, eps=eps)
    grads = layer_norm_backward(grad_out, x, 20, mean, inv_std, weight)
    theirs = _torch_norm(torch, "layer", x, grad_out, (20,), weight, None, eps)
    for ours, ref, other in zip((y, *grads), reference_layer_norm(x, grad_out, (20,), weight, None, eps), theirs):
        assert_close(ours, ref, dtype)
        if other is not None:
            assert_close(ours, other, dtype)


def test_layer_norm_empty_and_non_contiguous(rng):
    y, mean, inv_std = layer_norm_forward(np.zeros((0, 3, 4)), (3, 4))
    assert y.shape == (0, 3, 4) and mean.shape == (0,)
    grad_x, grad_weight, _ = layer_norm_backward(np.zeros((0, 4)), np.zeros((0, 4)), 4, np.zeros(0), np.ones(0))
    assert grad_x.shape == (0, 4)
    np.testing.assert_array_equal(grad_weight, np.zeros(4))
    x = rng.standard_normal((6, 40)).T[::2]
    grad_out = rng.standard_normal((20, 6))[:, ::-1]
    weight = rng.standard_normal(12)[::2]
    bias = rng.standard_normal(6)
    y, mean, inv_std = layer_norm_forward(x, 6, weight, bias)
    grads = layer_norm_backward(grad_out, x, 6, mean, inv_std, weight)
    for ours, ref in zip((y, *grads), reference_layer_norm(x, grad_out, (6,), weight, bias, 1e-5)):
        assert_close(ours, ref)


# --------------------------------------------------------------------------- threads, sub-batches
def _run_all(x, grad_out, weight, bias, ln_weight, ln_bias):
    y, mean, inv_std = group_norm_forward(x, 2, weight, bias)
    results = [y, mean, inv_std, *group_norm_backward(grad_out, x, 2, mean, inv_std, weight)]
    y, mean, inv_std = layer_norm_forward(x, x.shape[2:], ln_weight, ln_bias)
    results += [y, mean, inv_std, *layer_norm_backward(grad_out, x, x.shape[2:], mean, inv_std, ln_weight)]
    y, mean, inv_std = layer_norm_forward(x, x.shape[2:])
    return results + [y, *layer_norm_backward(grad_out, x, x.shape[2:], mean, inv_std)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_thread_counts_and_sub_batches_give_identical_results(dtype, rng, restore_threads, monkeypatch):
    x, grad_out = _data(rng, (5, 4, 30, 40), dtype)
    arrays = (x, grad_out, rng.standard_normal(4).astype(dtype), rng.standard_normal(4).astype(dtype),
              rng.standard_normal((30, 40)).astype(dtype), rng.standard_normal((30, 40)).astype(dtype))
    convx.set_num_threads(1)
    whole = _run_all(*arrays)
    for n_threads in (2, 3):
        convx.set_num_threads(n_threads)
        for expected, actual in zip(whole, _run_all(*arrays), strict=True):
            np.testing.assert_array_equal(actual, expected)
    monkeypatch.setattr(convx._batching, "SUB_BATCH_WORK", 1)  # one row or plane a sub-batch
    for expected, actual in zip(whole, _run_all(*arrays), strict=True):
        np.testing.assert_array_equal(actual, expected)


# --------------------------------------------------------------------------- the layers
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_group_norm_layer_matches_torch(dtype, torch, rng):
    layer = nn.GroupNorm(3, 6, eps=1e-4, dtype=dtype)
    reference = torch.nn.GroupNorm(3, 6, eps=1e-4).to(torch.float64 if dtype == np.float64 else torch.float32)
    assert set(layer.state_dict()) == set(reference.state_dict())
    layer.params["weight"][:] = rng.standard_normal(6)
    layer.params["bias"][:] = rng.standard_normal(6)
    layer_state = {k: torch.from_numpy(v) for k, v in layer.state_dict().items()}
    reference.load_state_dict(layer_state)
    x, grad_out = _data(rng, (4, 6, 5, 3), dtype)
    x_t = torch.from_numpy(x.copy()).requires_grad_(True)
    out_t = reference(x_t)
    out_t.backward(torch.from_numpy(grad_out))
    for mode in ("train", "eval"):
        getattr(layer, mode)()
        assert_close(layer(x), out_t.detach().numpy())
        assert_close(layer.backward(grad_out), x_t.grad.numpy())
        assert_close(layer.grads["weight"], reference.weight.grad.numpy())
        assert_close(layer.grads["bias"], reference.bias.grad.numpy())
    assert repr(layer) == f"GroupNorm(3, 6, eps=0.0001, affine=True, dtype={np.dtype(dtype)})"


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("affine, bias", [(True, True), (True, False), (False, True)])
def test_layer_norm_layer_matches_torch(affine, bias, dtype, torch, rng):
    layer = nn.LayerNorm((5, 4), elementwise_affine=affine, bias=bias, dtype=dtype)
    reference = torch.nn.LayerNorm((5, 4), elementwise_affine=affine, bias=bias)
    reference = reference.to(torch.float64 if dtype == np.float64 else torch.float32)
    assert set(layer.state_dict()) == set(reference.state_dict())
    for value in layer.params.values():
        value[:] = rng.standard_normal(value.shape)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    x, grad_out = _data(rng, (3, 2, 5, 4), dtype)
    x_t = torch.from_numpy(x.copy()).requires_grad_(True)
    out_t = reference(x_t)
    out_t.backward(torch.from_numpy(grad_out))
    assert_close(layer(x), out_t.detach().numpy())
    assert_close(layer.backward(grad_out), x_t.grad.numpy())
    for key in layer.params:
        assert_close(layer.grads[key], getattr(reference, key).grad.numpy())
    assert layer.params.keys() == {"weight", "bias"} if affine and bias else True
    assert "LayerNorm((5, 4), eps=1e-05" in repr(layer)


@pytest.mark.parametrize("layer", [
    lambda: nn.GroupNorm(2, 4, dtype=np.float64),
    lambda: nn.GroupNorm(4, 4, affine=False, dtype=np.float64),
    lambda: nn.GroupNorm(1, 4, eps=0.1, dtype=np.float64),
    lambda: nn.LayerNorm((3, 2), dtype=np.float64),
    lambda: nn.LayerNorm(2, bias=False, dtype=np.float64),
    lambda: nn.LayerNorm((4, 3, 2), elementwise_affine=False, dtype=np.float64),
], ids=["gn", "gn-instance-no-affine", "gn-one-group", "ln", "ln-no-bias", "ln-no-affine"])
def test_layer_gradcheck(layer, rng):
    module = layer()
    for value in module.params.values():
        value[:] = 1 + 0.5 * rng.standard_normal(value.shape)
    assert convx.gradcheck(module, 1 + 2 * rng.standard_normal((2, 4, 3, 2)))


# --------------------------------------------------------------------------- bad arguments
def test_bad_arguments(rng):
    x = rng.standard_normal((2, 6, 3, 3))
    with pytest.raises(ValueError, match="num_groups must divide the channels of x: x has 6 channels"):
        group_norm(x, 4)
    with pytest.raises(ValueError, match="num_groups must be positive, got 0"):
        group_norm(x, 0)
    with pytest.raises(TypeError, match="num_groups must be an int"):
        group_norm(x, 2.0)
    with pytest.raises(ValueError, match=r"weight must have shape \(6,\)"):
        group_norm(x, 2, np.ones(3))
    with pytest.raises(TypeError, match="weight must have x's dtype float64, got float32"):
        group_norm(x, 2, np.ones(6, np.float32))
    with pytest.raises(ValueError, match="eps must be at least 0.0, got -1.0"):
        group_norm(x, 2, eps=-1.0)
    with pytest.raises(ValueError, match=r"x must be 2 or 3 .* or 32-dimensional, got an array of shape \(6,\)"):
        group_norm(np.ones(6), 2)
    with pytest.raises(ValueError, match=r"mean must have shape \(2, 3\)"):
        group_norm_backward(x, x, 3, np.zeros((2, 2)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="grad_out must have x's shape and dtype"):
        group_norm_backward(x[:1], x, 3, np.zeros((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"num_channels must be divisible by num_groups, got num_channels=6 and "
                                         r"num_groups=4"):
        nn.GroupNorm(4, 6)
    with pytest.raises(ValueError, match="GroupNorm expects 4 channels, got x of shape"):
        nn.GroupNorm(2, 4, dtype=np.float64)(x)
    with pytest.raises(TypeError, match="GroupNorm has float32 parameters but x has dtype float64"):
        nn.GroupNorm(2, 6)(x)

    with pytest.raises(ValueError, match=r"normalized_shape \(3, 4\) must be the trailing dimensions of x, got x "
                                         r"of shape \(2, 6, 3, 3\)"):
        layer_norm(x, (3, 4))
    with pytest.raises(ValueError, match=r"normalized_shape \(2, 6, 3, 3, 1\) must be the trailing"):
        layer_norm(x, (2, 6, 3, 3, 1))
    with pytest.raises(TypeError, match="normalized_shape must be an int or a non-empty sequence"):
        layer_norm(x, ())
    with pytest.raises(TypeError, match="normalized_shape must be an int"):
        layer_norm(x, (3.0,))
    with pytest.raises(ValueError, match=r"weight must have the normalized shape \(3, 3\), got \(9,\)"):
        layer_norm(x, (3, 3), np.ones(9))
    with pytest.raises(TypeError, match="bias must have x's dtype float64, got float32"):
        layer_norm(x, 3, None, np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"inv_std must have shape \(2, 6\)"):
        layer_norm_backward(x, x, (3, 3), np.zeros((2, 6)), np.ones(12))
    with pytest.raises(ValueError, match=r"normalized_shape \(3, 3\) must be the trailing dimensions"):
        nn.LayerNorm((3, 3), dtype=np.float64)(np.ones((2, 3)))
    with pytest.raises(ValueError, match="normalized_shape must be positive, got 0"):
        nn.LayerNorm((3, 0))
    with pytest.raises(ValueError, match="eps must be a non-negative number"):
        nn.LayerNorm(3, eps=-1)
    with pytest.raises(TypeError, match="elementwise_affine must be a bool"):
        nn.LayerNorm(3, elementwise_affine=1)
