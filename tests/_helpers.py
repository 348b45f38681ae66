"""Shared pieces of the convolution tests: cases, array factories, layouts, naive loops, torch calls."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import convx.functional as F
from convx.reference import conv as reference

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
    flipped = np.ascontiguousarray(a[..., ::-1, ::-1]) if a.ndim >= 2 else np.ascontiguousarray(a[::-1])
    return flipped[..., ::-1, ::-1] if a.ndim >= 2 else flipped[::-1]


def _read_only(a):
    a = a.copy()
    a.setflags(write=False)
    return a


def _axes_permuted(a):
    """A view whose memory order is the reverse of its logical order (a transposed C array)."""
    storage = np.ascontiguousarray(a.transpose(tuple(reversed(range(a.ndim)))))
    return storage.transpose(tuple(reversed(range(a.ndim))))


LAYOUTS = {
    "fortran": _fortran,
    "non-contiguous": _non_contiguous,
    "negative-strides": _negative_strides,
    "read-only": _read_only,
    "axes-permuted": _axes_permuted,
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
