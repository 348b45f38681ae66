"""The depthwise loops of conv3d's two gradients, channels first (one input channel per group, any
channel multiplier): the weight gradient (convx_dw3d_weight, per (image, output channel) volume,
taken at stride 1 along W where grad_out is finite or no tap reaches the padding) and the input gradient
(convx_dw3d_input, per (image, input channel) volume, any stride): against the NumPy reference of
``convx.reference.conv3d`` and PyTorch, over strides, dilations, per-side and 'same' padding,
multipliers, bands of output rows, thread counts, NaN and inf, and the transposed convolution."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
torch = pytest.importorskip("torch")

import convx
from convx import _batching, _core, _threads
from convx.functional.conv3d import as_padding3d, padding_sides3d
from convx.reference import conv3d as ref
from conftest import DTYPES, assert_close

pytestmark = pytest.mark.usefixtures("torch_on_one_thread")

# float64 within 1e-12 of the oracles (sums of at most a few hundred products)
TIGHT = {np.dtype(np.float32): dict(rtol=2e-4, atol=2e-5), np.dtype(np.float64): dict(rtol=1e-12, atol=1e-12)}

# (input shape, weight shape, keywords): odd sizes; multipliers 1 to 3
CASES = {
    "3x3x3-pad-1": ((2, 4, 5, 6, 7), (4, 1, 3, 3, 3), dict(padding=1, groups=4)),
    "multiplier-2": ((1, 3, 5, 7, 9), (6, 1, 3, 3, 3), dict(padding=1, groups=3)),
    "strided-dilated-per-side": ((1, 3, 7, 8, 9), (6, 1, 3, 2, 3),
                                 dict(groups=3, stride=(2, 1, 2), dilation=(1, 2, 2),
                                      padding=((1, 0), (2, 1), (0, 2)))),
    "stride-2": ((2, 2, 7, 9, 11), (2, 1, 3, 3, 3), dict(stride=2, padding=1, groups=2)),
    "stride-3-multiplier-3": ((1, 2, 8, 7, 13), (6, 1, 2, 3, 3), dict(stride=(1, 3, 3), padding=(0, 1, 2), groups=2)),
    "strided-depth-and-height": ((2, 2, 9, 8, 7), (4, 1, 3, 3, 2), dict(stride=(2, 3, 1), padding=(1, 1, 0), groups=2)),
    "dilated-unpadded": ((1, 2, 7, 8, 9), (4, 1, 2, 3, 2), dict(dilation=2, groups=2)),
    "padding-beyond-the-kernel": ((1, 2, 3, 4, 5), (2, 1, 1, 2, 1), dict(padding=(1, 2, 1), groups=2)),
    "wider-than-input": ((1, 2, 2, 3, 2), (2, 1, 3, 3, 3), dict(groups=2, padding=2)),
    "same-even-kernel": ((1, 3, 4, 5, 6), (3, 1, 2, 2, 4), dict(padding="same", groups=3)),
    "one-slice-5x5": ((3, 2, 1, 9, 10), (2, 1, 1, 5, 5), dict(padding=(0, 2, 2), groups=2)),
}


def _weight_path(kwargs):
    """What the weight gradient takes: the loops, except strided along W (where the tiles share a
    tile's columns between a group's output channels)."""
    stride = kwargs.get("stride", 1)
    return "depthwise" if (stride if isinstance(stride, int) else stride[2]) == 1 else "tiles"


def _arrays(rng, name, dtype):
    x_shape, w_shape, kwargs = CASES[name]
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    bias = rng.standard_normal(w_shape[0]).astype(dtype)
    grad_out = rng.standard_normal(ref.conv3d(x, weight, **kwargs).shape).astype(dtype)
    return x, weight, bias, grad_out, kwargs


def _torch_conv3d(x, weight, bias, grad_out, kwargs):
    """PyTorch's output and gradients (x, weight, bias) of the convolution, its padding per side
    applied by F.pad (PyTorch's conv3d takes only symmetric padding)."""
    stride = kwargs.get("stride", 1)
    dilation = kwargs.get("dilation", 1)
    triple = (lambda v: (v, v, v) if isinstance(v, int) else tuple(v))
    sides = padding_sides3d(as_padding3d(kwargs.get("padding", 0)), x.shape[2:], weight.shape[2:], triple(stride),
                            triple(dilation))
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, weight, bias))
    padded = torch.nn.functional.pad(tx, (*sides[2], *sides[1], *sides[0]))
    y = torch.nn.functional.conv3d(padded, tw, tb, stride=stride, dilation=dilation, groups=kwargs["groups"])
    y.backward(torch.tensor(grad_out))
    return y.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CASES))
def test_gradients_run_depthwise_and_match_the_reference_and_pytorch(rng, name, dtype):
    x, weight, bias, grad_out, kwargs = _arrays(rng, name, dtype)
    grad_x, grad_w, grad_b = convx.conv3d_backward(grad_out, x, weight, **kwargs)
    assert _core.conv3d_ran()["input"] == "depthwise"
    assert _core.conv3d_ran()["weight"] == _weight_path(kwargs)
    expected_x = ref.conv3d_backward_input(grad_out, weight, x.shape, **kwargs)
    expected_w = ref.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs)
    assert_close(grad_x, expected_x, tolerances=TIGHT)
    assert_close(grad_w, expected_w, tolerances=TIGHT)
    # the single-gradient ops take the same loops
    assert_close(convx.conv3d_backward_input(grad_out, weight, x.shape, **kwargs), expected_x, tolerances=TIGHT)
    assert _core.conv3d_ran()["input"] == "depthwise"
    assert_close(convx.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs), expected_w, tolerances=TIGHT)
    assert _core.conv3d_ran()["weight"] == _weight_path(kwargs)
    y, torch_x, torch_w, torch_b = _torch_conv3d(x, weight, bias, grad_out, kwargs)
    assert_close(convx.conv3d(x, weight, bias, **kwargs), y, tolerances=TIGHT)
    assert_close(grad_x, torch_x, tolerances=TIGHT)
    assert_close(grad_w, torch_w, tolerances=TIGHT)
    assert_close(grad_b, torch_b, tolerances=TIGHT)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("band", ["one-row", "a-third"])
@pytest.mark.parametrize("name", ["3x3x3-pad-1", "multiplier-2", "strided-depth-and-height", "one-slice-5x5"])
def test_bands_of_output_rows(rng, monkeypatch, name, band, dtype):
    """A volume cut into bands of output rows (one row each, or about a third of the volume, so
    that bands start and end inside depth slices): each band adds its share of both gradients."""
    x, weight, _, grad_out, kwargs = _arrays(rng, name, dtype)
    whole_x, whole_w, _ = convx.conv3d_backward(grad_out, x, weight, **kwargs)
    per_image = _batching.conv_work(weight.shape, int(np.prod(grad_out.shape[2:])), x.shape)
    third = per_image // (3 * _threads.kernel_threads())
    monkeypatch.setattr(_batching, "SUB_BATCH_WORK", 1 if band == "one-row" else third)
    calls = []
    for op in ("conv3d_backward_input", "conv3d_backward_weight"):
        kernel = getattr(_core, op)
        monkeypatch.setattr(_core, op, lambda *args, kernel=kernel: calls.append(args[-3:-1]) or kernel(*args))
    grad_x, grad_w, _ = convx.conv3d_backward(grad_out, x, weight, **kwargs)
    assert len(calls) > 2 * x.shape[0]
    if band == "one-row":
        assert any(row0 % grad_out.shape[3] for row0, _ in calls)
    assert _core.conv3d_ran()["input"] == "depthwise"
    assert _core.conv3d_ran()["weight"] == "depthwise"
    assert_close(grad_x, ref.conv3d_backward_input(grad_out, weight, x.shape, **kwargs), tolerances=TIGHT)
    assert_close(grad_w, ref.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs), tolerances=TIGHT)
    assert_close(grad_x, whole_x, tolerances=TIGHT)
    assert_close(grad_w, whole_w, tolerances=TIGHT)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["3x3x3-pad-1", "multiplier-2", "strided-depth-and-height", "stride-2"])
def test_threads_give_the_same_bits(rng, monkeypatch, name, dtype):
    """Each (image, channel) volume is summed by one thread in a fixed order, and the weight
    gradient's volumes are added in image order: 1, 2 and 3 threads give the same bits (the
    W-strided weight gradient, on the tiles, equal to rounding)."""
    x, weight, _, grad_out, kwargs = _arrays(rng, name, dtype)
    x = np.concatenate([x] * 3)
    grad_out = np.concatenate([grad_out, 2 * grad_out, -grad_out])
    monkeypatch.setattr(_threads, "CONV_GRAIN", 1)
    before = _threads.get_num_threads()
    results = []
    try:
        for n_threads in (1, 2, 3):
            _threads.set_num_threads(n_threads)
            assert _threads.kernel_threads(10**6) == n_threads or not _core.openmp_enabled()
            results.append(convx.conv3d_backward(grad_out, x, weight, **kwargs)[:2])
            assert _core.conv3d_ran()["input"] == "depthwise"
            assert _core.conv3d_ran()["weight"] == _weight_path(kwargs)
    finally:
        _threads.set_num_threads(before)
    for grad_x, grad_w in results[1:]:
        np.testing.assert_array_equal(grad_x, results[0][0])
        if _weight_path(kwargs) == "depthwise":
            np.testing.assert_array_equal(grad_w, results[0][1])
        else:  # the tiles' per-thread partials: equal to rounding
            assert_close(grad_w, results[0][1], tolerances=TIGHT)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["3x3x3-pad-1", "multiplier-2", "one-slice-5x5"])
def test_weight_gradient_in_blocks_of_images(rng, monkeypatch, name, dtype):
    """The weight gradient takes the batch in blocks of images (``DW3D_WEIGHT_ITEMS`` (image, channel)
    volumes at least), adding each block's rows per channel in image order: one image per block, a
    block that does not divide the batch and the whole batch in one block give the same bits, and a
    NaN in a later block's grad_out (where taps reach the padding) still sends the gradient to the
    tiles, having added nothing."""
    x, weight, _, grad_out, kwargs = _arrays(rng, name, dtype)
    x = np.concatenate([x] * 5)
    grad_out = np.concatenate([grad_out, 2 * grad_out, -grad_out, 0.5 * grad_out, grad_out[:, ::-1]])
    channels = weight.shape[0]
    results = []
    for items in (1, 2 * channels, 10**6):
        monkeypatch.setattr(_core, "DW3D_WEIGHT_ITEMS", items)
        results.append(convx.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs))
        assert _core.conv3d_ran()["weight"] == "depthwise"
    for grad_w in results[1:]:
        np.testing.assert_array_equal(grad_w, results[0])
    assert_close(results[0], ref.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs), tolerances=TIGHT)
    monkeypatch.setattr(_core, "DW3D_WEIGHT_ITEMS", 1)
    grad_out[-1, 0, 0, 0, 0] = np.nan
    grad_w = convx.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs)
    assert _core.conv3d_ran()["weight"] == "tiles"
    _assert_same_non_finite(grad_w, ref.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs))


@pytest.mark.parametrize("dtype", DTYPES)
def test_weight_gradient_scratch_does_not_grow_with_the_batch(rng, dtype):
    """The weight gradient's scratch (rows of taps for one block of images, the per-channel totals,
    a row of column sums per thread) is the same at batch 4 and 64."""
    weight = rng.standard_normal((16, 1, 3, 3, 3)).astype(dtype)
    extras = []
    for batch in (4, 64):
        x = rng.standard_normal((batch, 16, 4, 5, 6)).astype(dtype)
        grad_out = rng.standard_normal((batch, 16, 4, 5, 6)).astype(dtype)
        tracemalloc.start()
        try:
            grad_w = convx.conv3d_backward_weight(grad_out, x, weight.shape, padding=1, groups=16)
            extras.append(tracemalloc.get_traced_memory()[1] - grad_w.nbytes)
        finally:
            tracemalloc.stop()
        assert _core.conv3d_ran()["weight"] == "depthwise"
    assert extras[1] <= extras[0] + 4096, extras


def _assert_same_non_finite(actual, expected):
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(actual), np.isinf(expected))
    finite = np.isfinite(expected)
    assert_close(actual[finite], expected[finite], tolerances=TIGHT)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["3x3x3-pad-1", "multiplier-2", "strided-depth-and-height"])
def test_non_finite_grad_out_with_padding(rng, name, dtype):
    """A NaN or inf in grad_out times the padding's zeros is NaN in the weight gradient, which the
    depthwise loops skip: the weight gradient takes the tiles; the input gradient, whose skipped
    products land outside the input, stays on the loops. NaN placement as the reference's."""
    x, weight, _, grad_out, kwargs = _arrays(rng, name, dtype)
    grad_out[0, 0, 0, 0, 0] = np.nan
    grad_out[0, -1, -1, -1, -1] = np.inf
    grad_x, grad_w, _ = convx.conv3d_backward(grad_out, x, weight, **kwargs)
    assert _core.conv3d_ran()["input"] == "depthwise"
    assert _core.conv3d_ran()["weight"] == "tiles"
    _assert_same_non_finite(grad_w, ref.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs))
    assert np.isnan(grad_w[0]).any() and np.isnan(grad_w[-1]).any()
    _assert_same_non_finite(grad_x, ref.conv3d_backward_input(grad_out, weight, x.shape, **kwargs))
    _, torch_x, torch_w, _ = _torch_conv3d(x, weight, np.zeros(weight.shape[0], dtype), grad_out, kwargs)
    np.testing.assert_array_equal(np.isnan(grad_w), np.isnan(torch_w))
    np.testing.assert_array_equal(np.isnan(grad_x), np.isnan(torch_x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_grad_out_without_padding_stays_on_the_loops(rng, dtype):
    """No tap reaches the padding: no product is skipped, whatever grad_out holds."""
    x, weight, _, grad_out, kwargs = _arrays(rng, "dilated-unpadded", dtype)
    grad_out[0, 1, 0, 1, 0] = np.nan
    grad_out[0, 3, 1, 0, 2] = -np.inf
    grad_x, grad_w, _ = convx.conv3d_backward(grad_out, x, weight, **kwargs)
    assert _core.conv3d_ran()["weight"] == "depthwise"
    assert _core.conv3d_ran()["input"] == "depthwise"
    _assert_same_non_finite(grad_w, ref.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs))
    _assert_same_non_finite(grad_x, ref.conv3d_backward_input(grad_out, weight, x.shape, **kwargs))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["3x3x3-pad-1", "multiplier-2", "strided-depth-and-height", "stride-2"])
def test_non_finite_input_and_weight(rng, name, dtype):
    """NaN and inf in x (the weight gradient) and in the weight (the input gradient): the loops
    compute every product whose tap lands in the input, as the reference keeps them."""
    x, weight, _, grad_out, kwargs = _arrays(rng, name, dtype)
    x[0, 0, 1, 1, 1] = np.nan
    x[0, -1, 0, 0, 0] = np.inf
    weight[0, 0, 0, 0, 0] = np.inf
    weight[-1, 0, 1, 1, 1] = np.nan
    grad_out[0, 0, 1, 1, 1] = 0.0  # inf times zero inside the input
    grad_x, grad_w, _ = convx.conv3d_backward(grad_out, x, weight, **kwargs)
    assert _core.conv3d_ran()["input"] == "depthwise"
    assert _core.conv3d_ran()["weight"] == _weight_path(kwargs)
    expected_x = ref.conv3d_backward_input(grad_out, weight, x.shape, **kwargs)
    assert np.isnan(expected_x).any()
    _assert_same_non_finite(grad_x, expected_x)
    _assert_same_non_finite(grad_w, ref.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs))


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch(dtype):
    x = np.zeros((0, 4, 3, 4, 5), dtype=dtype)
    weight = np.ones((8, 1, 3, 3, 3), dtype=dtype)
    grad_out = np.zeros((0, 8, 3, 4, 5), dtype=dtype)
    grad_x, grad_w, grad_b = convx.conv3d_backward(grad_out, x, weight, padding=1, groups=4)
    assert grad_x.shape == x.shape and grad_x.dtype == dtype
    np.testing.assert_array_equal(grad_w, np.zeros(weight.shape, dtype))
    np.testing.assert_array_equal(grad_b, np.zeros(8, dtype))


def test_gradients_add_into_what_the_kernel_is_given(rng):
    """The kernels add into grad_in and grad_weight (the public ops zero them once)."""
    x, weight, _, grad_out, kwargs = _arrays(rng, "multiplier-2", np.float64)
    args = (3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 3, 0, grad_out.shape[2] * grad_out.shape[3], 1)
    grad_x = np.full(x.shape, 0.5)
    _core.conv3d_backward_input(grad_out, weight.reshape(6, -1), grad_x, *args)
    assert _core.conv3d_ran()["input"] == "depthwise"
    assert_close(grad_x, 0.5 + ref.conv3d_backward_input(grad_out, weight, x.shape, **kwargs), tolerances=TIGHT)
    grad_w = np.full((6, 27), -1.5)
    _core.conv3d_backward_weight(grad_out, x, grad_w, *args)
    assert _core.conv3d_ran()["weight"] == "depthwise"
    assert_close(grad_w, -1.5 + ref.conv3d_backward_weight(grad_out, x, weight.shape, **kwargs).reshape(6, -1),
                 tolerances=TIGHT)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_transposed_convolution(rng, multiplier, dtype):
    """conv_transpose3d with one output channel per group is a depthwise convolution's input
    gradient, output_padding giving it more outputs than the convolution formula."""
    x = rng.standard_normal((2, 3 * multiplier, 4, 5, 3)).astype(dtype)
    weight = rng.standard_normal((3 * multiplier, 1, 3, 2, 3)).astype(dtype)
    bias = rng.standard_normal(3).astype(dtype)
    kwargs = dict(stride=(2, 1, 3), padding=(1, 0, 1), output_padding=(1, 0, 2), groups=3, dilation=(1, 2, 1))
    y = convx.conv_transpose3d(x, weight, bias, **kwargs)
    assert _core.conv3d_ran()["input"] == "depthwise"
    assert_close(y, ref.conv_transpose3d(x, weight, bias, **kwargs), tolerances=TIGHT)
    expected = torch.nn.functional.conv_transpose3d(torch.tensor(x), torch.tensor(weight), torch.tensor(bias),
                                                    **kwargs).numpy()
    assert_close(y, expected, tolerances=TIGHT)
