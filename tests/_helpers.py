"""Shared pieces of the convolution tests: cases, array factories, layouts, naive loops, torch calls."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

import convx.functional as F

# The ops of the conv2d family; each test compares them one at a time.
CONV_OPS = ["forward", "backward_input", "backward_weight", "backward_bias", "backward"]

# (C_in, C_out, groups) configurations, named.
CHANNELS = {
    "dense": (3, 4, 1),
    "grouped": (4, 6, 2),
    "grouped-to-one": (6, 3, 3),
    "depthwise": (4, 4, 4),
    "depthwise-x2": (3, 6, 3),
    "single-in": (1, 5, 1),
}


def pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


@dataclass(frozen=True)
class ConvCase:
    """One conv2d geometry: x (N, C_in, H, W), weight (C_out, C_in / groups, kH, kW)."""

    n: int
    c_in: int
    height: int
    width: int
    c_out: int
    kernel: tuple[int, int]
    stride: object = 1
    padding: object = 0
    dilation: object = 1
    groups: int = 1
    unbatched: bool = False
    bias: bool = True

    @property
    def x_shape(self):
        shape = (self.n, self.c_in, self.height, self.width)
        return shape[1:] if self.unbatched else shape

    @property
    def weight_shape(self):
        return (self.c_out, self.c_in // self.groups, *self.kernel)

    @property
    def kwargs(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def out_size(self):
        """The output's (H_out, W_out) by the spec's formula (PyTorch's 'same' rule)."""
        sizes = []
        for axis, size in enumerate((self.height, self.width)):
            k, s, d = self.kernel[axis], pair(self.stride)[axis], pair(self.dilation)[axis]
            if self.padding == "same":
                total = d * (k - 1)
            elif self.padding == "valid":
                total = 0
            else:
                total = 2 * pair(self.padding)[axis]
            sizes.append((size + total - d * (k - 1) - 1) // s + 1)
        return tuple(sizes)

    @property
    def out_shape(self):
        shape = (self.n, self.c_out, *self.out_size())
        return shape[1:] if self.unbatched else shape

    def arrays(self, rng, dtype):
        """x, weight, bias (or None) and a grad_out of the output's shape, standard normal."""
        x = rng.standard_normal(self.x_shape).astype(dtype)
        weight = rng.standard_normal(self.weight_shape).astype(dtype)
        bias = rng.standard_normal(self.c_out).astype(dtype) if self.bias else None
        grad_out = rng.standard_normal(self.out_shape).astype(dtype)
        return x, weight, bias, grad_out


@dataclass(frozen=True)
class TransposeCase:
    """One conv_transpose2d geometry: x (N, C_in, H, W), weight (C_in, C_out / groups, kH, kW)."""

    n: int
    c_in: int
    height: int
    width: int
    c_out: int
    kernel: tuple[int, int]
    stride: object = 1
    padding: object = 0
    output_padding: object = 0
    dilation: object = 1
    groups: int = 1
    unbatched: bool = False
    bias: bool = True

    @property
    def x_shape(self):
        shape = (self.n, self.c_in, self.height, self.width)
        return shape[1:] if self.unbatched else shape

    @property
    def weight_shape(self):
        return (self.c_in, self.c_out // self.groups, *self.kernel)

    @property
    def kwargs(self):
        return dict(
            stride=self.stride,
            padding=self.padding,
            output_padding=self.output_padding,
            groups=self.groups,
            dilation=self.dilation,
        )

    def out_size(self):
        sizes = []
        for axis, size in enumerate((self.height, self.width)):
            s, p, op, d = (pair(v)[axis] for v in (self.stride, self.padding, self.output_padding, self.dilation))
            sizes.append((size - 1) * s - 2 * p + d * (self.kernel[axis] - 1) + op + 1)
        return tuple(sizes)

    def arrays(self, rng, dtype):
        x = rng.standard_normal(self.x_shape).astype(dtype)
        weight = rng.standard_normal(self.weight_shape).astype(dtype)
        bias = rng.standard_normal(self.c_out).astype(dtype) if self.bias else None
        return x, weight, bias


DTYPE_IDS = ["float32", "float64"]

# (N, H, W, kernel): an odd and an even spatial size, non-square kernels.
IMAGES = {
    "2x7x10-k3x2": (2, 7, 10, (3, 2)),
    "3x6x5-k1x3": (3, 6, 5, (1, 3)),
}

STRIDES = [1, 2, (1, 3)]
PADDINGS = [0, 1, (2, 0)]
DILATIONS = [1, 2, (2, 1)]


# Geometries the grid does not reach: (N, C_in, H, W, C_out, kernel, stride, padding, dilation, groups).
SPECIAL_CASES = {
    "stride-larger-than-kernel": ConvCase(2, 3, 11, 13, 4, (2, 2), stride=3),
    "stride-larger-than-kernel-asymmetric": ConvCase(2, 2, 9, 14, 3, (1, 2), stride=(4, 3), padding=(0, 1)),
    "padding-at-least-kernel": ConvCase(2, 3, 5, 6, 2, (2, 3), padding=(3, 4)),
    "padding-at-least-kernel-strided": ConvCase(1, 2, 4, 5, 3, (3, 2), stride=2, padding=(4, 3)),
    "kernel-equals-input": ConvCase(2, 3, 5, 4, 6, (5, 4)),
    "dilated-kernel-equals-input": ConvCase(2, 2, 5, 7, 3, (3, 4), dilation=(2, 2)),
    "kernel-equals-padded-input": ConvCase(1, 2, 3, 2, 2, (5, 6), padding=(1, 2)),
    "stride-larger-than-input": ConvCase(2, 3, 5, 4, 2, (2, 2), stride=(7, 9)),
    "padding-much-larger-than-input": ConvCase(2, 2, 3, 2, 3, (2, 3), stride=(2, 3), padding=(6, 5)),
    "dilation-larger-than-input": ConvCase(2, 2, 9, 8, 3, (2, 2), dilation=(8, 7)),
    "1x1": ConvCase(2, 3, 6, 7, 5, (1, 1)),
    "1x1-no-bias": ConvCase(3, 4, 5, 5, 2, (1, 1), bias=False),
    "1x1-stride2": ConvCase(2, 3, 7, 8, 5, (1, 1), stride=2),
    "1x1-stride-asymmetric": ConvCase(2, 3, 7, 8, 5, (1, 1), stride=(1, 2)),
    "1x1-padded": ConvCase(2, 3, 4, 5, 2, (1, 1), padding=1),
    "1x1-dilated": ConvCase(2, 3, 4, 5, 2, (1, 1), dilation=3),
    "1x1-strided-padded-depthwise": ConvCase(2, 4, 7, 6, 8, (1, 1), stride=(2, 3), padding=(1, 0), groups=4),
    "1x1-grouped": ConvCase(2, 6, 5, 4, 9, (1, 1), groups=3),
    "1x1-depthwise": ConvCase(2, 5, 5, 4, 5, (1, 1), groups=5),
    "single-input-channel": ConvCase(3, 1, 9, 8, 4, (3, 3), padding=1),
    "single-input-and-output-channel": ConvCase(2, 1, 6, 9, 1, (2, 4), stride=(2, 1)),
    "same-odd-kernel": ConvCase(2, 3, 7, 6, 4, (3, 5), padding="same"),
    "same-even-kernel": ConvCase(2, 3, 7, 6, 4, (4, 2), padding="same"),
    "same-even-kernel-dilated": ConvCase(2, 2, 9, 8, 3, (2, 4), padding="same", dilation=(3, 2)),
    "same-even-kernel-grouped": ConvCase(2, 4, 6, 7, 6, (2, 2), padding="same", groups=2),
    "same-even-kernel-depthwise": ConvCase(2, 3, 8, 9, 6, (4, 3), padding="same", groups=3),
    "same-1x1": ConvCase(2, 3, 5, 4, 2, (1, 1), padding="same"),
    "valid-even-kernel": ConvCase(2, 3, 7, 6, 4, (4, 2), padding="valid"),
    "valid-strided": ConvCase(2, 3, 9, 8, 4, (3, 2), stride=(2, 3), padding="valid", dilation=(1, 2)),
    "same-stride-pair-of-ones": ConvCase(2, 3, 6, 5, 2, (3, 4), stride=(1, 1), padding="same"),
    "valid-depthwise": ConvCase(2, 4, 7, 6, 4, (2, 3), padding="valid", groups=4),
    "asymmetric-everything": ConvCase(
        2, 4, 13, 11, 6, (3, 2), stride=(2, 3), padding=(1, 2), dilation=(3, 2), groups=2
    ),
    "depthwise-wide-rows": ConvCase(2, 8, 9, 67, 8, (3, 5), stride=(1, 2), padding=(1, 2), dilation=(1, 2), groups=8),
    "depthwise-x2-wide-rows": ConvCase(2, 4, 13, 41, 8, (5, 3), stride=2, padding=2, groups=4),
    "depthwise-x3-odd": ConvCase(3, 2, 17, 19, 6, (3, 3), stride=(3, 1), padding=(0, 1), dilation=(1, 3), groups=2),
    "depthwise-no-bias": ConvCase(2, 6, 10, 33, 6, (3, 3), padding=1, groups=6, bias=False),
    # 3x3 stride 1, the register-blocked plane kernels: interiors of zero, one and several
    # blocks of 16 columns (the last overlapping), padding 0..3, planes shorter than the kernel.
    "depthwise-3x3-wide": ConvCase(2, 3, 7, 50, 3, (3, 3), padding=1, groups=3),
    "depthwise-3x3-block-exactly": ConvCase(2, 2, 5, 18, 2, (3, 3), groups=2),
    "depthwise-3x3-narrow": ConvCase(2, 2, 6, 5, 2, (3, 3), padding=1, groups=2),
    "depthwise-3x3-padding-2": ConvCase(2, 3, 4, 21, 3, (3, 3), padding=2, groups=3),
    "depthwise-3x3-padding-3": ConvCase(1, 2, 3, 19, 2, (3, 3), padding=(3, 2), groups=2),
    "depthwise-3x3-one-row": ConvCase(2, 2, 1, 37, 2, (3, 3), padding=1, groups=2),
    "depthwise-kernel-equals-input": ConvCase(2, 3, 4, 5, 3, (4, 5), groups=3),
    "many-small-images": ConvCase(19, 3, 4, 5, 4, (3, 2), padding=1),
    "many-small-images-grouped": ConvCase(23, 4, 3, 3, 4, (2, 2), stride=1, padding=(0, 1), groups=2),
    "many-small-images-depthwise": ConvCase(21, 3, 5, 4, 3, (3, 3), padding=1, groups=3),
    "one-tall-image": ConvCase(1, 3, 61, 7, 5, (3, 3), padding=1),
    "one-wide-image-strided": ConvCase(1, 2, 5, 83, 3, (2, 4), stride=(1, 3), dilation=(2, 1)),
    "unbatched": ConvCase(1, 3, 8, 9, 4, (3, 2), stride=(1, 2), padding=1, unbatched=True),
    "unbatched-grouped-dilated": ConvCase(1, 4, 9, 8, 6, (2, 3), padding=(2, 1), dilation=2, groups=2, unbatched=True),
    "unbatched-depthwise": ConvCase(1, 5, 8, 9, 5, (3, 3), stride=2, groups=5, unbatched=True),
    "unbatched-same": ConvCase(1, 3, 6, 7, 2, (2, 4), padding="same", unbatched=True),
    "unbatched-1x1": ConvCase(1, 3, 6, 7, 2, (1, 1), unbatched=True),
    "many-channels": ConvCase(2, 24, 6, 5, 40, (3, 3), padding=1),
    # Column matrices of more than 2^22 elements per image, so the kernels must split each
    # image's output rows into chunks (16 * 3 * 3 rows by 200 * 200 or 171 * 171 columns).
    "chunked-rows": ConvCase(2, 16, 200, 200, 8, (3, 3), padding=1),
    "chunked-rows-strided-dilated": ConvCase(1, 16, 343, 344, 5, (3, 3), stride=2, padding=(2, 1), dilation=2),
    "chunked-rows-grouped": ConvCase(1, 32, 190, 170, 6, (3, 3), padding=(1, 0), groups=2),
}


TRANSPOSE_CASES = {
    "stride2-output-padding": TransposeCase(2, 3, 5, 6, 4, (3, 3), stride=2, padding=1, output_padding=1),
    "output-padding-below-dilation": TransposeCase(2, 3, 5, 6, 4, (3, 2), padding=1, output_padding=2, dilation=3),
    "output-padding-asymmetric": TransposeCase(
        2, 4, 4, 5, 6, (2, 3), stride=(3, 2), padding=(1, 0), output_padding=(2, 1), groups=2
    ),
    "stride-larger-than-kernel": TransposeCase(2, 3, 4, 5, 2, (2, 2), stride=3),
    "large-padding": TransposeCase(2, 2, 6, 6, 3, (3, 3), stride=2, padding=(4, 3)),
    "1x1": TransposeCase(2, 3, 5, 4, 6, (1, 1)),
    "1x1-stride2": TransposeCase(2, 3, 5, 4, 6, (1, 1), stride=2, output_padding=1),
    "depthwise": TransposeCase(2, 4, 7, 9, 4, (3, 3), stride=2, padding=1, output_padding=1, groups=4),
    "depthwise-x2-wide": TransposeCase(2, 3, 5, 37, 6, (3, 5), stride=(1, 2), padding=(1, 2), groups=3),
    "single-input-channel": TransposeCase(3, 1, 4, 5, 3, (4, 4), stride=2, padding=1),
    "no-bias": TransposeCase(2, 3, 5, 5, 2, (2, 2), stride=2, bias=False),
    "many-small-images": TransposeCase(17, 2, 3, 3, 3, (2, 2), stride=2),
    "unbatched": TransposeCase(1, 4, 5, 6, 6, (3, 2), stride=2, padding=1, groups=2, unbatched=True),
    "unbatched-depthwise": TransposeCase(1, 3, 5, 6, 3, (3, 3), dilation=2, groups=3, unbatched=True),
    "chunked-rows": TransposeCase(1, 8, 100, 120, 16, (3, 3), stride=2, padding=1, output_padding=1),
}


def run_conv_op(module, op, x, weight, bias, grad_out, kwargs):
    """The outputs of one conv2d-family op, as a tuple, from convx.functional or the reference.

    The reference has no fused backward: its three separate gradients stand in for it.
    """
    if op == "forward":
        return (module.conv2d(x, weight, bias, **kwargs),)
    if op == "backward_input":
        return (module.conv2d_backward_input(grad_out, weight, x.shape, **kwargs),)
    if op == "backward_weight":
        return (module.conv2d_backward_weight(grad_out, x, weight.shape, **kwargs),)
    if op == "backward_bias":
        return (module.conv2d_backward_bias(grad_out),)
    if op == "backward":
        if module is F:
            return tuple(F.conv2d_backward(grad_out, x, weight, **kwargs))
        return (
            module.conv2d_backward_input(grad_out, weight, x.shape, **kwargs),
            module.conv2d_backward_weight(grad_out, x, weight.shape, **kwargs),
            module.conv2d_backward_bias(grad_out),
        )
    raise AssertionError(op)


def expected_shapes(op, case: ConvCase):
    c_out = case.c_out
    return {
        "forward": [case.out_shape],
        "backward_input": [case.x_shape],
        "backward_weight": [case.weight_shape],
        "backward_bias": [(c_out,)],
        "backward": [case.x_shape, case.weight_shape, (c_out,)],
    }[op]


def check_fresh_outputs(outputs, inputs, dtype):
    """Outputs keep the dtype, are C-contiguous and share no memory with any input."""
    for out in outputs:
        assert isinstance(out, np.ndarray)
        assert out.dtype == np.dtype(dtype), (out.dtype, dtype)
        assert out.flags.c_contiguous
        for array in inputs:
            if array is not None:
                assert not np.shares_memory(out, array)


# Memory layouts in which an array can reach an op. Each returns an array equal to its argument.
def _fortran(a):
    return np.asfortranarray(a)


def _non_contiguous(a):
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1] + 1,), dtype=a.dtype)
    wide[..., 1::2] = a
    return wide[..., 1::2]


def _negative_strides(a):
    """A view with every stride negative: the reversed storage of a reversed copy."""
    reverse_all = (slice(None, None, -1),) * a.ndim
    return np.ascontiguousarray(a[reverse_all])[reverse_all]


def _read_only(a):
    a = a.copy()
    a.setflags(write=False)
    return a


def _axes_permuted(a):
    """A view whose memory order is the reverse of its logical order (a transposed C array)."""
    storage = np.ascontiguousarray(a.transpose(tuple(reversed(range(a.ndim)))))
    return storage.transpose(tuple(reversed(range(a.ndim))))


def _unaligned(a):
    """Elements one byte off their natural alignment (as from a packed binary buffer)."""
    storage = np.zeros(a.nbytes + 1, dtype=np.uint8)
    shifted = np.ndarray(a.shape, dtype=a.dtype, buffer=storage.data, offset=1)
    shifted[...] = a
    assert not shifted.flags.aligned
    return shifted


LAYOUTS = {
    "fortran": _fortran,
    "non-contiguous": _non_contiguous,
    "negative-strides": _negative_strides,
    "read-only": _read_only,
    "axes-permuted": _axes_permuted,
    "unaligned": _unaligned,
}


# Naive loops straight from the definitions, for tiny cases only.
def naive_conv2d(x, weight, bias, stride, padding, dilation, groups):
    """y[n, co, oh, ow] = b[co] + sum_{ci, i, j} w[co, ci, i, j] * x[n, g*Cg + ci, oh*s - p + i*d, ow*s - p + j*d]."""
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    n_images, c_in, height, width = x.shape
    c_out, c_in_group, kernel_h, kernel_w = weight.shape
    out_h = (height + 2 * ph - dh * (kernel_h - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kernel_w - 1) - 1) // sw + 1
    c_out_group = c_out // groups
    y = np.zeros((n_images, c_out, out_h, out_w))
    for n in range(n_images):
        for co in range(c_out):
            g = co // c_out_group
            for oh in range(out_h):
                for ow in range(out_w):
                    total = 0.0 if bias is None else float(bias[co])
                    for ci in range(c_in_group):
                        for i in range(kernel_h):
                            for j in range(kernel_w):
                                h = oh * sh - ph + i * dh
                                w = ow * sw - pw + j * dw
                                if 0 <= h < height and 0 <= w < width:
                                    total += float(weight[co, ci, i, j]) * float(x[n, g * c_in_group + ci, h, w])
                    y[n, co, oh, ow] = total
    return y


def naive_conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, dilation):
    """y[n, g*Cog + co, h*s - p + i*d, w*s - p + j*d] += x[n, ci, h, w] * weight[ci, co, i, j], kept if inside."""
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = (pair(v) for v in (stride, padding, output_padding, dilation))
    n_images, c_in, height, width = x.shape
    _, c_out_group, kernel_h, kernel_w = weight.shape
    c_in_group = c_in // groups
    out_h = (height - 1) * sh - 2 * ph + dh * (kernel_h - 1) + oph + 1
    out_w = (width - 1) * sw - 2 * pw + dw * (kernel_w - 1) + opw + 1
    y = np.zeros((n_images, c_out_group * groups, out_h, out_w))
    for n in range(n_images):
        for ci in range(c_in):
            g = ci // c_in_group
            for co in range(c_out_group):
                for h in range(height):
                    for w in range(width):
                        for i in range(kernel_h):
                            for j in range(kernel_w):
                                oh = h * sh - ph + i * dh
                                ow = w * sw - pw + j * dw
                                if 0 <= oh < out_h and 0 <= ow < out_w:
                                    y[n, g * c_out_group + co, oh, ow] += float(x[n, ci, h, w]) * float(
                                        weight[ci, co, i, j]
                                    )
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)[:, None, None]
    return y


@dataclass
class TorchConv:
    """PyTorch's forward output and autograd gradients for one conv2d call (NumPy arrays)."""

    y: np.ndarray
    grad_x: np.ndarray
    grad_w: np.ndarray
    grad_b: np.ndarray | None = field(default=None)


def torch_conv2d(torch, x, weight, bias, grad_out, kwargs) -> TorchConv:
    """torch.nn.functional.conv2d forward and its autograd backward at grad_out."""
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(weight, requires_grad=True)
    tb = None if bias is None else torch.tensor(bias, requires_grad=True)
    with warnings.catch_warnings():
        # PyTorch's own performance note about 'same' with even kernels; the result is right.
        warnings.filterwarnings("ignore", message="Using padding='same'", category=UserWarning)
        y = torch.nn.functional.conv2d(tx, tw, tb, **kwargs)
    y.backward(torch.tensor(grad_out))
    return TorchConv(
        y.detach().numpy(),
        tx.grad.numpy(),
        tw.grad.numpy(),
        None if tb is None else tb.grad.numpy(),
    )


def torch_conv_transpose2d(torch, x, weight, bias, kwargs) -> np.ndarray:
    tb = None if bias is None else torch.tensor(bias)
    return torch.nn.functional.conv_transpose2d(torch.tensor(x), torch.tensor(weight), tb, **kwargs).numpy()
