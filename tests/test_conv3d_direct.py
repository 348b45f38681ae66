"""The 3-D direct kernels behind conv3d's forward and its stride-1 input gradient
(convx_direct_conv3d_rows: the 2-D direct tile with the depth taps among its taps) and its weight
gradient (convx_direct_weight_outer3d: the output channels as lanes), where there are enough output
channels to fill their lanes: against the NumPy reference of ``convx.reference.conv3d`` and against
the packed and tiled paths (the direct kernels turned off), over strides, dilations, per-side
padding, groups, deep and wide kernels, chunks of rows, thread counts, GEMM levels, NaN and inf,
and non-finite weights (which it leaves to the other paths)."""

from __future__ import annotations

import numpy as np
import pytest

import convx
from convx import _core, _threads
from convx.reference import conv3d as ref
from conftest import DTYPES, assert_close

# (input shape, weight shape, keywords); every case has enough output channels per group for the
# direct kernel's lanes in float32 and float64 on AVX2 and AVX-512 (at least 3/4 of whole blocks
# of 8-32 lanes), and output rows of 24 or 26 pixels, which whole register
# tiles cover (narrower rows go to the other paths, as the 2-D direct kernel's rule says).
CASES = {
    "3x3x3": ((2, 5, 5, 7, 24), (32, 5, 3, 3, 3), dict(padding=1)),
    "partial-lanes": ((1, 7, 4, 6, 26), (48, 7, 3, 3, 3), dict(padding=(1, 0, 1))),
    "strided-dilated-per-side": ((1, 3, 7, 9, 49), (48, 3, 2, 3, 3),
                                 dict(stride=(2, 1, 2), dilation=(2, 1, 2), padding=((1, 0), (2, 1), (0, 2)))),
    "dilated-stride-1": ((2, 24, 5, 6, 26), (32, 24, 3, 2, 3), dict(dilation=(2, 1, 1), padding=(2, 1, 0))),
    "groups": ((1, 48, 4, 5, 24), (64, 24, 3, 3, 3), dict(padding=1, groups=2)),
    "deep-kernel-in-padding": ((1, 24, 3, 5, 24), (32, 24, 5, 3, 3), dict(padding=(2, 1, 1))),
    "depth-stride-3": ((2, 4, 10, 6, 24), (32, 4, 3, 3, 3), dict(stride=(3, 1, 1), padding=(0, 1, 1))),
    "stem-7x7x7-s2": ((1, 3, 9, 20, 48), (32, 3, 7, 7, 7), dict(stride=2, padding=3)),
    "same": ((1, 24, 4, 7, 24), (32, 24, 2, 3, 2), dict(padding="same")),
    "one-slice": ((3, 24, 1, 8, 24), (32, 24, 1, 3, 3), dict(padding=(0, 1, 1))),
}
# the cases whose input gradient the direct kernel takes: stride 1, and input channels for its lanes
STRIDE_1 = [name for name, (_, w, kw) in CASES.items() if kw.get("stride", 1) == 1 and w[1] >= 24]


@pytest.fixture
def threads():
    before = _threads.get_num_threads()
    yield _threads.set_num_threads
    _threads.set_num_threads(before)


def _setting(setter):
    """Yield setter, restoring its value (setter returns the value before) afterwards."""
    before = setter(1 << 20)
    setter(before)
    yield setter
    setter(before)


@pytest.fixture
def weight_band():
    """Set the bytes of the direct weight gradient's per-thread buffer (bands of output slices)."""
    yield from _setting(_core.set_conv3d_weight_band)


@pytest.fixture
def direct_rows():
    """Set the bytes of the direct kernel's per-thread rows (chunks of a slice's rows)."""
    yield from _setting(_core.set_conv3d_direct_rows)


def _arrays(rng, name, dtype):
    x_shape, w_shape, kwargs = CASES[name]
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(dtype)
    bias = rng.standard_normal(w_shape[0]).astype(dtype)
    return x, weight, bias, kwargs


def _without_direct(call):
    before = _core.direct_conv()
    _core.set_direct_conv("off")
    try:
        return call()
    finally:
        _core.set_direct_conv(before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CASES))
def test_forward_runs_direct_and_matches_the_reference(rng, name, dtype):
    x, weight, bias, kwargs = _arrays(rng, name, dtype)
    y = convx.conv3d(x, weight, bias, **kwargs)
    assert _core.conv3d_ran()["forward"] == "direct"
    assert_close(y, ref.conv3d(x, weight, bias, **kwargs))
    other = _without_direct(lambda: convx.conv3d(x, weight, bias, **kwargs))
    assert _core.conv3d_ran()["forward"] != "direct"
    assert_close(y, other)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", STRIDE_1)
def test_stride_1_input_gradient_runs_direct_and_matches_the_reference(rng, name, dtype):
    x, weight, _, kwargs = _arrays(rng, name, dtype)
    grad_out = rng.standard_normal(ref.conv3d(x, weight, **kwargs).shape).astype(dtype)
    grad_x = convx.conv3d_backward_input(grad_out, weight, x.shape, **kwargs)
    assert _core.conv3d_ran()["input"] == "direct"
    assert_close(grad_x, ref.conv3d_backward_input(grad_out, weight, x.shape, **kwargs))
    assert_close(grad_x, _without_direct(lambda: convx.conv3d_backward_input(grad_out, weight, x.shape, **kwargs)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CASES))
def test_weight_gradient_runs_direct_and_matches_the_reference(rng, name, dtype):
    x, weight, _, kwargs = _arrays(rng, name, dtype)
    grad_out = rng.standard_normal(ref.conv3d(x, weight, **kwargs).shape).astype(dtype)
    grad_w = convx.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs)
    assert _core.conv3d_ran()["weight"] == "direct"
    assert_close(grad_w, ref.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs))
    other = _without_direct(lambda: convx.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs))
    assert _core.conv3d_ran()["weight"] != "direct"
    assert_close(grad_w, other)


@pytest.mark.parametrize("nbytes", [1, 100_000])
@pytest.mark.parametrize("name", ["3x3x3", "strided-dilated-per-side", "deep-kernel-in-padding", "depth-stride-3"])
def test_weight_gradient_in_bands_of_slices(rng, weight_band, name, nbytes):
    """Each thread's buffer holds a band of output slices (down to one) and the input slices it
    reads; the bands' sums are added."""
    x, weight, _, kwargs = _arrays(rng, name, np.float64)
    grad_out = rng.standard_normal(ref.conv3d(x, weight, **kwargs).shape)
    weight_band(nbytes)
    assert_close(convx.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs),
                 ref.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs))
    assert _core.conv3d_ran()["weight"] == "direct"


def test_strided_input_gradient_is_not_direct(rng):
    x, weight, _, kwargs = _arrays(rng, "depth-stride-3", np.float32)
    grad_out = rng.standard_normal(ref.conv3d(x, weight, **kwargs).shape).astype(np.float32)
    grad_x = convx.conv3d_backward_input(grad_out, weight, x.shape, **kwargs)
    assert _core.conv3d_ran()["input"] != "direct"
    assert_close(grad_x, ref.conv3d_backward_input(grad_out, weight, x.shape, **kwargs))


@pytest.mark.parametrize("nbytes", [1, 20_000, 200_000])
@pytest.mark.parametrize("name", ["3x3x3", "strided-dilated-per-side", "deep-kernel-in-padding", "stem-7x7x7-s2"])
def test_chunks_of_rows(rng, direct_rows, name, nbytes):
    """Slices cut into chunks of rows down to one row; each chunk reads only its input rows."""
    x, weight, bias, kwargs = _arrays(rng, name, np.float64)
    direct_rows(nbytes)
    y = convx.conv3d(x, weight, bias, **kwargs)
    assert _core.conv3d_ran()["forward"] == "direct"
    assert_close(y, ref.conv3d(x, weight, bias, **kwargs))
    if name in STRIDE_1:
        grad_out = rng.standard_normal(y.shape)
        assert_close(convx.conv3d_backward_input(grad_out, weight, x.shape, **kwargs),
                     ref.conv3d_backward_input(grad_out, weight, x.shape, **kwargs))


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("name", ["3x3x3", "groups", "one-slice", "depth-stride-3"])
def test_threads_give_the_same_bits(rng, threads, name, n_threads):
    """Each output element is one tile's sum in a fixed order, whatever thread computes it."""
    x, weight, bias, kwargs = _arrays(rng, name, np.float32)
    grad_out = rng.standard_normal(ref.conv3d(x, weight, **kwargs).shape).astype(np.float32)
    threads(1)
    expected = convx.conv3d(x, weight, bias, **kwargs)
    expected_w = convx.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs)
    threads(n_threads)
    np.testing.assert_array_equal(convx.conv3d(x, weight, bias, **kwargs), expected)
    assert _core.conv3d_ran()["forward"] == "direct"
    # the weight gradient's threads sum partials over their shares: equal to rounding
    assert_close(convx.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs), expected_w)
    assert _core.conv3d_ran()["weight"] == "direct"


@pytest.mark.parametrize("kernel", ["avx2", "avx512"])
def test_every_simd_level(rng, kernel):
    if kernel not in _core.GEMM_KERNELS[: _core.GEMM_KERNELS.index(_core.gemm_kernel()) + 1]:
        pytest.skip(f"this CPU does not run the {kernel!r} kernel")
    before = _core.gemm_kernel()
    _core.set_gemm_kernel(kernel)
    try:
        for name in ("3x3x3", "partial-lanes", "groups", "stem-7x7x7-s2"):
            for dtype in DTYPES:
                x, weight, bias, kwargs = _arrays(rng, name, dtype)
                assert_close(convx.conv3d(x, weight, bias, **kwargs), ref.conv3d(x, weight, bias, **kwargs))
                assert _core.conv3d_ran()["forward"] == "direct"
                grad_out = rng.standard_normal(ref.conv3d(x, weight, **kwargs).shape).astype(dtype)
                assert_close(convx.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs),
                             ref.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs))
                assert _core.conv3d_ran()["weight"] == "direct"
    finally:
        _core.set_gemm_kernel(before)


def test_nan_and_inf_in_the_input_propagate_as_the_reference(rng):
    x, weight, bias, kwargs = _arrays(rng, "3x3x3", np.float64)
    x[0, 1, 2, 3, 4] = np.nan
    x[1, 0, 0, 0, 0] = np.inf
    x[1, 4, 4, 6, 23] = -np.inf
    y = convx.conv3d(x, weight, bias, **kwargs)
    assert _core.conv3d_ran()["forward"] == "direct"
    expected = ref.conv3d(x, weight, bias, **kwargs)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(y[~finite & ~np.isnan(expected)], expected[~finite & ~np.isnan(expected)])
    assert_close(y[finite], expected[finite])
    grad_out = rng.standard_normal(y.shape)
    grad_w = convx.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs)
    assert _core.conv3d_ran()["weight"] == "direct"
    expected_w = ref.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs)
    np.testing.assert_array_equal(np.isnan(grad_w), np.isnan(expected_w))
    infinite = np.isinf(expected_w)
    np.testing.assert_array_equal(grad_w[infinite], expected_w[infinite])
    assert_close(grad_w[np.isfinite(expected_w)], expected_w[np.isfinite(expected_w)])


def test_non_finite_weights_take_another_path(rng):
    """The direct kernel skips taps in the padding, which only multiplying by a finite weight makes
    equal to adding zero: with inf or NaN in the weight, the padding's NaNs must appear."""
    x, weight, bias, kwargs = _arrays(rng, "3x3x3", np.float64)
    weight[3, 2, 0, 0, 0] = np.inf
    y = convx.conv3d(x, weight, bias, **kwargs)
    assert _core.conv3d_ran()["forward"] != "direct"
    expected = ref.conv3d(x, weight, bias, **kwargs)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    grad_out = rng.standard_normal(y.shape)
    grad_x = convx.conv3d_backward_input(grad_out, weight, x.shape, **kwargs)
    assert _core.conv3d_ran()["input"] != "direct"
    np.testing.assert_array_equal(np.isnan(grad_x), np.isnan(ref.conv3d_backward_input(grad_out, weight, x.shape,
                                                                                       **kwargs)))


def test_few_output_channels_stay_off_the_direct_kernel(rng):
    x = rng.standard_normal((1, 4, 4, 5, 6)).astype(np.float32)
    weight = rng.standard_normal((3, 4, 3, 3, 3)).astype(np.float32)
    assert_close(convx.conv3d(x, weight, padding=1), ref.conv3d(x, weight, padding=1))
    assert _core.conv3d_ran()["forward"] != "direct"


def test_fused_backward_and_layer_use_it(rng):
    """nn.Conv3d's forward and backward go through the same entry points."""
    x, weight, bias, kwargs = _arrays(rng, "3x3x3", np.float64)
    layer = convx.nn.Conv3d(5, 32, 3, padding=1, dtype=np.float64)
    layer._params["weight"][...] = weight
    layer._params["bias"][...] = bias
    y = layer.forward(x)
    assert _core.conv3d_ran()["forward"] == "direct"
    grad_out = rng.standard_normal(y.shape)
    grad_x = layer.backward(grad_out)
    assert_close(grad_x, ref.conv3d_backward_input(grad_out, weight, x.shape, **kwargs))


@pytest.mark.parametrize("whole_slices", [False, True])
@pytest.mark.parametrize("name", ["dilated-stride-1", "deep-kernel-in-padding", "same", "groups"])
def test_bands_of_slices(rng, monkeypatch, name, whole_slices):
    """A volume cut into bands of output rows (one row, which the other paths take, or about a
    third of the volume in whole slices): the forward writes each band's slices; the input
    gradient of a band goes to a buffer of the input slices its taps reach, which is added, so
    that overlapping bands sum."""
    from convx import _batching

    x, weight, bias, kwargs = _arrays(rng, name, np.float64)
    grad_out = rng.standard_normal(ref.conv3d(x, weight, **kwargs).shape)
    work = _batching.conv_work(weight.shape, int(np.prod(grad_out.shape[2:])), x.shape)
    monkeypatch.setattr(_batching, "SUB_BATCH_WORK", work // (3 * _threads.kernel_threads()) if whole_slices else 1)
    forward = _core.conv3d_forward
    backward_input = _core.conv3d_backward_input
    bands = []
    monkeypatch.setattr(_core, "conv3d_forward", lambda *args: bands.append(args[-3:-1]) or forward(*args))
    monkeypatch.setattr(_core, "conv3d_backward_input",
                        lambda *args: bands.append(args[-3:-1]) or backward_input(*args))
    assert_close(convx.conv3d(x, weight, bias, **kwargs), ref.conv3d(x, weight, bias, **kwargs))
    assert_close(convx.conv3d_backward_input(grad_out, weight, x.shape, **kwargs),
                 ref.conv3d_backward_input(grad_out, weight, x.shape, **kwargs))
    assert_close(convx.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs),
                 ref.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs))
    assert len(bands) > 2 * x.shape[0]
    if whole_slices:
        assert _core.conv3d_ran() == {"forward": "direct", "input": "direct", "weight": "direct"}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CASES))
def test_channels_last_runs_direct_and_matches_the_reference(rng, name, dtype):
    """layout='NDHWC' takes the same kernels, reading and writing (N, D, H, W, C) rows."""
    x, weight, bias, kwargs = _arrays(rng, name, dtype)
    grad_out = rng.standard_normal(ref.conv3d(x, weight, **kwargs).shape).astype(dtype)
    last = lambda a: np.ascontiguousarray(np.moveaxis(a, 1, -1))  # noqa: E731
    y = convx.conv3d(last(x), weight, bias, layout="NDHWC", **kwargs)
    assert _core.conv3d_ran()["forward"] == "direct"
    assert_close(y, last(ref.conv3d(x, weight, bias, **kwargs)))
    grad_w = convx.conv3d_backward_weight(last(grad_out), last(x), weight.shape, layout="NDHWC", **kwargs)
    assert _core.conv3d_ran()["weight"] == "direct"
    assert_close(grad_w, ref.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs))
    grad_x = convx.conv3d_backward_input(last(grad_out), weight, last(x).shape, layout="NDHWC", **kwargs)
    if name in STRIDE_1:
        assert _core.conv3d_ran()["input"] == "direct"
    assert_close(grad_x, last(ref.conv3d_backward_input(grad_out, weight, x.shape, **kwargs)))


@pytest.mark.parametrize("name", ["dilated-stride-1", "deep-kernel-in-padding"])
def test_channels_last_bands_of_slices(rng, monkeypatch, name):
    from convx import _batching

    x, weight, bias, kwargs = _arrays(rng, name, np.float64)
    grad_out = rng.standard_normal(ref.conv3d(x, weight, **kwargs).shape)
    work = _batching.conv_work(weight.shape, int(np.prod(grad_out.shape[2:])), x.shape)
    monkeypatch.setattr(_batching, "SUB_BATCH_WORK", work // (3 * _threads.kernel_threads()))
    last = lambda a: np.ascontiguousarray(np.moveaxis(a, 1, -1))  # noqa: E731
    assert_close(convx.conv3d(last(x), weight, bias, layout="NDHWC", **kwargs),
                 last(ref.conv3d(x, weight, bias, **kwargs)))
    assert_close(convx.conv3d_backward_input(last(grad_out), weight, last(x).shape, layout="NDHWC", **kwargs),
                 last(ref.conv3d_backward_input(grad_out, weight, x.shape, **kwargs)))
    assert_close(convx.conv3d_backward_weight(last(grad_out), last(x), weight.shape, layout="NDHWC", **kwargs),
                 ref.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs))
    assert _core.conv3d_ran() == {"forward": "direct", "input": "direct", "weight": "direct"}


@pytest.mark.parametrize("layout", ["NCDHW", "NDHWC"])
@pytest.mark.parametrize("groups", [1, 2])
def test_pointwise_input_gradient_on_the_2d_kernels(rng, layout, groups):
    """A 1x1x1 kernel at stride 1, unpadded, is a 2-D one over (D*H, W) planes: its input gradient
    runs on the 2-D kernels, through views."""
    x = rng.standard_normal((2, 8, 3, 5, 6))
    weight = rng.standard_normal((12, 8 // groups, 1, 1, 1))
    grad_out = rng.standard_normal((2, 12, 3, 5, 6))
    expected = ref.conv3d_backward_input(grad_out, weight, x.shape, groups=groups)
    if layout == "NDHWC":
        grad_x = convx.conv3d_backward_input(np.moveaxis(grad_out, 1, -1), weight, (2, 3, 5, 6, 8), groups=groups,
                                             layout=layout)
        expected = np.moveaxis(expected, 1, -1)
    else:
        grad_x = convx.conv3d_backward_input(grad_out, weight, x.shape, groups=groups)
    assert_close(grad_x, expected)
    assert grad_x.flags.c_contiguous
    # unbatched, and a padded 1x1x1 kernel, which stays on the 3-D kernels
    assert_close(convx.conv3d_backward_input(grad_out[0], weight, x.shape[1:], groups=groups),
                 ref.conv3d_backward_input(grad_out[:1], weight, (1, *x.shape[1:]), groups=groups)[0])
    padded = ref.conv3d(x, weight, groups=groups, padding=1)
    g = rng.standard_normal(padded.shape)
    assert_close(convx.conv3d_backward_input(g, weight, x.shape, groups=groups, padding=1),
                 ref.conv3d_backward_input(g, weight, x.shape, groups=groups, padding=1))


DEPTHWISE = {
    "3x3x3": ((2, 4, 5, 6, 7), (4, 1, 3, 3, 3), dict(padding=1, groups=4)),
    "multiplier-strided-dilated": ((1, 3, 7, 8, 9), (6, 1, 3, 2, 3),
                                   dict(groups=3, stride=(2, 1, 3), dilation=(1, 2, 2), padding=((1, 0), (2, 1), (0, 2)))),
    "wider-than-input": ((1, 2, 2, 3, 2), (2, 1, 3, 3, 3), dict(groups=2, padding=2)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("banded", [False, True])
@pytest.mark.parametrize("name", list(DEPTHWISE))
def test_depthwise_forward_loops(rng, monkeypatch, name, banded, dtype):
    """Channels first, a depthwise forward sums shifted input rows per output row, in any band of
    rows (down to one row)."""
    from convx import _batching

    x_shape, w_shape, kwargs = DEPTHWISE[name]
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    bias = rng.standard_normal(w_shape[0]).astype(dtype)
    if banded:
        monkeypatch.setattr(_batching, "SUB_BATCH_WORK", 1)
    y = convx.conv3d(x, weight, bias, **kwargs)
    assert _core.conv3d_ran()["forward"] == "depthwise"
    assert_close(y, ref.conv3d(x, weight, bias, **kwargs))
    x[0, 0, 1, 1, 1] = np.nan
    x[0, -1, 0, 0, 0] = np.inf
    y = convx.conv3d(x, weight, **kwargs)
    expected = ref.conv3d(x, weight, **kwargs)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(expected))


def test_depthwise_forward_with_a_non_finite_weight_takes_the_tiles(rng):
    x = rng.standard_normal((1, 2, 3, 4, 5))
    weight = rng.standard_normal((2, 1, 3, 3, 3))
    weight[1, 0, 0, 0, 0] = np.inf
    y = convx.conv3d(x, weight, padding=1, groups=2)
    assert _core.conv3d_ran()["forward"] == "tiles"
    expected = ref.conv3d(x, weight, padding=1, groups=2)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    assert np.isnan(y[0, 1, 0, 0, 0])
