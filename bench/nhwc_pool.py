"""NHWC / NCHW time ratios of convx's pooling ops (issue 20's target: NHWC at most 1.05x NCHW).

Each case times the op on the same data in both layouts, interleaved (NCHW, NHWC, NCHW, ...), and
prints the medians, their ratio and the ratio of the fastest runs (steadier on a shared machine).
Run: ``python bench/nhwc_pool.py [--repeat 21] [--threads N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import convx
from convx import functional as F


def _max_backward(x, layout, **kwargs):
    y, indices = F.max_pool2d(x, **kwargs, return_indices=True, layout=layout)
    return lambda: F.max_pool2d_backward(y, indices, x.shape, layout=layout)


def _avg_backward(x, layout, **kwargs):
    y = F.avg_pool2d(x, **kwargs, layout=layout)
    return lambda: F.avg_pool2d_backward(y, x.shape, **kwargs, layout=layout)


def _op(op, **fixed):
    def build(x, layout, **kwargs):
        return lambda: op(x, **kwargs, **fixed, layout=layout)
    return build


K3S2 = dict(kernel_size=3, stride=2, padding=1)
K2S2 = dict(kernel_size=2, stride=2)
# (name, build(x, layout, **kwargs) -> the call to time, kwargs)
CASES = [
    ("max_pool2d 3x3/2 p1", _op(F.max_pool2d), K3S2),
    ("max_pool2d 2x2/2", _op(F.max_pool2d), K2S2),
    ("max_pool2d 3x3/2 +idx", _op(F.max_pool2d, return_indices=True), K3S2),
    ("avg_pool2d 3x3/2 p1", _op(F.avg_pool2d), K3S2),
    ("avg_pool2d 2x2/2", _op(F.avg_pool2d), K2S2),
    ("max_pool2d_bwd 3x3/2", _max_backward, K3S2),
    ("max_pool2d_bwd 2x2/2", _max_backward, K2S2),
    ("avg_pool2d_bwd 3x3/2", _avg_backward, K3S2),
    ("adaptive_avg_pool2d 1", _op(F.adaptive_avg_pool2d), dict(output_size=1)),
]
SHAPES = [(64, 64, 56, 56), (64, 64, 32, 32)]  # NCHW: C=64 56x56 (ResNet's first pooling), C=64 32x32


def _time(fn, repeat: int) -> list[float]:
    return [_once(fn) for _ in range(repeat)]


def _once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        convx.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"{'case':<24} {'shape (NCHW)':<18} {'NCHW ms':>9} {'NHWC ms':>9} {'ratio':>6} {'min ratio':>9}")
    for shape in SHAPES:
        x_nchw = rng.standard_normal(shape, dtype=np.float32)
        x_nhwc = np.ascontiguousarray(np.moveaxis(x_nchw, 1, -1))
        for name, build, kwargs in CASES:
            first = build(x_nchw, "NCHW", **kwargs)
            last = build(x_nhwc, "NHWC", **kwargs)
            first(), last()
            t_first, t_last = [], []
            for _ in range(args.repeat):
                t_first.append(_once(first))
                t_last.append(_once(last))
            a, b = statistics.median(t_first) * 1e3, statistics.median(t_last) * 1e3
            fastest = min(t_last) / min(t_first)
            print(f"{name:<24} {str(shape):<18} {a:9.3f} {b:9.3f} {b / a:6.2f} {fastest:9.2f}")


if __name__ == "__main__":
    main()
