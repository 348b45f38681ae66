"""Drop-in replacements for the convolution and pooling layers of ``classroom_layers``, on convx.

Same arguments, same ``(out, cache)`` / ``(dout, cache)`` protocol, same results; the
max-pooling cache holds the argmax indices instead of the whole input.
"""

import convx


def conv_forward_fast(x, w, b, conv_param):
    out = convx.conv2d(x, w, b, stride=conv_param["stride"], padding=conv_param["pad"])
    cache = (x, w, b, conv_param)
    return out, cache


def conv_backward_fast(dout, cache):
    x, w, b, conv_param = cache
    dx, dw, db = convx.conv2d_backward(dout, x, w, stride=conv_param["stride"], padding=conv_param["pad"])
    return dx, dw, db


def max_pool_forward_fast(x, pool_param):
    kernel = (pool_param["pool_height"], pool_param["pool_width"])
    out, indices = convx.max_pool2d(x, kernel, stride=pool_param["stride"], return_indices=True)
    cache = (indices, x.shape)
    return out, cache


def max_pool_backward_fast(dout, cache):
    indices, x_shape = cache
    return convx.max_pool2d_backward(dout, indices, x_shape)
