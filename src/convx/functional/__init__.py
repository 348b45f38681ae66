"""Public functional ops (PyTorch-compatible semantics) on NumPy arrays."""

from .conv import (
    conv2d,
    conv2d_backward,
    conv2d_backward_bias,
    conv2d_backward_input,
    conv2d_backward_weight,
    conv_transpose2d,
)
from .pooling import (
    adaptive_avg_pool2d,
    adaptive_avg_pool2d_backward,
    adaptive_max_pool2d,
    avg_pool2d,
    avg_pool2d_backward,
    max_pool2d,
    max_pool2d_backward,
)

__all__ = [
    "adaptive_avg_pool2d",
    "adaptive_avg_pool2d_backward",
    "adaptive_max_pool2d",
    "avg_pool2d",
    "avg_pool2d_backward",
    "conv2d",
    "conv2d_backward",
    "conv2d_backward_bias",
    "conv2d_backward_input",
    "conv2d_backward_weight",
    "conv_transpose2d",
    "max_pool2d",
    "max_pool2d_backward",
]
