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
        (np.zeros(3), np.array([0]), ValueError, r"shape \(\)"),
        (np.zeros((2, 3, 4)), np.zeros((2, 3)), ValueError, "probability target must have the logits' shape"),
        (np.zeros((2, 3)), np.array([0, -100, 5]), ValueError, r"shape \(2,\)"),
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
        nn.CrossEntropyLoss(reduction="average")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("target_kind", ["indices", "ignored", "probabilities"])
@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 2, 5), (4,)], ids=["NC", "NCHW", "C"])
def test_cross_entropy_options_match_torch(shape, target_kind, weighted, label_smoothing, reduction, dtype, torch,
                                           rng):
    """weight, ignore_index, label_smoothing, every reduction, spatial and unbatched logits, class
    probabilities: loss and logits gradient as torch.nn.CrossEntropyLoss with autograd."""
    classes = shape[0] if len(shape) == 1 else shape[1]
    logits = (3 * rng.standard_normal(shape)).astype(dtype)
    sample_shape = () if len(shape) == 1 else (shape[0],) + shape[2:]
    if target_kind == "probabilities":
        target = rng.random(shape).astype(dtype)
        target /= target.sum(axis=0 if len(shape) == 1 else 1, keepdims=True)
    else:
        target = rng.integers(0, classes, sample_shape)
        if target_kind == "ignored":
            target = np.where(rng.random(sample_shape) < 0.4, 2, target)
    options = dict(reduction=reduction, label_smoothing=label_smoothing)
    if target_kind == "ignored":
        options["ignore_index"] = 2
    weight = (rng.random(classes) + 0.5).astype(dtype) if weighted else None
    loss_fn = nn.CrossEntropyLoss(weight=weight, **options)
    torch_fn = torch.nn.CrossEntropyLoss(weight=None if weight is None else torch.from_numpy(weight), **options)
    leaf = torch.from_numpy(logits.copy()).requires_grad_(True)
    expected = torch_fn(leaf, torch.from_numpy(np.array(target)))
    loss = loss_fn(logits, target)
    grad_output = None
    if reduction == "none":
        grad_output = rng.standard_normal(sample_shape).astype(dtype)
        expected.backward(torch.from_numpy(np.array(grad_output)))
        assert loss.shape == sample_shape and loss.dtype == dtype
        assert_close(loss, expected.detach().numpy())
    else:
        expected.backward()
        assert isinstance(loss, float)
        np.testing.assert_allclose(loss, expected.item(), rtol=1e-5 if dtype == np.float32 else 1e-12)
    grad = loss_fn.backward(grad_output)
    assert grad.shape == logits.shape and grad.dtype == dtype
    assert_close(grad, leaf.grad.numpy())


def test_cross_entropy_mean_over_only_ignored_targets_is_nan_as_in_torch(torch):
    logits = np.zeros((2, 3))
    loss_fn = nn.CrossEntropyLoss(ignore_index=1)
    leaf = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    expected = torch.nn.CrossEntropyLoss(ignore_index=1)(leaf, torch.tensor([1, 1]))
    expected.backward()
    assert np.isnan(loss_fn(logits, np.array([1, 1]))) and np.isnan(expected.item())
    np.testing.assert_array_equal(loss_fn.backward(), leaf.grad.numpy())


def test_cross_entropy_rejects_bad_options():
    with pytest.raises(ValueError, match="label_smoothing must be a number in"):
        nn.CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"weight must have one entry per class, shape \(3,\)"):
        nn.CrossEntropyLoss(weight=np.ones(4))(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(TypeError, match="weight has dtype float32 but logits float64"):
        nn.CrossEntropyLoss(weight=np.ones(3, dtype=np.float32))(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(TypeError, match="ignore_index"):
        nn.CrossEntropyLoss(ignore_index=1.5)


# ---------------------------------------------------------------- element-wise regression and binary losses
def _elementwise_cases(rng, dtype):
    shape = (3, 4, 5)
    prediction = rng.standard_normal(shape).astype(dtype) * 2
    target = rng.standard_normal(shape).astype(dtype)
    prediction[0, 0, :2] = target[0, 0, :2]  # ties: the L1 gradient is 0 there, as PyTorch's sign
    probabilities = rng.uniform(0.02, 0.98, shape).astype(dtype)
    probabilities[0, 0, 0], probabilities[0, 0, 1] = 0.0, 1.0  # the clamped logs
    labels = rng.uniform(0, 1, shape).astype(dtype)
    labels[1] = (labels[1] > 0.5).astype(dtype)
    weight = rng.uniform(0.5, 2, (4, 1)).astype(dtype)
    pos_weight = rng.uniform(0.5, 3, (5,)).astype(dtype)
    return {
        "mse": (lambda r: nn.MSELoss(reduction=r), lambda t, r: t.nn.MSELoss(reduction=r), prediction, target),
        "l1": (lambda r: nn.L1Loss(reduction=r), lambda t, r: t.nn.L1Loss(reduction=r), prediction, target),
        "smooth_l1": (lambda r: nn.SmoothL1Loss(reduction=r, beta=0.7),
                      lambda t, r: t.nn.SmoothL1Loss(reduction=r, beta=0.7), prediction, target),
        "smooth_l1_beta0": (lambda r: nn.SmoothL1Loss(reduction=r, beta=0.0),
                            lambda t, r: t.nn.SmoothL1Loss(reduction=r, beta=0.0), prediction, target),
        "huber": (lambda r: nn.HuberLoss(reduction=r, delta=1.3), lambda t, r: t.nn.HuberLoss(reduction=r, delta=1.3),
                  prediction, target),
        "bce_logits": (lambda r: nn.BCEWithLogitsLoss(reduction=r), lambda t, r: t.nn.BCEWithLogitsLoss(reduction=r),
                       prediction * 20, labels),
        "bce_logits_weighted": (
            lambda r: nn.BCEWithLogitsLoss(weight=weight, reduction=r, pos_weight=pos_weight),
            lambda t, r: t.nn.BCEWithLogitsLoss(weight=t.from_numpy(weight), reduction=r,
                                                pos_weight=t.from_numpy(pos_weight)),
            prediction * 20, labels),
        "bce": (lambda r: nn.BCELoss(weight=weight, reduction=r),
                lambda t, r: t.nn.BCELoss(weight=t.from_numpy(weight), reduction=r), probabilities, labels),
    }


ELEMENTWISE = ["mse", "l1", "smooth_l1", "smooth_l1_beta0", "huber", "bce_logits", "bce_logits_weighted", "bce"]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_losses_match_torch(name, dtype, reduction, torch, rng):
    ours_fn, torch_fn, prediction, target = _elementwise_cases(rng, dtype)[name]
    loss_fn = ours_fn(reduction)
    loss = loss_fn(prediction, target)
    leaf = torch.from_numpy(prediction.copy()).requires_grad_(True)
    expected = torch_fn(torch, reduction)(leaf, torch.from_numpy(target))
    grad_output = rng.standard_normal(prediction.shape).astype(dtype)
    if reduction == "none":
        assert loss.dtype == dtype and loss.shape == prediction.shape
        assert_close(loss, expected.detach().numpy())
        expected.backward(torch.from_numpy(grad_output))
        grad = loss_fn.backward(grad_output)
    else:
        assert isinstance(loss, float)
        assert loss == pytest.approx(expected.item(), rel=10 * TOLERANCES[np.dtype(dtype)]["rtol"])
        expected.backward()
        grad = loss_fn.backward()
    assert grad.dtype == dtype and grad.shape == prediction.shape
    assert_close(grad, leaf.grad.numpy())


@pytest.mark.parametrize("name", [n for n in ELEMENTWISE if n not in ("l1", "smooth_l1_beta0")])
def test_elementwise_losses_gradcheck(name, rng):
    _, _, prediction, target = _elementwise_cases(rng, np.float64)[name]
    if name == "bce":
        prediction = np.clip(prediction, 0.05, 0.95)
    else:  # away from the kinks of the piecewise losses
        prediction = prediction / 20 if name.startswith("bce") else prediction
    loss_fn = _elementwise_cases(rng, np.float64)[name][0]("sum")
    assert convx.gradcheck(lambda p: loss_fn(p, target), prediction, backward=lambda g: g * loss_fn.backward())


def test_elementwise_losses_reject_bad_arguments(rng):
    with pytest.raises(ValueError, match="beta must be a non-negative number"):
        nn.SmoothL1Loss(beta=-1)
    with pytest.raises(ValueError, match="delta must be positive"):
        nn.HuberLoss(delta=0)
    with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum', 'none'\)"):
        nn.L1Loss(reduction="avg")
    with pytest.raises(ValueError, match="BCELoss takes probabilities in"):
        nn.BCELoss()(np.array([1.5]), np.array([1.0]))
    with pytest.raises(ValueError, match=r"weight of shape \(3,\) does not broadcast"):
        nn.BCEWithLogitsLoss(weight=np.ones(3))(np.zeros((2, 4)), np.zeros((2, 4)))
    with pytest.raises(TypeError, match="pos_weight has dtype float32"):
        nn.BCEWithLogitsLoss(pos_weight=np.ones(4, np.float32))(np.zeros((2, 4)), np.zeros((2, 4)))
    loss_fn = nn.MSELoss(reduction="none")
    loss_fn(np.zeros((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"grad_output must have the losses' shape \(2, 3\)"):
        loss_fn.backward(np.ones(3))
    loss_fn.backward(np.ones((2, 3)))  # the rejected grad_output left the forward's state
    reduced = nn.MSELoss()
    reduced(np.zeros(2), np.ones(2))
    with pytest.raises(ValueError, match="grad_output is for reduction='none' only"):
        reduced.backward(np.ones(2))
