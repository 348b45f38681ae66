"""Public pooling ops: max, average and adaptive pooling with their backward passes."""


def _not_yet(*args, **kwargs):
    raise NotImplementedError("pooling is not implemented yet")


max_pool2d = max_pool2d_backward = avg_pool2d = avg_pool2d_backward = _not_yet
adaptive_avg_pool2d = adaptive_avg_pool2d_backward = adaptive_max_pool2d = _not_yet
