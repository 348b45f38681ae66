"""Type stubs for the compiled kernels (private: call the public functions in convx.functional).

Every kernel writes into caller-allocated, C-contiguous outputs of the inputs' dtype
(float32 or float64; max pooling also int8 and uint8) and returns None (but winograd_forward: a flag); ``n_threads`` is the
OpenMP team size.
"""

from types import TracebackType

import numpy as np
import numpy.typing as npt

_Float = npt.NDArray[np.float32] | npt.NDArray[np.float64]
_Index = npt.NDArray[np.int64]
# Max pooling's element types: the floating ones and the 8-bit integers.
_MaxPooled = _Float | npt.NDArray[np.int8] | npt.NDArray[np.uint8]

def openmp_enabled() -> bool: ...
def default_num_threads() -> int: ...
GEMM_KERNELS: tuple[str, ...]
def gemm_kernel() -> str: ...
def set_gemm_kernel(name: str) -> None: ...
DIRECT_MODES: tuple[str, ...]
def direct_conv() -> str: ...
def set_direct_conv(mode: str) -> None: ...
IMPLEMENTATIONS: tuple[str, ...]
CONV_OPS: tuple[str, ...]
def supported_gemm_kernels() -> tuple[str, ...]: ...
def conv_implementation(
    op: str, batch: int, c_in: int, height: int, width: int, c_out: int, kernel_h: int, kernel_w: int,
    out_h: int, out_w: int, groups: int, stride_h: int, stride_w: int, pad_h: int, pad_w: int,
    dilation_h: int, dilation_w: int, is_float: bool, n_threads: int,
) -> str: ...
def conv_ran() -> dict[str, str | None]: ...
class ConvConfig:
    def __init__(self, gemm: str | None = None, direct: str | None = None, depthwise: str | None = None) -> None: ...
    def __enter__(self) -> ConvConfig: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc_value: BaseException | None, traceback: TracebackType | None
    ) -> None: ...

# The cache of freed array buffers of _memory.pxi (see convx._memory).
MEMORY_CACHE_MIN: int
MEMORY_CACHE_SLOTS: int
class CachedMemory:
    def __enter__(self) -> CachedMemory: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc_value: BaseException | None, traceback: TracebackType | None
    ) -> bool: ...
def set_memory_cache_limit(limit: int) -> None: ...
def memory_cache_stats() -> dict[str, int]: ...

# The process-wide thread state of _threads.pxi (see convx._threads).
from typing import Any

def _openmp_library() -> str: ...
def _openmp_sharer() -> str: ...
class _BlasLimit:
    def __enter__(self) -> None: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc_value: BaseException | None, traceback: TracebackType | None
    ) -> bool: ...
class _Scope:
    def __init__(self, state: Any, field: str, value: Any) -> None: ...
    def __enter__(self) -> None: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc_value: BaseException | None, traceback: TracebackType | None
    ) -> bool: ...
def _blas_state() -> tuple[int, list[tuple[Any, int]]]: ...
def _blas_after_fork_in_child() -> None: ...

# Convolution: geometry arguments are stride_h, stride_w, pad_top, pad_left, dilation_h,
# dilation_w, groups.
def conv2d_forward(
    x: _Float, weight: _Float, bias: _Float, out: _Float,
    stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int,
    groups: int, n_threads: int, activation: int = ..., p0: float = ..., p1: float = ...,
) -> None: ...
def conv2d_forward_channels_last(
    x: _Float, weight: _Float, bias: _Float, out: _Float,
    stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int,
    groups: int, n_threads: int, activation: int = ..., p0: float = ..., p1: float = ...,
) -> bool: ...
def conv2d_backward_input_channels_last(
    grad_out: _Float, weight: _Float, grad_in: _Float,
    stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int,
    groups: int, n_threads: int,
) -> bool: ...
def conv2d_backward_weight_channels_last(
    grad_out: _Float, x: _Float, grad_weight: _Float,
    stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int,
    groups: int, n_threads: int,
) -> bool: ...
def depthwise_forward_channels_last(
    x: _Float, weight: _Float, bias: _Float, out: _Float,
    stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int,
    groups: int, n_threads: int, activation: int = ..., p0: float = ..., p1: float = ...,
) -> bool: ...
def depthwise_backward_input_channels_last(
    grad_out: _Float, weight: _Float, grad_in: _Float,
    stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int,
    groups: int, n_threads: int,
) -> bool: ...
def depthwise_backward_weight_channels_last(
    grad_out: _Float, x: _Float, grad_weight: _Float,
    stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int,
    groups: int, n_threads: int,
) -> bool: ...
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
def conv2d_backward_bias_channels_last(grad_out: _Float, grad_bias: _Float, n_threads: int) -> None: ...
def matmul(a: _Float, trans_a: bool, b: _Float, trans_b: bool, out: _Float, n_threads: int) -> None: ...
def depthwise_forward(
    x: _Float, weight: _Float, bias: _Float, out: _Float,
    stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int,
    groups: int, n_threads: int, activation: int = ..., p0: float = ..., p1: float = ...,
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
# Which depthwise implementation runs: 'split' (phase-split sweeps) or 'direct' (row loops).
DEPTHWISE_KERNELS: tuple[str, ...]
DEPTHWISE_OPS: tuple[str, ...]
def depthwise_kernel() -> str: ...
def set_depthwise_kernel(name: str) -> None: ...
def depthwise_implementation(
    op: str, batch: int, c_in: int, height: int, width: int, c_out: int, kernel_h: int, kernel_w: int,
    out_h: int, out_w: int, stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int,
    dilation_w: int, groups: int, itemsize: int,
) -> tuple[str, str]: ...
def _set_depthwise_budget(budget_bytes: int) -> int: ...

# Winograd F(4x4, 3x3), 3x3 kernels with stride 1: pad_h, pad_w are the top/left offsets of the
# input patches (2 - padding for an input gradient, computed with flip=True). winograd_forward
# returns whether an output is not finite (the caller recomputes those directly).
def winograd_forward(
    x: _Float, weight: _Float, bias: _Float, out: _Float, pad_h: int, pad_w: int, flip: bool, n_threads: int,
) -> bool: ...
def winograd_backward_weight(
    grad_out: _Float, x: _Float, grad_weight: _Float, pad_h: int, pad_w: int, n_threads: int,
) -> None: ...

# Pooling: geometry arguments are kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w (and
# dilation for max pooling); indices are int64 flat h*W + w positions in each input plane.
def max_pool2d_forward(
    x: _MaxPooled, out: _MaxPooled, indices: _Index,
    kernel_h: int, kernel_w: int, stride_h: int, stride_w: int,
    pad_h: int, pad_w: int, dilation_h: int, dilation_w: int,
    separable: bool, row_begin: int, row_end: int, n_threads: int,
) -> None: ...
def max_pool2d_backward(grad_out: _Float, indices: _Index, grad_in: _Float, n_threads: int) -> int: ...
def avg_pool2d_forward(
    x: _Float, out: _Float,
    kernel_h: int, kernel_w: int, stride_h: int, stride_w: int, pad_h: int, pad_w: int,
    pad_bottom: int, pad_right: int, dilation_h: int, dilation_w: int, count_include_pad: bool, divisor_override: int, row_begin: int, row_end: int, n_threads: int,
) -> None: ...
def avg_pool2d_backward(
    grad_out: _Float, grad_in: _Float,
    kernel_h: int, kernel_w: int, stride_h: int, stride_w: int, pad_h: int, pad_w: int,
    pad_bottom: int, pad_right: int, dilation_h: int, dilation_w: int, count_include_pad: bool, divisor_override: int, row_begin: int, row_end: int, n_threads: int,
) -> None: ...
# Adaptive pooling: windows [floor(o*In/Out), ceil((o+1)*In/Out)) along each axis, from the shapes.
def adaptive_avg_pool2d_forward(x: _Float, out: _Float, n_threads: int) -> None: ...
def adaptive_avg_pool2d_backward(grad_out: _Float, grad_in: _Float, n_threads: int) -> None: ...
def adaptive_max_pool2d_forward(x: _MaxPooled, out: _MaxPooled, indices: _Index, n_threads: int) -> None: ...
# 3-D convolution (_conv3d.pxi): (N, C, D, H, W) arrays, the weight as (C_out, C_in/groups * kD*kH*kW);
# each call takes the output rows od*H_out + oh in [row_begin, row_end). The gradients add into
# grad_in / grad_weight (zeroed by the caller once).
def set_conv3d_column_budget(elements: int) -> int: ...
def set_conv3d_direct_rows(nbytes: int) -> int: ...
def conv3d_ran() -> dict[str, str | None]: ...
def set_conv3d_weight_band(nbytes: int) -> int: ...
def conv3d_forward(
    x: _Float, weight: _Float, bias: _Float, out: _Float, kernel_d: int, kernel_h: int, kernel_w: int,
    stride_d: int, stride_h: int, stride_w: int, pad_d: int, pad_h: int, pad_w: int,
    dilation_d: int, dilation_h: int, dilation_w: int, groups: int, row_begin: int, row_end: int, n_threads: int,
) -> None: ...
def conv3d_backward_input(
    grad_out: _Float, weight: _Float, grad_in: _Float, kernel_d: int, kernel_h: int, kernel_w: int,
    stride_d: int, stride_h: int, stride_w: int, pad_d: int, pad_h: int, pad_w: int,
    dilation_d: int, dilation_h: int, dilation_w: int, groups: int, row_begin: int, row_end: int, n_threads: int,
) -> None: ...
def conv3d_backward_weight(
    grad_out: _Float, x: _Float, grad_weight: _Float, kernel_d: int, kernel_h: int, kernel_w: int,
    stride_d: int, stride_h: int, stride_w: int, pad_d: int, pad_h: int, pad_w: int,
    dilation_d: int, dilation_h: int, dilation_w: int, groups: int, row_begin: int, row_end: int, n_threads: int,
) -> None: ...
# 3-D convolution channels last (_conv3d_last.pxi): x / grad_in (N, D, H, W, C_in), out / grad_out
# (N, D_out, H_out, W_out, C_out); the forward's weight is (groups, kD*kH*kW * C_in/groups, C_out/groups)
# and the weight gradient (C_out, kD*kH*kW * C_in/groups), both tap-major; the input gradient's weight is
# PyTorch's (C_out, C_in/groups * kD*kH*kW). Output rows and accumulation as the channels-first kernels.
def conv3d_forward_last(
    x: _Float, weight: _Float, bias: _Float, out: _Float, kernel_d: int, kernel_h: int, kernel_w: int,
    stride_d: int, stride_h: int, stride_w: int, pad_d: int, pad_h: int, pad_w: int,
    dilation_d: int, dilation_h: int, dilation_w: int, groups: int, row_begin: int, row_end: int, n_threads: int,
) -> None: ...
def conv3d_backward_input_last(
    grad_out: _Float, weight: _Float, grad_in: _Float, kernel_d: int, kernel_h: int, kernel_w: int,
    stride_d: int, stride_h: int, stride_w: int, pad_d: int, pad_h: int, pad_w: int,
    dilation_d: int, dilation_h: int, dilation_w: int, groups: int, row_begin: int, row_end: int, n_threads: int,
) -> None: ...
def conv3d_backward_weight_last(
    grad_out: _Float, x: _Float, grad_weight: _Float, kernel_d: int, kernel_h: int, kernel_w: int,
    stride_d: int, stride_h: int, stride_w: int, pad_d: int, pad_h: int, pad_w: int,
    dilation_d: int, dilation_h: int, dilation_w: int, groups: int, row_begin: int, row_end: int, n_threads: int,
) -> None: ...
# 3-D pooling (_pool3d.pxi): (N, C, D, H, W) arrays, (N, C, D_out, H_out, W_out) outputs; indices are
# flat d*H*W + h*W + w (a zero-batch ``indices`` skips them); each call writes the output depths
# [od_begin, od_end) (a backward call adds their shares, zeroing grad_in first where od_begin is 0). max_pool3d's backward is max_pool2d_backward
# on (D*H, W) views.
def max_pool3d_forward(
    x: _Float, out: _Float, indices: _Index,
    kernel_d: int, kernel_h: int, kernel_w: int, stride_d: int, stride_h: int, stride_w: int,
    pad_d: int, pad_h: int, pad_w: int, dilation_d: int, dilation_h: int, dilation_w: int,
    od_begin: int, od_end: int, n_threads: int,
) -> None: ...
def avg_pool3d_forward(
    x: _Float, out: _Float,
    kernel_d: int, kernel_h: int, kernel_w: int, stride_d: int, stride_h: int, stride_w: int,
    pad_d: int, pad_h: int, pad_w: int, pad_back: int, pad_bottom: int, pad_right: int, dilation_d: int, dilation_h: int, dilation_w: int, count_include_pad: bool,
    divisor_override: int,
    od_begin: int, od_end: int, n_threads: int,
) -> None: ...
def avg_pool3d_backward(
    grad_out: _Float, grad_in: _Float,
    kernel_d: int, kernel_h: int, kernel_w: int, stride_d: int, stride_h: int, stride_w: int,
    pad_d: int, pad_h: int, pad_w: int, pad_back: int, pad_bottom: int, pad_right: int, dilation_d: int, dilation_h: int, dilation_w: int, count_include_pad: bool,
    divisor_override: int,
    od_begin: int, od_end: int, n_threads: int,
) -> None: ...
def adaptive_avg_pool3d_forward(x: _Float, out: _Float, od_begin: int, od_end: int, n_threads: int) -> None: ...
def adaptive_avg_pool3d_backward(grad_out: _Float, grad_in: _Float, od_begin: int, od_end: int, n_threads: int) -> None: ...
def adaptive_max_pool3d_forward(
    x: _Float, out: _Float, indices: _Index, od_begin: int, od_end: int, n_threads: int,
) -> None: ...
# Channels-last 3-D pooling (_pool3d_ndhwc.pxi): (N, D, H, W, C) arrays, (N, D_out, H_out, W_out, C)
# outputs and indices (the same flat d*H*W + h*W + w values), the geometry as above; forwards write
# the output depths [od_begin, od_end), backwards overwrite the input depths [d_begin, d_end).
def max_pool3d_ndhwc_forward(
    x: _Float, out: _Float, indices: _Index,
    kernel_d: int, kernel_h: int, kernel_w: int, stride_d: int, stride_h: int, stride_w: int,
    pad_d: int, pad_h: int, pad_w: int, dilation_d: int, dilation_h: int, dilation_w: int,
    od_begin: int, od_end: int, n_threads: int,
) -> None: ...
def adaptive_max_pool3d_ndhwc_forward(
    x: _Float, out: _Float, indices: _Index, od_begin: int, od_end: int, n_threads: int,
) -> None: ...
def avg_pool3d_ndhwc_forward(
    x: _Float, out: _Float,
    kernel_d: int, kernel_h: int, kernel_w: int, stride_d: int, stride_h: int, stride_w: int,
    pad_d: int, pad_h: int, pad_w: int, pad_back: int, pad_bottom: int, pad_right: int, dilation_d: int,
    dilation_h: int, dilation_w: int, count_include_pad: bool, divisor_override: int,
    od_begin: int, od_end: int, n_threads: int,
) -> None: ...
def adaptive_avg_pool3d_ndhwc_forward(x: _Float, out: _Float, od_begin: int, od_end: int, n_threads: int) -> None: ...
def avg_pool3d_ndhwc_backward(
    grad_out: _Float, grad_in: _Float,
    kernel_d: int, kernel_h: int, kernel_w: int, stride_d: int, stride_h: int, stride_w: int,
    pad_d: int, pad_h: int, pad_w: int, pad_back: int, pad_bottom: int, pad_right: int, dilation_d: int,
    dilation_h: int, dilation_w: int, count_include_pad: bool, divisor_override: int,
    d_begin: int, d_end: int, n_threads: int,
) -> None: ...
def adaptive_avg_pool3d_ndhwc_backward(
    grad_out: _Float, grad_in: _Float, d_begin: int, d_end: int, n_threads: int,
) -> None: ...
# Channels-last pooling (_pool_nhwc.pxi): (N, H, W, C) arrays, (N, out_h, out_w, C) outputs and
# indices (the same flat h*W + w values), the geometry as above.
def max_pool2d_nhwc_forward(
    x: _MaxPooled, out: _MaxPooled, indices: _Index,
    kernel_h: int, kernel_w: int, stride_h: int, stride_w: int,
    pad_h: int, pad_w: int, dilation_h: int, dilation_w: int, n_threads: int,
) -> None: ...
def max_pool2d_nhwc_separable(
    x: _Float, out: _Float, indices: _Index, kernel_h: int, kernel_w: int, stride_h: int, stride_w: int,
    pad_h: int, pad_w: int, n_threads: int,
) -> None: ...
def max_pool2d_nhwc_backward(grad_out: _Float, indices: _Index, grad_in: _Float, n_threads: int) -> int: ...
def avg_pool2d_nhwc_forward(
    x: _Float, out: _Float,
    kernel_h: int, kernel_w: int, stride_h: int, stride_w: int, pad_h: int, pad_w: int,
    pad_bottom: int, pad_right: int, dilation_h: int, dilation_w: int, count_include_pad: bool,
    divisor_override: int, n_threads: int,
) -> None: ...
def avg_pool2d_nhwc_backward(
    grad_out: _Float, grad_in: _Float,
    kernel_h: int, kernel_w: int, stride_h: int, stride_w: int, pad_h: int, pad_w: int,
    pad_bottom: int, pad_right: int, dilation_h: int, dilation_w: int, count_include_pad: bool,
    divisor_override: int, n_threads: int,
) -> None: ...
def adaptive_avg_pool2d_nhwc_forward(x: _Float, out: _Float, n_threads: int) -> None: ...
def adaptive_avg_pool2d_nhwc_backward(grad_out: _Float, grad_in: _Float, n_threads: int) -> None: ...
def adaptive_max_pool2d_nhwc_forward(x: _MaxPooled, out: _MaxPooled, indices: _Index, n_threads: int) -> None: ...

# Resampling and padding (_resample.pxi) over (N*C, H, W) planes, through one int64 table per axis:
# gather tables name one source element per output (negative: the constant ``value``), bilinear
# tables two, with their weights (of the arrays' dtype), shape (out_size, 2). Over columns
# [run_begin, run_end) a gather table counts up by one (a block copy).
def gather2d_forward(
    x: _Float, out: _Float, rows: _Index, cols: _Index, run_begin: int, run_end: int, value: float, n_threads: int,
) -> None: ...
def gather2d_backward(grad_out: _Float, grad_in: _Float, rows: _Index, cols: _Index, n_threads: int) -> None: ...
def bilinear2d_forward(
    x: _Float, out: _Float, rows: _Index, row_weights: _Float, cols: _Index, col_weights: _Float, n_threads: int,
) -> None: ...
def bilinear2d_backward(
    grad_out: _Float, grad_in: _Float, rows: _Index, row_weights: _Float, cols: _Index, col_weights: _Float,
    n_threads: int,
) -> None: ...

# Activations and batch normalisation (_elementwise.pxi); arrays flat (activations) or (N, C, H*W).
ACTIVATIONS: dict[str, int]
def activation_forward(x: _Float, y: _Float, kind: int, p0: float, p1: float, n_threads: int) -> None: ...
def activation_backward(
    grad_out: _Float, saved: _Float, grad_in: _Float, kind: int, p0: float, p1: float, n_threads: int,
) -> None: ...
def batch_norm_moments(
    x: _Float, count: float, mean: npt.NDArray[np.float64], m2: npt.NDArray[np.float64], n_threads: int,
) -> None: ...
def batch_norm_grad_sums(
    grad_out: _Float, x: _Float, y: _Float | None, kind: int, p0: float, p1: float, mean: npt.NDArray[np.float64],
    scale: npt.NDArray[np.float64], shift: npt.NDArray[np.float64],
    sum_grad: npt.NDArray[np.float64], sum_grad_centered: npt.NDArray[np.float64], n_threads: int,
) -> None: ...
def batch_norm_normalize(
    x: _Float, out: _Float, mean: npt.NDArray[np.float64], scale: npt.NDArray[np.float64],
    shift: npt.NDArray[np.float64], kind: int, p0: float, p1: float, n_threads: int,
) -> None: ...
def batch_norm_input_grad(
    grad_out: _Float, x: _Float, y: _Float | None, kind: int, p0: float, p1: float, shift: npt.NDArray[np.float64],
    grad_in: _Float,
    mean: npt.NDArray[np.float64], k_grad: npt.NDArray[np.float64], k_centered: npt.NDArray[np.float64],
    k_0: npt.NDArray[np.float64], n_threads: int,
) -> None: ...
def batch_norm_moments_nhwc(
    x: _Float, count: float, mean: npt.NDArray[np.float64], m2: npt.NDArray[np.float64], n_threads: int,
) -> None: ...
def batch_norm_grad_sums_nhwc(
    grad_out: _Float, x: _Float, y: _Float | None, kind: int, p0: float, p1: float, mean: npt.NDArray[np.float64],
    scale: npt.NDArray[np.float64], shift: npt.NDArray[np.float64],
    sum_grad: npt.NDArray[np.float64], sum_grad_centered: npt.NDArray[np.float64], n_threads: int,
) -> None: ...
def batch_norm_normalize_nhwc(
    x: _Float, out: _Float, mean: npt.NDArray[np.float64], scale: npt.NDArray[np.float64],
    shift: npt.NDArray[np.float64], kind: int, p0: float, p1: float, n_threads: int,
) -> None: ...
def batch_norm_input_grad_nhwc(
    grad_out: _Float, x: _Float, y: _Float | None, kind: int, p0: float, p1: float, shift: npt.NDArray[np.float64],
    grad_in: _Float,
    mean: npt.NDArray[np.float64], k_grad: npt.NDArray[np.float64], k_centered: npt.NDArray[np.float64],
    k_0: npt.NDArray[np.float64], n_threads: int,
) -> None: ...
OPTIMIZERS: dict[str, int]
def optimizer_step(
    kind: int, param: _Float, grad: _Float, state0: _Float, state1: _Float, state2: _Float,
    hyper: npt.NDArray[np.float64], n_threads: int,
) -> None: ...
def dropout(
    x: _Float, out: _Float, first: int, seed: int, threshold: int, scale: float, n_threads: int,
) -> None: ...
def add(a: _Float, b: _Float, out: _Float, kind: int, p0: float, p1: float, n_threads: int) -> None: ...
def channel_dropout(
    x: _Float, out: _Float, first: int, seed: int, threshold: int, scale: float, n_threads: int,
) -> None: ...
def softmax_forward(x: _Float, y: _Float, log_out: bool, n_threads: int) -> None: ...
def softmax_backward(grad_out: _Float, y: _Float, grad_in: _Float, log_out: bool, n_threads: int) -> None: ...
def layer_norm_normalize(
    x: _Float, out: _Float, mean: npt.NDArray[np.float64], inv_std: npt.NDArray[np.float64], weight: _Float,
    bias: _Float, n_threads: int,
) -> None: ...
def layer_norm_row_sums(
    grad_out: _Float, x: _Float, weight: _Float, mean: npt.NDArray[np.float64], sum_wg: npt.NDArray[np.float64],
    sum_wg_centered: npt.NDArray[np.float64], n_threads: int,
) -> None: ...
def layer_norm_input_grad(
    grad_out: _Float, x: _Float, weight: _Float, grad_in: _Float, mean: npt.NDArray[np.float64],
    k_grad: npt.NDArray[np.float64], k_centered: npt.NDArray[np.float64], k_0: npt.NDArray[np.float64],
    n_threads: int,
) -> None: ...
def layer_norm_param_grads(
    grad_out: _Float, x: _Float, mean: npt.NDArray[np.float64], inv_std: npt.NDArray[np.float64],
    grad_weight: npt.NDArray[np.float64], grad_bias: npt.NDArray[np.float64], n_threads: int,
) -> None: ...
def unfold_forward(
    x: _Float, cols: _Float, kernel_h: int, kernel_w: int, dilation_h: int, dilation_w: int, pad_h: int, pad_w: int,
    stride_h: int, stride_w: int, out_h: int, out_w: int, n_threads: int,
) -> None: ...
def fold_forward(
    cols: _Float, out: _Float, kernel_h: int, kernel_w: int, dilation_h: int, dilation_w: int, pad_h: int, pad_w: int,
    stride_h: int, stride_w: int, out_h: int, out_w: int, n_threads: int,
) -> None: ...
