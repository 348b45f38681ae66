"""convx.nn.utils against torch.nn.utils: gradient clipping by norm and by value, flat parameter
vectors; in-place writes into the gradient arrays, None gradients, non-finite norms, arguments."""

import math

import numpy as np
import pytest
from conftest import DTYPES, TOLERANCES, assert_close

from convx import nn
from convx.nn import utils


def _model(dtype):
    return nn.Sequential(nn.Conv2d(2, 3, 3, dtype=dtype, rng=0), nn.Flatten(), nn.Linear(5, 4, dtype=dtype, rng=1),
                         nn.Linear(4, 1, bias=False, dtype=dtype, rng=2))


def _with_gradients(dtype, rng, torch, scale=1.0, none=()):
    """A model whose gradients are random (the ``none`` indices left None), and torch tensors
    holding copies of the same gradients."""
    model = _model(dtype)
    tensors = []
    for i, param in enumerate(model.parameters()):
        tensor = torch.from_numpy(param.data.copy()).requires_grad_(True)
        if i not in none:
            grad = (scale * rng.standard_normal(param.data.shape)).astype(dtype)
            param.module.grads[param.key] = grad
            tensor.grad = torch.from_numpy(grad.copy())
        tensors.append(tensor)
    return model, tensors


def _assert_grads_match(model, tensors):
    for param, tensor in zip(model.parameters(), tensors):
        if tensor.grad is None:
            assert param.grad is None
        else:
            assert param.grad.dtype == param.data.dtype
            assert_close(param.grad, tensor.grad.numpy())


NORM_TYPES = [1, 2.0, 3.5, math.inf, "inf"]


@pytest.mark.parametrize("none", [(), (1, 3)], ids=["all_grads", "some_None"])
@pytest.mark.parametrize("max_norm", [0.5, 1e4, 0.0])
@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_grad_norm_matches_torch(dtype, norm_type, max_norm, none, rng, torch):
    model, tensors = _with_gradients(dtype, rng, torch, none=none)
    arrays = [p.grad for p in model.parameters()]
    total = utils.clip_grad_norm_(model.parameters(), max_norm, norm_type=norm_type)
    torch_total = torch.nn.utils.clip_grad_norm_(tensors, max_norm, norm_type=norm_type)
    assert type(total) is float
    assert total == pytest.approx(float(torch_total), rel=TOLERANCES[np.dtype(dtype)]["rtol"])
    _assert_grads_match(model, tensors)
    # The very arrays backward stored were scaled, not replaced.
    for param, array in zip(model.parameters(), arrays):
        assert param.grad is array


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_grad_norm_reference(dtype, rng):
    """The formula, independently of PyTorch: total = ||(||g_1||, ..., ||g_k||)||_p, scale min(1, max/(total+1e-6))."""
    grads = [rng.standard_normal(shape).astype(dtype) for shape in [(3, 4), (5,), (2, 1, 3)]]
    for p in (1.0, 2.0, 3.5, math.inf):
        model = nn.Sequential(*[nn.Linear(1, 1, dtype=dtype, rng=0) for _ in grads])
        params = [param for param in model.parameters() if param.key == "bias"]
        for param, grad in zip(params, grads):
            param.module.params["bias"] = np.zeros(grad.shape, dtype=dtype)
            param.module.grads["bias"] = grad.copy()
        flat = np.concatenate([g.astype(np.float64).ravel() for g in grads])
        expected = np.abs(flat).max() if p == math.inf else (np.abs(flat) ** p).sum() ** (1 / p)
        total = utils.clip_grad_norm_(params, 1.0, norm_type=p)
        assert total == pytest.approx(expected, rel=1e-5 if dtype == np.float32 else 1e-12)
        coefficient = min(1.0, 1.0 / (expected + 1e-6))
        for param, grad in zip(params, grads):
            assert_close(param.grad, (grad * coefficient).astype(dtype))


def test_clip_grad_norm_single_parameter_and_no_gradients(torch):
    layer = nn.Linear(3, 2, dtype=np.float64, rng=0)
    assert utils.clip_grad_norm_(layer.parameters(), 1.0) == 0.0  # no backward yet
    layer.grads["weight"] = np.full((2, 3), 2.0)
    total = utils.clip_grad_norm_(layer.parameters()[0], max_norm=1.0)
    assert total == pytest.approx(math.sqrt(24.0))
    assert np.linalg.norm(layer.grads["weight"]) == pytest.approx(1.0, rel=1e-5)
    assert layer.grads["bias"] is None
    assert utils.clip_grad_norm_(iter(layer.parameters()), 10.0) == pytest.approx(1.0, rel=1e-5)
    assert utils.clip_grad_norm_([], 1.0) == 0.0


def test_clip_grad_norm_mixed_dtypes(rng, torch):
    model = nn.Sequential(nn.Linear(3, 2, dtype=np.float32, rng=0), nn.Linear(2, 2, dtype=np.float64, rng=1))
    tensors = []
    for param in model.parameters():
        grad = rng.standard_normal(param.data.shape).astype(param.data.dtype)
        param.module.grads[param.key] = grad
        tensors.append(torch.from_numpy(param.data.copy()).requires_grad_(True))
        tensors[-1].grad = torch.from_numpy(grad.copy())
    total = utils.clip_grad_norm_(model.parameters(), 0.3)
    torch_total = torch.nn.utils.clip_grad_norm_(tensors, 0.3)
    assert total == pytest.approx(float(torch_total), rel=1e-6)
    for param, tensor in zip(model.parameters(), tensors):
        assert param.grad.dtype == param.data.dtype
        assert_close(param.grad, tensor.grad.numpy())


def test_clip_grad_norm_shared_and_strided_gradients(torch):
    """A gradient array held by two parameters is scaled once; a non-contiguous one in place."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False, dtype=np.float64, rng=0),
                          nn.Linear(2, 2, bias=False, dtype=np.float64, rng=1))
    shared = np.full((2, 2), 3.0)
    model[0].grads["weight"] = shared
    model[1].grads["weight"] = shared
    total = utils.clip_grad_norm_(model.parameters(), 1.0)
    assert total == pytest.approx(6.0)
    assert np.linalg.norm(shared) == pytest.approx(1.0, rel=1e-5)
    base = np.arange(8.0).reshape(2, 4)
    strided = base[:, ::2]
    model[1].grads["weight"] = strided
    model[0].grads["weight"] = None
    total = utils.clip_grad_norm_(model.parameters(), 1.0)
    tensor = torch.from_numpy(np.arange(8.0).reshape(2, 4)[:, ::2].copy()).requires_grad_(True)
    tensor.grad = tensor.detach().clone()
    assert total == pytest.approx(float(torch.nn.utils.clip_grad_norm_([tensor], 1.0)))
    assert model[1].grads["weight"] is strided
    assert_close(strided, tensor.grad.numpy())
    assert_close(base[:, 1::2], np.arange(8.0).reshape(2, 4)[:, 1::2])  # the other columns untouched


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("norm_type", [2.0, math.inf, 1.0])
@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_grad_norm_nonfinite(dtype, norm_type, bad, rng, torch):
    model, tensors = _with_gradients(dtype, rng, torch)
    first = model.parameters()[0]
    first.grad[0, 0, 0, 0] = bad
    tensors[0].grad[0, 0, 0, 0] = bad
    before = [p.grad.copy() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="cannot be clipped; pass error_if_nonfinite=False"):
        utils.clip_grad_norm_(model.parameters(), 1.0, norm_type=norm_type, error_if_nonfinite=True)
    with pytest.raises(RuntimeError):
        torch.nn.utils.clip_grad_norm_(tensors, 1.0, norm_type=norm_type, error_if_nonfinite=True)
    for param, old in zip(model.parameters(), before):
        np.testing.assert_array_equal(param.grad, old)
    total = utils.clip_grad_norm_(model.parameters(), 1.0, norm_type=norm_type)
    torch_total = float(torch.nn.utils.clip_grad_norm_(tensors, 1.0, norm_type=norm_type))
    assert total == torch_total or (math.isnan(total) and math.isnan(torch_total))
    for param, tensor in zip(model.parameters(), tensors):
        np.testing.assert_array_equal(param.grad, tensor.grad.numpy())


@pytest.mark.parametrize("none", [(), (0, 2)], ids=["all_grads", "some_None"])
@pytest.mark.parametrize("clip_value", [0.0, 0.3, 2, 100.0])
@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_grad_value_matches_torch(dtype, clip_value, none, rng, torch):
    model, tensors = _with_gradients(dtype, rng, torch, none=none)
    for param, tensor in zip(model.parameters(), tensors):
        if param.grad is not None:
            param.grad.flat[0] = np.nan
            tensor.grad.view(-1)[0] = math.nan
    arrays = [p.grad for p in model.parameters()]
    assert utils.clip_grad_value_(model.parameters(), clip_value) is None
    torch.nn.utils.clip_grad_value_(tensors, clip_value)
    for param, tensor, array in zip(model.parameters(), tensors, arrays):
        assert param.grad is array
        if tensor.grad is not None:
            np.testing.assert_array_equal(param.grad, tensor.grad.numpy())
            assert np.isnan(param.grad.flat[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_parameters_to_vector_and_back(dtype, torch):
    model = _model(dtype)
    tensors = [torch.from_numpy(p.data.copy()) for p in model.parameters()]
    vector = utils.parameters_to_vector(model.parameters())
    np.testing.assert_array_equal(vector, torch.nn.utils.parameters_to_vector(tensors).numpy())
    assert vector.dtype == dtype and vector.ndim == 1 and vector.flags.c_contiguous
    first = model.parameters()[0].data.flat[0]
    vector[0] += 1.0  # a copy: the model is not changed
    assert model.parameters()[0].data.flat[0] == first
    arrays = [p.data for p in model.parameters()]
    new = np.arange(vector.size, dtype=dtype)
    utils.vector_to_parameters(new, model.parameters())
    torch.nn.utils.vector_to_parameters(torch.from_numpy(new.copy()), tensors)
    for param, array, tensor in zip(model.parameters(), arrays, tensors):
        assert param.data is array  # written in place: optimizers keep their references
        np.testing.assert_array_equal(param.data, tensor.numpy())
    np.testing.assert_array_equal(utils.parameters_to_vector(model.parameters()), new)


def test_vector_functions_bad_arguments():
    layer = nn.Linear(2, 1, rng=0)
    with pytest.raises(ValueError, match="vec has 4 entries, the parameters 3"):
        utils.vector_to_parameters(np.zeros(4, dtype=np.float32), layer.parameters())
    with pytest.raises(ValueError, match=r"vec must be 1-D, got shape \(1, 3\)"):
        utils.vector_to_parameters(np.zeros((1, 3), dtype=np.float32), layer.parameters())
    with pytest.raises(TypeError, match="vec has dtype float64, parameter 'weight' float32"):
        utils.vector_to_parameters(np.zeros(3), layer.parameters())
    with pytest.raises(TypeError, match="vec must be a NumPy array, got list"):
        utils.vector_to_parameters([0.0, 0.0, 0.0], layer.parameters())
    before = layer.params["weight"].copy()
    assert np.array_equal(layer.params["weight"], before)
    mixed = nn.Sequential(nn.Linear(2, 1, rng=0), nn.Linear(1, 1, dtype=np.float64, rng=0))
    with pytest.raises(TypeError, match="the parameters must share one dtype"):
        utils.parameters_to_vector(mixed.parameters())
    with pytest.raises(ValueError, match="got no parameters"):
        utils.parameters_to_vector([])


def test_clip_bad_arguments():
    layer = nn.Linear(2, 1, rng=0)
    layer.grads["weight"] = np.ones((1, 2), dtype=np.float32)
    params = layer.parameters()
    cases = [
        (lambda: utils.clip_grad_norm_(layer, 1.0), TypeError, "pass model.parameters"),
        (lambda: utils.clip_grad_norm_(np.ones(3), 1.0), TypeError, "parameters must be a Parameter or an iterable"),
        (lambda: utils.clip_grad_norm_([np.ones(3)], 1.0), TypeError, r"parameters\[0\] must be a Parameter"),
        (lambda: utils.clip_grad_norm_(params, -1.0), ValueError, "max_norm must be at least 0, got -1.0"),
        (lambda: utils.clip_grad_norm_(params, math.nan), ValueError, "max_norm must be at least 0, got nan"),
        (lambda: utils.clip_grad_norm_(params, "1"), TypeError, "max_norm must be a real number"),
        (lambda: utils.clip_grad_norm_(params, 1.0, norm_type=0), ValueError, "norm_type must be a positive"),
        (lambda: utils.clip_grad_norm_(params, 1.0, norm_type=-2.0), ValueError, "norm_type must be a positive"),
        (lambda: utils.clip_grad_norm_(params, 1.0, norm_type="fro"), TypeError, "norm_type must be a positive"),
        (lambda: utils.clip_grad_norm_(params, 1.0, error_if_nonfinite=1), TypeError,
         "error_if_nonfinite must be a bool"),
        (lambda: utils.clip_grad_value_(params, -0.5), ValueError, "clip_value must be at least 0, got -0.5"),
        (lambda: utils.clip_grad_value_(params, None), TypeError, "clip_value must be a real number"),
        (lambda: utils.clip_grad_value_(layer, 1.0), TypeError, "pass model.parameters"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
    np.testing.assert_array_equal(layer.grads["weight"], np.ones((1, 2), dtype=np.float32))


def test_clip_refuses_gradients_it_cannot_write():
    layer = nn.Linear(2, 1, rng=0)
    grad = np.ones((1, 2), dtype=np.float32)
    grad.flags.writeable = False
    layer.grads["weight"] = grad
    with pytest.raises(ValueError, match="gradient of 'weight' is a read-only array"):
        utils.clip_grad_norm_(layer.parameters(), 0.1)
    with pytest.raises(ValueError, match="read-only"):
        utils.clip_grad_value_(layer.parameters(), 0.1)
    layer.grads["weight"] = np.ones((1, 2), dtype=np.int64)
    with pytest.raises(TypeError, match="gradient of 'weight' must be a float32 or float64 array"):
        utils.clip_grad_norm_(layer.parameters(), 0.1)


def test_clipping_in_a_training_step(torch, rng):
    """backward, clip, step: the parameters follow PyTorch's through the same sequence."""
    from convx import optim

    model = nn.Linear(3, 2, dtype=np.float64, rng=0)
    torch_model = torch.nn.Linear(3, 2, dtype=torch.float64)
    with torch.no_grad():
        torch_model.weight.copy_(torch.from_numpy(model.params["weight"]))
        torch_model.bias.copy_(torch.from_numpy(model.params["bias"]))
    optimizer = optim.SGD(model.parameters(), lr=0.5)
    torch_optimizer = torch.optim.SGD(torch_model.parameters(), lr=0.5)
    for _ in range(3):
        x = rng.standard_normal((4, 3)) * 10
        optimizer.zero_grad()
        torch_optimizer.zero_grad()
        model.backward(model(x))  # the gradient of sum(y**2) / 2
        out = torch_model(torch.from_numpy(x))
        (out**2 / 2).sum().backward()
        total = utils.clip_grad_norm_(model.parameters(), 1.0)
        torch_total = torch.nn.utils.clip_grad_norm_(torch_model.parameters(), 1.0)
        assert total == pytest.approx(float(torch_total), rel=1e-10)
        optimizer.step()
        torch_optimizer.step()
        assert_close(model.params["weight"], torch_model.weight.detach().numpy())
        assert_close(model.params["bias"], torch_model.bias.detach().numpy())


@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.5, math.inf])
def test_clip_grad_norm_overflow_as_torch(norm_type, torch):
    """Large float32 gradients: the norm overflows to inf where PyTorch's does (the gradients then
    become 0), quietly, and stays finite where PyTorch's does."""
    layer = nn.Linear(3, 1, bias=False, rng=0)
    layer.grads["weight"] = np.full((1, 3), 1e30, dtype=np.float32)
    tensor = torch.zeros(3, requires_grad=True)
    tensor.grad = torch.full((3,), 1e30)
    total = utils.clip_grad_norm_(layer.parameters(), 1.0, norm_type=norm_type)
    torch_total = float(torch.nn.utils.clip_grad_norm_([tensor], 1.0, norm_type=norm_type))
    assert total == pytest.approx(torch_total, rel=1e-6)
    assert_close(layer.grads["weight"][0], tensor.grad.numpy())
