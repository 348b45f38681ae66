# Pooling kernels (max, average, adaptive), forward and backward.
