"""examples/small_resnet.py and examples/small_unet.py: their data, their models against PyTorch
twins written in this file (state_dict keys, outputs, loss and every gradient in float64), and
shortened training runs that must reach a stated held-out score."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import convx

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def resnet_example():
    return load_example("small_resnet")


@pytest.fixture(scope="module")
def unet_example():
    return load_example("small_unet")


@pytest.fixture
def one_thread():
    """The training runs' arrays are tiny (a batch of 32 images of 16x16): one thread is as fast
    as two, and stays fast when the suite shares the machine with other work."""
    previous = convx.get_num_threads()
    convx.set_num_threads(1)
    yield
    convx.set_num_threads(previous)


def assert_close(ours, theirs, what, rtol=1e-10):
    """Relative to the largest magnitude of PyTorch's array."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, what
    assert ours.dtype == np.float64, what
    scale = max(float(np.max(np.abs(theirs))), 1e-300)
    error = float(np.max(np.abs(ours - theirs))) / scale
    assert error <= rtol, f"{what}: relative error {error:.3g}"


# ----------------------------------------------------------------------------- PyTorch twins
def torch_resnet(torch, widths, in_channels=1, num_classes=4):
    """examples/small_resnet.py's ResNet as a PyTorch user writes it (torchvision's BasicBlock)."""
    tnn = torch.nn

    class BasicBlock(tnn.Module):
        def __init__(self, cin, cout, stride=1):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.relu = tnn.ReLU()
            self.conv2 = tnn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                                 tnn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            identity = x if self.downsample is None else self.downsample(x)
            return self.relu(out + identity)

    class ResNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.stem = tnn.Sequential(tnn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                       tnn.BatchNorm2d(widths[0]), tnn.ReLU())
            stages, previous = [], widths[0]
            for index, width in enumerate(widths):
                stages.append(tnn.Sequential(BasicBlock(previous, width, 1 if index == 0 else 2)))
                previous = width
            self.stages = tnn.ModuleList(stages)
            self.pool = tnn.AdaptiveAvgPool2d(1)
            self.fc = tnn.Linear(previous, num_classes)

        def forward(self, x):
            x = self.stem(x)
            for stage in self.stages:
                x = stage(x)
            return self.fc(torch.flatten(self.pool(x), 1))

    return ResNet()


def torch_unet(torch, width, in_channels=1, num_classes=3):
    """examples/small_unet.py's UNet as a PyTorch user writes it."""
    tnn = torch.nn

    def conv_block(cin, cout):
        return tnn.Sequential(tnn.Conv2d(cin, cout, 3, padding=1, bias=False), tnn.BatchNorm2d(cout), tnn.ReLU(),
                              tnn.Conv2d(cout, cout, 3, padding=1, bias=False), tnn.BatchNorm2d(cout), tnn.ReLU())

    class UNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.enc1 = conv_block(in_channels, width)
            self.enc2 = conv_block(width, 2 * width)
            self.bottleneck = conv_block(2 * width, 4 * width)
            self.pool = tnn.MaxPool2d(2)
            self.up2 = tnn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
            self.dec2 = conv_block(4 * width, 2 * width)
            self.up1 = tnn.ConvTranspose2d(2 * width, width, 2, stride=2)
            self.dec1 = conv_block(2 * width, width)
            self.head = tnn.Conv2d(width, num_classes, 1)

        def forward(self, x):
            e1 = self.enc1(x)
            e2 = self.enc2(self.pool(e1))
            b = self.bottleneck(self.pool(e2))
            d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
            d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
            return self.head(d1)

    return UNet()


def compare_with_twin(torch, ours, theirs, x, target, mode):
    """Load our float64 state into PyTorch's twin; one batch through both with cross-entropy;
    the loss, the logits, the input gradient, every parameter gradient and (in training) the
    updated running statistics must agree."""
    ours = ours.double()
    theirs = theirs.double()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict({key: torch.from_numpy(value) for key, value in ours.state_dict().items()})
    ours.train(mode == "train")
    theirs.train(mode == "train")
    loss_fn = convx.nn.CrossEntropyLoss()
    logits = ours(x)
    loss = loss_fn(logits, target)
    grad_x = ours.backward(loss_fn.backward())
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    tlogits = theirs(tx)
    tloss = torch.nn.functional.cross_entropy(tlogits, torch.from_numpy(target))
    tloss.backward()
    assert abs(loss - tloss.item()) <= 1e-10 * abs(tloss.item())
    assert_close(logits, tlogits.detach().numpy(), "logits")
    assert_close(grad_x, tx.grad.numpy(), "input gradient")
    grads = {param.name: param.grad for param in ours.parameters()}
    assert list(grads) == [name for name, _ in theirs.named_parameters()]
    for name, param in theirs.named_parameters():
        assert_close(grads[name], param.grad.numpy(), name)
    state = ours.state_dict()
    for key, value in theirs.state_dict().items():
        if value.is_floating_point():
            assert_close(state[key], value.numpy(), key)
        else:
            assert state[key] == value.item(), key


# ----------------------------------------------------------------------------- small_resnet.py
def test_shapes_are_seeded_balanced_and_noisy(resnet_example):
    images, labels = resnet_example.make_shapes(203, seed=3)
    again, same_labels = resnet_example.make_shapes(203, seed=3)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, same_labels)
    assert images.shape == (203, 1, 16, 16) and images.dtype == np.float32 and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [51, 51, 51, 50]
    other, _ = resnet_example.make_shapes(203, seed=4)
    assert not np.array_equal(images, other)
    # Noise on the background, the shape clearly brighter.
    background = images[:, 0, 0, 0]
    assert 0.1 < background.std() < 0.2
    assert images.reshape(203, -1).max(axis=1).min() > 0.5


def test_resnet_state_dict_keys_are_pytorchs(resnet_example, torch):
    model = resnet_example.ResNet(widths=(8, 16, 32), rng=0)
    keys = list(model.state_dict())
    assert keys[:6] == ["stem.0.weight", "stem.1.weight", "stem.1.bias", "stem.1.running_mean",
                        "stem.1.running_var", "stem.1.num_batches_tracked"]
    for key in ["stages.0.0.conv1.weight", "stages.0.0.bn2.running_var", "stages.1.0.conv2.weight",
                "stages.1.0.downsample.0.weight", "stages.2.0.downsample.1.bias", "fc.weight", "fc.bias"]:
        assert key in keys, key
    assert not any(key.startswith("stages.0.0.downsample") for key in keys)  # identity shortcut
    assert keys == list(torch_resnet(torch, (8, 16, 32)).state_dict())
    assert [p.name for p in model.parameters()] == [name for name, _ in torch_resnet(torch, (8, 16, 32)).named_parameters()]


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_resnet_matches_its_pytorch_twin(resnet_example, torch, mode):
    images, labels = resnet_example.make_shapes(6, seed=1)
    model = resnet_example.ResNet(widths=(4, 8, 12), rng=0)
    if mode == "eval":  # running statistics that are not the initial ones
        model(resnet_example.make_shapes(8, seed=2)[0])
    compare_with_twin(torch, model, torch_resnet(torch, (4, 8, 12)), images.astype(np.float64), labels, mode)


def test_resnet_short_run_learns(resnet_example, one_thread):
    # Measured on seeds 0-4: 0.92-0.99 held-out accuracy after the last epoch (chance is 0.25).
    lines = []
    history = resnet_example.train(epochs=3, train_size=800, test_size=400, widths=(8, 16, 32), seed=0,
                                   log=lines.append)
    assert len(lines) == 3 and lines[-1].startswith("epoch  3/3")
    assert history["train_loss"][-1] < 0.5 * history["train_loss"][0]
    assert history["test_accuracy"][-1] >= 0.85
    model = history["model"]
    assert resnet_example.accuracy(model, *resnet_example.make_shapes(200, seed=99)) >= 0.85
    assert model.training  # accuracy() puts the mode back


def test_resnet_command_line(resnet_example, one_thread, capsys):
    assert resnet_example.main(["--epochs", "1", "--train-size", "64", "--test-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "epoch  1/1" in out and "test accuracy" in out and "on 32 held-out images" in out


# ------------------------------------------------------------------------------ small_unet.py
def test_scenes_are_seeded_with_masks_that_match(unet_example):
    images, masks = unet_example.make_scenes(50, seed=5)
    again, same_masks = unet_example.make_scenes(50, seed=5)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(masks, same_masks)
    assert images.shape == (50, 1, 16, 16) and images.dtype == np.float32
    assert masks.shape == (50, 16, 16) and masks.dtype == np.int64
    assert set(np.unique(masks).tolist()) == {0, 1, 2}
    # Shape pixels are brighter than the background on average; both classes look alike.
    foreground, background = images[:, 0][masks > 0], images[:, 0][masks == 0]
    assert foreground.mean() > background.mean() + 0.4
    assert abs(images[:, 0][masks == 1].mean() - images[:, 0][masks == 2].mean()) < 0.1


def test_mean_iou(unet_example):
    target = np.array([[0, 1, 1], [2, 2, 0]])
    assert unet_example.mean_iou(target, target) == 1.0
    predicted = np.array([[0, 1, 0], [2, 2, 2]])
    # disc: 1 common of 2 -> 0.5; cross: 2 common of 3 -> 2/3
    assert unet_example.mean_iou(predicted, target) == pytest.approx((0.5 + 2 / 3) / 2)
    assert unet_example.mean_iou(np.zeros((2, 2), int), np.zeros((2, 2), int)) == 1.0  # no shape anywhere
    assert unet_example.mean_iou(np.full((2, 2), 2), np.ones((2, 2), int)) == 0.0


def test_unet_state_dict_keys_are_pytorchs(unet_example, torch):
    model = unet_example.UNet(width=4, rng=0)
    keys = list(model.state_dict())
    assert keys[:3] == ["enc1.0.weight", "enc1.1.weight", "enc1.1.bias"]
    for key in ["enc2.3.weight", "bottleneck.4.running_mean", "up2.weight", "up2.bias", "dec2.0.weight",
                "up1.weight", "dec1.4.num_batches_tracked", "head.weight", "head.bias"]:
        assert key in keys, key
    assert model.up2.weight.shape == (16, 8, 2, 2) and model.dec2[0].weight.shape == (8, 16, 3, 3)
    assert keys == list(torch_unet(torch, 4).state_dict())


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_unet_matches_its_pytorch_twin(unet_example, torch, mode):
    images, masks = unet_example.make_scenes(3, size=12, seed=1)
    model = unet_example.UNet(width=4, rng=0)
    if mode == "eval":
        model(unet_example.make_scenes(4, size=12, seed=2)[0])
    compare_with_twin(torch, model, torch_unet(torch, 4), images.astype(np.float64), masks, mode)


def test_unet_short_run_learns(unet_example, one_thread):
    # Measured on seeds 0-5: a mean IoU of 0.81-0.84 over the two shape classes after the last
    # epoch (predicting background everywhere scores 0; before training below 0.1).
    lines = []
    history = unet_example.train(epochs=5, train_size=1000, test_size=300, width=8, lr=1e-2, seed=0,
                                 log=lines.append)
    assert len(lines) == 5 and "test mean IoU" in lines[-1]
    assert history["train_loss"][-1] < 0.3 * history["train_loss"][0]
    assert history["test_iou"][-1] >= 0.7
    model = history["model"]
    assert unet_example.evaluate(model, *unet_example.make_scenes(100, seed=99)) >= 0.7
    assert model.training


def test_unet_command_line(unet_example, one_thread, capsys):
    assert unet_example.main(["--epochs", "1", "--train-size", "64", "--test-size", "32", "--width", "4"]) == 0
    out = capsys.readouterr().out
    assert "epoch  1/1" in out and "test mean IoU" in out and "on 32 held-out images" in out
