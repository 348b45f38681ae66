"""Channels-last convolutions (issue 20, item 1): ``layout='NHWC'`` on conv2d, its gradients and
conv_transpose2d, and ``layout='NWC'`` on the 1-D ops.

The reference is the same op in NCHW on ``np.moveaxis``'d data (itself checked against the NumPy
reference and PyTorch elsewhere), within the dtype's tolerance where the two layouts may take
different kernels, plus PyTorch on channels-last tensors for a grid of geometries. Every
implementation and instruction level is forced in turn (``ConvConfig``), and the tests check
which ran: the direct kernels and pointwise products read and write channels last themselves.
"""

import numpy as np
import pytest
from conftest import DTYPES, TOLERANCES, assert_close

import convx
import convx.functional as F
from convx import nn


def first(a):
    """Channels last -> channels first (a view)."""
    return np.moveaxis(a, -1, -3)


def last(a):
    return np.moveaxis(a, -3, -1)


pytestmark = pytest.mark.usefixtures("torch_on_one_thread")


# (x shape NHWC, weight shape, kwargs): direct rows and images, pointwise, strided 1x1, depthwise,
# groups, dilation, per-side and 'same' padding at stride 2, outputs cut off (padding > reach),
# lanes past C_out, a few channels.
GEOMETRIES = {
    "3x3": ((4, 11, 13, 16), (40, 16, 3, 3), dict(padding=1)),
    "3x3-narrow-rows": ((9, 5, 6, 8), (32, 8, 3, 3), dict(padding=1)),
    "strided-grouped": ((3, 10, 9, 12), (36, 6, 3, 3), dict(stride=2, padding=1, groups=2)),
    "pointwise": ((2, 7, 9, 24), (33, 24, 1, 1), {}),
    "pointwise-strided": ((2, 8, 9, 24), (16, 24, 1, 1), dict(stride=2)),
    "pointwise-wide-input": ((2, 5, 6, 256), (20, 256, 1, 1), {}),
    "depthwise": ((3, 9, 8, 6), (12, 1, 3, 3), dict(padding=1, groups=6)),
    "dilated": ((2, 12, 11, 5), (7, 5, 3, 2), dict(dilation=(2, 3), padding=(2, 1))),
    "per-side": ((2, 9, 10, 4), (6, 4, 3, 3), dict(padding=((0, 2), (1, 0)))),
    "same-stride2": ((3, 9, 12, 8), (20, 8, 4, 3), dict(stride=2, padding="same")),
    "cut-off": ((2, 3, 4, 3), (5, 3, 2, 2), dict(padding=5, stride=3)),
    "few-channels": ((5, 12, 12, 3), (4, 3, 5, 5), dict(padding=2)),
}


# what takes a channels-last input gradient without a copy: the direct kernels, or (few input
# channels) the channels-first tiles on transposed images
_DIRECT = ("direct-rows", "direct-images")
_LAST_INPUT = (*_DIRECT, "im2col")


def _arrays(rng, dtype, x_shape, w_shape):
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    bias = rng.standard_normal(w_shape[0]).astype(dtype)
    return x, weight, bias


def _every_config():
    for gemm in convx._core.supported_gemm_kernels():
        for direct in convx._core.DIRECT_MODES:
            yield gemm, direct


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_conv2d_nhwc_is_nchw_moved(geometry, dtype, rng):
    x_shape, w_shape, kwargs = GEOMETRIES[geometry]
    x, weight, bias = _arrays(rng, dtype, x_shape, w_shape)
    for gemm, direct in _every_config():
        with convx._core.ConvConfig(gemm, direct):
            y = F.conv2d(x, weight, bias, **kwargs, layout="NHWC")
            expected = last(F.conv2d(np.ascontiguousarray(first(x)), weight, bias, **kwargs))
            assert y.flags.c_contiguous and y.dtype == dtype
            assert_close(y, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_conv2d_nhwc_gradients_are_nchw_moved(geometry, dtype, rng):
    x_shape, w_shape, kwargs = GEOMETRIES[geometry]
    x, weight, bias = _arrays(rng, dtype, x_shape, w_shape)
    y_shape = F.conv2d(x, weight, **kwargs, layout="NHWC").shape
    grad_out = rng.standard_normal(y_shape).astype(dtype)
    for gemm, direct in _every_config():
        with convx._core.ConvConfig(gemm, direct):
            gx, gw, gb = F.conv2d_backward(grad_out, x, weight, **kwargs, layout="NHWC")
            rx, rw, rb = F.conv2d_backward(np.ascontiguousarray(first(grad_out)), np.ascontiguousarray(first(x)),
                                           weight, **kwargs)
            assert_close(gx, last(rx))
            assert_close(gw, rw)
            assert_close(gb, rb)
            assert_close(F.conv2d_backward_input(grad_out, weight, x.shape, **kwargs, layout="NHWC"), last(rx))
            assert_close(F.conv2d_backward_weight(grad_out, x, weight.shape, **kwargs, layout="NHWC"), rw)
            assert_close(F.conv2d_backward_bias(grad_out, layout="NHWC"), rb)


def test_pointwise_input_gradient_with_many_input_channels_is_one_product(rng, monkeypatch):
    # C_in >= POINTWISE_INPUT_PRODUCT_CHANNELS: the input gradient is the product of the pixels by
    # the weight (not the direct kernels, not the channels-first fallback), as the forward's 1x1 is.
    import convx.functional.conv as conv_module

    x_shape, w_shape, kwargs = GEOMETRIES["pointwise-wide-input"]
    assert w_shape[1] >= conv_module.POINTWISE_INPUT_PRODUCT_CHANNELS
    x, weight, _ = _arrays(rng, np.float32, x_shape, w_shape)
    grad_out = rng.standard_normal((*x_shape[:3], w_shape[0])).astype(np.float32)
    products = []
    real = conv_module.matmul
    monkeypatch.setattr(conv_module, "matmul", lambda *args: products.append(args[0].shape) or real(*args))
    monkeypatch.setattr(conv_module, "_layout_parts", lambda *args: pytest.fail("the channels-first fallback ran"))
    grad_x = F.conv2d_backward_input(grad_out, weight, x.shape, **kwargs, layout="NHWC")
    assert products == [(2 * 5 * 6, 20)]
    expected = F.conv2d_backward_input(np.moveaxis(grad_out, -1, 1), weight, np.moveaxis(x, -1, 1).shape, **kwargs)
    assert_close(grad_x, np.moveaxis(expected, 1, -1), np.float32)


@pytest.mark.parametrize(
    "geometry", ["3x3", "3x3-narrow-rows", "strided-grouped", "pointwise", "pointwise-strided", "dilated", "same-stride2"]
)
def test_channels_last_kernels_run_without_a_copy(geometry, rng, monkeypatch):
    # The direct kernels (and pointwise products) take these channels last; the tests above would
    # pass through the channels-first fallback too, so check that it was not taken, and which
    # kernel ran.
    import convx.functional.conv as conv_module

    x_shape, w_shape, kwargs = GEOMETRIES[geometry]
    x, weight, bias = _arrays(rng, np.float32, x_shape, w_shape)
    if len(convx._core.supported_gemm_kernels()) == 1:
        pytest.skip("BLAS only: no direct kernels on this CPU")

    def refuse(batch, image_elements):
        raise AssertionError("the channels-first fallback ran")

    monkeypatch.setattr(conv_module, "_layout_parts", refuse)
    y = F.conv2d(x, weight, bias, **kwargs, layout="NHWC")
    if w_shape[2:] != (1, 1):
        assert "direct" in convx._core.conv_ran()["forward"]
    F.conv2d_backward_input(y, weight, x.shape, **kwargs, layout="NHWC")
    assert convx._core.conv_ran()["input"].split("/")[1] in _LAST_INPUT
    F.conv2d_backward_weight(y, x, weight.shape, **kwargs, layout="NHWC")
    if w_shape[2:] != (1, 1):
        assert "direct" in convx._core.conv_ran()["weight"]


# A strided convolution's input gradient, channels last, is one stride-1 convolution per phase
# of the input (the pixels a stride apart): taps that reach no phase (1x1, stride 2), phases
# whose subgrid of taps differs in size (3x3 and 4x4 at stride 2 or 3), dilation sharing a
# factor with the stride, odd sizes, one-row images and groups.
STRIDED_INPUT_GRID = [
    # (N, H, W, C_in), (C_out, C_in / groups, kh, kw), stride, padding, dilation, groups
    ((3, 9, 10, 4), (6, 4, 3, 3), 2, 1, 1, 1),
    ((2, 9, 10, 4), (6, 4, 3, 3), 2, 0, 1, 1),
    ((2, 8, 11, 4), (5, 4, 1, 1), 2, 0, 1, 1),
    ((2, 8, 11, 4), (5, 4, 1, 1), (3, 2), 0, 1, 1),
    ((2, 13, 12, 3), (8, 3, 7, 7), 2, 3, 1, 1),
    ((2, 11, 9, 6), (4, 3, 4, 4), (3, 2), (1, 2), 1, 2),
    ((2, 12, 11, 5), (7, 5, 3, 2), (2, 3), (2, 1), (2, 3), 1),
    ((3, 1, 7, 8), (16, 8, 3, 3), 2, 1, 1, 1),
    ((2, 10, 10, 20), (24, 20, 2, 2), 2, 0, 1, 1),
    ((2, 9, 9, 4), (4, 4, 3, 3), 4, 0, 1, 1),
    ((9, 7, 7, 16), (48, 16, 3, 3), 2, 1, 1, 1),
    # phase 3 of each axis reads grad_out from its second row on (a negative padding, which the
    # kernels do not take): copied channels first
    ((2, 9, 9, 4), (4, 4, 3, 3), 4, 1, 1, 1),
]
_COPIED = {len(STRIDED_INPUT_GRID) - 1}


def _input_gradient_case(case, dtype, rng):
    """x's shape, weight, grad_out, the conv2d keywords and the reference input gradient (NHWC) of
    one grid case."""
    from convx.reference import conv as reference

    x_shape, w_shape, stride, padding, dilation, groups = case
    weight = rng.standard_normal(w_shape).astype(dtype)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    out_shape = F.conv2d(np.zeros(x_shape, dtype), weight, **kwargs, layout="NHWC").shape
    grad_out = rng.standard_normal(out_shape).astype(dtype)
    expected = last(reference.conv2d_backward_input(first(grad_out), weight, first(np.zeros(x_shape)).shape, **kwargs))
    return x_shape, weight, grad_out, kwargs, expected


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(STRIDED_INPUT_GRID)))
def test_strided_input_gradient_runs_by_phases(case, dtype, rng, monkeypatch, restore_threads):
    import convx.functional.conv as conv_module

    x_shape, weight, grad_out, kwargs, expected = _input_gradient_case(STRIDED_INPUT_GRID[case], dtype, rng)
    native = len(convx._core.supported_gemm_kernels()) > 1 and case not in _COPIED
    if native:

        def refuse(batch, image_elements):
            raise AssertionError("the channels-first fallback ran")

        monkeypatch.setattr(conv_module, "_layout_parts", refuse)
    # auto (few input channels go to the transposed-image tiles), then the phases forced
    for direct, threads in [("auto", 1), ("auto", 2), ("auto", 3), ("rows", 2), ("images", 3)]:
        convx.set_num_threads(threads)
        with convx._core.ConvConfig(direct=direct):
            grad_x = F.conv2d_backward_input(grad_out, weight, x_shape, **kwargs, layout="NHWC")
        assert grad_x.shape == x_shape and grad_x.dtype == dtype
        assert_close(grad_x, expected)
        if native:
            assert convx._core.conv_ran()["input"].split("/")[1] in (_LAST_INPUT if direct == "auto" else _DIRECT)


# Few input channels (a stem's 3): the input gradient by the channels-first im2col tiles, each
# image transposed into a buffer and back (no copy of the batch), at any stride, dilation and
# padding, with groups.
FEW_CHANNELS_GRID = [
    # (N, H, W, C_in), (C_out, C_in / groups, kh, kw), stride, padding, dilation, groups
    ((3, 12, 13, 3), (32, 3, 3, 3), 1, 1, 1, 1),
    ((2, 15, 14, 3), (24, 3, 7, 7), 2, 3, 1, 1),
    ((2, 9, 11, 4), (6, 2, 3, 3), 1, (2, 0), 2, 2),
    ((2, 10, 9, 2), (8, 2, 5, 4), (3, 2), ((0, 3), (2, 1)), 1, 1),
    ((1, 1, 7, 3), (5, 3, 3, 3), 1, 1, 1, 1),
    ((9, 6, 5, 8), (16, 8, 3, 3), 2, 0, 1, 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(FEW_CHANNELS_GRID)))
def test_few_channels_input_gradient_by_transposed_images(case, dtype, rng, monkeypatch, restore_threads):
    import convx.functional.conv as conv_module

    x_shape, weight, grad_out, kwargs, expected = _input_gradient_case(FEW_CHANNELS_GRID[case], dtype, rng)
    native = len(convx._core.supported_gemm_kernels()) > 1
    if native:

        def refuse(batch, image_elements):
            raise AssertionError("the channels-first fallback ran")

        monkeypatch.setattr(conv_module, "_layout_parts", refuse)
    results = []
    for threads in (1, 2, 3):
        convx.set_num_threads(threads)
        results.append(F.conv2d_backward_input(grad_out, weight, x_shape, **kwargs, layout="NHWC"))
        if native:
            assert convx._core.conv_ran()["input"].endswith("im2col")
        assert_close(results[-1], expected)
    # each image is one thread's: the same sums in the same order whatever the thread count
    assert all(np.array_equal(r, results[0]) for r in results[1:])
    # a non-finite weight or gradient spreads as through the channels-first path
    weight[0, 0, 0, 0] = np.nan
    grad_out[0, 0, 0, 0] = np.inf
    grad_x = F.conv2d_backward_input(grad_out, weight, x_shape, **kwargs, layout="NHWC")
    expected = last(F.conv2d_backward_input(np.ascontiguousarray(first(grad_out)), weight, first(np.zeros(x_shape)).shape,
                                            **kwargs))
    np.testing.assert_array_equal(np.isnan(grad_x), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(grad_x), np.isinf(expected))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_conv2d_nhwc_against_torch_channels_last(geometry, dtype, rng):
    torch = pytest.importorskip("torch")
    x_shape, w_shape, kwargs = GEOMETRIES[geometry]
    torch_kwargs, pads = dict(kwargs), None
    padding = kwargs.get("padding")
    if padding == "same" or (isinstance(padding, tuple) and isinstance(padding[0], tuple)):
        # PyTorch's conv2d takes neither: pad explicitly, (left, right, top, bottom) for F.pad.
        if padding == "same":
            stride = kwargs.get("stride", 1)
            sides = []
            for size, k in zip(x_shape[1:3], w_shape[2:]):
                total = max((-(-size // stride) - 1) * stride + k - size, 0)
                sides.append((total // 2, total - total // 2))
        else:
            sides = padding
        pads = (*sides[1], *sides[0])
        torch_kwargs["padding"] = 0
    x, weight, bias = _arrays(rng, dtype, x_shape, w_shape)
    tx = torch.tensor(np.ascontiguousarray(first(x))).to(memory_format=torch.channels_last).requires_grad_()
    tw = torch.tensor(weight).requires_grad_()
    tb = torch.tensor(bias).requires_grad_()
    ty = torch.nn.functional.conv2d(tx if pads is None else torch.nn.functional.pad(tx, pads), tw, tb,
                                    **torch_kwargs)
    grad_out = rng.standard_normal(ty.permute(0, 2, 3, 1).shape).astype(dtype)
    ty.backward(torch.tensor(np.ascontiguousarray(first(grad_out))))
    y = F.conv2d(x, weight, bias, **kwargs, layout="NHWC")
    gx, gw, gb = F.conv2d_backward(grad_out, x, weight, **kwargs, layout="NHWC")
    assert_close(y, ty.detach().permute(0, 2, 3, 1).numpy())
    assert_close(gx, tx.grad.permute(0, 2, 3, 1).numpy())
    assert_close(gw, tw.grad.numpy())
    assert_close(gb, tb.grad.numpy())


@pytest.mark.parametrize("activation", ["relu", "silu", "leaky_relu"])
@pytest.mark.parametrize("geometry", ["3x3", "pointwise", "depthwise", "cut-off"])
def test_conv2d_nhwc_activation_is_the_activation_after_it(geometry, activation, rng):
    x_shape, w_shape, kwargs = GEOMETRIES[geometry]
    x, weight, bias = _arrays(rng, np.float32, x_shape, w_shape)
    plain = F.conv2d(x, weight, bias, **kwargs, layout="NHWC")
    fused = F.conv2d(x, weight, bias, **kwargs, layout="NHWC", activation=activation)
    np.testing.assert_array_equal(fused, getattr(F, activation)(plain))


@pytest.mark.parametrize("geometry", ["3x3", "pointwise", "strided-grouped"])
def test_conv2d_nhwc_non_finite_values_as_nchw(geometry, rng):
    x_shape, w_shape, kwargs = GEOMETRIES[geometry]
    x, weight, bias = _arrays(rng, np.float64, x_shape, w_shape)
    x[0, 1, 2, :3] = [np.nan, np.inf, -np.inf]
    expected = last(F.conv2d(np.ascontiguousarray(first(x)), weight, bias, **kwargs))
    y = F.conv2d(x, weight, bias, **kwargs, layout="NHWC")
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    finite = np.isfinite(expected)
    assert_close(y[finite], expected[finite])
    weight[0, 0, 0, 0] = np.inf
    expected = last(F.conv2d(np.ascontiguousarray(first(x)), weight, bias, **kwargs))
    y = F.conv2d(x, weight, bias, **kwargs, layout="NHWC")
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))


@pytest.mark.parametrize("variant", ["unbatched", "empty", "non-contiguous", "read-only", "fortran"])
def test_conv2d_nhwc_input_variants(variant, rng):
    x, weight, bias = _arrays(rng, np.float64, (3, 7, 8, 5), (6, 5, 3, 3))
    if variant == "unbatched":
        y = F.conv2d(x[1], weight, bias, padding=1, layout="NHWC")
        assert y.shape == (7, 8, 6)
        assert_close(y, F.conv2d(x, weight, bias, padding=1, layout="NHWC")[1])
        gx = F.conv2d_backward_input(np.ones_like(y), weight, x[1].shape, padding=1, layout="NHWC")
        assert gx.shape == x[1].shape
        return
    if variant == "empty":
        y = F.conv2d(x[:0], weight, bias, padding=1, layout="NHWC")
        assert y.shape == (0, 7, 8, 6)
        gx, gw, gb = F.conv2d_backward(y, x[:0], weight, padding=1, layout="NHWC")
        assert gx.shape == (0, 7, 8, 5) and not gw.any() and not gb.any()
        return
    expected = F.conv2d(x, weight, bias, padding=1, layout="NHWC")
    if variant == "non-contiguous":
        wide = np.zeros((3, 7, 8, 10))
        wide[..., ::2] = x
        arg = wide[..., ::2]
    elif variant == "read-only":
        arg = x.copy()
        arg.flags.writeable = False
    else:
        arg = np.asfortranarray(x)
    before = arg.copy()
    assert_close(F.conv2d(arg, weight, bias, padding=1, layout="NHWC"), expected)
    np.testing.assert_array_equal(arg, before)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_conv2d_nhwc_thread_counts_agree(n_threads, rng):
    x, weight, bias = _arrays(rng, np.float32, (5, 9, 9, 16), (32, 16, 3, 3))
    previous = convx.get_num_threads()
    convx.set_num_threads(n_threads)
    try:
        y = F.conv2d(x, weight, bias, padding=1, layout="NHWC")
        gx = F.conv2d_backward_input(y, weight, x.shape, padding=1, layout="NHWC")
    finally:
        convx.set_num_threads(previous)
    assert_close(y, last(F.conv2d(np.ascontiguousarray(first(x)), weight, bias, padding=1)))
    assert_close(gx, last(F.conv2d_backward_input(np.ascontiguousarray(first(y)), weight, first(x).shape, padding=1)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kwargs", [dict(stride=2, padding=1, output_padding=1), dict(stride=2, padding="same"),
                                    dict(groups=2, dilation=2), dict(stride=3, output_size=(3, 13, 16, 4))])
def test_conv_transpose2d_nhwc_is_nchw_moved(kwargs, dtype, rng):
    x = rng.standard_normal((3, 4, 5, 6)).astype(dtype)
    weight = rng.standard_normal((6, 2, 3, 3)).astype(dtype)
    bias = rng.standard_normal(4 if kwargs.get("groups") == 2 else 2).astype(dtype)
    if kwargs.get("groups") != 2:
        weight = rng.standard_normal((6, 4, 3, 3)).astype(dtype)
        bias = rng.standard_normal(4).astype(dtype)
    nchw = dict(kwargs)
    if "output_size" in nchw:
        nchw["output_size"] = kwargs["output_size"][1:3]
    y = F.conv_transpose2d(x, weight, bias, **kwargs, layout="NHWC")
    expected = last(F.conv_transpose2d(np.ascontiguousarray(first(x)), weight, bias, **nchw))
    assert_close(y, expected)


@pytest.mark.parametrize("kwargs", [dict(stride=2, padding=1, output_padding=1), dict(stride=2, padding="same"),
                                    dict(groups=2, dilation=2), dict(stride=3, output_size=(13, 16)), {}])
def test_conv_transpose2d_nhwc_runs_without_a_copy(kwargs, rng, monkeypatch):
    # conv_transpose2d is conv2d's input gradient: channels last, the same direct kernels take it.
    import convx.functional.conv as conv_module

    if len(convx._core.supported_gemm_kernels()) == 1:
        pytest.skip("BLAS only: no direct kernels on this CPU")
    groups = kwargs.get("groups", 1)
    x = rng.standard_normal((3, 4, 5, 16)).astype(np.float32)
    weight = rng.standard_normal((16, 24 // groups, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(24).astype(np.float32)
    expected = last(F.conv_transpose2d(np.ascontiguousarray(first(x)), weight, bias, **kwargs))

    def refuse(batch, image_elements):
        raise AssertionError("the channels-first fallback ran")

    monkeypatch.setattr(conv_module, "_layout_parts", refuse)
    assert_close(F.conv_transpose2d(x, weight, bias, **kwargs, layout="NHWC"), expected)
    assert convx._core.conv_ran()["input"].split("/")[1] in _LAST_INPUT


def test_layout_errors_name_the_layout(rng):
    x, weight, _ = _arrays(rng, np.float32, (2, 9, 9, 3), (8, 3, 3, 3))
    with pytest.raises(ValueError, match=r"layout must be 'NCHW' \(channels first, PyTorch's\) or 'NHWC'"):
        F.conv2d(x, weight, layout="nhwc")
    with pytest.raises(ValueError, match=r"layout must be"):
        F.conv2d_backward(x, x, weight, layout=None)
    # an NHWC array passed as NCHW, and the other way round
    with pytest.raises(ValueError, match=r"x read as \(N, C_in, H, W\), layout='NCHW'; if it is \(N, H, W, C_in\), "
                                         r"pass layout='NHWC'"):
        F.conv2d(x, weight)
    with pytest.raises(ValueError, match=r"x read as \(N, H, W, C_in\), layout='NHWC'"):
        F.conv2d(np.ascontiguousarray(first(x)), weight, layout="NHWC")
    y = F.conv2d(x, weight, layout="NHWC")
    with pytest.raises(ValueError, match=r"grad_out must have the forward output's shape \(2, 7, 7, 8\)"):
        F.conv2d_backward_weight(np.ascontiguousarray(first(y)), x, weight.shape, layout="NHWC")
    with pytest.raises(ValueError, match="layout must be"):
        F.conv2d_backward_bias(y, layout="HWC")


def test_nhwc_keeps_memory_bounded(rng, monkeypatch):
    # The channels-first fallback copies parts of the batch, never the whole of it.
    import convx.functional.conv as conv_module

    monkeypatch.setattr(conv_module, "_LAYOUT_PART_ELEMENTS", 1)
    parts = []
    original = conv_module._layout_parts

    def spy(batch, image_elements):
        for part in original(batch, image_elements):
            parts.append(part)
            yield part

    monkeypatch.setattr(conv_module, "_layout_parts", spy)
    x, weight, bias = _arrays(rng, np.float64, (6, 5, 5, 3), (4, 1, 3, 3))  # depthwise-like groups=3 fallback
    weight = rng.standard_normal((6, 1, 3, 3))
    bias = rng.standard_normal(6)
    y = F.conv2d(x, weight, bias, padding=1, groups=3, layout="NHWC")
    assert len(parts) == 6 // convx.get_num_threads() or len(parts) >= 3
    assert_close(y, last(F.conv2d(np.ascontiguousarray(first(x)), weight, bias, padding=1, groups=3)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv1d_nwc_is_ncw_moved(dtype, rng):
    x = rng.standard_normal((3, 17, 6)).astype(dtype)
    weight = rng.standard_normal((8, 3, 5)).astype(dtype)
    bias = rng.standard_normal(8).astype(dtype)
    kwargs = dict(stride=2, padding=2, groups=2)
    ncw = np.ascontiguousarray(np.moveaxis(x, -1, -2))
    y = F.conv1d(x, weight, bias, **kwargs, layout="NWC")
    assert_close(y, np.moveaxis(F.conv1d(ncw, weight, bias, **kwargs), -2, -1))
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    gx, gw, gb = F.conv1d_backward(grad_out, x, weight, **kwargs, layout="NWC")
    rx, rw, rb = F.conv1d_backward(np.ascontiguousarray(np.moveaxis(grad_out, -1, -2)), ncw, weight, **kwargs)
    assert_close(gx, np.moveaxis(rx, -2, -1))
    assert_close(gw, rw)
    assert_close(gb, rb)
    with pytest.raises(ValueError, match="layout must be 'NCW'"):
        F.conv1d(x, weight, layout="NHWC")


@pytest.mark.parametrize("dtype", DTYPES)
def test_nn_conv2d_nhwc_matches_nchw(dtype, rng):
    layer = nn.Conv2d(6, 10, 3, stride=2, padding=1, dtype=dtype, layout="NHWC")
    ref = nn.Conv2d(6, 10, 3, stride=2, padding=1, dtype=dtype)
    ref.load_state_dict(layer.state_dict())
    assert "layout='NHWC'" in repr(layer)
    x = rng.standard_normal((4, 9, 11, 6)).astype(dtype)
    y = layer(x)
    assert_close(y, last(ref(np.ascontiguousarray(first(x)))))
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    gx = layer.backward(grad_out)
    rx = ref.backward(np.ascontiguousarray(first(grad_out)))
    assert_close(gx, last(rx))
    for key in ("weight", "bias"):
        assert_close(layer.grads[key] if hasattr(layer, "grads") else layer._grads[key],
                     ref.grads[key] if hasattr(ref, "grads") else ref._grads[key])
    with pytest.raises(ValueError, match="layout must be"):
        nn.Conv2d(3, 4, 3, layout="CHWN")


@pytest.mark.parametrize("dtype", DTYPES)
def test_nn_conv_transpose2d_nhwc_matches_nchw(dtype, rng):
    layer = nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1, dtype=dtype, layout="NHWC")
    ref = nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1, dtype=dtype)
    ref.load_state_dict(layer.state_dict())
    assert "layout='NHWC'" in repr(layer)
    x = rng.standard_normal((3, 5, 7, 6)).astype(dtype)
    y = layer(x)
    assert y.shape == (3, 10, 14, 4)
    assert_close(y, last(ref(np.ascontiguousarray(first(x)))))
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    assert_close(layer.backward(grad_out), last(ref.backward(np.ascontiguousarray(first(grad_out)))))
    for key in ("weight", "bias"):
        assert_close(layer.grads[key], ref.grads[key])
    assert layer(x, output_size=(3, 9, 13, 4)).shape == (3, 9, 13, 4)


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_nn_conv2d_nhwc_padding_modes(padding_mode, rng):
    layer = nn.Conv2d(3, 5, 3, padding=2, padding_mode=padding_mode, dtype=np.float64, layout="NHWC")
    ref = nn.Conv2d(3, 5, 3, padding=2, padding_mode=padding_mode, dtype=np.float64)
    ref.load_state_dict(layer.state_dict())
    x = rng.standard_normal((2, 6, 7, 3))
    y = layer(x)
    assert_close(y, last(ref(np.ascontiguousarray(first(x)))))
    grad_out = rng.standard_normal(y.shape)
    assert_close(layer.backward(grad_out), last(ref.backward(np.ascontiguousarray(first(grad_out)))))
    assert_close(layer.grads["weight"], ref.grads["weight"])


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_nn_conv1d_nwc_matches_ncw(padding_mode, rng):
    layer = nn.Conv1d(4, 6, 3, padding=1, padding_mode=padding_mode, dtype=np.float64, layout="NWC")
    ref = nn.Conv1d(4, 6, 3, padding=1, padding_mode=padding_mode, dtype=np.float64)
    ref.load_state_dict(layer.state_dict())
    assert "layout='NWC'" in repr(layer)
    x = rng.standard_normal((3, 11, 4))
    y = layer(x)
    assert_close(y, np.moveaxis(ref(np.ascontiguousarray(np.moveaxis(x, -1, -2))), -2, -1))
    grad_out = rng.standard_normal(y.shape)
    assert_close(layer.backward(grad_out),
                 np.moveaxis(ref.backward(np.ascontiguousarray(np.moveaxis(grad_out, -1, -2))), -2, -1))
    assert_close(layer.grads["weight"], ref.grads["weight"])
    with pytest.raises(ValueError, match=r"expects 4 input channels, got x of shape \(3, 4, 11\) with 11 channels "
                                         r"\(layout \(N, L, C\) or \(L, C\)\)"):
        layer(np.ascontiguousarray(np.moveaxis(x, -1, -2)))


@pytest.mark.parametrize("kernel", [1, 3])
def test_nhwc_huge_padding_and_stride_stay_small(kernel, rng):
    # The NCHW ops cut off the outputs that read padding only (a padding of 10**8 would otherwise
    # be copied); channels last takes the same plan.
    x = rng.standard_normal((2, 1, 1, 2))
    weight = rng.standard_normal((3, 2, kernel, kernel))
    kwargs = dict(padding=10**8, stride=10**8)
    y = F.conv2d(x, weight, **kwargs, layout="NHWC")
    assert_close(y, last(F.conv2d(np.ascontiguousarray(first(x)), weight, **kwargs)))
    gx, gw, gb = F.conv2d_backward(np.ones_like(y), x, weight, **kwargs, layout="NHWC")
    rx, rw, rb = F.conv2d_backward(np.ones_like(first(y)), np.ascontiguousarray(first(x)), weight, **kwargs)
    assert_close(gx, last(rx))
    assert_close(gw, rw)


# Depthwise convolutions with one filter per channel (weight (C, 1, kH, kW), groups=C): their own
# channels-last kernels. (x shape NHWC, kernel, kwargs).
DEPTHWISE = {
    "3x3": ((3, 9, 8, 37), (3, 3), dict(padding=1)),
    "3x3-stride2": ((2, 11, 10, 20), (3, 3), dict(stride=2, padding=1)),
    "5x5": ((2, 8, 9, 16), (5, 5), dict(padding=2)),
    "dilated": ((2, 12, 11, 7), (3, 3), dict(dilation=2, padding=2)),
    "per-side": ((2, 9, 10, 12), (3, 2), dict(padding=((0, 2), (1, 0)))),
    "strided-asymmetric": ((2, 10, 13, 9), (2, 4), dict(stride=(3, 2), padding=(1, 2), dilation=(1, 2))),
    "1x1": ((3, 5, 6, 40), (1, 1), {}),
    "kernel-past-image": ((2, 3, 4, 5), (7, 7), dict(padding=3)),
    "one-channel-block": ((1, 6, 6, 64), (3, 3), dict(padding=1)),
    "padding-past-reach": ((2, 9, 8, 10), (3, 3), dict(padding=3)),  # kept whole: 9 of 11 rows read x
}


def _depthwise_arrays(rng, dtype, geometry):
    x_shape, kernel, kwargs = DEPTHWISE[geometry]
    x, weight, bias = _arrays(rng, dtype, x_shape, (x_shape[3], 1, *kernel))
    return x, weight, bias, dict(kwargs, groups=x_shape[3])


def _moved(x):
    return np.ascontiguousarray(first(x))


@pytest.fixture
def restore_threads():
    original = convx.get_num_threads()
    yield
    convx.set_num_threads(original)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", list(DEPTHWISE))
def test_depthwise_nhwc_is_nchw_moved(geometry, dtype, threads, rng, restore_threads):
    convx.set_num_threads(threads)
    x, weight, bias, kwargs = _depthwise_arrays(rng, dtype, geometry)
    y = F.conv2d(x, weight, bias, **kwargs, layout="NHWC")
    assert y.flags.c_contiguous and y.dtype == dtype
    assert_close(y, last(F.conv2d(_moved(x), weight, bias, **kwargs)))
    relu = F.conv2d(x, weight, bias, **kwargs, layout="NHWC", activation="relu")
    assert_close(relu, last(F.conv2d(_moved(x), weight, bias, **kwargs, activation="relu")))
    np.testing.assert_array_equal(relu, F.relu(y))
    assert_close(F.conv2d(x, weight, **kwargs, layout="NHWC"), last(F.conv2d(_moved(x), weight, **kwargs)))
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    rx, rw, rb = F.conv2d_backward(_moved(grad_out), _moved(x), weight, **kwargs)
    gx, gw, gb = F.conv2d_backward(grad_out, x, weight, **kwargs, layout="NHWC")
    assert_close(gx, last(rx))
    assert_close(gw, rw)
    assert_close(gb, rb)
    assert_close(F.conv2d_backward_input(grad_out, weight, x.shape, **kwargs, layout="NHWC"), last(rx))
    assert_close(F.conv2d_backward_weight(grad_out, x, weight.shape, **kwargs, layout="NHWC"), rw)


def test_depthwise_nhwc_weight_gradient_does_not_depend_on_the_threads(rng, restore_threads):
    x, weight, _, kwargs = _depthwise_arrays(rng, np.float32, "3x3")
    x = np.repeat(x, 30, axis=0)
    grad_out = rng.standard_normal(x.shape).astype(np.float32)
    results = []
    for threads in (1, 2, 3):
        convx.set_num_threads(threads)
        results.append(F.conv2d_backward_weight(grad_out, x, weight.shape, **kwargs, layout="NHWC"))
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


@pytest.mark.parametrize("where", ["x", "weight", "weight-padding-only", "grad_out"])
@pytest.mark.parametrize("geometry", ["3x3", "3x3-stride2", "per-side", "kernel-past-image", "1x1"])
def test_depthwise_nhwc_non_finite_values_as_nchw(geometry, where, rng):
    x, weight, bias, kwargs = _depthwise_arrays(rng, np.float64, geometry)
    grad_out = rng.standard_normal(F.conv2d(x, weight, **kwargs, layout="NHWC").shape)
    if where == "x":
        x[0, 1, 2, :3] = [np.nan, np.inf, -np.inf]
    elif where == "weight":
        weight[:3, 0, 0, 0] = [np.nan, np.inf, -np.inf]
    elif where == "weight-padding-only":
        # the corner taps of a padded kernel read padding at the image's corners: NaN there only
        weight[1, 0, -1, -1] = np.inf
    else:
        grad_out[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
        grad_out[-1, -1, -1, -1] = np.inf
    y = F.conv2d(x, weight, bias, **kwargs, layout="NHWC")
    expected = last(F.conv2d(_moved(x), weight, bias, **kwargs))
    rx, rw, rb = F.conv2d_backward(_moved(grad_out), _moved(x), weight, **kwargs)
    gx, gw, gb = F.conv2d_backward(grad_out, x, weight, **kwargs, layout="NHWC")
    for actual, reference in [(y, expected), (gx, last(rx)), (gw, rw), (gb, rb),
                              (F.conv2d_backward_input(grad_out, weight, x.shape, **kwargs, layout="NHWC"), last(rx)),
                              (F.conv2d_backward_weight(grad_out, x, weight.shape, **kwargs, layout="NHWC"), rw)]:
        np.testing.assert_array_equal(np.isnan(actual), np.isnan(reference))
        np.testing.assert_array_equal(np.isinf(actual), np.isinf(reference))
        finite = np.isfinite(reference)
        assert_close(actual[finite], reference[finite])


@pytest.mark.parametrize("geometry", list(DEPTHWISE))
def test_depthwise_nhwc_runs_without_a_copy(geometry, rng, monkeypatch):
    import convx.functional.conv as conv_module

    x, weight, bias, kwargs = _depthwise_arrays(rng, np.float32, geometry)

    def refuse(batch, image_elements):
        raise AssertionError("the channels-first fallback ran")

    monkeypatch.setattr(conv_module, "_layout_parts", refuse)
    y = F.conv2d(x, weight, bias, **kwargs, layout="NHWC", activation="relu")
    F.conv2d_backward_input(y, weight, x.shape, **kwargs, layout="NHWC")
    F.conv2d_backward_weight(y, x, weight.shape, **kwargs, layout="NHWC")
    F.conv2d_backward(y, x, weight, **kwargs, layout="NHWC")
    if weight.shape[2:] != (1, 1):
        assert all(convx._core.conv_ran()[op] == "depthwise-direct" for op in ("forward", "input", "weight"))


def test_depthwise_nhwc_kernels_decline_other_multipliers(rng):
    # two filters per channel: the channels-last kernels say no, and the fallback computes it
    x = rng.standard_normal((2, 6, 6, 4))
    weight = rng.standard_normal((8, 1, 3, 3))
    out = np.zeros((2, 6, 6, 8))
    assert not convx._core.depthwise_forward_channels_last(x, weight, np.empty(0), out, 1, 1, 1, 1, 1, 1, 4, 1)
    assert not out.any()
    assert_close(F.conv2d(x, weight, padding=1, groups=4, layout="NHWC"),
                 last(F.conv2d(_moved(x), weight, padding=1, groups=4)))


@pytest.mark.parametrize("training", [True, False])
def test_nhwc_sequential_fuses_as_nchw(training, rng):
    # Conv2d + BatchNorm2d (folded in evaluation) + ReLU, MaxPool2d, Conv2d 1x1 + ReLU, channels
    # last against the same layers channels first.
    def build(layout):
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, dtype=np.float64, layout=layout),
                             nn.BatchNorm2d(8, dtype=np.float64, layout=layout), nn.ReLU(),
                             nn.MaxPool2d(2, layout=layout), nn.Conv2d(8, 4, 1, dtype=np.float64, layout=layout),
                             nn.ReLU())
    ref_net, last_net = build("NCHW"), build("NHWC")
    last_net.load_state_dict(ref_net.state_dict())
    x = rng.standard_normal((4, 3, 10, 10))
    x_last = np.ascontiguousarray(last(x))
    if not training:
        ref_net(x), last_net(x_last)  # running statistics, in training mode
        ref_net.eval(), last_net.eval()
    y = last_net(x_last)
    assert_close(y, last(ref_net(x)))
    if training:
        grad_out = rng.standard_normal(y.shape)
        assert_close(last_net.backward(grad_out), last(ref_net.backward(np.ascontiguousarray(first(grad_out)))))


def test_nhwc_batch_norm_of_another_layout_is_not_folded(rng):
    net = nn.Sequential(nn.Conv2d(3, 4, 1, dtype=np.float64, layout="NHWC"), nn.BatchNorm2d(4, dtype=np.float64))
    net.eval()
    with pytest.raises(ValueError, match="expects 4"):
        net(rng.standard_normal((2, 5, 5, 3)))
