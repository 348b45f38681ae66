"""Channels-last 3-D pooling, ``layout='NDHWC'``: max, average, adaptive and Lp pooling with their
backward passes and layers, against the channels-first ops on the same data transposed (bit for
bit: the kernels visit taps and add shares in the same order), against PyTorch on
``torch.channels_last_3d`` tensors, NaN and infinities, empty and unbatched inputs, strided and
read-only views, 1-3 threads, bands of depths, the round trip through ``max_unpool3d`` and the
refusals (each naming the layout it assumed)."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
from _child import interrupt_child

import convx
import convx.functional as F
from conftest import DTYPES, assert_close
from convx import _threads, nn

pytestmark = pytest.mark.usefixtures("torch_on_one_thread")


@pytest.fixture
def num_threads():
    before = _threads.get_num_threads()
    yield _threads.set_num_threads
    _threads.set_num_threads(before)


def last(array):
    """A channels-first array (batched or not) laid out channels last, C-contiguous."""
    return np.ascontiguousarray(np.moveaxis(array, -4, -1))


def first(array):
    """A channels-last result as channels first, checked C-contiguous in its own layout."""
    assert array.flags.c_contiguous
    return np.moveaxis(array, -1, -4)


def last_shape(shape):
    return (*shape[:-4], *shape[-3:], shape[-4])


MAX_WINDOWS = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=1, padding=1),  # the literal 3x3x3 window
    dict(kernel_size=(3, 2, 3), stride=(2, 1, 2), padding=((2, 0), (1, 1), (0, 2)), ceil_mode=True),
    dict(kernel_size=(2, 3, 2), stride=(1, 2, 3), padding=(1, 1, 0), dilation=(2, 1, 2)),
    dict(kernel_size=3, stride=2, padding="same"),
    dict(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding="same_lower", dilation=(1, 2, 1)),
]
SHAPES = [(2, 5, 6, 7, 8), (1, 40, 5, 4, 6), (3, 3, 4, 5), (0, 3, 4, 4, 4)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("window", MAX_WINDOWS)
def test_max_pool3d_matches_ncdhw(rng, dtype, shape, window):
    x = rng.standard_normal(shape).astype(dtype)
    y, indices = F.max_pool3d(x, return_indices=True, **window)
    y_last, indices_last = F.max_pool3d(last(x), return_indices=True, layout="NDHWC", **window)
    np.testing.assert_array_equal(first(y_last), y)
    np.testing.assert_array_equal(first(indices_last), indices)
    np.testing.assert_array_equal(F.max_pool3d(last(x), layout="NDHWC", **window), y_last)
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    grad_x = F.max_pool3d_backward(grad_out, indices, x.shape)
    grad_last = F.max_pool3d_backward(last(grad_out), indices_last, last_shape(x.shape), layout="NDHWC")
    np.testing.assert_array_equal(first(grad_last), grad_x)


AVG_OPTIONS = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=(3, 2, 3), stride=(1, 2, 1), padding=((2, 0), (1, 0), (0, 2)), ceil_mode=True),
    dict(kernel_size=(3, 2, 3), stride=(1, 2, 1), padding=((2, 0), (1, 0), (0, 2)), ceil_mode=True,
         count_include_pad=False),
    dict(kernel_size=(2, 3, 2), stride=1, padding=1, divisor_override=5),
    dict(kernel_size=(2, 2, 3), stride=(1, 1, 1), dilation=(2, 1, 2), padding="same"),
    dict(kernel_size=4, stride=1, padding=((3, 1), (2, 2), (0, 3)), count_include_pad=False),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("options", AVG_OPTIONS)
def test_avg_pool3d_matches_ncdhw(rng, dtype, shape, options):
    x = rng.standard_normal(shape).astype(dtype)
    y = F.avg_pool3d(x, **options)
    np.testing.assert_array_equal(first(F.avg_pool3d(last(x), layout="NDHWC", **options)), y)
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    grad_x = F.avg_pool3d_backward(grad_out, x.shape, **options)
    grad_last = F.avg_pool3d_backward(last(grad_out), last_shape(x.shape), layout="NDHWC", **options)
    np.testing.assert_array_equal(first(grad_last), grad_x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES[:3])
@pytest.mark.parametrize("size", [1, (2, 3, 4), (3, None, 2), (7, 4, 9), (None, None, None)])
def test_adaptive_pools_match_ncdhw(rng, dtype, shape, size):
    x = rng.standard_normal(shape).astype(dtype)
    y = F.adaptive_avg_pool3d(x, size)
    np.testing.assert_array_equal(first(F.adaptive_avg_pool3d(last(x), size, layout="NDHWC")), y)
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_array_equal(
        first(F.adaptive_avg_pool3d_backward(last(grad_out), last_shape(x.shape), layout="NDHWC")),
        F.adaptive_avg_pool3d_backward(grad_out, x.shape))
    y, indices = F.adaptive_max_pool3d(x, size, return_indices=True)
    y_last, indices_last = F.adaptive_max_pool3d(last(x), size, return_indices=True, layout="NDHWC")
    np.testing.assert_array_equal(first(y_last), y)
    np.testing.assert_array_equal(first(indices_last), indices)
    np.testing.assert_array_equal(first(F.adaptive_max_pool3d(last(x), size, layout="NDHWC")), y)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", [dict(), dict(stride=1, padding=((1, 0), (0, 1), (1, 1)), dilation=(1, 2, 1)),
                                     dict(stride=(1, 2, 1), ceil_mode=True)])
def test_lp_pool3d_matches_ncdhw(rng, dtype, options):
    x = np.abs(rng.standard_normal((2, 6, 5, 6, 7))).astype(dtype)
    y = F.lp_pool3d(x, 2.5, 2, **options)
    np.testing.assert_array_equal(first(F.lp_pool3d(last(x), 2.5, 2, layout="NDHWC", **options)), y)
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_array_equal(
        first(F.lp_pool3d_backward(last(grad_out), last(x), 2.5, 2, layout="NDHWC", **options)),
        F.lp_pool3d_backward(grad_out, x, 2.5, 2, **options))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_infinities_match_ncdhw(rng, dtype):
    x = rng.integers(-2, 3, (2, 5, 5, 6, 7)).astype(dtype)  # ties everywhere
    flat = x.reshape(-1)
    spots = rng.choice(flat.size, 60, replace=False)
    flat[spots] = rng.choice(np.array([np.nan, np.inf, -np.inf], dtype), 60)
    x[1, 2] = -np.inf  # a channel of -inf only: its maxima point at each window's first tap
    for window in MAX_WINDOWS:
        y, indices = F.max_pool3d(x, return_indices=True, **window)
        y_last, indices_last = F.max_pool3d(last(x), return_indices=True, layout="NDHWC", **window)
        np.testing.assert_array_equal(first(y_last), y)
        np.testing.assert_array_equal(first(indices_last), indices)
    for options in AVG_OPTIONS:
        np.testing.assert_array_equal(first(F.avg_pool3d(last(x), layout="NDHWC", **options)),
                                      F.avg_pool3d(x, **options))
    y, indices = F.adaptive_max_pool3d(x, (2, 3, 4), return_indices=True)
    y_last, indices_last = F.adaptive_max_pool3d(last(x), (2, 3, 4), return_indices=True, layout="NDHWC")
    np.testing.assert_array_equal(first(y_last), y)
    np.testing.assert_array_equal(first(indices_last), indices)
    np.testing.assert_array_equal(first(F.adaptive_avg_pool3d(last(x), (2, 3, 4), layout="NDHWC")),
                                  F.adaptive_avg_pool3d(x, (2, 3, 4)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_unbatched_empty_noncontiguous_readonly(rng, dtype):
    base = rng.standard_normal((3, 9, 8, 10, 6)).astype(dtype)
    x_last = base[:, ::-1, 1:, ::2, 1::2]  # (3, 9, 7, 5, 3), strided, channels last
    x_last.flags.writeable = False
    x_first = np.moveaxis(x_last, -1, 1)
    y, indices = F.max_pool3d(x_last, 3, 2, 1, return_indices=True, layout="NDHWC")
    y_first, indices_first = F.max_pool3d(np.ascontiguousarray(x_first), 3, 2, 1, return_indices=True)
    np.testing.assert_array_equal(first(y), y_first)
    np.testing.assert_array_equal(first(indices), indices_first)
    np.testing.assert_array_equal(first(F.avg_pool3d(x_last, 2, 1, ((1, 0), (0, 1), (1, 1)), layout="NDHWC")),
                                  F.avg_pool3d(x_first, 2, 1, ((1, 0), (0, 1), (1, 1))))
    # Unbatched (D, H, W, C).
    np.testing.assert_array_equal(first(F.max_pool3d(x_last[0], 2, layout="NDHWC")), F.max_pool3d(x_first[0], 2))
    np.testing.assert_array_equal(first(F.adaptive_avg_pool3d(x_last[0], 2, layout="NDHWC")),
                                  F.adaptive_avg_pool3d(x_first[0], 2))
    grad = np.ones((4, 3, 2, 3), dtype)
    np.testing.assert_array_equal(first(F.avg_pool3d_backward(grad, x_last[0].shape, 2, layout="NDHWC")),
                                  F.avg_pool3d_backward(first(grad), x_first[0].shape, 2))
    # Empty batch, and no channels.
    for shape in [(0, 4, 4, 4, 3), (2, 4, 4, 4, 0)]:
        empty = np.zeros(shape, dtype)
        y, indices = F.max_pool3d(empty, 2, return_indices=True, layout="NDHWC")
        assert y.shape == indices.shape == (*shape[:1], 2, 2, 2, shape[-1])
        assert F.avg_pool3d_backward(np.zeros(y.shape, dtype), shape, 2, layout="NDHWC").shape == shape
        assert F.max_pool3d_backward(np.zeros(y.shape, dtype), indices, shape, layout="NDHWC").shape == shape
        assert F.adaptive_avg_pool3d_backward(np.zeros(y.shape, dtype), shape, layout="NDHWC").shape == shape


@pytest.mark.parametrize("dtype", DTYPES)
def test_threads_agree(rng, dtype, num_threads):
    x = last(rng.standard_normal((3, 7, 6, 7, 5)).astype(dtype))
    results = []
    for threads in (1, 2, 3):
        num_threads(threads)
        y, indices = F.max_pool3d(x, 3, 2, ((1, 1), (2, 0), (0, 1)), return_indices=True, layout="NDHWC")
        avg = F.avg_pool3d(x, 3, 1, 1, count_include_pad=False, layout="NDHWC")
        grad = F.avg_pool3d_backward(np.ones_like(avg), x.shape, 3, 1, 1, count_include_pad=False, layout="NDHWC")
        adaptive = F.adaptive_avg_pool3d_backward(np.ones((3, 4, 2, 3, 7), dtype), x.shape, layout="NDHWC")
        results.append((y, indices, avg, grad, adaptive))
    for result in results[1:]:
        for got, expected in zip(result, results[0]):
            np.testing.assert_array_equal(got, expected)


def _banded(kernel_name, op, *args, **kwargs):
    """op(*args) with a sub-batch budget far below one volume (every volume in bands of one depth),
    and the (begin, end) of each kernel call."""
    import convx._batching
    import convx._core

    real = getattr(convx._core, kernel_name)
    calls = []

    def counting(*call):
        calls.append(call[-3:-1])
        return real(*call)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(convx._batching, "SUB_BATCH_WORK", 64)
        patch.setattr(convx._core, kernel_name, counting)
        result = op(*args, **kwargs)
    return result, calls


@pytest.mark.parametrize("n_threads", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bands_of_depths_give_what_one_call_gives(rng, num_threads, dtype, n_threads):
    num_threads(n_threads)
    x = last(rng.standard_normal((2, 3, 9, 8, 7)).astype(dtype))
    sides = ((1, 2), (1, 0), (0, 1))
    y, calls = _banded("max_pool3d_ndhwc_forward", F.max_pool3d, x, 3, (2, 1, 2), sides, return_indices=True,
                       layout="NDHWC")
    assert len(calls) > 2 and calls[0][0] == 0
    expected = F.max_pool3d(x, 3, (2, 1, 2), sides, return_indices=True, layout="NDHWC")
    np.testing.assert_array_equal(y[0], expected[0])
    np.testing.assert_array_equal(y[1], expected[1])
    avg, calls = _banded("avg_pool3d_ndhwc_forward", F.avg_pool3d, x, 3, 1, sides, layout="NDHWC")
    assert len(calls) > 2
    np.testing.assert_array_equal(avg, F.avg_pool3d(x, 3, 1, sides, layout="NDHWC"))
    grad_out = rng.standard_normal(avg.shape).astype(dtype)
    grad, calls = _banded("avg_pool3d_ndhwc_backward", F.avg_pool3d_backward, grad_out, x.shape, 3, 1, sides,
                          layout="NDHWC")
    assert len(calls) > 2
    np.testing.assert_array_equal(grad, F.avg_pool3d_backward(grad_out, x.shape, 3, 1, sides, layout="NDHWC"))
    grad_out = rng.standard_normal((2, 4, 3, 5, 3)).astype(dtype)
    grad, calls = _banded("adaptive_avg_pool3d_ndhwc_backward", F.adaptive_avg_pool3d_backward, grad_out, x.shape,
                          layout="NDHWC")
    assert len(calls) > 2
    np.testing.assert_array_equal(grad, F.adaptive_avg_pool3d_backward(grad_out, x.shape, layout="NDHWC"))
    y, calls = _banded("adaptive_max_pool3d_ndhwc_forward", F.adaptive_max_pool3d, x, (4, 3, 5), layout="NDHWC")
    assert len(calls) > 2
    np.testing.assert_array_equal(y, F.adaptive_max_pool3d(x, (4, 3, 5), layout="NDHWC"))


def test_max_unpool3d_round_trips_the_indices(rng):
    x = last(np.abs(rng.standard_normal((2, 3, 6, 6, 6))) + 1)
    y, indices = F.max_pool3d(x, 2, return_indices=True, layout="NDHWC")
    restored = F.max_unpool3d(y, indices, 2, layout="NDHWC")
    y_first, indices_first = F.max_pool3d(first(x), 2, return_indices=True)
    np.testing.assert_array_equal(first(restored), F.max_unpool3d(y_first, indices_first, 2))
    # Every maximum back in its place, zeros elsewhere.
    np.testing.assert_array_equal(F.max_pool3d(restored, 2, layout="NDHWC"), y)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2),
                                    dict(kernel_size=(3, 2, 3), stride=(1, 2, 2), dilation=(2, 1, 1), ceil_mode=True)])
def test_against_torch_channels_last(rng, torch, dtype, window):
    x = rng.standard_normal((2, 16, 6, 7, 8)).astype(dtype)
    x_t = torch.from_numpy(x).contiguous(memory_format=torch.channels_last_3d)
    y_t, indices_t = torch.nn.functional.max_pool3d(x_t, return_indices=True, **window)
    y, indices = F.max_pool3d(last(x), return_indices=True, layout="NDHWC", **window)
    np.testing.assert_array_equal(first(y), y_t.numpy())
    np.testing.assert_array_equal(first(indices), indices_t.numpy())
    avg_window = {k: v for k, v in window.items() if k != "dilation"}
    assert_close(first(F.avg_pool3d(last(x), layout="NDHWC", **avg_window)),
                 torch.nn.functional.avg_pool3d(x_t, **avg_window).numpy(), dtype)
    assert_close(first(F.adaptive_avg_pool3d(last(x), (3, 4, 5), layout="NDHWC")),
                 torch.nn.functional.adaptive_avg_pool3d(x_t, (3, 4, 5)).numpy(), dtype)


LAYERS = [
    (nn.MaxPool3d, (3, 2, ((1, 0), (1, 1), (0, 1)))),
    (nn.AvgPool3d, (3, 2, 1, True, False)),
    (nn.AdaptiveAvgPool3d, ((2, 3, 2),)),
    (nn.AdaptiveMaxPool3d, ((2, 3, 2),)),
    (nn.LPPool3d, (2, 2, 1)),
]


@pytest.mark.parametrize("layer, args", LAYERS)
def test_layers_match_channels_first(rng, layer, args):
    x = np.abs(rng.standard_normal((2, 4, 5, 6, 7)))
    channels_first, channels_last = layer(*args), layer(*args, layout="NDHWC")
    y = channels_first(x)
    y_last = channels_last(last(x))
    np.testing.assert_array_equal(first(y_last), y)
    grad_out = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(first(channels_last.backward(last(grad_out))), channels_first.backward(grad_out))
    assert "layout='NDHWC'" in repr(channels_last) and "layout" not in repr(channels_first)
    assert convx.gradcheck(layer(*args, layout="NDHWC"), last(x[:1, :2, :4, :4, :4]))


@pytest.mark.parametrize("bad", ["ndhwc", "NCHW", "NHWC", "DHWC", None, 3])
def test_bad_layouts_are_refused(bad):
    x = np.zeros((1, 4, 4, 4, 2))
    match = r"layout must be 'NCDHW' \(channels first, PyTorch's\) or 'NDHWC' \(channels last\)"
    calls = [
        lambda: F.max_pool3d(x, 2, layout=bad),
        lambda: F.max_pool3d_backward(x, np.zeros(x.shape, np.int64), x.shape, layout=bad),
        lambda: F.avg_pool3d(x, 2, layout=bad),
        lambda: F.avg_pool3d_backward(x, x.shape, 2, layout=bad),
        lambda: F.adaptive_avg_pool3d(x, 2, layout=bad),
        lambda: F.adaptive_avg_pool3d_backward(x, x.shape, layout=bad),
        lambda: F.adaptive_max_pool3d(x, 2, layout=bad),
        lambda: F.lp_pool3d(x, 2, 2, layout=bad),
        lambda: F.lp_pool3d_backward(x, x, 2, 2, layout=bad),
        lambda: nn.MaxPool3d(2, layout=bad),
        lambda: nn.AvgPool3d(2, layout=bad),
        lambda: nn.AdaptiveAvgPool3d(2, layout=bad),
        lambda: nn.AdaptiveMaxPool3d(2, layout=bad),
        lambda: nn.LPPool3d(2, 2, layout=bad),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=match):
            call()


def test_wrong_shapes_name_the_layout():
    with pytest.raises(ValueError, match=r"max_pool3d expects x of shape \(N, D, H, W, C\) or \(D, H, W, C\) with "
                                         r"layout='NDHWC', got an array of shape \(3, 4, 5\)"):
        F.max_pool3d(np.zeros((3, 4, 5)), 2, layout="NDHWC")
    with pytest.raises(ValueError, match=r"avg_pool3d expects x of shape \(N, D, H, W, C\)"):
        F.avg_pool3d(np.zeros((1, 2, 3, 4, 5, 6)), 2, layout="NDHWC")
    with pytest.raises(ValueError, match=r"adaptive_max_pool3d expects x of shape \(N, D, H, W, C\)"):
        F.adaptive_max_pool3d(np.zeros(3), 2, layout="NDHWC")
    with pytest.raises(ValueError, match=r"lp_pool3d expects x of shape \(N, D, H, W, C\)"):
        F.lp_pool3d(np.zeros((3, 3)), 2, 2, layout="NDHWC")
    with pytest.raises(ValueError, match=r"max_pool3d_backward expects grad_out of shape \(N, D_out, H_out, W_out, C\)"):
        F.max_pool3d_backward(np.zeros((2, 2)), np.zeros((2, 2), np.int64), (4, 4, 4, 1), layout="NDHWC")
    with pytest.raises(ValueError, match=r"adaptive_avg_pool3d_backward expects grad_out of shape \(N, D_out"):
        F.adaptive_avg_pool3d_backward(np.zeros((2, 2)), (4, 4, 4, 1), layout="NDHWC")
    # A channels-first array passed as NDHWC: its channels (axis 1) taken for depths, the mismatch named.
    with pytest.raises(ValueError, match=r"does not match input_shape \(1, 3, 4, 4, 4\) with layout='NDHWC'"):
        F.avg_pool3d_backward(np.zeros((1, 3, 2, 2, 2)), (1, 3, 4, 4, 4), 2, layout="NDHWC")
    with pytest.raises(ValueError, match=r"grad_out must have the forward output shape \(1, 2, 2, 2, 3\) for "
                                         r"input_shape \(1, 4, 4, 4, 3\) \(layout='NDHWC'\)"):
        F.avg_pool3d_backward(np.zeros((1, 3, 3, 3, 3)), (1, 4, 4, 4, 3), 2, layout="NDHWC")
    with pytest.raises(ValueError, match=r"indices must lie in \[0, D\*H\*W\) = \[0, 64\)"):
        F.max_pool3d_backward(np.zeros((1, 2, 2, 2, 3)), np.full((1, 2, 2, 2, 3), 64), (1, 4, 4, 4, 3),
                              layout="NDHWC")
    with pytest.raises(ValueError, match="grad_out must have a non-empty output volume"):
        F.adaptive_avg_pool3d_backward(np.zeros((1, 0, 2, 2, 3)), (1, 4, 4, 4, 3), layout="NDHWC")
    with pytest.raises(ValueError, match="x must have a non-empty volume"):
        F.adaptive_max_pool3d(np.zeros((1, 4, 0, 4, 3)), 2, layout="NDHWC")
    with pytest.raises(TypeError, match="dtype"):
        F.max_pool3d(np.zeros((1, 4, 4, 4, 2), np.int32), 2, layout="NDHWC")


# The child: one channels-last volume of 64x256x256 with 4 channels (64 MiB), average-pooled with
# 7x7x7 windows at stride 1 (seconds on one core, forward and backward), with the default sub-batch
# budget (bands of output depths forward, of input depths backward, some tens of milliseconds each);
# each call is interrupted by the parent shortly after it starts.
CHILD = textwrap.dedent(
    """
    import time
    import numpy as np
    import convx.functional as F
    x = np.random.default_rng(0).standard_normal((1, 64, 256, 256, 4)).astype(np.float32)
    grad_out = np.ones_like(x)
    ops = {
        "forward": lambda depth: F.avg_pool3d(x[:, :depth], 7, 1, 3, layout="NDHWC"),
        "backward": lambda depth: F.avg_pool3d_backward(grad_out[:, :depth], (1, depth, 256, 256, 4), 7, 1, 3,
                                                        layout="NDHWC"),
    }
    for name, op in ops.items():
        op(2)  # warm-up
        start = time.perf_counter()
        op(8)
        estimate = 8 * (time.perf_counter() - start)
        print("start", name, estimate, flush=True)
        start = time.time()
        try:
            op(64)
        except KeyboardInterrupt:
            print("interrupted", name, time.time(), time.time() - start, flush=True)
        else:
            print("finished", name, time.time(), time.time() - start, flush=True)
    small = np.ascontiguousarray(x[:, :4, :9, :9])
    first = np.ascontiguousarray(np.moveaxis(small, -1, 1))
    assert np.array_equal(np.moveaxis(F.avg_pool3d(small, 3, 1, 1, layout="NDHWC"), -1, 1),
                          F.avg_pool3d(first, 3, 1, 1))
    print("usable", flush=True)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT cannot be sent to a child process on Windows")
def test_ctrl_c_stops_a_single_huge_channels_last_volume_between_bands():
    lines = interrupt_child(CHILD, delay=0.2, OMP_NUM_THREADS="1")
    reports = [(start[1], float(start[2]), sent, end[0], float(end[2]), float(end[3]))
               for (start, sent), (end, _) in zip(lines[::2], lines[1::2])]
    assert [r[0] for r in reports] == ["forward", "backward"], reports
    for name, estimate, sent, outcome, caught, elapsed in reports:
        assert outcome == "interrupted", (name, estimate, elapsed)
        # Bands of some tens of milliseconds: the signal is seen within a fraction of a second,
        # long before the seconds the whole volume takes.
        assert caught - sent < 0.5, (name, caught - sent)
        assert elapsed < 0.5 * estimate, (name, estimate, elapsed)
