"""The benchmark's four networks, each written once for ``convx.nn`` and ``torch.nn`` alike.

A builder takes the layer library (``convx.nn`` or ``torch.nn``: the layers the nets use have
the same names and arguments in both) and the residual block class of that library, so the two
models have the same layers at the same positions and therefore the same ``state_dict`` keys:
PyTorch's initial weights load into convx as they are.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ... import functional, nn
from ...nn.module import Module


class Residual(Module):
    """``relu(body(x) + shortcut(x))``, the shortcut an identity when ``shortcut`` is None.

    Written as a user writes a block (``nn.Residual`` does the same with the child ``activation``
    instead of ``relu``). Its children are ``body``, ``shortcut`` (when given) and ``relu``, the
    names of the attributes of the PyTorch twin (:func:`torch_residual`), so the state_dict keys
    agree.
    """

    def __init__(self, body: Module, shortcut: Module | None = None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut
        self.relu = nn.ReLU()

    def forward(self, x: np.ndarray) -> np.ndarray:
        skip = x if self.shortcut is None else self.shortcut(x)
        # The sum and the ReLU in one threaded pass; ReLU's gradient is read from the result.
        y = functional.add(self.body(x), skip, activation="relu")
        self._save_for_backward(y, y)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        # The sum sends the same gradient down both paths; x feeds both, so theirs add up.
        grad_out, (y,) = self._saved_for_backward(grad_out)
        grad_sum = functional.activation_backward("relu", grad_out, y)
        grad_skip = grad_sum if self.shortcut is None else self.shortcut.backward(grad_sum)
        result: np.ndarray = functional.add(self.body.backward(grad_sum), grad_skip)
        return result


@functools.cache
def torch_residual() -> type:
    """PyTorch's twin of :class:`Residual` (a function, so that this module imports without torch)."""
    import torch

    class TorchResidual(torch.nn.Module):
        def __init__(self, body: torch.nn.Module, shortcut: torch.nn.Module | None = None) -> None:
            super().__init__()
            self.body = body
            self.shortcut = torch.nn.Identity() if shortcut is None else shortcut
            self.relu = torch.nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.relu(self.body(x) + self.shortcut(x))  # type: ignore[no-any-return]

    return TorchResidual


# -- the architectures ------------------------------------------------------------------------
# ``lib`` is convx.nn or torch.nn, ``residual`` Residual or torch_residual(). Convolutions
# followed by BatchNorm have no bias: BatchNorm subtracts it again, and its gradient is rounding
# noise that no two libraries agree on.


def lenet5(lib: Any, residual: Any) -> Any:
    """LeNet-5 on 1x28x28: conv 6 5x5 (padding 2), pool, conv 16 5x5, pool, 120, 84, 10; ReLU."""
    return lib.Sequential(
        lib.Conv2d(1, 6, 5, padding=2), lib.ReLU(), lib.MaxPool2d(2),
        lib.Conv2d(6, 16, 5), lib.ReLU(), lib.MaxPool2d(2),
        lib.Flatten(),
        lib.Linear(16 * 5 * 5, 120), lib.ReLU(),
        lib.Linear(120, 84), lib.ReLU(),
        lib.Linear(84, 10),
    )


def _conv_bn_relu(lib: Any, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> list[Any]:
    return [
        lib.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        lib.BatchNorm2d(c_out),
        lib.ReLU(),
    ]


def _head(lib: Any, channels: int) -> list[Any]:
    """Global average pool and the classifier (AdaptiveAvgPool2d + Flatten exist in both libraries)."""
    return [lib.AdaptiveAvgPool2d(1), lib.Flatten(), lib.Linear(channels, 10)]


def vgg_bn(lib: Any, residual: Any) -> Any:
    """VGG-style CIFAR net: 3x3 conv+BN+ReLU 3->32, 32->32, max pool, 64, 64, max pool, 128; head."""
    return lib.Sequential(
        *_conv_bn_relu(lib, 3, 32), *_conv_bn_relu(lib, 32, 32), lib.MaxPool2d(2),
        *_conv_bn_relu(lib, 32, 64), *_conv_bn_relu(lib, 64, 64), lib.MaxPool2d(2),
        *_conv_bn_relu(lib, 64, 128),
        *_head(lib, 128),
    )


# (in, out, depthwise stride) of each depthwise-separable block.
MOBILENET_BLOCKS = ((32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2))


def mobilenet(lib: Any, residual: Any) -> Any:
    """MobileNet-style CIFAR net: stem 3x3 conv 3->32, then depthwise 3x3 + BN + ReLU, pointwise 1x1 +
    BN + ReLU blocks (``MOBILENET_BLOCKS``); head."""
    layers = _conv_bn_relu(lib, 3, 32)
    for c_in, c_out, stride in MOBILENET_BLOCKS:
        layers += _conv_bn_relu(lib, c_in, c_in, 3, stride, groups=c_in) + _conv_bn_relu(lib, c_in, c_out, 1)
    return lib.Sequential(*layers, *_head(lib, MOBILENET_BLOCKS[-1][1]))


def _basic_block(lib: Any, residual: Any, c_in: int, c_out: int, stride: int) -> Any:
    """conv-BN-ReLU-conv-BN plus the shortcut (identity, or 1x1 conv + BN where the shape changes)."""
    body = lib.Sequential(
        *_conv_bn_relu(lib, c_in, c_out, 3, stride),
        lib.Conv2d(c_out, c_out, 3, padding=1, bias=False), lib.BatchNorm2d(c_out),
    )
    shortcut = None
    if stride != 1 or c_in != c_out:
        shortcut = lib.Sequential(lib.Conv2d(c_in, c_out, 1, stride=stride, bias=False), lib.BatchNorm2d(c_out))
    return residual(body, shortcut)


# (in, out, stride) of each basic block.
RESNET_BLOCKS = ((32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2))


def resnet(lib: Any, residual: Any) -> Any:
    """ResNet-style CIFAR net: stem 3x3 conv+BN+ReLU 3->32, basic blocks (``RESNET_BLOCKS``: identity
    and stride-2 projection shortcuts); head."""
    blocks = [_basic_block(lib, residual, c_in, c_out, stride) for c_in, c_out, stride in RESNET_BLOCKS]
    return lib.Sequential(*_conv_bn_relu(lib, 3, 32), *blocks, *_head(lib, RESNET_BLOCKS[-1][1]))


@dataclass(frozen=True)
class Net:
    """One benchmark network: its builder and the shape of one input image."""

    name: str
    build: Callable[[Any, Any], Any]
    image_shape: tuple[int, int, int]
    description: str
    classes: int = 10


NETS: dict[str, Net] = {
    net.name: net
    for net in [
        Net("lenet5", lenet5, (1, 28, 28), "LeNet-5, 1x28x28: conv 6 5x5, pool, conv 16 5x5, pool, 120, 84, 10"),
        Net("vgg_bn", vgg_bn, (3, 32, 32),
            "VGG-style with BatchNorm, 3x32x32: 32, 32, pool, 64, 64, pool, 128, avg, 10"),
        Net("mobilenet", mobilenet, (3, 32, 32),
            "MobileNet-style with BatchNorm, 3x32x32: stem 32, depthwise-separable 64, 128 s2, 128, 256 s2, avg, 10"),
        Net("resnet", resnet, (3, 32, 32),
            "ResNet-style, 3x32x32: stem 32, basic blocks 32, 64 s2 (projection), 64, 128 s2 (projection), avg, 10"),
    ]
}


def batch(net: Net, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A float32 input batch (standard normal) and integer labels for ``net``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((size, *net.image_shape), dtype=np.float32)
    target = rng.integers(0, net.classes, size=size)
    return x, target


def convx_model(net: Net, dtype: type = np.float32) -> Module:
    """The convx model of ``net``, its arrays of ``dtype``."""
    # The builders pass no dtype (torch.nn's layers take a torch one): the layers that hold
    # arrays get it here.
    layers = types.SimpleNamespace(**{name: getattr(nn, name) for name in nn.__all__})
    for name in ("Conv2d", "BatchNorm2d", "Linear"):
        setattr(layers, name, functools.partial(getattr(nn, name), dtype=dtype))
    model: Module = net.build(layers, Residual)
    return model


def torch_model(net: Net, seed: int = 0) -> Any:
    """PyTorch's model with its default initialisation from ``seed``, and every BatchNorm's affine
    parameters and running statistics drawn at random (their defaults, 1, 0, 0 and 1, would let a
    comparison in evaluation mode miss a mistake in any of them)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = net.build(torch.nn, torch_residual())
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                size, running_mean, running_var = module.num_features, module.running_mean, module.running_var
                assert running_mean is not None and running_var is not None  # (track_running_stats)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(0.1 * torch.randn(size, generator=generator))
                running_mean.copy_(0.1 * torch.randn(size, generator=generator))
                running_var.copy_(torch.rand(size, generator=generator) + 0.5)
    return model


def convx_copy_of(torch_model: Any, net: Net) -> Module:
    """The convx model of ``net`` holding ``torch_model``'s parameters and buffers (same keys and dtype)."""
    import torch

    float64 = next(iter(torch_model.parameters())).dtype == torch.float64
    model = convx_model(net, np.float64 if float64 else np.float32)
    model.load_state_dict({key: value.detach().numpy() for key, value in torch_model.state_dict().items()})
    return model


def modules(model: Module) -> Iterator[Module]:
    """``model`` and every module inside it, depth first."""
    yield model
    for _, child in model.children():
        yield from modules(child)


def convx_initial_model(net: Net, seed: int = 0) -> Module:
    """Without PyTorch: convx's own initialisation, BatchNorm drawn as in :func:`torch_model`."""
    model = convx_model(net)
    rng = np.random.default_rng(seed)
    for module in modules(model):
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.params["weight"][...] = rng.random(size) + 0.5
            module.params["bias"][...] = 0.1 * rng.standard_normal(size)
            module.buffers["running_mean"][...] = 0.1 * rng.standard_normal(size)
            module.buffers["running_var"][...] = rng.random(size) + 0.5
    return model


def count_parameters(model: Module) -> int:
    return sum(param.data.size for param in model.parameters())
