"""The measurements behind DW_DIRECT_FROM (src/convx/_depthwise.pxi): for 3x3 stride-1 depthwise
layers, the phase-split sweeps' time over the direct loops' for each op and row length.

Both implementations are forced in turn (``convx._core.set_depthwise_kernel``) and their kernels
called directly on preallocated outputs, batch 32 and C*H*W = 2**16 per image, in interleaved
rounds of a few calls each; medians. A ratio above 1 means the direct loops win::

    PYTHONPATH=src python bench/depthwise_crossovers.py --threads 1 2 --dtype float32 float64

The table holds the first row length from which the ratios stay above 1 (on one CPU: run this on
another and the crossovers may lie elsewhere).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import convx
from convx import _core

OPS = ("forward", "input", "weight")


def _kernel(op: str, channels: int, size: int, batch: int, dtype: np.dtype, threads: int):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, channels, size, size)).astype(dtype)
    weight = rng.standard_normal((channels, 1, 3, 3)).astype(dtype)
    grad_out = rng.standard_normal(x.shape).astype(dtype)
    out = np.empty_like(x)
    grad_weight = np.empty_like(weight)
    no_bias = np.empty(0, dtype)
    args = (1, 1, 1, 1, 1, 1, channels, threads)
    if op == "forward":
        return lambda: _core.depthwise_forward(x, weight, no_bias, out, *args)
    if op == "input":
        return lambda: _core.depthwise_backward_input(grad_out, weight, out, *args)
    return lambda: _core.depthwise_backward_weight(grad_out, x, grad_weight, *args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dtype", nargs="+", default=["float32", "float64"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 24, 32, 40, 48, 56, 64, 80, 112])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    saved = _core.depthwise_kernel()
    try:
        for dtype in map(np.dtype, args.dtype):
            for threads in args.threads:
                convx.set_num_threads(threads)
                for size in args.sizes:
                    channels = max(8, min(512, 2**16 // (size * size)))
                    ratios = []
                    for op in OPS:
                        call = _kernel(op, channels, size, args.batch, dtype, threads)
                        calls = max(3, min(50, int(2e6 / (args.batch * channels * size * size))))
                        times: dict[str, list[float]] = {"split": [], "direct": []}
                        for _ in range(args.rounds):
                            for mode, spent in times.items():
                                _core.set_depthwise_kernel(mode)
                                call()
                                for _ in range(calls):
                                    start = time.perf_counter()
                                    call()
                                    spent.append(time.perf_counter() - start)
                        ratios.append(np.median(times["split"]) / np.median(times["direct"]))
                    print(f"{dtype} {threads} thread(s) {size:3d}x{size:<3d} C{channels:<3d} "
                          + "  ".join(f"{op} {ratio:4.2f}" for op, ratio in zip(OPS, ratios)), flush=True)
    finally:
        _core.set_depthwise_kernel(saved)


if __name__ == "__main__":
    main()
