"""convx.optim against torch.optim: several steps of every optimizer with its main options."""

import numpy as np
import pytest
from conftest import DTYPES, assert_close

from convx import nn, optim

CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.05)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", {}),
    ("Adam", dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("Adam", dict(lr=0.05, amsgrad=True)),
    ("AdamW", {}),
    ("AdamW", dict(lr=0.05, weight_decay=0.1, amsgrad=True)),
    ("Adagrad", {}),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.2, eps=1e-8)),
    ("RMSprop", {}),
    ("RMSprop", dict(lr=0.01, alpha=0.9, centered=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.9, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True, eps=1e-6)),
    ("Adadelta", {}),
    ("Adadelta", dict(lr=0.5, rho=0.8, eps=1e-5, weight_decay=0.1)),
]


def _case_id(case):
    name, options = case
    return name + "(" + ",".join(f"{k}={v}" for k, v in options.items()) + ")"


def _model(dtype):
    return nn.Sequential(nn.Conv2d(2, 3, 3, dtype=dtype, rng=0), nn.Linear(4, 3, dtype=dtype, rng=1))


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_steps_match_torch(case, dtype, compiled, torch, rng, monkeypatch):
    """Both forms of each update: the compiled kernel and the NumPy lines (its reference)."""
    monkeypatch.setattr(optim.Optimizer, "compiled", compiled)
    name, options = case
    model = _model(dtype)
    torch_params = [torch.from_numpy(p.data.copy()).requires_grad_(True) for p in model.parameters()]
    optimizer = getattr(optim, name)(model.parameters(), **options)
    torch_optimizer = getattr(torch.optim, name)(torch_params, **options)
    for _ in range(5):
        for param, torch_param in zip(model.parameters(), torch_params):
            # A gradient that depends on the parameter (a quadratic bowl) plus noise, so that
            # the trajectories would separate if one update differed.
            grad = (0.5 * param.data + rng.standard_normal(param.data.shape)).astype(dtype)
            param.module.grads[param.key] = grad
            torch_param.grad = torch.from_numpy(grad.copy())
        optimizer.step()
        torch_optimizer.step()
        for param, torch_param in zip(model.parameters(), torch_params):
            assert param.data.dtype == dtype
            assert_close(param.data, torch_param.detach().numpy())


def test_step_updates_the_layer_arrays_in_place():
    model = _model(np.float32)
    arrays = [p.data for p in model.parameters()]
    before = [a.copy() for a in arrays]
    for param in model.parameters():
        param.module.grads[param.key] = np.ones_like(param.data)
    optim.Adam(model.parameters(), lr=0.1).step()
    for param, array, old in zip(model.parameters(), arrays, before):
        assert param.data is array
        assert not np.array_equal(array, old)


def test_parameters_without_gradient_are_skipped_and_zero_grad_semantics(torch):
    layer = nn.Linear(2, 2, dtype=np.float64, rng=0)
    optimizer = optim.SGD(layer.parameters(), lr=0.1, weight_decay=0.5)
    weight = layer.params["weight"].copy()
    optimizer.step()  # no backward yet: every gradient is None, nothing moves
    np.testing.assert_array_equal(layer.params["weight"], weight)
    layer.forward(np.ones((1, 2)))
    layer.backward(np.ones((1, 2)))
    optimizer.zero_grad()  # set_to_none=True: the gradients are forgotten
    assert layer.grads == {"weight": None, "bias": None}
    optimizer.step()
    np.testing.assert_array_equal(layer.params["weight"], weight)
    optimizer.zero_grad(set_to_none=False)  # zeros: weight decay still acts, as in torch
    np.testing.assert_array_equal(layer.grads["weight"], 0.0)
    optimizer.step()
    torch_weight = torch.from_numpy(weight.copy()).requires_grad_(True)
    torch_weight.grad = torch.zeros_like(torch_weight)
    torch.optim.SGD([torch_weight], lr=0.1, weight_decay=0.5).step()
    assert_close(layer.params["weight"], torch_weight.detach().numpy())


def test_parameter_groups_take_their_own_options(torch):
    model = nn.Sequential(nn.Linear(3, 2, dtype=np.float64, rng=0), nn.Linear(2, 2, dtype=np.float64, rng=1))
    groups = [{"params": model[0].parameters(), "lr": 0.5}, {"params": model[1].parameters()}]
    optimizer = optim.SGD(groups, lr=0.1, momentum=0.9)
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.1]
    assert optimizer.param_groups[1]["momentum"] == 0.9
    torch_params = [torch.from_numpy(p.data.copy()).requires_grad_(True) for p in model.parameters()]
    torch_optimizer = torch.optim.SGD(
        [{"params": torch_params[:2], "lr": 0.5}, {"params": torch_params[2:]}], lr=0.1, momentum=0.9
    )
    for _ in range(2):
        for param, torch_param in zip(model.parameters(), torch_params):
            param.module.grads[param.key] = np.ones_like(param.data)
            torch_param.grad = torch.ones_like(torch_param)
        optimizer.step()
        torch_optimizer.step()
    for param, torch_param in zip(model.parameters(), torch_params):
        assert_close(param.data, torch_param.detach().numpy())
    optimizer.param_groups[0]["lr"] = 0.0  # learning-rate schedules edit the groups
    frozen = model[0].params["weight"].copy()
    optimizer.step()
    np.testing.assert_array_equal(model[0].params["weight"], frozen)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda ps: optim.SGD(ps, lr=-0.1), ValueError, "lr must be at least 0"),
        (lambda ps: optim.SGD(ps, lr=0.1, nesterov=True), ValueError, "Nesterov momentum requires"),
        (lambda ps: optim.SGD(ps, lr="fast"), TypeError, "lr must be a real number"),
        (lambda ps: optim.Adam(ps, betas=(0.9, 1.0)), ValueError, r"betas\[1\] must be in \[0.0, 1.0\)"),
        (lambda ps: optim.Adam(ps, betas=0.9), ValueError, "betas must be a pair"),
        (lambda ps: optim.RMSprop(ps, centered=1), TypeError, "centered must be a bool"),
        (lambda ps: optim.Adadelta(ps, rho=1.5), ValueError, "rho must be in"),
        (lambda ps: optim.Adagrad(ps, eps=-1.0), ValueError, "eps must be at least 0"),
        (lambda ps: optim.SGD([], lr=0.1), ValueError, "empty parameter list"),
        (lambda ps: optim.SGD([p.data for p in ps], lr=0.1), TypeError, "a bare array has no gradient"),
        (lambda ps: optim.SGD(ps + ps, lr=0.1), ValueError, "more than one place"),
        (lambda ps: optim.SGD([{"params": ps, "momentun": 0.9}]), ValueError, r"unknown options \['momentun'\]"),
        (lambda ps: optim.SGD(ps[0].module, lr=0.1), TypeError, r"pass model.parameters\(\)"),
    ],
)
def test_rejects_bad_options(make, error, match):
    with pytest.raises(error, match=match):
        make(nn.Linear(2, 2, rng=0).parameters())


def test_gradient_shape_mismatch_is_an_error():
    layer = nn.Linear(2, 2, rng=0)
    layer.grads["weight"] = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"gradient of 'weight' has shape \(2, 3\)"):
        optim.SGD(layer.parameters(), lr=0.1).step()


def _trajectory(name, options, dtype, compiled, layout, n_threads=None, scale=1):
    """Parameters after five steps of a (60 scale, 70 scale) parameter whose gradient depends on it."""
    import convx

    previous = convx.get_num_threads()
    if n_threads is not None:
        convx.set_num_threads(n_threads)
    try:
        layer = nn.Linear(70 * scale, 60 * scale, dtype=dtype, rng=0)
        if layout == "fortran":  # a parameter the kernel does not take: NumPy updates it
            layer.params["weight"] = np.asfortranarray(layer.params["weight"])
        optimizer = getattr(optim, name)(layer.parameters(), **options)
        optimizer.compiled = compiled
        rng = np.random.default_rng(1)
        for _ in range(5):
            for key, value in layer.params.items():
                grad = 0.5 * value + rng.standard_normal(value.shape)
                if layout == "strided-grad":
                    grad = np.repeat(grad, 2, axis=-1)[..., ::2]
                layer.grads[key] = grad.astype(dtype) if layout != "float64-grad" else grad
            optimizer.step()
        return {key: value.copy() for key, value in layer.params.items()}
    finally:
        convx.set_num_threads(previous)


@pytest.mark.parametrize("layout", ["contiguous", "fortran", "strided-grad", "float64-grad"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_compiled_update_matches_the_numpy_form(case, layout):
    """The kernel's arithmetic is the NumPy form's, element by element (up to the contraction of a
    multiply and an add into one rounding); parameters and gradients the kernel does not take
    (another layout or dtype) go through NumPy."""
    name, options = case
    compiled = _trajectory(name, options, np.float32, True, layout)
    reference = _trajectory(name, options, np.float32, False, layout)
    for key in reference:
        np.testing.assert_allclose(compiled[key], reference[key], rtol=2e-6, atol=1e-7)
        assert compiled[key].dtype == np.float32


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_compiled_update_is_the_same_on_any_thread_count(case):
    name, options = case
    # 420,000 elements: enough for three threads.
    one = _trajectory(name, options, np.float64, True, "contiguous", n_threads=1, scale=10)
    for n_threads in (2, 3):
        other = _trajectory(name, options, np.float64, True, "contiguous", n_threads=n_threads, scale=10)
        for key in one:
            np.testing.assert_array_equal(other[key], one[key])
