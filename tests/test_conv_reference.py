"""The NumPy reference against truly naive loops on tiny cases, independently of PyTorch.

Gradients are checked from their definition, one Jacobian column at a time: the derivative of
``<grad_out, conv2d(x, w)>`` along a unit input (or weight) direction, computed with the naive
forward loop.
"""

import numpy as np
import pytest
from _helpers import ConvCase, TransposeCase, naive_conv2d, naive_conv_transpose2d
from conftest import assert_close

from convx.reference import conv as reference

TINY_CASES = {
    "plain": ConvCase(2, 2, 5, 4, 3, (3, 2)),
    "strided-padded-dilated": ConvCase(1, 2, 6, 7, 2, (2, 3), stride=(2, 1), padding=(1, 2), dilation=(2, 1)),
    "grouped": ConvCase(2, 4, 5, 5, 6, (2, 2), stride=2, padding=1, groups=2),
    "depthwise-x2": ConvCase(1, 3, 5, 6, 6, (3, 3), padding=(0, 1), dilation=(1, 2), groups=3),
    "stride-larger-than-kernel": ConvCase(1, 1, 7, 8, 2, (2, 1), stride=(3, 4), padding=(2, 0)),
}


def _explicit_padding(case):
    """The reference takes 'same'; the naive loop only symmetric ints (the tiny cases use ints)."""
    assert not isinstance(case.padding, str)
    return case.padding


@pytest.mark.parametrize("name", list(TINY_CASES))
def test_reference_forward_matches_naive_loop(name, rng):
    case = TINY_CASES[name]
    x, weight, bias, _ = case.arrays(rng, np.float64)
    expected = naive_conv2d(x, weight, bias, case.stride, _explicit_padding(case), case.dilation, case.groups)
    assert_close(reference.conv2d(x, weight, bias, **case.kwargs), expected)


@pytest.mark.parametrize("name", list(TINY_CASES))
def test_reference_input_gradient_matches_naive_jacobian(name, rng):
    case = TINY_CASES[name]
    x, weight, _, grad_out = case.arrays(rng, np.float64)
    expected = np.zeros(x.shape)
    for index in np.ndindex(*x.shape):
        unit = np.zeros(x.shape)
        unit[index] = 1.0
        column = naive_conv2d(unit, weight, None, case.stride, case.padding, case.dilation, case.groups)
        expected[index] = np.sum(column * grad_out)
    assert_close(reference.conv2d_backward_input(grad_out, weight, x.shape, **case.kwargs), expected)


@pytest.mark.parametrize("name", list(TINY_CASES))
def test_reference_weight_and_bias_gradients_match_naive_jacobian(name, rng):
    case = TINY_CASES[name]
    x, weight, _, grad_out = case.arrays(rng, np.float64)
    expected = np.zeros(weight.shape)
    for index in np.ndindex(*weight.shape):
        unit = np.zeros(weight.shape)
        unit[index] = 1.0
        column = naive_conv2d(x, unit, None, case.stride, case.padding, case.dilation, case.groups)
        expected[index] = np.sum(column * grad_out)
    assert_close(reference.conv2d_backward_weight(grad_out, x, weight.shape, **case.kwargs), expected)
    expected_bias = np.zeros(case.c_out)
    for channel in range(case.c_out):
        unit = np.zeros(case.c_out)
        unit[channel] = 1.0
        column = naive_conv2d(x, np.zeros(weight.shape), unit, case.stride, case.padding, case.dilation, case.groups)
        expected_bias[channel] = np.sum(column * grad_out)
    assert_close(reference.conv2d_backward_bias(grad_out), expected_bias)


TINY_TRANSPOSE_CASES = {
    "plain": TransposeCase(2, 2, 3, 4, 3, (3, 2)),
    "strided-output-padding": TransposeCase(
        1, 2, 3, 3, 2, (2, 3), stride=(2, 3), padding=(1, 0), output_padding=(1, 2)
    ),
    "dilated-output-padding": TransposeCase(1, 2, 4, 3, 2, (2, 2), padding=1, output_padding=(1, 0), dilation=(2, 1)),
    "grouped": TransposeCase(2, 4, 3, 3, 6, (2, 2), stride=2, padding=1, groups=2),
    "depthwise": TransposeCase(1, 3, 4, 3, 3, (3, 2), stride=(1, 2), groups=3),
}


@pytest.mark.parametrize("name", list(TINY_TRANSPOSE_CASES))
def test_reference_conv_transpose2d_matches_naive_loop(name, rng):
    case = TINY_TRANSPOSE_CASES[name]
    x, weight, bias = case.arrays(rng, np.float64)
    expected = naive_conv_transpose2d(
        x, weight, bias, case.stride, case.padding, case.output_padding, case.groups, case.dilation
    )
    assert_close(reference.conv_transpose2d(x, weight, bias, **case.kwargs), expected)


def test_reference_same_padding_matches_explicit_asymmetric_padding(rng):
    # An even kernel under 'same': one zero before, two after (bottom/right) along H; 3 and 3 along W.
    x = rng.standard_normal((1, 2, 5, 6))
    weight = rng.standard_normal((3, 2, 4, 3))
    padded = np.pad(x, ((0, 0), (0, 0), (1, 2), (3, 3)))
    expected = naive_conv2d(padded, weight, None, 1, 0, (1, 3), 1)
    assert_close(reference.conv2d(x, weight, padding="same", dilation=(1, 3)), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reference_keeps_the_dtype(dtype, rng):
    case = ConvCase(2, 4, 5, 6, 6, (3, 2), stride=2, padding=1, groups=2)
    x, weight, bias, grad_out = case.arrays(rng, dtype)
    outputs = [
        reference.conv2d(x, weight, bias, **case.kwargs),
        reference.conv2d_backward_input(grad_out, weight, x.shape, **case.kwargs),
        reference.conv2d_backward_weight(grad_out, x, weight.shape, **case.kwargs),
        reference.conv2d_backward_bias(grad_out),
        reference.conv_transpose2d(grad_out, weight, None, stride=2, padding=1, output_padding=1, groups=2),
    ]
    assert [out.dtype for out in outputs] == [np.dtype(dtype)] * 5
