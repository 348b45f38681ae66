"""Training and evaluation behaviour: Dropout masks and BatchNorm2d statistics, against torch."""

import numpy as np
import pytest
from conftest import DTYPES, assert_close

import convx
from convx import nn


# ----------------------------------------------------------------------------------- Dropout
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_dropout_training_zeroes_a_fraction_p_and_rescales(p, dtype):
    layer = nn.Dropout(p, rng=0)
    x = np.ones((200, 500), dtype=dtype)
    y = layer(x)
    assert y.dtype == dtype
    kept = y != 0
    # 100,000 Bernoulli draws: the kept fraction is within 0.5% of 1 - p.
    assert abs(kept.mean() - (1 - p)) < 5e-3
    np.testing.assert_allclose(y[kept], 1 / (1 - p), rtol=1e-6)
    grad_x = layer.backward(np.full_like(x, 3.0))
    np.testing.assert_array_equal(grad_x == 0, ~kept)
    np.testing.assert_allclose(grad_x[kept], 3 / (1 - p), rtol=1e-6)


def test_dropout_is_the_identity_in_evaluation_mode(rng):
    layer = nn.Dropout(0.5, rng=0).eval()
    x = rng.standard_normal((4, 5))
    y = layer(x)
    np.testing.assert_array_equal(y, x)
    assert y is not x
    np.testing.assert_array_equal(layer.backward(2 * x), 2 * x)
    layer.train()
    assert np.count_nonzero(layer(np.ones(1000))) < 1000


def test_dropout_extremes():
    x = np.ones((3, 4))
    np.testing.assert_array_equal(nn.Dropout(0.0)(x), x)
    layer = nn.Dropout(1.0)
    np.testing.assert_array_equal(layer(x), 0)
    np.testing.assert_array_equal(layer.backward(x), 0)


def test_dropout_masks_are_reproducible_from_a_seed():
    x = np.ones((10, 10))
    first, second = nn.Dropout(0.5, rng=7), nn.Dropout(0.5, rng=7)
    np.testing.assert_array_equal(first(x), second(x))
    np.testing.assert_array_equal(first(x), second(x))
    assert not np.array_equal(first(x), nn.Dropout(0.5, rng=8)(x))


def test_dropout_masks_do_not_depend_on_threads_or_sub_batches(monkeypatch):
    """Each element's mask is a hash of the forward's seed and the element's index."""
    import convx._batching

    x = np.arange(1, 200001, dtype=np.float64).reshape(400, 500)
    previous = convx.get_num_threads()
    try:
        results = []
        for n_threads, work in [(1, convx._batching.SUB_BATCH_WORK), (3, convx._batching.SUB_BATCH_WORK), (2, 999)]:
            convx.set_num_threads(n_threads)
            monkeypatch.setattr(convx._batching, "SUB_BATCH_WORK", work)
            layer = nn.Dropout(0.4, rng=5)
            results.append((layer(x), layer.backward(np.full_like(x, 2.0))))
    finally:
        convx.set_num_threads(previous)
    for y, grad in results[1:]:
        np.testing.assert_array_equal(y, results[0][0])
        np.testing.assert_array_equal(grad, results[0][1])


def test_dropout_in_place_overwrites_the_input_and_backward_still_works():
    x = np.arange(1.0, 101.0)
    expected_layer, layer = nn.Dropout(0.5, rng=3), nn.Dropout(0.5, inplace=True, rng=3)
    expected = expected_layer(x.copy())
    y = layer(x)
    assert y is x
    np.testing.assert_array_equal(x, expected)
    np.testing.assert_array_equal(layer.backward(np.ones(100)), expected_layer.backward(np.ones(100)))
    with pytest.raises(ValueError, match="inplace=True needs x writeable"):
        nn.Dropout(0.5, inplace=True)(np.ones((4, 4))[:, ::2])


def test_dropout_masks_of_successive_calls_and_neighbours_are_independent():
    layer = nn.Dropout(0.5, rng=11)
    first = (layer(np.ones(400000)) != 0).astype(float)
    second = (layer(np.ones(400000)) != 0).astype(float)
    # 400,000 fair coins: correlations of independent masks are within a few 1/sqrt(n) = 0.0016.
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.01
    assert abs(np.corrcoef(first[:-1], first[1:])[0, 1]) < 0.01


def test_dropout_rejects_bad_probability():
    for p in (-0.1, 1.5, "half", True):
        with pytest.raises(ValueError, match="probability"):
            nn.Dropout(p)


def test_dropout_backward_in_training_matches_finite_differences_for_a_fixed_mask(rng):
    layer = nn.Dropout(0.3, rng=0)
    x = rng.standard_normal((3, 4))
    mask = layer(x) / x
    # A fresh mask at every call would defeat finite differences; check with the mask frozen.
    assert convx.gradcheck(lambda a: a * mask, x, backward=lambda g: layer.backward(g))


# ------------------------------------------------------------------------------- BatchNorm2d
def _torch_bn(torch, ours, **kwargs):
    theirs = torch.nn.BatchNorm2d(ours.num_features, **kwargs)
    return theirs.to(torch.float64 if ours.dtype == np.float64 else torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "kwargs",
    [{}, dict(momentum=0.3, eps=1e-3), dict(momentum=None), dict(affine=False), dict(track_running_stats=False)],
    ids=["defaults", "momentum0.3", "cumulative", "no-affine", "no-running-stats"],
)
def test_batchnorm_training_then_evaluation_matches_torch(kwargs, dtype, torch, rng):
    ours = nn.BatchNorm2d(3, **kwargs, dtype=dtype)
    if ours.affine:
        ours.params["weight"][:] = rng.uniform(0.5, 1.5, 3)
        ours.params["bias"][:] = rng.standard_normal(3)
    theirs = _torch_bn(torch, ours, **kwargs)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    for step in range(3):
        x = (rng.standard_normal((4, 3, 5, 6)) * (step + 1) + step).astype(dtype)
        x_torch = torch.from_numpy(x.copy()).requires_grad_(True)
        y, y_torch = ours(x), theirs(x_torch)
        assert_close(y, y_torch.detach().numpy())
        grad_out = rng.standard_normal(y.shape).astype(dtype)
        y_torch.backward(torch.from_numpy(grad_out))
        assert_close(ours.backward(grad_out), x_torch.grad.numpy())
        for name, param in theirs.named_parameters():
            assert_close(ours.grads[name], param.grad.numpy())
            param.grad = None
    # Running statistics (unbiased variance, momentum or cumulative average) and their count.
    torch_state = theirs.state_dict()
    assert sorted(ours.state_dict()) == sorted(torch_state)
    for name, value in ours.state_dict().items():
        if value.dtype == np.int64:
            assert value == torch_state[name].item() == 3
        else:
            assert_close(value, torch_state[name].numpy())
    # Evaluation mode normalises with the running statistics (or still the batch's without them).
    ours.eval()
    theirs.eval()
    x = rng.standard_normal((2, 3, 4, 4)).astype(dtype)
    x_torch = torch.from_numpy(x.copy()).requires_grad_(True)
    y, y_torch = ours(x), theirs(x_torch)
    assert_close(y, y_torch.detach().numpy())
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    y_torch.backward(torch.from_numpy(grad_out))
    assert_close(ours.backward(grad_out), x_torch.grad.numpy())
    for name, param in theirs.named_parameters():
        assert_close(ours.grads[name], param.grad.numpy())
    if ours.track_running_stats:
        assert ours.buffers["num_batches_tracked"] == 3  # evaluation leaves the statistics alone


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_gradcheck(training, rng):
    layer = nn.BatchNorm2d(3, dtype=np.float64)
    layer.params["weight"][:] = rng.uniform(0.5, 1.5, 3)
    layer.params["bias"][:] = rng.standard_normal(3)
    layer.buffers["running_mean"][:] = rng.standard_normal(3)
    layer.buffers["running_var"][:] = rng.uniform(0.5, 2.0, 3)
    layer.train(training)
    before = layer.state_dict()
    assert convx.gradcheck(layer, rng.standard_normal((3, 3, 2, 4)))
    # gradcheck restores the running statistics its many forward calls updated.
    for name, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_batchnorm_needs_more_than_one_value_per_channel_when_training():
    layer = nn.BatchNorm2d(2)
    with pytest.raises(ValueError, match="more than one value per channel"):
        layer(np.ones((1, 2, 1, 1), dtype=np.float32))
    layer.eval()
    assert layer(np.ones((1, 2, 1, 1), dtype=np.float32)).shape == (1, 2, 1, 1)


def test_batchnorm_rejects_bad_arguments():
    with pytest.raises(ValueError, match="momentum"):
        nn.BatchNorm2d(3, momentum=1.5)
    with pytest.raises(ValueError, match="eps"):
        nn.BatchNorm2d(3, eps=-1.0)
    with pytest.raises(ValueError, match="expects 3 channels"):
        nn.BatchNorm2d(3)(np.ones((2, 4, 2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="4-dimensional"):
        nn.BatchNorm2d(3)(np.ones((3, 2, 2), dtype=np.float32))


def test_train_and_eval_reach_every_layer_of_a_sequential():
    model = nn.Sequential(nn.Dropout(), nn.Sequential(nn.BatchNorm2d(2), nn.ReLU()))
    assert model.eval() is model
    assert [layer.training for layer in (model, model[0], model[1], model[1][0])] == [False] * 4
    model.train()
    assert all(layer.training for layer in (model, model[0], model[1], model[1][0]))
    with pytest.raises(TypeError, match="mode must be a bool"):
        model.train("no")
