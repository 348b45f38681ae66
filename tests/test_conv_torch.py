"""Convolutions against PyTorch: the NumPy reference (so the oracle is trusted) and convx itself.

torch.nn.functional.conv2d / conv_transpose2d give the forward passes, autograd the gradients.
Both implementations run over the same grid; the whole module skips cleanly without torch.
"""

import numpy as np
import pytest
from _helpers import (
    CHANNELS,
    DILATIONS,
    DTYPE_IDS,
    IMAGES,
    PADDINGS,
    SPECIAL_CASES,
    STRIDES,
    TRANSPOSE_CASES,
    ConvCase,
    TransposeCase,
    pair,
    torch_conv2d,
    torch_conv_transpose2d,
)
from conftest import DTYPES, assert_close

import convx.functional as F
from convx.reference import conv as reference

IMPLEMENTATIONS = {"reference": reference, "convx": F}


def _check_conv_against_torch(torch, module, case: ConvCase, dtype, rng):
    x, weight, bias, grad_out = case.arrays(rng, dtype)
    expected = torch_conv2d(torch, x, weight, bias, grad_out, case.kwargs)
    kwargs = case.kwargs
    assert_close(module.conv2d(x, weight, bias, **kwargs), expected.y, dtype)
    grad_x = module.conv2d_backward_input(grad_out, weight, x.shape, **kwargs)
    grad_w = module.conv2d_backward_weight(grad_out, x, weight.shape, **kwargs)
    grad_b = module.conv2d_backward_bias(grad_out)
    assert_close(grad_x, expected.grad_x, dtype)
    assert_close(grad_w, expected.grad_w, dtype)
    if bias is not None:
        assert_close(grad_b, expected.grad_b, dtype)
    for out in (grad_x, grad_w, grad_b):
        assert out.dtype == dtype
    if module is F:
        fused = F.conv2d_backward(grad_out, x, weight, **kwargs)
        assert_close(fused[0], expected.grad_x, dtype)
        assert_close(fused[1], expected.grad_w, dtype)
        if bias is not None:
            assert_close(fused[2], expected.grad_b, dtype)


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("channels", list(CHANNELS))
@pytest.mark.parametrize("dilation", DILATIONS, ids=str)
@pytest.mark.parametrize("padding", PADDINGS, ids=str)
@pytest.mark.parametrize("stride", STRIDES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_conv2d_grid_matches_torch(torch, dtype, stride, padding, dilation, channels, implementation, rng):
    c_in, c_out, groups = CHANNELS[channels]
    n, height, width, kernel = IMAGES["2x7x10-k3x2"]
    case = ConvCase(n, c_in, height, width, c_out, kernel, stride, padding, dilation, groups)
    _check_conv_against_torch(torch, IMPLEMENTATIONS[implementation], case, dtype, rng)


# The special geometries, without the slow row-chunk ones (test_conv.py checks those against the reference).
TORCH_SPECIAL = [name for name in SPECIAL_CASES if not name.startswith("chunked")]


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("name", TORCH_SPECIAL)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_conv2d_special_cases_match_torch(torch, dtype, name, implementation, rng):
    _check_conv_against_torch(torch, IMPLEMENTATIONS[implementation], SPECIAL_CASES[name], dtype, rng)


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
def test_chunked_rows_match_torch(torch, implementation, rng):
    case = SPECIAL_CASES["chunked-rows-strided-dilated"]
    _check_conv_against_torch(torch, IMPLEMENTATIONS[implementation], case, np.float32, rng)


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("output_padding", ["zero", "largest"])
@pytest.mark.parametrize("channels", list(CHANNELS))
@pytest.mark.parametrize("dilation", DILATIONS, ids=str)
@pytest.mark.parametrize("padding", PADDINGS, ids=str)
@pytest.mark.parametrize("stride", STRIDES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_conv_transpose2d_grid_matches_torch(
    torch, dtype, stride, padding, dilation, channels, output_padding, implementation, rng
):
    c_in, c_out, groups = CHANNELS[channels]
    n, height, width, kernel = IMAGES["3x6x5-k1x3"]
    extra = 0
    if output_padding == "largest":
        extra = tuple(max(s, d) - 1 for s, d in zip(pair(stride), pair(dilation)))
    case = TransposeCase(n, c_in, height, width, c_out, kernel, stride, padding, extra, dilation, groups)
    x, weight, bias = case.arrays(rng, dtype)
    y = IMPLEMENTATIONS[implementation].conv_transpose2d(x, weight, bias, **case.kwargs)
    assert y.dtype == dtype
    assert_close(y, torch_conv_transpose2d(torch, x, weight, bias, case.kwargs), dtype)


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("name", list(TRANSPOSE_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_conv_transpose2d_special_cases_match_torch(torch, dtype, name, implementation, rng):
    case = TRANSPOSE_CASES[name]
    x, weight, bias = case.arrays(rng, dtype)
    y = IMPLEMENTATIONS[implementation].conv_transpose2d(x, weight, bias, **case.kwargs)
    assert_close(y, torch_conv_transpose2d(torch, x, weight, bias, case.kwargs), dtype)


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
def test_conv_transpose2d_gradients_match_torch_autograd(torch, implementation, rng):
    # conv_transpose2d's gradient with respect to x is a forward conv2d, and with respect to
    # its weight the conv2d weight gradient with the roles of x and grad_out swapped.
    module = IMPLEMENTATIONS[implementation]
    case = TransposeCase(2, 4, 5, 6, 6, (3, 2), stride=(2, 1), padding=1, output_padding=(1, 0), groups=2)
    x, weight, bias = case.arrays(rng, np.float64)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(weight, requires_grad=True)
    y = torch.nn.functional.conv_transpose2d(tx, tw, torch.tensor(bias), **case.kwargs)
    grad_y = rng.standard_normal(tuple(y.shape))
    y.backward(torch.tensor(grad_y))
    conv_args = dict(stride=case.stride, padding=case.padding, dilation=case.dilation, groups=case.groups)
    assert_close(module.conv2d(grad_y, weight, **conv_args), tx.grad.numpy())
    assert_close(module.conv2d_backward_weight(x, grad_y, weight.shape, **conv_args), tw.grad.numpy())
