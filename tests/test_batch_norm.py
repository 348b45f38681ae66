"""Batch normalisation: convx.functional's batch_norm, batch_norm_forward and batch_norm_backward,
and nn.BatchNorm2d.

Against convx.reference.normalization (float64, two passes, from the formulas) and PyTorch
(``torch.nn.functional.batch_norm`` and ``torch.nn.BatchNorm2d`` with autograd), float32 and
float64: outputs, the input, weight and bias gradients, running statistics after several steps
(momentum 0.1, 0, 1 and cumulative), evaluation mode, (N, C) to (N, C, D, H, W) shapes, large
mean offsets (the one-pass statistics against a two-pass float64 reference), constant channels,
one value per channel, sub-batches, 1 to 3 threads, layouts, and bad arguments.

An empty batch (N or the spatial size 0) gives an empty output and unchanged running statistics,
as in PyTorch.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import DTYPES, assert_close

import convx
import convx._batching
import convx._core
from convx import nn
from convx.functional import batch_norm, batch_norm_backward, batch_norm_forward
from convx.reference import normalization as R

DTYPE_IDS = ["float32", "float64"]
SHAPES = [(6, 3), (4, 3, 5), (2, 3, 4, 5), (2, 3, 2, 3, 4), (1, 3, 2, 3), (1, 3, 5)]


@pytest.fixture
def restore_threads():
    original = convx.get_num_threads()
    yield original
    convx.set_num_threads(original)


def _arrays(rng, shape, dtype, offset=2.0, spread=3.0):
    """x, grad_out, weight, bias, running_mean, running_var (channels on axis 1)."""
    channels = shape[1]
    x = (offset + spread * rng.standard_normal(shape)).astype(dtype)
    grad_out = rng.standard_normal(shape).astype(dtype)
    weight = rng.uniform(0.5, 1.5, channels).astype(dtype)
    bias = rng.standard_normal(channels).astype(dtype)
    running_mean = rng.standard_normal(channels).astype(dtype)
    running_var = rng.uniform(0.5, 2.0, channels).astype(dtype)
    return x, grad_out, weight, bias, running_mean, running_var


def _torch_batch_norm(torch, x, grad_out, running_mean, running_var, weight, bias, training, momentum, eps):
    """PyTorch's y, grad_x, grad_weight, grad_bias and its running statistics after the call."""
    def tensor(array, grad=False):
        return None if array is None else torch.from_numpy(np.array(array, copy=True)).requires_grad_(grad)

    x_t, weight_t, bias_t = tensor(x, True), tensor(weight, True), tensor(bias, True)
    mean_t, var_t = tensor(running_mean), tensor(running_var)
    y = torch.nn.functional.batch_norm(x_t, mean_t, var_t, weight_t, bias_t, training, momentum, eps)
    y.backward(torch.from_numpy(grad_out.copy()))

    def numpy(t, grad=False):
        if t is None:
            return None
        return (t.grad if grad else t).detach().numpy()

    return (numpy(y), numpy(x_t, True), numpy(weight_t, True), numpy(bias_t, True), numpy(mean_t), numpy(var_t))


# --------------------------------------------------------------------------- the functional
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("stats", [True, False], ids=["running-stats", "no-running-stats"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference_and_torch(shape, training, affine, stats, dtype, torch, rng):
    x, grad_out, weight, bias, running_mean, running_var = _arrays(rng, shape, dtype)
    if not affine:
        weight = bias = None
    if not stats:
        running_mean = running_var = None
    momentum, eps = 0.1, 1e-3
    ours_mean = None if running_mean is None else running_mean.copy()
    ours_var = None if running_var is None else running_var.copy()
    y, mean, inv_std = batch_norm_forward(x, ours_mean, ours_var, weight, bias, training, momentum, eps)
    batch_stats = training or not stats
    grad_x, grad_weight, grad_bias = batch_norm_backward(grad_out, x, mean, inv_std, weight, batch_stats)

    assert y.shape == x.shape and y.dtype == dtype and grad_x.shape == x.shape and grad_x.dtype == dtype
    assert mean.dtype == inv_std.dtype == np.float64 and mean.shape == inv_std.shape == (shape[1],)
    assert grad_weight.dtype == grad_bias.dtype == dtype and grad_weight.shape == grad_bias.shape == (shape[1],)
    np.testing.assert_array_equal(batch_norm(x, None if ours_mean is None else running_mean.copy(),
                                             None if ours_var is None else running_var.copy(),
                                             weight, bias, training, momentum, eps), y)

    ref_y, ref_mean, ref_var, ref_running_mean, ref_running_var = R.batch_norm(
        x, running_mean, running_var, weight, bias, training, momentum, eps)
    ref_grads = R.batch_norm_backward(grad_out, x, ref_mean, ref_var, weight, batch_stats, eps)
    assert_close(mean, ref_mean, np.float64)
    assert_close(inv_std, 1 / np.sqrt(ref_var + eps), np.float64)
    assert_close(y, ref_y, dtype)
    for ours, reference in zip((grad_x, grad_weight, grad_bias), ref_grads):
        assert_close(ours, reference, dtype)

    # Without running statistics convx uses the batch's in evaluation too (documented); PyTorch's
    # F.batch_norm refuses that ("running_mean must be defined in evaluation mode"), and its
    # nn.BatchNorm2d(track_running_stats=False) passes training=True in evaluation for it.
    theirs = _torch_batch_norm(torch, x, grad_out, running_mean, running_var, weight, bias, batch_stats, momentum,
                               eps)
    torch_y, torch_grad_x, torch_grad_weight, torch_grad_bias, torch_mean, torch_var = theirs
    assert_close(y, torch_y, dtype)
    assert_close(grad_x, torch_grad_x, dtype)
    if affine:
        assert_close(grad_weight, torch_grad_weight, dtype)
        assert_close(grad_bias, torch_grad_bias, dtype)
    if stats:
        # Updated in place when training, untouched in evaluation.
        assert_close(ours_mean, torch_mean, dtype)
        assert_close(ours_var, torch_var, dtype)
        if training:
            assert_close(ours_mean, ref_running_mean, dtype)
            assert_close(ours_var, ref_running_var, dtype)
        else:
            np.testing.assert_array_equal(ours_mean, running_mean)
            np.testing.assert_array_equal(ours_var, running_var)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("momentum", [0.1, 0.0, 1.0, 0.75])
def test_running_statistics_over_several_steps(momentum, dtype, torch, rng):
    channels = 4
    ours = [np.zeros(channels, dtype), np.ones(channels, dtype)]
    theirs = [torch.zeros(channels, dtype=getattr(torch, np.dtype(dtype).name)),
              torch.ones(channels, dtype=getattr(torch, np.dtype(dtype).name))]
    reference = [np.zeros(channels), np.ones(channels)]
    for step in range(4):
        x = (rng.standard_normal((3, channels, 5, 2)) * (step + 1) + step).astype(dtype)
        batch_norm(x, *ours, training=True, momentum=momentum)
        torch.nn.functional.batch_norm(torch.from_numpy(x), *theirs, training=True, momentum=momentum)
        _, _, _, *reference = R.batch_norm(x, *reference, training=True, momentum=momentum)
        for our, their, ref in zip(ours, theirs, reference):
            assert our.dtype == dtype
            assert_close(our, their.numpy(), dtype)
            assert_close(our, ref, dtype)
    # Evaluation normalises with them.
    x = rng.standard_normal((2, channels, 3, 3)).astype(dtype)
    y = batch_norm(x, *ours, training=False)
    assert_close(y, torch.nn.functional.batch_norm(torch.from_numpy(x), *theirs, training=False).numpy(), dtype)
    if momentum == 0.0:
        np.testing.assert_array_equal(ours[0], 0)
        np.testing.assert_array_equal(ours[1], 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("offset", [1e4, -3e5])
def test_large_mean_offsets_keep_the_statistics_accurate(offset, dtype, rng):
    """Data ~ offset + N(0, 1): the one-pass statistics (float64, Chan's merge of two-pass blocks)
    against a two-pass float64 reference of the same data. Plain sum-of-squares minus
    squared-mean would lose about log10(offset^2) digits of the variance here."""
    x = (offset + rng.standard_normal((6, 3, 50, 41))).astype(dtype)  # 2050 values a plane: two blocks
    grad_out = rng.standard_normal(x.shape).astype(dtype)
    running = [np.zeros(3, dtype), np.ones(3, dtype)]
    eps = 1e-5
    y, mean, inv_std = batch_norm_forward(x, *running, training=True, eps=eps)
    ref_y, ref_mean, ref_var, ref_running_mean, ref_running_var = R.batch_norm(
        x, np.zeros(3), np.ones(3), training=True, eps=eps)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-14)
    np.testing.assert_allclose(inv_std, 1 / np.sqrt(ref_var + eps), rtol=1e-11)
    assert_close(running[0], ref_running_mean, dtype)
    assert_close(running[1], ref_running_var, dtype)
    # y = (x - mean) / std with the mean rounded to x's dtype is off by up to half an ulp of the
    # offset, times 1/std (the reference's own float64 mean adds as much again in float64).
    # PyTorch's float32 batch_norm is further off here (5e-4 at 1e4) and is not compared.
    ulps = 1 if dtype == np.float32 else 2
    atol = ulps * float(np.spacing(np.dtype(dtype).type(abs(offset)))) * float(inv_std.max())
    np.testing.assert_allclose(y, ref_y, rtol=0, atol=atol)
    grad_x, grad_weight, grad_bias = batch_norm_backward(grad_out, x, mean, inv_std)
    ref_grads = R.batch_norm_backward(grad_out, x, ref_mean, ref_var, eps=eps)
    for ours, reference in zip((grad_x, grad_weight, grad_bias), ref_grads):
        assert_close(ours, reference, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_constant_channels(dtype, torch, rng):
    """Variance 0: x - mean is exactly 0, y is exactly the bias, and the gradients are PyTorch's."""
    x, grad_out, weight, bias, running_mean, running_var = _arrays(rng, (3, 4, 5, 6), dtype)
    x[:, 1] = 2.7
    x[:, 3] = 0.0
    ours_mean, ours_var = running_mean.copy(), running_var.copy()
    y, mean, inv_std = batch_norm_forward(x, ours_mean, ours_var, weight, bias, training=True)
    np.testing.assert_array_equal(mean[[1, 3]], [dtype(2.7), 0.0])
    np.testing.assert_array_equal(inv_std[[1, 3]], 1 / np.sqrt(1e-5))
    np.testing.assert_array_equal(y[:, 1], bias[1])
    np.testing.assert_array_equal(y[:, 3], bias[3])
    grads = batch_norm_backward(grad_out, x, mean, inv_std, weight)
    torch_y, *torch_grads, torch_mean, torch_var = _torch_batch_norm(
        torch, x, grad_out, running_mean, running_var, weight, bias, True, 0.1, 1e-5)
    assert_close(y, torch_y, dtype)
    grad_x, grad_weight, grad_bias = grads
    assert_close(grad_x, torch_grads[0], dtype)
    assert_close(grad_bias, torch_grads[2], dtype)
    # sum(grad_out * x_hat) is exactly 0 where x_hat is; PyTorch's mean of the constant is not
    # exact, so its x_hat (and grad_weight, -2e-11 in float64) is not quite 0 there.
    np.testing.assert_array_equal(grad_weight[[1, 3]], 0)
    assert_close(grad_weight[[0, 2]], torch_grads[1][[0, 2]], dtype)
    assert_close(ours_mean, torch_mean, dtype)
    assert_close(ours_var, torch_var, dtype)


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1), (1, 3, 1, 1), (1, 3, 1, 1, 1)], ids=str)
def test_one_value_per_channel_is_refused_when_training_as_in_torch(shape, torch):
    x = np.ones(shape)
    running = [np.zeros(3), np.ones(3)]
    with pytest.raises(ValueError, match="more than one value per channel"):
        batch_norm(x, *running, training=True)
    with pytest.raises(ValueError, match="more than one value per channel"):
        batch_norm(x, training=True)
    np.testing.assert_array_equal(running[0], 0)  # untouched by the refused call
    np.testing.assert_array_equal(running[1], 1)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        torch.nn.functional.batch_norm(torch.from_numpy(x), None, None, training=True)
    # Evaluation with running statistics normalises a single value.
    expected = torch.nn.functional.batch_norm(torch.from_numpy(x), *map(torch.from_numpy, running), training=False)
    assert_close(batch_norm(x, *running, training=False), expected.numpy())


EMPTY_BUGS: dict[str, str] = {}


def _empty_params():
    params = []
    # (No C = 0 case: PyTorch's own batch_norm fails on it, with an IndexError.)
    for shape, name in [((0, 3, 4, 4), "N=0"), ((0, 3), "N=0"), ((2, 3, 0, 4), "HW=0")]:
        for training in (True, False):
            key = f"{name}-training" if name == "HW=0" and training else name
            reason = EMPTY_BUGS.get(key)
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            mode = "training" if training else "eval"
            params.append(pytest.param(shape, training, marks=marks, id=f"{shape}-{mode}"))
    return params


@pytest.mark.parametrize("shape, training", _empty_params())
def test_empty_inputs_as_in_torch(shape, training, torch):
    channels = shape[1]
    x, grad_out = np.zeros(shape), np.zeros(shape)
    running = [np.full(channels, 0.5), np.full(channels, 2.0)]
    theirs = _torch_batch_norm(torch, x, grad_out, *running, np.ones(channels), np.zeros(channels), training, 0.1, 1e-5)
    y, mean, inv_std = batch_norm_forward(x, *running, np.ones(channels), np.zeros(channels), training)
    assert y.shape == shape
    np.testing.assert_array_equal(running[0], theirs[4])
    np.testing.assert_array_equal(running[1], theirs[5])
    grad_x, grad_weight, grad_bias = batch_norm_backward(grad_out, x, mean, inv_std, np.ones(channels), training)
    assert grad_x.shape == shape
    np.testing.assert_array_equal(grad_weight, theirs[2])
    np.testing.assert_array_equal(grad_bias, theirs[3])


def test_backward_with_fixed_statistics_and_without_parameter_gradients(rng):
    x, grad_out, weight, _, running_mean, running_var = _arrays(rng, (2, 3, 4, 5), np.float64)
    y, mean, inv_std = batch_norm_forward(x, running_mean, running_var, weight, training=False)
    grad_x, grad_weight, grad_bias = batch_norm_backward(grad_out, x, mean, inv_std, weight, batch_stats=False,
                                                         needs_param_grads=False)
    assert grad_weight is None and grad_bias is None
    assert_close(grad_x, grad_out * (weight / np.sqrt(running_var + 1e-5))[:, None, None])
    # Batch statistics need the sums even without parameter gradients.
    _, mean, inv_std = batch_norm_forward(x, training=True)
    grad_x, grad_weight, grad_bias = batch_norm_backward(grad_out, x, mean, inv_std, needs_param_grads=False)
    assert grad_weight is None and grad_bias is None
    assert_close(grad_x, batch_norm_backward(grad_out, x, mean, inv_std)[0])


# ------------------------------------------------------------------ layouts, threads, batches
def _layouts(rng, dtype):
    base = (1 + 2 * rng.standard_normal((6, 3, 4, 10))).astype(dtype)
    read_only = base.copy()
    read_only.setflags(write=False)
    packed = np.zeros(base.nbytes + 1, dtype=np.uint8)
    misaligned = np.ndarray(base.shape, dtype=dtype, buffer=packed[1:].data)  # from a packed buffer
    misaligned[...] = base
    return [
        ("misaligned", misaligned),
        ("strided", base[::2, :, :, 1::3]),
        ("transposed", base.transpose(0, 1, 3, 2)),
        ("fortran", np.asfortranarray(base)),
        ("reversed", base[::-1, ::-1]),
        ("read-only", read_only),
        ("channels-last", np.ascontiguousarray(base.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)),
    ]


@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_any_layout_gives_the_contiguous_result_and_inputs_are_left_alone(dtype, training, rng):
    weight = rng.uniform(0.5, 1.5, 3).astype(dtype)
    bias = rng.standard_normal(3).astype(dtype)
    stats = [rng.standard_normal(3).astype(dtype), rng.uniform(0.5, 2, 3).astype(dtype)]
    for frozen in (weight, bias) + (() if training else tuple(stats)):
        frozen.setflags(write=False)
    for layout, x in _layouts(rng, dtype):
        grad_out = np.asfortranarray(rng.standard_normal(x.shape).astype(dtype))
        inputs = [x, grad_out, weight, bias] + stats
        before = [array.copy() for array in inputs]
        running = [s.copy() for s in stats] if training else stats
        y, mean, inv_std = batch_norm_forward(x, *running, weight, bias, training)
        grads = batch_norm_backward(grad_out, x, mean, inv_std, weight, training)
        contiguous_running = [s.copy() for s in stats]
        expected_y, expected_mean, expected_inv = batch_norm_forward(np.ascontiguousarray(x), *contiguous_running,
                                                                     weight, bias, training)
        expected_grads = batch_norm_backward(np.ascontiguousarray(grad_out), np.ascontiguousarray(x), expected_mean,
                                             expected_inv, weight, training)
        np.testing.assert_array_equal(y, expected_y, err_msg=layout)
        for ours, expected in zip(grads, expected_grads):
            np.testing.assert_array_equal(ours, expected, err_msg=layout)
        if training:
            for ours, expected in zip(running, contiguous_running):
                np.testing.assert_array_equal(ours, expected, err_msg=layout)
        for array, copy in zip(inputs, before):
            np.testing.assert_array_equal(array, copy, err_msg=f"{layout}: an input was modified")


def test_running_statistics_are_updated_through_views(rng):
    """Strided running statistics (views into a larger buffer) are updated in place, and only there."""
    x = rng.standard_normal((4, 3, 5))
    buffer = np.zeros((2, 6))
    buffer[1] = 1.0
    running_mean, running_var = buffer[0, ::2], buffer[1, 1::2]
    batch_norm(x, running_mean, running_var, training=True, momentum=0.5)
    _, _, _, ref_mean, ref_var = R.batch_norm(x, np.zeros(3), np.ones(3), training=True, momentum=0.5)
    assert_close(buffer[0, ::2], ref_mean)
    assert_close(buffer[1, 1::2], ref_var)
    np.testing.assert_array_equal(buffer[0, 1::2], 0)
    np.testing.assert_array_equal(buffer[1, ::2], 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_one_two_and_three_threads_agree(dtype, rng, restore_threads):
    # 131072 elements, 8 channels, 32 planes: every pass can split three ways.
    x, grad_out, weight, bias, running_mean, running_var = _arrays(rng, (4, 8, 64, 64), dtype)
    results = []
    for n_threads in (1, 2, 3):
        convx.set_num_threads(n_threads)
        running = [running_mean.copy(), running_var.copy()]
        y, mean, inv_std = batch_norm_forward(x, *running, weight, bias, training=True)
        results.append([y, mean, inv_std, *running, *batch_norm_backward(grad_out, x, mean, inv_std, weight)])
        y_eval, mean, inv_std = batch_norm_forward(x, *running, weight, bias, training=False)
        results[-1] += [y_eval, *batch_norm_backward(grad_out, x, mean, inv_std, weight, batch_stats=False)]
    for other in results[1:]:
        for expected, actual in zip(results[0], other):
            np.testing.assert_array_equal(actual, expected)


def _spy(monkeypatch, name):
    calls = []
    kernel = getattr(convx._core, name)

    def counted(*args):
        calls.append(args[0].shape[0])
        return kernel(*args)

    monkeypatch.setattr(convx._core, name, counted)
    return calls


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_sub_batches_give_the_result_of_one_call(dtype, rng, monkeypatch):
    x, grad_out, weight, bias, running_mean, running_var = _arrays(rng, (7, 3, 5, 9), dtype)

    def run():
        running = [running_mean.copy(), running_var.copy()]
        y, mean, inv_std = batch_norm_forward(x, *running, weight, bias, training=True)
        return [y, mean, inv_std, *running, *batch_norm_backward(grad_out, x, mean, inv_std, weight)]

    whole = run()
    calls = {name: _spy(monkeypatch, name) for name in
             ("batch_norm_moments", "batch_norm_normalize", "batch_norm_grad_sums", "batch_norm_input_grad")}
    monkeypatch.setattr(convx._batching, "SUB_BATCH_WORK", 1)  # one image a sub-batch
    parts = run()
    for name, images in calls.items():
        assert images == [1] * 7, (name, images)
    for expected, actual in zip(whole, parts):
        np.testing.assert_array_equal(actual, expected)


def test_calls_from_several_python_threads_at_once(rng):
    cases = [_arrays(rng, (3, 4, 6, 5 + k), dtype) for k in range(3) for dtype in (np.float32, np.float64)]

    def run(index):
        x, grad_out, weight, bias, running_mean, running_var = cases[index % len(cases)]
        running = [running_mean.copy(), running_var.copy()]
        y, mean, inv_std = batch_norm_forward(x, *running, weight, bias, training=index % 2 == 0)
        return [y, *running, *batch_norm_backward(grad_out, x, mean, inv_std, weight, index % 2 == 0)]

    serial = [run(index) for index in range(24)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(run, range(24)))
    for expected, actual in zip(serial, parallel):
        for e, a in zip(expected, actual):
            np.testing.assert_array_equal(a, e)


# ------------------------------------------------------------------------------ bad arguments
def test_forward_rejects_bad_arrays():
    x = np.ones((2, 3, 4))
    three = np.ones(3)
    for dtype in (np.int64, np.float16, object, bool, ">f8"):
        with pytest.raises(TypeError, match="x must have dtype float32 or float64"):
            batch_norm(x.astype(dtype))
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        batch_norm(1.0)
    with pytest.raises(ValueError, match="x must be .*-dimensional, got an array of shape \\(3,\\)"):
        batch_norm(three)
    for name, position in (("weight", 3), ("bias", 4), ("running_mean", 1), ("running_var", 2)):
        def call(value, position=position):
            args = [x, three.copy(), three.copy(), three, three]
            args[position] = value
            return batch_norm(*args, training=True)

        with pytest.raises(ValueError, match=f"{name} must have shape \\(3,\\), one entry per channel of x, got \\(4"):
            call(np.ones(4))
        with pytest.raises(ValueError, match=f"{name} must be 1-dimensional"):
            call(np.ones((3, 1)))
        with pytest.raises(TypeError, match=f"{name} must have x's dtype float64, got float32"):
            call(np.ones(3, np.float32))
        with pytest.raises(TypeError, match=f"{name} must have dtype float32 or float64"):
            call(np.ones(3, np.int64))
    with pytest.raises(ValueError, match="give both running_mean and running_var, or neither"):
        batch_norm(x, three.copy(), None)
    with pytest.raises(ValueError, match="give both running_mean and running_var, or neither"):
        batch_norm(x, None, three.copy())
    read_only = three.copy()
    read_only.setflags(write=False)
    with pytest.raises(ValueError, match="running_mean and running_var are updated in place"):
        batch_norm(x, read_only, three.copy(), training=True)
    assert batch_norm(x, read_only, read_only, training=False).shape == x.shape  # only read


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(training=1), TypeError, "training must be a bool"),
    (dict(training="yes"), TypeError, "training must be a bool"),
    (dict(momentum=1.5), ValueError, "momentum must be in \\[0.0, 1.0\\], got 1.5"),
    (dict(momentum=-0.1), ValueError, "momentum must be in \\[0.0, 1.0\\], got -0.1"),
    (dict(momentum=np.nan), ValueError, "momentum must be in \\[0.0, 1.0\\], got nan"),
    (dict(momentum=None), TypeError, "momentum must be a real number, got None"),
    (dict(momentum=True), TypeError, "momentum must be a real number, got True"),
    (dict(momentum="0.1"), TypeError, "momentum must be a real number"),
    (dict(eps=-1e-5), ValueError, "eps must be at least 0.0, got -1e-05"),
    (dict(eps=np.nan), ValueError, "eps must be at least 0.0, got nan"),
    (dict(eps="1e-5"), TypeError, "eps must be a real number"),
    (dict(eps=np.bool_(False)), TypeError, "eps must be a real number"),
], ids=lambda v: repr(v) if isinstance(v, dict) else None)
def test_forward_rejects_bad_options_before_touching_the_running_statistics(kwargs, error, match):
    running = [np.zeros(3), np.ones(3)]
    kwargs = {"training": True, **kwargs}
    with pytest.raises(error, match=match):
        batch_norm(np.arange(24.0).reshape(2, 3, 4), *running, **kwargs)
    np.testing.assert_array_equal(running[0], 0)
    np.testing.assert_array_equal(running[1], 1)


def test_a_bad_bias_leaves_the_running_statistics_alone():
    running = [np.zeros(3), np.ones(3)]
    with pytest.raises(ValueError, match="bias must have shape"):
        batch_norm(np.arange(24.0).reshape(2, 3, 4), *running, np.ones(3), np.ones(2), training=True)
    np.testing.assert_array_equal(running[0], 0)
    np.testing.assert_array_equal(running[1], 1)


def test_backward_rejects_bad_arguments():
    x = np.arange(24.0).reshape(2, 3, 4)
    _, mean, inv_std = batch_norm_forward(x, training=True)
    with pytest.raises(ValueError, match="grad_out must have x's shape and dtype"):
        batch_norm_backward(np.ones((2, 3, 5)), x, mean, inv_std)
    with pytest.raises(ValueError, match="grad_out must have x's shape and dtype"):
        batch_norm_backward(np.ones((2, 3, 4), np.float32), x, mean, inv_std)
    with pytest.raises(TypeError, match="grad_out must have dtype float32 or float64"):
        batch_norm_backward(np.ones((2, 3, 4), np.int64), x, mean, inv_std)
    with pytest.raises(ValueError, match="grad_out must be .*-dimensional, got an array of shape \\(3,\\)"):
        batch_norm_backward(np.ones(3), np.ones(3), mean, inv_std)
    with pytest.raises(ValueError, match="x must be .*-dimensional, got an array of shape \\(3,\\)"):
        batch_norm_backward(x, np.ones(3), mean, inv_std)
    with pytest.raises(ValueError, match="mean and inv_std must have shape \\(3,\\), one entry per channel"):
        batch_norm_backward(x, x, mean[:2], inv_std)
    with pytest.raises(ValueError, match="mean and inv_std must have shape \\(3,\\)"):
        batch_norm_backward(x, x, mean, np.ones(4))
    with pytest.raises(ValueError, match="mean must be 1-dimensional"):
        batch_norm_backward(x, x, mean[None], inv_std)
    with pytest.raises(TypeError, match="inv_std must have dtype float32 or float64"):
        batch_norm_backward(x, x, mean, inv_std.astype(np.int64))
    with pytest.raises(ValueError, match="weight must have shape \\(3,\\)"):
        batch_norm_backward(x, x, mean, inv_std, np.ones(2))
    with pytest.raises(TypeError, match="weight must have x's dtype float64"):
        batch_norm_backward(x, x, mean, inv_std, np.ones(3, np.float32))
    with pytest.raises(TypeError, match="batch_stats must be a bool"):
        batch_norm_backward(x, x, mean, inv_std, batch_stats=1)
    with pytest.raises(TypeError, match="needs_param_grads must be a bool"):
        batch_norm_backward(x, x, mean, inv_std, needs_param_grads="no")


# ------------------------------------------------------------------------------ nn.BatchNorm2d
NN_CONFIGS = [dict(momentum=m, affine=a) for m in (0.1, 0.0, 1.0, None) for a in (True, False)] + [
    dict(track_running_stats=False), dict(track_running_stats=False, affine=False)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kwargs", NN_CONFIGS, ids=lambda kwargs: ",".join(f"{k}={v}" for k, v in kwargs.items()))
def test_layer_matches_torch_over_training_and_evaluation_steps(kwargs, dtype, torch, rng):
    ours = nn.BatchNorm2d(3, eps=1e-4, **kwargs, dtype=dtype)
    if ours.affine:
        ours.params["weight"][:] = rng.uniform(0.5, 1.5, 3)
        ours.params["bias"][:] = rng.standard_normal(3)
    theirs = torch.nn.BatchNorm2d(3, eps=1e-4, **kwargs).to(torch.float64 if dtype == np.float64 else torch.float32)
    theirs.load_state_dict({key: torch.from_numpy(value) for key, value in ours.state_dict().items()})
    shapes = [(4, 3, 5, 6), (1, 3, 2, 3), (2, 3, 1, 1), (3, 3, 4, 4), (1, 3, 1, 1)]
    for step, shape in enumerate(shapes):
        if step == 3:
            ours.eval()
            theirs.eval()
        x = (rng.standard_normal(shape) * (step + 1) + 2 * step).astype(dtype)
        x_before = x.copy()
        x_torch = torch.from_numpy(x.copy()).requires_grad_(True)
        if step == 4 and not ours.track_running_stats:
            # Batch statistics in evaluation too: one value per channel is refused, as in PyTorch.
            with pytest.raises(ValueError, match="more than 1 value per channel"):
                theirs(x_torch)
            with pytest.raises(ValueError, match="more than one value per channel"):
                ours(x)
            continue
        y, y_torch = ours(x), theirs(x_torch)
        assert y.dtype == dtype
        assert_close(y, y_torch.detach().numpy(), dtype)
        grad_out = rng.standard_normal(shape).astype(dtype)
        y_torch.backward(torch.from_numpy(grad_out.copy()))
        assert_close(ours.backward(grad_out), x_torch.grad.numpy(), dtype)
        np.testing.assert_array_equal(x, x_before)
        for name, param in theirs.named_parameters():
            assert ours.grads[name].dtype == dtype
            assert_close(ours.grads[name], param.grad.numpy(), dtype)
            param.grad = None
        torch_state = theirs.state_dict()
        assert sorted(ours.state_dict()) == sorted(torch_state)
        for name, value in ours.state_dict().items():
            assert value.dtype == (np.int64 if name == "num_batches_tracked" else dtype), name
            assert_close(value, torch_state[name].numpy(), dtype)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
@pytest.mark.parametrize("track", [True, False], ids=["running-stats", "no-running-stats"])
@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
def test_layer_gradcheck(training, track, affine, rng):
    layer = nn.BatchNorm2d(3, affine=affine, track_running_stats=track, dtype=np.float64)
    if affine:
        layer.params["weight"][:] = rng.uniform(0.5, 1.5, 3)
        layer.params["bias"][:] = rng.standard_normal(3)
    if track:
        layer.buffers["running_mean"][:] = rng.standard_normal(3)
        layer.buffers["running_var"][:] = rng.uniform(0.5, 2.0, 3)
    layer.train(training)
    before = layer.state_dict()
    assert convx.gradcheck(layer, 1 + 2 * rng.standard_normal((3, 3, 2, 3)))
    for name, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_layer_one_value_per_channel_in_training_is_refused_and_counts_nothing(torch):
    layer = nn.BatchNorm2d(2)
    x = np.ones((1, 2, 1, 1), dtype=np.float32)
    with pytest.raises(ValueError, match="more than one value per channel"):
        layer(x)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        torch.nn.BatchNorm2d(2)(torch.from_numpy(x))
    assert layer.buffers["num_batches_tracked"] == 0
    np.testing.assert_array_equal(layer.buffers["running_mean"], 0)
    np.testing.assert_array_equal(layer.buffers["running_var"], 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_layer_sub_batches_and_threads_give_the_result_of_one_call(dtype, rng, monkeypatch, restore_threads):
    x = (3 + rng.standard_normal((5, 4, 6, 7))).astype(dtype)
    grad_out = rng.standard_normal(x.shape).astype(dtype)

    def run():
        layer = nn.BatchNorm2d(4, dtype=dtype)
        layer.params["weight"][:] = np.linspace(0.5, 1.5, 4)
        y = layer(x)
        return [y, layer.backward(grad_out), layer.grads["weight"], layer.grads["bias"],
                *layer.buffers.values()]

    convx.set_num_threads(1)
    whole = run()
    monkeypatch.setattr(convx._batching, "SUB_BATCH_WORK", 1)
    for n_threads in (1, 2, 3):
        convx.set_num_threads(n_threads)
        for expected, actual in zip(whole, run()):
            np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(num_features=0), ValueError, "num_features must be positive"),
    (dict(num_features=3.0), TypeError, "num_features must be an int"),
    (dict(eps=-1.0), ValueError, "eps must be a non-negative number"),
    (dict(eps="1e-5"), ValueError, "eps must be a non-negative number"),
    (dict(eps=np.nan), ValueError, "eps must be a non-negative number"),
    (dict(eps=True), ValueError, "eps must be a non-negative number"),
    (dict(momentum=1.5), ValueError, "momentum must be a number in \\[0, 1\\] or None"),
    (dict(momentum=True), ValueError, "momentum must be a number in \\[0, 1\\] or None"),
    (dict(momentum="0.1"), ValueError, "momentum must be a number in \\[0, 1\\] or None"),
    (dict(momentum=np.nan), ValueError, "momentum must be a number in \\[0, 1\\] or None"),
    (dict(affine=1), TypeError, "affine must be a bool"),
    (dict(track_running_stats="yes"), TypeError, "track_running_stats must be a bool"),
    (dict(dtype=np.float16), TypeError, "dtype must be float32 or float64"),
    (dict(dtype=np.int32), TypeError, "dtype must be float32 or float64"),
], ids=lambda v: repr(v) if isinstance(v, dict) else None)
def test_layer_rejects_bad_options(kwargs, error, match):
    kwargs = {"num_features": 3, **kwargs}
    with pytest.raises(error, match=match):
        nn.BatchNorm2d(**kwargs)


def test_layer_rejects_bad_input():
    layer = nn.BatchNorm2d(3)
    with pytest.raises(TypeError, match="BatchNorm2d has float32 parameters but x has dtype float64"):
        layer(np.ones((2, 3, 2, 2)))
    with pytest.raises(TypeError, match="x must have dtype float32 or float64"):
        layer(np.ones((2, 3, 2, 2), dtype=np.int32))
    with pytest.raises(ValueError, match="x must be 4-dimensional"):
        layer(np.ones((2, 3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="BatchNorm2d expects 3 channels, got x of shape \\(2, 4, 2, 2\\)"):
        layer(np.ones((2, 4, 2, 2), dtype=np.float32))
    assert layer.buffers["num_batches_tracked"] == 0
    y = layer(np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2))
    with pytest.raises(ValueError, match="grad_out must have the forward output's shape"):
        layer.backward(np.ones((2, 3, 2, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="grad_out must have the forward output's dtype float32"):
        layer.backward(np.ones(y.shape))
    assert layer.backward(np.ones_like(y)).shape == y.shape
