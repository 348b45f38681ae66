"""Whole-network benchmark (``python -m convx.bench --nets``): four CIFAR/MNIST-sized nets in convx
and PyTorch with the same weights, and in ONNX Runtime.

``models`` the architectures (one builder per net for both libraries) and the residual block;
``onnx_graph`` the ONNX graph of a convx model; ``measure`` agreement, interleaved timing and the
per-layer profile; ``report`` the tables, JSON and plot.
"""
