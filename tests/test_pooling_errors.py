"""Every bad argument of the pooling ops is a TypeError or ValueError that says what is wrong."""

import numpy as np
import pytest

import convx.functional as F

X = np.zeros((2, 3, 6, 7))
GRAD = np.zeros((2, 3, 3, 3))  # the shape of max_pool2d(X, 2)
INDICES = np.zeros((2, 3, 3, 3), dtype=np.int64)


def case(case_id, exception, message, op, *args, **kwargs):
    """One bad call: ``op(*args, **kwargs)`` must raise ``exception`` matching ``message``."""
    return pytest.param(op, args, kwargs, exception, message, id=case_id)


def window_op_cases(op):
    """Bad arguments shared by max_pool2d and avg_pool2d."""
    name = op.__name__
    # Max pooling also takes the 8-bit integers (issue 20).
    dtypes = "float32, float64, int8 or uint8" if name.startswith(("max", "adaptive_max")) else "float32 or float64"
    return [
        case(f"{name}-int-dtype", TypeError, f"x must have dtype {dtypes}, got dtype int64",
             op, X.astype(np.int64), 2),
        case(f"{name}-float16", TypeError, f"{dtypes}, got dtype float16", op, X.astype(np.float16), 2),
        case(f"{name}-complex", TypeError, "got dtype complex128", op, X.astype(np.complex128), 2),
        case(f"{name}-scalar", TypeError, "x must be a numpy.ndarray", op, 1.0, 2),
        case(f"{name}-2d", ValueError, r"x must be 3 or 4-dimensional, got an array of shape \(6, 7\)",
             op, X[0, 0], 2),
        case(f"{name}-5d", ValueError, "x must be 3 or 4-dimensional", op, X[None], 2),
        case(f"{name}-kernel-0", ValueError, "kernel_size must be positive, got 0", op, X, 0),
        case(f"{name}-kernel-negative", ValueError, r"kernel_size\[1\] must be positive, got -1", op, X, (2, -1)),
        case(f"{name}-kernel-float", TypeError, "kernel_size must be an int, got 2.0", op, X, 2.0),
        case(f"{name}-kernel-bool", TypeError, "kernel_size must be an int, got True", op, X, True),
        case(f"{name}-kernel-triple", ValueError, "kernel_size must be an int or a pair", op, X, (2, 2, 2)),
        case(f"{name}-kernel-none", TypeError, "kernel_size must be an int", op, X, None),
        case(f"{name}-kernel-array", TypeError, "kernel_size must be an int or a tuple", op, X, np.array([2, 2])),
        case(f"{name}-kernel-huge", ValueError, "kernel_size must be at most 2147483647", op, X, 2**31),
        case(f"{name}-stride-0", ValueError, "stride must be positive, got 0", op, X, 2, 0),
        case(f"{name}-stride-empty", ValueError, "stride must be an int or a pair", op, X, 2, ()),
        case(f"{name}-stride-float", TypeError, r"stride\[1\] must be an int", op, X, 2, (1, 1.5)),
        case(f"{name}-stride-huge", ValueError, "stride must be at most", op, X, 2, 2**40),
        case(f"{name}-padding-negative", ValueError, "padding must be at least 0, got -1", op, X, 2, 1, -1),
        case(f"{name}-padding-bool", TypeError, "padding must be an int, got False", op, X, 2, 1, False),
        case(f"{name}-padding-over-kernel", ValueError,
             r"padding on each side must be at most dilation \* \(kernel_size - 1\) = \(2, 2\) for "
             r"kernel_size=\(3, 3\) and dilation=\(1, 1\) \(a window must reach the input\), got padding=\(3, 3\)",
             op, X, 3, 1, 3),
        case(f"{name}-padding-over-kernel-w", ValueError, r"at most dilation \* \(kernel_size - 1\)", op, X, (4, 2), 1,
             (2, 2)),
        case(f"{name}-ceil-int", TypeError, "ceil_mode must be a bool, got 1", op, X, 2, ceil_mode=1),
        case(f"{name}-kernel-too-big", ValueError, "output of x would be 0x3 for a 6x7 input", op, X, (7, 2)),
        case(f"{name}-empty-plane", ValueError, "would be 0x4", op, np.zeros((1, 1, 0, 4)), 1),
    ]


def adaptive_op_cases(op):
    """Bad arguments shared by the adaptive pools."""
    name = op.__name__
    dtypes = "float32, float64, int8 or uint8" if name.startswith(("max", "adaptive_max")) else "float32 or float64"
    return [
        case(f"{name}-int-dtype", TypeError, f"{dtypes}, got dtype int32", op, X.astype(np.int32), 2),
        case(f"{name}-2d", ValueError, "x must be 3 or 4-dimensional", op, X[0, 0], 2),
        case(f"{name}-size-0", ValueError, "output_size must be positive, got 0", op, X, 0),
        case(f"{name}-size-negative", ValueError, r"output_size\[1\] must be positive, got -1", op, X, (2, -1)),
        case(f"{name}-size-float", TypeError, "output_size must be an int", op, X, 2.5),
        case(f"{name}-size-bool", TypeError, r"output_size\[0\] must be an int", op, X, (True, 2)),
        case(f"{name}-size-str", TypeError, "output_size must be an int", op, X, "2"),
        case(f"{name}-size-none", TypeError, "output_size must be an int", op, X, None),
        case(f"{name}-size-triple", ValueError, "sequence of length 3", op, X, (1, 2, 3)),
        case(f"{name}-size-array", TypeError, "got an ndarray", op, X, np.array([1, 2])),
        case(f"{name}-empty-plane", ValueError, "non-empty plane", op, np.zeros((1, 2, 0, 3)), 1),
    ]


FORWARD_CASES = [
    *window_op_cases(F.max_pool2d),
    *window_op_cases(F.avg_pool2d),
    case("max-dilation-0", ValueError, "dilation must be positive, got 0", F.max_pool2d, X, 2, dilation=0),
    case("max-dilation-float", TypeError, "dilation must be an int", F.max_pool2d, X, 2, dilation=1.0),
    case("max-dilation-too-big", ValueError, "would be 0x3", F.max_pool2d, X, 2, dilation=(6, 1)),
    case("max-return-indices-str", TypeError, "return_indices must be a bool",
         F.max_pool2d, X, 2, return_indices="yes"),
    case("max-window-in-padding", ValueError, r"window 0 along the height of x \(1\) has every tap in the padding",
         F.max_pool2d, np.zeros((1, 1, 1, 5)), (2, 1), 1, (1, 0), (2, 1)),
    case("avg-count-include-pad-none", TypeError, "count_include_pad must be a bool",
         F.avg_pool2d, X, 2, count_include_pad=None),
    case("avg-divisor-0", ValueError, "divisor_override must be positive, got 0",
         F.avg_pool2d, X, 2, divisor_override=0),
    case("avg-divisor-negative", ValueError, "divisor_override must be positive",
         F.avg_pool2d, X, 2, divisor_override=-3),
    case("avg-divisor-float", TypeError, "divisor_override must be an int", F.avg_pool2d, X, 2, divisor_override=2.5),
    case("avg-divisor-bool", TypeError, "divisor_override must be an int", F.avg_pool2d, X, 2, divisor_override=True),
    case("avg-divisor-huge", ValueError, "divisor_override must be at most",
         F.avg_pool2d, X, 2, divisor_override=2**31),
    *adaptive_op_cases(F.adaptive_avg_pool2d),
    *adaptive_op_cases(F.adaptive_max_pool2d),
    case("adaptive-max-indices-flag", TypeError, "return_indices must be a bool",
         F.adaptive_max_pool2d, X, 1, return_indices=None),
]

BACKWARD_CASES = [
    case("max-bwd-int-grad", TypeError, "grad_out must have dtype float32 or float64",
         F.max_pool2d_backward, GRAD.astype(np.int64), INDICES, X.shape),
    case("max-bwd-indices-int32", TypeError, "indices must have dtype int64, got dtype int32",
         F.max_pool2d_backward, GRAD, INDICES.astype(np.int32), X.shape),
    case("max-bwd-indices-float", TypeError, "indices must have dtype int64",
         F.max_pool2d_backward, GRAD, INDICES.astype(np.float64), X.shape),
    case("max-bwd-indices-list", TypeError, "indices must be a numpy.ndarray",
         F.max_pool2d_backward, GRAD, INDICES.tolist(), X.shape),
    case("max-bwd-indices-shape", ValueError,
         r"indices must have the shape of grad_out \(2, 3, 3, 3\), got \(2, 3, 2, 3\)",
         F.max_pool2d_backward, GRAD, INDICES[:, :, :2], X.shape),
    case("max-bwd-index-too-big", ValueError,
         r"indices must lie in \[0, H\*W\) = \[0, 42\) for input_shape \(2, 3, 6, 7\), got 42",
         F.max_pool2d_backward, GRAD, INDICES + 42, X.shape),
    case("max-bwd-index-negative", ValueError, r"\[0, 42\).*got -1", F.max_pool2d_backward, GRAD, INDICES - 1, X.shape),
    case("max-bwd-index-huge", ValueError, "indices must lie in",
         F.max_pool2d_backward, GRAD, INDICES + 2**62, X.shape),
    case("max-bwd-shape-length", ValueError, "input_shape must have 3 or 4 entries",
         F.max_pool2d_backward, GRAD, INDICES, (3, 6, 7, 1, 1)),
    case("max-bwd-shape-type", TypeError, "input_shape must be a tuple of ints",
         F.max_pool2d_backward, GRAD, INDICES, "2367"),
    case("max-bwd-shape-float", TypeError, r"input_shape\[2\] must be an int",
         F.max_pool2d_backward, GRAD, INDICES, (2, 3, 6.0, 7)),
    case("max-bwd-shape-negative", ValueError, r"input_shape\[2\] must be at least 0",
         F.max_pool2d_backward, GRAD, INDICES, (2, 3, -6, 7)),
    case("max-bwd-ndim", ValueError, r"grad_out must be 3-dimensional like input_shape \(3, 6, 7\)",
         F.max_pool2d_backward, GRAD, INDICES, (3, 6, 7)),
    case("max-bwd-batch", ValueError, r"leading \(batch and channel\) axes must be \(4, 3\)",
         F.max_pool2d_backward, GRAD, INDICES, (4, 3, 6, 7)),
    case("max-bwd-channels", ValueError, r"must be \(2, 5\)", F.max_pool2d_backward, GRAD, INDICES, (2, 5, 6, 7)),
    case("max-bwd-2d", ValueError, "grad_out must be 3 or 4-dimensional",
         F.max_pool2d_backward, GRAD[0, 0], INDICES[0, 0], (6, 7)),
    case("avg-bwd-grad-shape", ValueError,
         r"grad_out must have the forward output shape \(2, 3, 3, 3\) for input_shape \(2, 3, 6, 7\)",
         F.avg_pool2d_backward, np.zeros((2, 3, 3, 4)), X.shape, 2),
    case("avg-bwd-batch", ValueError, "leading", F.avg_pool2d_backward, GRAD, (1, 3, 6, 7), 2),
    case("avg-bwd-float16", TypeError, "grad_out must have dtype float32 or float64",
         F.avg_pool2d_backward, GRAD.astype(np.float16), X.shape, 2),
    case("avg-bwd-padding", ValueError, r"padding on each side must be at most dilation \* \(kernel_size - 1\)",
         F.avg_pool2d_backward, GRAD, X.shape, 2, padding=2),
    case("avg-bwd-divisor", ValueError, "divisor_override must be positive",
         F.avg_pool2d_backward, GRAD, X.shape, 2, divisor_override=0),
    case("avg-bwd-kernel-too-big", ValueError, "output of input_shape would be",
         F.avg_pool2d_backward, GRAD, X.shape, 8),
    case("adaptive-bwd-batch", ValueError, "leading", F.adaptive_avg_pool2d_backward, GRAD, (2, 4, 6, 7)),
    case("adaptive-bwd-empty-output", ValueError, "non-empty output plane",
         F.adaptive_avg_pool2d_backward, np.zeros((2, 3, 0, 3)), X.shape),
    case("adaptive-bwd-empty-input", ValueError, "input_shape must have a non-empty plane",
         F.adaptive_avg_pool2d_backward, GRAD, (2, 3, 0, 7)),
    case("adaptive-bwd-int", TypeError, "float32 or float64",
         F.adaptive_avg_pool2d_backward, GRAD.astype(np.int16), X.shape),
]


@pytest.mark.parametrize("op, args, kwargs, exception, message", FORWARD_CASES + BACKWARD_CASES)
def test_bad_arguments_are_refused(op, args, kwargs, exception, message):
    with pytest.raises(exception, match=message):
        op(*args, **kwargs)


@pytest.mark.parametrize("bad", [42, 43, 2**31, 2**32 + 1, 2**63 - 1, -1, -42, -(2**63), -(2**63) + 41])
@pytest.mark.parametrize("where", [(0, 0, 0, 0), (0, 1, 2, 1), (1, 2, 2, 2)])
def test_each_bad_index_value_is_refused_in_any_plane(bad, where):
    indices = np.full((2, 3, 3, 3), 41, dtype=np.int64)
    indices[where] = bad
    with pytest.raises(ValueError, match=rf"\[0, 42\).*got {bad}$"):
        F.max_pool2d_backward(GRAD, indices, X.shape)


def test_indices_into_an_empty_plane_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 0\).*got 0"):
        F.max_pool2d_backward(GRAD, np.zeros_like(INDICES), (2, 3, 0, 7))


def test_bad_indices_are_never_written_through():
    # An index one past the plane would be an out-of-bounds write; it must be refused,
    # wherever it sits in the array.
    indices = np.zeros((2, 3, 3, 3), dtype=np.int64)
    indices[1, 2, 2, 2] = 6 * 7
    with pytest.raises(ValueError, match="got 42"):
        F.max_pool2d_backward(GRAD, indices, X.shape)
    indices[1, 2, 2, 2] = 6 * 7 - 1
    grad_x = F.max_pool2d_backward(np.ones_like(GRAD), indices, X.shape)
    assert grad_x[1, 2, 5, 6] == 1 and grad_x.sum() == GRAD.size


def test_masked_arrays_are_refused():
    with pytest.raises(TypeError, match="masked array"):
        F.max_pool2d(np.ma.masked_array(X), 2)
