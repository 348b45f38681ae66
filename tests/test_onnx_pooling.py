"""ONNX's own conformance cases for MaxPool, AveragePool and LpPool (the node tests shipped in the
``onnx`` wheel), one- and two-dimensional, through convx with an adapter that only maps attributes
to arguments: no manual padding, no reshapes."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest

import convx.functional as F

onnx = pytest.importorskip("onnx")
node_cases = pytest.importorskip("onnx.backend.test.case.node")

OPS = ("MaxPool", "AveragePool", "LpPool")
AUTO_PAD = {"NOTSET": None, "VALID": "valid", "SAME_UPPER": "same", "SAME_LOWER": "same_lower"}


def _cases():
    """The pooling cases: importing an operator's module of onnx.backend.test.case.node records its
    cases (each class exports them as it is created); only the three modules are imported, quietly
    (their neighbours warn about casts under filterwarnings=error)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for module in ("maxpool", "averagepool", "lppool"):
            importlib.import_module(f"onnx.backend.test.case.node.{module}")
    found = []
    for case in node_cases._NodeTestCases:
        node = case.model.graph.node[0]
        if node.op_type in OPS and case.data_sets[0][0][0].ndim in (3, 4):
            found.append(case)
    return found


CASES = _cases()


def _arguments(node, dims):
    """The convx arguments for an ONNX pooling node's attributes."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = AUTO_PAD[auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad]
    pads = attrs.get("pads", [0] * 2 * dims)
    padding = auto_pad if auto_pad is not None else tuple((pads[k], pads[dims + k]) for k in range(dims))
    kwargs = dict(kernel_size=tuple(attrs["kernel_shape"]), stride=tuple(attrs.get("strides", [1] * dims)),
                  padding=padding, dilation=tuple(attrs.get("dilations", [1] * dims)),
                  ceil_mode=bool(attrs.get("ceil_mode", 0)))
    return attrs, kwargs


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_onnx_conformance_case(case):
    node = case.model.graph.node[0]
    inputs, outputs = case.data_sets[0]
    x = inputs[0]
    dims = x.ndim - 2
    attrs, kwargs = _arguments(node, dims)
    if x.dtype == np.uint8:
        pytest.skip("max pooling of uint8 arrays is another item of issue 20")
    if dims == 1:
        kwargs = {k: (v if isinstance(v, (str, bool)) else v[0] if k != "padding" else v) for k, v in kwargs.items()}
    if node.op_type == "MaxPool":
        pool = F.max_pool1d if dims == 1 else F.max_pool2d
        y, indices = pool(x, **kwargs, return_indices=True)
        np.testing.assert_array_equal(y, outputs[0])
        if len(outputs) == 2:
            # ONNX's indices count over the whole tensor, in row-major (or column-major) planes.
            height, width = x.shape[2:]
            planes = np.arange(x.shape[0] * x.shape[1]).reshape(x.shape[0], x.shape[1], 1, 1) * height * width
            if attrs.get("storage_order", 0):
                row, col = np.divmod(indices, width)
                indices = col * height + row
            np.testing.assert_array_equal(indices + planes, outputs[1])
    elif node.op_type == "AveragePool":
        pool = F.avg_pool1d if dims == 1 else F.avg_pool2d
        count_include_pad = bool(attrs.get("count_include_pad", 0))
        ceil_mode = kwargs.pop("ceil_mode")
        y = pool(x, kwargs.pop("kernel_size"), kwargs.pop("stride"), kwargs.pop("padding"), ceil_mode,
                 count_include_pad, **kwargs)
        # One case's expected values are written to 4 decimals (0.1511 for 1.3595 / 9).
        atol = 1e-4 if case.name == "test_averagepool_2d_ceil_last_window_starts_on_pad" else 1e-6
        np.testing.assert_allclose(y, outputs[0], rtol=1e-5, atol=atol)
    else:
        p = attrs.get("p", 2)
        pool = F.lp_pool1d if dims == 1 else F.lp_pool2d
        ceil_mode = kwargs.pop("ceil_mode")
        if p % 2:
            # ONNX's LpPool sums |x| ** p, PyTorch's (and convx's) x ** p: they agree on |x|.
            x = np.abs(x)
        y = pool(x, p, kwargs.pop("kernel_size"), kwargs.pop("stride"), ceil_mode, **kwargs)
        np.testing.assert_allclose(y, outputs[0], rtol=1e-5, atol=1e-5)
