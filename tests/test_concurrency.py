"""Concurrency: every kernel releases the GIL; eight Python threads calling every op at once get
exactly what serial calls get; changing the thread count from another thread while ops run is
safe; the refcounted BLAS thread limit (convx._threads.single_threaded_blas) holds under many
threads, nesting and exceptions, and is released at the end.
"""

import contextlib
import math
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import assert_close
from threadpoolctl import threadpool_info, threadpool_limits

import convx
import convx._core as core
import convx._threads
import convx.functional as F
from convx.reference import conv as reference_conv
from convx.reference import pooling as reference_pooling


@pytest.fixture
def restore_threads():
    original = convx.get_num_threads()
    yield
    convx.set_num_threads(original)


# ---------------------------------------------------------------------------------------------
# The GIL

def _batch(rng, shape):
    """Normal values of ``shape``: one image drawn and repeated over the batch (axis 0). The test times
    the kernel, not distinct images, and drawing every image anew took most of its time (batches
    doubled up to 256 images of up to 300 MB each, drawn for all 76 kernels)."""
    return np.repeat(rng.standard_normal((1, *shape[1:])), shape[0], axis=0)


def _kernel_call(name, batch):
    """(kernel, args) of a direct ``convx._core`` call on ``batch`` images, on one OpenMP thread."""
    rng = np.random.default_rng(0)
    geometry = (1, 1, 1, 1, 1, 1)  # stride, padding (top/left), dilation
    x = _batch(rng, (batch, 32, 24, 24))
    if name.endswith("channels_last"):
        weight = rng.standard_normal((32, 32, 3, 3))
        x_last = _batch(rng, (batch, 24, 24, 32))
        filters, same = rng.standard_normal((32, 1, 5, 5)), (1, 1, 2, 2, 1, 1)
        return {
            "depthwise_forward_channels_last": (core.depthwise_forward_channels_last,
                                                (x_last, filters, np.empty(0), np.empty_like(x_last), *same, 32, 1)),
            "depthwise_backward_input_channels_last": (core.depthwise_backward_input_channels_last,
                                                       (x_last, filters, np.empty_like(x_last), *same, 32, 1)),
            "depthwise_backward_weight_channels_last": (core.depthwise_backward_weight_channels_last,
                                                        (x_last, x_last, np.empty_like(filters), *same, 32, 1)),
            "conv2d_forward_channels_last": (core.conv2d_forward_channels_last,
                                             (x_last, weight, np.empty(0), np.empty_like(x_last), *geometry, 1, 1)),
            "conv2d_backward_input_channels_last": (core.conv2d_backward_input_channels_last,
                                                    (x_last, weight, np.empty_like(x_last), *geometry, 1, 1)),
            "conv2d_backward_weight_channels_last": (core.conv2d_backward_weight_channels_last,
                                                     (x_last, x_last, np.empty_like(weight), *geometry, 1, 1)),
            # One channel: a 32-channel column sum streams at memory speed and ends in 3 ms even
            # at batch 256, too short to tell a released GIL from a busy machine; one column is
            # 5x slower per byte.
            "conv2d_backward_bias_channels_last": (core.conv2d_backward_bias_channels_last,
                                                   (x_last.reshape(-1, 1), np.empty(1), 1)),
        }[name]
    if name in ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_params"):
        weight = rng.standard_normal((32, 32, 3, 3))
        grad_out = _batch(rng, (batch, 32, 24, 24))
        return {
            "conv2d_forward": (core.conv2d_forward, (x, weight, np.empty(0), np.empty_like(x), *geometry, 1, 1)),
            "conv2d_backward_input": (core.conv2d_backward_input,
                                      (grad_out, weight, np.empty_like(x), *geometry, 1, 1)),
            "conv2d_backward_params": (core.conv2d_backward_params,
                                       (grad_out, x, weight, np.empty_like(x), np.empty_like(weight),
                                        np.empty(32), *geometry, 1, 1)),
        }[name]
    if name.startswith("depthwise"):
        weight = rng.standard_normal((32, 1, 5, 5))
        geometry = (1, 1, 2, 2, 1, 1)
        return {
            "depthwise_forward": (core.depthwise_forward, (x, weight, np.empty(0), np.empty_like(x), *geometry, 32, 1)),
            "depthwise_backward_input": (core.depthwise_backward_input,
                                         (x, weight, np.empty_like(x), *geometry, 32, 1)),
            "depthwise_backward_weight": (core.depthwise_backward_weight,
                                          (x, x, np.empty_like(weight), *geometry, 32, 1)),
        }[name]
    if name.startswith("winograd"):
        weight = rng.standard_normal((32, 32, 3, 3))
        return {
            "winograd_forward": (core.winograd_forward, (x, weight, np.empty(0), np.empty_like(x), 1, 1, False, 1)),
            "winograd_backward_weight": (core.winograd_backward_weight, (x, x, np.empty_like(weight), 1, 1, 1)),
        }[name]
    if name == "matmul":
        # (batch * 32, 576) @ (576, 576)
        images = x.reshape(batch * 32, 576)
        return core.matmul, (images, False, rng.standard_normal((576, 576)), False, np.empty_like(images), 1)
    if name == "conv2d_backward_bias":
        return core.conv2d_backward_bias, (np.repeat(x, 8, axis=0), np.empty(32), 1)
    # Activations, batch normalisation, dropout and optimizer steps: GELU and Adam, the costliest
    # per element, over the same elements four times over.
    flat = np.repeat(x, 4, axis=0).reshape(-1)
    planes = np.repeat(x, 4, axis=0).reshape(4 * batch, 32, -1)
    per_channel = [rng.random(32) + 0.5 for _ in range(4)]
    gelu = core.ACTIVATIONS["gelu"]
    if name in ("activation_forward", "activation_backward", "dropout", "optimizer_step", "add"):
        return {
            "add": (core.add, (flat, flat, np.empty_like(flat), gelu, 0.0, 0.0, 1)),
            "activation_forward": (core.activation_forward, (flat, np.empty_like(flat), gelu, 0.0, 0.0, 1)),
            "activation_backward": (core.activation_backward,
                                    (flat, flat, np.empty_like(flat), gelu, 0.0, 0.0, 1)),
            "dropout": (core.dropout, (flat, np.empty_like(flat), 0, 123, 2**31, 2.0, 1)),
            "optimizer_step": (core.optimizer_step,
                               (core.OPTIMIZERS["Adam"], flat.copy(), flat, np.zeros_like(flat), np.zeros_like(flat),
                                np.zeros_like(flat), np.array([1e-3, 0.9, 0.999, 1e-8, 0.1, 1.0, 1.0, 0.01, 0.03]), 1)),
        }[name]
    if name in ("channel_dropout", "softmax_forward", "softmax_backward") or name.startswith("layer_norm"):
        rows = planes.reshape(-1, planes.shape[2])
        per_row = [rng.random(len(rows)) + 0.5 for _ in range(4)]
        weight = rng.random(rows.shape[1])
        return {
            "channel_dropout": (core.channel_dropout, (rows, np.empty_like(rows), 0, 123, 2**31, 2.0, 1)),
            "softmax_forward": (core.softmax_forward, (planes, np.empty_like(planes), True, 1)),
            "softmax_backward": (core.softmax_backward, (planes, planes, np.empty_like(planes), True, 1)),
            "layer_norm_normalize": (core.layer_norm_normalize,
                                     (rows, np.empty_like(rows), *per_row[:2], weight, weight, 1)),
            "layer_norm_row_sums": (core.layer_norm_row_sums,
                                    (rows, rows, weight, per_row[0], np.empty(len(rows)), np.empty(len(rows)), 1)),
            "layer_norm_input_grad": (core.layer_norm_input_grad,
                                      (rows, rows, weight, np.empty_like(rows), *per_row, 1)),
            "layer_norm_param_grads": (core.layer_norm_param_grads,
                                       (rows, rows, *per_row[:2], np.zeros(rows.shape[1]), np.zeros(rows.shape[1]),
                                        1)),
        }[name]
    if name.startswith("batch_norm") and name.endswith("_nhwc"):
        rows = np.ascontiguousarray(np.moveaxis(planes, 1, 2))  # (4 * batch, 576, 32): channels last
        return {
            "batch_norm_moments_nhwc": (core.batch_norm_moments_nhwc, (rows, 0.0, np.zeros(32), np.zeros(32), 1)),
            "batch_norm_grad_sums_nhwc": (core.batch_norm_grad_sums_nhwc,
                                          (rows, rows, None, core.ACTIVATIONS["relu"], 0.0, 0.0, *per_channel[:3],
                                           np.zeros(32), np.zeros(32), 1)),
            "batch_norm_normalize_nhwc": (core.batch_norm_normalize_nhwc,
                                          (rows, np.empty_like(rows), *per_channel[:3], gelu, 0.0, 0.0, 1)),
            "batch_norm_input_grad_nhwc": (core.batch_norm_input_grad_nhwc,
                                           (rows, rows, None, core.ACTIVATIONS["relu"], 0.0, 0.0, per_channel[2],
                                            np.empty_like(rows), *per_channel, 1)),
        }[name]
    if name.startswith("batch_norm"):
        return {
            "batch_norm_moments": (core.batch_norm_moments, (planes, 0.0, np.zeros(32), np.zeros(32), 1)),
            "batch_norm_grad_sums": (core.batch_norm_grad_sums,
                                     (planes, planes, None, core.ACTIVATIONS["relu"], 0.0, 0.0, *per_channel[:3],
                                      np.zeros(32), np.zeros(32), 1)),
            "batch_norm_normalize": (core.batch_norm_normalize,
                                     (planes, np.empty_like(planes), *per_channel[:3], gelu, 0.0, 0.0, 1)),
            "batch_norm_input_grad": (core.batch_norm_input_grad,
                                      (planes, planes, None, core.ACTIVATIONS["relu"], 0.0, 0.0, per_channel[2],
                                       np.empty_like(planes), *per_channel, 1)),
        }[name]
    if name in ("unfold_forward", "fold_forward"):
        # 3x3 blocks, padding 1: (batch, 32 * 9, 24 * 24) columns.
        cols = np.ones((batch, 32 * 9, 24 * 24))
        geometry = (3, 3, 1, 1, 1, 1, 1, 1, 24, 24, 1)  # kernel, dilation, padding, stride, blocks, threads
        return {
            "unfold_forward": (core.unfold_forward, (x, cols, *geometry)),
            "fold_forward": (core.fold_forward, (cols, np.empty_like(x), *geometry)),
        }[name]
    if name.startswith(("gather2d", "bilinear2d")):
        # Upsampling the (batch * 32) planes 24x24 -> 96x96, bilinear and nearest.
        planes, up = x.reshape(batch * 32, 24, 24), np.empty((batch * 32, 96, 96))
        rows = np.arange(96) // 4
        pairs = np.ascontiguousarray(np.stack([rows, np.minimum(rows + 1, 23)], axis=1))
        weights = np.full((96, 2), 0.5)
        return {
            "gather2d_forward": (core.gather2d_forward, (planes, up, rows, rows, 0, 0, 0.0, 1)),
            "gather2d_backward": (core.gather2d_backward, (up, planes.copy(), rows, rows, 1)),
            "bilinear2d_forward": (core.bilinear2d_forward, (planes, up, pairs, weights, pairs, weights, 1)),
            "bilinear2d_backward": (core.bilinear2d_backward, (up, planes.copy(), pairs, weights, pairs, weights, 1)),
        }[name]
    if name.startswith("conv3d_"):
        # 3x3x3 convolutions, 8 -> 8 channels, padding 1, over (batch, 8, 8, 16, 16) volumes.
        volumes = _batch(rng, (batch, 8, 8, 16, 16))
        weight = rng.standard_normal((8, 8 * 27))
        geometry = (3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 8 * 16)
        last = np.ascontiguousarray(np.moveaxis(volumes, 1, -1))
        return {
            "conv3d_forward": (core.conv3d_forward, (volumes, weight, np.zeros(8), np.empty_like(volumes), *geometry,
                                                     1)),
            "conv3d_backward_input": (core.conv3d_backward_input, (volumes, weight, np.zeros_like(volumes), *geometry,
                                                                   1)),
            "conv3d_backward_weight": (core.conv3d_backward_weight, (volumes, volumes, np.zeros_like(weight),
                                                                     *geometry, 1)),
            # channels last: (batch, 8, 16, 16, 8) volumes, the forward's weight (groups, taps * C_in, C_out)
            "conv3d_forward_last": (core.conv3d_forward_last, (last, weight.reshape(1, 8 * 27, 8), np.zeros(8),
                                                               np.empty_like(last), *geometry, 1)),
            "conv3d_backward_input_last": (core.conv3d_backward_input_last, (last, weight, np.zeros_like(last),
                                                                             *geometry, 1)),
            "conv3d_backward_weight_last": (core.conv3d_backward_weight_last, (last, last, np.zeros_like(weight),
                                                                               *geometry, 1)),
        }[name]
    if "pool3d_" in name:
        # 3-D pooling: 3x3x3 windows, stride 1, padding 1 over (batch, 32, 8, 24, 24) volumes.
        volumes = _batch(rng, (batch, 32, 8, 24, 24))
        out3d, small3d = np.empty_like(volumes), np.empty((batch, 32, 4, 7, 7))
        window3d = (3, 3, 3, 1, 1, 1, 1, 1, 1)
        return {
            "max_pool3d_forward": (core.max_pool3d_forward,
                                   (volumes, out3d, np.empty(volumes.shape, dtype=np.int64), *window3d, 1, 1, 1, 0, 8,
                                    1)),
            "avg_pool3d_forward": (core.avg_pool3d_forward,
                                   (volumes, out3d, *window3d, 1, 1, 1, 1, 1, 1, True, 0, 0, 8, 1)),
            "avg_pool3d_backward": (core.avg_pool3d_backward,
                                    (volumes, out3d, *window3d, 1, 1, 1, 1, 1, 1, True, 0, 0, 8, 1)),
            "adaptive_avg_pool3d_forward": (core.adaptive_avg_pool3d_forward, (volumes, small3d, 0, 4, 1)),
            "adaptive_avg_pool3d_backward": (core.adaptive_avg_pool3d_backward, (small3d, out3d, 0, 4, 1)),
            "adaptive_max_pool3d_forward": (core.adaptive_max_pool3d_forward,
                                            (volumes, small3d, np.empty(small3d.shape, dtype=np.int64), 0, 4, 1)),
            # Channels last: the same volumes read as (batch, 32, 8, 24, 24) = (N, D, H, W, C), 24 channels.
            "max_pool3d_ndhwc_forward": (core.max_pool3d_ndhwc_forward,
                                         (volumes, out3d, np.empty(volumes.shape, dtype=np.int64), *window3d, 1, 1, 1,
                                          0, 32, 1)),
            "avg_pool3d_ndhwc_forward": (core.avg_pool3d_ndhwc_forward,
                                         (volumes, out3d, *window3d, 1, 1, 1, 1, 1, 1, True, 0, 0, 32, 1)),
            "avg_pool3d_ndhwc_backward": (core.avg_pool3d_ndhwc_backward,
                                          (volumes, out3d, *window3d, 1, 1, 1, 1, 1, 1, True, 0, 0, 32, 1)),
            "adaptive_avg_pool3d_ndhwc_forward": (core.adaptive_avg_pool3d_ndhwc_forward,
                                                  (volumes, np.empty((batch, 4, 7, 7, 24)), 0, 4, 1)),
            "adaptive_avg_pool3d_ndhwc_backward": (core.adaptive_avg_pool3d_ndhwc_backward,
                                                   (np.empty((batch, 4, 7, 7, 24)), out3d, 0, 32, 1)),
            "adaptive_max_pool3d_ndhwc_forward": (core.adaptive_max_pool3d_ndhwc_forward,
                                                  (volumes, np.empty((batch, 4, 7, 7, 24)),
                                                   np.empty((batch, 4, 7, 7, 24), dtype=np.int64), 0, 4, 1)),
        }[name]
    # Pooling: 5x5 windows, stride 1, padding 2, so every plane is a few thousand taps of work.
    pooled = np.empty_like(x)
    indices = np.empty(x.shape, dtype=np.int64)
    window = (5, 5, 1, 1, 2, 2)
    small = np.empty((batch, 32, 7, 7))
    return {
        "max_pool2d_forward": (core.max_pool2d_forward, (x, pooled, indices, *window, 1, 1, False, 0, x.shape[2], 1)),
        "max_pool2d_backward": (core.max_pool2d_backward,
                                (np.repeat(x, 4, axis=0), np.zeros((4 * batch, 32, 24, 24), dtype=np.int64),
                                 np.empty((4 * batch, 32, 24, 24)), 1)),
        "avg_pool2d_forward": (core.avg_pool2d_forward, (x, pooled, *window, 2, 2, 1, 1, True, 0, 0, pooled.shape[2], 1)),
        "avg_pool2d_backward": (core.avg_pool2d_backward, (x, pooled, *window, 2, 2, 1, 1, True, 0, 0, pooled.shape[2],
                                                          1)),
        "adaptive_avg_pool2d_forward": (core.adaptive_avg_pool2d_forward, (x, small, 1)),
        "adaptive_avg_pool2d_backward": (core.adaptive_avg_pool2d_backward, (small, pooled, 1)),
        "adaptive_max_pool2d_forward": (core.adaptive_max_pool2d_forward,
                                        (x, small, np.empty(small.shape, dtype=np.int64), 1)),
        # Channels last: the same arrays read as (batch, 32, 24, 24) = (N, H, W, C), 24 channels.
        "max_pool2d_nhwc_forward": (core.max_pool2d_nhwc_forward, (x, pooled, indices, *window, 1, 1, 1)),
        "max_pool2d_nhwc_separable": (core.max_pool2d_nhwc_separable, (x, pooled, indices, 5, 5, 1, 1, 2, 2, 1)),
        "max_pool2d_nhwc_backward": (core.max_pool2d_nhwc_backward,
                                     (np.repeat(x, 4, axis=0), np.zeros((4 * batch, 32, 24, 24), dtype=np.int64),
                                      np.empty((4 * batch, 32, 24, 24)), 1)),
        "avg_pool2d_nhwc_forward": (core.avg_pool2d_nhwc_forward, (x, pooled, *window, 2, 2, 1, 1, True, 0, 1)),
        "avg_pool2d_nhwc_backward": (core.avg_pool2d_nhwc_backward, (x, pooled, *window, 2, 2, 1, 1, True, 0, 1)),
        "adaptive_avg_pool2d_nhwc_forward": (core.adaptive_avg_pool2d_nhwc_forward,
                                             (x, np.empty((batch, 7, 7, 24)), 1)),
        "adaptive_avg_pool2d_nhwc_backward": (core.adaptive_avg_pool2d_nhwc_backward,
                                              (np.empty((batch, 7, 7, 24)), pooled, 1)),
        "adaptive_max_pool2d_nhwc_forward": (core.adaptive_max_pool2d_nhwc_forward,
                                             (x, np.empty((batch, 7, 7, 24)), np.empty((batch, 7, 7, 24), dtype=np.int64),
                                              1)),
    }[name]


KERNELS = [
    "conv2d_forward", "conv2d_backward_input", "conv2d_backward_params", "conv2d_backward_bias",
    "conv2d_forward_channels_last", "conv2d_backward_input_channels_last", "conv2d_backward_weight_channels_last",
    "conv2d_backward_bias_channels_last", "depthwise_forward", "depthwise_backward_input", "depthwise_backward_weight",
    "depthwise_forward_channels_last", "depthwise_backward_input_channels_last",
    "depthwise_backward_weight_channels_last",
    "winograd_forward", "winograd_backward_weight", "max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward",
    "adaptive_avg_pool2d_forward", "adaptive_avg_pool2d_backward", "adaptive_max_pool2d_forward", "matmul",
    "activation_forward", "activation_backward", "batch_norm_moments", "batch_norm_grad_sums",
    "gather2d_forward", "gather2d_backward", "bilinear2d_forward", "bilinear2d_backward",
    "batch_norm_normalize", "batch_norm_input_grad", "dropout", "optimizer_step", "add", "channel_dropout",
    "softmax_forward", "softmax_backward", "layer_norm_normalize", "layer_norm_row_sums", "layer_norm_input_grad",
    "layer_norm_param_grads", "unfold_forward", "fold_forward",
    "max_pool2d_nhwc_forward", "max_pool2d_nhwc_separable", "max_pool2d_nhwc_backward", "avg_pool2d_nhwc_forward", "avg_pool2d_nhwc_backward",
    "adaptive_avg_pool2d_nhwc_forward", "adaptive_avg_pool2d_nhwc_backward", "adaptive_max_pool2d_nhwc_forward",
    "batch_norm_moments_nhwc", "batch_norm_grad_sums_nhwc", "batch_norm_normalize_nhwc", "batch_norm_input_grad_nhwc",
    "max_pool3d_forward", "avg_pool3d_forward", "avg_pool3d_backward", "adaptive_avg_pool3d_forward",
    "adaptive_avg_pool3d_backward", "adaptive_max_pool3d_forward", "max_pool3d_ndhwc_forward",
    "avg_pool3d_ndhwc_forward", "avg_pool3d_ndhwc_backward", "adaptive_avg_pool3d_ndhwc_forward",
    "adaptive_avg_pool3d_ndhwc_backward", "adaptive_max_pool3d_ndhwc_forward", "conv3d_forward",
    "conv3d_backward_input", "conv3d_backward_weight", "conv3d_forward_last", "conv3d_backward_input_last",
    "conv3d_backward_weight_last",
]


def test_every_kernel_is_listed():
    public = {name for name in dir(core) if not name.startswith("_") and callable(getattr(core, name))}
    assert public - {"openmp_enabled", "default_num_threads", "gemm_kernel", "set_gemm_kernel", "direct_conv",
                     "set_direct_conv", "depthwise_kernel", "set_depthwise_kernel",
                     "depthwise_implementation", "supported_gemm_kernels", "conv_implementation", "conv_ran",
                     "ConvConfig", "CachedMemory", "set_memory_cache_limit", "memory_cache_stats",
                     "set_conv3d_column_budget", "set_conv3d_direct_rows", "set_conv3d_weight_band",
                     "conv3d_ran"} == set(KERNELS)


@pytest.mark.parametrize("name", KERNELS)
def test_kernels_release_the_gil(name):
    # A Python thread stamps the time in a loop; it can only run while it holds the GIL. If
    # the kernel held the GIL, no stamp could fall inside the call; while it runs without it,
    # the other core keeps stamping. The batch grows until a call lasts 60 ms: it doubles while a
    # call is too short to time, then jumps to the batch that should last 80 ms (building the
    # arrays of each batch tried costs more than the calls, so the batches between are skipped).
    batch = 1
    while True:
        kernel, args = _kernel_call(name, batch)
        start = time.perf_counter()
        kernel(*args)
        elapsed = time.perf_counter() - start
        if elapsed > 0.06 or batch >= 256:
            break
        batch = min(256, 2 * batch if elapsed < 0.005 else 1 << math.ceil(math.log2(batch * 0.08 / elapsed)))
    stamps = []
    stop = threading.Event()

    def stamp():
        while not stop.is_set():
            stamps.append(time.perf_counter())

    # A busy machine may not schedule the other thread within a short call (memory-bound kernels
    # end in 4-10 ms at batch 256, and a larger cap doubles the suite's peak memory to 2.2 GB):
    # up to 50 tries; a kernel that held the GIL fails them all. 10 tries once failed in CI, with
    # the sanitizer builds busy on both cores, on adaptive_avg_pool2d_nhwc_forward's 4 ms call.
    for attempt in range(50):
        stamps.clear()
        stop.clear()
        thread = threading.Thread(target=stamp)
        thread.start()
        time.sleep(0.005)
        start = time.perf_counter()
        kernel(*args)
        end = time.perf_counter()
        stop.set()
        thread.join()
        middle = (start + 0.25 * (end - start), end - 0.25 * (end - start))
        if any(middle[0] < t < middle[1] for t in stamps):
            return
    pytest.fail(f"{name}: no Python thread ran during a {end - start:.3f} s call: the GIL was held")


# ---------------------------------------------------------------------------------------------
# Many Python threads at once

def _pool3d_ops(x):
    """The 3-D pooling ops on x read as (N, C, D, H, W) volumes of depth 2 (C halved)."""
    volumes = x.reshape(x.shape[0], x.shape[1] // 2, 2, *x.shape[2:]) if x.shape[1] % 2 == 0 else x[:, :, None]
    y, indices = F.max_pool3d(volumes, (1, 3, 3), (1, 2, 2), (0, 1, 1), return_indices=True)
    averaged = F.avg_pool3d(volumes, (2, 3, 3), (1, 2, 2), (1, 1, 1), ceil_mode=True, count_include_pad=False)
    return [
        y, indices, F.max_pool3d_backward(y, indices, volumes.shape), averaged,
        F.avg_pool3d_backward(averaged, volumes.shape, (2, 3, 3), (1, 2, 2), (1, 1, 1), True, False),
        F.adaptive_avg_pool3d(volumes, (1, 5, 3)),
        F.adaptive_avg_pool3d_backward(averaged, volumes.shape),
        *F.adaptive_max_pool3d(volumes, (2, 4, 4), return_indices=True),
    ]


def _every_op(arrays):
    x, weight, grad_out, depthwise = arrays
    winograd_grad = x[:, :1].repeat(weight.shape[0], axis=1)  # a stride-1 output's shape
    y, indices = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    return [
        F.conv2d(x, weight, padding=1, stride=(1, 2)),
        F.conv2d(x, depthwise, padding=2, groups=4),
        F.conv2d_backward_input(grad_out, weight, x.shape, padding=1, stride=(1, 2)),
        F.conv2d_backward_weight(grad_out, x, weight.shape, padding=1, stride=(1, 2)),
        F.conv2d_backward_bias(grad_out),
        *F.conv2d_backward(grad_out, x, weight, padding=1, stride=(1, 2)),
        F.conv_transpose2d(grad_out, weight, padding=1, stride=(1, 2), output_padding=(0, 1)),
        y,
        indices,
        F.max_pool2d_backward(y, indices, x.shape),
        F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
        F.avg_pool2d_backward(y, x.shape, 3, 2, 1),
        F.adaptive_avg_pool2d(x, (5, 3)),
        F.adaptive_avg_pool2d_backward(y, x.shape),
        *F.adaptive_max_pool2d(x, 4, return_indices=True),
        *_pool3d_ops(x),
        F.conv2d(x, weight, padding=1, algorithm="winograd"),
        *F.conv2d_backward(winograd_grad, x, weight, padding=1, algorithm="winograd"),
        F.conv2d(x, weight, padding=1, activation="gelu"),
        F.silu(x),
        F.activation_backward("silu", y, y),
        *F.batch_norm_forward(x, training=True, activation="relu"),
        *F.batch_norm_backward(x, x, x.mean(axis=(0, 2, 3)), 1 / (x.std(axis=(0, 2, 3)) + 1), activation="relu",
                               output=x),
        *F.batch_norm_forward(x, training=True, activation="relu", layout="NHWC"),
        *F.batch_norm_backward(x, x, x.mean(axis=(0, 1, 2)), 1 / (x.std(axis=(0, 1, 2)) + 1), activation="relu",
                               bias=x[0, 0, 0].copy(), layout="NHWC"),
        F.interpolate(x, scale_factor=(1.5, 0.7), mode="bilinear"),
        F.interpolate_backward(x, (x.shape[0], x.shape[1], 5, 7), size=x.shape[2:], mode="bilinear",
                               align_corners=True),
        F.interpolate(x, size=(7, 23), mode="nearest-exact"),
        F.interpolate_backward(x, (x.shape[0], x.shape[1], 6, 4), size=x.shape[2:]),
        F.pad(x, (2, 1, 3, -1), mode="reflect"),
        F.pad_backward(x, (x.shape[0], x.shape[1], x.shape[2] - 3, x.shape[3] - 2), (1, 1, 2, 1), mode="circular"),
        *_norms(x),
        F.softmax(x, 1),
        F.log_softmax(x, -1),
        F.softmax_backward(x, x, 1),
        F.log_softmax_backward(x, x, -1),
        F.conv_transpose2d(grad_out, weight, padding="same_lower", stride=(1, 2), output_padding=(0, 1)),
        F.unfold(x, 3, dilation=2, padding=1, stride=(1, 2)),
        F.fold_backward(x, 2, padding=1, stride=2),
    ]


def _norms(x):
    weight, bias = x[0, :, 0, 0].copy(), x[-1, :, 0, 0].copy()
    y, mean, inv_std = F.group_norm_forward(x, 2, weight, bias)
    outputs = [y, mean, inv_std, *F.group_norm_backward(x, x, 2, mean, inv_std, weight)]
    y, mean, inv_std = F.layer_norm_forward(x, x.shape[2:], x[0, 0].copy(), x[0, 1].copy())
    return outputs + [y, mean, inv_std, *F.layer_norm_backward(x, x, x.shape[2:], mean, inv_std, x[0, 0].copy())]


def _jobs(rng, count):
    jobs = []
    for i in range(count):
        dtype = (np.float32, np.float64)[i % 2]
        batch = 1 + i % 5  # batches smaller and larger than the OpenMP team
        x = rng.standard_normal((batch, 4, 12 + i % 3, 11)).astype(dtype)
        weight = rng.standard_normal((6, 4, 3, 3)).astype(dtype)
        grad_out = rng.standard_normal(F.conv2d(x, weight, padding=1, stride=(1, 2)).shape).astype(dtype)
        depthwise = rng.standard_normal((8, 1, 5, 5)).astype(dtype)
        jobs.append((x, weight, grad_out, depthwise))
    return jobs


@pytest.mark.parametrize("n_threads", [1, 2], ids=["omp-1", "omp-2"])
def test_eight_python_threads_get_exactly_what_serial_calls_get(n_threads, rng, restore_threads):
    convx.set_num_threads(n_threads)
    jobs = _jobs(rng, 16)
    serial = [_every_op(job) for job in jobs]
    barrier = threading.Barrier(8)

    def worker(worker_id):
        barrier.wait()  # all eight start together
        order = list(range(len(jobs)))
        random.Random(worker_id).shuffle(order)
        return [(i, _every_op(jobs[i])) for i in order for _ in range(2)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [future.result(timeout=300) for future in [pool.submit(worker, w) for w in range(8)]]
    for per_worker in results:
        for i, outputs in per_worker:
            for got, expected in zip(outputs, serial[i], strict=True):
                np.testing.assert_array_equal(got, expected)


def test_changing_the_thread_count_while_ops_run_is_safe(rng, restore_threads):
    jobs = _jobs(rng, 8)
    expected = [_every_op(job) for job in jobs]
    stop = threading.Event()
    counts_set = []

    def churn():
        chooser = random.Random(0)
        while not stop.is_set():
            count = chooser.choice([1, 2, 3, 4, 7])
            convx.set_num_threads(count)
            counts_set.append(count)
            time.sleep(0.0005)

    def worker(worker_id):
        for i in random.Random(worker_id).sample(range(len(jobs)), len(jobs)):
            for got, want in zip(_every_op(jobs[i]), expected[i], strict=True):
                if got.dtype.kind == "i":
                    np.testing.assert_array_equal(got, want)
                else:
                    assert_close(got, want, got.dtype)

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            for future in [pool.submit(worker, w) for w in range(8)]:
                future.result(timeout=300)
    finally:
        stop.set()
        churner.join()
    assert len(set(counts_set)) > 1


@pytest.mark.parametrize("n_threads", [1, 2, 3, 5])
def test_thread_count_changes_results_only_by_rounding(n_threads, rng, restore_threads):
    jobs = _jobs(rng, 6)
    convx.set_num_threads(1)
    one_thread = [_every_op(job) for job in jobs]
    convx.set_num_threads(n_threads)
    for job, expected in zip(jobs, one_thread):
        outputs = _every_op(job)
        for got, want in zip(outputs, expected, strict=True):
            if got.dtype.kind == "i":
                np.testing.assert_array_equal(got, want)
            else:
                assert_close(got, want, got.dtype)
        # Pooling works plane by plane, and Winograd point by point, whatever the team: bitwise
        # the same.
        for got, want in zip(outputs[9:], expected[9:], strict=True):
            np.testing.assert_array_equal(got, want)
    x, weight, grad_out, _ = jobs[0]
    assert_close(one_thread[0][0], reference_conv.conv2d(x, weight, padding=1, stride=(1, 2)), x.dtype)
    assert_close(one_thread[0][12], reference_pooling.avg_pool2d(x, 3, 2, 1, ceil_mode=True,
                                                                 count_include_pad=False), x.dtype)


def test_the_largest_accepted_thread_count_runs_every_op(rng, restore_threads):
    # set_num_threads accepted 65536, and a depthwise convolution then tried to start 65536
    # OpenMP threads and crashed the process (each thread maps a stack; a process may hold
    # about 65530 maps). Now at most 1024 are accepted, and no kernel starts more threads
    # than it has work items.
    jobs = _jobs(rng, 2)
    x = rng.standard_normal((64, 16, 5, 4))  # 1024 depthwise planes: a full team of 1024
    depthwise = rng.standard_normal((16, 1, 3, 3))
    convx.set_num_threads(1)
    expected = [_every_op(job) for job in jobs] + [F.conv2d(x, depthwise, padding=1, groups=16)]
    convx.set_num_threads(convx._threads.MAX_THREADS)
    got = [_every_op(job) for job in jobs] + [F.conv2d(x, depthwise, padding=1, groups=16)]
    flat = lambda results: [a for r in results for a in (r if isinstance(r, list) else [r])]  # noqa: E731
    for out, want in zip(flat(got), flat(expected), strict=True):
        if out.dtype.kind == "f":
            assert_close(out, want, out.dtype)
        else:
            np.testing.assert_array_equal(out, want)
    with pytest.raises(ValueError, match="at most 1024"):
        convx.set_num_threads(convx._threads.MAX_THREADS + 1)


# ---------------------------------------------------------------------------------------------
# The BLAS thread limit

def _blas_thread_counts():
    return sorted(lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas")


@pytest.fixture
def blas_gemm():
    """convx's products through BLAS (the im2col path), the direct kernels off."""
    saved = core.gemm_kernel(), core.direct_conv()
    core.set_gemm_kernel("blas")
    core.set_direct_conv("off")
    yield
    core.set_gemm_kernel(saved[0])
    core.set_direct_conv(saved[1])


def _watch_blas_limit(monkeypatch):
    """The BLAS thread counts seen inside each entry of single_threaded_blas (the kernels look
    it up at every use)."""
    seen = []
    real_limit = convx._threads.single_threaded_blas

    @contextlib.contextmanager
    def watched():
        with real_limit():
            seen.append(_blas_thread_counts())
            yield

    monkeypatch.setattr(convx._threads, "single_threaded_blas", watched)
    return seen


def test_blas_is_held_at_one_thread_in_whichever_python_thread_calls(rng, monkeypatch, blas_gemm):
    # threadpoolctl lets only the first Python thread that sets a pthreads OpenBLAS's thread
    # count change it, until that thread clears its claim: convx used to leave the claim with
    # the first thread that ran an op, so the limit did nothing in every other thread (and a
    # limit set in one thread and released in another stayed on for good).
    if not _blas_thread_counts():
        pytest.skip("no BLAS found by threadpoolctl")
    during_kernels = _watch_blas_limit(monkeypatch)
    x = rng.standard_normal((2, 3, 8, 8))
    weight = rng.standard_normal((4, 3, 3, 3))
    with threadpool_limits(limits=2, user_api="blas"):
        outside = _blas_thread_counts()
        with ThreadPoolExecutor(max_workers=1) as pool:  # a worker that stays alive throughout
            pool.submit(F.conv2d, x, weight).result()
            F.conv2d(x, weight)  # the main thread, while the worker lives
            pool.submit(F.conv2d, x, weight).result()
            assert _blas_thread_counts() == outside
        F.conv2d(x, weight)
        assert _blas_thread_counts() == outside
    assert len(during_kernels) == 4
    assert all(counts == [1] * len(counts) for counts in during_kernels), during_kernels


def test_kernels_that_call_blas_hold_it_at_one_thread_and_the_others_skip_the_limit(rng, monkeypatch):
    if not _blas_thread_counts():
        pytest.skip("no BLAS found by threadpoolctl")
    seen = _watch_blas_limit(monkeypatch)
    x = rng.standard_normal((2, 8, 10, 9))
    weight = rng.standard_normal((16, 8, 3, 3))
    grad_out = rng.standard_normal((2, 16, 8, 7))
    ops = [
        lambda: F.conv2d(x, weight),
        lambda: F.conv2d_backward_input(grad_out, weight, x.shape),
        lambda: F.conv2d_backward_weight(grad_out, x, weight.shape),
        lambda: F.conv2d_backward(grad_out, x, weight),
        lambda: F.conv_transpose2d(grad_out, weight),
    ]
    winograd = [
        lambda: F.conv2d(x, weight, algorithm="winograd"),
        lambda: F.conv2d_backward(grad_out, x, weight, algorithm="winograd"),
    ]
    with threadpool_limits(limits=2, user_api="blas"):
        saved = core.gemm_kernel(), core.direct_conv()
        try:
            for op in winograd:  # its 36 products per chunk are BLAS GEMMs
                seen.clear()
                op()
                assert seen and all(counts == [1] * len(counts) for counts in seen), seen
            core.set_gemm_kernel("blas")
            core.set_direct_conv("off")
            for op in ops:
                seen.clear()
                op()
                assert seen and all(counts == [1] * len(counts) for counts in seen), seen
            if saved[0] != "blas":  # convx's own GEMM and direct kernels call no BLAS
                core.set_gemm_kernel(saved[0])
                core.set_direct_conv("auto")
                for op in ops:
                    seen.clear()
                    op()
                    assert seen == [], seen
        finally:
            core.set_gemm_kernel(saved[0])
            core.set_direct_conv(saved[1])
        assert _blas_thread_counts() == [2] * len(_blas_thread_counts())


@pytest.mark.parametrize("n_threads", [1, 2])
def test_matrix_products_run_blas_at_one_thread_on_convx_threads(rng, monkeypatch, restore_threads, n_threads):
    # Whole-window convolutions and nn.Linear multiply through _core.matmul: BLAS held at one
    # thread inside convx's own team, so that no BLAS thread pool is left spinning after them.
    if not _blas_thread_counts():
        pytest.skip("no BLAS found by threadpoolctl")
    convx.set_num_threads(n_threads)
    seen = _watch_blas_limit(monkeypatch)
    x = rng.standard_normal((64, 16, 5, 5))
    weight = rng.standard_normal((120, 16, 5, 5))
    grad_out = rng.standard_normal((64, 120, 1, 1))
    layer = convx.nn.Linear(400, 120, dtype=np.float64, rng=0)
    ops = [
        lambda: F.conv2d(x, weight),
        lambda: F.conv2d_backward_input(grad_out, weight, x.shape),
        lambda: F.conv2d_backward_weight(grad_out, x, weight.shape),
        lambda: layer(x.reshape(64, 400)),
        lambda: layer.backward(grad_out.reshape(64, 120)),
    ]
    with threadpool_limits(limits=2, user_api="blas"):
        for op in ops:
            seen.clear()
            op()
            assert seen and all(counts == [1] * len(counts) for counts in seen), seen
        assert _blas_thread_counts() == [2] * len(_blas_thread_counts())


def test_blas_limit_holds_under_many_threads_nesting_and_exceptions():
    if not _blas_thread_counts():
        pytest.skip("no BLAS found by threadpoolctl")
    with threadpool_limits(limits=2, user_api="blas"):
        outside = _blas_thread_counts()
        assert convx._threads._blas_users == 0
        seen_inside = set()
        errors = []

        def worker(worker_id):
            chooser = random.Random(worker_id)
            for step in range(200):
                depth = chooser.randint(1, 3)
                try:
                    with convx._threads.single_threaded_blas():
                        if depth > 1:
                            with convx._threads.single_threaded_blas():
                                assert convx._threads._blas_users >= 2
                                if depth > 2:
                                    raise KeyError(step)
                        assert convx._threads._blas_users >= 1
                        if step % 50 == 0:
                            seen_inside.update(_blas_thread_counts())
                except KeyError:
                    pass
                except AssertionError as exc:  # pragma: no cover - reported below
                    errors.append(exc)

        with ThreadPoolExecutor(max_workers=16) as pool:
            for future in [pool.submit(worker, w) for w in range(16)]:
                future.result(timeout=120)
        assert not errors, errors
        assert seen_inside == {1}
        assert convx._threads._blas_users == 0
        assert convx._threads._blas_restore == []
        assert _blas_thread_counts() == outside
