"""float64 gradient checks of the convolution backward passes by central differences, and adjointness.

The loss is ``L = <conv2d(x, w, b), R>`` for a random R, so its gradients are exactly the
backward passes at ``grad_out = R``. ``L`` is linear in each argument, so a central difference
is exact up to rounding and the tolerance below can be tight.
"""

import numpy as np
import pytest
from _helpers import ConvCase, TransposeCase, pair

import convx.functional as F

# Central differences of a linear function: only rounding, of order eps * |L| / STEP.
STEP = 1e-3
GRAD_TOL = dict(rtol=1e-7, atol=1e-9)

GRADIENT_CASES = {
    "dense-strided-padded-dilated": ConvCase(2, 3, 7, 6, 4, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    "grouped": ConvCase(2, 4, 6, 5, 6, (2, 3), stride=(1, 2), padding=1, groups=2),
    "depthwise-x2": ConvCase(2, 3, 6, 7, 6, (3, 3), stride=2, padding=(2, 1), dilation=(2, 1), groups=3),
    "same-even-kernel": ConvCase(1, 2, 5, 6, 3, (2, 4), padding="same"),
    "1x1-stride2": ConvCase(2, 3, 5, 5, 2, (1, 1), stride=2),
    "stride-larger-than-kernel": ConvCase(1, 2, 8, 7, 3, (2, 2), stride=3, padding=1),
    "unbatched": ConvCase(1, 2, 6, 5, 4, (3, 2), padding=(1, 0), dilation=2, groups=2, unbatched=True),
}


def _numerical_gradient(loss, array):
    """Central differences of the scalar ``loss()`` with respect to every element of ``array`` (in place)."""
    grad = np.zeros(array.shape)
    for index in np.ndindex(*array.shape):
        saved = array[index]
        array[index] = saved + STEP
        above = loss()
        array[index] = saved - STEP
        below = loss()
        array[index] = saved
        grad[index] = (above - below) / (2 * STEP)
    return grad


def _assert_same_inner_product(left_pair, right_pair):
    """<a, b> == <c, d>, to rounding relative to |a| |b| (a near-zero product has no relative precision)."""
    (a, b), (c, d) = left_pair, right_pair
    scale = np.linalg.norm(a) * np.linalg.norm(b)
    np.testing.assert_allclose(np.vdot(a, b), np.vdot(c, d), rtol=1e-12, atol=1e-13 * scale)


def _assert_gradient(actual, numerical):
    scale = max(1.0, float(np.max(np.abs(numerical))))
    np.testing.assert_allclose(actual, numerical, rtol=GRAD_TOL["rtol"], atol=GRAD_TOL["atol"] * scale)


@pytest.mark.parametrize("name", list(GRADIENT_CASES))
def test_conv2d_gradients_by_central_differences(name, rng):
    case = GRADIENT_CASES[name]
    x, weight, bias, probe = case.arrays(rng, np.float64)
    kwargs = case.kwargs

    def loss():
        return float(np.sum(F.conv2d(x, weight, bias, **kwargs) * probe))

    grad_x = F.conv2d_backward_input(probe, weight, x.shape, **kwargs)
    grad_w = F.conv2d_backward_weight(probe, x, weight.shape, **kwargs)
    grad_b = F.conv2d_backward_bias(probe)
    _assert_gradient(grad_x, _numerical_gradient(loss, x))
    _assert_gradient(grad_w, _numerical_gradient(loss, weight))
    _assert_gradient(grad_b, _numerical_gradient(loss, bias))

    fused = F.conv2d_backward(probe, x, weight, **kwargs)
    assert len(fused) == 3
    for together, separate in zip(fused, (grad_x, grad_w, grad_b)):
        assert together.shape == separate.shape
        np.testing.assert_allclose(together, separate, rtol=1e-12, atol=1e-12 * max(1.0, np.max(np.abs(separate))))


@pytest.mark.parametrize("name", list(GRADIENT_CASES))
def test_conv2d_backward_input_is_the_adjoint(name, rng):
    # <conv2d(x, w), y> == <x, conv2d_backward_input(y, w, x.shape)>, for random x and y.
    case = GRADIENT_CASES[name]
    x, weight, _, y = case.arrays(rng, np.float64)
    forward = F.conv2d(x, weight, **case.kwargs)
    adjoint = F.conv2d_backward_input(y, weight, x.shape, **case.kwargs)
    _assert_same_inner_product((forward, y), (x, adjoint))


TRANSPOSE_GRADIENT_CASES = {
    "strided-output-padding": TransposeCase(
        2, 4, 4, 5, 6, (3, 2), stride=(2, 3), padding=1, output_padding=(1, 2), groups=2
    ),
    "dilated": TransposeCase(1, 3, 5, 4, 2, (2, 3), padding=(1, 0), dilation=(2, 1)),
    "output-padding-below-dilation": TransposeCase(
        1, 2, 4, 4, 3, (3, 2), padding=1, output_padding=(2, 1), dilation=(3, 2)
    ),
    "depthwise": TransposeCase(2, 3, 4, 4, 3, (3, 3), stride=2, padding=1, output_padding=1, groups=3),
    "unbatched": TransposeCase(1, 2, 4, 3, 4, (2, 2), stride=2, unbatched=True),
}


def _conv_args(case: TransposeCase):
    return dict(stride=case.stride, padding=case.padding, dilation=case.dilation, groups=case.groups)


@pytest.mark.parametrize("name", list(TRANSPOSE_GRADIENT_CASES))
def test_conv_transpose2d_is_the_adjoint_of_conv2d(name, rng):
    # conv_transpose2d(y, w) with w in conv2d's layout (C_out, C_in / groups, kH, kW) is the
    # adjoint of x -> conv2d(x, w): <conv_transpose2d(y, w), x> == <y, conv2d(x, w)>, and it
    # equals conv2d_backward_input(y, w, x.shape).
    case = TRANSPOSE_GRADIENT_CASES[name]
    y, weight, _ = case.arrays(rng, np.float64)
    x = F.conv_transpose2d(y, weight, **case.kwargs)
    x = rng.standard_normal(x.shape)
    conv_of_x = F.conv2d(x, weight, **_conv_args(case))
    if conv_of_x.shape == y.shape:
        _assert_same_inner_product((F.conv_transpose2d(y, weight, **case.kwargs), x), (y, conv_of_x))
        np.testing.assert_allclose(
            F.conv_transpose2d(y, weight, **case.kwargs),
            F.conv2d_backward_input(y, weight, x.shape, **_conv_args(case)),
            rtol=1e-12,
            atol=1e-12,
        )
    else:
        # output_padding >= stride (allowed while below the dilation): conv2d of x sees more
        # rows/columns than y has; the adjoint pairs y with the leading ones.
        assert any(op >= s for op, s in zip(pair(case.output_padding), pair(case.stride)))
        leading = conv_of_x[..., : y.shape[-2], : y.shape[-1]]
        _assert_same_inner_product((F.conv_transpose2d(y, weight, **case.kwargs), x), (y, leading))


@pytest.mark.parametrize("name", list(TRANSPOSE_GRADIENT_CASES))
def test_conv_transpose2d_is_linear(name, rng):
    case = TRANSPOSE_GRADIENT_CASES[name]
    first, weight, _ = case.arrays(rng, np.float64)
    second = rng.standard_normal(first.shape)
    other_weight = rng.standard_normal(weight.shape)
    combined = F.conv_transpose2d(2.5 * first - 0.75 * second, weight, **case.kwargs)
    separate = 2.5 * F.conv_transpose2d(first, weight, **case.kwargs) - 0.75 * F.conv_transpose2d(
        second, weight, **case.kwargs
    )
    np.testing.assert_allclose(combined, separate, rtol=1e-12, atol=1e-12 * np.max(np.abs(separate)))
    in_weight = F.conv_transpose2d(first, weight + other_weight, **case.kwargs)
    summed = F.conv_transpose2d(first, weight, **case.kwargs) + F.conv_transpose2d(first, other_weight, **case.kwargs)
    np.testing.assert_allclose(in_weight, summed, rtol=1e-12, atol=1e-12 * np.max(np.abs(summed)))


@pytest.mark.parametrize("name", list(TRANSPOSE_GRADIENT_CASES))
def test_conv_transpose2d_gradients_by_central_differences(name, rng):
    # L = <conv_transpose2d(x, w, b), R>: dL/dx is conv2d(R, w) (its leading rows/columns when
    # output_padding >= stride), dL/dw the conv2d weight gradient with x as grad_out, dL/db sums R.
    case = TRANSPOSE_GRADIENT_CASES[name]
    x, weight, bias = case.arrays(rng, np.float64)
    probe = rng.standard_normal(F.conv_transpose2d(x, weight, bias, **case.kwargs).shape)

    def loss():
        return float(np.sum(F.conv_transpose2d(x, weight, bias, **case.kwargs) * probe))

    conv_of_probe = F.conv2d(probe, weight, **_conv_args(case))
    height, width = x.shape[-2:]
    grad_x = conv_of_probe[..., :height, :width]
    assert grad_x.shape == x.shape
    # The weight gradient pairs probe (as conv2d's input) with x, zero-extended to conv2d's output size.
    x_extended = np.zeros(conv_of_probe.shape)
    x_extended[..., :height, :width] = x
    grad_w = F.conv2d_backward_weight(x_extended, probe, weight.shape, **_conv_args(case))
    _assert_gradient(grad_x, _numerical_gradient(loss, x))
    _assert_gradient(grad_w, _numerical_gradient(loss, weight))
    _assert_gradient(F.conv2d_backward_bias(probe), _numerical_gradient(loss, bias))
