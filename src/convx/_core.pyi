"""Type stubs for the compiled kernels (private: call the public functions in convx.functional).

Every kernel writes into caller-allocated, C-contiguous outputs of the inputs' dtype
(float32 or float64) and returns None; ``n_threads`` is the OpenMP team size.
"""

import numpy as np
import numpy.typing as npt

_Float = npt.NDArray[np.float32] | npt.NDArray[np.float64]
_Index = npt.NDArray[np.int64]

def openmp_enabled() -> bool: ...
def default_num_threads() -> int: ...

# Convolution: geometry arguments are stride_h, stride_w, pad_top, pad_left, dilation_h,
# dilation_w, groups.
def conv2d_forward(
    x: _Float, weight: _Float, bias: _Float, out: _Float,
    stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int,
    groups: int, n_threads: int,
) -> None: ...
def conv2d_backward_input(
    grad_out: _Float, weight: _Float, grad_in: _Float,
    stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int,
    groups: int, n_threads: int,
) -> None: ...
def conv2d_backward_params(
    grad_out: _Float, x: _Float, weight: _Float, grad_in: _Float, grad_weight: _Float, grad_bias: _Float,
    stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int,
    groups: int, n_threads: int,
) -> None: ...
def conv2d_backward_bias(grad_out: _Float, grad_bias: _Float, n_threads: int) -> None: ...
def depthwise_forward(
    x: _Float, weight: _Float, bias: _Float, out: _Float,
    stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int,
    groups: int, n_threads: int,
) -> None: ...
def depthwise_backward_input(
    grad_out: _Float, weight: _Float, grad_in: _Float,
    stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int,
    groups: int, n_threads: int,
) -> None: ...
def depthwise_backward_weight(
    grad_out: _Float, x: _Float, grad_weight: _Float,
    stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int,
    groups: int, n_threads: int,
) -> None: ...
