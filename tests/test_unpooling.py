"""max_unpool1d / max_unpool2d, their backward passes and nn.MaxUnpool1d/2d: against a NumPy reference
written here, against PyTorch, by central differences, and their refusals (no index outside the
output is ever written)."""

from __future__ import annotations

import numpy as np
import pytest

import convx
import convx.functional as F
from convx import nn
from conftest import DTYPES


CASES_2D = [
    ((2, 3, 7, 9), dict(kernel_size=3, stride=2, padding=1), None),
    ((2, 3, 8, 8), dict(kernel_size=2), None),
    ((1, 2, 9, 6), dict(kernel_size=(3, 2), stride=(3, 2)), None),
    ((2, 3, 7, 9), dict(kernel_size=2, stride=2), (7, 9)),
]
CASES_1D = [
    ((2, 3, 11), dict(kernel_size=3, stride=2, padding=1), (11,)),
    ((2, 3, 12), dict(kernel_size=2), None),
    ((1, 4, 13), dict(kernel_size=4, stride=3), (13,)),
]


def reference(x, indices, out_spatial):
    """Written plane by plane, element by element, in row-major order."""
    dims = len(out_spatial)
    leading = x.shape[:-dims]
    y = np.zeros((*leading, int(np.prod(out_spatial))), x.dtype)
    for plane in np.ndindex(leading):
        for position in np.ndindex(x.shape[-dims:]):
            y[plane][indices[plane][position]] = x[plane][position]
    return y.reshape(*leading, *out_spatial)


def _pool(x, kwargs):
    pool = F.max_pool1d if x.ndim == 3 else F.max_pool2d
    return pool(x, **kwargs, return_indices=True)


def _default(spatial, kwargs):
    kernel = np.broadcast_to(kwargs["kernel_size"], (len(spatial),))
    stride = np.broadcast_to(kwargs.get("stride", kwargs["kernel_size"]), (len(spatial),))
    padding = np.broadcast_to(kwargs.get("padding", 0), (len(spatial),))
    return tuple(int((s - 1) * st - 2 * p + k) for s, k, st, p in zip(spatial, kernel, stride, padding))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kwargs, output_size", CASES_2D + CASES_1D)
def test_unpool_and_backward_match_the_reference_and_torch(shape, kwargs, output_size, dtype, rng, torch):
    x = rng.standard_normal(shape).astype(dtype)
    pooled, indices = _pool(x, kwargs)
    dims = len(shape) - 2
    unpool = F.max_unpool1d if dims == 1 else F.max_unpool2d
    backward = F.max_unpool1d_backward if dims == 1 else F.max_unpool2d_backward
    y = unpool(pooled, indices, **kwargs, output_size=output_size)
    out_spatial = output_size or _default(pooled.shape[2:], kwargs)
    np.testing.assert_array_equal(y, reference(pooled, indices, out_spatial))
    torch_unpool = torch.nn.functional.max_unpool1d if dims == 1 else torch.nn.functional.max_unpool2d
    tx = torch.tensor(pooled, requires_grad=True)
    ty = torch_unpool(tx, torch.tensor(indices), **kwargs, output_size=output_size)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    ty.backward(torch.tensor(grad_out))
    grad_x = backward(grad_out, indices)
    np.testing.assert_array_equal(grad_x, tx.grad.numpy())
    assert grad_x.shape == pooled.shape and grad_x.dtype == dtype
    # unbatched
    np.testing.assert_array_equal(unpool(pooled[0], indices[0], **kwargs, output_size=output_size), y[0])
    np.testing.assert_array_equal(backward(grad_out[0], indices[0]), grad_x[0])


def test_duplicate_indices_the_later_write_wins_as_torch(torch):
    x = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    indices = np.array([[[0, 0, 5, 5]]])
    y = F.max_unpool1d(x, indices, 2)
    np.testing.assert_array_equal(y, [[[2.0, 0, 0, 0, 0, 4.0, 0, 0]]])
    np.testing.assert_array_equal(y, torch.nn.functional.max_unpool1d(torch.tensor(x), torch.tensor(indices), 2))
    np.testing.assert_array_equal(F.max_unpool1d_backward(np.arange(8.0)[None, None], indices), [[[0, 0, 5, 5]]])


def test_central_differences(rng):
    x = rng.standard_normal((2, 3, 6, 4))
    _, indices = F.max_pool2d(x, 2, return_indices=True)
    values = rng.standard_normal(indices.shape)
    assert convx.gradcheck(lambda v: F.max_unpool2d(v, indices, 2, output_size=(7, 5)), [values],
                           backward=lambda g: (F.max_unpool2d_backward(g, indices),))
    _, indices_1d = F.max_pool1d(x[:, :, 0], 2, return_indices=True)
    assert convx.gradcheck(_UnpoolWith(indices_1d, 1), rng.standard_normal(indices_1d.shape))
    assert convx.gradcheck(_UnpoolWith(indices, 2), values)


class _UnpoolWith(nn.Module):
    """A MaxUnpool layer with its indices fixed, as gradcheck's one-input layer."""

    def __init__(self, indices, dims):
        super().__init__()
        self.indices = indices
        self.unpool = nn.MaxUnpool1d(2) if dims == 1 else nn.MaxUnpool2d(2)

    def forward(self, x):
        return self.unpool(x, self.indices)

    def backward(self, grad_out):
        return self.unpool.backward(grad_out)


def test_layers(rng, torch):
    x = rng.standard_normal((2, 3, 8, 8))
    y, indices = F.max_pool2d(x, 2, return_indices=True)
    layer = nn.MaxUnpool2d(2)
    out = layer(y, indices)
    np.testing.assert_array_equal(out, torch.nn.MaxUnpool2d(2)(torch.tensor(y), torch.tensor(indices)).numpy())
    indices[...] = 0  # the layer keeps its own copy for the backward
    np.testing.assert_array_equal(layer.backward(np.ones_like(out)), np.ones_like(y))
    assert repr(nn.MaxUnpool1d(3, 2, 1)) == "MaxUnpool1d(kernel_size=3, stride=2, padding=1)"
    assert nn.MaxUnpool2d(2).state_dict() == {}


def test_empty_batch_and_read_only_inputs(rng):
    x = rng.standard_normal((2, 3, 8))
    y, indices = F.max_pool1d(x, 2, return_indices=True)
    for array in (y, indices):
        array.flags.writeable = False
    np.testing.assert_array_equal(F.max_unpool1d(y, indices, 2), reference(y, indices, (8,)))
    assert F.max_unpool1d(y[:0], indices[:0], 2).shape == (0, 3, 8)
    assert F.max_unpool1d_backward(np.zeros((0, 3, 8)), indices[:0]).shape == (0, 3, 4)


Y = np.zeros((2, 3, 4, 5))
I = np.zeros((2, 3, 4, 5), np.int64)


@pytest.mark.parametrize("call, exception, message", [
    (lambda: F.max_unpool2d(Y, I + 80, 2), ValueError,
     r"max_unpool2d: indices must lie in \[0, H_out\*W_out\) = \[0, 80\) for an output of spatial shape \(8, 10\), "
     r"got 80"),
    (lambda: F.max_unpool2d(Y, I - 1, 2), ValueError, r"\[0, 80\) .* got -1"),
    (lambda: F.max_unpool1d(Y[..., 0], I[..., 0] + 8, 2), ValueError,
     r"max_unpool1d: indices must lie in \[0, L_out\) = \[0, 8\)"),
    (lambda: F.max_unpool2d(Y, I.astype(np.int32), 2), TypeError, "indices must have dtype int64, got dtype int32"),
    (lambda: F.max_unpool2d(Y, I.tolist(), 2), TypeError, "indices must be a numpy.ndarray of int64"),
    (lambda: F.max_unpool2d(Y, I[:1], 2), ValueError, r"indices must have the shape \(2, 3, 4, 5\)"),
    (lambda: F.max_unpool2d(Y[None], I[None], 2), ValueError, r"max_unpool2d expects x of shape \(N, C, H, W\)"),
    (lambda: F.max_unpool1d(Y, I, 2), ValueError, r"max_unpool1d expects x of shape \(N, C, L\) or \(C, L\)"),
    (lambda: F.max_unpool2d(Y.astype(np.int64), I, 2), TypeError, "x must have dtype float32 or float64"),
    (lambda: F.max_unpool2d(Y, I, 0), ValueError, "kernel_size must be positive"),
    (lambda: F.max_unpool1d(Y[..., 0], I[..., 0], (2, 2)), ValueError, "kernel_size of a 1-D op"),
    (lambda: F.max_unpool2d(Y, I, 2, output_size=(10, 10)), ValueError,
     r"output_size \(10, 10\) must be within stride \(2, 2\) of the default output size \(8, 10\)"),
    (lambda: F.max_unpool2d(Y, I, 2, output_size=(8,)), ValueError, "output_size must be the output's spatial size"),
    (lambda: F.max_unpool2d(Y, I, 2, output_size=(9, 3, 8, 10)), ValueError, "x's leading axes"),
    (lambda: F.max_unpool2d(Y, I, 2, output_size=8), TypeError, "output_size must be a tuple of ints"),
    (lambda: F.max_unpool2d(Y, I, 1, padding=2), ValueError, r"the output would be 0x1"),
    (lambda: F.max_unpool2d_backward(np.zeros((2, 3, 8, 10)), I + 80), ValueError,
     r"max_unpool2d_backward: indices must lie in \[0, H_out\*W_out\) = \[0, 80\)"),
    (lambda: F.max_unpool2d_backward(np.zeros((2, 3, 8, 10)), I[:1]), ValueError, "grad_out's leading axes"),
    (lambda: nn.MaxUnpool1d((2, 2)), ValueError, "kernel_size of a 1-D op"),
])
def test_bad_arguments_are_refused_before_anything_is_written(call, exception, message):
    with pytest.raises(exception, match=message):
        call()
