"""pad / pad_backward, the padding layers and pixel (un)shuffling: NumPy references written from the
formulas below (and numpy.pad), PyTorch forward and backward, gradient checks and bad arguments.

Along a padded axis of size n with pads (before, after), output position j copies input element:

* constant: ``j - before`` where that lies in [0, n), else the fill;
* reflect: ``k = j - before`` mirrored at 0 and n - 1 (edges not repeated) until it lies in [0, n);
* replicate: ``k`` clipped to [0, n - 1];
* circular: negative pads crop first (``first = max(-before, 0)``, ``kept = n - first - max(-after, 0)``),
  then ``first + (j - max(before, 0)) mod kept``.

Pixel shuffle: ``y[..., c, h * r + i, w * r + j] = x[..., c * r**2 + i * r + j, h, w]``.
"""

import numpy as np
import pytest
from conftest import DTYPES, assert_close

import convx
import convx.functional as F
from convx import nn

MODES = ["constant", "reflect", "replicate", "circular"]


def _source(j, size, before, after, mode):
    k = j - before
    if mode == "constant":
        return k if 0 <= k < size else -1
    if mode == "replicate":
        return min(max(k, 0), size - 1)
    if mode == "reflect":
        while not 0 <= k < size:
            k = -k if k < 0 else 2 * (size - 1) - k
        return k
    first = max(-before, 0)
    kept = size - first - max(-after, 0)
    return first + (j - max(before, 0)) % kept


def _reference_tables(shape, pad, mode):
    axes = len(pad) // 2
    tables = []
    for axis in range(axes):
        size = shape[-1 - axis]
        before, after = pad[2 * axis], pad[2 * axis + 1]
        positions = range(size + before + after)
        tables.append(np.array([_source(j, size, before, after, mode) for j in positions], dtype=int))
    return tables  # last axis first


def reference_pad(x, pad, mode="constant", value=0.0):
    tables = _reference_tables(x.shape, pad, mode)
    out = x
    for axis, table in enumerate(tables):
        moved = np.moveaxis(out, -1 - axis, -1)
        taken = np.where(table >= 0, np.take(moved, np.maximum(table, 0), axis=-1) if moved.shape[-1] else value, value)
        out = np.moveaxis(taken, -1, -1 - axis)
    return out


def reference_pad_backward(grad_out, input_shape, pad, mode):
    tables = _reference_tables(input_shape, pad, mode)
    grad = grad_out.astype(np.float64)
    for axis, table in enumerate(tables):
        moved = np.moveaxis(grad, -1 - axis, -1)
        folded = np.zeros((*moved.shape[:-1], input_shape[-1 - axis]))
        keep = table >= 0
        np.add.at(folded, (Ellipsis, table[keep]), moved[..., keep])
        grad = np.moveaxis(folded, -1, -1 - axis)
    return grad


PAD_CASES = [
    ((2, 3, 5, 6), (1, 2, 3, 0)),
    ((2, 3, 5, 6), (4, 5, 2, 4)),
    ((1, 2, 4, 4), (-1, 2, 0, -2)),
    ((3, 4, 7), (2, 3)),
    ((2, 3, 1, 6), (0, 0, 0, 0)),
    ((1, 1, 3, 3), (3, 3, 3, 3)),
    ((2, 6), (-2, 1)),
]
_VALID = {
    # reflect needs each pad below its axis, circular at most what the crop leaves
    "reflect": lambda shape, pad: all(p < n for p, n in zip(pad, (shape[-1],) * 2 + (shape[-2],) * 2)),
    "circular": lambda shape, pad: all(p <= n for p, n in zip(pad, (shape[-1],) * 2 + (shape[-2],) * 2)),
}


def _cases(mode):
    return [(s, p) for s, p in PAD_CASES if _VALID.get(mode, lambda s, p: True)(s, p)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_pad_matches_the_reference_and_numpy_pad(mode, dtype, rng):
    for shape, pad in _cases(mode):
        x = rng.standard_normal(shape).astype(dtype)
        y = F.pad(x, pad, mode=mode)
        assert y.dtype == dtype and y.flags.c_contiguous
        np.testing.assert_array_equal(y, reference_pad(x, pad, mode))
        if min(pad) >= 0:
            widths = [(0, 0)] * (x.ndim - len(pad) // 2) + [(pad[2 * a], pad[2 * a + 1]) for a in
                                                             reversed(range(len(pad) // 2))]
            numpy_mode = {"replicate": "edge", "circular": "wrap"}.get(mode, mode)
            np.testing.assert_array_equal(y, np.pad(x, widths, mode=numpy_mode))
        grad_out = rng.standard_normal(y.shape).astype(dtype)
        grad_x = F.pad_backward(grad_out, x.shape, pad, mode=mode)
        assert grad_x.dtype == dtype and grad_x.shape == x.shape
        assert_close(grad_x, reference_pad_backward(grad_out, x.shape, pad, mode), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_pad_matches_torch(mode, dtype, rng, torch):
    for shape, pad in _cases(mode):
        x = rng.standard_normal(shape).astype(dtype)
        if mode != "constant" and x.ndim not in (len(pad) // 2 + 1, len(pad) // 2 + 2):
            continue
        tx = torch.tensor(x, requires_grad=True)
        ty = torch.nn.functional.pad(tx, pad, mode=mode)
        grad_out = rng.standard_normal(tuple(ty.shape)).astype(dtype)
        ty.backward(torch.tensor(grad_out))
        np.testing.assert_array_equal(F.pad(x, pad, mode=mode), ty.detach().numpy())
        assert_close(F.pad_backward(grad_out, shape, pad, mode=mode), tx.grad.numpy(), dtype)


def test_random_pads_match_torch_wherever_both_accept_them(rng, torch):
    compared = 0
    for trial in range(1200):
        mode = MODES[trial % 4]
        axes = 1 + trial % 2
        shape = tuple(int(v) for v in rng.integers(1, 6, size=axes + int(rng.integers(1, 3))))
        pad = tuple(int(v) for v in rng.integers(-4, 6, size=2 * axes))
        x = rng.standard_normal(shape)
        try:
            tx = torch.tensor(x, requires_grad=True)
            ty = torch.nn.functional.pad(tx, pad, mode=mode)
        except (RuntimeError, NotImplementedError):
            # convx refuses every pad PyTorch refuses, but an all-empty reflect or replicate 2-D output
            # (PyTorch lets one empty axis through, not two)
            if not (mode in ("reflect", "replicate") and axes == 2):
                with pytest.raises(ValueError):
                    F.pad(x, pad, mode=mode)
            continue
        try:
            y = F.pad(x, pad, mode=mode)
        except ValueError as error:
            # PyTorch wraps circular pads past the cropped axis from memory it has not written
            assert mode == "circular" and "wraps around at most once" in str(error)
            continue
        np.testing.assert_array_equal(y, ty.detach().numpy())
        grad_out = rng.standard_normal(y.shape)
        ty.backward(torch.tensor(grad_out))
        assert_close(F.pad_backward(grad_out, shape, pad, mode=mode), tx.grad.numpy())
        compared += 1
    assert compared > 400


def test_constant_value_and_cropping():
    x = np.arange(12.0).reshape(1, 3, 4)
    np.testing.assert_array_equal(F.pad(x, (1, -2), value=-1.0)[0, 0], [-1.0, 0.0, 1.0])
    assert F.pad(x, (-4, 0)).shape == (1, 3, 0)
    assert np.isnan(F.pad(x, (1, 0), value=float("nan"))[0, 0, 0])
    np.testing.assert_array_equal(F.pad_backward(np.ones((1, 3, 0)), x.shape, (-4, 0)), np.zeros(x.shape))
    np.testing.assert_array_equal(F.pad(np.zeros((2, 0, 3)), (1, 1, 1, 1), value=5.0), np.full((2, 2, 5), 5.0))
    assert F.pad(np.zeros((0, 3, 4, 4)), (1, 1, 1, 1), mode="reflect").shape == (0, 3, 6, 6)


@pytest.mark.parametrize("mode", MODES)
def test_pad_gradcheck(mode, rng):
    x = rng.standard_normal((2, 2, 4, 5))
    pad = (2, -1, 3, 1) if mode != "circular" else (2, 1, 3, 0)
    assert convx.gradcheck(lambda a: F.pad(a, pad, mode=mode), x,
                           backward=lambda g: F.pad_backward(g, x.shape, pad, mode=mode))


def test_pad_layouts_threads_and_inputs_left_alone(rng):
    x = rng.standard_normal((3, 4, 9, 8))
    before = x.copy()
    expected = F.pad(x, (3, 2, 1, 4), mode="reflect")
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(F.pad(np.asfortranarray(x), (3, 2, 1, 4), mode="reflect"), expected)
    np.testing.assert_array_equal(F.pad(x[:, ::2], (3, 2, 1, 4), mode="reflect"), expected[:, ::2])
    original = convx.get_num_threads()
    try:
        for threads in (1, 2, 3):
            convx.set_num_threads(threads)
            np.testing.assert_array_equal(F.pad(x, (3, 2, 1, 4), mode="reflect"), expected)
    finally:
        convx.set_num_threads(original)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(pad=(1, 1, 1)), ValueError, "even number of entries"),
        (dict(pad=(1, 1, 1, 1, 1, 1)), ValueError, "last one or two axes"),
        (dict(pad=[1.0, 1]), TypeError, r"pad\[0\] must be an int"),
        (dict(pad=np.array([1, 1])), TypeError, "pad must be a tuple of ints"),
        (dict(pad=(1, 1), mode="zeros"), ValueError, "mode must be one of"),
        (dict(pad=(1, 1, 1, 1), mode="reflect", value=0.0), ValueError, "value is the fill of mode='constant' only"),
        (dict(pad=(1, 1), value="3"), TypeError, "value must be a real number"),
        (dict(pad=(5, 0, 0, 0), mode="reflect"), ValueError, "smaller than the axis"),
        (dict(pad=(0, 0, 3, 0), mode="reflect"), ValueError, "smaller than the axis"),
        (dict(pad=(6, 0, 0, 0), mode="circular"), ValueError, "wraps around at most once"),
        (dict(pad=(-6, 0, 0, 0)), ValueError, "crops more than the axis holds"),
        (dict(pad=(1, 1), mode="reflect"), ValueError, "needs a 2-D or 3-D x"),
        (dict(pad=(0, -9, 0, 0), mode="replicate"), ValueError, "would leave -4 elements"),
    ],
)
def test_pad_bad_arguments(kwargs, error, message):
    x = np.zeros((1, 2, 3, 5))
    with pytest.raises(error, match=message):
        F.pad(x, **kwargs)


def test_pad_bad_arrays_and_backward_shapes():
    with pytest.raises(TypeError, match="float32 or float64"):
        F.pad(np.zeros((2, 3), dtype=np.int32), (1, 1))
    with pytest.raises(ValueError, match="fewer axes"):
        F.pad(np.zeros(3), (1, 1, 1, 1))
    with pytest.raises(ValueError, match="non-empty last axis"):
        F.pad(np.zeros((1, 2, 0)), (1, 1), mode="replicate")
    with pytest.raises(ValueError, match="would leave 0 elements, fewer than 1"):
        F.pad(np.zeros((1, 2, 3)), (-3, 0), mode="replicate")
    with pytest.raises(ValueError, match=r"grad_out must have the padded shape \(1, 2, 5\)"):
        F.pad_backward(np.zeros((1, 2, 4)), (1, 2, 3), (1, 1))


LAYERS = [
    ("ZeroPad2d", (2,), {}),
    ("ZeroPad2d", ((1, -1, 2, 0),), {}),
    ("ConstantPad2d", ((1, 2, 0, 3), 3.5), {}),
    ("ReflectionPad2d", (2,), {}),
    ("ReflectionPad2d", ((1, 3, 2, 0),), {}),
    ("ReplicationPad2d", ((4, 0, 1, 5),), {}),
    ("CircularPad2d", ((2, 1, 3, 0),), {}),
]


@pytest.mark.parametrize("name, args, kwargs", LAYERS, ids=[f"{n}{a}" for n, a, _ in LAYERS])
@pytest.mark.parametrize("batched", [True, False])
def test_layers_match_torch(name, args, kwargs, batched, rng, torch):
    shape = (2, 3, 5, 6) if batched else (3, 5, 6)
    x = rng.standard_normal(shape).astype(np.float32)
    layer = getattr(nn, name)(*args, **kwargs)
    reference = getattr(torch.nn, name)(*args, **kwargs)
    tx = torch.tensor(x, requires_grad=True)
    ty = reference(tx)
    grad_out = rng.standard_normal(tuple(ty.shape)).astype(np.float32)
    ty.backward(torch.tensor(grad_out))
    np.testing.assert_array_equal(layer(x), ty.detach().numpy())
    assert_close(layer.backward(grad_out), tx.grad.numpy())
    assert layer.params == {}
    assert convx.gradcheck(getattr(nn, name)(*args, **kwargs), rng.standard_normal(shape))
    assert "padding=" in repr(layer)


def test_layer_arguments():
    with pytest.raises(ValueError, match="4-tuple"):
        nn.ZeroPad2d((1, 2))
    with pytest.raises(TypeError, match="padding must be an int"):
        nn.ReflectionPad2d(1.5)
    with pytest.raises(TypeError, match="value must be a real number"):
        nn.ConstantPad2d(1, None)
    with pytest.raises(ValueError, match="3-dimensional|4-dimensional"):
        nn.ReplicationPad2d(1)(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="smaller than the axis"):
        nn.ReflectionPad2d(3)(np.zeros((1, 1, 3, 3)))


# ---------------------------------------------------------------------------------------------
# Pixel shuffle


def reference_pixel_shuffle(x, r):
    *lead, channels, height, width = x.shape
    c_out = channels // (r * r)
    y = np.empty((*lead, c_out, height * r, width * r), dtype=x.dtype)
    for c in range(c_out):
        for i in range(r):
            for j in range(r):
                y[..., c, i::r, j::r] = x[..., c * r * r + i * r + j, :, :]
    return y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, r", [((2, 8, 3, 5), 2), ((1, 9, 2, 2), 3), ((2, 3, 18, 4, 1), 3), ((4, 1, 1), 1),
                                      ((0, 4, 2, 2), 2)])
def test_pixel_shuffle_matches_the_reference_and_torch(shape, r, dtype, rng, torch):
    x = rng.standard_normal(shape).astype(dtype)
    y = F.pixel_shuffle(x, r)
    np.testing.assert_array_equal(y, reference_pixel_shuffle(x, r))
    assert not np.shares_memory(y, x) and y.flags.c_contiguous
    np.testing.assert_array_equal(F.pixel_unshuffle(y, r), x)
    np.testing.assert_array_equal(y, torch.nn.functional.pixel_shuffle(torch.tensor(x), r).numpy())
    if y.size:  # PyTorch hands an empty input back unchanged, whatever r
        np.testing.assert_array_equal(F.pixel_unshuffle(y, r),
                                      torch.nn.functional.pixel_unshuffle(torch.tensor(y), r).numpy())
    np.testing.assert_array_equal(F.pixel_shuffle(np.asfortranarray(x), r), y)


def test_pixel_shuffle_layers_forward_backward(rng, torch):
    x = rng.standard_normal((2, 12, 3, 4))
    shuffle, unshuffle = nn.PixelShuffle(2), nn.PixelUnshuffle(2)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.PixelShuffle(2)(tx)
    grad_out = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(grad_out))
    np.testing.assert_array_equal(shuffle(x), ty.detach().numpy())
    np.testing.assert_array_equal(shuffle.backward(grad_out), tx.grad.numpy())
    tz = torch.tensor(x, requires_grad=True)
    tw = torch.nn.PixelUnshuffle(1)(tz)
    np.testing.assert_array_equal(nn.PixelUnshuffle(1)(x), tw.detach().numpy())
    y = shuffle(x)
    np.testing.assert_array_equal(unshuffle(y), x)
    np.testing.assert_array_equal(unshuffle.backward(x), y)
    assert convx.gradcheck(nn.PixelShuffle(2), x)
    assert convx.gradcheck(nn.PixelUnshuffle(2), y)
    assert repr(shuffle) == "PixelShuffle(upscale_factor=2)"


def test_pixel_shuffle_bad_arguments():
    with pytest.raises(ValueError, match="divisible by upscale_factor\\*\\*2 = 4"):
        F.pixel_shuffle(np.zeros((1, 6, 2, 2)), 2)
    with pytest.raises(ValueError, match="height and width divisible by downscale_factor = 2"):
        F.pixel_unshuffle(np.zeros((1, 1, 3, 4)), 2)
    with pytest.raises(ValueError, match="upscale_factor must be positive"):
        F.pixel_shuffle(np.zeros((1, 4, 2, 2)), 0)
    with pytest.raises(TypeError, match="downscale_factor must be an int"):
        nn.PixelUnshuffle(2.0)
    with pytest.raises(ValueError, match="3"):
        F.pixel_shuffle(np.zeros((4, 2)), 1)


def test_huge_pads_are_refused_naming_pad():
    with pytest.raises((MemoryError, ValueError), match="pad"):
        F.pad(np.zeros((1, 2, 3)), (10**15, 0))


@pytest.mark.parametrize("table, run", [([], (0, 0)), ([0], (0, 1)), ([-1], (0, 0)), ([2, 1, 0, 1, 2, 3, 2], (2, 6)),
                                        ([-1, -1, 0, 1, 2, -1], (2, 5)), ([0, 0, 1, 1], (1, 3)),
                                        ([3, 4, 5, 0, 1], (0, 3)), ([-1, 0, 1, 2], (1, 4))])
def test_the_block_copied_by_the_gather_kernel(table, run):
    from convx._shapes import counting_run

    assert counting_run(np.array(table, dtype=np.int64)) == run
