"""Max pooling of int8 and uint8 arrays (issue 20): exact, in the input's own dtype, with float max
pooling's indices and tie rule. Against a NumPy reference written here from the definition, against
convx's float64 pooling of the same (exactly representable) values, and against PyTorch (its integer
max pooling, or its float64 pooling where it has no integer kernel); the layers' forward and their
refused backward; and the refusals of every op and dtype that stays float-only."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import convx.functional as F
import convx.functional.pooling as pooling_module
from convx import _threads, nn

INT_DTYPES = [np.int8, np.uint8]


# --- reference, from the definition -----------------------------------------------------------------


def out_size(size, kernel, stride, before, after, dilation, ceil_mode):
    """floor (or ceil) of (size + before + after - d(k - 1) - 1) / s, plus one; a ceil_mode window that
    would start in the padding after the input is dropped."""
    numerator = size + before + after - dilation * (kernel - 1) - 1
    out = (-(-numerator // stride) if ceil_mode else numerator // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + before:
        out -= 1
    return out


def same_sides(size, kernel, stride, dilation, lower=False):
    """ONNX's SAME_UPPER (SAME_LOWER): ceil(size / stride) outputs, the odd extra after (before)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    small, large = total // 2, total - total // 2
    return (large, small) if lower else (small, large)


def ref_max_pool2d(x, kernel, stride, sides, dilation, ceil_mode=False):
    """(y, indices) for x (N, C, H, W): the maximum over the taps inside the input, the first in
    row-major window order winning ties; indices flat h * W + w."""
    (kh, kw), (sh, sw), ((top, bottom), (left, right)), (dh, dw) = kernel, stride, sides, dilation
    n, c, height, width = x.shape
    out_h = out_size(height, kh, sh, top, bottom, dh, ceil_mode)
    out_w = out_size(width, kw, sw, left, right, dw, ceil_mode)
    planes = x.reshape(n * c, height * width)
    y = np.empty((n * c, out_h, out_w), x.dtype)
    indices = np.empty((n * c, out_h, out_w), np.int64)
    for oh in range(out_h):
        for ow in range(out_w):
            positions = [
                h * width + w
                for h in (oh * sh - top + i * dh for i in range(kh)) if 0 <= h < height
                for w in (ow * sw - left + j * dw for j in range(kw)) if 0 <= w < width
            ]
            assert positions, "every window reaches the input"
            best = planes[:, positions[0]].copy()
            where = np.full(n * c, positions[0], np.int64)
            for pos in positions[1:]:
                better = planes[:, pos] > best
                best[better] = planes[better, pos]
                where[better] = pos
            y[:, oh, ow] = best
            indices[:, oh, ow] = where
    return y.reshape(n, c, out_h, out_w), indices.reshape(n, c, out_h, out_w)


def ref_adaptive_max_pool2d(x, out_h, out_w):
    """Windows [floor(o * In / Out), ceil((o + 1) * In / Out)) along each axis, first maximum wins."""
    n, c, height, width = x.shape
    y = np.empty((n, c, out_h, out_w), x.dtype)
    indices = np.empty((n, c, out_h, out_w), np.int64)
    for oh in range(out_h):
        h0, h1 = oh * height // out_h, -(-(oh + 1) * height // out_h)
        for ow in range(out_w):
            w0, w1 = ow * width // out_w, -(-(ow + 1) * width // out_w)
            window = x[:, :, h0:h1, w0:w1].reshape(n, c, -1)
            first = window.argmax(axis=-1)  # NumPy's argmax: the first maximum, in row-major order
            y[:, :, oh, ow] = np.take_along_axis(window, first[..., None], -1)[..., 0]
            indices[:, :, oh, ow] = (h0 + first // (w1 - w0)) * width + w0 + first % (w1 - w0)
    return y, indices


def make_int(rng, shape, dtype, kind="random"):
    """Values over the whole range of ``dtype``; ``few`` draws from three values (many ties), ``low``
    is the type's lowest value everywhere, ``high`` its highest."""
    info = np.iinfo(dtype)
    if kind == "random":
        return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    if kind == "few":
        return rng.choice(np.array([info.min, 0 if info.min < 0 else 1, info.max], dtype), shape)
    return np.full(shape, info.min if kind == "low" else info.max, dtype)


def check_against_float(x, y, indices, pool):
    """The integer result equals convx's float64 pooling of the same values (exact for 8 bits)."""
    y_float, indices_float = pool(x.astype(np.float64))
    np.testing.assert_array_equal(y.astype(np.float64), y_float)
    np.testing.assert_array_equal(indices, indices_float)


@pytest.fixture
def rng():
    return np.random.default_rng(20)


@pytest.fixture(params=["chosen", "separable", "direct"])
def kernel_choice(request, monkeypatch):
    """The 8-bit max forward's kernel as convx.functional.pooling chooses it, or forced: the separable
    one (no window is cheap enough for the other), or the direct one (every window is)."""
    if request.param != "chosen":
        monkeypatch.setattr(pooling_module, "PHASE_TAP_RATIO", 0 if request.param == "separable" else 10**12)
    return request.param


@pytest.fixture
def num_threads():
    before = _threads.get_num_threads()
    yield _threads.set_num_threads
    _threads.set_num_threads(before)


# Geometries: kernel, stride, per-side padding ((top, bottom), (left, right)), dilation, ceil_mode.
GEOMETRIES = [
    ((2, 2), (2, 2), ((0, 0), (0, 0)), (1, 1), False),
    ((3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1), False),
    ((3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), False),
    ((3, 2), (2, 1), ((2, 0), (0, 1)), (1, 1), True),
    ((2, 3), (3, 2), ((1, 0), (2, 2)), (2, 1), True),
    ((3, 3), (1, 2), ((2, 2), (4, 1)), (2, 3), False),
    ((5, 4), (3, 3), ((0, 3), (1, 2)), (1, 1), True),
    ((1, 1), (2, 3), ((0, 0), (0, 0)), (1, 1), True),
    ((7, 7), (1, 1), ((6, 6), (6, 6)), (1, 1), False),
    ((4, 2), (1, 4), ((3, 0), (0, 2)), (3, 2), True),
]


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 2, 11, 5), (3, 1, 8, 8)])
@pytest.mark.parametrize("kind", ["random", "few"])
def test_max_pool2d_matches_reference(rng, dtype, geometry, shape, kind, kernel_choice):
    kernel, stride, sides, dilation, ceil_mode = geometry
    x = make_int(rng, shape, dtype, kind)
    y, indices = F.max_pool2d(x, kernel, stride, sides, dilation, ceil_mode, return_indices=True)
    y_ref, indices_ref = ref_max_pool2d(x, kernel, stride, sides, dilation, ceil_mode)
    assert y.dtype == dtype and indices.dtype == np.int64
    assert y.flags.c_contiguous
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(indices, indices_ref)
    np.testing.assert_array_equal(F.max_pool2d(x, kernel, stride, sides, dilation, ceil_mode), y_ref)
    check_against_float(
        x, y, indices, lambda a: F.max_pool2d(a, kernel, stride, sides, dilation, ceil_mode, return_indices=True)
    )


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("kind", ["low", "high", "few"])
@pytest.mark.parametrize("geometry", GEOMETRIES[:6])
def test_max_pool2d_extremes_and_ties(rng, dtype, kind, geometry, kernel_choice):
    # All the type's lowest value (0 for uint8: padding must not win a window of zeros), all its
    # highest, or three values with many ties: every window reports its first maximum.
    kernel, stride, sides, dilation, ceil_mode = geometry
    x = make_int(rng, (2, 2, 9, 10), dtype, kind)
    y, indices = F.max_pool2d(x, kernel, stride, sides, dilation, ceil_mode, return_indices=True)
    y_ref, indices_ref = ref_max_pool2d(x, kernel, stride, sides, dilation, ceil_mode)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(indices, indices_ref)


def test_max_pool2d_padding_never_wins_for_uint8(kernel_choice):
    # Windows hanging over the padding hold only zeros inside the input: the maximum is 0, at the
    # window's first tap inside the input (never a position in the padding).
    x = np.zeros((1, 1, 3, 3), np.uint8)
    y, indices = F.max_pool2d(x, 3, 2, 2, return_indices=True)
    np.testing.assert_array_equal(y, 0)
    np.testing.assert_array_equal(indices[0, 0], [[0, 0, 2], [0, 0, 2], [6, 6, 8]])
    x = np.array([[[[0, 0, 200]]]], np.uint8)
    y, indices = F.max_pool2d(x, (1, 3), 1, ((0, 0), (2, 2)), return_indices=True)
    np.testing.assert_array_equal(y[0, 0, 0], [0, 0, 200, 200, 200])
    np.testing.assert_array_equal(indices[0, 0, 0], [0, 0, 2, 2, 2])


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("word", ["valid", "same", "same_lower"])
@pytest.mark.parametrize(("kernel", "stride", "dilation"), [(3, 2, 1), ((2, 5), (1, 2), (2, 1)), (4, 3, 1)])
def test_max_pool2d_padding_words(rng, dtype, word, kernel, stride, dilation, kernel_choice):
    x = make_int(rng, (2, 2, 9, 12), dtype)
    kernel2, stride2, dilation2 = (np.broadcast_to(v, 2).tolist() for v in (kernel, stride, dilation))
    if word == "valid":
        sides = ((0, 0), (0, 0))
    else:
        sides = tuple(
            same_sides(size, k, s, d, lower=word == "same_lower")
            for size, k, s, d in zip(x.shape[2:], kernel2, stride2, dilation2)
        )
    y, indices = F.max_pool2d(x, kernel, stride, word, dilation, return_indices=True)
    y_ref, indices_ref = ref_max_pool2d(x, kernel2, stride2, sides, dilation2)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(indices, indices_ref)


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize(
    ("padding", "sides"),
    [(0, ((0, 0), (0, 0))), (1, ((1, 1), (1, 1))), ((2, 1), ((2, 2), (1, 1))), (((0, 2), (1, 0)), ((0, 2), (1, 0)))],
)
def test_max_pool2d_padding_spellings(rng, dtype, padding, sides):
    x = make_int(rng, (1, 3, 8, 7), dtype)
    y, indices = F.max_pool2d(x, (3, 3), 2, padding, 1, True, return_indices=True)
    y_ref, indices_ref = ref_max_pool2d(x, (3, 3), (2, 2), sides, (1, 1), True)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(indices, indices_ref)


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation", "ceil_mode"),
    [(3, 1, 1, 1, False), (2, 2, 0, 1, True), (4, 3, 2, 2, True), (5, 2, 2, 3, False), (3, 3, 1, 1, True)],
)
def test_max_pool1d_matches_reference_and_torch(rng, dtype, kernel, stride, padding, dilation, ceil_mode):
    torch = pytest.importorskip("torch")
    x = make_int(rng, (2, 3, 17), dtype)
    y, indices = F.max_pool1d(x, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    y_ref, indices_ref = ref_max_pool2d(x[:, :, None], (1, kernel), (1, stride), ((0, 0), (padding, padding)),
                                       (1, dilation), ceil_mode)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, y_ref[:, :, 0])
    np.testing.assert_array_equal(indices, indices_ref[:, :, 0])
    y_t, indices_t = torch.nn.functional.max_pool1d(
        torch.from_numpy(x), kernel, stride, padding, dilation, ceil_mode, return_indices=True
    )
    np.testing.assert_array_equal(y, y_t.numpy())
    np.testing.assert_array_equal(indices, indices_t.numpy())
    # Unbatched, as PyTorch takes it.
    y1, indices1 = F.max_pool1d(x[0], kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    np.testing.assert_array_equal(y1, y[0])
    np.testing.assert_array_equal(indices1, indices[0])


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("kind", ["random", "few", "low", "high"])
@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation", "ceil_mode"),
    [(2, 2, 0, 1, False), (3, 2, 1, 1, False), (3, 1, 1, 1, True), ((3, 2), (2, 1), (1, 1), (2, 1), True),
     ((5, 3), (2, 3), (2, 1), (1, 2), False), (4, 1, 2, 1, False)],
)
def test_max_pool2d_matches_torch(rng, dtype, kind, kernel, stride, padding, dilation, ceil_mode, kernel_choice):
    torch = pytest.importorskip("torch")
    x = make_int(rng, (2, 3, 13, 10), dtype, kind)
    y, indices = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    y_t, indices_t = torch.nn.functional.max_pool2d(
        torch.from_numpy(x), kernel, stride, padding, dilation, ceil_mode, return_indices=True
    )
    assert y_t.dtype == torch.from_numpy(x).dtype  # PyTorch pools the 8-bit integers itself
    np.testing.assert_array_equal(y, y_t.numpy())
    np.testing.assert_array_equal(indices, indices_t.numpy())


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("kind", ["random", "few", "low"])
@pytest.mark.parametrize(("shape", "output_size"), [((2, 3, 7, 9), (3, 4)), ((1, 2, 5, 5), 1), ((2, 1, 4, 6), (6, 9)),
                                                    ((1, 1, 10, 3), (None, 2))])
def test_adaptive_max_pool2d_matches_reference_and_torch(rng, dtype, kind, shape, output_size):
    torch = pytest.importorskip("torch")
    x = make_int(rng, shape, dtype, kind)
    y, indices = F.adaptive_max_pool2d(x, output_size, return_indices=True)
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    out_h = shape[2] if out_h is None else out_h
    y_ref, indices_ref = ref_adaptive_max_pool2d(x, out_h, out_w)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(indices, indices_ref)
    np.testing.assert_array_equal(F.adaptive_max_pool2d(x, output_size), y_ref)
    # PyTorch has no integer adaptive max pooling: its float64 one, on the same (exact) values.
    y_t, indices_t = torch.nn.functional.adaptive_max_pool2d(
        torch.from_numpy(x.astype(np.float64)), output_size, return_indices=True
    )
    np.testing.assert_array_equal(y.astype(np.float64), y_t.numpy())
    np.testing.assert_array_equal(indices, indices_t.numpy())
    check_against_float(x, y, indices, lambda a: F.adaptive_max_pool2d(a, output_size, return_indices=True))


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize(("length", "output_size"), [(11, 4), (5, 5), (3, 7), (9, 1)])
def test_adaptive_max_pool1d_matches_reference_and_torch(rng, dtype, length, output_size):
    torch = pytest.importorskip("torch")
    x = make_int(rng, (2, 3, length), dtype, "few")
    y, indices = F.adaptive_max_pool1d(x, output_size, return_indices=True)
    y_ref, indices_ref = ref_adaptive_max_pool2d(x[:, :, None], 1, output_size)
    np.testing.assert_array_equal(y, y_ref[:, :, 0])
    np.testing.assert_array_equal(indices, indices_ref[:, :, 0])
    y_t, indices_t = torch.nn.functional.adaptive_max_pool1d(
        torch.from_numpy(x.astype(np.float64)), output_size, return_indices=True
    )
    np.testing.assert_array_equal(y.astype(np.float64), y_t.numpy())
    np.testing.assert_array_equal(indices, indices_t.numpy())


# (kernel, stride, padding per side, dilation) of test_large_planes_and_windows.
_LARGE_WINDOWS = [
    ((9, 9), (1, 1), ((4, 4), (4, 4)), (1, 1)),
    ((3, 17), (2, 1), ((1, 1), (8, 8)), (1, 1)),
    ((5, 5), (1, 1), ((4, 4), (6, 6)), (2, 3)),
    ((17, 17), (2, 3), ((8, 8), (8, 8)), (1, 1)),  # more taps than the direct kernel numbers
]


@functools.cache
def _large_planes_case(dtype):
    """x and the reference's (y, indices) for each of _LARGE_WINDOWS: the pure-Python reference takes
    about a second per dtype here, so it runs once per dtype, not once per kernel choice too."""
    x = make_int(np.random.default_rng(12345), (1, 2, 70, 150), dtype, "few")
    x.flags.writeable = False  # shared by the kernel choices' tests: none may change it
    return x, [ref_max_pool2d(x, *window) for window in _LARGE_WINDOWS]


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_large_planes_and_windows(dtype, kernel_choice):
    # Planes tall and wide enough for the column pass to go in several chunks of output columns,
    # and windows large against the plane.
    x, references = _large_planes_case(dtype)
    x = x.copy()  # writeable and C-contiguous, as the rng fixture's array was
    for (kernel, stride, sides, dilation), (y_ref, indices_ref) in zip(_LARGE_WINDOWS, references):
        y, indices = F.max_pool2d(x, kernel, stride, sides, dilation, return_indices=True)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(indices, indices_ref)


def test_kernel_choice_for_8_bit():
    choose = pooling_module._max_pool_separable
    for dtype in INT_DTYPES:
        # Small windows: the direct kernel; windows large against the plane: the separable one.
        assert not choose(np.dtype(dtype), 56, 56, 28, 28, (3, 3), (2, 2), (1, 1), (1, 1))
        assert choose(np.dtype(dtype), 9, 9, 9, 9, (9, 9), (1, 1), (4, 4), (1, 1))
        # Windows of more than 256 taps: the separable kernel, however cheap the direct one would be.
        assert not choose(np.dtype(dtype), 4096, 4096, 256, 256, (16, 16), (16, 16), (0, 0), (1, 1))
        assert choose(np.dtype(dtype), 4096, 4096, 240, 256, (17, 16), (17, 16), (0, 0), (1, 1))


# --- layouts, empty batches, threads ----------------------------------------------------------------


def _int_ops(x):
    """Every integer max pooling op on x (N, C, H, W), with its indices."""
    return {
        "max_pool2d": F.max_pool2d(x, 3, 2, 1, return_indices=True),
        "max_pool2d_dilated": F.max_pool2d(x, (2, 3), (1, 2), ((1, 0), (2, 1)), (2, 2), True, return_indices=True),
        "max_pool1d": F.max_pool1d(x.reshape(*x.shape[:2], x.shape[2] * x.shape[3]), 4, 3, 2, return_indices=True),
        "adaptive_max_pool2d": F.adaptive_max_pool2d(x, (3, 5), return_indices=True),
        "adaptive_max_pool1d": F.adaptive_max_pool1d(x.reshape(*x.shape[:2], x.shape[2] * x.shape[3]), 7, return_indices=True),
    }


def _assert_same(results, expected):
    assert results.keys() == expected.keys()
    for name in expected:
        for got, want in zip(results[name], expected[name]):
            assert got.dtype == want.dtype, name
            np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("layout", ["fortran", "strided", "transposed", "readonly", "offset"])
def test_any_layout_gives_the_same_result_and_is_not_modified(rng, dtype, layout, kernel_choice):
    x = make_int(rng, (2, 3, 9, 11), dtype)
    expected = _int_ops(x)
    if layout == "fortran":
        view = np.asfortranarray(x)
    elif layout == "strided":
        view = np.repeat(x, 2, axis=3)[..., ::2]
    elif layout == "transposed":
        view = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    elif layout == "readonly":
        view = x.copy()
        view.flags.writeable = False
    else:  # an odd byte offset: 8-bit elements have no alignment to lose, but the kernels see a new base
        buffer = np.empty(x.size + 1, dtype)
        view = buffer[1:].reshape(x.shape)
        view[...] = x
    assert not view.flags.c_contiguous or layout in ("readonly", "offset")
    before = view.copy()
    _assert_same(_int_ops(view), expected)
    np.testing.assert_array_equal(view, before)


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_empty_batch_and_unbatched(rng, dtype):
    x = np.empty((0, 3, 6, 6), dtype)
    for name, (y, indices) in _int_ops(x).items():
        assert y.shape[0] == 0 and y.dtype == dtype and indices.dtype == np.int64, name
    x = make_int(rng, (3, 6, 6), dtype)
    y, indices = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    y4, indices4 = F.max_pool2d(x[None], 3, 2, 1, return_indices=True)
    np.testing.assert_array_equal(y, y4[0])
    np.testing.assert_array_equal(indices, indices4[0])
    y, indices = F.adaptive_max_pool2d(x, 2, return_indices=True)
    np.testing.assert_array_equal(y, F.adaptive_max_pool2d(x[None], 2)[0])


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_thread_count_does_not_change_results(rng, num_threads, dtype, kernel_choice):
    # Enough planes and elements for teams of more than one thread (pooling's grain is 32768).
    x = make_int(rng, (4, 8, 40, 64), dtype, "few")
    num_threads(1)
    one = _int_ops(x)
    num_threads(2)
    _assert_same(_int_ops(x), one)
    # And against the reference, with two threads.
    y_ref, indices_ref = ref_max_pool2d(x[:1, :2], (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1))
    np.testing.assert_array_equal(one["max_pool2d"][0][:1, :2], y_ref)
    np.testing.assert_array_equal(one["max_pool2d"][1][:1, :2], indices_ref)


def test_calls_from_python_threads(rng):
    from concurrent.futures import ThreadPoolExecutor

    inputs = [make_int(rng, (2, 4, 24, 24), dtype) for dtype in INT_DTYPES * 3]
    expected = [_int_ops(x) for x in inputs]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(_int_ops, inputs))
    for got, want in zip(results, expected):
        _assert_same(got, want)


# --- layers -----------------------------------------------------------------------------------------


LAYERS = [
    (lambda: nn.MaxPool2d(3, 2, 1), (2, 3, 7, 8), lambda x: F.max_pool2d(x, 3, 2, 1)),
    (lambda: nn.MaxPool1d(3, 2, 1, ceil_mode=True), (2, 3, 9), lambda x: F.max_pool1d(x, 3, 2, 1, ceil_mode=True)),
    (lambda: nn.AdaptiveMaxPool2d((2, 3)), (2, 3, 7, 8), lambda x: F.adaptive_max_pool2d(x, (2, 3))),
    (lambda: nn.AdaptiveMaxPool1d(4), (2, 3, 9), lambda x: F.adaptive_max_pool1d(x, 4)),
    (lambda: nn.GlobalMaxPool2d(), (2, 3, 7, 8), lambda x: F.adaptive_max_pool2d(x, 1)[..., 0, 0]),
]


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize(("make", "shape", "pool"), LAYERS)
def test_layers_pool_integers_and_refuse_their_backward(rng, dtype, make, shape, pool):
    layer = make()
    x = make_int(rng, shape, dtype)
    y = layer(x)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, pool(x))
    name = type(layer).__name__
    for grad_out in (np.ones(y.shape, np.float32), np.ones(y.shape, dtype)):
        with pytest.raises(TypeError, match=rf"{name}\.backward: the forward input had dtype {np.dtype(dtype)}, "
                                            r"and integer inputs have no gradient"):
            layer.backward(grad_out)
    # The same layer still trains on floats afterwards.
    x_float = x.astype(np.float32)
    layer(x_float)
    grad = layer.backward(np.ones(pool(x_float).shape, np.float32))
    assert grad.shape == x.shape and grad.dtype == np.float32


def test_layers_return_indices_with_integers(rng):
    x = make_int(rng, (1, 2, 9), np.uint8, "few")
    for layer, pool in [
        (nn.MaxPool1d(3, 2, 1, return_indices=True), lambda a: F.max_pool1d(a, 3, 2, 1, return_indices=True)),
        (nn.AdaptiveMaxPool1d(4, return_indices=True), lambda a: F.adaptive_max_pool1d(a, 4, return_indices=True)),
    ]:
        (y, indices), (y_ref, indices_ref) = layer(x), pool(x)
        assert y.dtype == np.uint8
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(indices, indices_ref)


# --- refusals ---------------------------------------------------------------------------------------


MAX_OPS = [
    ("max_pool2d", lambda x: F.max_pool2d(x, 2), 4),
    ("max_pool1d", lambda x: F.max_pool1d(x, 2), 3),
    ("adaptive_max_pool2d", lambda x: F.adaptive_max_pool2d(x, 2), 4),
    ("adaptive_max_pool1d", lambda x: F.adaptive_max_pool1d(x, 2), 3),
]


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.int64, np.uint16, np.bool_, np.float16, np.complex64])
@pytest.mark.parametrize(("name", "op", "ndim"), MAX_OPS)
def test_max_pools_refuse_other_dtypes(dtype, name, op, ndim):
    x = np.zeros((1, 2, 4, 4)[-ndim:], dtype)
    with pytest.raises(TypeError, match=rf"x must have dtype float32, float64, int8 or uint8, got dtype "
                                        rf"{np.dtype(dtype)}; cast it explicitly first"):
        op(x)


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize(
    "op",
    [
        lambda x: F.avg_pool2d(x, 2),
        lambda x: F.avg_pool1d(x[0], 2),
        lambda x: F.adaptive_avg_pool2d(x, 1),
        lambda x: F.adaptive_avg_pool1d(x[0], 1),
        lambda x: F.lp_pool2d(x, 2, 2),
        lambda x: F.lp_pool1d(x[0], 2, 2),
        lambda x: nn.AvgPool2d(2)(x),
        lambda x: nn.GlobalAvgPool2d()(x),
    ],
)
def test_average_and_power_pools_stay_float_only(dtype, op):
    x = np.zeros((1, 2, 4, 4), dtype)
    with pytest.raises(TypeError, match=rf"x must have dtype float32 or float64, got dtype {np.dtype(dtype)}"):
        op(x)


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_backward_functions_take_float_grad_out_only(dtype):
    x = np.arange(16, dtype=dtype).reshape(1, 1, 4, 4)
    y, indices = F.max_pool2d(x, 2, return_indices=True)
    # The input's dtype does not matter to the backward: grad_out is float, as always.
    grad = F.max_pool2d_backward(np.ones(y.shape, np.float32), indices, x.shape)
    assert grad.dtype == np.float32
    np.testing.assert_array_equal(grad[0, 0], [[0, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0], [0, 1, 0, 1]])
    with pytest.raises(TypeError, match=rf"grad_out must have dtype float32 or float64, got dtype {np.dtype(dtype)}"):
        F.max_pool2d_backward(y, indices, x.shape)
    y1, indices1 = F.max_pool1d(x[0], 2, return_indices=True)
    with pytest.raises(TypeError, match=rf"grad_out must have dtype float32 or float64, got dtype {np.dtype(dtype)}"):
        F.max_pool1d_backward(y1, indices1, x[0].shape)
    grad1 = F.max_pool1d_backward(np.ones(y1.shape), indices1, x[0].shape)
    np.testing.assert_array_equal(grad1[0], [[0, 1, 0, 1]] * 4)


# --- channels last (layout='NHWC' / 'NWC') ----------------------------------------------------------
# The same ops on (N, H, W, C) and (N, L, C) arrays, natively: against the reference above on the
# channels-first copy, and against the channels-first integer result (the same values and indices,
# moved).


def to_last(array, dims=2):
    """An (N, C, *spatial) array as (N, *spatial, C), C-contiguous."""
    return np.ascontiguousarray(np.moveaxis(array, 1, -1)) if array.ndim == dims + 2 else array


def to_first(array):
    return np.moveaxis(array, -1, 1)


def _int_ops_last(x):
    """_int_ops on x (N, H, W, C) with channels last, the results moved to channels first."""
    n, height, width, c = x.shape
    line = x.reshape(n, 1, height * width, c)[:, 0]
    results = {
        "max_pool2d": F.max_pool2d(x, 3, 2, 1, return_indices=True, layout="NHWC"),
        "max_pool2d_dilated": F.max_pool2d(x, (2, 3), (1, 2), ((1, 0), (2, 1)), (2, 2), True, return_indices=True,
                                           layout="NHWC"),
        "max_pool1d": F.max_pool1d(line, 4, 3, 2, return_indices=True, layout="NWC"),
        "adaptive_max_pool2d": F.adaptive_max_pool2d(x, (3, 5), return_indices=True, layout="NHWC"),
        "adaptive_max_pool1d": F.adaptive_max_pool1d(line, 7, return_indices=True, layout="NWC"),
    }
    return {name: tuple(to_first(a) for a in pair) for name, pair in results.items()}


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 130, 11, 9), (3, 1, 8, 8)])
@pytest.mark.parametrize("kind", ["random", "few", "low", "high"])
def test_nhwc_max_pool2d_matches_reference_and_nchw(rng, dtype, geometry, shape, kind):
    # 130 channels: one whole block of 128 8-bit channels and a remainder.
    kernel, stride, sides, dilation, ceil_mode = geometry
    x = make_int(rng, shape, dtype, kind)
    y, indices = F.max_pool2d(to_last(x), kernel, stride, sides, dilation, ceil_mode, return_indices=True,
                              layout="NHWC")
    assert y.dtype == dtype and indices.dtype == np.int64 and y.flags.c_contiguous and indices.flags.c_contiguous
    y_ref, indices_ref = ref_max_pool2d(x, kernel, stride, sides, dilation, ceil_mode)
    np.testing.assert_array_equal(to_first(y), y_ref)
    np.testing.assert_array_equal(to_first(indices), indices_ref)
    y_first, indices_first = F.max_pool2d(x, kernel, stride, sides, dilation, ceil_mode, return_indices=True)
    np.testing.assert_array_equal(y, to_last(y_first))
    np.testing.assert_array_equal(indices, to_last(indices_first))
    np.testing.assert_array_equal(
        F.max_pool2d(to_last(x), kernel, stride, sides, dilation, ceil_mode, layout="NHWC"), y
    )


def test_nhwc_padding_never_wins_for_uint8():
    x = np.zeros((1, 3, 3, 2), np.uint8)
    y, indices = F.max_pool2d(x, 3, 2, 2, return_indices=True, layout="NHWC")
    np.testing.assert_array_equal(y, 0)
    for c in range(2):
        np.testing.assert_array_equal(indices[0, :, :, c], [[0, 0, 2], [0, 0, 2], [6, 6, 8]])
    x = np.array([[[[0], [0], [200]]]], np.uint8)  # (1, 1, 3, 1)
    y, indices = F.max_pool2d(x, (1, 3), 1, ((0, 0), (2, 2)), return_indices=True, layout="NHWC")
    np.testing.assert_array_equal(y[0, 0, :, 0], [0, 0, 200, 200, 200])
    np.testing.assert_array_equal(indices[0, 0, :, 0], [0, 0, 2, 2, 2])
    x = np.full((1, 2, 2, 3), -128, np.int8)
    y, indices = F.max_pool2d(x, 2, 1, 1, return_indices=True, layout="NHWC")
    np.testing.assert_array_equal(y, -128)
    np.testing.assert_array_equal(indices[0, :, :, 1], [[0, 0, 1], [0, 0, 1], [2, 2, 3]])


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("word", ["valid", "same", "same_lower"])
@pytest.mark.parametrize(("kernel", "stride", "dilation"), [(3, 2, 1), ((2, 5), (1, 2), (2, 1)), (4, 3, 1)])
def test_nhwc_max_pool2d_padding_words(rng, dtype, word, kernel, stride, dilation):
    x = make_int(rng, (2, 5, 9, 12), dtype, "few")
    y, indices = F.max_pool2d(to_last(x), kernel, stride, word, dilation, return_indices=True, layout="NHWC")
    y_first, indices_first = F.max_pool2d(x, kernel, stride, word, dilation, return_indices=True)
    np.testing.assert_array_equal(to_first(y), y_first)
    np.testing.assert_array_equal(to_first(indices), indices_first)
    kernel2, stride2, dilation2 = (np.broadcast_to(v, 2).tolist() for v in (kernel, stride, dilation))
    sides = ((0, 0), (0, 0)) if word == "valid" else tuple(
        same_sides(size, k, s, d, lower=word == "same_lower")
        for size, k, s, d in zip(x.shape[2:], kernel2, stride2, dilation2)
    )
    y_ref, indices_ref = ref_max_pool2d(x, kernel2, stride2, sides, dilation2)
    np.testing.assert_array_equal(to_first(y), y_ref)
    np.testing.assert_array_equal(to_first(indices), indices_ref)


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("kind", ["random", "few", "low", "high"])
@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation", "ceil_mode"),
    [(3, 1, 1, 1, False), (2, 2, 0, 1, True), (4, 3, 2, 2, True), (5, 2, 2, 3, False), (3, 3, 1, 1, True),
     (3, 2, "same", 1, False), (3, 2, ((2, 0),), 1, True)],
)
def test_nwc_max_pool1d_matches_reference_and_ncw(rng, dtype, kind, kernel, stride, padding, dilation, ceil_mode):
    x = make_int(rng, (2, 5, 17), dtype, kind)
    y, indices = F.max_pool1d(to_last(x, 1), kernel, stride, padding, dilation, ceil_mode, return_indices=True,
                              layout="NWC")
    assert y.dtype == dtype
    y_first, indices_first = F.max_pool1d(x, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    np.testing.assert_array_equal(to_first(y), y_first)
    np.testing.assert_array_equal(to_first(indices), indices_first)
    if isinstance(padding, int):
        y_ref, indices_ref = ref_max_pool2d(x[:, :, None], (1, kernel), (1, stride), ((0, 0), (padding, padding)),
                                           (1, dilation), ceil_mode)
        np.testing.assert_array_equal(to_first(y), y_ref[:, :, 0])
        np.testing.assert_array_equal(to_first(indices), indices_ref[:, :, 0])
    # Unbatched (L, C).
    y1, indices1 = F.max_pool1d(to_last(x, 1)[0], kernel, stride, padding, dilation, ceil_mode, return_indices=True,
                                layout="NWC")
    np.testing.assert_array_equal(y1, y[0])
    np.testing.assert_array_equal(indices1, indices[0])


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("kind", ["random", "few", "low", "high"])
@pytest.mark.parametrize(("shape", "output_size"), [((2, 3, 7, 9), (3, 4)), ((1, 2, 5, 5), 1), ((2, 1, 4, 6), (6, 9)),
                                                    ((1, 131, 9, 7), (2, None))])
def test_nhwc_adaptive_max_pool2d_matches_reference_and_nchw(rng, dtype, kind, shape, output_size):
    x = make_int(rng, shape, dtype, kind)
    y, indices = F.adaptive_max_pool2d(to_last(x), output_size, return_indices=True, layout="NHWC")
    assert y.dtype == dtype
    y_first, indices_first = F.adaptive_max_pool2d(x, output_size, return_indices=True)
    np.testing.assert_array_equal(to_first(y), y_first)
    np.testing.assert_array_equal(to_first(indices), indices_first)
    out_h, out_w = y_first.shape[2:]
    y_ref, indices_ref = ref_adaptive_max_pool2d(x, out_h, out_w)
    np.testing.assert_array_equal(to_first(y), y_ref)
    np.testing.assert_array_equal(to_first(indices), indices_ref)
    np.testing.assert_array_equal(F.adaptive_max_pool2d(to_last(x), output_size, layout="NHWC"), y)


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize(("length", "output_size"), [(11, 4), (5, 5), (3, 7), (9, 1)])
def test_nwc_adaptive_max_pool1d_matches_reference_and_ncw(rng, dtype, length, output_size):
    x = make_int(rng, (2, 3, length), dtype, "few")
    y, indices = F.adaptive_max_pool1d(to_last(x, 1), output_size, return_indices=True, layout="NWC")
    y_first, indices_first = F.adaptive_max_pool1d(x, output_size, return_indices=True)
    np.testing.assert_array_equal(to_first(y), y_first)
    np.testing.assert_array_equal(to_first(indices), indices_first)
    y_ref, indices_ref = ref_adaptive_max_pool2d(x[:, :, None], 1, output_size)
    np.testing.assert_array_equal(to_first(y), y_ref[:, :, 0])
    np.testing.assert_array_equal(to_first(indices), indices_ref[:, :, 0])


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("layout", ["fortran", "strided", "transposed", "readonly", "offset"])
def test_nhwc_any_layout_gives_the_same_result_and_is_not_modified(rng, dtype, layout):
    x = to_last(make_int(rng, (2, 3, 9, 11), dtype))
    expected = _int_ops(to_first(x))
    _assert_same(_int_ops_last(x), expected)
    if layout == "fortran":
        view = np.asfortranarray(x)
    elif layout == "strided":
        view = np.repeat(x, 2, axis=3)[..., ::2]
    elif layout == "transposed":
        view = np.ascontiguousarray(x.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    elif layout == "readonly":
        view = x.copy()
        view.flags.writeable = False
    else:
        buffer = np.empty(x.size + 1, dtype)
        view = buffer[1:].reshape(x.shape)
        view[...] = x
    assert not view.flags.c_contiguous or layout in ("readonly", "offset")
    before = view.copy()
    _assert_same(_int_ops_last(view), expected)
    np.testing.assert_array_equal(view, before)


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_nhwc_empty_batch_and_unbatched(rng, dtype):
    for name, (y, indices) in _int_ops_last(np.empty((0, 6, 6, 3), dtype)).items():
        assert y.shape[0] == 0 and y.dtype == dtype and indices.dtype == np.int64, name
    x = make_int(rng, (6, 6, 3), dtype)
    y, indices = F.max_pool2d(x, 3, 2, 1, return_indices=True, layout="NHWC")
    y4, indices4 = F.max_pool2d(x[None], 3, 2, 1, return_indices=True, layout="NHWC")
    np.testing.assert_array_equal(y, y4[0])
    np.testing.assert_array_equal(indices, indices4[0])
    np.testing.assert_array_equal(F.adaptive_max_pool2d(x, 2, layout="NHWC"),
                                  F.adaptive_max_pool2d(x[None], 2, layout="NHWC")[0])
    # No channels: empty outputs of the right shape.
    y, indices = F.max_pool2d(np.empty((2, 6, 6, 0), dtype), 2, return_indices=True, layout="NHWC")
    assert y.shape == indices.shape == (2, 3, 3, 0) and y.dtype == dtype


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_nhwc_thread_counts_do_not_change_results(rng, num_threads, dtype):
    # Enough rows and elements for teams of more than one thread (pooling's grain is 32768).
    x = to_last(make_int(rng, (4, 8, 40, 64), dtype, "few"))
    num_threads(1)
    one = _int_ops_last(x)
    _assert_same(one, _int_ops(to_first(x)))
    for n in (2, 3):
        num_threads(n)
        _assert_same(_int_ops_last(x), one)


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_nhwc_backward_of_integer_indices_matches_nchw(rng, dtype):
    # The backward takes float grads whatever the forward's dtype: the integer forward's indices
    # send them where the channels-first ones do.
    x = make_int(rng, (2, 4, 9, 10), dtype, "few")
    y, indices = F.max_pool2d(to_last(x), 3, 2, 1, return_indices=True, layout="NHWC")
    grad_out = rng.standard_normal(y.shape).astype(np.float32)
    grad = F.max_pool2d_backward(grad_out, indices, to_last(x).shape, layout="NHWC")
    _, indices_first = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    np.testing.assert_array_equal(to_first(grad), F.max_pool2d_backward(to_first(grad_out), indices_first, x.shape))
    line = to_last(x[:, :, 0], 1)
    y1, indices1 = F.adaptive_max_pool1d(line, 4, return_indices=True, layout="NWC")
    grad_out1 = np.ones(y1.shape)
    grad1 = F.max_pool1d_backward(grad_out1, indices1, line.shape, layout="NWC")
    _, indices1_first = F.adaptive_max_pool1d(x[:, :, 0], 4, return_indices=True)
    np.testing.assert_array_equal(to_first(grad1), F.max_pool1d_backward(to_first(grad_out1), indices1_first,
                                                                         x[:, :, 0].shape))
    with pytest.raises(TypeError, match=rf"grad_out must have dtype float32 or float64, got dtype {np.dtype(dtype)}"):
        F.max_pool2d_backward(y, indices, to_last(x).shape, layout="NHWC")


NHWC_LAYERS = [
    (lambda: nn.MaxPool2d(3, 2, 1, layout="NHWC"), (2, 7, 8, 3), lambda x: F.max_pool2d(x, 3, 2, 1, layout="NHWC")),
    (lambda: nn.MaxPool1d(3, 2, 1, ceil_mode=True, layout="NWC"), (2, 9, 3),
     lambda x: F.max_pool1d(x, 3, 2, 1, ceil_mode=True, layout="NWC")),
    (lambda: nn.AdaptiveMaxPool2d((2, 3), layout="NHWC"), (2, 7, 8, 3),
     lambda x: F.adaptive_max_pool2d(x, (2, 3), layout="NHWC")),
    (lambda: nn.AdaptiveMaxPool1d(4, layout="NWC"), (2, 9, 3), lambda x: F.adaptive_max_pool1d(x, 4, layout="NWC")),
]


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize(("make", "shape", "pool"), NHWC_LAYERS)
def test_nhwc_layers_pool_integers_and_refuse_their_backward(rng, dtype, make, shape, pool):
    layer = make()
    x = make_int(rng, shape, dtype)
    y = layer(x)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, pool(x))
    name = type(layer).__name__
    with pytest.raises(TypeError, match=rf"{name}\.backward: the forward input had dtype {np.dtype(dtype)}, "
                                        r"and integer inputs have no gradient"):
        layer.backward(np.ones(y.shape, np.float32))
    x_float = x.astype(np.float32)
    layer(x_float)
    grad = layer.backward(np.ones(y.shape, np.float32))
    assert grad.shape == x.shape and grad.dtype == np.float32


def test_nhwc_layers_return_indices_with_integers(rng):
    x = make_int(rng, (1, 9, 2), np.uint8, "few")
    for layer, pool in [
        (nn.MaxPool1d(3, 2, 1, return_indices=True, layout="NWC"),
         lambda a: F.max_pool1d(a, 3, 2, 1, return_indices=True)),
        (nn.AdaptiveMaxPool1d(4, return_indices=True, layout="NWC"),
         lambda a: F.adaptive_max_pool1d(a, 4, return_indices=True)),
    ]:
        (y, indices), (y_ref, indices_ref) = layer(x), pool(to_first(x))
        assert y.dtype == np.uint8
        np.testing.assert_array_equal(to_first(y), y_ref)
        np.testing.assert_array_equal(to_first(indices), indices_ref)


NHWC_MAX_OPS = [
    ("max_pool2d", lambda x: F.max_pool2d(x, 2, layout="NHWC"), 4),
    ("max_pool1d", lambda x: F.max_pool1d(x, 2, layout="NWC"), 3),
    ("adaptive_max_pool2d", lambda x: F.adaptive_max_pool2d(x, 2, layout="NHWC"), 4),
    ("adaptive_max_pool1d", lambda x: F.adaptive_max_pool1d(x, 2, layout="NWC"), 3),
    ("MaxPool2d", lambda x: nn.MaxPool2d(2, layout="NHWC")(x), 4),
    ("AdaptiveMaxPool1d", lambda x: nn.AdaptiveMaxPool1d(2, layout="NWC")(x), 3),
]


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.int64, np.uint16, np.bool_, np.float16, np.complex64])
@pytest.mark.parametrize(("name", "op", "ndim"), NHWC_MAX_OPS)
def test_nhwc_max_pools_refuse_other_dtypes(dtype, name, op, ndim):
    x = np.zeros((1, 4, 4, 2)[-ndim:], dtype)
    with pytest.raises(TypeError, match=rf"x must have dtype float32, float64, int8 or uint8, got dtype "
                                        rf"{np.dtype(dtype)}; cast it explicitly first"):
        op(x)


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_nhwc_refusals_with_integers(dtype):
    x = np.zeros((1, 4, 4, 2), dtype)
    for op in (lambda: F.avg_pool2d(x, 2, layout="NHWC"), lambda: F.adaptive_avg_pool1d(x[0], 1, layout="NWC"),
               lambda: nn.AvgPool2d(2, layout="NHWC")(x)):
        with pytest.raises(TypeError, match=rf"x must have dtype float32 or float64, got dtype {np.dtype(dtype)}"):
            op()
    with pytest.raises(ValueError, match=r"max_pool2d expects x of shape \(N, H, W, C\) or \(H, W, C\) with "
                                         r"layout='NHWC', got an array of shape \(4, 4\)"):
        F.max_pool2d(x[0, ..., 0], 2, layout="NHWC")
    with pytest.raises(ValueError, match="kernel_size"):
        F.max_pool2d(x, 0, layout="NHWC")
    with pytest.raises(ValueError, match="padding"):
        F.max_pool2d(x, 2, padding=2, layout="NHWC")
    with pytest.raises(ValueError, match="layout"):
        F.max_pool2d(x, 2, layout="NWC")
    with pytest.raises(ValueError, match="output_size"):
        F.adaptive_max_pool2d(x, 0, layout="NHWC")
