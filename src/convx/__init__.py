"""convx: fast 2-D convolution and pooling for neural networks written in NumPy."""

from ._config import show_config
from ._gradcheck import gradcheck
from ._threads import ForkedProcessWarning, get_num_threads, set_num_threads
from ._version import __version__
from .functional import (
    adaptive_avg_pool2d,
    adaptive_avg_pool2d_backward,
    adaptive_max_pool2d,
    avg_pool2d,
    avg_pool2d_backward,
    conv2d,
    conv2d_backward,
    conv2d_backward_bias,
    conv2d_backward_input,
    conv2d_backward_weight,
    conv_transpose2d,
    max_pool2d,
    max_pool2d_backward,
)
from . import nn, optim

__all__ = [
    "ForkedProcessWarning",
    "__version__",
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
    "get_num_threads",
    "gradcheck",
    "max_pool2d",
    "max_pool2d_backward",
    "set_num_threads",
    "show_config",
]
