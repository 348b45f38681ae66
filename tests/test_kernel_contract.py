"""What reaches the compiled kernels: every array C-contiguous, aligned and of the op's float
dtype (int64 for indices and windows), whatever the layout of the caller's arrays.

The kernels trust their inputs; this checks the public functions keep that promise. (A
contiguous but misaligned array, as read from a packed binary buffer, used to go through
unchanged: harmless-looking on x86-64, but undefined behaviour that UBSan reports.)
"""

import numpy as np
import pytest
from _helpers import LAYOUTS

import convx._core as core
import convx.functional as F

KERNELS = [name for name in dir(core) if not name.startswith("_") and name not in
           ("openmp_enabled", "default_num_threads") and callable(getattr(core, name))]


@pytest.fixture
def kernel_arrays(monkeypatch):
    """Every array argument of every kernel call made while the test runs."""
    seen = []
    for name in KERNELS:
        real = getattr(core, name)

        def spy(*args, _real=real, _name=name):
            seen.extend((_name, a) for a in args if isinstance(a, np.ndarray))
            return _real(*args)

        monkeypatch.setattr(core, name, spy)
    return seen


def _every_op(x, weight, grad_out, pooled_grad, indices):
    F.conv2d(x, weight, padding=1)
    F.conv2d(x, weight[:, :1].repeat(1, 1), padding=1, groups=3)
    F.conv2d_backward_input(grad_out, weight, x.shape, padding=1)
    F.conv2d_backward_weight(grad_out, x, weight.shape, padding=1)
    F.conv2d_backward_bias(grad_out)
    F.conv2d_backward(grad_out, x, weight, padding=1)
    F.conv_transpose2d(grad_out, weight, padding=1)
    F.max_pool2d(x, 2, return_indices=True)
    F.max_pool2d_backward(pooled_grad, indices, x.shape)
    F.avg_pool2d(x, 2)
    F.avg_pool2d_backward(pooled_grad, x.shape, 2)
    F.adaptive_avg_pool2d(x, 3)
    F.adaptive_avg_pool2d_backward(pooled_grad, x.shape)
    F.adaptive_max_pool2d(x, 3, return_indices=True)
    F.interpolate(x, scale_factor=1.5, mode="bilinear")
    F.interpolate_backward(grad_out, (2, 3, 3, 4), size=(6, 6), mode="bilinear", align_corners=True)
    F.interpolate(x, size=(4, 9), mode="nearest-exact")
    F.interpolate_backward(grad_out, (2, 3, 3, 3), size=(6, 6))
    F.pad(x, (1, 2, -1, 3), mode="reflect")
    F.pad_backward(grad_out, (2, 3, 4, 3), (1, 2, -1, 3), mode="circular")
    F.unfold(x, 2, padding=1)
    F.fold_backward(grad_out, 3, stride=2)
    F.fold(x[:, 0], (2, 4), (1, 2))  # (2, 6, 6) as columns: 3 channels of 1x2 blocks, 2x3 of them
    # 3-D pooling, x read as unbatched (C, D, H, W) volumes: pooled_grad is a (1, 2, 2) pool's output.
    F.max_pool3d(x, (1, 2, 2), return_indices=True)
    F.max_pool3d_backward(pooled_grad, indices, x.shape)
    F.avg_pool3d(x, (1, 2, 2))
    F.avg_pool3d_backward(pooled_grad, x.shape, (1, 2, 2))
    F.adaptive_avg_pool3d(x, 3)
    F.adaptive_avg_pool3d_backward(pooled_grad, x.shape)
    F.adaptive_max_pool3d(x, 3, return_indices=True)
    # Channels last: x read as an unbatched (D, H, W, C) volume of six channels.
    _, indices_last = F.max_pool3d(x, (1, 1, 2), return_indices=True, layout="NDHWC")
    grad_last = grad_out[:, :, :3]
    F.max_pool3d_backward(grad_last, indices_last, x.shape, layout="NDHWC")
    F.avg_pool3d(x, (1, 2, 2), padding=((0, 0), (1, 0), (0, 1)), layout="NDHWC")
    F.avg_pool3d_backward(grad_last, x.shape, (1, 1, 2), layout="NDHWC")
    F.adaptive_avg_pool3d(x, 2, layout="NDHWC")
    F.adaptive_avg_pool3d_backward(grad_last, x.shape, layout="NDHWC")
    F.adaptive_max_pool3d(x, 2, return_indices=True, layout="NDHWC")


@pytest.mark.parametrize("layout", ["c-contiguous", *LAYOUTS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_get_contiguous_aligned_arrays(dtype, layout, kernel_arrays, rng):
    make = (lambda a: a) if layout == "c-contiguous" else LAYOUTS[layout]
    x = rng.standard_normal((2, 3, 6, 6)).astype(dtype)
    weight = rng.standard_normal((3, 3, 3, 3)).astype(dtype)
    grad_out = rng.standard_normal((2, 3, 6, 6)).astype(dtype)
    pooled_grad = rng.standard_normal((2, 3, 3, 3)).astype(dtype)
    _, indices = F.max_pool2d(x, 2, return_indices=True)
    kernel_arrays.clear()
    _every_op(*(make(a) for a in (x, weight, grad_out, pooled_grad, indices)))
    assert {name for name, _ in kernel_arrays} >= {"conv2d_forward", "depthwise_forward", "max_pool2d_backward",
                                                   "bilinear2d_backward", "gather2d_forward", "unfold_forward",
                                                   "fold_forward", "max_pool3d_forward", "avg_pool3d_backward",
                                                   "adaptive_max_pool3d_forward", "max_pool3d_ndhwc_forward",
                                                   "avg_pool3d_ndhwc_backward", "adaptive_avg_pool3d_ndhwc_backward"}
    for name, array in kernel_arrays:
        assert array.flags.c_contiguous, (name, array.shape, array.strides)
        assert array.flags.aligned, (name, array.shape)
        assert array.dtype in (np.dtype(dtype), np.dtype(np.int64)), (name, array.dtype)
