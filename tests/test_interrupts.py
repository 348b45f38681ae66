"""Ctrl-C during a long call, and the sub-batches that make it possible (convx._batching).

A kernel cannot be interrupted, so the public ops run huge batches as a series of kernel calls
over bounded sub-batches; a SIGINT then surfaces as KeyboardInterrupt between two of them.
Splitting must not change per-image outputs at all, and batch sums only by rounding.
"""

import sys
import textwrap

import numpy as np
import pytest
from _child import interrupt_child
from conftest import DTYPES, assert_close

import convx
import convx._batching
import convx.functional as F
import convx.functional.conv
import convx.functional.pooling


def _all_ops(x, weight, grad_out, **kwargs):
    """Every op's outputs: the pooling ones (one plane at a time, so exactly reproducible), then
    the convolution ones (whose GEMM shapes, like those of a call on another thread count, may
    group small images differently: equal up to rounding)."""
    y, indices = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    pooling = [
        y,
        indices,
        F.max_pool2d_backward(y, indices, x.shape),
        F.avg_pool2d(x, 3, 2, 1, ceil_mode=True),
        F.avg_pool2d_backward(y, x.shape, 3, 2, 1),
        F.adaptive_avg_pool2d(x, (3, 5)),
        F.adaptive_avg_pool2d_backward(y, x.shape),
        *F.adaptive_max_pool2d(x, 2, return_indices=True),
    ]
    conv = [
        F.conv2d(x, weight, **kwargs),
        F.conv2d_backward_input(grad_out, weight, x.shape, **kwargs),
        *F.conv2d_backward(grad_out, x, weight, **kwargs),
        F.conv_transpose2d(grad_out, weight, stride=kwargs["stride"], padding=kwargs["padding"],
                           groups=kwargs["groups"]),
        F.conv2d_backward_weight(grad_out, x, weight.shape, **kwargs),
        F.conv2d_backward_bias(grad_out),
    ]
    return pooling, conv


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("groups", [1, 2, 4], ids=["dense", "grouped", "depthwise"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_sub_batches_change_pooling_not_at_all_and_convolutions_only_by_rounding(
    dtype, groups, n_threads, rng, monkeypatch
):
    convx_threads = convx.get_num_threads()
    convx.set_num_threads(n_threads)
    try:
        x = rng.standard_normal((7, 4, 9, 8)).astype(dtype)
        weight = rng.standard_normal((8, 4 // groups, 3, 2)).astype(dtype)
        kwargs = dict(stride=(2, 1), padding=1, groups=groups)
        grad_out = rng.standard_normal(F.conv2d(x, weight, **kwargs).shape).astype(dtype)
        whole = _all_ops(x, weight, grad_out, **kwargs)
        calls = []
        real_sub_batches = convx._batching.sub_batches

        def counting(batch, work):
            parts = list(real_sub_batches(batch, work))
            calls.append(len(parts))
            return iter(parts)

        # One image per sub-batch: every op now makes one kernel call per image.
        monkeypatch.setattr(convx._batching, "SUB_BATCH_WORK", 1)
        for module in (convx._batching, convx.functional.conv, convx.functional.pooling):
            monkeypatch.setattr(module, "sub_batches", counting)
        split = _all_ops(x, weight, grad_out, **kwargs)
    finally:
        convx.set_num_threads(convx_threads)
    assert len(calls) == 13 and all(n == x.shape[0] for n in calls), calls  # one loop per op
    for one_call, in_parts in zip(whole[0], split[0], strict=True):
        np.testing.assert_array_equal(in_parts, one_call)
    for one_call, in_parts in zip(whole[1], split[1], strict=True):
        assert_close(in_parts, one_call, dtype)


def test_sub_batches_cover_the_batch_in_order(monkeypatch):
    monkeypatch.setattr(convx._batching, "SUB_BATCH_WORK", 100)
    convx_threads = convx.get_num_threads()
    try:
        for n_threads in (1, 3):
            convx.set_num_threads(n_threads)
            for batch, work in [(0, 5), (1, 10**9), (10, 1), (10, 30), (10, 34), (7, 100 * n_threads), (5, 0)]:
                parts = list(convx._batching.sub_batches(batch, work))
                covered = [i for part in parts for i in range(batch)[part]]
                assert covered == list(range(batch))
                if parts:
                    largest = max(1, 100 * n_threads // max(1, work))
                    assert all(0 < part.stop - part.start <= largest for part in parts)
    finally:
        convx.set_num_threads(convx_threads)


# The child process: for each op, a batch sized to run about three seconds (and eight kernel
# calls or more), interrupted by the parent's SIGINT shortly after it starts; then ordinary
# calls must still give right answers.
CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import convx, convx._batching, convx._threads
    import convx.functional as F
    import convx.functional.conv, convx.functional.pooling
    from convx.reference import conv as reference
    from threadpoolctl import threadpool_info

    def blas_threads():
        return sorted(lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas")

    blas_before = blas_threads()

    # The work per image each op passes to sub_batches, and so the images in one sub-batch.
    last_work = [0]
    real_sub_batches = convx._batching.sub_batches

    def recording(batch, work):
        last_work[0] = work
        return real_sub_batches(batch, work)

    for module in (convx._batching, convx.functional.conv, convx.functional.pooling):
        module.sub_batches = recording
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((256, 256, 5, 5)).astype(np.float32)
    # Inputs with much work per byte, so that seconds of work take little memory.
    conv_image = rng.standard_normal((1, 256, 4, 4)).astype(np.float32)
    pool_image = rng.standard_normal((1, 4, 32, 32)).astype(np.float32)
    ops = {
        "conv2d": (conv_image, lambda x: F.conv2d(x, weight, padding=2)),
        "conv2d_backward": (conv_image, lambda x: F.conv2d_backward(x, x, weight, padding=2)),
        # Max pooling's time is linear in its data whatever the window (issue 25), so it has no
        # seconds of work within the memory cap; its Ctrl-C is tested on one huge plane in
        # test_pooling_large_windows. Average pooling's border windows still cost k^2 each.
        "avg_pool2d": (pool_image, lambda x: F.avg_pool2d(x, 31, 1, 15)),
    }
    for name, (image, op) in ops.items():
        # The rate from a probe of at least 0.2 s: a few milliseconds' probe is skewed by
        # per-call costs (packing the weight) and by any hiccup of the machine.
        n = 8
        while True:
            probe = np.repeat(image, n, axis=0)
            op(probe)
            start = time.perf_counter()
            op(probe)
            elapsed = time.perf_counter() - start
            if elapsed >= 0.2 or n >= 4096:
                break
            n *= 4
        per_image = elapsed / n
        sub_batch = next(real_sub_batches(10**9, last_work[0])).stop
        # About three seconds of work and at least eight sub-batches (kernels run several times
        # slower under the sanitizers, and their sub-batches take longer), within 300 MB.
        batch = int(min(max(3.0 / per_image, 8 * sub_batch), 300e6 / image.nbytes))
        x = np.repeat(image, batch, axis=0)
        print("start", name, batch * per_image, sub_batch * per_image, flush=True)
        start = time.time()
        try:
            op(x)
        except KeyboardInterrupt:
            print("interrupted", name, time.time(), time.time() - start, flush=True)
        else:
            print("finished", name, time.time() - start, flush=True)
        del x
    small = rng.standard_normal((2, 3, 7, 6))
    small_w = rng.standard_normal((4, 3, 3, 3))
    assert np.allclose(F.conv2d(small, small_w, padding=1), reference.conv2d(small, small_w, padding=1))
    assert convx._threads._blas_users == 0
    assert blas_threads() == blas_before, (blas_threads(), blas_before)
    print("usable", flush=True)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT cannot be sent to a child process on Windows")
def test_ctrl_c_interrupts_a_long_call_between_sub_batches_and_leaves_the_process_usable():
    lines = interrupt_child(CHILD, delay=0.3, timeout=60)
    reports = [(start[1], float(start[2]), float(start[3]), sent, end[0], *map(float, end[2:]))
               for (start, sent), (end, _) in zip(lines[::2], lines[1::2])]
    assert [r[0] for r in reports] == ["conv2d", "conv2d_backward", "avg_pool2d"], reports
    for name, estimate, sub_batch, sent, outcome, *times in reports:
        assert outcome == "interrupted", (name, estimate, times)
        caught, elapsed = times
        # The call would have run >= 3 s; it stopped within a sub-batch or two of the signal
        # (some tens of milliseconds each natively), plus the time to unwind and free buffers.
        assert caught - sent < 2 * sub_batch + 0.5, (name, sub_batch, caught - sent)
        assert elapsed < estimate / 2, (name, estimate, elapsed)
