# Channels-last depthwise convolution kernels (weight (C, 1, kH, kW), groups = C, one filter per
# channel): (N, H, W, C) arrays, forward and both gradients, native (no transposes of the images).
#
# The weight is transposed once to (taps, C), so that each tap is a C-vector beside the image's.
# The forward splits the N * H_out output rows between the threads, the input gradient the N * H
# input rows (each gathers the products of the outputs whose windows cover it), the weight
# gradient fixed blocks of output rows, each summed into its own (taps, C) partial and the
# partials added in block order (results the same on any number of threads). Taps in the padding
# are skipped: where a product with the padding's zeros would not be zero (a weight, or for the
# weight gradient a value of grad_out, not finite), the kernels decline and return False.

cdef extern from "_depthwise_nhwc.h" nogil:
    void convx_dwl_forward_row_f(const float* image, const float* wt, const float* bias, float* out,
                                 Py_ssize_t height, Py_ssize_t width, Py_ssize_t channels,
                                 Py_ssize_t out_w, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t oh, Py_ssize_t sh,
                                 Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw)
    void convx_dwl_forward_row_d(const double* image, const double* wt, const double* bias, double* out,
                                 Py_ssize_t height, Py_ssize_t width, Py_ssize_t channels,
                                 Py_ssize_t out_w, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t oh, Py_ssize_t sh,
                                 Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw)
    void convx_dwl_input_row_f(const float* grad, const float* wt, float* grad_in, Py_ssize_t width,
                               Py_ssize_t channels, Py_ssize_t out_w, Py_ssize_t kh, Py_ssize_t kw,
                               const int64_t* rows, const int64_t* cols)
    void convx_dwl_input_row_d(const double* grad, const double* wt, double* grad_in, Py_ssize_t width,
                               Py_ssize_t channels, Py_ssize_t out_w, Py_ssize_t kh, Py_ssize_t kw,
                               const int64_t* rows, const int64_t* cols)
    void convx_dwl_weight_row_f(const float* grad, const float* image, float* partial, Py_ssize_t height,
                                Py_ssize_t width, Py_ssize_t channels, Py_ssize_t out_w, Py_ssize_t kh,
                                Py_ssize_t kw, Py_ssize_t oh, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                                Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw)
    void convx_dwl_weight_row_d(const double* grad, const double* image, double* partial, Py_ssize_t height,
                                Py_ssize_t width, Py_ssize_t channels, Py_ssize_t out_w, Py_ssize_t kh,
                                Py_ssize_t kw, Py_ssize_t oh, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                                Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw)


cdef enum:
    # Most partials of the weight gradient, and most elements in all of them together.
    DWL_BLOCKS = 64
    DWL_PARTIAL_ELEMENTS = 1 << 22


cdef inline bint _dwl_applies(Py_ssize_t channels, Py_ssize_t filters, Py_ssize_t weight_channels,
                              int groups) noexcept nogil:
    """One filter per channel: the kernels' case (other channel multipliers are not theirs)."""
    return filters == channels and weight_channels == 1 and groups == channels


cdef object _dwl_sources(Py_ssize_t size, Py_ssize_t out, Py_ssize_t kernel, Py_ssize_t stride, Py_ssize_t pad,
                         Py_ssize_t dilation):
    """int64 (size, kernel): the output o with o * stride - pad + k * dilation = x for input x and tap k,
    -1 where there is none."""
    t = np.arange(size, dtype=np.int64)[:, None] + pad - np.arange(kernel, dtype=np.int64)[None, :] * dilation
    o = t // stride
    return np.ascontiguousarray(np.where((t >= 0) & (t % stride == 0) & (o < out), o, -1))


cdef object _dwl_taps_first(object weight):
    """The weight (C, 1, kH, kW) as (kH * kW, C), C-contiguous."""
    weight = np.asarray(weight)
    return np.ascontiguousarray(weight.reshape(weight.shape[0], -1).T)


def depthwise_forward_channels_last(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] weight,
                                    const floating[::1] bias, floating[:, :, :, ::1] out,
                                    int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w,
                                    int groups, int n_threads, int activation=-1, double p0=0, double p1=0):
    """out[n, oh, ow, c] = act(bias[c] + sum_{i, j} w[c, 0, i, j] * x_padded[n, oh*sh + i*dh, ow*sw + j*dw, c]),
    x (N, H, W, C), out (N, H_out, W_out, C), act as in conv2d_forward; returns whether it did (one
    filter per channel, every weight finite where a tap reaches the padding), else out is untouched."""
    cdef ConvGeometry g = _geometry(x.shape[0], x.shape[3], x.shape[1], x.shape[2], weight.shape[0],
                                    weight.shape[2], weight.shape[3], out.shape[1], out.shape[2], groups,
                                    stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, n_threads)
    cdef Py_ssize_t channels = x.shape[3], taps = g.kernel_h * g.kernel_w, n_rows = g.batch * g.out_h
    if not _dwl_applies(channels, weight.shape[0], weight.shape[1], groups) or taps == 0:
        return False
    if _reaches_padding(&g) and not _all_finite(&weight[0, 0, 0, 0], channels * taps):
        return False
    cdef convx_epilogue epilogue
    cdef convx_epilogue* epi = _epilogue(activation, p0, p1, &epilogue)
    cdef const floating[:, ::1] wt = _dwl_taps_first(weight)
    cdef int team = _team_size(n_threads, n_rows, (taps + 1) * g.out_w * channels)
    cdef const floating* bias_ptr = &bias[0] if bias.shape[0] > 0 else NULL
    cdef Py_ssize_t row_size = g.out_w * channels
    cdef Py_ssize_t t, image, oh
    _ran(OP_FORWARD, IMPL_DEPTHWISE_DIRECT, 0)
    with nogil:
        for t in prange(n_rows, schedule='static', num_threads=team):
            image = t // g.out_h
            oh = t - image * g.out_h
            if floating is float:
                convx_dwl_forward_row_f(&x[image, 0, 0, 0], &wt[0, 0], bias_ptr, &out[image, oh, 0, 0],
                                        g.height, g.width, channels, g.out_w, g.kernel_h, g.kernel_w, oh,
                                        g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dilation_h, g.dilation_w)
            else:
                convx_dwl_forward_row_d(&x[image, 0, 0, 0], &wt[0, 0], bias_ptr, &out[image, oh, 0, 0],
                                        g.height, g.width, channels, g.out_w, g.kernel_h, g.kernel_w, oh,
                                        g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dilation_h, g.dilation_w)
            if epi != NULL:
                _activate(&out[image, oh, 0, 0], row_size, epi)
    return True


def depthwise_backward_input_channels_last(const floating[:, :, :, ::1] grad_out,
                                           const floating[:, :, :, ::1] weight, floating[:, :, :, ::1] grad_in,
                                           int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h,
                                           int dilation_w, int groups, int n_threads):
    """grad_in[n, ih, iw, c] (overwritten) = sum of w[c, 0, i, j] * grad_out[n, oh, ow, c] over the taps and
    outputs with oh*sh - ph + i*dh = ih and ow*sw - pw + j*dw = iw, grad_out (N, H_out, W_out, C), grad_in
    (N, H, W, C); returns whether it did (one filter per channel), else grad_in is untouched."""
    cdef ConvGeometry g = _geometry(grad_in.shape[0], grad_in.shape[3], grad_in.shape[1], grad_in.shape[2],
                                    weight.shape[0], weight.shape[2], weight.shape[3],
                                    grad_out.shape[1], grad_out.shape[2], groups,
                                    stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, n_threads)
    cdef Py_ssize_t channels = grad_in.shape[3], taps = g.kernel_h * g.kernel_w, n_rows = g.batch * g.height
    if not _dwl_applies(channels, weight.shape[0], weight.shape[1], groups) or taps == 0:
        return False
    cdef int team = _team_size(n_threads, n_rows, (taps + 1) * g.width * channels)
    cdef Py_ssize_t t, image, ih
    # At stride 1, the correlation of grad_out, padded by (k - 1) * d - p (negative: cropped), with the
    # kernel rotated by 180 degrees: the forward's rows, with no tap between strides to skip.
    cdef bint rotated = g.stride_h == 1 and g.stride_w == 1
    cdef Py_ssize_t rot_h = (g.kernel_h - 1) * g.dilation_h - g.pad_h, rot_w = (g.kernel_w - 1) * g.dilation_w - g.pad_w
    cdef const floating[:, ::1] wt = _dwl_taps_first(np.asarray(weight)[:, :, ::-1, ::-1] if rotated else weight)
    _ran(OP_INPUT, IMPL_DEPTHWISE_DIRECT, 0)
    if rotated:
        with nogil:
            for t in prange(n_rows, schedule='static', num_threads=team):
                image = t // g.height
                ih = t - image * g.height
                if floating is float:
                    convx_dwl_forward_row_f(&grad_out[image, 0, 0, 0], &wt[0, 0], NULL, &grad_in[image, ih, 0, 0],
                                            g.out_h, g.out_w, channels, g.width, g.kernel_h, g.kernel_w, ih, 1, 1,
                                            rot_h, rot_w, g.dilation_h, g.dilation_w)
                else:
                    convx_dwl_forward_row_d(&grad_out[image, 0, 0, 0], &wt[0, 0], NULL, &grad_in[image, ih, 0, 0],
                                            g.out_h, g.out_w, channels, g.width, g.kernel_h, g.kernel_w, ih, 1, 1,
                                            rot_h, rot_w, g.dilation_h, g.dilation_w)
        return True
    cdef const int64_t[:, ::1] rows = _dwl_sources(g.height, g.out_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h)
    cdef const int64_t[:, ::1] cols = _dwl_sources(g.width, g.out_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w)
    with nogil:
        for t in prange(n_rows, schedule='static', num_threads=team):
            image = t // g.height
            ih = t - image * g.height
            if floating is float:
                convx_dwl_input_row_f(&grad_out[image, 0, 0, 0], &wt[0, 0], &grad_in[image, ih, 0, 0], g.width,
                                      channels, g.out_w, g.kernel_h, g.kernel_w, &rows[ih, 0], &cols[0, 0])
            else:
                convx_dwl_input_row_d(&grad_out[image, 0, 0, 0], &wt[0, 0], &grad_in[image, ih, 0, 0], g.width,
                                      channels, g.out_w, g.kernel_h, g.kernel_w, &rows[ih, 0], &cols[0, 0])
    return True


def depthwise_backward_weight_channels_last(const floating[:, :, :, ::1] grad_out, const floating[:, :, :, ::1] x,
                                            floating[:, :, :, ::1] grad_weight, int stride_h, int stride_w,
                                            int pad_h, int pad_w, int dilation_h, int dilation_w, int groups,
                                            int n_threads):
    """grad_weight[c, 0, i, j] (overwritten) = sum_{n, oh, ow} grad_out[n, oh, ow, c] * x_padded[n, oh*sh + i*dh,
    ow*sw + j*dw, c]; returns whether it did (one filter per channel, grad_out finite where a tap reaches
    the padding), else grad_weight is untouched. The same result on any number of threads."""
    cdef ConvGeometry g = _geometry(x.shape[0], x.shape[3], x.shape[1], x.shape[2], grad_weight.shape[0],
                                    grad_weight.shape[2], grad_weight.shape[3], grad_out.shape[1], grad_out.shape[2],
                                    groups, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, n_threads)
    cdef Py_ssize_t channels = x.shape[3], taps = g.kernel_h * g.kernel_w, n_rows = g.batch * g.out_h
    if not _dwl_applies(channels, grad_weight.shape[0], grad_weight.shape[1], groups) or taps == 0:
        return False
    cdef Py_ssize_t tile = taps * channels
    # Fixed blocks of output rows (from the geometry alone, never from the thread count).
    cdef Py_ssize_t n_blocks = max(1, min(min(n_rows, <Py_ssize_t> DWL_BLOCKS), DWL_PARTIAL_ELEMENTS // max(1, tile)))
    cdef floating[:, ::1] partials = np.zeros((n_blocks, tile), dtype=np.asarray(grad_weight).dtype)
    cdef floating[:, ::1] total = np.zeros((taps, channels), dtype=np.asarray(grad_weight).dtype)
    cdef int team = _team_size(n_threads, n_blocks, (n_rows // n_blocks + 1) * (taps + 1) * g.out_w * channels)
    cdef Py_ssize_t block, t, image, oh, k, c
    # rows of grad_out holding inf or NaN, whose products with the padding are NaN (each row checked
    # right after its products, while it is in cache)
    cdef bint padded = _reaches_padding(&g)
    cdef Py_ssize_t non_finite = 0
    with nogil:
        for block in prange(n_blocks, schedule='static', num_threads=team):
            for t in range(block * n_rows // n_blocks, (block + 1) * n_rows // n_blocks):
                image = t // g.out_h
                oh = t - image * g.out_h
                if floating is float:
                    convx_dwl_weight_row_f(&grad_out[image, oh, 0, 0], &x[image, 0, 0, 0], &partials[block, 0],
                                           g.height, g.width, channels, g.out_w, g.kernel_h, g.kernel_w, oh,
                                           g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dilation_h, g.dilation_w)
                else:
                    convx_dwl_weight_row_d(&grad_out[image, oh, 0, 0], &x[image, 0, 0, 0], &partials[block, 0],
                                           g.height, g.width, channels, g.out_w, g.kernel_h, g.kernel_w, oh,
                                           g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dilation_h, g.dilation_w)
                if padded and not _all_finite(&grad_out[image, oh, 0, 0], g.out_w * channels):
                    non_finite += 1
    if non_finite:
        return False
    _ran(OP_WEIGHT, IMPL_DEPTHWISE_DIRECT, 0)
    with nogil:
        for block in range(n_blocks):
            for k in range(taps):
                for c in range(channels):
                    total[k, c] = total[k, c] + partials[block, k * channels + c]
        for c in range(channels):
            for k in range(taps):
                grad_weight[c, 0, k // g.kernel_w, k % g.kernel_w] = total[k, c]
    return True
