"""Losses against torch.nn.functional and finite differences."""

import numpy as np
import pytest
from conftest import DTYPES, TOLERANCES, assert_close

import convx
from convx import nn


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1.0, 1e4], ids=["ordinary", "huge-logits"])
def test_cross_entropy_matches_torch(scale, dtype, reduction, torch, rng):
    logits = (scale * rng.standard_normal((7, 5))).astype(dtype)
    target = rng.integers(0, 5, 7)
    loss_fn = nn.CrossEntropyLoss(reduction=reduction)
    loss = loss_fn(logits, target)
    grad = loss_fn.backward()
    logits_torch = torch.from_numpy(logits.copy()).requires_grad_(True)
    loss_torch = torch.nn.functional.cross_entropy(logits_torch, torch.from_numpy(target), reduction=reduction)
    loss_torch.backward()
    assert isinstance(loss, float) and np.isfinite(loss)
    assert loss == pytest.approx(loss_torch.item(), rel=10 * TOLERANCES[np.dtype(dtype)]["rtol"])
    assert grad.dtype == dtype
    assert_close(grad, logits_torch.grad.numpy())


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_gradcheck(reduction, rng):
    target = rng.integers(0, 4, 6)
    loss_fn = nn.CrossEntropyLoss(reduction=reduction)
    assert convx.gradcheck(lambda z: loss_fn(z, target), rng.standard_normal((6, 4)), backward=lambda g: g * loss_fn.backward())


def test_cross_entropy_of_a_confident_correct_prediction_is_zero():
    loss_fn = nn.CrossEntropyLoss()
    assert loss_fn(np.array([[1000.0, -1000.0]]), np.array([0])) == 0.0
    np.testing.assert_array_equal(loss_fn.backward(), [[0.0, 0.0]])


@pytest.mark.parametrize(
    "logits, target, error, match",
    [
        (np.zeros((2, 3)), np.array([0, 3]), ValueError, r"class indices in \[0, 3\), got 3"),
        (np.zeros((2, 3)), np.array([-1, 0]), ValueError, "got -1"),
        (np.zeros((2, 3)), np.array([0.0, 1.0]), TypeError, "integer class indices"),
        (np.zeros((2, 3)), np.array([0, 1, 2]), ValueError, r"shape \(2,\)"),
        (np.zeros((2, 3), dtype=np.int64), np.array([0, 1]), TypeError, "float32 or float64"),
        (np.zeros(3), np.array([0]), ValueError, "2-dimensional"),
    ],
)
def test_cross_entropy_rejects_bad_inputs(logits, target, error, match):
    with pytest.raises(error, match=match):
        nn.CrossEntropyLoss()(logits, target)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_matches_torch(dtype, reduction, torch, rng):
    prediction = rng.standard_normal((3, 4, 2)).astype(dtype)
    target = rng.standard_normal((3, 4, 2)).astype(dtype)
    loss_fn = nn.MSELoss(reduction=reduction)
    loss = loss_fn(prediction, target)
    grad = loss_fn.backward()
    prediction_torch = torch.from_numpy(prediction.copy()).requires_grad_(True)
    loss_torch = torch.nn.functional.mse_loss(prediction_torch, torch.from_numpy(target), reduction=reduction)
    loss_torch.backward()
    assert loss == pytest.approx(loss_torch.item(), rel=10 * TOLERANCES[np.dtype(dtype)]["rtol"])
    assert grad.dtype == dtype
    assert_close(grad, prediction_torch.grad.numpy())


def test_mse_gradcheck(rng):
    target = rng.standard_normal((4, 3))
    loss_fn = nn.MSELoss()
    assert convx.gradcheck(lambda p: loss_fn(p, target), rng.standard_normal((4, 3)), backward=lambda g: g * loss_fn.backward())


def test_mse_rejects_bad_inputs():
    with pytest.raises(ValueError, match="one shape"):
        nn.MSELoss()(np.zeros(3), np.zeros(4))
    with pytest.raises(TypeError, match="share one dtype"):
        nn.MSELoss()(np.zeros(3), np.zeros(3, dtype=np.float32))


@pytest.mark.parametrize("loss_fn", [nn.CrossEntropyLoss(), nn.MSELoss()], ids=repr)
def test_loss_backward_needs_a_preceding_forward(loss_fn):
    with pytest.raises(RuntimeError, match=r"backward\(\) needs a preceding forward"):
        loss_fn.backward()
    loss_fn(np.zeros((2, 3)), np.array([0, 1]) if isinstance(loss_fn, nn.CrossEntropyLoss) else np.ones((2, 3)))
    loss_fn.backward()
    with pytest.raises(RuntimeError, match=r"backward\(\) needs a preceding forward"):
        loss_fn.backward()


def test_loss_rejects_unknown_reduction():
    with pytest.raises(ValueError, match="reduction must be one of"):
        nn.CrossEntropyLoss(reduction="none")
