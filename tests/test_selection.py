"""Which implementation the built-in rules pick for each convolution layer of the benchmark, per
GEMM level (forward, input gradient, weight gradient; 2 threads): pinned, so that a change of a
threshold in src/convx/_conv_*.pxi that moves one of them shows here. Measure the move with
``python -m convx.bench --tune`` (on every CPU the rule was measured on, named in its comment)
and update the pin in the same commit, with the figures.

Depthwise layers take the depthwise kernels (their choice: tests/test_conv.py, depthwise_implementation).
"""

import pytest

from convx import _core
from convx.bench.cases import CASES, quick

PINNED = {
    ("lenet_c1", 64, "avx512"): ("packed", "im2col", "im2col"),
    ("lenet_c1", 64, "avx2"): ("plane", "im2col", "im2col"),
    ("lenet_c1", 64, "blas"): ("im2col", "im2col", "im2col"),
    ("lenet_c1", 2, "avx512"): ("packed", "im2col", "im2col"),
    ("lenet_c1", 2, "avx2"): ("plane", "im2col", "im2col"),
    ("lenet_c1", 2, "blas"): ("im2col", "im2col", "im2col"),
    ("lenet_c2", 64, "avx512"): ("direct-rows", "packed", "direct-outer"),
    ("lenet_c2", 64, "avx2"): ("direct-rows", "packed", "direct-outer"),
    ("lenet_c2", 64, "blas"): ("im2col", "im2col", "im2col"),
    ("lenet_c2", 2, "avx512"): ("direct-rows", "packed", "direct-outer"),
    ("lenet_c2", 2, "avx2"): ("direct-rows", "packed", "direct-outer"),
    ("lenet_c2", 2, "blas"): ("im2col", "im2col", "im2col"),
    ("vgg_3x3", 16, "avx512"): ("direct-rows", "direct-rows", "direct-split-images"),
    ("vgg_3x3", 16, "avx2"): ("direct-rows", "direct-rows", "direct-split-images"),
    ("vgg_3x3", 16, "blas"): ("im2col", "im2col", "im2col"),
    ("vgg_3x3", 2, "avx512"): ("direct-rows", "direct-rows", "direct-split-images"),
    ("vgg_3x3", 2, "avx2"): ("direct-rows", "direct-rows", "direct-split-images"),
    ("vgg_3x3", 2, "blas"): ("im2col", "im2col", "im2col"),
    ("resnet_3x3_s2", 16, "avx512"): ("direct-rows", "packed", "direct-outer"),
    ("resnet_3x3_s2", 16, "avx2"): ("direct-rows", "packed", "direct-outer"),
    ("resnet_3x3_s2", 16, "blas"): ("im2col", "im2col", "im2col"),
    ("resnet_3x3_s2", 2, "avx512"): ("direct-rows", "packed", "direct-outer"),
    ("resnet_3x3_s2", 2, "avx2"): ("direct-rows", "packed", "direct-outer"),
    ("resnet_3x3_s2", 2, "blas"): ("im2col", "im2col", "im2col"),
    ("resnet_1x1", 16, "avx512"): ("flat", "flat", "flat"),
    ("resnet_1x1", 16, "avx2"): ("flat", "flat", "flat"),
    ("resnet_1x1", 16, "blas"): ("im2col", "im2col", "im2col"),
    ("resnet_1x1", 2, "avx512"): ("flat", "flat", "flat"),
    ("resnet_1x1", 2, "avx2"): ("flat", "flat", "flat"),
    ("resnet_1x1", 2, "blas"): ("im2col", "im2col", "im2col"),
    ("resnet_stem", 8, "avx512"): ("direct-rows", "im2col", "direct-outer"),
    ("resnet_stem", 8, "avx2"): ("direct-rows", "im2col", "direct-outer"),
    ("resnet_stem", 8, "blas"): ("im2col", "im2col", "im2col"),
    ("resnet_stem", 2, "avx512"): ("direct-rows", "im2col", "direct-outer"),
    ("resnet_stem", 2, "avx2"): ("direct-rows", "im2col", "direct-outer"),
    ("resnet_stem", 2, "blas"): ("im2col", "im2col", "im2col"),
    ("deep_small", 32, "avx512"): ("direct-images", "direct-images", "direct-split-channels"),
    ("deep_small", 32, "avx2"): ("direct-images", "direct-images", "direct-split-channels"),
    ("deep_small", 32, "blas"): ("im2col", "im2col", "im2col"),
    ("deep_small", 2, "avx512"): ("direct-rows", "direct-rows", "direct-split-channels"),
    ("deep_small", 2, "avx2"): ("direct-rows", "direct-rows", "direct-split-channels"),
    ("deep_small", 2, "blas"): ("im2col", "im2col", "im2col"),
    ("f64_3x3", 16, "avx512"): ("direct-rows", "direct-rows", "direct-split-images"),
    ("f64_3x3", 16, "avx2"): ("direct-rows", "direct-rows", "direct-split-images"),
    ("f64_3x3", 16, "blas"): ("im2col", "im2col", "im2col"),
    ("f64_3x3", 2, "avx512"): ("direct-rows", "direct-rows", "direct-split-images"),
    ("f64_3x3", 2, "avx2"): ("direct-rows", "direct-rows", "direct-split-images"),
    ("f64_3x3", 2, "blas"): ("im2col", "im2col", "im2col"),
}


def _case(name, batch):
    case = CASES[name]
    return case if case.batch == batch else quick(case)


@pytest.mark.parametrize("name, batch, level", list(PINNED))
def test_the_rules_pick_the_pinned_implementation(name, batch, level):
    if level not in _core.supported_gemm_kernels():
        pytest.skip(f"this CPU does not run the {level!r} kernels, so their choice never applies here")
    case = _case(name, batch)
    assert case.batch == batch
    out = case.out_size
    with _core.ConvConfig(level, "auto"):
        picked = tuple(
            _core.conv_implementation(op, case.batch, case.c_in, case.size, case.size, case.c_out, case.kernel,
                                      case.kernel, out, out, case.groups, case.stride, case.stride, case.padding,
                                      case.padding, 1, 1, case.dtype == "float32", 2)
            for op in ("forward", "input", "weight")
        )
    im2col_weight = "blas/im2col"
    expected = tuple(
        im2col_weight if op == "weight" and impl == "im2col" else f"{level}/{impl}"
        for op, impl in zip(("forward", "input", "weight"), PINNED[name, batch, level])
    )
    assert picked == expected


def test_every_convolution_layer_of_the_benchmark_is_pinned():
    layers = {(c.name, b) for c in CASES.values() if c.kind == "conv" and not (c.groups > 1 and c.c_in == c.groups)
              for b in (c.batch, quick(c).batch)}
    assert layers == {(name, batch) for name, batch, _ in PINNED}


@pytest.mark.parametrize("level", ["avx512", "avx2"])
@pytest.mark.parametrize("c_in, size, dtype_is_float, expected", [
    # (the image's channels-last copy, x (H + 2 padding columns) x C_in)
    (64, 56, True, "direct-split-images"),  # 0.79 MiB
    (256, 28, True, "direct-split-images"),  # 0.82 MiB
    (192, 56, True, "direct-outer"),  # 2.38 MiB: the split kernels would re-read it from memory per tile
    (96, 56, True, "direct-outer"),  # 1.19 MiB
    (32, 56, False, "direct-split-images"),  # 0.79 MiB in float64
    (64, 56, False, "direct-outer"),  # 1.59 MiB in float64
])
def test_the_weight_gradient_splits_over_images_only_while_an_image_copy_fits_l2(level, c_in, size, dtype_is_float,
                                                                                   expected):
    if level not in _core.supported_gemm_kernels():
        pytest.skip(f"this CPU does not run the {level!r} kernels, so their choice never applies here")
    with _core.ConvConfig(level, "auto"):
        picked = _core.conv_implementation("weight", 8, c_in, size, size, 64, 3, 3, size, size, 1, 1, 1, 1, 1, 1, 1,
                                           dtype_is_float, 2)
    assert picked == f"{level}/{expected}"
