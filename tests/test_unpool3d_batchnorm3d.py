"""max_unpool3d (+ backward, nn.MaxUnpool3d) and nn.BatchNorm3d (issue 21): against references
written here, against PyTorch, by central differences in float64, channels last against channels
first, and their refusals."""

from __future__ import annotations

import numpy as np
import pytest

import convx
import convx.functional as F
from convx import nn
from conftest import DTYPES, assert_close

DTYPE_IDS = ["float32", "float64"]

UNPOOL_CASES = [
    ((2, 3, 5, 7, 6), dict(kernel_size=2, stride=2), (5, 7, 6)),
    ((2, 2, 6, 6, 6), dict(kernel_size=2), None),
    ((1, 2, 7, 5, 9), dict(kernel_size=3, stride=2, padding=1), None),
    ((2, 1, 6, 8, 7), dict(kernel_size=(1, 2, 3), stride=(1, 2, 3)), (6, 8, 7)),
]


def unpool_reference(x, indices, out_spatial):
    """Written volume by volume, element by element, in row-major order."""
    leading = x.shape[:-3]
    y = np.zeros((*leading, int(np.prod(out_spatial))), x.dtype)
    for volume in np.ndindex(leading):
        for position in np.ndindex(x.shape[-3:]):
            y[volume][indices[volume][position]] = x[volume][position]
    return y.reshape(*leading, *out_spatial)


def _default(spatial, kwargs):
    kernel, stride, padding = (np.broadcast_to(kwargs.get(k, d), (3,)) for k, d in
                               (("kernel_size", 0), ("stride", kwargs["kernel_size"]), ("padding", 0)))
    return tuple(int((s - 1) * st - 2 * p + k) for s, k, st, p in zip(spatial, kernel, stride, padding))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape, kwargs, output_size", UNPOOL_CASES)
def test_unpool3d_and_backward_match_the_reference_and_torch(shape, kwargs, output_size, dtype, rng, torch):
    x = rng.standard_normal(shape).astype(dtype)
    pooled, indices = F.max_pool3d(x, **kwargs, return_indices=True)
    y = F.max_unpool3d(pooled, indices, **kwargs, output_size=output_size)
    out_spatial = output_size or _default(pooled.shape[2:], kwargs)
    np.testing.assert_array_equal(y, unpool_reference(pooled, indices, out_spatial))
    tx = torch.tensor(pooled, requires_grad=True)
    ty = torch.nn.functional.max_unpool3d(tx, torch.tensor(indices), **kwargs, output_size=output_size)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    ty.backward(torch.tensor(grad_out))
    grad_x = F.max_unpool3d_backward(grad_out, indices)
    np.testing.assert_array_equal(grad_x, tx.grad.numpy())
    assert grad_x.shape == pooled.shape and grad_x.dtype == dtype
    # unbatched, and channels last against channels first
    np.testing.assert_array_equal(F.max_unpool3d(pooled[0], indices[0], **kwargs, output_size=output_size), y[0])
    np.testing.assert_array_equal(F.max_unpool3d_backward(grad_out[0], indices[0]), grad_x[0])
    last = (0, 2, 3, 4, 1)
    y_last = F.max_unpool3d(np.ascontiguousarray(pooled.transpose(last)), np.ascontiguousarray(indices.transpose(last)),
                            **kwargs, output_size=output_size, layout="NDHWC")
    np.testing.assert_array_equal(y_last, y.transpose(last))
    g_last = F.max_unpool3d_backward(np.ascontiguousarray(grad_out.transpose(last)),
                                     np.ascontiguousarray(indices.transpose(last)), layout="NDHWC")
    np.testing.assert_array_equal(g_last, grad_x.transpose(last))


def test_unpool3d_central_differences(rng):
    x = rng.standard_normal((2, 2, 4, 6, 4))
    _, indices = F.max_pool3d(x, 2, return_indices=True)
    values = rng.standard_normal(indices.shape)
    assert convx.gradcheck(lambda v: F.max_unpool3d(v, indices, 2, output_size=(5, 7, 4)), [values],
                           backward=lambda g: (F.max_unpool3d_backward(g, indices),))


def test_unpool3d_layer(rng, torch):
    x = rng.standard_normal((2, 3, 4, 6, 6))
    y, indices = F.max_pool3d(x, 2, return_indices=True)
    layer = nn.MaxUnpool3d(2)
    out = layer(y, indices)
    np.testing.assert_array_equal(out, torch.nn.MaxUnpool3d(2)(torch.tensor(y), torch.tensor(indices)).numpy())
    indices[...] = 0  # the layer keeps its own copy for the backward
    np.testing.assert_array_equal(layer.backward(np.ones_like(out)), np.ones_like(y))
    assert repr(nn.MaxUnpool3d(3, 2, 1)) == "MaxUnpool3d(kernel_size=(3, 3, 3), stride=(2, 2, 2), padding=(1, 1, 1))"
    assert repr(nn.MaxUnpool3d(2, layout="NDHWC")).endswith("layout='NDHWC')")
    assert nn.MaxUnpool3d(2).state_dict() == {}


def test_unpool3d_empty_batch_and_read_only_inputs(rng):
    x = rng.standard_normal((2, 3, 4, 4, 4))
    y, indices = F.max_pool3d(x, 2, return_indices=True)
    for array in (y, indices):
        array.flags.writeable = False
    np.testing.assert_array_equal(F.max_unpool3d(y, indices, 2), unpool_reference(y, indices, (4, 4, 4)))
    assert F.max_unpool3d(y[:0], indices[:0], 2).shape == (0, 3, 4, 4, 4)
    assert F.max_unpool3d_backward(np.zeros((0, 3, 4, 4, 4)), indices[:0]).shape == (0, 3, 2, 2, 2)


Y = np.zeros((1, 2, 2, 2, 2))
I = np.zeros((1, 2, 2, 2, 2), np.int64)


@pytest.mark.parametrize("call, exception, message", [
    (lambda: F.max_unpool3d(Y, I + 64, 2), ValueError, r"indices must lie in \[0, D_out\*H_out\*W_out\) = \[0, 64\)"),
    (lambda: F.max_unpool3d(Y, I - 1, 2), ValueError, r"got -1"),
    (lambda: F.max_unpool3d(Y, I.astype(np.int32), 2), TypeError, "indices must have dtype int64"),
    (lambda: F.max_unpool3d(Y, I[0], 2), ValueError, "indices must have the shape"),
    (lambda: F.max_unpool3d(Y[0, 0], I[0, 0], 2), ValueError, r"\(N, C, D, H, W\) or \(C, D, H, W\)"),
    (lambda: F.max_unpool3d(Y, I, (2, 2)), ValueError, "kernel_size"),
    (lambda: F.max_unpool3d(Y, I, 2, output_size=(6, 4, 4)), ValueError, "within stride"),
    (lambda: F.max_unpool3d(Y, I, 2, layout="NCHW"), ValueError, "NCDHW"),
    (lambda: F.max_unpool3d_backward(np.zeros((1, 2, 4, 4, 4)), I + 64), ValueError, r"\[0, 64\)"),
    (lambda: nn.MaxUnpool3d(0), ValueError, "kernel_size"),
    (lambda: nn.MaxUnpool3d(2, layout="NHWC"), ValueError, "NDHWC"),
])
def test_unpool3d_bad_arguments_are_refused(call, exception, message):
    with pytest.raises(exception, match=message):
        call()


# ------------------------------------------------------------------------------ nn.BatchNorm3d
BN_CONFIGS = [dict(momentum=0.1), dict(momentum=None, affine=False), dict(track_running_stats=False)]


def bn_reference(x, weight, bias, eps):
    """Training-mode batch norm of (N, C, D, H, W) from the formula, with the unbiased variance."""
    axes = (0, 2, 3, 4)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps) * weight.reshape(1, -1, 1, 1, 1) + bias.reshape(1, -1, 1, 1, 1)
    count = x.size // x.shape[1]
    return y, mean.ravel(), var.ravel() * count / (count - 1)


def test_batchnorm3d_training_matches_the_formula(rng):
    layer = nn.BatchNorm3d(3, eps=1e-3, momentum=1.0, dtype=np.float64)
    layer.params["weight"][:] = rng.uniform(0.5, 1.5, 3)
    layer.params["bias"][:] = rng.standard_normal(3)
    x = 2 + 3 * rng.standard_normal((2, 3, 4, 5, 3))
    y, mean, unbiased = bn_reference(x, layer.params["weight"], layer.params["bias"], 1e-3)
    np.testing.assert_allclose(layer(x), y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.buffers["running_mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(layer.buffers["running_var"], unbiased, rtol=1e-12)


@pytest.mark.parametrize("layout", ["NCDHW", "NDHWC"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kwargs", BN_CONFIGS, ids=lambda kwargs: ",".join(f"{k}={v}" for k, v in kwargs.items()))
def test_batchnorm3d_matches_torch_over_training_and_evaluation_steps(kwargs, dtype, layout, torch, rng):
    ours = nn.BatchNorm3d(3, eps=1e-4, **kwargs, dtype=dtype, layout=layout)
    if ours.affine:
        ours.params["weight"][:] = rng.uniform(0.5, 1.5, 3)
        ours.params["bias"][:] = rng.standard_normal(3)
    theirs = torch.nn.BatchNorm3d(3, eps=1e-4, **kwargs).to(torch.float64 if dtype == np.float64 else torch.float32)
    theirs.load_state_dict({key: torch.from_numpy(value) for key, value in ours.state_dict().items()})
    last = layout == "NDHWC"
    for step, shape in enumerate([(4, 3, 3, 5, 6), (1, 3, 2, 2, 3), (3, 3, 2, 4, 4)]):
        if step == 2:
            ours.eval()
            theirs.eval()
        x = (rng.standard_normal(shape) * (step + 1) + 2 * step).astype(dtype)
        x_before = x.copy()
        x_torch = torch.from_numpy(x.copy()).requires_grad_(True)
        ours_x = np.ascontiguousarray(np.moveaxis(x, 1, -1)) if last else x
        y, y_torch = ours(ours_x), theirs(x_torch)
        y = np.moveaxis(y, -1, 1) if last else y
        assert y.dtype == dtype
        assert_close(y, y_torch.detach().numpy(), dtype)
        grad_out = rng.standard_normal(shape).astype(dtype)
        y_torch.backward(torch.from_numpy(grad_out.copy()))
        grad_x = ours.backward(np.ascontiguousarray(np.moveaxis(grad_out, 1, -1)) if last else grad_out)
        assert_close(np.moveaxis(grad_x, -1, 1) if last else grad_x, x_torch.grad.numpy(), dtype)
        np.testing.assert_array_equal(x, x_before)
        for name, param in theirs.named_parameters():
            assert_close(ours.grads[name], param.grad.numpy(), dtype)
            param.grad = None
        torch_state = theirs.state_dict()
        assert sorted(ours.state_dict()) == sorted(torch_state)
        for name, value in ours.state_dict().items():
            assert_close(value, torch_state[name].numpy(), dtype)


@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
def test_batchnorm3d_gradcheck(training, rng):
    layer = nn.BatchNorm3d(2, dtype=np.float64)
    layer.params["weight"][:] = rng.uniform(0.5, 1.5, 2)
    layer.params["bias"][:] = rng.standard_normal(2)
    layer.buffers["running_mean"][:] = rng.standard_normal(2)
    layer.buffers["running_var"][:] = rng.uniform(0.5, 2.0, 2)
    layer.train(training)
    assert convx.gradcheck(layer, 1 + 2 * rng.standard_normal((2, 2, 2, 3, 2)))


def test_batchnorm3d_nan_and_inf_spread_as_in_torch(torch):
    x = np.ones((2, 2, 2, 2, 2), np.float32)
    x[0, 0, 0, 0, 0] = np.nan
    x[1, 1, 1, 1, 1] = np.inf
    ours, theirs = nn.BatchNorm3d(2), torch.nn.BatchNorm3d(2)
    np.testing.assert_array_equal(np.isnan(ours(x)), np.isnan(theirs(torch.from_numpy(x)).detach().numpy()))


@pytest.mark.parametrize("call, exception, message", [
    (lambda: nn.BatchNorm3d(3)(np.zeros((2, 3, 4, 4), np.float32)), ValueError, "5-dimensional"),
    (lambda: nn.BatchNorm3d(3)(np.zeros((2, 4, 2, 2, 2), np.float32)), ValueError, "expects 3 channels"),
    (lambda: nn.BatchNorm3d(3, layout="NDHWC")(np.zeros((2, 3, 2, 2, 2), np.float32)), ValueError,
     r"expects 3 channels.*\(N, D, H, W, C\)"),
    (lambda: nn.BatchNorm3d(3, layout="NHWC"), ValueError, "NDHWC"),
    (lambda: nn.BatchNorm3d(0), ValueError, "num_features"),
])
def test_batchnorm3d_refusals(call, exception, message):
    with pytest.raises(exception, match=message):
        call()
