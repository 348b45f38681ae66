"""Max pooling with windows large against the input (issue 25, item 3): the separable kernel.

Windows far larger than the input, clipped by padding to a few taps, must cost time linear in
the data; the results must be exactly those of the one-window-at-a-time rule (ties to the first
maximum in row-major window order, the last NaN, -inf padding that never wins, the first tap
inside the input for an all -inf window), which the NumPy reference and PyTorch both define.
Both kernels (phase split and separable) are forced on every case of test_pooling's table, and
huge images split into bands of output rows must give what one call gives.
"""

import sys
import textwrap

import numpy as np
import pytest
from _child import interrupt_child
from conftest import DTYPES
from test_pooling import make_input, torch_max_pool

import convx
import convx._batching
import convx.functional._pooling_nhwc
import convx.functional as F
import convx.functional.pooling as pooling
import convx.reference.pooling as R
from convx import _threads


def _input(rng, shape, dtype, kind):
    """test_pooling's inputs, salted a little more densely (one element in 6, at least 2)."""
    return make_input(rng, shape, dtype, kind, salt=6, least=2)


def _assert_same(actual, expected):
    """Max pooling only selects: values (NaN equal to NaN) and indices agree exactly."""
    np.testing.assert_array_equal(actual[0], expected[0])
    np.testing.assert_array_equal(actual[1], expected[1])


def _channels_last_matches_first(x, args):
    """Max pooling of ``x`` channels last (with and without indices) equals channels first, moved;
    the channels-last (values, indices)."""
    y, indices = F.max_pool2d(x, *args, return_indices=True)
    x_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    y_last, indices_last = F.max_pool2d(x_last, *args, return_indices=True, layout="NHWC")
    np.testing.assert_array_equal(y_last, y.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(indices_last, indices.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(F.max_pool2d(x_last, *args, layout="NHWC"), y_last)
    return y_last, indices_last


@pytest.fixture
def threads():
    before = _threads.get_num_threads()
    yield _threads.set_num_threads
    _threads.set_num_threads(before)


@pytest.fixture(params=["separable", "phase split"])
def kernel_choice(request, monkeypatch):
    """Force one max-pool kernel: a tap ratio of 0 sends every geometry to the separable kernel,
    a huge one every geometry the phase split can take (exact offsets, bounded scratch)."""
    monkeypatch.setattr(pooling, "PHASE_TAP_RATIO", 0 if request.param == "separable" else 10**12)
    return request.param


# (input shape, kernel_size, stride, padding, dilation, ceil_mode): windows at or beyond the input.
LARGE_CASES = [
    ((1, 2, 1, 1), 9, 1, 4, 1, False),
    ((1, 2, 1, 1), 65, 1, 32, 1, True),
    ((2, 2, 3, 3), 33, 1, 16, 1, False),
    ((2, 2, 3, 4), (33, 17), (5, 3), (16, 8), 1, True),
    ((1, 3, 9, 11), 15, 1, 7, 1, False),
    ((1, 3, 9, 11), (15, 9), (2, 3), (7, 4), (1, 2), True),
    ((1, 2, 12, 13), (7, 5), 1, (3, 2), (2, 3), False),
    ((1, 2, 12, 13), (5, 7), (3, 1), (2, 3), (3, 2), True),
    ((1, 2, 20, 21), 11, 4, 5, 2, True),
    ((1, 2, 17, 19), (9, 3), (1, 7), (4, 1), (2, 9), True),
    ((1, 1, 40, 40), 39, 1, 19, 1, False),
    ((1, 2, 6, 30), (1, 29), 1, (0, 14), 1, True),
    ((1, 2, 30, 6), (29, 1), (3, 1), (14, 0), 1, False),
]


@pytest.mark.parametrize("n_threads", [1, 3])
@pytest.mark.parametrize("kind", ["normal", "ties", "special"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kernel_size, stride, padding, dilation, ceil_mode", LARGE_CASES)
def test_large_windows_match_reference_and_torch(
    rng, torch, threads, shape, kernel_size, stride, padding, dilation, ceil_mode, dtype, kind, n_threads
):
    threads(n_threads)
    x = _input(rng, shape, dtype, kind)
    args = (kernel_size, stride, padding, dilation, ceil_mode)
    result = F.max_pool2d(x, *args, return_indices=True)
    _assert_same(result, R.max_pool2d(x, *args, return_indices=True))
    _assert_same(result, torch_max_pool(torch, x, *args))
    np.testing.assert_array_equal(F.max_pool2d(x, *args), result[0])


@pytest.mark.parametrize("dtype", [*DTYPES, np.int8, np.uint8])
@pytest.mark.parametrize("shape, kernel_size, stride, padding, dilation, ceil_mode", LARGE_CASES[::2])
def test_large_windows_channels_last_match_channels_first(
    rng, shape, kernel_size, stride, padding, dilation, ceil_mode, dtype, monkeypatch
):
    # Channels last, large windows take the separable kernel on channels-first copies of bounded
    # parts of the batch (parts of one image here): the same values and indices, transposed.
    monkeypatch.setattr(convx.functional._pooling_nhwc, "_SEPARABLE_PART_ELEMENTS", 1)
    x = _input(rng, (3, *shape[1:]), np.float64, "ties")
    if np.dtype(dtype).kind != "f":
        info = np.iinfo(dtype)
        x = np.clip(np.round(x * 40) - info.min - 128, info.min, info.max)
    x = x.astype(dtype)
    args = (kernel_size, stride, padding, dilation, ceil_mode)
    _channels_last_matches_first(x, args)


def test_large_windows_channels_last_take_the_separable_kernel(rng, torch, monkeypatch):
    # Undilated windows take the channels-last separable kernel (no copies); dilated ones the
    # channels-first one on copies.
    x = _input(rng, (1, 2, 128, 128), np.float32, "ties")
    x_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    calls = {"first": [], "last": 0}
    first, last = convx._core.max_pool2d_forward, convx._core.max_pool2d_nhwc_separable

    def spy_first(*args):
        calls["first"].append(args[-4])  # the separable flag
        return first(*args)

    def spy_last(*args):
        calls["last"] += 1
        return last(*args)

    monkeypatch.setattr(convx._core, "max_pool2d_forward", spy_first)
    monkeypatch.setattr(convx._core, "max_pool2d_nhwc_separable", spy_last)
    y_last, indices_last = F.max_pool2d(x_last, 127, 1, 63, return_indices=True, layout="NHWC")
    assert calls["last"] and not calls["first"]
    y, indices = torch_max_pool(torch, x, 127, 1, 63, 1, False)
    np.testing.assert_array_equal(y_last, y.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(indices_last, indices.transpose(0, 2, 3, 1))
    calls["last"] = 0
    y_last, indices_last = F.max_pool2d(x_last, 63, 1, 31, 2, return_indices=True, layout="NHWC")
    assert calls["first"] and all(calls["first"]) and not calls["last"]
    y, indices = torch_max_pool(torch, x, 63, 1, 31, 2, False)
    np.testing.assert_array_equal(y_last, y.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(indices_last, indices.transpose(0, 2, 3, 1))


# Undilated windows of every kind the blocks see: a window within one block at the start of the
# line or clipped at its end, across two blocks, stride above the kernel, windows over the whole
# plane, one row or column, asymmetric padding and ceil_mode's last partial window.
SEPARABLE_LAST_CASES = [
    ((3, 5, 9, 11), 3, 2, 1, False),
    ((2, 3, 13, 12), (5, 4), (1, 3), (2, 1), True),
    ((2, 17, 7, 10), (7, 2), (5, 3), (3, 0), True),
    ((1, 4, 12, 13), 13, 1, 6, False),
    ((2, 3, 1, 30), (1, 29), 1, (0, 14), True),
    ((2, 3, 30, 1), (29, 1), (3, 1), (14, 0), False),
    ((2, 2, 11, 9), 4, 3, ((0, 2), (1, 0)), True),
    ((1, 70, 10, 12), (9, 5), (2, 1), "same", False),
    ((2, 3, 40, 37), (21, 17), (1, 2), (10, 8), True),
]


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("kind", ["normal", "ties", "special"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kernel_size, stride, padding, ceil_mode", SEPARABLE_LAST_CASES)
def test_channels_last_separable_kernel_matches_channels_first(
    rng, torch, threads, monkeypatch, shape, kernel_size, stride, padding, ceil_mode, dtype, kind, n_threads
):
    # Every geometry sent to the channels-last separable kernel (a tap ratio of 0), with few and
    # many channels and lanes cut into runs for the column pass: the channels-first values and
    # indices exactly (NaN where NaN wins, the first maximum among ties), and PyTorch's.
    monkeypatch.setattr(convx.functional._pooling_nhwc, "_SEPARABLE_TAP_RATIO", 0)
    monkeypatch.setattr(convx.functional._pooling_nhwc, "_max_pool2d_first", None)  # no copies
    threads(n_threads)
    x = _input(rng, shape, dtype, kind)
    args = (kernel_size, stride, padding, 1, ceil_mode)
    y_last, indices_last = _channels_last_matches_first(x, args)
    if isinstance(padding, str) or (isinstance(padding, tuple) and not all(isinstance(p, int) for p in padding)):
        return  # padding PyTorch does not take
    y_torch, indices_torch = torch_max_pool(torch, x, *args)
    np.testing.assert_array_equal(y_last, y_torch.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(indices_last, indices_torch.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", [1025, 2049, 4097])
def test_huge_window_over_a_single_pixel(rng, torch, dtype, kernel):
    # The case: stride 1, padding kernel // 2, a 1x1 plane. Every window holds one tap.
    x = _input(rng, (2, 3, 1, 1), dtype, "special")
    result = F.max_pool2d(x, kernel, 1, kernel // 2, return_indices=True)
    _assert_same(result, R.max_pool2d(x, kernel, 1, kernel // 2, return_indices=True))
    _assert_same(result, torch_max_pool(torch, x, kernel, 1, kernel // 2, 1, False))
    _assert_same(result, (x, np.zeros(x.shape, dtype=np.int64)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_realistic_large_window(rng, torch, threads, dtype):
    # The (2, 16, 128, 128), k=127, stride 1, padding 63, at one image of two channels
    # (PyTorch alone takes ~0.5 s on it); ties make the first-maximum rule do the work.
    x = _input(rng, (1, 2, 128, 128), dtype, "ties")
    expected = torch_max_pool(torch, x, 127, 1, 63, 1, False)
    for n_threads in (1, 2, 3):
        threads(n_threads)
        _assert_same(F.max_pool2d(x, 127, 1, 63, return_indices=True), expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_separable_windows_keep_the_tie_nan_and_padding_rules(torch, dtype):
    nan, inf = np.nan, np.inf
    x = np.full((1, 4, 5, 6), -inf, dtype=dtype)
    x[0, 1] = 1.0  # all tied: the first tap inside the input of each window
    x[0, 2, 1, 4], x[0, 2, 3, 2], x[0, 2, 4, 5] = nan, nan, 7.0  # NaNs win, the last in row-major order
    x[0, 3] = -2.0
    x[0, 3, 2, 1] = x[0, 3, 2, 4] = x[0, 3, 0, 3] = 3.0  # ties between rows: row-major order
    for args in [(9, 1, 4), ((11, 7), (2, 1), (5, 3)), ((5, 5), 1, 2, (2, 2)), (13, 3, 6, 1, True)]:
        result = F.max_pool2d(x, *args, return_indices=True)
        _assert_same(result, R.max_pool2d(x, *args, return_indices=True))
        torch_args = tuple(args) + (1, False)[len(args) - 3:]
        _assert_same(result, torch_max_pool(torch, x, *torch_args))
    y, indices = F.max_pool2d(x, 13, 1, 6, return_indices=True)
    assert np.all(y[0, 0] == -inf) and np.all(indices[0, 0] == 0)  # all -inf: the first tap inside
    assert np.all(indices[0, 1] == 0)
    assert np.all(np.isnan(y[0, 2])) and np.all(indices[0, 2] == 3 * 6 + 2)
    assert np.all(y[0, 3] == 3.0) and np.all(indices[0, 3] == 3)


def _table():
    from test_pooling import MAX_CASES

    return MAX_CASES


@pytest.mark.parametrize("kind", ["ties", "special"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kernel_size, stride, padding, dilation, ceil_mode", _table())
def test_both_kernels_on_ordinary_windows(rng, kernel_choice, shape, kernel_size, stride, padding, dilation,
                                          ceil_mode, dtype, kind):
    x = _input(rng, shape, dtype, kind)
    args = (kernel_size, stride, padding, dilation, ceil_mode)
    _assert_same(F.max_pool2d(x, *args, return_indices=True), R.max_pool2d(x, *args, return_indices=True))


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bands_of_output_rows_give_what_one_call_gives(rng, kernel_choice, threads, dtype, n_threads):
    # A sub-batch budget far below one image: every image goes in bands of output rows (down to
    # one row per call), as a huge single plane would, so that Ctrl-C is seen between calls.
    threads(n_threads)
    x = _input(rng, (2, 3, 23, 19), dtype, "special")
    real = convx._core.max_pool2d_forward
    # (arguments, the rows a window reaches beyond its first: (kernel_h - 1) * dilation_h)
    for args, reach in [((5, 1, 2), 4), (((4, 3), (2, 1), (1, 1), (2, 3), True), 6), ((2, 2), 1), ((3, 2, 1), 2),
                        ((19, 1, 9), 18)]:
        whole = F.max_pool2d(x, *args, return_indices=True)
        calls = []

        def counting(*call):
            calls.append(call[-3:-1])  # (first, end) output rows
            return real(*call)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(convx._batching, "SUB_BATCH_WORK", 64)
            patch.setattr(convx._core, "max_pool2d_forward", counting)
            banded = F.max_pool2d(x, *args, return_indices=True)
        _assert_same(banded, whole)
        _assert_same(whole, R.max_pool2d(x, *args, return_indices=True))
        out_h = whole[0].shape[2]
        per_image = len(calls) // x.shape[0]
        assert len(calls) == per_image * x.shape[0]
        # As many bands as the overlaps of their windows allow: one call for a window of the
        # plane's height, where bands would each read all of it.
        assert per_image == min(out_h, x.shape[2] // reach), (args, per_image)
        for image in range(x.shape[0]):
            bands = calls[image * per_image:(image + 1) * per_image]
            assert bands[0][0] == 0 and bands[-1][1] == out_h
            assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(bands, bands[1:]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_tall_planes_take_the_block_column_pass_a_few_columns_at_a_time(rng, monkeypatch, threads, dtype, torch):
    # 40,000 rows: the block column pass's 16 MiB holds 26 (float32) or 17 (float64) output columns of
    # them, not 64, so the 70 columns go in several chunks, the last one short.
    monkeypatch.setattr(pooling, "PHASE_TAP_RATIO", 0)  # the separable kernel
    threads(2)
    x = _input(rng, (1, 1, 40_000, 70), dtype, "special")
    for args in [((7, 3), 1, (3, 1), 1, False), ((4, 5), (3, 2), (2, 2), 1, True)]:
        result = F.max_pool2d(x, *args, return_indices=True)
        _assert_same(result, torch_max_pool(torch, x, *args))
        _assert_same(result, R.max_pool2d(x, *args, return_indices=True))


@pytest.mark.parametrize("dtype", DTYPES)
def test_tall_narrow_planes_take_the_column_pass_one_column_at_a_time(rng, dtype):
    # Over a million rows: the block column pass's scratch for even one column (16 bytes or more
    # a row) exceeds its 16 MiB budget, so the columns go one at a time by deque; and with
    # dilation the rows go by deque too.
    x = _input(rng, (1, 1, 2**20 + 64, 3), dtype, "ties")
    for args in [((5, 3), 1, (2, 1)), ((5, 3), (2, 1), (2, 1), (1, 2)), ((4, 3), 1, (1, 1), (3, 1), True)]:
        _assert_same(F.max_pool2d(x, *args, return_indices=True), R.max_pool2d(x, *args, return_indices=True))


def test_the_choice_of_kernel():
    choose = pooling._max_pool_separable
    f32 = np.dtype(np.float32)
    # The literal fast paths keep the phase split.
    assert not choose(f32, 56, 56, 28, 28, (2, 2), (2, 2), (0, 0), (1, 1))
    assert not choose(f32, 56, 56, 28, 28, (3, 3), (2, 2), (1, 1), (1, 1))
    assert not choose(f32, 56, 56, 56, 56, (3, 3), (1, 1), (1, 1), (1, 1))
    # Large windows, strides beyond the kernel, offsets past the float mantissa: separable.
    assert choose(f32, 1, 1, 1, 1, (2049, 2049), (1, 1), (1024, 1024), (1, 1))
    assert choose(f32, 128, 128, 128, 128, (127, 127), (1, 1), (63, 63), (1, 1))
    assert choose(f32, 3, 3, 1, 1, (3, 3), (10_000, 10_000), (0, 0), (1, 1))
    assert choose(f32, 5000, 5000, 1, 2, (2, 2), (1, 1), (0, 0), (4999, 4998))
    assert not choose(np.dtype(np.float64), 5000, 5000, 1, 2, (2, 2), (1, 1), (0, 0), (4999, 4998))


# The child: one plane of 4096x4096 (64 MiB), max-pooled by the separable kernel with dilation
# 2 (its slower deque passes: most of a second on one core), with sub-batches of 2^24 units (a
# few milliseconds: the bands of output rows that one image is split into); interrupted by the
# parent shortly after it starts.
CHILD = textwrap.dedent(
    """
    import time
    import numpy as np
    import convx, convx._batching
    import convx.functional as F
    convx._batching.SUB_BATCH_WORK = 1 << 24
    x = np.random.default_rng(0).standard_normal((1, 1, 4096, 4096)).astype(np.float32)
    small = x[:, :, :300, :300].copy()
    F.max_pool2d(small, 15, 1, 7, 2)  # warm-up
    start = time.perf_counter()
    F.max_pool2d(x[:, :, :1024], 15, 1, 7, 2)
    estimate = 4 * (time.perf_counter() - start)
    print("start", estimate, flush=True)
    start = time.time()
    try:
        F.max_pool2d(x, 15, 1, 7, 2)
    except KeyboardInterrupt:
        print("interrupted", time.time(), time.time() - start, flush=True)
    else:
        print("finished", time.time(), time.time() - start, flush=True)
    from convx.reference import pooling as reference
    assert np.array_equal(F.max_pool2d(small[:, :, :40, :40], 31, 1, 15),
                          reference.max_pool2d(small[:, :, :40, :40], 31, 1, 15))
    print("usable", flush=True)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT cannot be sent to a child process on Windows")
def test_ctrl_c_stops_a_single_huge_plane_between_bands_of_rows():
    ((_, estimate), sent), ((outcome, caught, elapsed), _) = interrupt_child(CHILD, delay=0.05, OMP_NUM_THREADS="1")
    assert outcome == "interrupted", (outcome, estimate, elapsed)
    # Bands of a few milliseconds: the signal is seen within a fraction of a second, long before
    # the ~second the whole plane takes.
    assert float(caught) - sent < 0.25, (caught, sent)
    assert float(elapsed) < 0.7 * float(estimate), (elapsed, estimate)

