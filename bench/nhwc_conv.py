"""Channels-last convolutions against channels-first ones (issue 20's target: NHWC at most 1.05x
the NCHW time): each op in both layouts, interleaved, medians of ``--runs`` runs, and the ratio
of the fastest runs (steadier on a shared machine).

    python bench/nhwc_conv.py [--runs 9] [--batch 64]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

import convx

# name: (C_in, H, W, C_out, kernel, kwargs)
CASES = {
    "vgg 3->32 32x32": (3, 32, 32, 32, 3, dict(padding=1)),
    "vgg 32->32 32x32": (32, 32, 32, 32, 3, dict(padding=1)),
    "vgg 64->64 16x16": (64, 16, 16, 64, 3, dict(padding=1)),
    "resnet 64->128 s2": (64, 16, 16, 128, 3, dict(stride=2, padding=1)),
    "resnet 32->64 s2 32x32": (32, 32, 32, 64, 3, dict(stride=2, padding=1)),
    "projection 1x1 s2": (64, 16, 16, 128, 1, dict(stride=2)),
    "pointwise 64->128": (64, 16, 16, 128, 1, {}),
    "depthwise 64 3x3": (64, 16, 16, 64, 3, dict(padding=1, groups=64)),
}


def _time(fn, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--cases", nargs="*", default=list(CASES), help="a subset of the cases (by name)")
    parser.add_argument("--ops", nargs="*", default=["forward", "input", "weight", "backward"],
                        help="a subset of the ops")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{platform.processor() or platform.machine()}, {convx.get_num_threads()} threads, batch {args.batch}, "
          f"float32, medians of {args.runs} interleaved runs")
    print(f"{'case':22} {'op':9} {'NCHW ms':>9} {'NHWC ms':>9} {'NHWC/NCHW':>10} {'min ratio':>10}")
    for name in args.cases:
        c_in, h, w, c_out, k, kwargs = CASES[name]
        groups = kwargs.get("groups", 1)
        x = rng.standard_normal((args.batch, c_in, h, w), dtype=np.float32)
        weight = rng.standard_normal((c_out, c_in // groups, k, k), dtype=np.float32)
        bias = rng.standard_normal(c_out, dtype=np.float32)
        x_last = np.ascontiguousarray(np.moveaxis(x, 1, -1))
        y = convx.conv2d(x, weight, bias, **kwargs)
        g = rng.standard_normal(y.shape, dtype=np.float32)
        g_last = np.ascontiguousarray(np.moveaxis(g, 1, -1))
        ops = {
            "forward": (lambda: convx.conv2d(x, weight, bias, **kwargs),
                        lambda: convx.conv2d(x_last, weight, bias, **kwargs, layout="NHWC")),
            "input": (lambda: convx.conv2d_backward_input(g, weight, x.shape, **kwargs),
                      lambda: convx.conv2d_backward_input(g_last, weight, x_last.shape, **kwargs, layout="NHWC")),
            "weight": (lambda: convx.conv2d_backward_weight(g, x, weight.shape, **kwargs),
                       lambda: convx.conv2d_backward_weight(g_last, x_last, weight.shape, **kwargs, layout="NHWC")),
            "backward": (lambda: convx.conv2d_backward(g, x, weight, **kwargs),
                         lambda: convx.conv2d_backward(g_last, x_last, weight, **kwargs, layout="NHWC")),
        }
        for op, (first, last) in ops.items():
            if op not in args.ops:
                continue
            first(), last()
            times: dict[str, list[float]] = {"first": [], "last": []}
            for _ in range(args.runs):
                times["first"].append(_time(first))
                times["last"].append(_time(last))
            a, b = statistics.median(times["first"]), statistics.median(times["last"])
            fastest = min(times["last"]) / min(times["first"])
            print(f"{name:22} {op:9} {a * 1e3:9.2f} {b * 1e3:9.2f} {b / a:10.2f} {fastest:10.2f}")


if __name__ == "__main__":
    main()
