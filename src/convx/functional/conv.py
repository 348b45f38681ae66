"""Public convolution ops (placeholder while the kernels land)."""
