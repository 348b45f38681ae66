"""Whole networks against torch (logits, loss, every gradient, training steps), Sequential,
state_dict round trips and weight initialisation."""

import math

import numpy as np
import pytest
from conftest import DTYPES, TOLERANCES, assert_close

import convx
from convx import nn, optim


def _options(lib, dtype, rng):
    """Constructor options: (for randomly initialised layers, for the others); none for torch."""
    if lib is nn:
        return dict(dtype=dtype, rng=rng), dict(dtype=dtype)
    return {}, {}


def conv_only_net(lib, dtype=np.float32, rng=None):
    """A small CNN without pooling; ``lib`` is convx.nn or torch.nn (same names, same positions)."""
    random_init, fixed_init = _options(lib, dtype, rng)
    return lib.Sequential(
        # No bias before BatchNorm: its gradient is zero up to rounding, and Adam would turn that
        # rounding noise into full-size steps that no two implementations can agree on.
        lib.Conv2d(3, 6, 3, stride=2, padding=1, bias=False, **random_init),
        lib.BatchNorm2d(6, **fixed_init),
        lib.SELU(),
        lib.Conv2d(6, 4, 3, padding="same", padding_mode="replicate", **random_init),
        lib.Sigmoid(),
        lib.Flatten(),
        lib.Linear(4 * 4 * 4, 5, **random_init),
    )


def full_net(lib, dtype=np.float32, rng=None):
    """Every kind of layer, pooling included."""
    random_init, fixed_init = _options(lib, dtype, rng)
    return lib.Sequential(
        lib.Conv2d(3, 8, 3, padding=1, **random_init),
        lib.BatchNorm2d(8, **fixed_init),
        lib.ReLU(),
        lib.MaxPool2d(2),
        lib.Conv2d(8, 8, 3, padding="same", padding_mode="reflect", groups=2, **random_init),
        lib.PReLU(8, **fixed_init),
        lib.ConvTranspose2d(8, 4, 2, stride=2, **random_init),
        lib.ELU(),
        lib.AvgPool2d(2),
        lib.Conv2d(4, 6, 3, padding=1, padding_mode="circular", **random_init),
        lib.LeakyReLU(0.1),
        lib.AdaptiveMaxPool2d((2, 2)),
        lib.Flatten(),
        lib.Linear(24, 16, **random_init),
        lib.Tanh(),
        lib.Dropout(0.3),
        lib.Linear(16, 5, **random_init),
    )


NETS = [pytest.param(conv_only_net, id="conv-only"), pytest.param(full_net, id="full")]


def make_pair(torch, build, dtype, seed=0):
    ours = build(nn, dtype=dtype, rng=np.random.default_rng(seed))
    theirs = build(torch.nn).to(torch.float64 if dtype == np.float64 else torch.float32)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    return ours, theirs


def check_network_step(torch, ours, theirs, x, target):
    """Forward, loss and backward through both; compare logits, loss and every gradient."""
    logits = ours(x)
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(logits, target)
    grad_x = ours.backward(loss_fn.backward())

    x_torch = torch.from_numpy(x.copy()).requires_grad_(True)
    logits_torch = theirs(x_torch)
    loss_torch = torch.nn.functional.cross_entropy(logits_torch, torch.from_numpy(target))
    theirs.zero_grad()
    loss_torch.backward()

    assert_close(logits, logits_torch.detach().numpy())
    assert loss == pytest.approx(loss_torch.item(), rel=10 * convx_rtol(x.dtype))
    assert_close(grad_x, x_torch.grad.numpy())
    torch_params = dict(theirs.named_parameters())
    assert list(ours.grads) == list(torch_params)
    for name, param in torch_params.items():
        assert_close(ours.grads[name], param.grad.numpy())


def assert_same_state(ours, theirs):
    state = ours.state_dict()
    assert list(state) == list(theirs.state_dict())
    for name, value in theirs.state_dict().items():
        if name.endswith("num_batches_tracked"):
            assert state[name] == value.item()
        else:
            assert_close(state[name], value.numpy())


def convx_rtol(dtype):
    return TOLERANCES[np.dtype(dtype)]["rtol"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("build", NETS)
def test_network_logits_loss_and_every_gradient_match_torch(build, dtype, torch, rng):
    ours, theirs = make_pair(torch, build, dtype)
    x = rng.standard_normal((6, 3, 8, 8)).astype(dtype)
    target = rng.integers(0, 5, 6)
    # Training mode (batch statistics), with Dropout switched off in both: their masks differ.
    for model in (ours, theirs):
        model.train()
        for layer in model:
            if type(layer).__name__ == "Dropout":
                layer.eval()
    check_network_step(torch, ours, theirs, x, target)
    assert_same_state(ours, theirs)
    # Evaluation mode: running statistics, Dropout the identity.
    ours.eval()
    theirs.eval()
    check_network_step(torch, ours, theirs, x, target)


@pytest.mark.parametrize(
    "make_optimizers",
    [
        lambda ps, ts, torch: (optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True), torch.optim.SGD(ts, lr=0.1, momentum=0.9, nesterov=True)),
        lambda ps, ts, torch: (optim.AdamW(ps, lr=1e-2), torch.optim.AdamW(ts, lr=1e-2)),
    ],
    ids=["SGD-nesterov", "AdamW"],
)
def test_training_steps_match_torch(make_optimizers, torch, rng):
    ours, theirs = make_pair(torch, conv_only_net, np.float64, seed=3)
    optimizer, torch_optimizer = make_optimizers(ours.parameters(), theirs.parameters(), torch)
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    x = rng.standard_normal((8, 3, 8, 8))
    target = rng.integers(0, 5, 8)
    for _ in range(4):
        optimizer.zero_grad()
        losses.append(loss_fn(ours(x), target))
        ours.backward(loss_fn.backward())
        optimizer.step()

        torch_optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)), torch.from_numpy(target))
        loss.backward()
        torch_optimizer.step()
        assert losses[-1] == pytest.approx(loss.item(), rel=1e-9)
    assert_same_state(ours, theirs)
    assert losses[-1] < losses[0]


# ---------------------------------------------------------------------------- Sequential API
def test_sequential_names_parameters_like_torch(torch):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, rng=0), nn.ReLU(), nn.Sequential(nn.BatchNorm2d(2), nn.Linear(3, 4, rng=0)))
    torch_model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Sequential(torch.nn.BatchNorm2d(2), torch.nn.Linear(3, 4))
    )
    assert [p.name for p in model.parameters()] == [name for name, _ in torch_model.named_parameters()]
    assert list(model.state_dict()) == list(torch_model.state_dict())
    assert list(model.params) == list(model.grads) == [p.name for p in model.parameters()]
    assert list(model.buffers) == ["2.0.running_mean", "2.0.running_var", "2.0.num_batches_tracked"]
    for param in model.parameters():
        assert param.data is param.module.params[param.key]
        assert model.params[param.name] is param.data
    assert len(model) == 3 and isinstance(model[2], nn.Sequential) and model[-1] is model.layers[-1]
    assert [type(layer).__name__ for layer in model[:2]] == ["Conv2d", "ReLU"]
    assert "Conv2d(1, 2" in repr(model)


def test_sequential_forward_and_backward_chain_the_layers(rng):
    first, second = nn.Linear(4, 3, dtype=np.float64, rng=0), nn.Tanh()
    model = nn.Sequential(first).append(second)
    x = rng.standard_normal((5, 4))
    y = model(x)
    # Tanh is convx's compiled kernel (libm's tanh), within an ulp or two of NumPy's.
    np.testing.assert_allclose(y, np.tanh(x @ first.params["weight"].T + first.params["bias"]), rtol=1e-14, atol=0)
    assert convx.gradcheck(model, x)
    empty = nn.Sequential()
    assert empty(x) is x and empty.backward(x) is x and empty.parameters() == []


def test_sequential_rejects_non_layers():
    with pytest.raises(TypeError, match="position 1"):
        nn.Sequential(nn.ReLU(), lambda x: x)
    with pytest.raises(TypeError, match="convx.nn layers"):
        nn.Sequential().append("relu")


def test_zero_grad_forgets_or_zeroes_every_gradient(rng):
    model = nn.Sequential(nn.Linear(3, 2, rng=0), nn.ReLU(), nn.Linear(2, 2, rng=1))
    y = model(rng.standard_normal((4, 3)).astype(np.float32))
    model.backward(np.ones_like(y))
    assert all(g is not None for g in model.grads.values())
    model.zero_grad(set_to_none=False)
    assert all(np.array_equal(g, np.zeros_like(p)) for g, p in zip(model.grads.values(), model.params.values()))
    model.zero_grad()
    assert all(g is None for g in model.grads.values())


# ------------------------------------------------------------------------------ state_dict
def test_state_dict_round_trip_restores_the_same_function(rng):
    source = conv_only_net(nn, rng=1)
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    source(x)  # move the running statistics off their initial values
    target = conv_only_net(nn, rng=2).eval()
    target.load_state_dict(source.state_dict())
    source.eval()
    np.testing.assert_array_equal(target(x), source(x))
    assert target.state_dict()["1.num_batches_tracked"] == 1


def test_state_dict_holds_copies_and_loading_keeps_the_arrays(rng):
    model = conv_only_net(nn, rng=1)
    state = model.state_dict()
    state["0.weight"] += 1.0
    assert not np.array_equal(state["0.weight"], model.params["0.weight"])
    weight = model.params["0.weight"]
    optimizer = optim.SGD(model.parameters(), lr=0.1)
    model.load_state_dict(state)
    # Loaded in place: the optimizer's handles still reach the loaded values.
    assert model.params["0.weight"] is weight
    np.testing.assert_array_equal(weight, state["0.weight"])
    assert optimizer.param_groups[0]["params"][0].data is weight


def test_save_and_load_npz(tmp_path, rng):
    model = conv_only_net(nn, rng=1)
    model(rng.standard_normal((4, 3, 8, 8)).astype(np.float32))
    path = tmp_path / "model.npz"
    model.save(path)
    with np.load(path) as archive:
        assert sorted(archive.files) == sorted(model.state_dict())
    restored = conv_only_net(nn, rng=2)
    restored.load(path)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(restored.state_dict()[name], value)


def test_load_state_dict_checks_keys_and_shapes():
    model = nn.Sequential(nn.Linear(3, 2, rng=0), nn.BatchNorm2d(2))
    state = model.state_dict()
    with pytest.raises(KeyError, match=r"missing keys \['0.bias'\], unexpected keys \['extra'\]"):
        model.load_state_dict({**{k: v for k, v in state.items() if k != "0.bias"}, "extra": np.zeros(1)})
    with pytest.raises(ValueError, match=r"state\['0.weight'\] has shape \(3, 2\)"):
        model.load_state_dict({**state, "0.weight": np.zeros((3, 2))})
    with pytest.raises(TypeError):  # a float cannot become the int64 batch count
        model.load_state_dict({**state, "1.num_batches_tracked": np.array(1.5)})
    with pytest.raises(TypeError, match=r"state\['0.bias'\] has dtype float64, which does not convert to the module's float32 without loss: convert the module first \(model.to\(np.float64\)\) or pass cast=True"):
        model.load_state_dict({"0.bias": np.array([1.0, 2.0])}, strict=False)
    np.testing.assert_array_equal(model.params["0.bias"], state["0.bias"])  # nothing loaded
    model.load_state_dict({"0.bias": np.array([1.0, 2.0])}, strict=False, cast=True)
    np.testing.assert_array_equal(model.params["0.bias"], [1.0, 2.0])
    assert model.params["0.bias"].dtype == np.float32
    model.load_state_dict({"0.bias": np.array([3.0, 4.0], dtype=np.float32)}, strict=False)
    np.testing.assert_array_equal(model.params["0.bias"], [3.0, 4.0])


def test_load_a_torch_state_dict(torch, rng):
    theirs = conv_only_net(torch.nn)
    ours = conv_only_net(nn, rng=0)
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert_close(ours(x), theirs(torch.from_numpy(x)).detach().numpy())


# ------------------------------------------------------------------------------ initialisation
@pytest.mark.parametrize(
    "make, torch_make, fan_in",
    [
        (lambda: nn.Conv2d(16, 32, 5, rng=0), lambda t: t.nn.Conv2d(16, 32, 5), 16 * 25),
        (lambda: nn.Conv2d(16, 32, 3, groups=4, rng=0), lambda t: t.nn.Conv2d(16, 32, 3, groups=4), 4 * 9),
        (lambda: nn.ConvTranspose2d(16, 8, 3, groups=2, rng=0), lambda t: t.nn.ConvTranspose2d(16, 8, 3, groups=2), 4 * 9),
        (lambda: nn.Linear(300, 200, rng=0), lambda t: t.nn.Linear(300, 200), 300),
    ],
    ids=["conv", "grouped-conv", "conv-transpose", "linear"],
)
def test_default_initialisation_is_torch_kaiming_uniform(make, torch_make, fan_in, torch):
    bound = 1 / math.sqrt(fan_in)  # kaiming_uniform with a = sqrt(5), and PyTorch's bias bound
    ours, theirs = make(), torch_make(torch)
    for name, torch_param in theirs.named_parameters():
        values = ours.params[name]
        assert values.shape == tuple(torch_param.shape) and values.dtype == np.float32
        assert torch_param.detach().abs().max().item() <= bound
        assert np.abs(values).max() <= bound
        if values.size > 1000:  # uniform: the extremes reach the bound, the std is bound / sqrt(3)
            assert np.abs(values).max() > 0.99 * bound
            assert values.std() == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_initialisation_is_reproducible_from_a_seed_or_generator():
    np.testing.assert_array_equal(nn.Conv2d(3, 4, 3, rng=5).params["weight"], nn.Conv2d(3, 4, 3, rng=5).params["weight"])
    assert not np.array_equal(nn.Conv2d(3, 4, 3, rng=5).params["weight"], nn.Conv2d(3, 4, 3, rng=6).params["weight"])
    first = conv_only_net(nn, rng=np.random.default_rng(9)).state_dict()
    second = conv_only_net(nn, rng=np.random.default_rng(9)).state_dict()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    # One generator shared by the layers: each layer draws new values.
    assert not np.array_equal(first["0.weight"].ravel()[:10], first["3.weight"].ravel()[:10])
    # float32 and float64 layers from one seed hold the same weights up to rounding.
    single, double = nn.Linear(5, 4, rng=1), nn.Linear(5, 4, rng=1, dtype=np.float64)
    np.testing.assert_array_equal(single.params["weight"], double.params["weight"].astype(np.float32))


def test_init_functions():
    weight = nn.init.kaiming_uniform((64, 32, 3, 3), rng=0)  # a = 0: He initialisation for ReLU
    bound = math.sqrt(6 / (32 * 9))
    assert np.abs(weight).max() <= bound and np.abs(weight).max() > 0.99 * bound
    assert nn.init.fan_in((8, 3, 5, 5)) == 75 and nn.init.fan_in((10, 7)) == 7
    assert nn.init.uniform((3,), 0.0, rng=0, dtype=np.float64).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="bound must be non-negative"):
        nn.init.uniform((3,), -1.0)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        nn.init.fan_in((3,))
    np.testing.assert_array_equal(nn.PReLU(4).params["weight"], np.full(4, 0.25, dtype=np.float32))
    batch_norm = nn.BatchNorm2d(3)
    assert batch_norm.params["weight"].tolist() == [1, 1, 1] and batch_norm.params["bias"].tolist() == [0, 0, 0]
