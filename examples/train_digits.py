"""Train a LeNet-style CNN on scikit-learn's handwritten digits with convx.nn.

The 1,797 8x8 grey-level digits ship inside scikit-learn (``sklearn.datasets.load_digits``), so
nothing is downloaded. A stratified 20% is held out as the test set and touched once, at the end;
10% of the rest is a validation set watched after every epoch.

    pip install ".[examples]"          # scikit-learn, tqdm, matplotlib
    python examples/train_digits.py        # about 97-99% test accuracy
    python examples/train_digits.py --epochs 5 --plot curve.png

From Python, ``train(...)`` returns the trained model and its history, and ``main(argv)`` is the
command line.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

import convx
from convx import nn, optim

N_CLASSES = 10


def load_digits_split(test_fraction=0.2, validation_fraction=0.1, seed=0):
    """The digits as float32 images (N, 1, 8, 8) in [0, 1], split into train/validation/test.

    Returns
    -------
    splits : dict of str to (ndarray (N, 1, 8, 8), ndarray (N,) of int64)
        ``'train'``, ``'validation'`` and ``'test'``, each stratified by class.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # pixel values are 0..16
    labels = digits.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(
        images, labels, test_size=test_fraction, stratify=labels, random_state=seed
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=validation_fraction, stratify=y_rest, random_state=seed
    )
    return {"train": (x_train, y_train), "validation": (x_val, y_val), "test": (x_test, y_test)}


def lenet(rng) -> nn.Sequential:
    """LeNet-5's shape (two conv/pool stages, three fully connected layers) for 8x8 inputs."""
    # No conv bias before BatchNorm: the normalisation would subtract it again.
    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=3, padding=1, bias=False, rng=rng),  # (N, 16, 8, 8)
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (N, 16, 4, 4)
        nn.Conv2d(16, 32, kernel_size=3, padding=1, bias=False, rng=rng),  # (N, 32, 4, 4)
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (N, 32, 2, 2)
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, 120, rng=rng),
        nn.ReLU(),
        nn.Linear(120, 84, rng=rng),
        nn.ReLU(),
        nn.Dropout(0.25, rng=rng),
        nn.Linear(84, N_CLASSES, rng=rng),
    )


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 512) -> float:
    """Fraction of correctly classified images, in evaluation mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start : start + batch_size])
        correct += int(np.count_nonzero(logits.argmax(axis=1) == labels[start : start + batch_size]))
    model.train(was_training)
    return correct / len(images)


def _progress_bar(iterable, total, description, enabled):
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is in the examples extra; train without a bar when it is absent
        return iterable
    return tqdm(iterable, total=total, desc=description, leave=False, unit="batch")


def train(
    epochs=30,
    batch_size=32,
    lr=2e-3,
    seed=0,
    train_limit=None,
    progress=True,
    log=print,
):
    """Train the LeNet-style network with Adam and cross-entropy.

    Parameters
    ----------
    epochs : int, default 30
    batch_size : int, default 32
    lr : float, default 2e-3
        Adam's learning rate.
    seed : int, default 0
        Seeds the weights, the dropout masks, the shuffling and the data split.
    train_limit : int, optional
        Train on only the first ``train_limit`` training images (for quick runs and tests).
    progress : bool, default True
        Show a tqdm progress bar per epoch (when tqdm is installed).
    log : callable or None, default print
        Receives one line per epoch and the final result.

    Returns
    -------
    history : dict
        ``'train_loss'``, ``'train_accuracy'``, ``'validation_accuracy'`` (one entry per epoch;
        the training numbers are averages over the epoch's batches, in training mode),
        ``'test_accuracy'``, ``'seconds'`` (training and evaluation wall time) and ``'model'``.
    """
    log = log or (lambda message: None)
    splits = load_digits_split(seed=seed)
    x_train, y_train = splits["train"]
    if train_limit is not None:
        x_train, y_train = x_train[:train_limit], y_train[:train_limit]
    rng = np.random.default_rng(seed)
    model = lenet(rng)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = optim.Adam(model.parameters(), lr=lr)
    history = {"train_loss": [], "train_accuracy": [], "validation_accuracy": []}
    n_batches = -(-len(x_train) // batch_size)

    start_time = time.perf_counter()
    for epoch in range(1, epochs + 1):
        # Cosine decay: large steps early, small ones to settle at the end.
        optimizer.param_groups[0]["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / epochs))
        model.train()
        order = rng.permutation(len(x_train))
        loss_sum = correct = 0.0
        batches = _progress_bar(range(n_batches), n_batches, f"epoch {epoch}/{epochs}", progress)
        for batch in batches:
            index = order[batch * batch_size : (batch + 1) * batch_size]
            images, labels = x_train[index], y_train[index]
            optimizer.zero_grad()
            logits = model(images)
            loss = loss_fn(logits, labels)
            model.backward(loss_fn.backward())
            optimizer.step()
            loss_sum += loss * len(index)
            correct += np.count_nonzero(logits.argmax(axis=1) == labels)
            if hasattr(batches, "set_postfix"):
                batches.set_postfix(loss=f"{loss:.3f}")
        history["train_loss"].append(loss_sum / len(x_train))
        history["train_accuracy"].append(correct / len(x_train))
        history["validation_accuracy"].append(accuracy(model, *splits["validation"]))
        log(
            f"epoch {epoch:3d}/{epochs}  loss {history['train_loss'][-1]:.4f}  "
            f"train acc {history['train_accuracy'][-1]:6.2%}  "
            f"validation acc {history['validation_accuracy'][-1]:6.2%}  "
            f"({time.perf_counter() - start_time:.1f} s)"
        )
    history["test_accuracy"] = accuracy(model, *splits["test"])
    history["seconds"] = time.perf_counter() - start_time
    history["model"] = model
    log(
        f"test accuracy {history['test_accuracy']:.2%} on {len(splits['test'][1])} held-out digits; "
        f"{history['seconds']:.1f} s on {convx.get_num_threads()} thread(s)"
    )
    return history


def plot_learning_curve(history: dict, path) -> None:
    """Save the per-epoch loss and accuracies as a two-panel figure (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(history["train_loss"]) + 1)
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axes.plot(epochs, history["train_loss"], marker="o")
    loss_axes.set(xlabel="epoch", ylabel="cross-entropy", title="training loss", yscale="log")
    accuracy_axes.plot(epochs, history["train_accuracy"], marker="o", label="train")
    accuracy_axes.plot(epochs, history["validation_accuracy"], marker="o", label="validation")
    accuracy_axes.axhline(history["test_accuracy"], color="k", linestyle="--", label="test (final)")
    accuracy_axes.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    accuracy_axes.legend()
    figure.suptitle("convx.nn LeNet on scikit-learn digits")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv=None) -> int:
    """Command line: ``python examples/train_digits.py [--epochs N] [--plot FILE.png] ...``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-limit", type=int, default=None, help="use only this many training images")
    parser.add_argument("--threads", type=int, default=None, help="convx kernel threads (default: all cores)")
    parser.add_argument("--plot", metavar="FILE.png", default=None, help="save the learning curve here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.threads is not None:
        convx.set_num_threads(args.threads)
    history = train(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        train_limit=args.train_limit,
        progress=not args.no_progress,
    )
    if args.plot:
        plot_learning_curve(history, args.plot)
        print(f"learning curve saved to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
