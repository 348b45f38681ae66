"""Channels-last batch normalisation against channels-first: the time of a training step's
forward and backward (batch_norm_forward + batch_norm_backward with parameter gradients) on the
same images in each layout, float32.

The two layouts are timed in interleaved rounds (one call of each per round, alternating which
goes first), medians over the rounds; the ratio is NHWC's median over NCHW's (issue 20's target:
at most 1.05)::

    PYTHONPATH=src python bench/nhwc_bn.py --threads 1 2 --rounds 41

``--activation relu`` times the fused activation path (its output recomputed in the backward).

Measured (41-61 rounds, 1 thread; "Intel(R) Xeon(R) Processor", AVX-512, 48 KiB L1d, a 2-core
VM shared with other jobs, so single runs move by +-5%)::

    (N, H, W, C)        plain: NCHW ms  NHWC ms  ratio    relu: NCHW ms  NHWC ms  ratio
    (64, 32, 32, 32)           3.71     3.73     1.01          3.99     4.24     1.06
                               4.04     4.19     1.04          4.69     4.80     1.02
    (64, 16, 16, 64)           1.99     1.91     0.96          2.09     2.10     1.01
                               2.08     1.87     0.90          2.25     2.14     0.95
    (64, 8, 8, 128)            1.49     1.07     0.72          1.77     1.37     0.77
                               1.50     1.10     0.74          1.80     1.30     0.72

Per kernel on (64, 32, 32, 32) the channels-last statistics and backward sums take 0.8-0.95x
the channels-first time, the normalisation and input gradient 1.03-1.1x, the input gradient
through a recomputed ReLU 1.15-1.2x. Two threads could not be timed on that VM: any convx op on
two threads there took ~10 ms a call (ReLU of 4M floats: 1.6 ms on one), whichever layout.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import convx
from convx.functional.normalization import batch_norm_backward, batch_norm_forward

# (N, H, W, C)
SHAPES = ((64, 32, 32, 32), (64, 16, 16, 64), (64, 8, 8, 128))


def _step(x: np.ndarray, grad_out: np.ndarray, weight: np.ndarray, bias: np.ndarray, layout: str,
          activation: str | None):
    running_mean = np.zeros(len(weight), dtype=x.dtype)
    running_var = np.ones(len(weight), dtype=x.dtype)
    fused = {} if activation is None else {"activation": activation, "bias": bias}

    def run() -> None:
        _, mean, inv_std = batch_norm_forward(x, running_mean, running_var, weight, bias, True,
                                              activation=activation, layout=layout)
        batch_norm_backward(grad_out, x, mean, inv_std, weight, layout=layout, **fused)

    return run


def measure(shape: tuple[int, int, int, int], dtype: np.dtype, rounds: int, activation: str | None
            ) -> tuple[float, float]:
    """Median seconds of one NCHW and one NHWC step on images of shape (N, H, W, C)."""
    rng = np.random.default_rng(0)
    nhwc = rng.standard_normal(shape).astype(dtype)
    grad_nhwc = rng.standard_normal(shape).astype(dtype)
    nchw = np.ascontiguousarray(np.moveaxis(nhwc, 3, 1))
    grad_nchw = np.ascontiguousarray(np.moveaxis(grad_nhwc, 3, 1))
    weight = rng.uniform(0.5, 1.5, shape[3]).astype(dtype)
    bias = rng.standard_normal(shape[3]).astype(dtype)
    calls = {"NCHW": _step(nchw, grad_nchw, weight, bias, "NCHW", activation),
             "NHWC": _step(nhwc, grad_nhwc, weight, bias, "NHWC", activation)}
    times: dict[str, list[float]] = {"NCHW": [], "NHWC": []}
    for call in calls.values():
        call()
    for index in range(rounds):
        order = ("NCHW", "NHWC") if index % 2 == 0 else ("NHWC", "NCHW")
        for layout in order:
            start = time.perf_counter()
            calls[layout]()
            times[layout].append(time.perf_counter() - start)
    return statistics.median(times["NCHW"]), statistics.median(times["NHWC"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--activation", default=None)
    args = parser.parse_args()
    original = convx.get_num_threads()
    try:
        print(f"{'threads':>7} {'N, H, W, C':>18} {'NCHW ms':>9} {'NHWC ms':>9} {'ratio':>6}")
        for threads in args.threads:
            convx.set_num_threads(threads)
            for shape in SHAPES:
                nchw, nhwc = measure(shape, np.dtype(args.dtype), args.rounds, args.activation)
                print(f"{threads:>7} {str(shape):>18} {nchw * 1e3:>9.2f} {nhwc * 1e3:>9.2f} {nhwc / nchw:>6.2f}")
    finally:
        convx.set_num_threads(original)


if __name__ == "__main__":
    main()
