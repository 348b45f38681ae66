"""A shortened run of examples/train_digits.py: real data, real training, a few seconds."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_digits.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("train_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_data_split_is_stratified(example):
    splits = example.load_digits_split()
    sizes = {name: len(labels) for name, (_, labels) in splits.items()}
    assert sizes == {"train": 1293, "validation": 144, "test": 360}
    images, labels = splits["train"]
    assert images.shape == (1293, 1, 8, 8) and images.dtype.name == "float32"
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert set(labels.tolist()) == set(range(10))
    for _, split_labels in splits.values():  # stratified: every class, in its overall proportion (~10%)
        counts = np.bincount(split_labels, minlength=10)
        assert counts.min() > 0.08 * len(split_labels) and counts.max() < 0.12 * len(split_labels)


def test_short_training_run_learns(example):
    lines = []
    history = example.train(epochs=3, train_limit=600, progress=False, log=lines.append)
    losses = history["train_loss"]
    assert len(losses) == 3 and len(lines) == 4
    assert losses[-1] < 0.6 * losses[0]
    # Chance is 10%; three short epochs already get most held-out digits right.
    assert history["validation_accuracy"][-1] > 0.6
    assert history["test_accuracy"] > 0.6
    assert lines[-1].startswith("test accuracy")


def test_command_line_writes_the_learning_curve(example, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "curve.png"
    assert example.main(["--epochs", "1", "--train-limit", "200", "--no-progress", "--plot", str(plot)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "test accuracy" in capsys.readouterr().out
