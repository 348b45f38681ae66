"""Each benchmarked library's version of every op, as zero-argument callables on prepared arrays."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import functional as convx_ops
from .cases import ConvCase, PoolCase

Calls = dict[str, Callable[[], object]]

# ``--layout``: the layouts convx's ops run in; "both" times each op in both, interleaved.
LAYOUTS = ("NCHW", "NHWC", "both")
# Which outputs of each op are data in the op's layout (True) and which are not (the weight and
# bias gradients: (C_out, C_in / groups, kH, kW) and (C_out,) in both layouts).
LAYOUT_OUTPUTS = {("conv", "forward"): (True,), ("conv", "backward_input"): (True,),
                  ("conv", "backward_weight"): (False,), ("conv", "backward"): (True, False, False),
                  ("max", "forward"): (True, True), ("avg", "forward"): (True,),
                  ("max", "backward"): (True,), ("avg", "backward"): (True,)}


def channels_last(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` with the images and output gradients copied to (N, H, W, C), C-contiguous (the
    weight unchanged): what a channels-last net holds, made before any timing."""
    return {name: a if name == "weight" else np.ascontiguousarray(np.moveaxis(a, 1, -1)) for name, a in arrays.items()}


def channels_first_outputs(case: ConvCase | PoolCase, op: str, outputs: object) -> tuple[np.ndarray, ...]:
    """The outputs of ``op`` as a tuple, those in the op's data layout moved from (N, H, W, C)
    to (N, C, H, W), so that a channels-last run can be compared with a channels-first one."""
    flat = outputs if isinstance(outputs, tuple) else (outputs,)
    key = (case.kind if case.kind == "conv" else case.mode, op)  # type: ignore[union-attr]
    return tuple(np.moveaxis(a, -1, 1) if data else a for a, data in zip(flat, LAYOUT_OUTPUTS[key]))


def _conv_args(case: ConvCase) -> dict:
    return dict(stride=case.stride, padding=case.padding, dilation=1, groups=case.groups)


def _op(ops, name: str, case: ConvCase | PoolCase):
    """``ops``'s op ``name`` for the case's dimensions: ``conv{}d`` -> ``conv2d`` or ``conv3d``."""
    return getattr(ops, name.format(case.dims))


def _in_layout(arrays: dict[str, np.ndarray], layout: str) -> dict[str, np.ndarray]:
    return channels_last(arrays) if layout == "NHWC" else arrays


def _conv_calls(ops, case: ConvCase, arrays: dict[str, np.ndarray], **extra) -> Calls:
    x, weight, grad_out = arrays["x"], arrays["weight"], arrays["grad_out"]
    args = dict(_conv_args(case), **extra)
    conv, backward_input = _op(ops, "conv{}d", case), _op(ops, "conv{}d_backward_input", case)
    backward_weight = _op(ops, "conv{}d_backward_weight", case)
    calls: Calls = {
        "forward": lambda: conv(x, weight, None, **args),
        "backward_input": lambda: backward_input(grad_out, weight, x.shape, **args),
        "backward_weight": lambda: backward_weight(grad_out, x, weight.shape, **args),
    }
    if hasattr(ops, f"conv{case.dims}d_backward"):
        backward = _op(ops, "conv{}d_backward", case)
        calls["backward"] = lambda: backward(grad_out, x, weight, **args)
    return calls


def _pool_calls(ops, case: PoolCase, arrays: dict[str, np.ndarray], index_ops=None, **extra) -> Calls:
    """The pooling ops of ``ops``; max pooling's backward takes the indices of ``index_ops``'s forward
    (``ops``'s by default), computed here, before any timing."""
    x, grad_out = arrays["x"], arrays["grad_out"]
    args = dict(kernel_size=case.kernel, stride=case.stride, padding=case.padding, **extra)
    if case.mode == "max":
        pool, backward = _op(ops, "max_pool{}d", case), _op(ops, "max_pool{}d_backward", case)
        _, indices = _op(index_ops or ops, "max_pool{}d", case)(x, return_indices=True, **args)
        return {
            "forward": lambda: pool(x, return_indices=True, **args),
            "backward": lambda: backward(grad_out, indices, x.shape, **extra),
        }
    pool, backward = _op(ops, "avg_pool{}d", case), _op(ops, "avg_pool{}d_backward", case)
    return {
        "forward": lambda: pool(x, **args),
        "backward": lambda: backward(grad_out, x.shape, **args),
    }


def convx_calls(case, arrays, layout: str = "NCHW") -> Calls:
    """convx's ops; with ``layout="NHWC"`` on channels-last copies of ``arrays`` (made here, before any timing)."""
    builder = _conv_calls if case.kind == "conv" else _pool_calls
    extra = {"layout": "NHWC"} if layout == "NHWC" else {}
    return builder(convx_ops, case, _in_layout(arrays, layout), **extra)


def convx_nhwc_calls(case, arrays, layout: str = "NCHW") -> Calls:
    """convx's ops channels-last whatever ``layout`` says: ``--layout both`` times them beside ``convx_calls``."""
    return convx_calls(case, arrays, "NHWC")


def winograd_applies(case: ConvCase | PoolCase) -> bool:
    return case.kind == "conv" and case.dims == 2 and (case.kernel, case.stride, case.groups) == (3, 1, 1)


def winograd_calls(case, arrays, layout: str = "NCHW") -> Calls | None:
    """convx with ``algorithm="winograd"``, on the cases it applies to (3x3, stride 1, one group)."""
    if not winograd_applies(case):
        return None
    extra = {"layout": "NHWC"} if layout == "NHWC" else {}
    return _conv_calls(convx_ops, case, _in_layout(arrays, layout), algorithm="winograd", **extra)


def numpy_calls(case, arrays, layout: str = "NCHW") -> Calls:
    """The pure-NumPy reference (``convx.reference``), the baseline a NumPy user starts from;
    channels first whatever ``layout`` says (the reference has no other)."""
    from .. import reference

    if case.dims == 3:
        module = reference.conv3d if case.kind == "conv" else reference.pooling3d
    else:
        module = reference.conv if case.kind == "conv" else reference.pooling
    if case.kind != "conv":
        # convx's indices, which equal the reference's (tests/test_pooling*.py): the reference's
        # forward takes seconds on the large windows, and every pass makes the calls anew.
        return _pool_calls(module, case, arrays, index_ops=convx_ops)
    calls = _conv_calls(module, case, arrays)
    # The reference has no fused pass: a NumPy user makes the three calls.
    calls["backward"] = separate_backward(module, case, arrays)
    return calls


def separate_backward(ops, case: ConvCase, arrays: dict[str, np.ndarray], **extra) -> Callable[[], object]:
    """The three calls a fused ``conv2d_backward`` replaces (input, weight and bias gradients), in
    ``ops``; ``extra``: ``layout="NHWC"`` on channels-last ``arrays``."""
    calls = _conv_calls(ops, case, arrays, **extra)
    grad_out = arrays["grad_out"]
    if hasattr(ops, f"conv{case.dims}d_backward_bias"):
        bias = _op(ops, "conv{}d_backward_bias", case)
        return lambda: (calls["backward_input"](), calls["backward_weight"](), bias(grad_out, **extra))
    # the 3-D reference has no bias gradient: the sum over N and the volume
    axes = (0, *range(2, grad_out.ndim))
    return lambda: (calls["backward_input"](), calls["backward_weight"](), grad_out.sum(axis=axes))


def torch_calls(case, arrays, layout: str = "NCHW") -> Calls | None:
    """PyTorch CPU on the same arrays (shared memory, no copies), or None when it is not installed.

    With ``layout="NHWC"``: on channels-last copies of the images and output gradients, seen by
    PyTorch as (N, C, H, W) tensors in ``torch.channels_last`` memory format, and the weight
    copied to that format too, as ``model.to(memory_format=torch.channels_last)`` would do.
    """
    try:
        import torch
    except ImportError:
        return None
    aten = torch.ops.aten
    if layout == "NHWC":
        last = channels_last(arrays)
        x = torch.from_numpy(last["x"]).permute(0, 3, 1, 2)
        grad_out = torch.from_numpy(last["grad_out"]).permute(0, 3, 1, 2)
    else:
        x = torch.from_numpy(arrays["x"])
        grad_out = torch.from_numpy(arrays["grad_out"])
    d = case.dims
    if case.kind == "conv":
        weight = torch.from_numpy(arrays["weight"])
        if layout == "NHWC":
            weight = weight.contiguous(memory_format=torch.channels_last)
        geometry = ([case.stride] * d, [case.padding] * d, [1] * d, False, [0] * d, case.groups)
        conv = torch.nn.functional.conv3d if d == 3 else torch.nn.functional.conv2d

        def backward(mask):
            return lambda: aten.convolution_backward(grad_out, x, weight, None, *geometry, mask)

        return {
            "forward": lambda: conv(x, weight, None, case.stride, case.padding, 1, case.groups),
            "backward_input": backward([True, False, False]),
            "backward_weight": backward([False, True, False]),
            "backward": backward([True, True, True]),
        }
    kernel, stride, padding = [case.kernel] * d, [case.stride] * d, [case.padding] * d
    if case.mode == "max":
        pool = aten.max_pool3d_with_indices if d == 3 else aten.max_pool2d_with_indices
        pool_backward = aten.max_pool3d_with_indices_backward if d == 3 else aten.max_pool2d_with_indices_backward
        _, indices = pool(x, kernel, stride, padding)
        return {
            "forward": lambda: pool(x, kernel, stride, padding),
            "backward": lambda: pool_backward(grad_out, x, kernel, stride, padding, [1] * d, False, indices),
        }
    avg = torch.nn.functional.avg_pool3d if d == 3 else torch.nn.functional.avg_pool2d
    avg_backward = aten.avg_pool3d_backward if d == 3 else aten.avg_pool2d_backward
    return {
        "forward": lambda: avg(x, kernel, stride, padding),
        "backward": lambda: avg_backward(grad_out, x, kernel, stride, padding, False, True, None),
    }


def copy_calls(case: ConvCase | PoolCase, arrays: dict[str, np.ndarray], layout: str = "NCHW") -> Calls | None:
    """Pooling's memory-speed yardstick: one-thread ``np.copyto`` of (read + written) / 2 bytes, so
    that it reads and writes as many bytes as the op must (timed interleaved with the others, so
    it finds the caches as they do)."""
    if case.kind != "pool":
        return None
    calls = {}
    for op in case.ops:
        read, written = case.bytes_moved(op)
        source = np.ones((read + written) // 2 // 4, dtype=np.float32)
        target = np.empty_like(source)
        calls[op] = lambda source=source, target=target: np.copyto(target, source)
    return calls


# name -> builder(case, arrays, layout): the arrays are always channels first; each builder makes
# the channels-last copies it needs.
IMPLEMENTATIONS = {"convx": convx_calls, "convx_nhwc": convx_nhwc_calls, "winograd": winograd_calls,
                   "numpy": numpy_calls, "torch": torch_calls, "copy": copy_calls}
