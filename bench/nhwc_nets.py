"""The benchmark's networks channels last against channels first (issue 20: "an NHWC network runs
with no transposes outside the kernels", NHWC at most 1.05x the NCHW time).

The same models as ``python -m convx.bench --nets`` (VGG-style, MobileNet-style, ResNet-style;
LeNet's Flatten of a 16x5x5 map would order its features differently), built once with every
Conv2d, BatchNorm2d and pooling layer given ``layout='NHWC'``, with the channels-first model's
weights. Checks that both give the same logits and gradients, then times a training step (forward,
cross-entropy, backward, SGD with momentum) and inference of each, interleaved, medians.

    python bench/nhwc_nets.py [--runs 7] [--batch 64] [--nets vgg_bn mobilenet resnet]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
import types

import numpy as np

import convx
from convx import nn
from convx.bench.nets import models
from convx.bench.nets.measure import ConvxTrainer

_LAYOUT_LAYERS = ("Conv2d", "BatchNorm2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d")


def channels_last_model(net: models.Net) -> nn.Module:
    layers = types.SimpleNamespace(**{name: getattr(nn, name) for name in nn.__all__})
    for name in _LAYOUT_LAYERS:
        setattr(layers, name, functools.partial(getattr(nn, name), layout="NHWC"))
    model: nn.Module = net.build(layers, models.Residual)
    return model


def _gradients(model: nn.Module, x: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    loss_fn = nn.CrossEntropyLoss()
    logits = model.train()(x)
    loss_fn(logits, target)
    model.backward(loss_fn.backward())
    return logits, {p.name: p.grad.copy() for p in model.parameters() if p.grad is not None}


def _copies(run: object) -> int:
    """How many times ``run()`` took a convolution's channels-first fallback (a bounded-parts copy)."""
    from convx.functional import conv as conv_module

    original, count = conv_module._layout_parts, [0]

    def counted(batch: int, image_elements: int):  # type: ignore[no-untyped-def]
        count[0] += 1
        return original(batch, image_elements)

    conv_module._layout_parts = counted
    try:
        run()  # type: ignore[operator]
    finally:
        conv_module._layout_parts = original
    return count[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--nets", nargs="+", default=["vgg_bn", "mobilenet", "resnet"])
    args = parser.parse_args()
    print(f"{convx.get_num_threads()} threads, batch {args.batch}, float32, medians of {args.runs} interleaved runs")
    print(f"{'net':10} {'phase':10} {'NCHW ms':>9} {'NHWC ms':>9} {'NHWC/NCHW':>10} {'max rel. diff':>14}")
    for name in args.nets:
        net = models.NETS[name]
        first = models.convx_model(net)
        last = channels_last_model(net)
        last.load_state_dict(first.state_dict())
        x, target = models.batch(net, args.batch)
        x_last = np.ascontiguousarray(np.moveaxis(x, 1, -1))
        logits, grads = _gradients(first, x, target)
        logits_last, grads_last = _gradients(last, x_last, target)
        copies = _copies(lambda: _gradients(last, x_last, target)), _copies(lambda: last.eval()(x_last))
        print(f"{name}: channels-first copies in a channels-last training step {copies[0]}, inference {copies[1]}")
        worst = float(np.abs(logits - logits_last).max() / max(1e-30, np.abs(logits).max()))
        for key, value in grads.items():
            worst = max(worst, float(np.abs(value - grads_last[key]).max() / max(1e-30, np.abs(value).max())))
        trainers = ConvxTrainer(first, x, target), ConvxTrainer(last, x_last, target)
        phases = {
            "training": (trainers[0].step, trainers[1].step),
            "inference": (lambda: first.eval()(x), lambda: last.eval()(x_last)),
        }
        for phase, (run_first, run_last) in phases.items():
            if phase == "training":
                first.train(), last.train()
            run_first(), run_last()
            times: tuple[list[float], list[float]] = ([], [])
            for _ in range(args.runs):
                for index, run in enumerate((run_first, run_last)):
                    start = time.perf_counter()
                    run()
                    times[index].append(time.perf_counter() - start)
            a, b = statistics.median(times[0]), statistics.median(times[1])
            print(f"{name:10} {phase:10} {a * 1e3:9.2f} {b * 1e3:9.2f} {b / a:10.2f} {worst:14.1e}")


if __name__ == "__main__":
    main()
