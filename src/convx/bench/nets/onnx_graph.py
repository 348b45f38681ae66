"""The benchmark nets as ONNX graphs, for ONNX Runtime, built with ``onnx.helper`` from a convx model.

Why not ``torch.onnx.export``: the TorchScript exporter (``dynamo=False``) is deprecated since
PyTorch 2.9 and warns on every call, and the torch.export-based one needs ``onnxscript``
and PyTorch itself, while ONNX Runtime is worth timing without either. The nets use eight ONNX
operators whose semantics are PyTorch's, so the graph is written directly: one node per layer,
in the order of the model, weights from ``state_dict()`` (the layer's true parameters, whatever
a layer may cache for itself), evaluation mode (BatchNorm with running statistics). ONNX
Runtime then optimises it as it would an exported graph (it folds BatchNorm into the
convolution and fuses the activation). ``tests/test_bench_nets.py`` checks these graphs against
PyTorch's own export of the same models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ... import nn
from ...nn.module import Module
from .models import Residual

# Opset 17 (ONNX 1.12, 2022) has every operator used here with today's semantics; IR version 8 is
# the one that opset came with, so that older runtimes load the model too.
OPSET = 17
IR_VERSION = 8


class _Graph:
    def __init__(self, state: Mapping[str, np.ndarray]) -> None:
        self.state = state
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def weight(self, key: str) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(self.state[key]), key))
        return key

    def node(self, op: str, inputs: list[str], **attributes: Any) -> str:
        from onnx import helper

        output = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def add(self, module: Module, prefix: str, x: str) -> str:
        """Nodes computing ``module(x)``; returns the name of the output."""
        if isinstance(module, nn.Sequential):
            for name, child in module.children():
                x = self.add(child, f"{prefix}{name}.", x)
            return x
        if isinstance(module, Residual):
            body = self.add(module.body, f"{prefix}body.", x)
            skip = x if module.shortcut is None else self.add(module.shortcut, f"{prefix}shortcut.", x)
            return self.node("Relu", [self.node("Add", [body, skip])])
        if isinstance(module, nn.Conv2d):
            if module.padding_mode != "zeros" or isinstance(module.padding, str):
                raise NotImplementedError(f"to_onnx: Conv2d with padding={module.padding!r}, "
                                          f"padding_mode={module.padding_mode!r}")
            inputs = [x, self.weight(prefix + "weight")]
            if "bias" in module.params:
                inputs.append(self.weight(prefix + "bias"))
            return self.node("Conv", inputs, kernel_shape=list(module.kernel_size), strides=list(module.stride),
                             pads=[*module.padding, *module.padding], dilations=list(module.dilation),
                             group=module.groups)
        if isinstance(module, nn.BatchNorm2d):
            if not (module.affine and module.track_running_stats):
                raise NotImplementedError("to_onnx: BatchNorm2d without affine parameters or running statistics")
            keys = ("weight", "bias", "running_mean", "running_var")
            return self.node("BatchNormalization", [x, *(self.weight(prefix + key) for key in keys)],
                             epsilon=module.eps)
        if isinstance(module, nn.ReLU):
            return self.node("Relu", [x])
        if isinstance(module, nn.MaxPool2d):
            if module.dilation != (1, 1) or module.ceil_mode:
                raise NotImplementedError("to_onnx: MaxPool2d with dilation or ceil_mode")
            return self.node("MaxPool", [x], kernel_shape=list(module.kernel_size), strides=list(module.stride),
                             pads=[*module.padding, *module.padding])
        if isinstance(module, nn.AdaptiveAvgPool2d):
            if module.output_size != (1, 1):
                raise NotImplementedError(f"to_onnx: AdaptiveAvgPool2d({module.output_size})")
            return self.node("GlobalAveragePool", [x])
        if isinstance(module, nn.Flatten):
            if (module.start_dim, module.end_dim) != (1, -1):
                raise NotImplementedError("to_onnx: Flatten other than Flatten(1, -1)")
            return self.node("Flatten", [x], axis=1)
        if isinstance(module, nn.Linear):
            inputs = [x, self.weight(prefix + "weight")]
            if "bias" in module.params:
                inputs.append(self.weight(prefix + "bias"))
            return self.node("Gemm", inputs, transB=1)
        raise NotImplementedError(f"to_onnx: no ONNX translation for {type(module).__name__}")


def to_onnx(model: Module, input_shape: tuple[int, ...]) -> bytes:
    """``model`` in evaluation mode as a serialised ONNX model with input ``x`` of ``input_shape``
    (float32) and output ``logits``; the layers of the benchmark nets only (else NotImplementedError)."""
    import onnx
    from onnx import TensorProto, helper

    graph = _Graph(model.state_dict())
    output = graph.add(model, "", "x")
    nodes = graph.nodes + [helper.make_node("Identity", [output], ["logits"], name="logits")]
    with_batch = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [input_shape[0], "classes"])
    onnx_graph = helper.make_graph(nodes, "convx_bench", [with_batch], [logits], graph.initializers)
    onnx_model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   ir_version=IR_VERSION, producer_name="convx.bench")
    onnx.checker.check_model(onnx_model, full_check=True)
    serialised: bytes = onnx_model.SerializeToString()
    return serialised


def ort_session(model_bytes: bytes, threads: int) -> Any:
    """An ONNX Runtime CPU session on ``threads`` intra-op threads, one inter-op thread, sequential.

    Its threads do not spin waiting for work after a run (``session.intra_op.allow_spinning``
    0): spinning threads would take a core from whichever library the benchmark runs next.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
