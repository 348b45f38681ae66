"""Channel dropout: nn.Dropout1d, nn.Dropout2d and nn.Dropout3d.

Whole channels zeroed (one draw per (sample, channel), from the same seeded hash as nn.Dropout),
the rest scaled by 1 / (1 - p); the kept fraction; the identity in evaluation mode; the backward
applying the forward's mask; p = 0 and p = 1; in place; PyTorch's reading of unbatched inputs
(Dropout2d's 3-D input as (N, C, L), with its warning); NaN in a dropped channel (NaN, as
PyTorch's x * 0); thread counts and sub-batches; bad arguments.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DTYPES

import convx
import convx._batching
from convx import nn

DTYPE_IDS = ["float32", "float64"]
LAYERS = [(nn.Dropout1d, (6, 5, 7)), (nn.Dropout2d, (6, 5, 4, 3)), (nn.Dropout3d, (6, 5, 2, 3, 2))]


def _channel_masks(y, planes):
    """Each channel's factor from the output of a forward on ones, checking the channel is uniform."""
    flat = y.reshape(planes, -1)
    np.testing.assert_array_equal(flat, flat[:, :1] * np.ones_like(flat))
    return flat[:, 0]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
@pytest.mark.parametrize("layer_class, shape", LAYERS, ids=lambda v: getattr(v, "__name__", ""))
def test_whole_channels_are_zeroed_or_scaled(layer_class, shape, p, dtype):
    layer = layer_class(p, rng=0)
    x = np.ones(shape, dtype=dtype)
    y = layer(x)
    assert y.dtype == dtype and y.shape == shape
    factors = _channel_masks(y, shape[0] * shape[1])
    kept = factors != 0
    np.testing.assert_allclose(factors[kept], 1 / (1 - p), rtol=1e-6)
    grad_x = layer.backward(np.full_like(x, 3.0))
    np.testing.assert_allclose(_channel_masks(grad_x, shape[0] * shape[1]), 3 * factors, rtol=1e-6)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.75])
def test_kept_fraction(p):
    y = nn.Dropout2d(p, rng=1)(np.ones((400, 250, 2, 2), dtype=np.float32))
    kept = y[:, :, 0, 0] != 0
    # 100,000 channels: the kept fraction is within 0.5% of 1 - p (more than 3 standard deviations).
    assert abs(kept.mean() - (1 - p)) < 5e-3
    # Neither the samples nor the channels are masked alike.
    assert abs(np.corrcoef(kept[:-1].ravel(), kept[1:].ravel())[0, 1]) < 0.02
    assert abs(np.corrcoef(kept[:, :-1].ravel(), kept[:, 1:].ravel())[0, 1]) < 0.02


def test_backward_applies_the_forwards_mask(rng):
    layer = nn.Dropout2d(0.4, rng=2)
    x = rng.standard_normal((3, 8, 5, 5))
    y = layer(x)
    factors = np.where(np.all(y == 0, axis=(2, 3)), 0.0, 1 / 0.6)[:, :, None, None]
    np.testing.assert_allclose(y, x * factors, rtol=1e-15)
    grad_out = rng.standard_normal(x.shape)
    np.testing.assert_allclose(layer.backward(grad_out), grad_out * factors, rtol=1e-15)


def test_backward_is_the_forwards_mask_in_a_gradient_check(rng):
    layer = nn.Dropout2d(0.3, rng=0)
    x = rng.standard_normal((2, 6, 3, 3))
    mask = layer(x) / x
    # The check recomputes the forward with the mask frozen; the layer's backward supplies the gradient.
    assert convx.gradcheck(lambda a: a * mask, x, backward=lambda g: layer.backward(g))


@pytest.mark.parametrize("layer_class, shape", LAYERS, ids=lambda v: getattr(v, "__name__", ""))
def test_evaluation_mode_and_extremes(layer_class, shape, rng):
    x = rng.standard_normal(shape)
    layer = layer_class(0.5, rng=0).eval()
    y = layer(x)
    np.testing.assert_array_equal(y, x)
    assert y is not x
    np.testing.assert_array_equal(layer.backward(2 * x), 2 * x)
    np.testing.assert_array_equal(layer_class(0.0)(x), x)
    dropped = layer_class(1.0)
    np.testing.assert_array_equal(dropped(x), 0)
    np.testing.assert_array_equal(dropped.backward(x), 0)


def test_nan_in_a_dropped_channel_stays_nan_as_in_torch(torch):
    x = np.full((1, 64, 2), np.nan)
    y = nn.Dropout1d(0.5, rng=0)(x)
    assert np.isnan(y).all()
    assert torch.isnan(torch.nn.functional.dropout1d(torch.from_numpy(x), 0.5, training=True)).all()


def test_unbatched_inputs_follow_torch(torch):
    # Dropout1d (C, L) and Dropout3d (C, D, H, W): one mask per channel (dimension 0).
    for layer, shape in [(nn.Dropout1d(0.5, rng=3), (40, 5)), (nn.Dropout3d(0.5, rng=3), (40, 2, 3, 2))]:
        y = layer(np.ones(shape))
        _channel_masks(y, shape[0])
        assert 0 < np.count_nonzero(y.reshape(shape[0], -1)[:, 0]) < shape[0]
    # Dropout2d (3-D): PyTorch reads it as (N, C, L), one mask per (n, c), and warns.
    with pytest.warns(UserWarning, match=r"received a 3-D input; as PyTorch, it is read as \(N, C, L\)"):
        y = nn.Dropout2d(0.5, rng=3)(np.ones((40, 6, 5)))
    factors = _channel_masks(y, 240).reshape(40, 6)
    assert not np.all(factors == factors[:, :1])  # not one mask per first-axis index
    with pytest.warns(UserWarning, match="dropout2d: Received a 3D input"):
        theirs = torch.nn.functional.dropout2d(torch.ones(40, 6, 5), 0.5, training=True).numpy()
    _channel_masks(theirs, 240)


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 0, 4, 4), (2, 3, 0, 4)], ids=str)
def test_empty_inputs(shape):
    layer = nn.Dropout2d(0.5, rng=0)
    y = layer(np.ones(shape))
    assert y.shape == shape
    assert layer.backward(np.ones(shape)).shape == shape


def test_masks_do_not_depend_on_threads_or_sub_batches(monkeypatch):
    x = np.arange(1, 2 * 300 * 17 * 9 + 1, dtype=np.float64).reshape(2, 300, 17, 9)
    previous = convx.get_num_threads()
    try:
        results = []
        for n_threads, work in [(1, convx._batching.SUB_BATCH_WORK), (3, convx._batching.SUB_BATCH_WORK), (2, 999)]:
            convx.set_num_threads(n_threads)
            monkeypatch.setattr(convx._batching, "SUB_BATCH_WORK", work)
            layer = nn.Dropout2d(0.4, rng=5)
            results.append((layer(x), layer.backward(np.full_like(x, 2.0))))
    finally:
        convx.set_num_threads(previous)
    for y, grad in results[1:]:
        np.testing.assert_array_equal(y, results[0][0])
        np.testing.assert_array_equal(grad, results[0][1])


def test_masks_are_reproducible_from_a_seed():
    x = np.ones((4, 16, 3, 3))
    first, second = nn.Dropout2d(0.5, rng=7), nn.Dropout2d(0.5, rng=7)
    np.testing.assert_array_equal(first(x), second(x))
    np.testing.assert_array_equal(first(x), second(x))
    assert not np.array_equal(first(x), nn.Dropout2d(0.5, rng=8)(x))


def test_in_place(rng):
    x = rng.standard_normal((3, 10, 4, 4))
    expected_layer, layer = nn.Dropout2d(0.5, rng=3), nn.Dropout2d(0.5, inplace=True, rng=3)
    expected = expected_layer(x.copy())
    y = layer(x)
    assert y is x
    np.testing.assert_array_equal(x, expected)
    grad_out = rng.standard_normal(x.shape)
    np.testing.assert_array_equal(layer.backward(grad_out), expected_layer.backward(grad_out))
    assert repr(layer) == "Dropout2d(p=0.5, inplace=True)"
    with pytest.raises(ValueError, match="inplace=True needs x writeable"):
        nn.Dropout2d(0.5, inplace=True)(np.ones((2, 4, 4, 4))[:, ::2])
    # In a Sequential, overwriting what an earlier layer kept makes that layer's backward refuse.
    model = nn.Sequential(nn.Sigmoid(), nn.Dropout2d(0.5, inplace=True, rng=0))
    model(rng.standard_normal((2, 3, 4, 4)))
    with pytest.raises(RuntimeError, match="overwritten by the in-place Dropout2d"):
        model.backward(np.ones((2, 3, 4, 4)))


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"x must be 3 or 4-dimensional, got an array of shape \(4, 4\)"):
        nn.Dropout2d()(np.ones((4, 4)))
    with pytest.raises(ValueError, match="x must be 2 or 3-dimensional"):
        nn.Dropout1d()(np.ones((2, 2, 2, 2)))
    with pytest.raises(ValueError, match="x must be 4 or 5-dimensional"):
        nn.Dropout3d()(np.ones((2, 2, 2)))
    for p in (-0.1, 1.5, "half", True):
        with pytest.raises(ValueError, match="dropout probability p must be a number in"):
            nn.Dropout2d(p)
    with pytest.raises(TypeError, match="inplace must be a bool"):
        nn.Dropout2d(0.5, inplace=1)
    layer = nn.Dropout2d(0.5, rng=0)
    layer(np.ones((2, 3, 4, 4)))
    with pytest.raises(ValueError, match="grad_out must have the forward output's shape"):
        layer.backward(np.ones((2, 3, 4, 5)))
