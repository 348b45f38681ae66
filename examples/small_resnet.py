"""A small ResNet, written the way a PyTorch user writes one, classifying synthetic shapes.

The dataset is drawn here, from a seed: 16x16 grey images of a square, a disc, a cross or a
triangle of random size, position and brightness, with Gaussian noise (nothing downloaded).
The network is ResNet's recipe scaled down: a conv-BN-ReLU stem, three stages of basic blocks
(the first block of the second and third stages halves the resolution and uses a 1x1 stride-2
projection shortcut), global average pooling and a linear classifier. It trains with SGD and
Nesterov momentum under a one-cycle learning-rate schedule, on cross-entropy.

``BasicBlock`` and ``ResNet`` are ``nn.Module`` subclasses whose ``__init__`` assigns layers to
attributes, as in PyTorch (their ``state_dict`` keys are PyTorch's: ``'stages.1.0.conv1.weight'``,
``'stages.1.0.downsample.0.weight'``); ``forward`` is PyTorch's, and ``backward`` walks the same
graph in reverse, because convx has no autograd. One ``nn.ReLU`` is used twice per block and
``nn.Add`` sums the two paths.

    python examples/small_resnet.py                 # 8 epochs of 4,000 images
    python examples/small_resnet.py --epochs 3 --train-size 800 --threads 1

Measured (one thread on a shared two-core machine): the default run reaches 99.7-99.9% accuracy
on 1,000 held-out images (seeds 0 to 2) in 20-70 s; the test suite's run (3 epochs of 800
images, widths 8, 16, 32) reaches 92-99% (seeds 0 to 4) in a few seconds. Chance is 25%.
The arrays are small (batches of 32 images of 16x16) and gain little from threads: on a two-core
machine busy with other programs, a training step took 10 to 30 times longer with two threads
than with ``--threads 1``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import convx
from convx import nn, optim
from convx.optim.lr_scheduler import OneCycleLR

CLASSES = ("square", "disc", "cross", "triangle")


def make_shapes(n, size=16, noise=0.15, seed=0):
    """``n`` noisy images of one shape each, and their class indices.

    Parameters
    ----------
    n : int
    size : int, default 16
        Images are ``size`` x ``size``.
    noise : float, default 0.15
        Standard deviation of the Gaussian noise added to every pixel.
    seed : int or numpy.random.Generator, default 0

    Returns
    -------
    images : ndarray (n, 1, size, size) of float32
        Shapes of brightness 0.5 to 1 on a black background, plus noise.
    labels : ndarray (n,) of int64
        Indices into :data:`CLASSES`, balanced (each class ``n // 4`` or one more times).
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((n, 1, size, size), dtype=np.float32)
    for index, label in enumerate(labels):
        radius = rng.uniform(0.18, 0.4) * size
        cy, cx = rng.uniform(radius, size - 1 - radius, size=2)
        dy, dx = rows - cy, cols - cx
        if CLASSES[label] == "square":
            mask = (np.abs(dy) <= radius * 0.8) & (np.abs(dx) <= radius * 0.8)
        elif CLASSES[label] == "disc":
            mask = dy**2 + dx**2 <= radius**2
        elif CLASSES[label] == "cross":
            arm = max(1.0, radius / 3)
            mask = ((np.abs(dy) <= arm) & (np.abs(dx) <= radius)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= radius))
        else:  # a triangle pointing up
            mask = (dy <= radius) & (np.abs(dx) <= (dy + radius) / 2)
        images[index, 0] = mask * rng.uniform(0.5, 1.0)
    images += rng.normal(0.0, noise, size=images.shape).astype(np.float32)
    return images, labels


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 conv-BN layers and a shortcut, summed, then ReLU.

    With ``stride`` 2 or a change of width, the shortcut is a 1x1 convolution with that stride
    and BatchNorm (``downsample``, as torchvision names it); otherwise it is ``x`` itself.
    """

    def __init__(self, in_channels, out_channels, stride=1, rng=None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False, rng=rng)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()  # used twice in forward
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False, rng=rng)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False, rng=rng),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.downsample = None
        self.add = nn.Add()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.add(out, identity))

    def backward(self, grad):
        # The forward in reverse; each backward of the ReLU undoes its latest call not yet undone.
        grad = self.relu.backward(grad)
        grad_out, grad_identity = self.add.backward(grad)
        if self.downsample is not None:
            grad_identity = self.downsample.backward(grad_identity)
        grad_out = self.conv2.backward(self.bn2.backward(grad_out))
        grad_out = self.conv1.backward(self.bn1.backward(self.relu.backward(grad_out)))
        return grad_out + grad_identity


class ResNet(nn.Module):
    """Stem, stages of :class:`BasicBlock`, global average pooling, linear classifier.

    Parameters
    ----------
    widths : sequence of int, default (16, 32, 64)
        Channels of each stage; every stage after the first starts with a stride-2 block.
    blocks_per_stage : int, default 1
    in_channels, num_classes : int
    rng : int or numpy.random.Generator, optional
        Seeds the initial weights.
    """

    def __init__(self, widths=(16, 32, 64), blocks_per_stage=1, in_channels=1, num_classes=len(CLASSES), rng=None):
        super().__init__()
        rng = np.random.default_rng(rng)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False, rng=rng),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        stages = []
        previous = widths[0]
        for index, width in enumerate(widths):
            blocks = [BasicBlock(previous, width, stride=1 if index == 0 else 2, rng=rng)]
            blocks += [BasicBlock(width, width, rng=rng) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            previous = width
        self.stages = nn.ModuleList(stages)
        self.pool = nn.GlobalAvgPool2d()  # (N, C, H, W) -> (N, C)
        self.fc = nn.Linear(previous, num_classes, rng=rng)

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.fc(self.pool(x))

    def backward(self, grad):
        grad = self.pool.backward(self.fc.backward(grad))
        for stage in reversed(self.stages):
            grad = stage.backward(grad)
        return self.stem.backward(grad)


def accuracy(model, images, labels, batch_size=500):
    """Fraction of ``images`` classified as ``labels``, in evaluation mode (the mode is restored)."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start : start + batch_size])
        correct += int(np.count_nonzero(logits.argmax(axis=1) == labels[start : start + batch_size]))
    model.train(was_training)
    return correct / len(images)


def train(epochs=8, train_size=4000, test_size=1000, batch_size=32, max_lr=0.1, widths=(16, 32, 64),
          blocks_per_stage=1, seed=0, log=print):
    """Train :class:`ResNet` on :func:`make_shapes` images; returns its history.

    Parameters
    ----------
    epochs, train_size, test_size, batch_size : int
        The test images come from another seed than the training images.
    max_lr : float, default 0.1
        Peak learning rate of the one-cycle schedule (stepped after every batch).
    widths, blocks_per_stage
        The architecture (see :class:`ResNet`).
    seed : int, default 0
        Seeds the data, the weights and the shuffling.
    log : callable or None, default print
        Receives one line per epoch.

    Returns
    -------
    history : dict
        ``'train_loss'``, ``'train_accuracy'`` (per epoch, averaged over its batches in training
        mode), ``'test_accuracy'`` (per epoch, on the held-out images), ``'seconds'`` and
        ``'model'``.
    """
    log = log or (lambda message: None)
    x_train, y_train = make_shapes(train_size, seed=2 * seed)
    x_test, y_test = make_shapes(test_size, seed=2 * seed + 1)
    rng = np.random.default_rng(seed)
    model = ResNet(widths, blocks_per_stage, rng=rng)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = optim.SGD(model.parameters(), lr=max_lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps_per_epoch = -(-train_size // batch_size)
    scheduler = OneCycleLR(optimizer, max_lr=max_lr, epochs=epochs, steps_per_epoch=steps_per_epoch)
    history = {"train_loss": [], "train_accuracy": [], "test_accuracy": []}
    start_time = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order = rng.permutation(train_size)
        loss_sum = correct = 0.0
        for start in range(0, train_size, batch_size):
            index = order[start : start + batch_size]
            images, labels = x_train[index], y_train[index]
            optimizer.zero_grad()
            logits = model(images)
            loss = loss_fn(logits, labels)
            model.backward(loss_fn.backward())
            optimizer.step()
            scheduler.step()
            loss_sum += loss * len(index)
            correct += np.count_nonzero(logits.argmax(axis=1) == labels)
        history["train_loss"].append(loss_sum / train_size)
        history["train_accuracy"].append(correct / train_size)
        history["test_accuracy"].append(accuracy(model, x_test, y_test))
        log(f"epoch {epoch:2d}/{epochs}  loss {history['train_loss'][-1]:.4f}  "
            f"train acc {history['train_accuracy'][-1]:6.2%}  test acc {history['test_accuracy'][-1]:6.2%}  "
            f"({time.perf_counter() - start_time:.1f} s)")
    history["seconds"] = time.perf_counter() - start_time
    history["model"] = model
    return history


def main(argv=None) -> int:
    """Command line: ``python examples/small_resnet.py [--epochs N] [--train-size N] ...``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="convx kernel threads (default: all cores)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        convx.set_num_threads(args.threads)
    history = train(epochs=args.epochs, train_size=args.train_size, test_size=args.test_size,
                    batch_size=args.batch_size, max_lr=args.max_lr, seed=args.seed)
    print(f"test accuracy {history['test_accuracy'][-1]:.2%} on {args.test_size} held-out images "
          f"after {history['seconds']:.1f} s on {convx.get_num_threads()} thread(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
