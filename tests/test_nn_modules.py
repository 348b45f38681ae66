"""convx.nn for real architectures (issue 22): registration of attributes, containers, blocks with
more than one path, layers used more than once, dtype conversion and frozen parameters.

Each architecture is written twice, the way a PyTorch user writes it (attributes, no
``children()`` override), once for convx.nn and once for torch.nn; the two must agree in their
state_dict keys, outputs and every gradient."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import convx
from convx import nn, optim

DTYPES = [np.float32, np.float64]
# Relative to the largest magnitude of PyTorch's array (the targets).
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}


def assert_agrees(ours, theirs, dtype, what="", largest=0.0):
    """Relative to the largest magnitude of PyTorch's array. An array below 1e-4 of ``largest``
    (the largest gradient of the model) is a gradient that is zero in exact arithmetic (the bias of
    a convolution before a BatchNorm in training mode), which both libraries return as rounding
    noise: it is compared relative to ``largest``."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, what
    assert ours.dtype == np.dtype(dtype), what
    scale = float(np.max(np.abs(theirs))) if theirs.size else 1.0
    scale = largest if scale < 1e-4 * largest else max(scale, 1e-30)
    error = float(np.max(np.abs(ours.astype(np.float64) - theirs))) / scale if theirs.size else 0.0
    assert error <= TOLERANCE[dtype], f"{what}: relative error {error:.3g}"


# ----------------------------------------------------------------------------- the architectures
class BasicBlock(nn.Module):
    """ResNet's basic block, with one ReLU used twice."""

    def __init__(self, cin, cout, stride, dtype):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False, dtype=dtype)
        self.bn1 = nn.BatchNorm2d(cout, dtype=dtype)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False, dtype=dtype)
        self.bn2 = nn.BatchNorm2d(cout, dtype=dtype)
        if stride == 1 and cin == cout:
            self.shortcut = nn.Sequential()
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False, dtype=dtype),
                                          nn.BatchNorm2d(cout, dtype=dtype))
        self.add = nn.Add()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(self.add(out, self.shortcut(x)))

    def backward(self, grad):
        grad = self.relu.backward(grad)
        grad_main, grad_skip = self.add.backward(grad)
        grad_x = self.shortcut.backward(grad_skip)
        grad_main = self.conv1.backward(self.bn1.backward(self.relu.backward(
            self.conv2.backward(self.bn2.backward(grad_main)))))
        return grad_main + grad_x


class ResNet(nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False, dtype=dtype),
                                  nn.BatchNorm2d(8, dtype=dtype), nn.ReLU())
        self.layers = nn.ModuleList([BasicBlock(8, 8, 1, dtype), BasicBlock(8, 16, 2, dtype)])
        self.pool = nn.GlobalAvgPool2d()
        self.fc = nn.Linear(16, 5, dtype=dtype)

    def forward(self, x):
        x = self.stem(x)
        for block in self.layers:
            x = block(x)
        return self.fc(self.pool(x))

    def backward(self, grad):
        grad = self.pool.backward(self.fc.backward(grad))
        for block in reversed(list(self.layers)):
            grad = block.backward(grad)
        return self.stem.backward(grad)


class UNet(nn.Module):
    """Two levels, a transposed-convolution upsampling and a concatenation skip."""

    def __init__(self, dtype):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, dtype=dtype), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.enc2 = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, dtype=dtype), nn.BatchNorm2d(8, dtype=dtype), nn.ReLU())
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2, dtype=dtype)
        self.cat = nn.Cat(dim=1)
        self.dec = nn.Sequential(nn.Conv2d(8, 4, 3, padding=1, dtype=dtype), nn.ReLU())
        self.head = nn.Conv2d(4, 2, 1, dtype=dtype)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        return self.head(self.dec(self.cat(self.up(e2), e1)))

    def backward(self, grad):
        grad_up, grad_e1 = self.cat.backward(self.dec.backward(self.head.backward(grad)))
        grad_e1 = grad_e1 + self.pool.backward(self.enc2.backward(self.up.backward(grad_up)))
        return self.enc1.backward(grad_e1)


def torch_models(torch):
    tnn = torch.nn

    class TorchBasicBlock(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.relu = tnn.ReLU()
            self.conv2 = tnn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            if stride == 1 and cin == cout:
                self.shortcut = tnn.Sequential()
            else:
                self.shortcut = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride=stride, bias=False), tnn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + self.shortcut(x))

    class TorchResNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.stem = tnn.Sequential(tnn.Conv2d(3, 8, 3, padding=1, bias=False), tnn.BatchNorm2d(8), tnn.ReLU())
            self.layers = tnn.ModuleList([TorchBasicBlock(8, 8, 1), TorchBasicBlock(8, 16, 2)])
            self.pool = tnn.AdaptiveAvgPool2d(1)
            self.fc = tnn.Linear(16, 5)

        def forward(self, x):
            x = self.stem(x)
            for block in self.layers:
                x = block(x)
            return self.fc(self.pool(x).flatten(1))

    class TorchUNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.enc1 = tnn.Sequential(tnn.Conv2d(1, 4, 3, padding=1), tnn.ReLU())
            self.pool = tnn.MaxPool2d(2)
            self.enc2 = tnn.Sequential(tnn.Conv2d(4, 8, 3, padding=1), tnn.BatchNorm2d(8), tnn.ReLU())
            self.up = tnn.ConvTranspose2d(8, 4, 2, stride=2)
            self.dec = tnn.Sequential(tnn.Conv2d(8, 4, 3, padding=1), tnn.ReLU())
            self.head = tnn.Conv2d(4, 2, 1)

        def forward(self, x):
            e1 = self.enc1(x)
            e2 = self.enc2(self.pool(e1))
            return self.head(self.dec(torch.cat([self.up(e2), e1], dim=1)))

    class TorchShared(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv = tnn.Conv2d(3, 3, 3, padding=1)
            self.relu = tnn.ReLU()
            self.scale = tnn.Parameter(torch.ones(1, 3, 1, 1))

        def forward(self, x):
            return self.relu(self.conv(self.relu(self.conv(x)))) * self.scale

    return {"resnet": TorchResNet, "unet": TorchUNet, "shared": TorchShared}


class SharedNet(nn.Module):
    """One convolution and one ReLU applied twice, and a parameter of the block itself."""

    def __init__(self, dtype):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, dtype=dtype)
        self.relu = nn.ReLU()
        self.scale = nn.Parameter(np.linspace(0.5, 1.5, 3).reshape(1, 3, 1, 1).astype(dtype))

    def forward(self, x):
        self.activated = self.relu(self.conv(self.relu(self.conv(x))))
        return self.activated * self.scale

    def backward(self, grad):
        self.store_grad("scale", (grad * self.activated).sum(axis=(0, 2, 3), keepdims=True))
        grad = self.relu.backward(grad * self.scale)
        return self.conv.backward(self.relu.backward(self.conv.backward(grad)))


OURS = {"resnet": ResNet, "unet": UNet, "shared": SharedNet}
INPUTS = {"resnet": (4, 3, 8, 8), "unet": (2, 1, 8, 8), "shared": (2, 3, 6, 6)}


def twins(torch, name, dtype):
    theirs = torch_models(torch)[name]()
    if dtype == np.float64:
        theirs = theirs.double()
    ours = OURS[name](dtype)
    return ours, theirs


@pytest.mark.parametrize("name", list(OURS))
def test_state_dict_keys_match_pytorch(torch, name):
    ours, theirs = twins(torch, name, np.float32)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [p.name for p in ours.parameters()] == [n for n, _ in theirs.named_parameters()]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(OURS))
def test_outputs_and_gradients_match_pytorch(torch, name, dtype, mode, rng):
    ours, theirs = twins(torch, name, dtype)
    # PyTorch's initial weights into ours, then a step of training so that the running
    # statistics are not the initial ones in evaluation mode.
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    warm = rng.standard_normal(INPUTS[name]).astype(dtype)
    ours(warm)
    theirs(torch.from_numpy(warm))
    ours.train(mode == "train")
    theirs.train(mode == "train")
    x = rng.standard_normal(INPUTS[name]).astype(dtype)
    y = ours(x)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = theirs(tx)
    assert_agrees(y, ty.detach().numpy(), dtype, "output")
    grad = rng.standard_normal(y.shape).astype(dtype)
    grad_x = ours.backward(grad)
    ty.backward(torch.from_numpy(grad))
    assert_agrees(grad_x, tx.grad.numpy(), dtype, "input gradient")
    grads = ours.grads
    largest = max(float(param.grad.abs().max()) for param in theirs.parameters())
    for key, param in theirs.named_parameters():
        assert_agrees(grads[key], param.grad.numpy(), dtype, key, largest)
    state = ours.state_dict()
    for key, value in theirs.state_dict().items():
        if value.is_floating_point():
            assert_agrees(state[key], value.numpy(), dtype, key)
        else:
            assert state[key] == value.item(), key


def test_a_block_registers_its_attributes():
    model = ResNet(np.float32)
    assert [name for name, _ in model.children()] == ["stem", "layers", "pool", "fc"]
    assert "layers.1.shortcut.0.weight" in model.state_dict()
    assert len(model.parameters()) == 20
    model.eval()
    assert all(not module.training for module in model.modules())
    model.train()
    assert model.layers[1].bn2.training
    text = repr(model)
    assert text.startswith("ResNet(\n  (stem): Sequential(\n    (0): Conv2d(3, 8")
    assert "(layers): ModuleList(\n    (0): BasicBlock(\n      (conv1): Conv2d" in text
    assert [name for name, _ in model.named_modules()][:4] == ["", "stem", "stem.0", "stem.1"]


def test_attribute_registration_rules():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 2, rng=0)
            self.weight = nn.Parameter(np.ones(2))
            self.register_buffer("counts", np.zeros(2, dtype=np.int64))
            self.plain = np.zeros(3)  # a plain array is an attribute, not a parameter

    block = Block()
    assert list(block.state_dict()) == ["weight", "counts", "linear.weight", "linear.bias"]
    assert block.weight is block.params["weight"] and block.weight.dtype == np.float64
    assert block.counts is block.buffers["counts"]
    with pytest.raises(TypeError, match=r"cannot assign ndarray to Block.weight, a parameter: assign Parameter"):
        block.weight = np.zeros(2)
    with pytest.raises(TypeError, match=r"cannot assign int to Block.linear, a sub-module"):
        block.linear = 3
    block.counts = np.ones(2, dtype=np.int64)  # buffers take arrays
    assert block.state_dict()["counts"].tolist() == [1, 1]
    del block.linear
    assert list(block.state_dict()) == ["weight", "counts"]
    block.linear = None
    assert block.linear is None and list(block.children()) == []

    class Early(nn.Module):
        def __init__(self):
            self.linear = nn.Linear(2, 2)
            super().__init__()

    with pytest.raises(AttributeError, match=r"call super\(\).__init__\(\) first"):
        Early()
    with pytest.raises(KeyError, match="already has an attribute 'forward'"):
        nn.Module().register_parameter("forward", np.ones(1))
    owned = nn.Parameter(np.ones(2))
    Block().register_parameter("other", owned)
    with pytest.raises(ValueError, match="already belongs to a Block"):
        Block().register_parameter("again", owned)


def test_an_explicit_children_override_keeps_working():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = [nn.Linear(2, 3, rng=0), nn.Linear(3, 1, rng=1)]  # a list: not registered

        def children(self):
            return iter([("first", self.layers[0]), ("second", self.layers[1])])

    pair = Pair()
    assert list(pair.state_dict()) == ["first.weight", "first.bias", "second.weight", "second.bias"]
    assert "(first): Linear(" in repr(pair)


def test_module_list_and_dict():
    layers = nn.ModuleList([nn.ReLU(), nn.Tanh()])
    layers.append(nn.Linear(2, 2, rng=0)).extend([nn.Sigmoid()])
    layers.insert(0, nn.Identity())
    assert [type(m).__name__ for m in layers] == ["Identity", "ReLU", "Tanh", "Linear", "Sigmoid"]
    assert list(layers.state_dict()) == ["3.weight", "3.bias"]
    assert type(layers[-2]).__name__ == "Linear" and len(layers[1:3]) == 2
    del layers[0]
    assert list(layers.state_dict()) == ["2.weight", "2.bias"]
    with pytest.raises(IndexError, match="index 9 is out of range for 4 modules"):
        layers[9]
    with pytest.raises(TypeError, match="ModuleList holds convx.nn Modules, got int"):
        layers.append(3)
    with pytest.raises(NotImplementedError, match="container without a forward"):
        layers(np.ones(2))
    heads = nn.ModuleDict({"cls": nn.Linear(4, 3, rng=0)})
    heads["box"] = nn.Linear(4, 2, rng=1)
    heads["keys"] = nn.ReLU()  # a name of a method is a fine key
    assert list(heads) == ["cls", "box", "keys"] and "box" in heads
    assert list(heads.state_dict()) == ["cls.weight", "cls.bias", "box.weight", "box.bias"]
    assert type(heads.pop("keys")).__name__ == "ReLU" and len(heads) == 2
    with pytest.raises(KeyError, match="without '.'"):
        heads["a.b"] = nn.ReLU()


def test_apply_and_named_parameters_of_shared_modules():
    shared = nn.Linear(3, 3, rng=0)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]  # as PyTorch
    assert [p.name for p in model.parameters()] == ["0.weight", "0.bias"]  # each array once
    visited = []
    model.apply(lambda m: visited.append(type(m).__name__))
    assert visited == ["Linear", "ReLU", "Linear", "Sequential"]


# ------------------------------------------------------------------------ layers used more than once
def test_a_layer_used_twice_accumulates_over_its_backward_calls(rng):
    linear = nn.Linear(3, 3, dtype=np.float64, rng=0)
    x = rng.standard_normal((4, 3))

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = linear

        def forward(self, x):
            return self.linear(self.linear(x))

        def backward(self, grad):
            return self.linear.backward(self.linear.backward(grad))

    model = Twice()
    y = model(x)
    grad = rng.standard_normal(y.shape)
    grad_x = model.backward(grad)
    weight, bias = linear.params["weight"], linear.params["bias"]
    hidden = x @ weight.T + bias
    grad_hidden = grad @ weight
    np.testing.assert_allclose(grad_x, grad_hidden @ weight, rtol=1e-13)
    np.testing.assert_allclose(linear.grads["weight"], grad.T @ hidden + grad_hidden.T @ x, rtol=1e-13)
    np.testing.assert_allclose(linear.grads["bias"], grad.sum(0) + grad_hidden.sum(0), rtol=1e-13)
    # A third backward has no forward left: the error says so.
    with pytest.raises(RuntimeError, match=r"Linear.backward\(\) needs a preceding forward\(\).*have all been used"):
        linear.backward(grad)
    # The next pass starts afresh: its first backward replaces the gradients.
    model(x)
    model.backward(grad)
    np.testing.assert_allclose(linear.grads["weight"], grad.T @ hidden + grad_hidden.T @ x, rtol=1e-13)


def test_forwards_without_backward_keep_one_pass(rng):
    model = SharedNet(np.float64)
    x = rng.standard_normal((2, 3, 5, 5))
    for _ in range(5):
        model(x)  # e.g. evaluating in training mode
    assert len(model.conv._caches) == 2 and len(model.relu._caches) == 2
    model.backward(np.ones((2, 3, 5, 5)))
    assert model.conv._caches == [] and model.relu._caches == []


def test_a_second_top_level_forward_replaces_the_first(rng):
    layer = nn.Linear(2, 2, rng=0, dtype=np.float64)
    layer(rng.standard_normal((3, 2)))
    layer(rng.standard_normal((5, 2)))
    layer.backward(np.ones((5, 2)))
    with pytest.raises(RuntimeError, match="preceding forward"):
        layer.backward(np.ones((3, 2)))


# ------------------------------------------------------------------------------------ blocks
def torch_block(torch, kind):
    tnn = torch.nn

    class Block(tnn.Module):
        def __init__(self):
            super().__init__()
            if kind == "residual":
                self.body = tnn.Sequential(tnn.Conv2d(4, 4, 3, padding=1), tnn.BatchNorm2d(4), tnn.ReLU(),
                                           tnn.Conv2d(4, 4, 3, padding=1))
                self.activation = tnn.ReLU()
            elif kind == "projection":
                self.body = tnn.Sequential(tnn.Conv2d(4, 6, 3, stride=2, padding=1), tnn.Tanh())
                self.shortcut = tnn.Conv2d(4, 6, 1, stride=2)
                self.activation = tnn.GELU()
            else:
                self.branches = tnn.ModuleList([tnn.Conv2d(4, 3, 1), tnn.Conv2d(4, 2, 3, padding=1), tnn.Identity()])

        def forward(self, x):
            if kind == "residual":
                return self.activation(self.body(x) + x)
            if kind == "projection":
                return self.activation(self.body(x) + self.shortcut(x))
            return torch.cat([branch(x) for branch in self.branches], dim=1)

    return Block()


def our_block(kind, dtype):
    if kind == "residual":
        return nn.Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, dtype=dtype), nn.BatchNorm2d(4, dtype=dtype),
                                         nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, dtype=dtype)), activation=nn.ReLU())
    if kind == "projection":
        return nn.Residual(nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1, dtype=dtype), nn.Tanh()),
                           shortcut=nn.Conv2d(4, 6, 1, stride=2, dtype=dtype), activation=nn.GELU())
    return nn.Concat(nn.Conv2d(4, 3, 1, dtype=dtype), nn.Conv2d(4, 2, 3, padding=1, dtype=dtype), nn.Identity())


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("kind", ["residual", "projection", "concat"])
def test_blocks_match_pytorch(torch, kind, dtype, rng):
    theirs = torch_block(torch, kind)
    if dtype == np.float64:
        theirs = theirs.double()
    ours = our_block(kind, dtype)
    state = {k: v.detach().numpy() for k, v in theirs.state_dict().items()}
    if kind == "concat":
        state = {k.replace("branches.", ""): v for k, v in state.items()}
    assert sorted(ours.state_dict()) == sorted(state)
    ours.load_state_dict(state)
    x = rng.standard_normal((3, 4, 7, 7)).astype(dtype)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    y, ty = ours(x), theirs(tx)
    assert_agrees(y, ty.detach().numpy(), dtype, "output")
    grad = rng.standard_normal(y.shape).astype(dtype)
    ty.backward(torch.from_numpy(grad))
    assert_agrees(ours.backward(grad), tx.grad.numpy(), dtype, "input gradient")
    largest = max(float(param.grad.abs().max()) for param in theirs.parameters())
    for key, param in theirs.named_parameters():
        assert_agrees(ours.grads[key.replace("branches.", "") if kind == "concat" else key], param.grad.numpy(),
                      dtype, key, largest)


@pytest.mark.parametrize("block", [
    lambda: nn.Residual(nn.Sequential(nn.Linear(5, 5, dtype=np.float64, rng=0), nn.Tanh()), activation=nn.SiLU()),
    lambda: nn.Residual(nn.Linear(5, 3, dtype=np.float64, rng=0), shortcut=nn.Linear(5, 3, dtype=np.float64, rng=1),
                        activation=nn.ReLU()),
    lambda: nn.Concat(nn.Linear(5, 2, dtype=np.float64, rng=0), nn.Sigmoid(), dim=-1),
], ids=["residual-silu", "projection-relu", "concat-last-dim"])
def test_blocks_pass_gradcheck(block, rng):
    from convx._gradcheck import gradcheck

    assert gradcheck(block(), rng.standard_normal((4, 5)) + 0.1)


def test_add_and_cat_for_hand_written_graphs(rng):
    add = nn.Add()
    a, b, c = rng.standard_normal((2, 3, 4)), rng.standard_normal((3, 1)), rng.standard_normal(4)
    np.testing.assert_array_equal(add(a, b, c), a + b + c)
    grads = add.backward(np.ones((2, 3, 4)))
    assert [g.shape for g in grads] == [(2, 3, 4), (3, 1), (4,)]
    np.testing.assert_array_equal(grads[1], np.full((3, 1), 8.0))
    np.testing.assert_array_equal(grads[2], np.full(4, 6.0))
    with pytest.raises(ValueError, match="do not broadcast"):
        add(a, rng.standard_normal(5))
    with pytest.raises(TypeError, match="input 1 has dtype float32"):
        add(a, a.astype(np.float32))
    cat = nn.Cat(dim=-1)
    y = cat(a, a[..., :2])
    parts = cat.backward(np.arange(y.size, dtype=np.float64).reshape(y.shape))
    np.testing.assert_array_equal(np.concatenate(parts, axis=-1), np.arange(y.size).reshape(y.shape))
    with pytest.raises(ValueError, match=r"input 1 of shape \(2, 4, 4\) float64 cannot be joined"):
        cat(a, rng.standard_normal((2, 4, 4)))
    with pytest.raises(ValueError, match="dim=5 is out of range"):
        nn.Cat(dim=5)(a)


def test_residual_refuses_paths_of_different_shapes(rng):
    block = nn.Residual(nn.Conv2d(4, 6, 3, padding=1, rng=0))
    with pytest.raises(ValueError, match=r"the body's output \(1, 6, 5, 5\) float32 and x \(1, 4, 5, 5\) float32 must "
                                         r"have one shape and dtype; give a shortcut"):
        block(np.ones((1, 4, 5, 5), np.float32))
    with pytest.raises(TypeError, match="body must be a convx.nn Module, got int"):
        nn.Residual(3)


def test_identity(rng):
    x = rng.standard_normal((2, 3))
    identity = nn.Identity(54, unused="argument")
    assert identity(x) is x
    assert identity.backward(x) is x
    with pytest.raises(RuntimeError, match="preceding forward"):
        identity.backward(x)


# ----------------------------------------------------------------------- conversions and freezing
def test_to_double_and_float(rng):
    model = UNet(np.float32)
    assert model.double() is model
    assert all(v.dtype == np.float64 for k, v in model.state_dict().items() if "num_batches" not in k)
    assert model.enc2[1].buffers["num_batches_tracked"].dtype == np.int64
    x = rng.standard_normal((1, 1, 8, 8))
    y = model(x)
    assert y.dtype == np.float64 and model.backward(np.ones_like(y)).dtype == np.float64
    with pytest.raises(TypeError, match="has float64 parameters but x has dtype float32"):
        model(x.astype(np.float32))
    model.float()
    assert model(x.astype(np.float32)).dtype == np.float32
    assert model.to("cpu") is model
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        model.to(np.int32)


def test_load_state_dict_refuses_lossy_casts():
    ours = nn.Linear(2, 2, rng=0)
    state = nn.Linear(2, 2, rng=1, dtype=np.float64).state_dict()
    with pytest.raises(TypeError, match="float64, which does not convert to the module's float32 without loss"):
        ours.load_state_dict(state)
    ours.load_state_dict(state, cast=True)
    np.testing.assert_array_equal(ours.weight, state["weight"].astype(np.float32))
    wider = nn.Linear(2, 2, rng=2, dtype=np.float64)
    wider.load_state_dict(nn.Linear(2, 2, rng=3).state_dict())  # float32 into float64 loses nothing


@pytest.mark.parametrize("optimizer", [lambda p: optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
                                       lambda p: optim.Adam(p, lr=0.1)], ids=["sgd", "adam"])
def test_frozen_parameters_get_no_gradient_and_no_update(optimizer, rng):
    model = nn.Sequential(nn.Conv2d(2, 3, 3, rng=0, dtype=np.float64), nn.ReLU(), nn.Flatten(),
                          nn.Linear(12, 2, rng=1, dtype=np.float64))
    reference = copy.deepcopy(model)
    model[0].requires_grad_(False)
    assert [p.requires_grad for p in model.parameters()] == [False, False, True, True]
    frozen = {k: v.copy() for k, v in model.state_dict().items() if k.startswith("0.")}
    opt = optimizer(model.parameters())
    x = rng.standard_normal((4, 2, 4, 4))
    for _ in range(2):
        opt.zero_grad(set_to_none=False)  # zeros would still move a parameter through weight decay
        grad_x = model.backward(model(x))  # the loss |y|^2 / 2
        reference_grad_x = reference.backward(reference(x))
        np.testing.assert_allclose(grad_x, reference_grad_x, rtol=1e-13)  # the input gradient is unchanged
        assert model[0].grads == {"weight": None, "bias": None}
        np.testing.assert_allclose(model[3].grads["weight"], reference[3].grads["weight"], rtol=1e-13)
        opt.step()
        reference.load_state_dict(model.state_dict())
    for key, value in frozen.items():
        np.testing.assert_array_equal(model.state_dict()[key], value)
    model.requires_grad_()
    model(x)
    model.backward(np.ones((4, 2)))
    assert model[0].grads["weight"] is not None


def test_copies_of_a_custom_module(rng):
    model = ResNet(np.float64)
    x = rng.standard_normal((2, 3, 8, 8))
    y = model(x)
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        np.testing.assert_array_equal(twin.backward(np.ones_like(y)), copy.deepcopy(model).backward(np.ones_like(y)))
        assert list(twin.state_dict()) == list(model.state_dict())


# ------------------------------------------------------------------------------------- no_grad
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_no_grad_keeps_nothing_and_changes_nothing(mode, rng):
    model = ResNet(np.float64).train(mode == "train")
    fused = nn.Sequential(nn.Conv2d(3, 4, 3, dtype=np.float64, rng=0), nn.BatchNorm2d(4, dtype=np.float64),
                          nn.SiLU(), nn.Conv2d(4, 4, 1, dtype=np.float64, rng=1), nn.ReLU()).train(mode == "train")
    x = rng.standard_normal((2, 3, 8, 8))
    for net in (model, fused):
        state = net.state_dict()
        expected = net(x)
        net.load_state_dict(state)  # the same running statistics again
        assert nn.is_grad_enabled()
        with nn.no_grad():
            assert not nn.is_grad_enabled()
            np.testing.assert_array_equal(net(x), expected)
        assert nn.is_grad_enabled()
        assert all(module._caches == [] for module in net.modules())
        with pytest.raises(RuntimeError, match=r"a forward under nn.no_grad\(\) keeps nothing"):
            net.backward(np.ones_like(expected))
        with nn.set_grad_enabled(False), nn.set_grad_enabled(True):
            net(x)
        net.backward(np.ones_like(expected))  # the inner block kept what backward needs


MAX_POOL_LAYERS = [  # (layer maker, input shape, whether it takes return_indices)
    (lambda **kw: nn.MaxPool1d(3, 2, padding=1, **kw), (2, 3, 9), True),
    (lambda **kw: nn.MaxPool2d(2, **kw), (2, 3, 6, 7), False),
    (lambda **kw: nn.MaxPool2d(3, 2, padding=1, layout="NHWC", **kw), (2, 6, 7, 3), False),
    (lambda **kw: nn.MaxPool3d(2, **kw), (2, 3, 4, 5, 4), True),
    (lambda **kw: nn.AdaptiveMaxPool1d(4, **kw), (2, 3, 9), True),
    (lambda **kw: nn.AdaptiveMaxPool2d((3, 2), **kw), (2, 3, 7, 5), False),
    (lambda **kw: nn.AdaptiveMaxPool3d(2, **kw), (2, 3, 5, 4, 3), True),
    (lambda **kw: nn.GlobalMaxPool2d(), (2, 3, 5, 4), False),
]


@pytest.mark.parametrize("make, shape, returns_indices", MAX_POOL_LAYERS)
def test_max_pooling_under_no_grad_computes_no_indices_unless_returned(make, shape, returns_indices, rng,
                                                                       monkeypatch):
    """Under no_grad nothing reads a max pooling's argmax indices, so the layer asks for none (they
    are an int64 array as large as the output); with return_indices it still returns them."""
    x = rng.standard_normal(shape)
    x.flat[::7] = np.nan
    layer = make()
    expected = layer(x)
    asked = []
    for name in ("max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
                 "adaptive_max_pool3d"):
        original = getattr(convx.functional, name)

        def recording(*args, _original=original, **kwargs):
            asked.append(kwargs["return_indices"])
            return _original(*args, **kwargs)

        monkeypatch.setattr(convx.functional, name, recording)
    with nn.no_grad():
        np.testing.assert_array_equal(layer(x), expected)
    assert asked == [False]
    if not returns_indices:
        return
    returning = make(return_indices=True)
    y, indices = returning(x)
    with nn.no_grad():
        y_no_grad, indices_no_grad = returning(x)
    np.testing.assert_array_equal(y_no_grad, y)
    np.testing.assert_array_equal(indices_no_grad, indices)
    assert asked[-2:] == [True, True]


def test_no_grad_is_per_thread(rng):
    import threading

    seen = []
    with nn.no_grad():
        thread = threading.Thread(target=lambda: seen.append(nn.is_grad_enabled()))
        thread.start()
        thread.join()
    assert seen == [True]


def test_store_grad_checks_what_it_records():
    block = SharedNet(np.float64)
    with pytest.raises(KeyError, match="SharedNet has no parameter 'conv' of its own; it has \\['scale'\\]"):
        block.store_grad("conv", np.ones(3))
    with pytest.raises(ValueError, match=r"must have the parameter's shape \(1, 3, 1, 1\) and dtype float64"):
        block.store_grad("scale", np.ones(3))
    block.requires_grad_(False)
    block.store_grad("scale", np.ones((1, 3, 1, 1)))
    assert block.grads["scale"] is None  # frozen
