"""Channels-last batch normalisation: ``layout='NHWC'`` (and 'NWC', 'NDHWC') of batch_norm,
batch_norm_forward and batch_norm_backward, and nn.BatchNorm2d / nn.BatchNorm1d's ``layout``.

The reference is the channels-first path on the same data moved to (N, C, H, W) (itself tested
against formulas and PyTorch in test_batch_norm.py), plus PyTorch on channels_last tensors, the
formulas of convx.reference.normalization, and central differences in float64. Both layouts sum
in float64 but in another order, so results agree to rounding, within TOLERANCES (relative to the
largest expected magnitude): float64 1e-12, float32 2e-6 (a few units in the last place: the
statistics rounded to float32 may differ by one unit). Evaluation-mode outputs, which sum
nothing, are compared within the same bounds.
"""

from __future__ import annotations

import numpy as np
import pytest

import convx
import convx._batching
from convx import nn
from convx.functional import batch_norm, batch_norm_backward, batch_norm_forward
from convx.reference import normalization as R

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["float32", "float64"]
TOLERANCES = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-12}
# (N, H, W, C): odd sizes, C = 1, N = 1, H = W = 1, a C whose period is longer than C (3), one
# longer than an element-wise block (4100), and C = 130 (not a multiple of any vector width).
SHAPES = [(2, 5, 7, 3), (3, 4, 3, 1), (1, 6, 5, 8), (9, 1, 1, 4), (2, 3, 3, 130), (2, 1, 2, 4100), (4, 8, 8, 32)]
# Activations whose backward reads their output (the fused backward's condition).
ACTIVATIONS = [None, ("relu", None), ("leaky_relu", {"negative_slope": 0.2}), ("sigmoid", None), ("elu", None)]


@pytest.fixture
def restore_threads():
    original = convx.get_num_threads()
    yield original
    convx.set_num_threads(original)


def _first(array):
    """(N, ..., C) -> (N, C, ...), C-contiguous."""
    return np.ascontiguousarray(np.moveaxis(array, -1, 1))


def _last(array):
    """(N, C, ...) -> (N, ..., C)."""
    return np.moveaxis(array, 1, -1)


def _close(actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if expected.dtype.kind != "f":
        np.testing.assert_array_equal(actual, expected)
        return
    finite = np.isfinite(expected)
    scale = max(1.0, float(np.abs(expected[finite]).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOLERANCES[expected.dtype] * scale)


def _arrays(rng, shape, dtype, channel_axis=-1):
    """x, grad_out (N, ..., C), weight, bias, running_mean, running_var."""
    channels = shape[channel_axis]
    x = (2.0 + 3.0 * rng.standard_normal(shape)).astype(dtype)
    grad_out = rng.standard_normal(shape).astype(dtype)
    weight = rng.uniform(0.5, 1.5, channels).astype(dtype)
    bias = rng.standard_normal(channels).astype(dtype)
    running_mean = rng.standard_normal(channels).astype(dtype)
    running_var = rng.uniform(0.5, 2.0, channels).astype(dtype)
    return x, grad_out, weight, bias, running_mean, running_var


def _activation_kwargs(activation):
    if activation is None:
        return {}
    name, params = activation
    return {"activation": name, "activation_params": params}


# --------------------------------------------------------------------------- the functional
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=lambda a: "none" if a is None else a[0])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_channels_first_on_moved_data(shape, training, affine, activation, dtype, rng):
    x, grad_out, weight, bias, running_mean, running_var = _arrays(rng, shape, dtype)
    if not affine:
        weight = bias = None
    act = _activation_kwargs(activation)
    results = {}
    for layout, data, grad in (("NHWC", x, grad_out), ("NCHW", _first(x), _first(grad_out))):
        running = [running_mean.copy(), running_var.copy()]
        y, mean, inv_std = batch_norm_forward(data, *running, weight, bias, training, 0.3, 1e-5, layout=layout, **act)
        shift = {} if activation is None else {"bias": bias}
        grads = batch_norm_backward(grad, data, mean, inv_std, weight, training, layout=layout, **act, **shift)
        outputs = {} if activation is None else {"output": y}
        from_output = batch_norm_backward(grad, data, mean, inv_std, weight, training, layout=layout, **act, **outputs)
        results[layout] = (y, mean, inv_std, *running, *grads, *from_output)
    nhwc, nchw = results["NHWC"], results["NCHW"]
    for index in (0, 5, 8):  # y, grad_x (recomputed output), grad_x (stored output)
        assert nhwc[index].shape == shape
        _close(_first(nhwc[index]), nchw[index])
    for actual, expected in zip(nhwc, nchw):
        if actual is None or expected is None:
            assert actual is None and expected is None
        elif actual.ndim == 1:
            _close(actual, expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (2, 7, 1, 3), (16, 2, 2, 1)], ids=str)
def test_matches_the_formulas(shape, dtype, rng):
    x, grad_out, weight, bias, running_mean, running_var = _arrays(rng, shape, dtype)
    running = [running_mean.copy(), running_var.copy()]
    y, mean, inv_std = batch_norm_forward(x, *running, weight, bias, True, 0.1, 1e-5, layout="NHWC")
    grad_x, grad_weight, grad_bias = batch_norm_backward(grad_out, x, mean, inv_std, weight, layout="NHWC")
    x64 = _first(x).astype(np.float64)
    expected_y, batch_mean, batch_var, expected_mean, expected_var = R.batch_norm(
        x64, running_mean, running_var, weight, bias, True, 0.1, 1e-5)
    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_first(y), expected_y, **tolerance)
    np.testing.assert_allclose(mean, batch_mean, **tolerance)
    np.testing.assert_allclose(running[0], expected_mean, **tolerance)
    np.testing.assert_allclose(running[1], expected_var, **tolerance)
    expected = R.batch_norm_backward(_first(grad_out), x64, batch_mean, batch_var, weight, True, 1e-5)
    for actual, wanted in zip((_first(grad_x), grad_weight, grad_bias), expected):
        np.testing.assert_allclose(actual, wanted, **tolerance)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
@pytest.mark.parametrize("shape", [(4, 5, 6, 3), (2, 3, 7, 16), (1, 2, 2, 1)], ids=str)
def test_matches_torch_channels_last(shape, training, dtype, torch, rng):
    x, grad_out, weight, bias, running_mean, running_var = _arrays(rng, shape, dtype)
    x_t = torch.from_numpy(_first(x)).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    assert x_t.is_contiguous(memory_format=torch.channels_last)
    weight_t = torch.from_numpy(weight.copy()).requires_grad_(True)
    bias_t = torch.from_numpy(bias.copy()).requires_grad_(True)
    mean_t, var_t = torch.from_numpy(running_mean.copy()), torch.from_numpy(running_var.copy())
    y_t = torch.nn.functional.batch_norm(x_t, mean_t, var_t, weight_t, bias_t, training, 0.1, 1e-5)
    y_t.backward(torch.from_numpy(_first(grad_out)).contiguous(memory_format=torch.channels_last))
    running = [running_mean.copy(), running_var.copy()]
    y, mean, inv_std = batch_norm_forward(x, *running, weight, bias, training, 0.1, 1e-5, layout="NHWC")
    grad_x, grad_weight, grad_bias = batch_norm_backward(grad_out, x, mean, inv_std, weight, training, layout="NHWC")
    tolerance = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y, _last(y_t.detach().numpy()), **tolerance)
    np.testing.assert_allclose(grad_x, _last(x_t.grad.numpy()), **tolerance)
    np.testing.assert_allclose(grad_weight, weight_t.grad.numpy(), **tolerance)
    np.testing.assert_allclose(grad_bias, bias_t.grad.numpy(), **tolerance)
    np.testing.assert_allclose(running[0], mean_t.numpy(), **tolerance)
    np.testing.assert_allclose(running[1], var_t.numpy(), **tolerance)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout, shape", [("NWC", (3, 7, 5)), ("NDHWC", (2, 3, 2, 4, 5)), ("NCW", (3, 5, 7)),
                                           ("NCDHW", (2, 5, 3, 2, 4))])
def test_the_one_and_three_dimensional_layouts(layout, shape, dtype, rng):
    x, grad_out, weight, bias, _, _ = _arrays(rng, shape, dtype, -1 if layout.endswith("C") else 1)
    y, mean, inv_std = batch_norm_forward(x, None, None, weight, bias, True, layout=layout)
    grads = batch_norm_backward(grad_out, x, mean, inv_std, weight, layout=layout)
    if layout.endswith("C"):
        x, grad_out = _first(x), _first(grad_out)
    y_first, mean_first, _ = batch_norm_forward(x, None, None, weight, bias, True)
    grads_first = batch_norm_backward(grad_out, x, mean_first, inv_std, weight)
    convert = _first if layout.endswith("C") else np.asarray
    _close(convert(y), y_first)
    _close(convert(grads[0]), grads_first[0])
    _close(grads[1], grads_first[1])
    _close(grads[2], grads_first[2])


def _numerical_grad(f, x, grad_out, step=1e-6):
    """d <grad_out, f(x)> / dx by central differences."""
    grad = np.empty_like(x)
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += step
        minus[index] -= step
        grad[index] = (np.vdot(grad_out, f(plus)) - np.vdot(grad_out, f(minus))) / (2 * step)
    return grad


@pytest.mark.parametrize("activation", [None, ("sigmoid", None), ("elu", None)], ids=["none", "sigmoid", "elu"])
@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
def test_functional_gradients_by_central_differences(training, activation, rng):
    x, grad_out, weight, bias, running_mean, running_var = _arrays(rng, (3, 2, 3, 4), np.float64)
    act = _activation_kwargs(activation)

    def forward(data):
        return batch_norm_forward(data, running_mean.copy(), running_var.copy(), weight, bias, training,
                                  layout="NHWC", **act)[0]

    _, mean, inv_std = batch_norm_forward(x, running_mean.copy(), running_var.copy(), weight, bias, training,
                                          layout="NHWC", **act)
    shift = {} if activation is None else {"bias": bias}
    grad_x, _, _ = batch_norm_backward(grad_out, x, mean, inv_std, weight, training, layout="NHWC", **act, **shift)
    np.testing.assert_allclose(grad_x, _numerical_grad(forward, x, grad_out), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
@pytest.mark.parametrize("track", [True, False], ids=["running-stats", "no-running-stats"])
@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
def test_layer_gradcheck(training, track, affine, rng):
    layer = nn.BatchNorm2d(3, affine=affine, track_running_stats=track, dtype=np.float64, layout="NHWC")
    if affine:
        layer.params["weight"][:] = rng.uniform(0.5, 1.5, 3)
        layer.params["bias"][:] = rng.standard_normal(3)
    if track:
        layer.buffers["running_mean"][:] = rng.standard_normal(3)
        layer.buffers["running_var"][:] = rng.uniform(0.5, 2.0, 3)
    layer.train(training)
    assert convx.gradcheck(layer, 1 + 2 * rng.standard_normal((3, 2, 3, 3)))


def test_sequential_fused_activation_gradcheck_and_result(rng):
    x = 1 + 2 * rng.standard_normal((4, 3, 2, 5))
    fused = nn.Sequential(nn.BatchNorm2d(5, dtype=np.float64, layout="NHWC"), nn.Sigmoid())
    assert convx.gradcheck(fused, x)
    unfused = nn.Sequential(nn.BatchNorm2d(5, dtype=np.float64, layout="NHWC"), nn.Sigmoid())
    unfused.fuse = False
    grad_out = rng.standard_normal(x.shape)
    _close(fused(x), unfused(x))
    _close(fused.backward(grad_out), unfused.backward(grad_out))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_running_statistics_over_several_steps(dtype, rng):
    layers = {"NHWC": nn.BatchNorm2d(6, momentum=None, dtype=dtype, layout="NHWC"),
              "NCHW": nn.BatchNorm2d(6, momentum=None, dtype=dtype)}
    for step in range(4):
        x = (step + rng.standard_normal((5, 4, 3, 6))).astype(dtype)
        _close(_first(layers["NHWC"](x)), layers["NCHW"](_first(x)))
    for name, value in layers["NCHW"].state_dict().items():
        _close(layers["NHWC"].state_dict()[name], value)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("offset", [1e4, -3e5])
def test_large_mean_offsets_keep_the_statistics_accurate(offset, dtype, rng):
    x = (offset + rng.standard_normal((8, 20, 20, 5))).astype(dtype)
    _, mean, inv_std = batch_norm_forward(x, training=True, eps=0.0, layout="NHWC")
    x64 = x.astype(np.float64).reshape(-1, 5)
    np.testing.assert_allclose(mean, x64.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(1 / inv_std**2, x64.var(axis=0), rtol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_nan_and_infinity_go_where_channels_first_puts_them(dtype, rng):
    x, grad_out, weight, bias, _, _ = _arrays(rng, (3, 4, 5, 6), dtype)
    x[1, 2, 3, 0] = np.nan
    x[0, 0, 0, 2] = np.inf
    x[2, 1, 1, 4] = -np.inf
    for training in (True, False):
        stats = [np.zeros(6, dtype), np.ones(6, dtype)]
        y, mean, inv_std = batch_norm_forward(x, *stats, weight, bias, training, layout="NHWC")
        first_stats = [np.zeros(6, dtype), np.ones(6, dtype)]
        y_first, _, _ = batch_norm_forward(_first(x), *first_stats, weight, bias, training)
        np.testing.assert_array_equal(np.isnan(_first(y)), np.isnan(y_first))
        np.testing.assert_array_equal(np.isinf(_first(y)), np.isinf(y_first))
        grads = batch_norm_backward(grad_out, x, mean, inv_std, weight, training, layout="NHWC")
        grads_first = batch_norm_backward(_first(grad_out), _first(x), mean, inv_std, weight, training)
        np.testing.assert_array_equal(np.isnan(_first(grads[0])), np.isnan(grads_first[0]))
        np.testing.assert_array_equal(np.isnan(grads[1]), np.isnan(grads_first[1]))
        for ours, theirs in ((stats, first_stats),):
            np.testing.assert_array_equal(np.isnan(ours[0]), np.isnan(theirs[0]))
        clean = np.isfinite(y_first).all(axis=(0, 2, 3))
        assert clean.sum() == 3
        _close(_first(y)[:, clean], y_first[:, clean])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_strided_read_only_and_channels_first_memory_inputs(dtype, rng):
    x, grad_out, weight, bias, _, _ = _arrays(rng, (4, 6, 10, 5), dtype)
    views = {
        "moved": np.moveaxis(_first(x), 1, 3),          # (N, H, W, C) over NCHW memory
        "every other row": np.repeat(x, 2, axis=1)[:, ::2],
        "Fortran": np.asfortranarray(x),
    }
    expected_y, mean, inv_std = batch_norm_forward(x, training=True, layout="NHWC")
    expected_grads = batch_norm_backward(grad_out, x, mean, inv_std, weight, layout="NHWC")
    for name, view in views.items():
        np.testing.assert_array_equal(view, x)
        view.flags.writeable = False
        grad_view = np.asfortranarray(grad_out)
        grad_view.flags.writeable = False
        before = view.copy()
        y, mean_v, inv_v = batch_norm_forward(view, training=True, layout="NHWC")
        grads = batch_norm_backward(grad_view, view, mean_v, inv_v, weight, layout="NHWC")
        np.testing.assert_array_equal(view, before)
        assert y.flags.c_contiguous and grads[0].flags.c_contiguous, name
        np.testing.assert_array_equal(y, expected_y)
        for actual, expected in zip(grads, expected_grads):
            np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(2, 160, 128, 1), (4, 64, 64, 8), (3, 40, 40, 33)], ids=str)
def test_one_two_and_three_threads_agree_exactly(shape, dtype, rng, restore_threads):
    # Over 32768 rows (C = 1) or elements: several chunks, so every pass splits between threads.
    x, grad_out, weight, bias, running_mean, running_var = _arrays(rng, shape, dtype)
    results = []
    for n_threads in (1, 2, 3):
        convx.set_num_threads(n_threads)
        running = [running_mean.copy(), running_var.copy()]
        y, mean, inv_std = batch_norm_forward(x, *running, weight, bias, True, activation="relu", layout="NHWC")
        grads = batch_norm_backward(grad_out, x, mean, inv_std, weight, activation="relu", bias=bias, layout="NHWC")
        y_eval, mean_e, inv_e = batch_norm_forward(x, *running, weight, bias, False, layout="NHWC")
        grads_eval = batch_norm_backward(grad_out, x, mean_e, inv_e, weight, False, layout="NHWC")
        results.append([y, mean, inv_std, *running, *grads, y_eval, *grads_eval])
    for other in results[1:]:
        for expected, actual in zip(results[0], other):
            np.testing.assert_array_equal(actual, expected)
    _close(_first(results[0][0]), batch_norm(_first(x), running_mean.copy(), running_var.copy(), weight, bias, True,
                                             activation="relu"))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_sub_batches_agree_with_one_call(dtype, rng, monkeypatch):
    x, grad_out, weight, bias, _, _ = _arrays(rng, (5, 9, 7, 6), dtype)
    y, mean, inv_std = batch_norm_forward(x, None, None, weight, bias, True, layout="NHWC")
    grads = batch_norm_backward(grad_out, x, mean, inv_std, weight, layout="NHWC")
    monkeypatch.setattr(convx._batching, "SUB_BATCH_WORK", 1)
    y_parts, mean_parts, inv_parts = batch_norm_forward(x, None, None, weight, bias, True, layout="NHWC")
    grads_parts = batch_norm_backward(grad_out, x, mean_parts, inv_parts, weight, layout="NHWC")
    for actual, expected in zip((y_parts, mean_parts, inv_parts, *grads_parts), (y, mean, inv_std, *grads)):
        _close(actual, expected)


def test_empty_batches_leave_the_running_statistics_alone():
    running = [np.zeros(3), np.ones(3)]
    for shape in [(0, 4, 4, 3), (2, 0, 4, 3)]:
        y = batch_norm(np.ones(shape), *running, training=True, layout="NHWC")
        assert y.shape == shape
        grads = batch_norm_backward(np.ones(shape), np.ones(shape), np.zeros(3), np.ones(3), layout="NHWC")
        assert grads[0].shape == shape
        np.testing.assert_array_equal(grads[1], 0)
    np.testing.assert_array_equal(running[0], 0)
    np.testing.assert_array_equal(running[1], 1)


def test_one_value_per_channel_is_refused_when_training():
    with pytest.raises(ValueError, match=r"more than one value per channel when training, got x of shape \(1, 1, 1, 3\)"):
        batch_norm(np.ones((1, 1, 1, 3)), training=True, layout="NHWC")
    # (1, 1, 1, 3) in NCHW would be one channel with three values: fine.
    batch_norm(np.ones((1, 3, 1, 1)).reshape(1, 1, 1, 3), training=True)


@pytest.mark.parametrize("layout, match", [
    ("nhwc", "layout must be 'NCHW' .* or 'NHWC' .*, got 'nhwc'"),
    ("NHCW", "layout must be 'NCHW' .* or 'NHWC' .*, got 'NHCW'"),
    ("NXC", "layout must be 'NCW' .* or 'NWC' .*, got 'NXC'"),
    (4, "layout must be 'NCHW' .* or 'NHWC' .*, got 4"),
    (None, "layout must be 'NCHW' .* or 'NHWC' .*, got None"),
])
def test_bad_layouts_are_refused(layout, match):
    x = np.ones((2, 3, 4, 5))
    with pytest.raises(ValueError, match=match):
        batch_norm(x, training=True, layout=layout)
    with pytest.raises(ValueError, match=match):
        batch_norm_backward(x, x, np.zeros(5), np.ones(5), layout=layout)


def test_shapes_that_do_not_fit_the_layout_name_it():
    with pytest.raises(ValueError, match=r"batch_norm expects x of shape \(N, H, W, C\) \(NHWC\), got an array of "
                                         r"shape \(2, 3, 4\)"):
        batch_norm(np.ones((2, 3, 4)), training=True, layout="NHWC")
    with pytest.raises(ValueError, match=r"expects x of shape \(N, L, C\) \(NWC\), got an array of shape \(2, 3, 4, 5\)"):
        batch_norm(np.ones((2, 3, 4, 5)), training=True, layout="NWC")
    with pytest.raises(ValueError, match=r"batch_norm expects x of shape \(N, H, W, C\) \(NHWC\)"):
        batch_norm_backward(np.ones((2, 3, 4)), np.ones((2, 3, 4)), np.zeros(4), np.ones(4), layout="NHWC")
    # An NCHW-shaped weight on NHWC data: C is the last axis.
    x = np.ones((2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"weight must have shape \(5,\), one entry per channel of x, got \(3,\)"):
        batch_norm(x, weight=np.ones(3), layout="NHWC")
    with pytest.raises(ValueError, match=r"mean and inv_std must have shape \(5,\)"):
        batch_norm_backward(x, x, np.zeros(3), np.ones(3), layout="NHWC")
    with pytest.raises(ValueError, match=r"output must have x's shape"):
        batch_norm_backward(x, x, np.zeros(5), np.ones(5), activation="relu", output=np.ones((2, 5, 3, 4)),
                            layout="NHWC")


# --------------------------------------------------------------------------- the layers
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
def test_layer_matches_the_channels_first_layer(affine, dtype, rng):
    last = nn.BatchNorm2d(7, affine=affine, dtype=dtype, layout="NHWC")
    first = nn.BatchNorm2d(7, affine=affine, dtype=dtype)
    if affine:
        weight = rng.uniform(0.5, 1.5, 7).astype(dtype)
        last.params["weight"][:] = first.params["weight"][:] = weight
    for step in range(3):
        x = (1 + 2 * rng.standard_normal((4, 5, 3, 7))).astype(dtype)
        grad_out = rng.standard_normal(x.shape).astype(dtype)
        y = last(x)
        assert y.shape == x.shape
        _close(_first(y), first(_first(x)))
        grad_x = last.backward(grad_out)
        assert grad_x.shape == x.shape
        _close(_first(grad_x), first.backward(_first(grad_out)))
        for key in last.grads:
            _close(last.grads[key], first.grads[key])
    last.eval()
    first.eval()
    x = rng.standard_normal((2, 3, 3, 7)).astype(dtype)
    _close(_first(last(x)), first(_first(x)))
    _close(_first(last.backward(x)), first.backward(_first(x)))
    assert last.state_dict().keys() == first.state_dict().keys()
    for key, value in first.state_dict().items():
        _close(last.state_dict()[key], value)


def test_layer_state_dict_moves_between_layouts(rng):
    first = nn.BatchNorm2d(4)
    first(rng.standard_normal((3, 4, 5, 5)).astype(np.float32))
    last = nn.BatchNorm2d(4, layout="NHWC")
    last.load_state_dict(first.state_dict())
    first.eval()
    last.eval()
    x = rng.standard_normal((2, 5, 5, 4)).astype(np.float32)
    _close(_first(last(x)), first(_first(x)))


def test_layer_repr_and_attribute():
    assert nn.BatchNorm2d(3, layout="NHWC").layout == "NHWC"
    assert repr(nn.BatchNorm2d(3, layout="NHWC")).endswith("dtype=float32, layout='NHWC')")
    assert "layout" not in repr(nn.BatchNorm2d(3))
    assert nn.BatchNorm2d(3).layout == "NCHW"
    assert nn.BatchNorm1d(3).layout == "NCW"
    assert repr(nn.BatchNorm1d(3, layout="NWC")).endswith("layout='NWC')")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_batch_norm_1d_channels_last(dtype, rng):
    last = nn.BatchNorm1d(6, dtype=dtype, layout="NWC")
    first = nn.BatchNorm1d(6, dtype=dtype)
    for x in ((1 + rng.standard_normal((5, 9, 6))).astype(dtype), rng.standard_normal((8, 6)).astype(dtype)):
        grad_out = rng.standard_normal(x.shape).astype(dtype)
        y = last(x)
        assert y.shape == x.shape
        _close(_first(y), first(_first(x)))
        _close(_first(last.backward(grad_out)), first.backward(_first(grad_out)))
        for key in last.grads:
            _close(last.grads[key], first.grads[key])


def test_layer_refuses_bad_layouts_and_inputs():
    with pytest.raises(ValueError, match="layout must be 'NCHW' .* or 'NHWC' .*, got 'NWC'"):
        nn.BatchNorm2d(3, layout="NWC")
    with pytest.raises(ValueError, match="layout must be 'NCW' .* or 'NWC' .*, got 'NHWC'"):
        nn.BatchNorm1d(3, layout="NHWC")
    with pytest.raises(ValueError, match=r"BatchNorm2d expects 3 channels, got x of shape \(2, 3, 4, 5\) \(layout "
                                         r"\(N, H, W, C\)\)"):
        nn.BatchNorm2d(3, layout="NHWC")(np.ones((2, 3, 4, 5), dtype=np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm1d expects 3 channels, got x of shape \(2, 3, 4\) \(layout "
                                         r"\(N, C\) or \(N, L, C\)\)"):
        nn.BatchNorm1d(3, layout="NWC")(np.ones((2, 3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="x must be 4-dimensional"):
        nn.BatchNorm2d(3, layout="NHWC")(np.ones((2, 4, 3), dtype=np.float32))
