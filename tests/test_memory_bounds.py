"""Memory that a call takes beyond the arrays it returns (issue 25, item 4).

Scratch is sized by what the output reads: stride, padding, dilation and kernel size must never
cost memory beyond the sizes of the inputs and outputs (conv2d of a 1x1 image with stride =
padding = 10**8 asked for 9 GiB for a 2x2 output, its weight gradient for 35 PiB). The bound
every call is held to: its extra memory at most twice its inputs' size plus 64 MiB. tracemalloc
sees every NumPy allocation, and the kernels allocate their scratch with np.empty, so its peak
over the call, less the bytes of the arrays the call returns, is the extra memory. Each op family
has its own section, helpers and tests.

Convolution section: every convolution op, every direct mode (``convx._core.set_direct_conv``)
and algorithm, on tiny inputs with stride, padding and dilation up to 2**31 - 1, checked against
a reference that sums the definition's products inside the input (the NumPy reference pads the
input, which is what cannot be done here) and against PyTorch; and the refusals for sizes,
naming the argument at fault. Its helpers are named ``_conv_*``.

Pooling section: every pooling op with kernel, stride, padding, dilation and output_size up to
2**31 - 1 on tiny inputs, against the reference; its helpers are named ``_pool_*``.
"""

import contextlib
import functools
import itertools
import tracemalloc
import zlib

import numpy as np
import pytest
from conftest import DTYPES, WINOGRAD_TOLERANCES, assert_close

import convx
import convx._core as core
import convx.functional as F
import convx.reference.pooling as R
from convx import _threads, nn
from convx.reference import conv as reference

# ---------------------------------------------------------------------------------------------
# Convolution

_CONV_SLACK = 64 * 2**20
_CONV_HUGE = 2**31 - 1


def _conv_extra_memory(call):
    """(result, bytes): ``call()``'s result and its tracemalloc peak less the bytes of the arrays it returns."""
    tracemalloc.start()
    try:
        result = call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    returned = result if isinstance(result, tuple) else (result,)
    return result, peak - sum(array.nbytes for array in returned)


def _conv_check_memory(call, inputs):
    """``call()``'s result, after checking its extra memory against the bound."""
    result, extra = _conv_extra_memory(call)
    budget = 2 * sum(array.nbytes for array in inputs if array is not None) + _CONV_SLACK
    assert extra <= budget, f"{extra / 2**20:.1f} MiB of scratch, more than {budget / 2**20:.1f} MiB"
    return result


@contextlib.contextmanager
def _conv_case(description):
    """Name the sweep case in any assertion that fails inside."""
    try:
        yield
    except AssertionError as error:
        raise AssertionError(f"{description}: {error}") from None


def _conv_output_size(size, kernel, stride, pads, dilation):
    return (size + pads[0] + pads[1] - dilation * (kernel - 1) - 1) // stride + 1


def _conv_products(x_shape, weight_shape, stride, pads, dilation, groups):
    """Every product of the definition with its input element inside x: (oh, ow, ih, iw, i, j), from the
    formula ``ih = oh*sH - pad_top + i*dH`` directly (loops over outputs and taps)."""
    height, width = x_shape[2:]
    kernel_h, kernel_w = weight_shape[2:]
    out_h = _conv_output_size(height, kernel_h, stride[0], pads[0], dilation[0])
    out_w = _conv_output_size(width, kernel_w, stride[1], pads[1], dilation[1])
    products = []
    for oh, ow, i, j in itertools.product(range(out_h), range(out_w), range(kernel_h), range(kernel_w)):
        ih = oh * stride[0] - pads[0][0] + i * dilation[0]
        iw = ow * stride[1] - pads[1][0] + j * dilation[1]
        if 0 <= ih < height and 0 <= iw < width:
            products.append((oh, ow, ih, iw, i, j))
    return (out_h, out_w), products


def _conv_reference(x, weight, bias, grad_out, stride, pads, dilation, groups):
    """(y, grad_x, grad_w, grad_b) in float64 from the definition's products inside x (the padding's are
    zeros: the inputs here are finite)."""
    n, c_in, height, width = x.shape
    c_out = weight.shape[0]
    (out_h, out_w), products = _conv_products(x.shape, weight.shape, stride, pads, dilation, groups)
    xg = x.astype(np.float64).reshape(n, groups, c_in // groups, height, width)
    wg = weight.astype(np.float64).reshape(groups, c_out // groups, *weight.shape[1:])
    y = np.zeros((n, groups, c_out // groups, out_h, out_w))
    grad_x = np.zeros_like(xg)
    grad_w = np.zeros_like(wg)
    gg = None if grad_out is None else grad_out.astype(np.float64).reshape(n, groups, c_out // groups, out_h, out_w)
    for oh, ow, ih, iw, i, j in products:
        y[..., oh, ow] += np.einsum("gmc,ngc->ngm", wg[..., i, j], xg[..., ih, iw])
        if gg is not None:
            grad_x[..., ih, iw] += np.einsum("gmc,ngm->ngc", wg[..., i, j], gg[..., oh, ow])
            grad_w[..., i, j] += np.einsum("ngm,ngc->gmc", gg[..., oh, ow], xg[..., ih, iw])
    y = y.reshape(n, c_out, out_h, out_w)
    if bias is not None:
        y += bias[:, None, None]
    grad_b = None if grad_out is None else grad_out.astype(np.float64).sum(axis=(0, 2, 3))
    return y, grad_x.reshape(x.shape), grad_w.reshape(weight.shape), grad_b


# (N, C_in, H, W, C_out, groups): the issue's 1x1 image with 4 -> 64 channels, and a grouped, a
# depthwise and a wider layer, all small enough for the loops of _conv_reference.
_CONV_LAYERS = {
    "issue-1x1-image": (1, 4, 1, 1, 64, 1),
    "grouped": (2, 6, 3, 2, 9, 3),
    "depthwise": (2, 4, 2, 3, 4, 4),
    "channels-16": (1, 16, 4, 5, 32, 1),
}
_CONV_KERNELS = [(3, 3), (1, 1), (2, 3), (5, 1)]
_CONV_EXTREMES = [1, 2, 10**4, 10**8, _CONV_HUGE]


@functools.cache
def _conv_sweep():
    """(layer, kernel, stride, padding, dilation) with at least one of them extreme and an output of
    at most 64 pixels: every combination of the extremes on each axis alike, then asymmetric ones."""
    cases = []
    for layer, kernel in itertools.product(_CONV_LAYERS, _CONV_KERNELS):
        height, width = _CONV_LAYERS[layer][2:4]
        pairs = [(v, v) for v in _CONV_EXTREMES] + [(1, 10**8), (_CONV_HUGE, 3)]
        for stride, padding, dilation in itertools.product(pairs, pairs, pairs):
            if max(*stride, *padding, *dilation) < 10**4:
                continue
            pads = ((padding[0], padding[0]), (padding[1], padding[1]))
            out_h = _conv_output_size(height, kernel[0], stride[0], pads[0], dilation[0])
            out_w = _conv_output_size(width, kernel[1], stride[1], pads[1], dilation[1])
            if 1 <= out_h * out_w <= 64 and out_h >= 1 and out_w >= 1:
                cases.append((layer, kernel, stride, padding, dilation))
    return cases


@functools.cache
def _conv_arrays(layer, kernel, dtype, stride, padding, dilation):
    """x, weight, bias, grad_out and the float64 reference results of one sweep case."""
    n, c_in, height, width, c_out, groups = _CONV_LAYERS[layer]
    rng = np.random.default_rng(zlib.crc32(repr((layer, kernel, stride, padding, dilation)).encode()))
    x = rng.standard_normal((n, c_in, height, width)).astype(dtype)
    weight = rng.standard_normal((c_out, c_in // groups, *kernel)).astype(dtype)
    bias = rng.standard_normal(c_out).astype(dtype)
    pads = ((padding[0], padding[0]), (padding[1], padding[1]))
    out_h = _conv_output_size(height, kernel[0], stride[0], pads[0], dilation[0])
    out_w = _conv_output_size(width, kernel[1], stride[1], pads[1], dilation[1])
    grad_out = rng.standard_normal((n, c_out, out_h, out_w)).astype(dtype)
    expected = _conv_reference(x, weight, bias, grad_out, stride, pads, dilation, groups)
    return x, weight, bias, grad_out, expected


@pytest.fixture(params=["auto", "off", "rows", "images", "outer", "flat", "plane"])
def conv_direct_mode(request):
    saved = core.direct_conv()
    core.set_direct_conv(request.param)
    yield request.param
    core.set_direct_conv(saved)


@pytest.fixture
def conv_threads():
    saved = convx.get_num_threads()
    yield
    convx.set_num_threads(saved)


def test_conv_sweep_reaches_the_extremes():
    cases = _conv_sweep()
    assert len(cases) > 100
    for value in (10**4, 10**8, _CONV_HUGE):
        for position in range(2, 5):
            assert any(value in case[position] for case in cases), (value, position)


@pytest.mark.parametrize("op", ["forward", "backward_input", "backward_weight", "backward"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_extreme_geometry_memory_and_results(conv_direct_mode, conv_threads, op, dtype):
    """Each op on every sweep case (1, 2 and 3 threads in turn) within the memory bound, equal to the reference."""
    _conv_check_sweep(op, dtype, _conv_sweep())


@pytest.mark.parametrize("mode", ["split", "direct"])
@pytest.mark.parametrize("op", ["forward", "backward_input", "backward_weight", "backward"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_extreme_geometry_depthwise_implementations(conv_threads, mode, op, dtype):
    """The depthwise layer's sweep cases with each depthwise implementation forced (the phase-split
    sweeps decline geometries whose buffers the padding or dilation would make large)."""
    saved = core.depthwise_kernel()
    core.set_depthwise_kernel(mode)
    try:
        _conv_check_sweep(op, dtype, [case for case in _conv_sweep() if case[0] == "depthwise"])
    finally:
        core.set_depthwise_kernel(saved)


def _conv_check_sweep(op, dtype, cases):
    """Each op on the sweep cases (1, 2 and 3 threads in turn) within the memory bound, equal to the reference."""
    for index, (layer, kernel, stride, padding, dilation) in enumerate(cases):
        convx.set_num_threads(1 + index % 3)
        groups = _CONV_LAYERS[layer][5]
        x, weight, bias, grad_out, (y, grad_x, grad_w, grad_b) = _conv_arrays(
            layer, kernel, dtype, stride, padding, dilation)
        kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        with _conv_case(f"{layer} kernel={kernel} {kwargs}"):
            if op == "forward":
                got = _conv_check_memory(lambda: F.conv2d(x, weight, bias, **kwargs), (x, weight, bias))
                assert_close(got, y, dtype)
            elif op == "backward_input":
                got = _conv_check_memory(lambda: F.conv2d_backward_input(grad_out, weight, x.shape, **kwargs),
                                         (grad_out, weight))
                assert_close(got, grad_x, dtype)
            elif op == "backward_weight":
                got = _conv_check_memory(lambda: F.conv2d_backward_weight(grad_out, x, weight.shape, **kwargs),
                                         (grad_out, x))
                assert_close(got, grad_w, dtype)
            else:
                got = _conv_check_memory(lambda: F.conv2d_backward(grad_out, x, weight, **kwargs),
                                         (grad_out, x, weight))
                for actual, expected in zip(got, (grad_x, grad_w, grad_b)):
                    assert_close(actual, expected, dtype)


def test_conv_extreme_geometry_matches_torch(torch):
    """PyTorch runs these geometries too (1 ms for the issue's): the forward and all three gradients agree."""
    torch.set_num_threads(1)
    for layer, kernel, stride, padding, dilation in _conv_sweep()[::3]:
        groups = _CONV_LAYERS[layer][5]
        x, weight, bias, grad_out, _ = _conv_arrays(layer, kernel, np.float64, stride, padding, dilation)
        kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        tx = torch.tensor(x, requires_grad=True)
        tw = torch.tensor(weight, requires_grad=True)
        tb = torch.tensor(bias, requires_grad=True)
        ty = torch.nn.functional.conv2d(tx, tw, tb, **kwargs)
        ty.backward(torch.tensor(grad_out))
        assert_close(F.conv2d(x, weight, bias, **kwargs), ty.detach().numpy())
        for actual, expected in zip(F.conv2d_backward(grad_out, x, weight, **kwargs),
                                    (tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy())):
            assert_close(actual, expected)


@pytest.mark.parametrize("geometry", [((16, 4, 4), 3, 1, 512), ((32, 32, 32), 3, 2, 128), ((4, 200, 180), 5, 1, 24)],
                         ids=["4x4", "32x32-stride2", "200x180-bands"])
def test_conv_depthwise_sweeps_scratch_does_not_grow_with_the_batch(conv_threads, geometry):
    """The phase-split sweeps' scratch is a buffer per thread of a fixed budget (small planes stacked up
    to it, large ones in bands of rows): a few tens of KiB per thread at any batch."""
    (channels, height, width), kernel, stride, batch = geometry
    saved = core.depthwise_kernel()
    core.set_depthwise_kernel("split")
    convx.set_num_threads(2)
    rng = np.random.default_rng(7)
    weight = rng.standard_normal((channels, 1, kernel, kernel)).astype(np.float32)
    kwargs = dict(stride=stride, padding=kernel // 2, groups=channels)
    x = rng.standard_normal((batch, channels, height, width)).astype(np.float32)
    y = F.conv2d(x, weight, **kwargs)
    grad_out = rng.standard_normal(y.shape).astype(np.float32)
    try:
        extras = [
            _conv_extra_memory(lambda: F.conv2d(x, weight, **kwargs))[1],
            _conv_extra_memory(lambda: F.conv2d_backward_input(grad_out, weight, x.shape, **kwargs))[1],
            _conv_extra_memory(lambda: F.conv2d_backward_weight(grad_out, x, weight.shape, **kwargs))[1],
        ]
    finally:
        core.set_depthwise_kernel(saved)
    # two threads' buffers of 16 KiB and their lanes, with the slack of their layouts
    assert max(extras) < 2 * 96 * 1024, extras


def test_conv_issue_reproducer_is_small_and_right(conv_direct_mode, torch):
    """The issue's calls: a 1x1 image, 4 -> 64 channels, 3x3, stride = padding = 10**8 (and 10**4)."""
    rng = np.random.default_rng(25)
    x = rng.standard_normal((1, 4, 1, 1)).astype(np.float32)
    weight = rng.standard_normal((64, 4, 3, 3)).astype(np.float32)
    for value in (10**4, 10**8):
        kwargs = dict(stride=value, padding=value)
        y = _conv_check_memory(lambda: F.conv2d(x, weight, **kwargs), (x, weight))
        assert y.shape == (1, 64, 2, 2)
        expected = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(weight), **kwargs).numpy()
        assert_close(y, expected)
        grad_out = rng.standard_normal(y.shape).astype(np.float32)
        grad_w = _conv_check_memory(lambda: F.conv2d_backward_weight(grad_out, x, weight.shape, **kwargs),
                                    (grad_out, x))
        # Only output (1, 1) reads the image, with its tap (0, 0).
        expected_w = np.zeros_like(weight)
        expected_w[:, :, 0, 0] = grad_out[0, :, 1, 1][:, None] * x[0, :, 0, 0][None, :]
        assert_close(grad_w, expected_w)


@pytest.mark.parametrize("algorithm", ["winograd", "auto", "direct"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_winograd_with_padding_beyond_the_image(algorithm, dtype, rng):
    """Winograd's geometry (3x3, stride 1) with padding far past a small image: the outputs that read only
    padding are cut off before its tiles are sized; the rest match the NumPy reference."""
    x = rng.standard_normal((2, 16, 3, 2)).astype(dtype)
    weight = rng.standard_normal((16, 16, 3, 3)).astype(dtype)
    bias = rng.standard_normal(16).astype(dtype)
    tolerances = WINOGRAD_TOLERANCES if algorithm != "direct" else None
    for padding in [4, (7, 1), (0, 9)]:
        kwargs = dict(padding=padding, algorithm=algorithm)
        ref_kwargs = dict(padding=padding)
        y = _conv_check_memory(lambda: F.conv2d(x, weight, bias, **kwargs), (x, weight, bias))
        grad_out = rng.standard_normal(y.shape).astype(dtype)
        expected = [
            reference.conv2d(x, weight, bias, **ref_kwargs),
            reference.conv2d_backward_input(grad_out, weight, x.shape, **ref_kwargs),
            reference.conv2d_backward_weight(grad_out, x, weight.shape, **ref_kwargs),
        ]
        actual = [
            y,
            _conv_check_memory(lambda: F.conv2d_backward_input(grad_out, weight, x.shape, **kwargs),
                               (grad_out, weight)),
            _conv_check_memory(lambda: F.conv2d_backward_weight(grad_out, x, weight.shape, **kwargs), (grad_out, x)),
        ]
        for got, want in zip(actual, expected):
            if tolerances is None:
                assert_close(got, want, dtype)
            else:
                assert_close(got, want, dtype, tolerances=tolerances)
        fused = F.conv2d_backward(grad_out, x, weight, **kwargs)
        for got, want in zip(fused, [*expected[1:], reference.conv2d_backward_bias(grad_out)]):
            assert_close(got, want, dtype, tolerances=tolerances or WINOGRAD_TOLERANCES)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("unbatched", [False, True])
def test_conv_same_valid_and_asymmetric_padding_beyond_the_image(conv_direct_mode, dtype, unbatched, rng):
    """'same' with a large dilation (its padding is the kernel's span), 'valid', and asymmetric pairs, on
    unbatched input too: the NumPy reference can still pad these."""
    x = rng.standard_normal((2, 4, 3, 4)).astype(dtype)
    weight = rng.standard_normal((8, 2, 3, 2)).astype(dtype)
    bias = rng.standard_normal(8).astype(dtype)
    for kwargs in [dict(padding="same", dilation=(40, 7), groups=2), dict(padding="valid", dilation=(1, 3), groups=2),
                   dict(padding=(30, 0), stride=(7, 1), groups=2), dict(padding=(0, 50), stride=(1, 60), groups=2),
                   dict(padding="same", dilation=(1, 25), groups=2)]:
        xs = x[0] if unbatched else x
        y = _conv_check_memory(lambda: F.conv2d(xs, weight, bias, **kwargs), (xs, weight, bias))
        assert_close(y, reference.conv2d(xs, weight, bias, **kwargs), dtype)
        grad_out = rng.standard_normal(y.shape).astype(dtype)
        grad_x = _conv_check_memory(lambda: F.conv2d_backward_input(grad_out, weight, xs.shape, **kwargs),
                                    (grad_out, weight))
        assert_close(grad_x, reference.conv2d_backward_input(grad_out, weight, xs.shape, **kwargs), dtype)
        grad_w = _conv_check_memory(lambda: F.conv2d_backward_weight(grad_out, xs, weight.shape, **kwargs),
                                    (grad_out, xs))
        assert_close(grad_w, reference.conv2d_backward_weight(grad_out, xs, weight.shape, **kwargs), dtype)


@pytest.fixture(params=[("blas", "auto")] + [(None, mode) for mode in ["auto", "off", "rows", "images", "outer",
                                                                        "flat", "plane"]],
                ids=lambda path: f"{path[0] or 'own'}-{path[1]}")
def conv_path(request):
    """BLAS, whose forward runs the im2col tiles (no direct mode applies there), or convx's own GEMM
    (the default, where the CPU has one) under each direct mode."""
    gemm, mode = request.param
    with core.ConvConfig(gemm, mode):
        yield


@functools.cache
def _conv_larger_kernel_cases(dtype):
    """(x, weight, bias, kwargs, y, grad_out, (grad_x, grad_w, grad_b)) of each image of
    test_conv_kernel_larger_than_the_image, from the NumPy reference: computed once per dtype for
    its 16 paths and thread counts (the reference took three quarters of each test's time)."""
    rng = np.random.default_rng(12345)
    cases = []
    for shape, groups in [((1, 32, 1, 1), 1), ((2, 32, 2, 3), 1), ((1, 64, 1, 5), 2)]:
        x = rng.standard_normal(shape).astype(dtype)
        weight = rng.standard_normal((2 * groups, 32, 32, 32)).astype(dtype)
        bias = rng.standard_normal(2 * groups).astype(dtype)
        kwargs = dict(padding=31, stride=(2, 1), groups=groups)
        y = reference.conv2d(x, weight, bias, **kwargs)
        grad_out = rng.standard_normal(y.shape).astype(dtype)
        expected = (reference.conv2d_backward_input(grad_out, weight, x.shape, **kwargs),
                    reference.conv2d_backward_weight(grad_out, x, weight.shape, **kwargs),
                    reference.conv2d_backward_bias(grad_out))
        for array in (x, weight, bias, y, grad_out, *expected):
            array.flags.writeable = False  # shared by the tests: none may change them
        cases.append((x, weight, bias, kwargs, y, grad_out, expected))
    return cases


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 3])
def test_conv_kernel_larger_than_the_image(conv_path, conv_threads, dtype, threads):
    """A 32x32 kernel over a 1x1, 2x3 and 1x5 image (two groups) padded by 31: the im2col columns of one output
    row would be 32 * 32 * 32 taps by 32-36 output columns, 16-18 times the weight, over the 2**20-element
    budget from width 33 on; they are tiled within the row. Every op, against the NumPy reference."""
    convx.set_num_threads(threads)
    for x, weight, bias, kwargs, y_ref, grad_out, expected in _conv_larger_kernel_cases(dtype):
        # writeable copies, as the test's own arrays were (read-only inputs are another path)
        x, weight, bias, grad_out = x.copy(), weight.copy(), bias.copy(), grad_out.copy()
        y = _conv_check_memory(lambda: F.conv2d(x, weight, bias, **kwargs), (x, weight, bias))
        assert_close(y, y_ref, dtype)
        got = _conv_check_memory(lambda: F.conv2d_backward(grad_out, x, weight, **kwargs), (grad_out, x, weight))
        for actual, want in zip(got, expected):
            assert_close(actual, want, dtype)
        got_x = _conv_check_memory(lambda: F.conv2d_backward_input(grad_out, weight, x.shape, **kwargs),
                                   (grad_out, weight))
        assert_close(got_x, expected[0], dtype)
        got_w = _conv_check_memory(lambda: F.conv2d_backward_weight(grad_out, x, weight.shape, **kwargs),
                                   (grad_out, x))
        assert_close(got_w, expected[1], dtype)


def test_conv_kernel_much_larger_than_the_image_memory(conv_direct_mode):
    """A 128x128 kernel, 4 -> 2 channels, over a 1x65 image padded by 127: the columns of one output row were
    160 MiB in float64 (128 MiB over a 1x1 image; the direct weight gradient's partials 64 MiB), for 1 MiB of
    inputs."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 4, 1, 65))
    weight = rng.standard_normal((2, 4, 128, 128))
    kwargs = dict(padding=127, stride=(8, 1))
    y = _conv_check_memory(lambda: F.conv2d(x, weight, **kwargs), (x, weight))
    assert_close(y, reference.conv2d(x, weight, **kwargs))
    grad_out = rng.standard_normal(y.shape)
    _conv_check_memory(lambda: F.conv2d_backward(grad_out, x, weight, **kwargs), (grad_out, x, weight))
    _conv_check_memory(lambda: F.conv2d_backward_input(grad_out, weight, x.shape, **kwargs), (grad_out, weight))
    _conv_check_memory(lambda: F.conv2d_backward_weight(grad_out, x, weight.shape, **kwargs), (grad_out, x))


def _conv_transpose_sweep():
    """(H, W, kernel, stride, padding, output_padding, dilation): stride and dilation up to 2**31 - 1,
    the padding chosen so that the output is a few pixels."""
    cases = []
    for (height, width), kernel, stride, dilation in itertools.product(
        [(1, 1), (2, 1), (1, 3)], [(3, 3), (2, 1)], [1, 10**4, 10**8, _CONV_HUGE], [1, 10**4, _CONV_HUGE]
    ):
        if max(stride, dilation) < 10**4:
            continue
        padding = []
        for size, k in zip((height, width), kernel):
            full = (size - 1) * stride + dilation * (k - 1) + 1
            padding.append(max(0, (full - 3) // 2))
        if max(padding) > _CONV_HUGE:
            continue
        for output_padding in [(0, 0), (2, 1)]:
            cases.append(((height, width), kernel, stride, tuple(padding), output_padding, dilation))
    return cases


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_transpose_extreme_geometry(conv_direct_mode, conv_threads, dtype, torch):
    """conv_transpose2d with stride and dilation up to 2**31 - 1 and the padding that leaves a few outputs:
    within the memory bound, equal to the reference (the input gradient of the matching convolution) and
    to PyTorch."""
    cases = _conv_transpose_sweep()
    assert len(cases) >= 40
    for index, ((height, width), kernel, stride, padding, output_padding, dilation) in enumerate(cases):
        convx.set_num_threads(1 + index % 3)
        rng = np.random.default_rng(index)
        x = rng.standard_normal((2, 4, height, width)).astype(dtype)
        weight = rng.standard_normal((4, 3, *kernel)).astype(dtype)
        bias = rng.standard_normal(3).astype(dtype)
        kwargs = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation)
        y = _conv_check_memory(lambda: F.conv_transpose2d(x, weight, bias, **kwargs), (x, weight, bias))
        pads = tuple((p, p) for p in padding)
        # y is the input gradient of the convolution of y's shape with weight (C_in, C_out, ...) at grad_out x
        forward_weight = weight
        y_shape = (2, 3, *y.shape[2:])
        # (with output_padding >= stride that convolution has more outputs than x: x's are the first)
        (out_h, out_w), products = _conv_products(y_shape, forward_weight.shape, (stride, stride), pads,
                                                  (dilation, dilation), 1)
        assert out_h >= height and out_w >= width
        expected = np.zeros(y_shape)
        for oh, ow, ih, iw, i, j in products:
            if oh >= height or ow >= width:
                continue
            expected[..., ih, iw] += np.einsum("mc,nm->nc", forward_weight[..., i, j].astype(np.float64),
                                               x[..., oh, ow].astype(np.float64))
        expected += bias[:, None, None]
        with _conv_case(f"x {x.shape} kernel={kernel} {kwargs}"):
            assert_close(y, expected, dtype)
            # PyTorch sizes a transposed convolution's output in 32-bit ints (-4294967292 for dilation 2**31 - 1)
            spans = [2 * max(padding), dilation * (max(kernel) - 1), (max(height, width) - 1) * stride]
            if dtype == np.float64 and max(spans) < 2**30:
                got = torch.nn.functional.conv_transpose2d(torch.tensor(x), torch.tensor(weight),
                                                           torch.tensor(bias), **kwargs).numpy()
                assert_close(y, got)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_transpose_whose_inputs_all_land_in_the_padding(conv_direct_mode, conv_threads, dtype, torch):
    """output_padding can make the matching convolution's outputs more than x has, so that every row (or
    column) of x lands in the cropped padding: y is then the bias alone (PyTorch agrees; this crashed the
    process with SIGFPE when the kernels were handed no outputs)."""
    rng = np.random.default_rng(25)
    cases = [
        ((1, 4), dict(stride=(1, 30), padding=(1, 20), output_padding=(6, 12), dilation=(7, 2))),  # rows
        ((4, 1), dict(stride=(30, 1), padding=(20, 1), output_padding=(12, 6), dilation=(2, 7))),  # columns
        ((1, 4), dict(stride=(1, 1), padding=(1, 1), output_padding=(4, 4), dilation=(5, 5))),  # both
        ((4, 1), dict(stride=(1, 1), padding=(1, 1), output_padding=(4, 4), dilation=(5, 5))),
    ]
    for index, (plane, kwargs) in enumerate(cases):
        convx.set_num_threads(1 + index % 3)
        x = rng.standard_normal((2, 1, *plane)).astype(dtype)
        x[0, 0, 0, 0] = np.inf  # lands nowhere: multiplies nothing
        weight = rng.standard_normal((1, 2, 1, 1)).astype(dtype)
        bias = rng.standard_normal(2).astype(dtype)
        with _conv_case(f"x {x.shape} {kwargs}"):
            y = F.conv_transpose2d(x, weight, bias, **kwargs)
            got = torch.nn.functional.conv_transpose2d(torch.tensor(x), torch.tensor(weight), torch.tensor(bias),
                                                       **kwargs).numpy()
            assert y.shape == got.shape
            assert_close(y, got, dtype)
            assert_close(y, reference.conv_transpose2d(x, weight, bias, **kwargs), dtype)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_conv_outputs_cut_off_keep_the_padding_products(conv_direct_mode, value, rng):
    """The outputs whose windows read only padding are computed apart (the bias) but still multiply the
    zeros: a non-finite weight makes them NaN, as im2col (and the NumPy reference) does; a non-finite
    output gradient there makes its channel's weight gradient NaN."""
    x = rng.standard_normal((1, 2, 2, 2))
    weight = rng.standard_normal((3, 2, 2, 2))
    bias = rng.standard_normal(3)
    kwargs = dict(stride=3, padding=5)
    bad_weight = weight.copy()
    bad_weight[1, 0, 1, 1] = value
    y = F.conv2d(x, bad_weight, bias, **kwargs)
    with np.errstate(invalid="ignore"):  # the reference's 0 * inf
        expected = reference.conv2d(x, bad_weight, bias, **kwargs)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    assert np.isnan(y[0, 1]).all() and not np.isnan(y[0, [0, 2]]).any()
    assert_close(np.nan_to_num(y), np.nan_to_num(expected))
    grad_out = rng.standard_normal(y.shape)
    grad_out[0, 2, 0, 0] = value  # output (0, 0) reads padding only
    grad_w = F.conv2d_backward_weight(grad_out, x, weight.shape, **kwargs)
    with np.errstate(invalid="ignore"):
        expected_w = reference.conv2d_backward_weight(grad_out, x, weight.shape, **kwargs)
        expected_x = reference.conv2d_backward_input(grad_out, weight, x.shape, **kwargs)
    np.testing.assert_array_equal(np.isnan(grad_w), np.isnan(expected_w))
    assert np.isnan(grad_w[2]).all() and not np.isnan(grad_w[:2]).any()
    assert_close(grad_w[:2], expected_w[:2])
    fused = F.conv2d_backward(grad_out, x, weight, **kwargs)
    np.testing.assert_array_equal(np.isnan(fused[1]), np.isnan(expected_w))
    assert_close(fused[0], expected_x)
    # the bias gradient sums all of grad_out, the cut-off outputs included
    np.testing.assert_array_equal(np.isinf(fused[2]) | np.isnan(fused[2]), [False, False, True])


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(padding=2**31), "padding"),
        (dict(padding=(1, 2**31)), "padding"),
        (dict(stride=2**31), "stride"),
        (dict(dilation=(2**31, 1)), "dilation"),
        (dict(padding=40000), "padding"),  # an output plane of 80000 x 80001 pixels
    ],
    ids=str,
)
@pytest.mark.parametrize("op", ["conv2d", "conv2d_backward_input", "conv2d_backward_weight", "conv2d_backward"])
def test_conv_size_refusals_name_the_argument(op, kwargs, argument):
    x = np.ones((1, 2, 1, 1), dtype=np.float32)
    weight = np.ones((3, 2, 2, 1), dtype=np.float32)
    grad_out = np.ones((1, 3, 1, 1), dtype=np.float32)
    call = {
        "conv2d": lambda: F.conv2d(x, weight, **kwargs),
        "conv2d_backward_input": lambda: F.conv2d_backward_input(grad_out, weight, x.shape, **kwargs),
        "conv2d_backward_weight": lambda: F.conv2d_backward_weight(grad_out, x, weight.shape, **kwargs),
        "conv2d_backward": lambda: F.conv2d_backward(grad_out, x, weight, **kwargs),
    }[op]
    with pytest.raises(ValueError, match=argument):
        call()


@pytest.mark.parametrize("kwargs, argument", [(dict(stride=2**31), "stride"), (dict(padding=2**31), "padding"),
                                              (dict(dilation=2**31), "dilation"),
                                              (dict(stride=(2**30, 1)), r"stride=\(1073741824, 1\)"),
                                              (dict(dilation=(1, 2**30)), r"dilation=\(1, 1073741824\)")], ids=str)
def test_conv_transpose_size_refusals_name_the_argument(kwargs, argument):
    # x 3x2, kernel 2x3: stride 2**30 makes an output of 2**31 + 1 rows
    with pytest.raises(ValueError, match=argument):
        F.conv_transpose2d(np.ones((1, 2, 3, 2)), np.ones((2, 3, 2, 3)), **kwargs)


# nn.Conv2d's padding modes copy the padded input: only the elements windows read.

_CONV_NN_MODES = ["replicate", "reflect", "circular"]


def _conv_nn_source(position, size, mode):
    """The input element a padded position (counted from the input's first) copies, by PyTorch's rules."""
    if mode == "replicate":
        return min(max(position, 0), size - 1)
    if mode == "circular":
        return position % size
    period = 2 * (size - 1)
    folded = position % period if period else 0
    return folded if folded < size else period - folded


def _conv_nn_reference(x, weight, bias, grad_out, stride, padding, dilation, mode):
    """(y, grad_x, grad_w) of a padding-mode convolution, from the definition, in float64 loops."""
    n, c_in, height, width = x.shape
    kernel_h, kernel_w = weight.shape[2:]
    out_h = (height + 2 * padding[0] - dilation[0] * (kernel_h - 1) - 1) // stride[0] + 1
    out_w = (width + 2 * padding[1] - dilation[1] * (kernel_w - 1) - 1) // stride[1] + 1
    x64, w64 = x.astype(np.float64), weight.astype(np.float64)
    y = np.zeros((n, weight.shape[0], out_h, out_w))
    grad_x, grad_w = np.zeros_like(x64), np.zeros_like(w64)
    for oh, ow, i, j in itertools.product(range(out_h), range(out_w), range(kernel_h), range(kernel_w)):
        ih = _conv_nn_source(oh * stride[0] - padding[0] + i * dilation[0], height, mode)
        iw = _conv_nn_source(ow * stride[1] - padding[1] + j * dilation[1], width, mode)
        y[..., oh, ow] += x64[..., ih, iw] @ w64[..., i, j].T
        grad_x[..., ih, iw] += grad_out[..., oh, ow] @ w64[..., i, j]
        grad_w[..., i, j] += grad_out[..., oh, ow].T @ x64[..., ih, iw]
    return y + bias[:, None, None], grad_x, grad_w


@pytest.mark.parametrize("mode", _CONV_NN_MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_nn_padding_modes_copy_only_what_is_read(conv_direct_mode, mode, dtype):
    """nn.Conv2d with replicate padding up to 2**31 - 1 (reflect and circular padding is at most the input),
    strides past a window and dilations: within the memory bound, equal to the definition."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 3, 4)).astype(dtype)
    if mode == "replicate":
        geometries = [((10**8, 10**8), (10**8, 10**8), (1, 1)), ((_CONV_HUGE, 1), (2**30, 1), (1, 1)),
                      ((10**4, 7), (10**4, 3), (10**4, 2)), ((1, 10**4), (1, 10**4), (1, 10**4))]
    else:
        geometries = [((5, 7), (2, 3), (1, 1)), ((1, 4), (2, 3), (1, 2)), ((3, 2), (1, 2), (2, 1))]
    for stride, padding, dilation in geometries:
        layer = nn.Conv2d(3, 4, (3, 2), stride=stride, padding=padding, dilation=dilation, padding_mode=mode,
                          dtype=dtype, rng=1)
        y = _conv_check_memory(lambda: layer(x), (x, *layer.params.values()))
        grad_out = rng.standard_normal(y.shape).astype(dtype)
        grad_x = _conv_check_memory(lambda: layer.backward(grad_out), (grad_out, x, *layer.params.values()))
        expected = _conv_nn_reference(x, layer.params["weight"], layer.params["bias"], grad_out.astype(np.float64),
                                      stride, padding, dilation, mode)
        for actual, want in zip((y, grad_x, layer.grads["weight"]), expected):
            assert_close(actual, want, dtype)
        assert_close(layer.grads["bias"], grad_out.astype(np.float64).sum(axis=(0, 2, 3)), dtype)


@pytest.mark.parametrize("padding, dilation", [(3000, 3001), (10**4, 10**4 + 1), (10**8 - 1, 10**8)])
def test_conv_nn_padding_mode_kernel_past_the_padded_input_is_refused_without_padding_it(padding, dilation):
    """A replicate-padded layer whose dilated kernel outreaches the padded input is refused naming the layer's
    padding and dilation, without the padded input being made to find that out (10**4 took 2.3 GiB and 9 s,
    10**8 a bare MemoryError for 142 PiB)."""
    layer = nn.Conv2d(1, 1, 3, padding=padding, dilation=dilation, padding_mode="replicate")
    x = np.ones((1, 1, 1, 1), dtype=np.float32)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="padding") as refusal:
            layer(x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(padding) in str(refusal.value) and str(dilation) in str(refusal.value), refusal.value
    assert "replicate" in str(refusal.value), refusal.value
    assert peak <= _CONV_SLACK, f"{peak / 2**20:.1f} MiB to refuse"


@pytest.mark.parametrize("mode", _CONV_NN_MODES)
def test_conv_nn_padding_modes_with_strides_past_the_window_match_torch(mode, torch):
    """Strides longer than the kernel (each window's taps copied side by side) and shorter (the padded input),
    against torch.nn.Conv2d's forward and gradients."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 4, 6, 7))
    for stride, padding, dilation in [((5, 6), (2, 3), (1, 1)), ((4, 1), (3, 2), (2, 1)), ((1, 2), (1, 1), (1, 3))]:
        ours = nn.Conv2d(4, 6, (2, 3), stride=stride, padding=padding, dilation=dilation, padding_mode=mode,
                         groups=2, dtype=np.float64, rng=3)
        theirs = torch.nn.Conv2d(4, 6, (2, 3), stride=stride, padding=padding, dilation=dilation,
                                 padding_mode=mode, groups=2).double()
        theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
        tx = torch.tensor(x, requires_grad=True)
        ty = theirs(tx)
        y = ours(x)
        assert_close(y, ty.detach().numpy())
        grad_out = rng.standard_normal(y.shape)
        ty.backward(torch.tensor(grad_out))
        assert_close(ours.backward(grad_out), tx.grad.numpy())
        assert_close(ours.grads["weight"], theirs.weight.grad.numpy())
        assert_close(ours.grads["bias"], theirs.bias.grad.numpy())


# ---------------------------------------------------------------------------------------------
# Pooling

MiB = 1 << 20
BIG = 2**31 - 1


def _pool_extra_memory(call, *inputs):
    """(the result of ``call()``, the peak bytes it allocated beyond the arrays it returned), and
    checks that against the bound: twice the inputs' bytes plus 64 MiB."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    returned = sum(a.nbytes for a in (result if isinstance(result, tuple) else (result,)))
    extra = peak - returned
    assert extra <= 2 * sum(np.asarray(a).nbytes for a in inputs) + 64 * MiB, (extra, returned)
    return result, extra


@pytest.fixture
def pool_threads():
    before = _threads.get_num_threads()
    yield _threads.set_num_threads
    _threads.set_num_threads(before)


# (kernel_size, stride, padding, dilation, ceil_mode) on a 3x3 (or 1x1) plane: strides, paddings,
# dilations and kernels up to 2^31 - 1, each with an output of at least one window.
POOL_GEOMETRIES = [
    ((3, 3), 3, 10_000, 0, 1, False),
    ((3, 3), 3, 32_768, 0, 1, True),
    ((3, 3), 3, BIG, 0, 1, False),
    ((3, 3), (1, 3), (BIG, 1), 0, 1, True),
    ((1, 1), 2049, 1, 1024, 1, False),
    ((1, 1), 4097, 1, 2048, 1, True),
    ((1, 1), BIG, 1, 2**30 - 1, 1, False),
    ((1, 1), BIG, None, 2**30 - 1, 1, True),
    ((3, 3), (BIG, 3), (1, BIG), (2**30 - 1, 1), 1, False),
    ((3, 3), 2, 1, 1, 2, True),
    ((40, 3), (2, 2), 1, 0, (39, 2), False),
    ((3, 300), (1, 2), (1, 5_000), 0, (1, 299), True),
    ((3, 3), (1, 2**20), (2**16, 1), (0, 2**19), 1, False),
]


def _pool_input(rng, plane, dtype):
    x = rng.integers(-3, 4, size=(1, 2, *plane)).astype(dtype)
    x.reshape(-1)[::5] = np.nan
    return x


@pytest.mark.parametrize("n_threads", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("plane, kernel_size, stride, padding, dilation, ceil_mode", POOL_GEOMETRIES)
def test_max_pool_memory_does_not_grow_with_the_window(
    rng, pool_threads, plane, kernel_size, stride, padding, dilation, ceil_mode, dtype, n_threads
):
    pool_threads(n_threads)
    x = _pool_input(rng, plane, dtype)
    args = (kernel_size, stride, padding, dilation, ceil_mode)
    (y, indices), _ = _pool_extra_memory(lambda: F.max_pool2d(x, *args, return_indices=True), x)
    expected_y, expected_indices = R.max_pool2d(x, *args, return_indices=True)
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(indices, expected_indices)
    grad, _ = _pool_extra_memory(lambda: F.max_pool2d_backward(y, indices, x.shape), y, indices)
    np.testing.assert_array_equal(grad, R.max_pool2d_backward(y, indices, x.shape))


@pytest.mark.parametrize("n_threads", [1, 3])
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("plane, kernel_size, stride, padding, dilation, ceil_mode",
                         [g for g in POOL_GEOMETRIES if g[4] == 1])
def test_avg_pool_memory_does_not_grow_with_the_window(
    rng, pool_threads, plane, kernel_size, stride, padding, dilation, ceil_mode, dtype, count_include_pad,
    n_threads,
):
    pool_threads(n_threads)
    x = rng.standard_normal((1, 2, *plane)).astype(dtype)
    args = (kernel_size, stride, padding, ceil_mode, count_include_pad)
    y, _ = _pool_extra_memory(lambda: F.avg_pool2d(x, *args), x)
    tolerance = dict(rtol=1e-5) if dtype == np.float32 else dict(rtol=1e-12)
    np.testing.assert_allclose(y, R.avg_pool2d(x, *args), **tolerance)
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    grad, _ = _pool_extra_memory(lambda: F.avg_pool2d_backward(grad_out, x.shape, *args), grad_out)
    np.testing.assert_allclose(grad, R.avg_pool2d_backward(grad_out, x.shape, *args), **tolerance)


def test_avg_pool_backward_of_the_issue(rng):
    # kernel 2^31 - 1, stride 1, padding 2^30 - 1 on a 1x1 plane: the forward worked, the backward
    # asked for 128 GiB of shares (a ring of kernel_h rows).
    grad_out = rng.standard_normal((1, 1, 1, 1))
    grad, extra = _pool_extra_memory(lambda: F.avg_pool2d_backward(grad_out, (1, 1, 1, 1), BIG, 1, 2**30 - 1), grad_out)
    np.testing.assert_allclose(grad, R.avg_pool2d_backward(grad_out, (1, 1, 1, 1), BIG, 1, 2**30 - 1))
    assert extra < MiB


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output_size", [1, (3, 1), (7, 11), (300, 2)])
def test_adaptive_pool_memory(rng, dtype, output_size):
    x = _pool_input(rng, (5, 4), dtype)
    (y, indices), _ = _pool_extra_memory(lambda: F.adaptive_max_pool2d(x, output_size, return_indices=True), x)
    expected_y, expected_indices = R.adaptive_max_pool2d(x, output_size, return_indices=True)
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(indices, expected_indices)
    x = rng.standard_normal(x.shape).astype(dtype)
    y, _ = _pool_extra_memory(lambda: F.adaptive_avg_pool2d(x, output_size), x)
    np.testing.assert_allclose(y, R.adaptive_avg_pool2d(x, output_size), rtol=1e-5)
    grad, _ = _pool_extra_memory(lambda: F.adaptive_avg_pool2d_backward(y, x.shape), y)
    np.testing.assert_allclose(grad, R.adaptive_avg_pool2d_backward(y, x.shape), rtol=1e-5)


def test_large_max_pool_scratch_stays_within_the_bound(rng, pool_threads):
    # A plane large enough that the bound is not mostly the 64 MiB slack: 2048x2048 float32
    # (16 MiB), one plane per thread, windows of each kernel.
    pool_threads(2)
    x = rng.standard_normal((1, 2, 2048, 2048)).astype(np.float32)
    transposed = x.transpose(0, 1, 3, 2)  # not contiguous: the call's copy counts too
    for args in [(3, 2, 1), (2, 2), (127, 1, 63), (9, 3, 4, 2), (5, 7, 2), ((2047, 3), 1, (1023, 1))]:
        _pool_extra_memory(lambda: F.max_pool2d(x, *args, return_indices=True), x)
        _pool_extra_memory(lambda: F.max_pool2d(transposed, *args), transposed)


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: F.adaptive_avg_pool2d(np.zeros((1, 1, 3, 3)), (BIG, BIG)), "output_size"),
        (lambda: F.adaptive_max_pool2d(np.zeros((1, 1, 3, 3)), BIG, return_indices=True), "output_size"),
        (lambda: F.adaptive_avg_pool2d_backward(np.zeros((1, 1, 1, 1)), (1, 1, BIG, BIG)), "input_shape"),
        (lambda: F.avg_pool2d_backward(np.zeros((1, 1, 1, 1)), (1, 1, BIG, BIG), BIG), "input_shape"),
    ],
)
def test_pool_refusals_for_size_name_the_argument(call, argument):
    with pytest.raises((ValueError, MemoryError), match=argument):
        call()


@pytest.mark.parametrize("output_size", [(1, 2**21), (2**21 + 3, 1)])
def test_adaptive_pool_memory_does_not_grow_with_output_size(rng, torch, output_size):
    # Windows are walked output by output, not laid out in arrays as long as the output's sides
    # (which for a 1 x 2^21 output were 96 MiB, three times the output, where the input is 80 bytes).
    x = _pool_input(rng, (5, 4), np.float32)
    (y, indices), extra = _pool_extra_memory(lambda: F.adaptive_max_pool2d(x, output_size, return_indices=True), x)
    expected_y, expected_indices = torch.nn.functional.adaptive_max_pool2d(torch.from_numpy(x), output_size, True)
    np.testing.assert_array_equal(y, expected_y.numpy())
    np.testing.assert_array_equal(indices, expected_indices.numpy())
    x = rng.standard_normal(x.shape).astype(np.float32)
    y, extra_avg = _pool_extra_memory(lambda: F.adaptive_avg_pool2d(x, output_size), x)
    np.testing.assert_allclose(y, torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), output_size).numpy(),
                               rtol=1e-6)
    xt = torch.from_numpy(x).requires_grad_(True)
    torch.nn.functional.adaptive_avg_pool2d(xt, output_size).backward(torch.from_numpy(y))
    grad, extra_backward = _pool_extra_memory(lambda: F.adaptive_avg_pool2d_backward(y, x.shape), y)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-5)
    assert max(extra, extra_avg, extra_backward) < MiB


def _pool_clipped_reference(x, kind, kernel, stride, sides, dilation, ceil_mode=False, count_include_pad=True):
    """Max (with indices) or average pooling with padding per side, from the taps of each window that
    fall inside the input (none of the padding is laid out, so any padding is cheap): the average
    divides by the taps inside the padded input (count_include_pad) or inside the input."""
    height, width = x.shape[-2:]
    out = []
    for size, k, s, (before, after), d in zip((height, width), kernel, stride, sides, dilation):
        numerator = size + before + after - d * (k - 1) - 1
        count = (-(-numerator // s) if ceil_mode else numerator // s) + 1
        if ceil_mode and (count - 1) * s >= size + before:
            count -= 1
        out.append(count)

    def taps(o, axis):
        start = o * stride[axis] - sides[axis][0]
        size = (height, width)[axis]
        first = max(0, -(start // dilation[axis]))  # the first tap at or after 0
        last = min(kernel[axis], -(-(size - start) // dilation[axis]))  # past the last tap before size
        inside = [start + t * dilation[axis] for t in range(first, last)]
        padded_end = size + sides[axis][1]
        padded = min(kernel[axis], -(-(padded_end - start) // dilation[axis]))
        return inside, padded

    y = np.empty((*x.shape[:2], *out), x.dtype)
    indices = np.empty(y.shape, np.int64)
    for oh, ow in itertools.product(range(out[0]), range(out[1])):
        rows, padded_rows = taps(oh, 0)
        cols, padded_cols = taps(ow, 1)
        window = x[:, :, rows][:, :, :, cols].reshape(*x.shape[:2], -1)
        if kind == "max":
            nan = np.isnan(window)
            # NaN wins (the last NaN), else the first maximum.
            last_nan = window.shape[-1] - 1 - np.argmax(nan[..., ::-1], axis=-1)
            best = np.where(nan.any(axis=-1), last_nan, np.argmax(np.where(nan, -np.inf, window), axis=-1))
            y[:, :, oh, ow] = np.take_along_axis(window, best[..., None], -1)[..., 0]
            flat = np.array([r * width + c for r in rows for c in cols])
            indices[:, :, oh, ow] = flat[best]
        else:
            divisor = padded_rows * padded_cols if count_include_pad else len(rows) * len(cols)
            y[:, :, oh, ow] = window.astype(np.float64).sum(axis=-1) / divisor
    return (y, indices) if kind == "max" else y


# (plane, kernel_size, stride, ((top, bottom), (left, right)) or a word, dilation, ceil_mode): padding
# per side up to dilation * (kernel_size - 1) of 2^31 - 1, on tiny planes.
POOL_SIDED_GEOMETRIES = [
    ((3, 3), BIG, 1, ((BIG - 1, 0), (0, BIG - 1)), 1, False),
    ((3, 3), 3, 2**20, ((2, 0), (0, 2)), 1, True),
    ((1, 1), (BIG, 1), (BIG, 1), ((BIG - 1, BIG - 1), (0, 0)), 1, False),
    ((3, 3), 3, (2**30, 1), ((2**30, 2**30), (0, 1)), (2**29, 1), False),
    ((3, 2), (3, 2), (2**30, 3), ((2**30, 0), (0, 3)), (2**29, 3), True),
    ((3, 3), 3, BIG, "same", 1, False),
    ((3, 3), 2**20, 1, "same_lower", 1, False),
    ((2, 3), (3, 2**19), (1, 2**19), "same", (1, 2), False),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("plane, kernel_size, stride, padding, dilation, ceil_mode", POOL_SIDED_GEOMETRIES)
def test_pooling_padded_per_side_memory(rng, plane, kernel_size, stride, padding, dilation, ceil_mode, dtype):
    x = _pool_input(rng, plane, dtype)
    pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
    kernel, strides, dilations = pair(kernel_size), pair(stride), pair(dilation)
    if isinstance(padding, str):
        sides = []
        for size, k, s, d in zip(plane, kernel, strides, dilations):
            total = max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
            sides.append((total // 2, total - total // 2) if padding == "same" else (total - total // 2, total // 2))
    else:
        sides = padding
    args = (kernel_size, stride, padding, dilation, ceil_mode)
    (y, indices), _ = _pool_extra_memory(lambda: F.max_pool2d(x, *args, return_indices=True), x)
    expected_y, expected_indices = _pool_clipped_reference(x, "max", kernel, strides, sides, dilations, ceil_mode)
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(indices, expected_indices)
    x = rng.standard_normal((1, 2, *plane)).astype(dtype)
    tolerance = dict(rtol=1e-5) if dtype == np.float32 else dict(rtol=1e-12)
    for count_include_pad in (True, False):
        kwargs = dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                      count_include_pad=count_include_pad, dilation=dilation)
        y, _ = _pool_extra_memory(lambda: F.avg_pool2d(x, **kwargs), x)
        expected = _pool_clipped_reference(x, "avg", kernel, strides, sides, dilations, ceil_mode, count_include_pad)
        np.testing.assert_allclose(y, expected, **tolerance)
        grad_out = rng.standard_normal(y.shape).astype(dtype)
        grad, _ = _pool_extra_memory(lambda: F.avg_pool2d_backward(grad_out, x.shape, **kwargs), grad_out)
        # The adjoint of a linear map: <avg(x), g> = <x, avg_backward(g)>.
        np.testing.assert_allclose(np.vdot(y.astype(np.float64), grad_out), np.vdot(x.astype(np.float64), grad),
                                   **tolerance)
