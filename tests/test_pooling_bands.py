"""Average pooling of a huge image in bands of rows (issue 25): one kernel call per band, so that
Ctrl-C is seen between calls even in a single plane.

The forward pass goes in bands of output rows, the backward one in bands of input-gradient rows,
each row gathering from the windows over it: every element is written by one band with exactly
the sum, in exactly the order, that a single call gives. So bands must not change one bit, on
any thread count, whatever the geometry (both backward kernels: windows as wide as their stride,
and any windows; rows under no window; ceil_mode windows; every divisor rule).
"""

import sys
import textwrap

import numpy as np
import pytest
from _child import interrupt_child
from conftest import DTYPES, assert_close

import convx._batching
import convx._core
import convx.functional as F
import convx.reference.pooling as R
from convx import _threads

# (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
BAND_CASES = [
    (2, 2, 0, False, True, None),  # literal forward sweep; backward windows as wide as their stride
    (3, 2, 1, True, True, None),  # literal sweeps, overlapping windows, a ceil_mode window
    (3, 1, 1, False, False, None),  # three windows over every row and column
    ((5, 3), (2, 3), (2, 1), True, False, None),  # as wide as their stride, kernel taller than it
    ((2, 4), (3, 2), (1, 2), True, True, 5),  # rows under no window (stride taller than the kernel)
    ((7, 5), 1, (3, 2), False, True, None),  # generic widths, seven windows over a row
    ((1, 3), (4, 1), (0, 1), True, False, None),  # one-row windows, three rows of four under none
]


@pytest.fixture
def threads():
    before = _threads.get_num_threads()
    yield _threads.set_num_threads
    _threads.set_num_threads(before)


def _torch_grad(torch, x, grad_out, args):
    xt = torch.from_numpy(x).requires_grad_(True)
    torch.nn.functional.avg_pool2d(xt, *args).backward(torch.from_numpy(grad_out))
    return xt.grad.numpy()


def _banded(op, kernel_name, *args):
    """op(*args) with a sub-batch budget far below one image row (so every image goes in bands
    of one row each), and the (first, end) rows of each kernel call."""
    real = getattr(convx._core, kernel_name)
    calls = []

    def counting(*call):
        calls.append(call[-3:-1])
        return real(*call)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(convx._batching, "SUB_BATCH_WORK", 64)
        patch.setattr(convx._core, kernel_name, counting)
        result = op(*args)
    return result, calls


def _assert_bands_cover(calls, images, rows):
    """One band per row (the budget allows no more), in order, for each image in turn."""
    assert len(calls) == images * rows, (len(calls), images, rows)
    assert calls == [(row, row + 1) for _ in range(images) for row in range(rows)]


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override", BAND_CASES)
def test_bands_of_rows_give_what_one_call_gives(rng, torch, threads, dtype, n_threads, kernel_size, stride, padding,
                                                ceil_mode, count_include_pad, divisor_override):
    threads(n_threads)
    args = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    x = rng.standard_normal((2, 3, 23, 37)).astype(dtype)
    whole = F.avg_pool2d(x, *args)
    grad_out = rng.standard_normal(whole.shape).astype(dtype)
    grad_whole = F.avg_pool2d_backward(grad_out, x.shape, *args)

    banded, calls = _banded(F.avg_pool2d, "avg_pool2d_forward", x, *args)
    np.testing.assert_array_equal(banded, whole)
    _assert_bands_cover(calls, x.shape[0], whole.shape[2])
    grad_banded, calls = _banded(F.avg_pool2d_backward, "avg_pool2d_backward", grad_out, x.shape, *args)
    np.testing.assert_array_equal(grad_banded, grad_whole)
    _assert_bands_cover(calls, x.shape[0], x.shape[2])

    # And what they give is right.
    assert_close(banded, R.avg_pool2d(x, *args))
    assert_close(banded, torch.nn.functional.avg_pool2d(torch.from_numpy(x), *args).numpy())
    assert_close(grad_banded, R.avg_pool2d_backward(grad_out, x.shape, *args))
    # Each element adds its windows' shares onto zero in output order, as PyTorch does: same bits.
    np.testing.assert_array_equal(grad_banded, _torch_grad(torch, np.zeros_like(x), grad_out, args))


@pytest.mark.parametrize("dtype", DTYPES)
def test_bands_of_several_rows_and_an_unbatched_plane(rng, torch, threads, dtype):
    # Budgets between one row and the whole plane: bands of uneven numbers of rows, on a (C, H, W)
    # input, with two threads sharing its three planes.
    threads(2)
    x = rng.standard_normal((3, 41, 29)).astype(dtype)
    args = ((5, 4), (2, 1), (2, 1), True, False, None)
    whole = F.avg_pool2d(x, *args)
    grad_out = rng.standard_normal(whole.shape).astype(dtype)
    grad_whole = F.avg_pool2d_backward(grad_out, x.shape, *args)
    for budget in (3000, 20_000, 100_000):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(convx._batching, "SUB_BATCH_WORK", budget)
            np.testing.assert_array_equal(F.avg_pool2d(x, *args), whole)
            np.testing.assert_array_equal(F.avg_pool2d_backward(grad_out, x.shape, *args), grad_whole)
    np.testing.assert_array_equal(grad_whole, _torch_grad(torch, np.zeros(x.shape, dtype), grad_out, args))
    assert_close(whole, R.avg_pool2d(x, *args))


def test_ordinary_layers_go_in_one_call(rng, threads):
    # A batch of ordinary feature maps is far below a sub-batch's budget: exactly one kernel call
    # over all its rows, as before bands.
    x = rng.standard_normal((16, 64, 56, 56)).astype(np.float32)
    for args in [(2,), (3, 1, 1)]:
        for n_threads in (1, 2):
            threads(n_threads)
            for op, name, call_args, rows in [
                (F.avg_pool2d, "avg_pool2d_forward", (x, *args), F.avg_pool2d(x[:1, :1], *args).shape[2]),
                (F.avg_pool2d_backward, "avg_pool2d_backward",
                 (F.avg_pool2d(x, *args), x.shape, *args), x.shape[2]),
            ]:
                real = getattr(convx._core, name)
                calls = []

                def counting(*call, real=real, calls=calls):
                    calls.append(call[-3:-1])
                    return real(*call)

                with pytest.MonkeyPatch.context() as patch:
                    patch.setattr(convx._core, name, counting)
                    op(*call_args)
                assert calls == [(0, rows)], (name, args, calls)


def test_band_counts():
    bands = F.pooling._row_bands
    limit = convx._batching.SUB_BATCH_WORK
    # Fits one call; just over one thread's budget; capped by the rows there are to split.
    assert bands(limit, 1, 4096, 4096, 0) == 1
    assert bands(limit + 1, 1, 4096, 4096, 0) == 2
    assert bands(10**15, 1, 4096, 100, 0) == 100
    # Threads share a band's planes: no more of them than there are planes.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(F.pooling, "kernel_threads", lambda: 2)
        assert bands(3 * limit, 1, 4096, 4096, 0) == 3
        assert bands(3 * limit, 2, 4096, 4096, 0) == 2
    # Work repeated across bands (reach) caps them at twice the source in all.
    assert bands(10**15, 1, 4096, 4096, 62) == 4096 // 62


# The child: one plane of 4096x4096 (64 MiB), average-pooled with 31x31 windows at stride 1 (a
# few seconds on one core, forward and backward), with the default sub-batch budget (bands of
# some tens of milliseconds); each call is interrupted by the parent shortly after it starts.
CHILD = textwrap.dedent(
    """
    import time
    import numpy as np
    import convx
    import convx.functional as F
    x = np.random.default_rng(0).standard_normal((1, 1, 4096, 4096)).astype(np.float32)
    grad_out = np.ones_like(x)
    ops = {
        "forward": lambda rows: F.avg_pool2d(x[:, :, :rows], 31, 1, 15),
        "backward": lambda rows: F.avg_pool2d_backward(grad_out[:, :, :rows], (1, 1, rows, 4096), 31, 1, 15),
    }
    for name, op in ops.items():
        op(64)  # warm-up
        start = time.perf_counter()
        op(512)
        estimate = 8 * (time.perf_counter() - start)
        print("start", name, estimate, flush=True)
        start = time.time()
        try:
            op(4096)
        except KeyboardInterrupt:
            print("interrupted", name, time.time(), time.time() - start, flush=True)
        else:
            print("finished", name, time.time(), time.time() - start, flush=True)
    from convx.reference import pooling as reference
    small = x[:, :, :40, :40]
    assert np.allclose(F.avg_pool2d(small, 31, 1, 15), reference.avg_pool2d(small, 31, 1, 15))
    print("usable", flush=True)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT cannot be sent to a child process on Windows")
def test_ctrl_c_stops_a_single_huge_average_pooled_plane_between_bands_of_rows():
    lines = interrupt_child(CHILD, delay=0.2, OMP_NUM_THREADS="1")
    reports = [(start[1], float(start[2]), sent, end[0], float(end[2]), float(end[3]))
               for (start, sent), (end, _) in zip(lines[::2], lines[1::2])]
    assert [r[0] for r in reports] == ["forward", "backward"], reports
    for name, estimate, sent, outcome, caught, elapsed in reports:
        assert outcome == "interrupted", (name, estimate, elapsed)
        # Bands of some tens of milliseconds: the signal is seen within a fraction of a second,
        # long before the seconds the whole plane takes.
        assert caught - sent < 0.25, (name, caught - sent)
        assert elapsed < 0.5 * estimate, (name, estimate, elapsed)
