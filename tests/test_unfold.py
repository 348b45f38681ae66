"""unfold / fold (im2col / col2im), their backward passes and nn.Unfold / nn.Fold: against a NumPy
reference written here, against PyTorch, the adjoint identity, central differences, and refusals."""

from __future__ import annotations

import numpy as np
import pytest

import convx
import convx.functional as F
from convx import nn
from conftest import DTYPES, assert_close

# (x shape, kernel_size, dilation, padding, stride)
CASES = [
    ((2, 3, 7, 9), 2, 1, 0, 1),
    ((2, 3, 7, 9), 3, 1, 1, 2),
    ((1, 2, 8, 5), (3, 2), (2, 1), (1, 2), (2, 3)),
    ((3, 1, 5, 6), (1, 4), 1, (0, 1), (1, 2)),
    ((2, 4, 6, 6), 6, 1, 0, 1),  # one block
    ((1, 1, 1, 1), 1, 1, 0, 1),  # size-1 everything
    ((2, 2, 4, 3), 3, 3, 3, 1),  # dilated taps stepping over the whole image
    ((1, 3, 5, 4), 2, 1, 4, 3),  # padding beyond the kernel: blocks in the padding only
]


def _pairs(*values):
    return [tuple(np.broadcast_to(v, (2,)).tolist()) for v in values]


def reference_unfold(x, kernel_size, dilation, padding, stride):
    """im2col by slicing a zero-padded copy, one kernel tap at a time."""
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = _pairs(kernel_size, dilation, padding, stride)
    n, c, h, w = x.shape
    padded = np.zeros((n, c, h + 2 * ph, w + 2 * pw), x.dtype)
    padded[:, :, ph:ph + h, pw:pw + w] = x
    out_h = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    cols = np.zeros((n, c, kh, kw, out_h, out_w), x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = padded[:, :, i * dh:i * dh + sh * (out_h - 1) + 1:sh,
                                      j * dw:j * dw + sw * (out_w - 1) + 1:sw]
    return cols.reshape(n, c * kh * kw, out_h * out_w)


def reference_fold(cols, output_size, kernel_size, dilation, padding, stride):
    """col2im by explicit loops over every column entry."""
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = _pairs(kernel_size, dilation, padding, stride)
    h, w = _pairs(output_size)[0]
    n, rows, length = cols.shape
    c = rows // (kh * kw)
    out_w = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((n, c, h, w), cols.dtype)
    blocks = cols.reshape(n, c, kh, kw, length)
    for b in range(length):
        oh, ow = divmod(b, out_w)
        for i in range(kh):
            for j in range(kw):
                r, s = oh * sh - ph + i * dh, ow * sw - pw + j * dw
                if 0 <= r < h and 0 <= s < w:
                    y[:, :, r, s] += blocks[:, :, i, j, b]
    return y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kernel_size, dilation, padding, stride", CASES)
def test_unfold_and_fold_match_the_reference_and_torch(shape, kernel_size, dilation, padding, stride, dtype, rng,
                                                      torch):
    x = rng.standard_normal(shape).astype(dtype)
    args = (kernel_size, dilation, padding, stride)
    cols = F.unfold(x, *args)
    expected = reference_unfold(x, *args)
    assert cols.dtype == dtype and cols.flags.c_contiguous
    np.testing.assert_array_equal(cols, expected)  # a copy of values: exact
    kwargs = dict(kernel_size=kernel_size, dilation=dilation, padding=padding, stride=stride)
    np.testing.assert_array_equal(cols, torch.nn.functional.unfold(torch.from_numpy(x), **kwargs).numpy())

    values = rng.standard_normal(cols.shape).astype(dtype)
    y = F.fold(values, shape[2:], *args)
    assert y.shape == shape and y.dtype == dtype
    assert_close(y, reference_fold(values, shape[2:], *args), dtype)
    assert_close(y, torch.nn.functional.fold(torch.from_numpy(values), shape[2:], **kwargs).numpy(), dtype)
    # The backward passes are the other op.
    np.testing.assert_array_equal(F.unfold_backward(values, shape, *args), y)
    np.testing.assert_array_equal(F.fold_backward(y, *args), F.unfold(y, *args))


@pytest.mark.parametrize("shape, kernel_size, dilation, padding, stride", CASES)
def test_adjoint_identity(shape, kernel_size, dilation, padding, stride, rng):
    # <unfold(x), c> == <x, fold(c)>
    args = (kernel_size, dilation, padding, stride)
    x = rng.standard_normal(shape)
    c = rng.standard_normal(F.unfold(x, *args).shape)
    lhs = np.vdot(F.unfold(x, *args), c)
    rhs = np.vdot(x, F.fold(c, shape[2:], *args))
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))


@pytest.mark.parametrize("dtype", DTYPES)
def test_unbatched_non_contiguous_and_empty_batch(dtype, rng, torch):
    x = rng.standard_normal((2, 3, 9, 11)).astype(dtype)
    view = x[1, :, ::2, 1::2]  # (3, 5, 5), not contiguous
    cols = F.unfold(view, 2, padding=1)
    assert cols.shape == (12, 36)
    np.testing.assert_array_equal(cols, reference_unfold(np.ascontiguousarray(view)[None], 2, 1, 1, 1)[0])
    np.testing.assert_array_equal(cols, torch.nn.functional.unfold(torch.from_numpy(view.copy()), 2, padding=1).numpy())
    folded = F.fold(cols, (5, 5), 2, padding=1)
    assert folded.shape == (3, 5, 5)
    assert_close(folded, torch.nn.functional.fold(torch.from_numpy(cols), (5, 5), 2, padding=1).numpy(), dtype)
    assert F.unfold_backward(cols, (3, 5, 5), 2, padding=1).shape == (3, 5, 5)
    assert F.fold_backward(folded, 2, padding=1).shape == (12, 36)
    # An empty batch gives empty results of the right shapes.
    assert F.unfold(np.zeros((0, 3, 5, 5), dtype), 2).shape == (0, 12, 16)
    assert F.fold(np.zeros((0, 12, 16), dtype), 5, 2).shape == (0, 3, 5, 5)
    # x is never written to.
    before = x.copy()
    F.unfold(x, 3)
    np.testing.assert_array_equal(x, before)


def test_nan_and_inf_are_copied_and_summed(torch):
    x = np.array([[[[np.nan, 1.0], [np.inf, -np.inf]]]])
    np.testing.assert_array_equal(F.unfold(x, 1, padding=1), torch.nn.functional.unfold(torch.from_numpy(x), 1,
                                                                                        padding=1).numpy())
    cols = np.array([[[1.0, np.inf], [-np.inf, 2.0]]])  # both blocks cover the middle element
    np.testing.assert_array_equal(F.fold(cols, (1, 3), (1, 2)), [[[[1.0, np.nan, 2.0]]]])


def test_thread_counts_agree(rng):
    x = rng.standard_normal((3, 5, 17, 13))
    previous = convx.get_num_threads()
    try:
        convx.set_num_threads(1)
        one = F.unfold(x, 3, 2, 2, 1), F.fold(F.unfold(x, 3, padding=1), (17, 13), 3, padding=1)
        convx.set_num_threads(2)
        two = F.unfold(x, 3, 2, 2, 1), F.fold(F.unfold(x, 3, padding=1), (17, 13), 3, padding=1)
    finally:
        convx.set_num_threads(previous)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


class _FoldWith(nn.Module):
    """fold as a one-input layer for gradcheck."""

    def forward(self, x):
        return F.fold(x, (6, 5), (2, 3), 2, 1, (1, 2))

    def backward(self, grad_out):
        return F.fold_backward(grad_out, (2, 3), 2, 1, (1, 2))


def test_central_differences(rng):
    x = rng.standard_normal((2, 2, 6, 5))
    assert convx.gradcheck(nn.Unfold((2, 3), dilation=2, padding=1, stride=(1, 2)), x)
    cols = rng.standard_normal(F.unfold(x, (2, 3), 2, 1, (1, 2)).shape)
    assert convx.gradcheck(nn.Fold((6, 5), (2, 3), dilation=2, padding=1, stride=(1, 2)), cols)
    assert convx.gradcheck(_FoldWith(), cols)
    assert convx.gradcheck(lambda v: F.unfold(v, 3, padding=1), [x[0]],
                           backward=lambda g: (F.unfold_backward(g, (2, 6, 5), 3, padding=1),))


@pytest.mark.parametrize("dtype", DTYPES)
def test_layers_match_torch(dtype, rng, torch):
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    unfold = nn.Unfold(3, dilation=(1, 2), padding=1, stride=2)
    cols = unfold(x)
    grad = rng.standard_normal(cols.shape).astype(dtype)
    tx = torch.from_numpy(x).requires_grad_()
    tcols = torch.nn.Unfold(3, dilation=(1, 2), padding=1, stride=2)(tx)
    tcols.backward(torch.from_numpy(grad))
    np.testing.assert_array_equal(cols, tcols.detach().numpy())
    assert_close(unfold.backward(grad), tx.grad.numpy(), dtype)

    fold = nn.Fold((7, 6), 3, dilation=(1, 2), padding=1, stride=2)
    y = fold(grad)
    tgrad = torch.from_numpy(grad).requires_grad_()
    ty = torch.nn.Fold((7, 6), 3, dilation=(1, 2), padding=1, stride=2)(tgrad)
    assert_close(y, ty.detach().numpy(), dtype)
    ty.backward(torch.from_numpy(x))
    np.testing.assert_array_equal(fold.backward(x), tgrad.grad.numpy())
    assert "kernel_size=(3, 3)" in repr(unfold) and "output_size=(7, 6)" in repr(fold)


@pytest.mark.parametrize("call, error, match", [
    (lambda: F.unfold(np.zeros((2, 3, 4)).astype(np.int64), 2), TypeError, "dtype"),
    (lambda: F.unfold(np.zeros((3, 4)), 2), ValueError, r"unfold expects x of shape \(N, C, H, W\)"),
    (lambda: F.unfold(np.zeros((1, 3, 4, 4)), 0), ValueError, "kernel_size.* positive, got 0"),
    (lambda: F.unfold(np.zeros((1, 3, 4, 4)), 2, stride=0), ValueError, "stride.* positive"),
    (lambda: F.unfold(np.zeros((1, 3, 4, 4)), 2, dilation=(1, 0)), ValueError, r"dilation\[1\] must be positive"),
    (lambda: F.unfold(np.zeros((1, 3, 4, 4)), 2, padding=-1), ValueError, "padding must be at least 0"),
    (lambda: F.unfold(np.zeros((1, 3, 4, 4)), 2.0), TypeError, "kernel_size must be an int"),
    (lambda: F.unfold(np.zeros((1, 3, 4, 4)), (2, 2, 2)), ValueError, "kernel_size must be an int or a pair"),
    (lambda: F.unfold(np.zeros((1, 3, 4, 4)), 5), ValueError, r"larger than the padded x \(4x4"),
    (lambda: F.unfold(np.zeros((1, 0, 4, 4)), 2), ValueError, "non-empty channel and spatial"),
    (lambda: F.unfold(np.zeros((1, 1, 4, 4)), 2, padding=2**31), ValueError, "padding must be at most"),
    (lambda: F.unfold(np.zeros((1, 1, 1, 1)), 1, padding=2**30), MemoryError, "unfold's kernel_size asks"),
    (lambda: F.fold(np.zeros((1, 5, 9)), 4, 2), ValueError, r"multiple of kernel_size\[0\] \* kernel_size\[1\] = 4"),
    (lambda: F.fold(np.zeros((1, 8, 8)), 4, 2), ValueError, r"number of sliding blocks, 3\*3 = 9"),
    (lambda: F.fold(np.zeros((1, 8, 9)), (4, 4, 4), 2), ValueError, "output_size must be an int or"),
    (lambda: F.fold(np.zeros((1, 8, 9)), 0, 2), ValueError, "output_size must be positive"),
    (lambda: F.fold(np.zeros((1, 1, 8, 9)), 4, 2), ValueError, r"fold expects x of shape \(N, C\*kH\*kW, L\)"),
    (lambda: F.unfold_backward(np.zeros((1, 8, 9)), (1, 3, 4, 4), 2), ValueError, r"leading axes must be \(1, 12\)"),
    (lambda: F.unfold_backward(np.zeros((1, 8, 9)), (4, 4), 2), ValueError, "input_shape must have 3 or 4"),
    (lambda: nn.Fold(4, 2)(np.zeros((1, 8, 8))), ValueError, "number of sliding blocks"),
    (lambda: nn.Unfold(2)(np.zeros((4, 4))), ValueError, "3 or 4-dimensional"),
])
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_layer_backward_checks_grad_out():
    unfold = nn.Unfold(2)
    unfold(np.zeros((1, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"forward output's shape \(1, 12, 9\)"):
        unfold.backward(np.zeros((1, 12, 8)))
