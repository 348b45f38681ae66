"""The benchmark's shape suite: the layers of the classic networks, and how to run each op on them."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .._shapes import conv_output_size, pool_output_size


@dataclass(frozen=True)
class ConvCase:
    """One convolution layer: ``x`` (N, C_in, H, W) and ``weight`` (C_out, C_in / groups, k, k), or
    with a ``depth``, volumes ``x`` (N, C_in, D, H, W) and ``weight`` (C_out, C_in / groups, k, k, k)."""

    name: str
    batch: int
    c_in: int
    c_out: int
    size: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    dtype: str = "float32"
    depth: int = 0  # 0: images; else the volumes' depth

    kind = "conv"
    ops = ("forward", "backward_input", "backward_weight", "backward")

    @property
    def dims(self) -> int:
        return 3 if self.depth else 2

    @property
    def out_size(self) -> int:
        return conv_output_size(self.size, self.kernel, self.stride, self.padding, self.padding, 1)

    @property
    def sizes(self) -> tuple[int, ...]:
        """The input's spatial shape."""
        return (self.depth, self.size, self.size) if self.depth else (self.size, self.size)

    @property
    def out_sizes(self) -> tuple[int, ...]:
        return tuple(conv_output_size(s, self.kernel, self.stride, self.padding, self.padding, 1) for s in self.sizes)

    def flops(self, op: str) -> float:
        """Multiply-adds times two of one op (the fused backward does two products)."""
        macs = (self.batch * self.c_out * math.prod(self.out_sizes) * (self.c_in // self.groups)
                * self.kernel**self.dims)
        return 2.0 * macs * (2 if op == "backward" else 1)

    def arrays(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        dtype = np.dtype(self.dtype)
        x = rng.standard_normal((self.batch, self.c_in, *self.sizes)).astype(dtype)
        weight = rng.standard_normal((self.c_out, self.c_in // self.groups, *[self.kernel] * self.dims)).astype(dtype)
        weight *= 1.0 / np.sqrt(weight[0].size)
        grad_out = rng.standard_normal((self.batch, self.c_out, *self.out_sizes)).astype(dtype)
        return {"x": x, "weight": weight, "grad_out": grad_out}

    def describe(self) -> str:
        extra = f" s{self.stride}" if self.stride != 1 else ""
        extra += f" p{self.padding}" if self.padding else ""
        extra += f" g{self.groups}" if self.groups != 1 else ""
        dtype = "" if self.dtype == "float32" else f" {self.dtype}"
        sizes = "x".join(map(str, self.sizes))
        return f"{self.batch}x{self.c_in}->{self.c_out} {sizes} k{self.kernel}{extra}{dtype}"


@dataclass(frozen=True)
class PoolCase:
    """One pooling layer on ``x`` (N, C, H, W), or with a ``depth`` on volumes (N, C, D, H, W)."""

    name: str
    mode: str  # "max" or "avg"
    batch: int
    channels: int
    size: int
    kernel: int
    stride: int
    padding: int = 0
    dtype: str = "float32"
    depth: int = 0  # 0: images; else the volumes' depth

    kind = "pool"
    ops = ("forward", "backward")

    @property
    def dims(self) -> int:
        return 3 if self.depth else 2

    @property
    def out_size(self) -> int:
        return pool_output_size(self.size, self.kernel, self.stride, self.padding, 1, False)

    @property
    def sizes(self) -> tuple[int, ...]:
        """The input's spatial shape."""
        return (self.depth, self.size, self.size) if self.depth else (self.size, self.size)

    @property
    def out_sizes(self) -> tuple[int, ...]:
        return tuple(pool_output_size(s, self.kernel, self.stride, self.padding, 1, False) for s in self.sizes)

    def flops(self, op: str) -> float:
        return float(self.batch * self.channels * math.prod(self.out_sizes) * self.kernel**self.dims)

    def bytes_moved(self, op: str) -> tuple[int, int]:
        """Bytes the op must read and write at least: its inputs and its outputs (max pooling's
        int64 indices included, as the benchmark asks for them)."""
        item = np.dtype(self.dtype).itemsize
        planes = self.batch * self.channels
        inputs = planes * math.prod(self.sizes) * item
        outputs = planes * math.prod(self.out_sizes) * item
        indices = planes * math.prod(self.out_sizes) * 8 if self.mode == "max" else 0
        if op == "forward":
            return inputs, outputs + indices
        return outputs + indices, inputs

    def arrays(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        dtype = np.dtype(self.dtype)
        x = rng.standard_normal((self.batch, self.channels, *self.sizes)).astype(dtype)
        grad_out = rng.standard_normal((self.batch, self.channels, *self.out_sizes)).astype(dtype)
        return {"x": x, "grad_out": grad_out}

    def describe(self) -> str:
        pad = f" p{self.padding}" if self.padding else ""
        sizes = "x".join(map(str, self.sizes))
        return f"{self.mode} {self.batch}x{self.channels} {sizes} k{self.kernel} s{self.stride}{pad}"


CASES: dict[str, ConvCase | PoolCase] = {
    case.name: case
    for case in [
        ConvCase("lenet_c1", 64, 1, 20, 28, 5),
        ConvCase("lenet_c2", 64, 20, 50, 12, 5),
        ConvCase("vgg_3x3", 16, 64, 64, 56, 3, padding=1),
        ConvCase("resnet_3x3_s2", 16, 128, 256, 28, 3, stride=2, padding=1),
        ConvCase("resnet_1x1", 16, 256, 64, 56, 1),
        ConvCase("resnet_stem", 8, 3, 64, 224, 7, stride=2, padding=3),
        ConvCase("deep_small", 32, 512, 512, 7, 3, padding=1),
        ConvCase("depthwise", 16, 128, 128, 56, 3, padding=1, groups=128),
        ConvCase("f64_3x3", 16, 32, 32, 32, 3, padding=1, dtype="float64"),
        PoolCase("maxpool_2x2", "max", 16, 64, 56, 2, 2),
        PoolCase("avgpool_2x2", "avg", 16, 64, 56, 2, 2),
        PoolCase("maxpool_3x3_s2", "max", 16, 64, 56, 3, 2, padding=1),
        # Windows large against the input (issue 25): time must not grow with the window. The
        # issue's realistic geometry (k127 over 128x128, stride 1, padding 63) at 1x4 planes, as
        # PyTorch's windows take it seconds; its 1x1 plane under a k2049 window; a strided and a
        # mid-sized window (the latter near the crossover of the two max-pool kernels).
        PoolCase("maxpool_large_k127", "max", 1, 4, 128, 127, 1, padding=63),
        PoolCase("maxpool_large_1x1_k2049", "max", 16, 64, 1, 2049, 1, padding=1024),
        PoolCase("maxpool_large_k31_s2", "max", 4, 16, 64, 31, 2, padding=15),
        PoolCase("maxpool_large_k9", "max", 8, 32, 56, 9, 1, padding=4),
    ]
}

# ``--suite 3d`` (issue 21): the volume layers of video, medical-imaging and 3-D U-Net nets.
CASES_3D: dict[str, ConvCase | PoolCase] = {
    case.name: case
    for case in [
        ConvCase("c3d_3x3x3", 2, 64, 64, 56, 3, padding=1, depth=16),  # C3D: 16 frames of 56x56
        ConvCase("unet3d_3x3x3", 1, 32, 64, 64, 3, padding=1, depth=64),  # a 3-D U-Net encoder layer on 64^3
        ConvCase("stem3d_7x7x7_s2", 2, 3, 64, 112, 7, stride=2, padding=3, depth=16),
        ConvCase("depthwise3d", 2, 64, 64, 56, 3, padding=1, groups=64, depth=16),
        ConvCase("pointwise3d", 2, 64, 128, 28, 1, depth=16),
        PoolCase("maxpool3d_2x2x2", "max", 2, 64, 56, 2, 2, depth=16),
        PoolCase("maxpool3d_3x3x3_s2", "max", 2, 64, 56, 3, 2, padding=1, depth=16),
    ]
}

# Small versions for --quick and the CI smoke run: same layer types, a fraction of the work.
QUICK_BATCH = 2


def quick(case: ConvCase | PoolCase) -> ConvCase | PoolCase:
    """``case`` as ``--quick`` times it: at most ``QUICK_BATCH`` images."""
    return replace(case, batch=min(case.batch, QUICK_BATCH))
