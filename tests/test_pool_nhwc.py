"""Channels-last pooling (``layout='NHWC'`` / ``'NWC'``): every op equals, bit for bit, the
channels-first op on the same data with its channel axis moved (values, indices and gradients,
NaN equal to NaN), and PyTorch's channels_last results."""

from __future__ import annotations

import numpy as np
import pytest

import convx.functional as F
from convx import _threads, nn

DTYPES = [np.float32, np.float64]

# 2-D window geometries, in every padding spelling the ops take.
WINDOWS = [
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=2, stride=2),
    dict(kernel_size=3, stride=1, padding="same"),
    dict(kernel_size=3, stride=2, padding="same"),
    dict(kernel_size=4, stride=3, padding="same_lower"),
    dict(kernel_size=3, stride=2, padding="valid"),
    dict(kernel_size=3, stride=2, padding=((0, 2), (1, 0))),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 0)),
    dict(kernel_size=3, stride=1, padding=2, dilation=2),
    dict(kernel_size=(3, 2), stride=(2, 3), padding=((2, 0), (0, 1)), dilation=(1, 2), ceil_mode=True),
    dict(kernel_size=5, stride=3),
]
AVG_OPTIONS = [
    dict(),
    dict(count_include_pad=False),
    dict(divisor_override=5),
]
ADAPTIVE_SIZES = [1, (3, 4), (5, None), (13, 10)]


@pytest.fixture
def num_threads():
    before = _threads.get_num_threads()
    yield _threads.set_num_threads
    _threads.set_num_threads(before)


def same(a, b):
    """Equal bit for bit in value (NaN equal to NaN), shape and dtype."""
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


def last(array, dims=2):
    """A channels-first array (batched or not) as a C-contiguous channels-last one."""
    return np.ascontiguousarray(np.moveaxis(array, -dims - 1, -1))


def first(array, dims=2):
    """The channels-last result moved back to channels first, to compare."""
    return np.moveaxis(array, -1, -dims - 1)


def last_shape(shape, dims=2):
    shape = tuple(shape)
    return (*shape[: -dims - 1], *shape[-dims:], shape[-dims - 1])


def data(shape, dtype, seed=0, specials=True):
    """Few distinct values (many ties), with NaN and +-inf sprinkled in."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, size=shape).astype(dtype)
    if specials and x.size:
        flat = x.reshape(-1)
        picks = rng.choice(flat.size, size=max(1, flat.size // 15), replace=False)
        flat[picks] = rng.choice([np.nan, np.inf, -np.inf], size=picks.size)
    return x


def grads(shape, dtype, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------------------------------
# 2-D ops against the NCHW ops


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", WINDOWS)
def test_max_pool2d_matches_nchw(window, dtype):
    x = data((3, 5, 11, 9), dtype)
    y, indices = F.max_pool2d(x, **window, return_indices=True)
    y_last, indices_last = F.max_pool2d(last(x), **window, return_indices=True, layout="NHWC")
    assert same(first(y_last), y) and same(first(indices_last), indices)
    assert same(F.max_pool2d(last(x), **window, layout="NHWC"), y_last)
    grad = grads(y.shape, dtype)
    grad_x = F.max_pool2d_backward(grad, indices, x.shape)
    grad_last = F.max_pool2d_backward(last(grad), indices_last, last_shape(x.shape), layout="NHWC")
    assert same(first(grad_last), grad_x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", AVG_OPTIONS)
@pytest.mark.parametrize("window", WINDOWS)
def test_avg_pool2d_matches_nchw(window, options, dtype):
    x = data((2, 6, 10, 13), dtype, specials=False)
    x = x + grads(x.shape, dtype)  # values whose sums round
    y = F.avg_pool2d(x, **window, **options)
    y_last = F.avg_pool2d(last(x), **window, **options, layout="NHWC")
    assert same(first(y_last), y)
    grad = grads(y.shape, dtype)
    grad_x = F.avg_pool2d_backward(grad, x.shape, **window, **options)
    grad_last = F.avg_pool2d_backward(last(grad), last_shape(x.shape), **window, **options, layout="NHWC")
    assert same(first(grad_last), grad_x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_avg_pool2d_specials_match_nchw(dtype):
    x = data((2, 3, 9, 8), dtype)
    for window in WINDOWS[:4]:
        assert same(first(F.avg_pool2d(last(x), **window, layout="NHWC")), F.avg_pool2d(x, **window))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", ADAPTIVE_SIZES)
def test_adaptive_pools_match_nchw(size, dtype):
    x = data((2, 4, 9, 7), dtype)
    y, indices = F.adaptive_max_pool2d(x, size, return_indices=True)
    y_last, indices_last = F.adaptive_max_pool2d(last(x), size, return_indices=True, layout="NHWC")
    assert same(first(y_last), y) and same(first(indices_last), indices)
    assert same(F.adaptive_max_pool2d(last(x), size, layout="NHWC"), y_last)
    grad = grads(y.shape, dtype)
    assert same(first(F.max_pool2d_backward(last(grad), indices_last, last_shape(x.shape), layout="NHWC")),
                F.max_pool2d_backward(grad, indices, x.shape))
    smooth = grads(x.shape, dtype, seed=5)
    assert same(first(F.adaptive_avg_pool2d(last(smooth), size, layout="NHWC")), F.adaptive_avg_pool2d(smooth, size))
    assert same(first(F.adaptive_avg_pool2d(last(x), size, layout="NHWC")), F.adaptive_avg_pool2d(x, size))
    assert same(first(F.adaptive_avg_pool2d_backward(last(grad), last_shape(x.shape), layout="NHWC")),
                F.adaptive_avg_pool2d_backward(grad, x.shape))


@pytest.mark.parametrize("dtype", DTYPES)
def test_unbatched_empty_noncontiguous_readonly(dtype):
    x = data((4, 9, 11), dtype)  # (C, H, W)
    window = dict(kernel_size=3, stride=2, padding=1)
    y, indices = F.max_pool2d(x, **window, return_indices=True)
    y_last, indices_last = F.max_pool2d(last(x), **window, return_indices=True, layout="NHWC")
    assert y_last.shape == (5, 6, 4) and same(first(y_last), y) and same(first(indices_last), indices)
    assert same(first(F.max_pool2d_backward(last(y), indices_last, last_shape(x.shape), layout="NHWC")),
                F.max_pool2d_backward(y, indices, x.shape))
    assert same(first(F.avg_pool2d(last(x), **window, layout="NHWC")), F.avg_pool2d(x, **window))
    assert same(first(F.avg_pool2d_backward(last(y), last_shape(x.shape), **window, layout="NHWC")),
                F.avg_pool2d_backward(y, x.shape, **window))
    assert same(first(F.adaptive_avg_pool2d(last(x), 3, layout="NHWC")), F.adaptive_avg_pool2d(x, 3))

    empty = np.zeros((0, 9, 11, 4), dtype)
    y_empty, indices_empty = F.max_pool2d(empty, **window, return_indices=True, layout="NHWC")
    assert y_empty.shape == indices_empty.shape == (0, 5, 6, 4)
    assert F.max_pool2d_backward(y_empty, indices_empty, empty.shape, layout="NHWC").shape == empty.shape
    assert F.avg_pool2d(empty, **window, layout="NHWC").shape == (0, 5, 6, 4)
    assert F.avg_pool2d_backward(y_empty, empty.shape, **window, layout="NHWC").shape == empty.shape
    assert F.adaptive_avg_pool2d(empty, 2, layout="NHWC").shape == (0, 2, 2, 4)
    no_channels = np.zeros((2, 9, 11, 0), dtype)
    assert F.max_pool2d(no_channels, **window, layout="NHWC").shape == (2, 5, 6, 0)

    batch = data((3, 5, 12, 14), dtype)
    strided = np.moveaxis(batch, 1, -1)[:, ::2, 1::2]  # a non-contiguous (N, H, W, C) view
    readonly = last(batch)
    readonly.setflags(write=False)
    reference = batch[:, :, ::2, 1::2]
    assert same(first(F.max_pool2d(strided, **window, layout="NHWC")), F.max_pool2d(reference, **window))
    assert same(first(F.avg_pool2d(strided, **window, layout="NHWC")), F.avg_pool2d(reference, **window))
    assert same(first(F.max_pool2d(readonly, **window, layout="NHWC")), F.max_pool2d(batch, **window))
    assert same(first(F.adaptive_max_pool2d(readonly, 4, layout="NHWC")), F.adaptive_max_pool2d(batch, 4))


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_and_two_threads_agree(dtype, num_threads):
    x = last(data((4, 8, 15, 13), dtype))
    window = dict(kernel_size=3, stride=2, padding=1)
    results = []
    for n in (1, 2):
        num_threads(n)
        y, indices = F.max_pool2d(x, **window, return_indices=True, layout="NHWC")
        results.append([
            y, indices, F.max_pool2d_backward(y, indices, x.shape, layout="NHWC"),
            F.avg_pool2d(x, **window, layout="NHWC"), F.avg_pool2d_backward(y, x.shape, **window, layout="NHWC"),
            F.adaptive_avg_pool2d(x, 5, layout="NHWC"), F.adaptive_avg_pool2d_backward(y, x.shape, layout="NHWC"),
            F.adaptive_max_pool2d(x, 5, layout="NHWC"),
        ])
    for one, two in zip(*results):
        assert same(one, two)


def test_max_backward_refuses_bad_indices():
    grad = np.ones((1, 2, 2, 3))
    indices = np.zeros((1, 2, 2, 3), dtype=np.int64)
    indices[0, 1, 1, 2] = 16
    with pytest.raises(ValueError, match=r"indices must lie in \[0, H\*W\) = \[0, 16\)"):
        F.max_pool2d_backward(grad, indices, (1, 4, 4, 3), layout="NHWC")
    indices[0, 1, 1, 2] = -1
    with pytest.raises(ValueError, match="got -1"):
        F.max_pool2d_backward(grad, indices, (1, 4, 4, 3), layout="NHWC")


@pytest.mark.parametrize("bad", [np.iinfo(np.int64).min, np.iinfo(np.int64).max, 2**62, -(2**40), 2**40])
@pytest.mark.parametrize("out_shape", [(2, 2), (3, 4)])  # within the 2x2 blocks of a 4x4 plane, or not
def test_max_backward_refuses_far_indices(bad, out_shape):
    # Indices far outside the plane (whose offsets k * C + c would overflow int64) are refused, by
    # the 2x2-block kernel and by the scatter alike.
    grad = np.ones((2, *out_shape, 70))
    indices = np.zeros((2, *out_shape, 70), dtype=np.int64)
    indices[1, -1, -1, 69] = bad
    with pytest.raises(ValueError, match=rf"indices must lie in \[0, H\*W\) = \[0, 16\) .*got {bad}"):
        F.max_pool2d_backward(grad, indices, (2, 4, 4, 70), layout="NHWC")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 8, 8), (2, 3, 9, 11), (1, 70, 5, 4), (2, 1, 2, 2), (2, 4, 13, 2)])
def test_max_backward_of_2x2_blocks_matches_nchw(shape, dtype):
    # Indices each in their own 2x2 block take the one-pass kernel: the same bits as the scatter onto
    # zeros (0 + g: -0.0 becomes +0.0, NaN and inf pass), the rows and columns past the blocks zero.
    x = data(shape, dtype)
    y, indices = F.max_pool2d(x, 2, return_indices=True)
    grad = grads(y.shape, dtype)
    flat = grad.reshape(-1)
    flat[::7], flat[1::11], flat[2::13] = -0.0, np.nan, -np.inf
    expected = F.max_pool2d_backward(grad, indices, x.shape)
    got = F.max_pool2d_backward(last(grad), last(indices), last_shape(x.shape), layout="NHWC")
    assert same(first(got), expected)
    assert not np.signbit(got[got == 0]).any()
    # Unbatched, and with 2 threads over the images.
    assert same(first(F.max_pool2d_backward(last(grad[0]), last(indices[0]), last_shape(x.shape[1:]),
                                            layout="NHWC")), expected[0])


@pytest.mark.parametrize("row", [0, 1, -1])
def test_max_backward_with_an_index_outside_its_block(row):
    # One index in the plane but outside its 2x2 block (in the first, second or last output row):
    # that image goes to the scatter (the rows already written are redone), the others stay in one
    # pass; all as channels first. An index outside the plane is refused either way.
    x = data((3, 4, 10, 9), np.float64, specials=False) + grads((3, 4, 10, 9), np.float64)
    y, indices = F.max_pool2d(x, 2, return_indices=True)
    indices = indices.copy()
    indices[1, 2, row, 3] = 0
    indices[2, 0, row, 0] = 9 * 10 - 1
    grad = grads(y.shape, np.float64)
    expected = F.max_pool2d_backward(grad, indices, x.shape)
    got = F.max_pool2d_backward(last(grad), last(indices), last_shape(x.shape), layout="NHWC")
    assert same(first(got), expected)
    for bad, shown in ((90, "90"), (-2, "-2")):
        indices[2, 3, row, 2] = bad
        with pytest.raises(ValueError, match=rf"indices must lie in \[0, H\*W\) = \[0, 90\) .*got {shown}"):
            F.max_pool2d_backward(last(grad), last(indices), last_shape(x.shape), layout="NHWC")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels", [1, 4, 15, 16, 17, 32, 33, 64, 65, 100])
@pytest.mark.parametrize("window", [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=9, stride=1, padding=4),
                                    dict(kernel_size=15, stride=2, padding=7)])
def test_max_backward_scatter_matches_nchw_at_every_channel_count(window, channels, dtype):
    # The scatter takes few channels one at a time and many as vectors of offsets, in chunks of 64
    # (the last one shorter): the same sums in the same order as channels first at any count, with
    # large windows sending runs of outputs to one maximum, and with ties, NaN and inf in x.
    x = data((2, channels, 13, 12), dtype)
    y, indices = F.max_pool2d(x, **window, return_indices=True)
    grad = grads(y.shape, dtype)
    grad.reshape(-1)[::5] = -0.0
    expected = F.max_pool2d_backward(grad, indices, x.shape)
    got = F.max_pool2d_backward(last(grad), last(indices), last_shape(x.shape), layout="NHWC")
    assert same(first(got), expected)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, H\*W\) = \[0, 156\)"):
        bad = last(indices)
        bad[1, -1, -1, channels - 1] = 156
        F.max_pool2d_backward(last(grad), bad, last_shape(x.shape), layout="NHWC")


def test_max_backward_threads_agree_on_blocks_and_scatter(num_threads):
    x = data((8, 16, 24, 20), np.float32, specials=False) + grads((8, 16, 24, 20), np.float32)
    for window in (dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1)):
        y, indices = F.max_pool2d(last(x), **window, return_indices=True, layout="NHWC")
        grad = grads(y.shape, np.float32)
        results = []
        for n in (1, 2, 3):
            num_threads(n)
            results.append(F.max_pool2d_backward(grad, indices, last(x).shape, layout="NHWC"))
        assert same(results[0], results[1]) and same(results[0], results[2])
        _, indices_first = F.max_pool2d(x, **window, return_indices=True)
        assert same(first(results[0]), F.max_pool2d_backward(first(grad), indices_first, x.shape))


# ---------------------------------------------------------------------------------------------
# 1-D ops


WINDOWS_1D = [
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding="same"),
    dict(kernel_size=4, stride=3, padding="same_lower"),
    dict(kernel_size=3, stride=2, padding=((2, 0),), ceil_mode=True),
    dict(kernel_size=3, stride=1, padding=2, dilation=2),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", WINDOWS_1D)
def test_pool1d_matches_ncw(window, dtype):
    x = data((3, 5, 17), dtype)
    y, indices = F.max_pool1d(x, **window, return_indices=True)
    y_last, indices_last = F.max_pool1d(last(x, 1), **window, return_indices=True, layout="NWC")
    assert same(first(y_last, 1), y) and same(first(indices_last, 1), indices)
    grad = grads(y.shape, dtype)
    assert same(first(F.max_pool1d_backward(last(grad, 1), indices_last, last_shape(x.shape, 1), layout="NWC"), 1),
                F.max_pool1d_backward(grad, indices, x.shape))
    smooth = grads(x.shape, dtype, seed=3)
    avg = F.avg_pool1d(smooth, **window, count_include_pad=False)
    assert same(first(F.avg_pool1d(last(smooth, 1), **window, count_include_pad=False, layout="NWC"), 1), avg)
    assert same(first(F.avg_pool1d_backward(last(grad, 1), last_shape(x.shape, 1), **window, layout="NWC"), 1),
                F.avg_pool1d_backward(grad, x.shape, **window))
    # unbatched (L, C)
    y1, i1 = F.max_pool1d(last(x[0], 1), **window, return_indices=True, layout="NWC")
    assert same(first(y1, 1), y[0]) and same(first(i1, 1), indices[0])
    assert same(first(F.max_pool1d_backward(last(grad[0], 1), i1, last_shape(x[0].shape, 1), layout="NWC"), 1),
                F.max_pool1d_backward(grad[0], indices[0], x[0].shape))
    assert same(first(F.avg_pool1d_backward(last(grad[0], 1), last_shape(x[0].shape, 1), **window, layout="NWC"), 1),
                F.avg_pool1d_backward(grad[0], x[0].shape, **window))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1, 4, 23])
def test_adaptive_pool1d_matches_ncw(size, dtype):
    x = data((2, 3, 17), dtype)
    y, indices = F.adaptive_max_pool1d(x, size, return_indices=True)
    y_last, indices_last = F.adaptive_max_pool1d(last(x, 1), size, return_indices=True, layout="NWC")
    assert same(first(y_last, 1), y) and same(first(indices_last, 1), indices)
    assert same(first(F.adaptive_max_pool1d(last(x, 1), size, layout="NWC"), 1), y)
    assert same(first(F.adaptive_avg_pool1d(last(x, 1), size, layout="NWC"), 1), F.adaptive_avg_pool1d(x, size))
    grad = grads(y.shape, dtype)
    assert same(first(F.adaptive_avg_pool1d_backward(last(grad, 1), last_shape(x.shape, 1), layout="NWC"), 1),
                F.adaptive_avg_pool1d_backward(grad, x.shape))
    assert same(first(F.adaptive_avg_pool1d(last(x[1], 1), size, layout="NWC"), 1), F.adaptive_avg_pool1d(x[1], size))


# ---------------------------------------------------------------------------------------------
# Layers


LAYERS = [
    (nn.MaxPool2d, dict(kernel_size=3, stride=2, padding=1), 2),
    (nn.AvgPool2d, dict(kernel_size=3, stride=2, padding="same", count_include_pad=False), 2),
    (nn.AdaptiveAvgPool2d, dict(output_size=(3, None)), 2),
    (nn.AdaptiveMaxPool2d, dict(output_size=(4, 3)), 2),
    (nn.MaxPool1d, dict(kernel_size=3, stride=2, padding=1), 1),
    (nn.AvgPool1d, dict(kernel_size=2, ceil_mode=True), 1),
    (nn.AdaptiveAvgPool1d, dict(output_size=4), 1),
    (nn.AdaptiveMaxPool1d, dict(output_size=5), 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer, options, dims", LAYERS)
def test_layers_match_channels_first(layer, options, dims, dtype):
    channels_last = "NHWC" if dims == 2 else "NWC"
    x = data((2, 5, 9, 11)[: dims + 2], dtype, specials=False) + grads((2, 5, 9, 11)[: dims + 2], dtype)
    pool, pool_last = layer(**options), layer(**options, layout=channels_last)
    assert f"layout='{channels_last}'" in repr(pool_last) and "layout" not in repr(pool)
    y, y_last = pool(x), pool_last(last(x, dims))
    assert same(first(y_last, dims), y)
    grad = grads(y.shape, dtype)
    assert same(first(pool_last.backward(last(grad, dims)), dims), pool.backward(grad))


def test_layer_refusals():
    with pytest.raises(ValueError, match="layout must be 'NCHW'"):
        nn.MaxPool2d(2, layout="NWC")
    with pytest.raises(ValueError, match="layout must be 'NCW'"):
        nn.AvgPool1d(2, layout="NHWC")
    with pytest.raises(ValueError, match=r"max_pool2d expects x of shape \(N, H, W, C\) or \(H, W, C\) with "
                                         r"layout='NHWC', got an array of shape \(4, 4\)"):
        nn.MaxPool2d(2, layout="NHWC")(np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"adaptive_avg_pool2d expects x of shape \(N, H, W, C\)"):
        nn.AdaptiveAvgPool2d((3, None), layout="NHWC")(np.zeros((4, 4)))


# ---------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize("bad", ["nhwc", "NCW", "HWC", None, 2])
def test_bad_layouts_are_refused(bad):
    x = np.zeros((1, 4, 4, 2))
    with pytest.raises(ValueError, match=r"layout must be 'NCHW' \(channels first, PyTorch's\) or 'NHWC'"):
        F.max_pool2d(x, 2, layout=bad)
    with pytest.raises(ValueError, match="layout must be 'NCHW'"):
        F.avg_pool2d_backward(x, x.shape, 2, layout=bad)
    with pytest.raises(ValueError, match="layout must be 'NCW'"):
        F.avg_pool1d(x[0], 2, layout=bad if bad != "NCW" else "NHWC")


def test_wrong_shapes_name_the_layout():
    with pytest.raises(ValueError, match=r"max_pool2d expects x of shape \(N, H, W, C\) or \(H, W, C\) with "
                                         r"layout='NHWC', got an array of shape \(3, 4\)"):
        F.max_pool2d(np.zeros((3, 4)), 2, layout="NHWC")
    with pytest.raises(ValueError, match=r"avg_pool2d expects x of shape \(N, H, W, C\)"):
        F.avg_pool2d(np.zeros((1, 2, 3, 4, 5)), 2, layout="NHWC")
    with pytest.raises(ValueError, match=r"adaptive_max_pool2d expects x of shape \(N, H, W, C\)"):
        F.adaptive_max_pool2d(np.zeros(3), 2, layout="NHWC")
    with pytest.raises(ValueError, match=r"max_pool1d expects x of shape \(N, L, C\) or \(L, C\) with layout='NWC'"):
        F.max_pool1d(np.zeros((1, 2, 3, 4)), 2, layout="NWC")
    with pytest.raises(ValueError, match=r"max_pool2d_backward expects grad_out of shape \(N, out_h, out_w, C\)"):
        F.max_pool2d_backward(np.zeros((2, 2)), np.zeros((2, 2), np.int64), (4, 4), layout="NHWC")
    # A channels-first array passed as NHWC: its channels (axis 1) taken for rows, the mismatch named.
    grad = np.zeros((1, 2, 2, 3))
    with pytest.raises(ValueError, match=r"does not match input_shape \(1, 3, 4, 4\) with layout='NHWC'"):
        F.avg_pool2d_backward(grad, (1, 3, 4, 4), 2, layout="NHWC")
    with pytest.raises(ValueError, match=r"grad_out must have the forward output shape \(1, 2, 2, 3\)"):
        F.avg_pool2d_backward(np.zeros((1, 3, 3, 3)), (1, 4, 4, 3), 2, layout="NHWC")
    with pytest.raises(ValueError, match="does not match input_shape"):
        F.avg_pool1d_backward(np.zeros((1, 2, 3)), (1, 4, 2), 2, layout="NWC")
    with pytest.raises(TypeError, match="dtype"):
        F.max_pool2d(np.zeros((1, 4, 4, 2), np.int32), 2, layout="NHWC")


# ---------------------------------------------------------------------------------------------
# PyTorch with memory_format=torch.channels_last


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2, stride=2),
                                    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)])
def test_against_torch_channels_last(window, dtype):
    torch = pytest.importorskip("torch")
    x = grads((2, 6, 11, 9), dtype, seed=7)
    x[0, 1, 2, 3] = np.nan
    xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    yt, it = torch.nn.functional.max_pool2d(xt, **window, return_indices=True)
    y, indices = F.max_pool2d(last(x), **window, return_indices=True, layout="NHWC")
    assert np.array_equal(y, yt.detach().permute(0, 2, 3, 1).numpy(), equal_nan=True)
    assert np.array_equal(indices, it.permute(0, 2, 3, 1).numpy())
    grad = grads(y.shape, dtype, seed=8)
    yt.backward(torch.from_numpy(np.ascontiguousarray(first(grad))))
    grad_x = F.max_pool2d_backward(grad, indices, last_shape(x.shape), layout="NHWC")
    np.testing.assert_allclose(grad_x, xt.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-6 if dtype == np.float32 else 1e-12)

    xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    at = torch.nn.functional.avg_pool2d(xt, **window, count_include_pad=False)
    a = F.avg_pool2d(last(x), **window, count_include_pad=False, layout="NHWC")
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a, at.detach().permute(0, 2, 3, 1).numpy(), **tol)
    at.backward(torch.from_numpy(np.ascontiguousarray(first(grad))))
    np.testing.assert_allclose(
        F.avg_pool2d_backward(grad, last_shape(x.shape), **window, count_include_pad=False, layout="NHWC"),
        np.nan_to_num(xt.grad.permute(0, 2, 3, 1).numpy()), **tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_adaptive_against_torch_channels_last(dtype):
    torch = pytest.importorskip("torch")
    x = grads((2, 5, 10, 7), dtype, seed=9)
    xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for size in [(3, 4), 1, (7, 5)]:
        np.testing.assert_allclose(F.adaptive_avg_pool2d(last(x), size, layout="NHWC"),
                                   torch.nn.functional.adaptive_avg_pool2d(xt, size).permute(0, 2, 3, 1).numpy(), **tol)
        y, indices = F.adaptive_max_pool2d(last(x), size, return_indices=True, layout="NHWC")
        yt, it = torch.nn.functional.adaptive_max_pool2d(xt, size, return_indices=True)
        assert np.array_equal(y, yt.permute(0, 2, 3, 1).numpy())
        assert np.array_equal(indices, it.permute(0, 2, 3, 1).numpy())


# ---------------------------------------------------------------------------------------------
# Power-average pooling (on the channels-last average pooling)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", [dict(kernel_size=2), dict(kernel_size=3, stride=2, ceil_mode=True),
                                     dict(kernel_size=3, stride=2, padding="same", dilation=1)])
def test_lp_pool_matches_channels_first(options, dtype):
    kwargs = dict(options)
    kernel_size = kwargs.pop("kernel_size")
    x = np.abs(grads((2, 3, 9, 8), dtype, seed=11))
    y = F.lp_pool2d(x, 2, kernel_size, **kwargs)
    assert same(first(F.lp_pool2d(last(x), 2, kernel_size, **kwargs, layout="NHWC")), y)
    grad = grads(y.shape, dtype)
    assert same(first(F.lp_pool2d_backward(last(grad), last(x), 2, kernel_size, **kwargs, layout="NHWC")),
                F.lp_pool2d_backward(grad, x, 2, kernel_size, **kwargs))
    line = x[:, :, 0]
    y1 = F.lp_pool1d(line, 3, kernel_size, **kwargs)
    assert same(first(F.lp_pool1d(last(line, 1), 3, kernel_size, **kwargs, layout="NWC"), 1), y1)
    grad1 = grads(y1.shape, dtype)
    assert same(first(F.lp_pool1d_backward(last(grad1, 1), last(line, 1), 3, kernel_size, **kwargs, layout="NWC"), 1),
                F.lp_pool1d_backward(grad1, line, 3, kernel_size, **kwargs))
    with pytest.raises(ValueError, match=r"lp_pool2d expects x of shape \(N, H, W, C\)"):
        F.lp_pool2d(line[0], 2, 2, layout="NHWC")


@pytest.mark.parametrize("layer, dims", [(nn.LPPool2d, 2), (nn.LPPool1d, 1)])
def test_lp_layers_match_channels_first(layer, dims):
    x = np.abs(grads((2, 4, 7, 6)[: dims + 2], np.float64))
    pool, pool_last = layer(2, 2), layer(2, 2, layout="NHWC" if dims == 2 else "NWC")
    assert "layout=" in repr(pool_last)
    y = pool(x)
    assert same(first(pool_last(last(x, dims)), dims), y)
    grad = grads(y.shape, np.float64)
    assert same(first(pool_last.backward(last(grad, dims)), dims), pool.backward(grad))


# ---------------------------------------------------------------------------------------------
# Max unpooling


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_unpool_matches_channels_first(dtype):
    x = data((2, 3, 9, 8), dtype)
    y, indices = F.max_pool2d(x, 3, 2, 1, return_indices=True)  # overlapping windows: shared positions
    unpooled = F.max_unpool2d(y, indices, 3, 2, 1, output_size=(9, 8))
    unpooled_last = F.max_unpool2d(last(y), last(indices), 3, 2, 1, output_size=(9, 8), layout="NHWC")
    assert same(first(unpooled_last), unpooled)
    whole = F.max_unpool2d(last(y), last(indices), 3, 2, 1, output_size=(2, 9, 8, 3), layout="NHWC")
    assert same(whole, unpooled_last)
    grad = grads(unpooled.shape, dtype)
    assert same(first(F.max_unpool2d_backward(last(grad), last(indices), layout="NHWC")),
                F.max_unpool2d_backward(grad, indices))
    assert same(first(F.max_unpool2d(last(y[0]), last(indices[0]), 3, 2, 1, output_size=(9, 8), layout="NHWC")),
                unpooled[0])
    line = x[:, :, 0]
    y1, i1 = F.max_pool1d(line, 2, return_indices=True)
    assert same(first(F.max_unpool1d(last(y1, 1), last(i1, 1), 2, output_size=(8,), layout="NWC"), 1),
                F.max_unpool1d(y1, i1, 2, output_size=(8,)))
    grad1 = grads((2, 3, 8), dtype)
    assert same(first(F.max_unpool1d_backward(last(grad1, 1), last(i1, 1), layout="NWC"), 1),
                F.max_unpool1d_backward(grad1, i1))
    layer = nn.MaxUnpool2d(3, 2, 1, layout="NHWC")
    assert same(first(layer(last(y), last(indices), output_size=(9, 8))), unpooled)
    assert same(first(layer.backward(last(grad))), F.max_unpool2d_backward(grad, indices))
    with pytest.raises(ValueError, match=r"max_unpool2d expects x of shape \(N, H, W, C\)"):
        F.max_unpool2d(np.zeros((2, 2)), np.zeros((2, 2), np.int64), 2, layout="NHWC")
    with pytest.raises(ValueError, match="batch and channel axes"):
        F.max_unpool2d_backward(last(grad), last(indices)[..., :2], layout="NHWC")


# ---------------------------------------------------------------------------------------------
# Central differences, float64, on the channels-last layers themselves


@pytest.mark.parametrize("layer", [
    nn.MaxPool2d(3, 2, 1, layout="NHWC"),
    nn.AvgPool2d(3, 2, padding=((0, 2), (1, 0)), count_include_pad=False, layout="NHWC"),
    nn.AdaptiveAvgPool2d((3, 2), layout="NHWC"),
    nn.AdaptiveMaxPool2d(3, layout="NHWC"),
    nn.MaxPool1d(3, 2, 1, layout="NWC"),
    nn.AvgPool1d(3, 2, 1, layout="NWC"),
    nn.LPPool2d(2, 2, layout="NHWC"),
    nn.GlobalAvgPool2d(layout="NHWC"),
    nn.GlobalAvgPool2d(keepdims=True, layout="NHWC"),
    nn.GlobalMaxPool2d(layout="NHWC"),
    nn.GlobalMaxPool2d(keepdims=True, layout="NHWC"),
], ids=repr)
def test_gradcheck_channels_last(layer):
    import convx

    dims = 1 if layer.layout == "NWC" else 2
    shape = (2, 7, 3) if dims == 1 else (2, 7, 6, 3)
    # Distinct values well apart, so that no central difference moves a window's maximum.
    x = np.random.default_rng(4).permutation(np.prod(shape)).reshape(shape) * 0.1 + 1.0
    assert convx.gradcheck(layer, x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [dict(kernel_size=7, stride=1, padding=3), dict(kernel_size=(9, 2), stride=1),
                                    dict(kernel_size=3, stride=2, padding=2, dilation=3)])
def test_max_pool2d_minus_inf_nan_and_large_windows(window, dtype):
    # Windows of -inf only (each reports its first tap inside the input), NaN in a few, and windows
    # large enough that the NCHW op takes its separable kernel.
    x = np.full((2, 3, 13, 12), -np.inf, dtype)
    x[0, 1, 4, 5] = x[1, 2, 0, 0] = x[1, 2, 0, 1] = np.nan
    x[0, 0, 6, 6] = 1.0
    for data_ in (x, data((2, 3, 13, 12), dtype, seed=6)):
        y, indices = F.max_pool2d(data_, **window, return_indices=True)
        y_last, indices_last = F.max_pool2d(last(data_), **window, return_indices=True, layout="NHWC")
        assert same(first(y_last), y) and same(first(indices_last), indices)


# ---------------------------------------------------------------------------------------------
# Global pooling layers


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("kind", ["Avg", "Max"])
@pytest.mark.parametrize("shape", [(2, 5, 9, 11), (3, 1, 1, 7), (1, 131, 4, 3), (0, 3, 4, 5), (4, 6, 5)])
def test_global_pooling_matches_channels_first(kind, keepdims, shape, dtype):
    layer_class = getattr(nn, f"Global{kind}Pool2d")
    pool, pool_last = layer_class(keepdims=keepdims), layer_class(keepdims=keepdims, layout="NHWC")
    assert repr(pool_last) == f"Global{kind}Pool2d(keepdims={keepdims}, layout='NHWC')"
    assert "layout" not in repr(pool) and pool.layout == "NCHW" and pool_last.layout == "NHWC"
    x = data(shape, dtype, specials=kind == "Max") + grads(shape, dtype)
    y, y_last = pool(x), pool_last(last(x))
    assert y_last.dtype == y.dtype and y_last.flags.c_contiguous
    # Without keepdims both layouts give (N, C); with it, (N, C, 1, 1) and (N, 1, 1, C).
    assert same(first(y_last) if keepdims else y_last, y)
    # The reference: means and maxima over the plane, from the formulas.
    plane = x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])
    expected = np.max(plane, axis=-1) if kind == "Max" else plane.sum(axis=-1) / plane.shape[-1]
    if kind == "Max":
        assert same((first(y_last) if keepdims else y_last).reshape(expected.shape), expected)
    else:
        np.testing.assert_allclose((first(y_last) if keepdims else y_last).reshape(expected.shape), expected,
                                   rtol=1e-5 if dtype == np.float32 else 1e-12)
    grad = grads(y.shape, dtype)
    grad_last = last(grad) if keepdims else grad
    assert same(first(pool_last.backward(grad_last)), pool.backward(grad))


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_global_max_pooling_channels_last_integers(dtype):
    info = np.iinfo(dtype)
    x = np.random.default_rng(3).integers(info.min, info.max, (2, 6, 5, 3), endpoint=True).astype(dtype)
    x[1, :, :, 2] = info.min
    x[0, 2, 3, 1] = info.max
    layer = nn.GlobalMaxPool2d(layout="NHWC")
    y = layer(x)
    assert y.dtype == dtype and same(y, nn.GlobalMaxPool2d()(first(x)))
    assert same(y, x.max(axis=(1, 2)))
    with pytest.raises(TypeError, match="integer inputs have no gradient"):
        layer.backward(np.ones(y.shape, np.float32))


def test_global_pooling_refusals():
    with pytest.raises(ValueError, match="layout must be 'NCHW'"):
        nn.GlobalAvgPool2d(layout="NWC")
    with pytest.raises(ValueError, match="layout must be 'NCHW'"):
        nn.GlobalMaxPool2d(layout="nhwc")
    with pytest.raises(TypeError, match="keepdims must be a bool"):
        nn.GlobalAvgPool2d(keepdims=1, layout="NHWC")
    with pytest.raises(ValueError, match=r"adaptive_avg_pool2d expects x of shape \(N, H, W, C\) or \(H, W, C\) "
                                         r"with layout='NHWC', got an array of shape \(4, 4\)"):
        nn.GlobalAvgPool2d(layout="NHWC")(np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"adaptive_max_pool2d expects x of shape \(N, H, W, C\)"):
        nn.GlobalMaxPool2d(layout="NHWC")(np.zeros((1, 2, 3, 4, 5)))
    with pytest.raises(TypeError, match="x must have dtype float32 or float64"):
        nn.GlobalAvgPool2d(layout="NHWC")(np.zeros((1, 4, 4, 2), np.int8))
    layer = nn.GlobalAvgPool2d(layout="NHWC")
    layer(np.zeros((2, 4, 4, 3)))
    with pytest.raises(ValueError, match=r"grad_out must have the forward output's shape \(2, 3\)"):
        layer.backward(np.zeros((2, 1, 1, 3)))
