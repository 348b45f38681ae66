"""Softmax and log-softmax: convx.functional's softmax, log_softmax and their backward functions,
nn.Softmax and nn.LogSoftmax.

Against a float64 NumPy reference from the formulas and PyTorch (``torch.softmax`` /
``torch.log_softmax`` with autograd), float32 and float64, every dimension (negative ones too) of
0-D to 5-D arrays, including dimensions with more than one block of columns; -inf, +inf and NaN
entries and rows entirely -inf (as PyTorch: NaN); huge values (no overflow); empty arrays;
non-contiguous inputs; thread counts and sub-batches (identical results); float64 gradient checks;
bad arguments.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DTYPES, assert_close

import convx
import convx._batching
from convx import nn
from convx.functional import log_softmax, log_softmax_backward, softmax, softmax_backward

DTYPE_IDS = ["float32", "float64"]
KINDS = ["softmax", "log_softmax"]
SHAPES = [(5,), (3, 7), (2, 70, 3, 5), (4, 3, 130), (2, 3, 4, 5, 6), (1, 1), (6, 1, 2)]
CASES = [(shape, dim) for shape in SHAPES for dim in range(-len(shape), len(shape))]


@pytest.fixture
def restore_threads():
    original = convx.get_num_threads()
    yield original
    convx.set_num_threads(original)


def reference(kind, x, grad_out, dim):
    """Forward and input gradient in float64, from the formulas."""
    x64, g64 = x.astype(np.float64), grad_out.astype(np.float64)
    shifted = x64 - x64.max(axis=dim, keepdims=True)
    log_sum = np.log(np.exp(shifted).sum(axis=dim, keepdims=True))
    log_y = shifted - log_sum
    y = np.exp(log_y)
    if kind == "softmax":
        return y, y * (g64 - (g64 * y).sum(axis=dim, keepdims=True))
    return log_y, g64 - y * g64.sum(axis=dim, keepdims=True)


def run(kind, x, grad_out, dim):
    forward, backward = (softmax, softmax_backward) if kind == "softmax" else (log_softmax, log_softmax_backward)
    y = forward(x, dim)
    return y, backward(grad_out, y, dim)


def run_torch(torch, kind, x, grad_out, dim):
    x_t = torch.from_numpy(np.array(x, copy=True)).requires_grad_(True)
    y = getattr(torch, kind)(x_t, dim)
    y.backward(torch.from_numpy(np.array(grad_out, copy=True)))
    return y.detach().numpy(), x_t.grad.numpy()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape, dim", CASES, ids=str)
def test_matches_reference_and_torch(shape, dim, kind, dtype, torch, rng):
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    grad_out = rng.standard_normal(shape).astype(dtype)
    y, grad_x = run(kind, x, grad_out, dim)
    assert y.shape == grad_x.shape == shape and y.dtype == grad_x.dtype == dtype and y.flags.c_contiguous
    for ours, ref, theirs in zip((y, grad_x), reference(kind, x, grad_out, dim), run_torch(torch, kind, x, grad_out, dim)):
        assert_close(ours, ref, dtype)
        assert_close(ours, theirs, dtype)
    if kind == "softmax":
        assert_close(y.sum(axis=dim), np.ones(y.sum(axis=dim).shape), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_zero_dimensional_and_empty(kind, dtype, torch):
    for shape, dim in [((), 0), ((), -1), ((0, 5), 1), ((3, 0), 1), ((3, 0), 0), ((0, 4, 2), 1)]:
        x = np.zeros(shape, dtype)
        y, grad_x = run(kind, x, np.ones(shape, dtype), dim)
        theirs = run_torch(torch, kind, x, np.ones(shape, dtype), dim)
        assert y.shape == shape and y.dtype == dtype
        np.testing.assert_array_equal(y, theirs[0])
        np.testing.assert_array_equal(grad_x, theirs[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dim", [0, 1], ids=["strided", "contiguous"])
def test_infinities_and_nan_as_torch(dim, kind, dtype, torch, rng):
    """Rows (or columns) with -inf entries, only -inf (NaN, as PyTorch), +inf (NaN) and NaN."""
    rows = np.array([
        [0.0, -np.inf, 1.0, 2.0],
        [-np.inf, -np.inf, -np.inf, -np.inf],
        [-np.inf, 3.0, -np.inf, -np.inf],
        [np.inf, 1.0, 2.0, 3.0],
        [np.nan, 1.0, 2.0, 3.0],
        [1.0, 2.0, 3.0, 4.0],
    ], dtype=dtype)
    x = rows if dim == 1 else np.ascontiguousarray(rows.T)
    grad_out = rng.standard_normal(x.shape).astype(dtype)
    y, grad_x = run(kind, x, grad_out, dim)
    theirs = run_torch(torch, kind, x, grad_out, dim)
    np.testing.assert_allclose(y, theirs[0], rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(grad_x, theirs[1], rtol=1e-6, atol=1e-6, equal_nan=True)
    finite_row = y[0] if dim == 1 else y[:, 0]
    assert finite_row[1] == (0.0 if kind == "softmax" else -np.inf)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dim", [0, -1])
def test_huge_values_do_not_overflow(dim, kind, dtype, torch, rng):
    big = float(np.finfo(dtype).max) / 4
    x = np.array([[big, big * 0.999, -big], [1e4, 1e4 + 1, 1e4 - 5], [-1e4, -1e4 - 1, -1e4 + 2]], dtype=dtype)
    grad_out = rng.standard_normal(x.shape).astype(dtype)
    y, grad_x = run(kind, x, grad_out, dim)
    theirs = run_torch(torch, kind, x, grad_out, dim)
    assert np.all(np.isfinite(y) | (y == -np.inf))
    np.testing.assert_allclose(y, theirs[0], rtol=1e-6)
    np.testing.assert_allclose(grad_x, theirs[1], rtol=1e-5, atol=1e-6)
    expected = reference(kind, x[1:], grad_out[1:], dim)
    assert_close(run(kind, x[1:], grad_out[1:], dim)[0], expected[0], dtype)


def test_non_contiguous_inputs(rng):
    base = rng.standard_normal((6, 8, 10))
    x = base.transpose(2, 0, 1)[::2, :, ::3]
    grad_out = rng.standard_normal((10, 6, 8)).transpose(0, 1, 2)[::2, :, ::3]
    for kind in KINDS:
        for dim in range(3):
            y, grad_x = run(kind, x, grad_out, dim)
            expected_y, expected_grad = run(kind, x.copy(), grad_out.copy(), dim)
            np.testing.assert_array_equal(y, expected_y)
            np.testing.assert_array_equal(grad_x, expected_grad)
            for ours, ref in zip((y, grad_x), reference(kind, x, grad_out, dim)):
                assert_close(ours, ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_thread_counts_and_sub_batches_give_identical_results(dtype, rng, restore_threads, monkeypatch):
    x = (3 * rng.standard_normal((6, 150, 20, 9))).astype(dtype)
    grad_out = rng.standard_normal(x.shape).astype(dtype)

    def every():
        return [part for kind in KINDS for dim in (-1, 1, 0) for part in run(kind, x, grad_out, dim)]

    convx.set_num_threads(1)
    whole = every()
    for n_threads in (2, 3):
        convx.set_num_threads(n_threads)
        for expected, actual in zip(whole, every(), strict=True):
            np.testing.assert_array_equal(actual, expected)
    monkeypatch.setattr(convx._batching, "SUB_BATCH_WORK", 1)
    for expected, actual in zip(whole, every(), strict=True):
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layer_class", [nn.Softmax, nn.LogSoftmax])
def test_layers(layer_class, dtype, torch, rng):
    x = rng.standard_normal((3, 5, 4)).astype(dtype)
    grad_out = rng.standard_normal(x.shape).astype(dtype)
    for dim in (1, -1):
        layer = layer_class(dim)
        reference_layer = getattr(torch.nn, layer_class.__name__)(dim)
        x_t = torch.from_numpy(x.copy()).requires_grad_(True)
        out_t = reference_layer(x_t)
        out_t.backward(torch.from_numpy(grad_out))
        assert_close(layer(x), out_t.detach().numpy())
        assert_close(layer.backward(grad_out), x_t.grad.numpy())
        assert layer.params == {} and repr(layer) == f"{layer_class.__name__}(dim={dim})"
    with pytest.raises(RuntimeError, match="needs a preceding forward"):
        layer.backward(grad_out)


@pytest.mark.parametrize("layer_class", [nn.Softmax, nn.LogSoftmax])
@pytest.mark.parametrize("shape, dim", [((3, 4), 1), ((2, 5, 3, 2), 1), ((4, 3), 0), ((2, 3, 70), -1)], ids=str)
def test_gradcheck(layer_class, shape, dim, rng):
    assert convx.gradcheck(layer_class(dim), 2 * rng.standard_normal(shape))


def test_cross_entropy_uses_the_same_log_softmax(rng):
    logits = rng.standard_normal((4, 5, 3))
    target = rng.integers(0, 5, (4, 3))
    loss = nn.CrossEntropyLoss(reduction="none")(logits, target)
    expected = -np.take_along_axis(log_softmax(logits, 1), target[:, None], axis=1)[:, 0]
    np.testing.assert_array_equal(loss, expected)


def test_bad_arguments(rng):
    x = rng.standard_normal((2, 3))
    with pytest.raises(IndexError, match=r"dim must be in \[-2, 1\] for an array of shape \(2, 3\), got 2"):
        softmax(x, 2)
    with pytest.raises(IndexError, match=r"dim must be in \[-2, 1\] .* got -3"):
        log_softmax(x, -3)
    with pytest.raises(IndexError, match=r"dim must be in \[-1, 0\] for an array of shape \(\), got 1"):
        softmax(np.array(1.0), 1)
    with pytest.raises(TypeError, match="dim must be an int, got 1.0"):
        softmax(x, 1.0)
    with pytest.raises(TypeError, match="dim must be an int, got None"):
        softmax(x, None)
    with pytest.raises(TypeError, match="x must have dtype float32 or float64, got dtype int64"):
        softmax(x.astype(np.int64), 0)
    with pytest.raises(ValueError, match=r"grad_out must have the output's shape and dtype \(2, 3\) float64, got "
                                         r"\(3, 2\) float64"):
        softmax_backward(x.T, x, 0)
    with pytest.raises(ValueError, match="grad_out must have the output's shape and dtype"):
        log_softmax_backward(x.astype(np.float32), x, 0)
    with pytest.raises(TypeError, match="dim must be an int"):
        nn.Softmax("1")
    layer = nn.LogSoftmax(3)
    with pytest.raises(IndexError, match="dim must be in"):
        layer(x)
