"""convx's own GEMM kernels (AVX-512, AVX2) and the BLAS path, each against the NumPy reference.

The rest of the suite runs whichever kernel the CPU picks; here every kernel this CPU can run
is forced in turn, on the geometries that exercise the blocking of the packed products: column
strips that run from one image into the next (output planes smaller or not a multiple of the
strip), several column blocks per thread, depths beyond one packed block (so that later blocks
accumulate onto the first, which carried the bias), row panels cut short by the channel count,
groups, depths wider than one block of the weight gradient, strides (a strided gather when
packing), dilation, padding of any size, and 1, 2 or 3
threads (their shares of the batch's pixels start anywhere).
"""

import functools

import numpy as np
import pytest
from _helpers import ConvCase, run_conv_op
from conftest import DTYPES, assert_close

import convx
import convx._core as core
import convx.functional as F
from convx.reference import conv as reference



def _runs(name):
    saved = core.gemm_kernel()
    try:
        core.set_gemm_kernel(name)
    except ValueError:
        return False
    finally:
        core.set_gemm_kernel(saved)
    return True


KERNELS = [name for name in core.GEMM_KERNELS if _runs(name)]


@pytest.fixture(params=KERNELS)
def kernel(request):
    saved = core.gemm_kernel()
    core.set_gemm_kernel(request.param)
    yield request.param
    core.set_gemm_kernel(saved)


# The direct, plane and flat kernels are convx's own: with BLAS no forced mode applies (every
# choice falls back to the im2col tiles that test_each_kernel_matches_reference covers).
@pytest.fixture(params=[name for name in KERNELS if name != "blas"])
def own_kernel(request):
    saved = core.gemm_kernel()
    core.set_gemm_kernel(request.param)
    yield request.param
    core.set_gemm_kernel(saved)


# (n, c_in, height, width, c_out, kernel, stride, padding, dilation, groups)
GEOMETRIES = {
    "strips-cross-images": (5, 3, 7, 7, 10, (3, 3), 1, 1, 1, 1),
    "plane-of-one": (40, 6, 3, 3, 9, (3, 3), 1, 0, 1, 1),
    "many-blocks": (3, 4, 30, 29, 17, (3, 2), 1, 1, 1, 1),
    "deep": (2, 70, 9, 8, 12, (2, 2), 1, 0, 1, 1),
    "deep-groups": (2, 60, 6, 7, 18, (3, 3), 1, 1, 1, 3),
    "wider-than-a-block": (2, 50, 6, 9, 10, (3, 3), 1, 1, 1, 1),
    "one-by-one": (3, 40, 11, 13, 33, (1, 1), 1, 0, 1, 1),
    "stride-2": (3, 5, 17, 19, 11, (3, 3), 2, 1, 1, 1),
    "stride-3x2-dilated": (2, 4, 20, 15, 7, (3, 2), (3, 2), (2, 1), (2, 3), 1),
    "padding-beyond-kernel": (2, 3, 5, 6, 8, (2, 3), 1, (3, 4), 1, 1),
    "one-output-channel": (4, 7, 9, 9, 1, (3, 3), 1, 1, 1, 1),
    "kernel-equals-input": (6, 3, 5, 4, 13, (5, 4), 1, 0, 1, 1),
    "stride-beyond-kernel": (3, 2, 13, 14, 9, (2, 2), 4, 0, 1, 1),
    # filters enough for the packed weight gradient (convx's blocks, not BLAS)
    "weight-strips": (3, 16, 9, 20, 40, (3, 3), 1, 1, 1, 1),
    "weight-groups-stride": (2, 12, 12, 36, 64, (3, 3), 2, 1, 1, 2),
    "weight-dilated": (2, 5, 10, 24, 33, (2, 3), 1, (2, 1), (2, 2), 1),
    "weight-one-by-one": (2, 9, 5, 40, 32, (1, 1), 1, 0, 1, 1),
    # input channels enough for the packed input gradient on 3 threads (each thread its own
    # channels; shares not a multiple of the row panel, cut inside a group, or at its edge)
    "input-channels": (3, 27, 10, 11, 20, (3, 3), 1, 1, 1, 1),
    "input-groups-split": (2, 30, 8, 9, 12, (3, 3), 1, 1, 1, 3),
    "input-stride-2": (2, 24, 15, 17, 40, (3, 3), 2, 1, 1, 1),
    "input-stride-3x2-dilated": (2, 25, 16, 19, 12, (3, 2), (3, 2), (2, 1), (2, 2), 1),
    "input-stride-beyond-kernel": (3, 24, 13, 14, 9, (2, 2), 4, 0, 1, 1),
    "input-padding-beyond-kernel": (2, 24, 5, 6, 8, (2, 3), 1, (3, 4), 1, 1),
    "input-deep-filters": (2, 24, 5, 6, 300, (3, 3), 1, 1, 1, 1),
}


def _forced_mode(mode):
    """A fixture's body: core.set_direct_conv(mode) for the test, then the mode before it."""
    saved = core.direct_conv()
    core.set_direct_conv(mode)
    yield mode
    core.set_direct_conv(saved)


def _case(name):
    for table in (GEOMETRIES, DIRECT_GEOMETRIES, FLAT_GEOMETRIES, PLANE_GEOMETRIES):
        if name in table:
            return ConvCase(*table[name])
    raise KeyError(name)


def _check_against_reference(case, dtype, op, threads, rng):
    x, weight, bias, grad_out = case.arrays(rng, dtype)
    saved = convx.get_num_threads()
    convx.set_num_threads(threads)
    try:
        outputs = run_conv_op(F, op, x, weight, bias, grad_out, case.kwargs)
    finally:
        convx.set_num_threads(saved)
    expected = run_conv_op(reference, op, x, weight, bias, grad_out, case.kwargs)
    for out, ref in zip(outputs, expected, strict=True):
        assert_close(out, ref, dtype)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("op", ["forward", "backward_input", "backward_weight", "backward"])
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_each_kernel_matches_reference(kernel, dtype, geometry, op, threads, rng):
    _check_against_reference(_case(geometry), dtype, op, threads, rng)


# Geometries for the channels-last direct kernel (convx_direct_conv_*), which every mode is
# forced onto below: output rows not a multiple of the tile's pixels, batches not a multiple of
# its images (a last chunk of planes past the batch), output channels beyond one block of lanes
# or short of it, groups, strides, dilation, padding beyond the kernel (taps of whole rows
# skipped), rows no tap reaches, a 1x1 kernel, and a kernel as large as the input.
DIRECT_GEOMETRIES = {
    "direct-rows": (3, 5, 9, 13, 40, (3, 3), 1, 1, 1, 1),
    "direct-images": (11, 6, 5, 4, 33, (3, 3), 1, 1, 1, 1),
    "direct-groups": (2, 12, 7, 10, 96, (3, 2), 1, (1, 0), 1, 2),
    "direct-stride-2": (3, 7, 15, 17, 32, (3, 3), 2, 1, 1, 1),
    "direct-stride-3x2-dilated": (2, 4, 20, 15, 20, (3, 2), (3, 2), (2, 1), (2, 3), 1),
    "direct-padding-beyond-kernel": (9, 3, 5, 6, 17, (2, 3), 1, (3, 4), 1, 1),
    "direct-stride-beyond-kernel": (2, 3, 13, 14, 9, (2, 2), 4, 0, 1, 1),
    "direct-one-by-one": (3, 9, 6, 7, 48, (1, 1), 1, 0, 1, 1),
    "direct-kernel-equals-input": (9, 5, 4, 5, 16, (4, 5), 1, 0, 1, 1),
    "direct-deep": (2, 70, 6, 6, 64, (3, 3), 1, 1, 1, 1),
    # 'same' with an even kernel pads one more at the bottom and right than at the top and left:
    # zero-padded copies must reach the last row and column a window reads
    "direct-same-even-kernel": (3, 4, 6, 5, 20, (2, 3), 1, "same", 1, 1),
    "direct-same-dilated": (2, 3, 7, 9, 40, (4, 2), 1, "same", (1, 2), 1),
    # rows of grad_out of 16 KiB (32 in float64): the outer weight gradient takes an image in runs
    # of 8 (4) output rows that fit L2, the last one shorter
    "direct-outer-runs-of-rows": (2, 3, 20, 64, 64, (3, 3), 1, 1, 1, 1),
}


@pytest.fixture(params=["rows", "images", "outer", "plane"])
def direct(request):
    yield from _forced_mode(request.param)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("op", ["forward", "backward_input", "backward_weight", "backward"])
@pytest.mark.parametrize("geometry", list(DIRECT_GEOMETRIES))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_direct_kernel_matches_reference(own_kernel, direct, dtype, geometry, op, threads, rng):
    _check_against_reference(_case(geometry), dtype, op, threads, rng)


@pytest.mark.parametrize("geometry", ["direct-rows", "direct-images", "direct-padding-beyond-kernel"])
def test_direct_kernel_overwrites_its_output(own_kernel, direct, geometry, rng):
    # Every output element is written (the input gradient too, through the same kernel).
    case = _case(geometry)
    x, weight, bias, grad_out = case.arrays(rng, np.float32)
    (sh, sw), (ph, pw), (dh, dw) = (np.broadcast_to(case.kwargs[k], 2) for k in ("stride", "padding", "dilation"))
    groups = case.kwargs["groups"]
    out = np.full(grad_out.shape, np.nan, np.float32)
    core.conv2d_forward(x, weight, bias, out, sh, sw, ph, pw, dh, dw, groups, 2)
    assert_close(out, reference.conv2d(x, weight, bias, **case.kwargs), np.float32)
    if (sh, sw) == (1, 1):
        grad_in = np.full(x.shape, np.nan, np.float32)
        core.conv2d_backward_input(grad_out, weight, grad_in, sh, sw, ph, pw, dh, dw, groups, 2)
        assert_close(grad_in, reference.conv2d_backward_input(grad_out, weight, x.shape, **case.kwargs), np.float32)


@pytest.mark.parametrize("op", ["forward", "backward_input", "backward_weight"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_direct_kernel_non_finite_like_blas(own_kernel, direct, value, op, rng):
    # The direct kernel skips taps in the padding; with a non-finite weight it declines (and a
    # weight gradient that comes out non-finite is recomputed), and the path taken multiplies
    # the padding's zeros, so the same outputs turn NaN/inf as with BLAS.
    case = _case("direct-rows")
    x, weight, bias, grad_out = case.arrays(rng, np.float64)
    for weight_value in (1.0, value):
        x[1, 2, 3, 4] = value
        weight[4, 1, 0, 2] = weight_value
        grad_out[0, 3, 0, 5] = value

        def run():
            if op == "forward":
                return F.conv2d(x, weight, bias, **case.kwargs)
            if op == "backward_weight":
                return F.conv2d_backward_weight(grad_out, x, weight.shape, **case.kwargs)
            return F.conv2d_backward_input(grad_out, weight, x.shape, **case.kwargs)

        got = run()
        saved = core.gemm_kernel()
        core.set_gemm_kernel("blas")
        want = run()
        core.set_gemm_kernel(saved)
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        assert_close(np.where(np.isfinite(want), got, 0), np.where(np.isfinite(want), want, 0), np.float64)


# Geometries for the forward with the pixels as lanes (convx_plane_conv), forced below onto each:
# output rows of one tile, of several, with a last tile of one or two vectors or part of one
# (and rows narrower than a vector), output channels not a multiple of a tile's (or fewer),
# groups, dilation, a row stride, padding beyond the kernel and asymmetric ('same' with an even
# kernel), the deepest depth it takes, and a batch of one split over threads by channel blocks.
PLANE_GEOMETRIES = {
    "plane-lenet": (3, 1, 28, 28, 20, (5, 5), 1, 0, 1, 1),
    "plane-long-rows": (2, 2, 5, 61, 7, (3, 3), 1, 1, 1, 1),
    "plane-narrow": (4, 3, 6, 3, 5, (2, 2), 1, 0, 1, 1),
    "plane-one-channel-out": (3, 2, 9, 17, 1, (3, 2), 1, (1, 0), 1, 1),
    "plane-groups": (2, 6, 8, 19, 10, (3, 3), 1, 1, 1, 2),
    "plane-dilated-row-stride": (2, 3, 17, 20, 9, (3, 3), (2, 1), (2, 1), (2, 3), 1),
    "plane-padding-beyond-kernel": (2, 2, 4, 5, 6, (2, 3), 1, (3, 4), 1, 1),
    "plane-same-even-kernel": (2, 3, 7, 10, 8, (4, 2), 1, "same", 1, 1),
    "plane-deepest": (2, 16, 6, 9, 5, (4, 4), 1, 1, 1, 1),
    "plane-one-image": (1, 3, 12, 33, 21, (3, 3), 1, 1, 1, 1),
}


@pytest.fixture
def plane():
    yield from _forced_mode("plane")


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("geometry", list(PLANE_GEOMETRIES))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_plane_kernel_matches_reference(own_kernel, plane, dtype, geometry, threads, rng):
    _check_against_reference(_case(geometry), dtype, "forward", threads, rng)


@pytest.mark.parametrize("geometry", ["plane-long-rows", "plane-padding-beyond-kernel", "plane-one-image"])
def test_plane_kernel_overwrites_its_output_and_multiplies_the_padding(own_kernel, plane, geometry, rng):
    # Every output element is written (the output starts as NaN); an inf in the weight meets the
    # padding's zeros as inf * 0 = NaN, as im2col has it (the reference's sums do the same).
    case = _case(geometry)
    x, weight, bias, _ = case.arrays(rng, np.float64)
    (sh, sw), (ph, pw), (dh, dw) = (np.broadcast_to(case.kwargs[k], 2) for k in ("stride", "padding", "dilation"))
    out = np.full((case.n, case.c_out) + case.out_size(), np.nan)
    core.conv2d_forward(x, weight, bias, out, sh, sw, ph, pw, dh, dw, case.groups, 3)
    assert_close(out, reference.conv2d(x, weight, bias, **case.kwargs), np.float64)
    weight[0, 0, 0, 0] = np.inf
    got = F.conv2d(x, weight, bias, **case.kwargs)
    with np.errstate(invalid="ignore"):
        want = reference.conv2d(x, weight, bias, **case.kwargs)
    assert np.isnan(want).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))


# Geometries for the plane-wise kernels of 1x1 convolutions (convx_flat_*), forced below onto
# each: planes shorter than a strip or not a multiple of it, output channels not a multiple of
# the row panel (or fewer than one tile of the weight gradient), depths beyond one packed block
# (the forward's input channels, the input gradient's filters), groups, a plane of one pixel,
# planes longer than a chunk of the weight gradient, and planes shorter than one (a chunk of
# several images, a batch not a multiple of them).
FLAT_GEOMETRIES = {
    "flat-short-plane": (3, 9, 5, 7, 13, (1, 1), 1, 0, 1, 1),
    "flat-deep": (2, 300, 3, 5, 17, (1, 1), 1, 0, 1, 1),
    "flat-deep-filters": (2, 20, 14, 15, 300, (1, 1), 1, 0, 1, 1),
    "flat-groups": (2, 12, 13, 17, 18, (1, 1), 1, 0, 1, 3),
    "flat-plane-of-one": (5, 7, 1, 1, 9, (1, 1), 1, 0, 1, 1),
    "flat-few-channels": (3, 2, 9, 40, 3, (1, 1), 1, 0, 1, 1),
    "flat-long-planes": (2, 5, 40, 41, 6, (1, 1), 1, 0, 1, 1),
    "flat-images-per-chunk": (45, 6, 7, 7, 10, (1, 1), 1, 0, 1, 1),
}


@pytest.fixture
def flat():
    yield from _forced_mode("flat")


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("op", ["forward", "backward_input", "backward_weight", "backward"])
@pytest.mark.parametrize("geometry", list(FLAT_GEOMETRIES))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_flat_kernel_matches_reference(own_kernel, flat, dtype, geometry, op, threads, rng):
    _check_against_reference(_case(geometry), dtype, op, threads, rng)


@functools.cache
def _large_1x1_case(dtype):
    """x, weight, bias and the float64 products W x of test_flat_kernel_streams_large_outputs_at_any_alignment:
    the reference einsum over 4 M outputs, once per dtype instead of twice in each of its 12 tests."""
    rng = np.random.default_rng(12345)
    x = rng.standard_normal((2, 8, 184, 184)).astype(dtype)
    weight = rng.standard_normal((64, 8, 1, 1)).astype(dtype)
    bias = rng.standard_normal(64).astype(dtype)
    products = np.einsum("oc,nchw->nohw", weight[:, :, 0, 0].astype(np.float64), x.astype(np.float64))
    for array in (x, weight, bias, products):
        array.flags.writeable = False  # shared by the tests: none may change them
    return x, weight, bias, products


@pytest.mark.parametrize("offset", [0, 1, 3, 5])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_flat_kernel_streams_large_outputs_at_any_alignment(kernel, dtype, offset):
    # Outputs of 16 MiB or more are stored past the caches, which needs cache-line-aligned
    # strips: a plane's first strip is cut short to get there, from wherever the output starts.
    # Every element is written (the output starts as NaN), from 2 threads.
    x, weight, bias, products = _large_1x1_case(dtype)
    x, weight, bias = x.copy(), weight.copy(), bias.copy()  # writeable, as the kernels' inputs always are
    buffer = np.full(2 * 64 * 184 * 184 + offset, np.nan, dtype)
    out = buffer[offset:].reshape(2, 64, 184, 184)
    core.conv2d_forward(x, weight, bias, out, 1, 1, 0, 0, 1, 1, 1, 2)
    assert_close(out, products + bias[:, None, None], dtype)
    grad_in = np.full(2 * 64 * 184 * 184 + offset, np.nan, dtype)[offset:].reshape(2, 64, 184, 184)
    core.conv2d_backward_input(x, weight.transpose(1, 0, 2, 3).copy(), grad_in, 1, 1, 0, 0, 1, 1, 1, 2)
    assert_close(grad_in, products, dtype)


@pytest.mark.parametrize("offsets", [(0, 0), (1, 1), (4, 9), (7, 0), (12, 3), (15, 15)], ids=str)
@pytest.mark.parametrize("side", [16, 48], ids=["chunk-of-images", "chunks-of-a-plane"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_flat_weight_gradient_at_any_alignment(own_kernel, flat, dtype, side, offsets, threads, rng):
    # Planes a whole number of cache lines long all start at x's offset within a line: the
    # pixels before the next line are a masked step of their own, and so are the last ones.
    # 16 x 16 planes go several images to a chunk, 48 x 48 several chunks to a plane.
    x_offset, g_offset = offsets
    x = np.empty(3 * 8 * side * side + x_offset, dtype)[x_offset:].reshape(3, 8, side, side)
    grad_out = np.empty(3 * 12 * side * side + g_offset, dtype)[g_offset:].reshape(3, 12, side, side)
    x[...] = rng.standard_normal(x.shape)
    grad_out[...] = rng.standard_normal(grad_out.shape)
    saved = convx.get_num_threads()
    convx.set_num_threads(threads)
    try:
        grad_w = F.conv2d_backward_weight(grad_out, x, (12, 8, 1, 1))
    finally:
        convx.set_num_threads(saved)
    want = np.einsum("nohw,nchw->oc", grad_out.astype(np.float64), x.astype(np.float64))
    assert_close(grad_w[:, :, 0, 0], want, dtype)


def test_direct_conv_modes():
    assert core.direct_conv() == "auto"
    with pytest.raises(ValueError, match="direct conv mode must be one of"):
        core.set_direct_conv("fast")


def test_large_layer_matches_reference(kernel, rng):
    """Depth 3 * 3 * 64 (several depth blocks), 64 rows of weights, a batch of big planes."""
    case = ConvCase(2, 64, 20, 23, 40, (3, 3), 1, 1, 1, 1)
    x, weight, bias, grad_out = case.arrays(rng, np.float32)
    for op in ("forward", "backward_input", "backward_weight"):
        outputs = run_conv_op(F, op, x, weight, bias, grad_out, case.kwargs)
        expected = run_conv_op(reference, op, x, weight, bias, grad_out, case.kwargs)
        for out, ref in zip(outputs, expected, strict=True):
            assert_close(out, ref, np.float32)


@pytest.mark.parametrize("op", ["forward", "backward_input"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_values_propagate_like_blas(kernel, value, op, rng):
    # The packed paths multiply the padding's zeros like im2col + BLAS does (and the input
    # gradient drops the products that fall in the padding as col2im does), so the same
    # outputs turn NaN/inf.
    case = _case("strips-cross-images" if op == "forward" else "input-channels")
    x, weight, bias, grad_out = case.arrays(rng, np.float64)
    x[1, 2, 3, 4] = value
    weight[4, 1, 0, 2] = value
    grad_out[0, 3, 0, 5] = value

    def run():
        if op == "forward":
            return F.conv2d(x, weight, bias, **case.kwargs)
        return F.conv2d_backward_input(grad_out, weight, x.shape, **case.kwargs)

    got = run()
    core.set_gemm_kernel("blas")
    want = run()
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert_close(np.where(np.isfinite(want), got, 0), np.where(np.isfinite(want), want, 0), np.float64)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("geometry", ["input-channels", "input-groups-split", "input-stride-beyond-kernel",
                                      "input-padding-beyond-kernel"])
def test_input_gradient_overwrites_its_output(kernel, geometry, threads, rng):
    # The kernels own the zeroing of grad_in (the packed path zeroes rows just ahead of its
    # blocks): rows no tap reaches must come out zero whatever the memory held.
    case = _case(geometry)
    x, weight, bias, grad_out = case.arrays(rng, np.float32)
    grad_in = np.full(x.shape, np.nan, np.float32)
    (sh, sw), (ph, pw), (dh, dw) = (np.broadcast_to(case.kwargs[k], 2) for k in ("stride", "padding", "dilation"))
    core.conv2d_backward_input(grad_out, weight, grad_in, sh, sw, ph, pw, dh, dw, case.kwargs["groups"], threads)
    assert_close(grad_in, reference.conv2d_backward_input(grad_out, weight, x.shape, **case.kwargs), np.float32)


def test_empty_batch_and_channels(kernel):
    x = np.zeros((0, 3, 5, 5), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    assert F.conv2d(x, w).shape == (0, 4, 3, 3)
    assert F.conv2d_backward_input(np.zeros((0, 4, 3, 3), np.float32), w, x.shape).shape == x.shape


def test_gemm_kernel_names():
    assert core.gemm_kernel() in core.GEMM_KERNELS
    assert "blas" in KERNELS
    with pytest.raises(ValueError, match="gemm kernel must be one of"):
        core.set_gemm_kernel("sse")
    unsupported = [name for name in core.GEMM_KERNELS if name not in KERNELS]
    for name in unsupported:
        with pytest.raises(ValueError, match="does not run"):
            core.set_gemm_kernel(name)


def test_show_config_names_the_kernel():
    from convx._config import config

    assert config()["gemm"] == core.gemm_kernel()


def test_default_kernel_is_the_widest_the_cpu_runs():
    # (the fixture restores the kernel after each test, so this is still the import-time choice)
    assert core.gemm_kernel() == KERNELS[-1]
