# Channels-last 3-D pooling kernels: (N, D, H, W, C) volumes, forward and backward of max, average
# and adaptive pooling, native (no transposes).
#
# The forwards split the output rows (n, od, oh) of a band of output depths between the threads,
# the average backwards the input rows (n, d, h) of a band of input depths (each row, zeroed,
# gathers the shares of the windows over it). Every row of an output or input gradient is written
# by one thread. Inside a row each window combines its taps' C-vectors with the channels innermost
# (_pool_nhwc_body.h), taps and shares in the order of the NCDHW kernels (_pool3d.pxi), so that
# the results are theirs bit for bit. The max backward is the channels-last 2-D one on (D*H, W)
# views: the flat indices d*H*W + h*W + w are the same.

cdef extern from "_pool_nhwc.h" nogil:
    void convx_ndhwc_max_row_f(const float* volume, float* out, int64_t* where, Py_ssize_t height, Py_ssize_t width,
                               Py_ssize_t channels, Py_ssize_t out_w, Py_ssize_t d0, Py_ssize_t depths, Py_ssize_t dd,
                               Py_ssize_t h0, Py_ssize_t rows, Py_ssize_t dh, const int64_t* col_first,
                               const int64_t* col_count, Py_ssize_t dw)
    void convx_ndhwc_max_row_d(const double* volume, double* out, int64_t* where, Py_ssize_t height, Py_ssize_t width,
                               Py_ssize_t channels, Py_ssize_t out_w, Py_ssize_t d0, Py_ssize_t depths, Py_ssize_t dd,
                               Py_ssize_t h0, Py_ssize_t rows, Py_ssize_t dh, const int64_t* col_first,
                               const int64_t* col_count, Py_ssize_t dw)
    void convx_ndhwc_avg_row_f(const float* volume, float* out, Py_ssize_t height, Py_ssize_t width,
                               Py_ssize_t channels, Py_ssize_t out_w, Py_ssize_t d0, Py_ssize_t depths, Py_ssize_t dd,
                               Py_ssize_t h0, Py_ssize_t rows, Py_ssize_t dh, const int64_t* col_first,
                               const int64_t* col_count, Py_ssize_t dw, int64_t depth_div, int64_t row_div,
                               const int64_t* col_div, int adaptive)
    void convx_ndhwc_avg_row_d(const double* volume, double* out, Py_ssize_t height, Py_ssize_t width,
                               Py_ssize_t channels, Py_ssize_t out_w, Py_ssize_t d0, Py_ssize_t depths, Py_ssize_t dd,
                               Py_ssize_t h0, Py_ssize_t rows, Py_ssize_t dh, const int64_t* col_first,
                               const int64_t* col_count, Py_ssize_t dw, int64_t depth_div, int64_t row_div,
                               const int64_t* col_div, int adaptive)
    void convx_ndhwc_avg_spread_row_f(const float* grad, float* dst, float* share, Py_ssize_t channels,
                                      Py_ssize_t out_w, const int64_t* col_first, const int64_t* col_count,
                                      Py_ssize_t dw, int64_t depth_div, int64_t row_div, const int64_t* col_div,
                                      int adaptive)
    void convx_ndhwc_avg_spread_row_d(const double* grad, double* dst, double* share, Py_ssize_t channels,
                                      Py_ssize_t out_w, const int64_t* col_first, const int64_t* col_count,
                                      Py_ssize_t dw, int64_t depth_div, int64_t row_div, const int64_t* col_div,
                                      int adaptive)


cdef void _ndhwc_max_rows(const floating[:, :, :, :, ::1] x, floating[:, :, :, :, ::1] out,
                          int64_t[:, :, :, :, ::1] indices, const int64_t[::1] depths, const int64_t[::1] rows,
                          const int64_t[::1] cols, Py_ssize_t dd, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t taps,
                          Py_ssize_t od_begin, Py_ssize_t od_end, int n_threads) noexcept:
    cdef Py_ssize_t depth = x.shape[1], height = x.shape[2], width = x.shape[3], channels = x.shape[4]
    cdef Py_ssize_t out_d = out.shape[1], out_h = out.shape[2], out_w = out.shape[3]
    cdef Py_ssize_t band = od_end - od_begin, n_rows = out.shape[0] * band * out_h
    cdef Py_ssize_t volume = depth * height * width * channels
    cdef bint want_indices = indices.shape[0] > 0
    cdef int team = _team_size(n_threads, n_rows, (taps + 1) * out_w * channels)
    cdef Py_ssize_t t, image, od, oh, row
    cdef int64_t* where
    if n_rows == 0:
        return
    with nogil:
        for t in prange(n_rows, schedule='static', num_threads=team):
            image = t // (band * out_h)
            od = od_begin + (t // out_h) % band
            oh = t % out_h
            row = (image * out_d + od) * out_h + oh
            where = &indices[0, 0, 0, 0, 0] + row * out_w * channels if want_indices else NULL
            if floating is float:
                convx_ndhwc_max_row_f(&x[0, 0, 0, 0, 0] + image * volume, &out[0, 0, 0, 0, 0] + row * out_w * channels,
                                      where, height, width, channels, out_w, depths[od], depths[out_d + od], dd,
                                      rows[oh], rows[out_h + oh], dh, &cols[0], &cols[out_w], dw)
            else:
                convx_ndhwc_max_row_d(&x[0, 0, 0, 0, 0] + image * volume, &out[0, 0, 0, 0, 0] + row * out_w * channels,
                                      where, height, width, channels, out_w, depths[od], depths[out_d + od], dd,
                                      rows[oh], rows[out_h + oh], dh, &cols[0], &cols[out_w], dw)


def max_pool3d_ndhwc_forward(const floating[:, :, :, :, ::1] x, floating[:, :, :, :, ::1] out,
                             int64_t[:, :, :, :, ::1] indices, Py_ssize_t kernel_d, Py_ssize_t kernel_h,
                             Py_ssize_t kernel_w, Py_ssize_t stride_d, Py_ssize_t stride_h, Py_ssize_t stride_w,
                             Py_ssize_t pad_d, Py_ssize_t pad_h, Py_ssize_t pad_w, Py_ssize_t dilation_d,
                             Py_ssize_t dilation_h, Py_ssize_t dilation_w, Py_ssize_t od_begin, Py_ssize_t od_end,
                             int n_threads):
    """out[n, od, oh, ow, c] = max_{a, b, j} x_(-inf)-padded[n, od*sd + a*dd, oh*sh + b*dh, ow*sw + j*dw, c]
    (NaN wins), indices = its flat d*H*W + h*W + w, for od in [od_begin, od_end); a zero-batch
    ``indices`` skips them."""
    cdef const int64_t[::1] depths = _nhwc_axis(x.shape[1], out.shape[1], kernel_d, stride_d, pad_d, 0, dilation_d,
                                                False, 1)
    cdef const int64_t[::1] rows = _nhwc_axis(x.shape[2], out.shape[2], kernel_h, stride_h, pad_h, 0, dilation_h,
                                              False, 1)
    cdef const int64_t[::1] cols = _nhwc_axis(x.shape[3], out.shape[3], kernel_w, stride_w, pad_w, 0, dilation_w,
                                              False, 1)
    _ndhwc_max_rows(x, out, indices, depths, rows, cols, dilation_d, dilation_h, dilation_w,
                    kernel_d * kernel_h * kernel_w, od_begin, od_end, n_threads)


def adaptive_max_pool3d_ndhwc_forward(const floating[:, :, :, :, ::1] x, floating[:, :, :, :, ::1] out,
                                      int64_t[:, :, :, :, ::1] indices, Py_ssize_t od_begin, Py_ssize_t od_end,
                                      int n_threads):
    """out[n, od, oh, ow, c] = max over window (od, oh, ow) of x[n, :, :, :, c] (NaN wins), indices = its flat
    d*H*W + h*W + w, for od in [od_begin, od_end); a zero-batch ``indices`` skips them."""
    cdef const int64_t[::1] depths = _nhwc_adaptive_axis(x.shape[1], out.shape[1])
    cdef const int64_t[::1] rows = _nhwc_adaptive_axis(x.shape[2], out.shape[2])
    cdef const int64_t[::1] cols = _nhwc_adaptive_axis(x.shape[3], out.shape[3])
    cdef Py_ssize_t taps = ((x.shape[1] // out.shape[1] + 1) * (x.shape[2] // out.shape[2] + 1)
                            * (x.shape[3] // out.shape[3] + 1))
    _ndhwc_max_rows(x, out, indices, depths, rows, cols, 1, 1, 1, taps, od_begin, od_end, n_threads)


cdef void _ndhwc_avg_rows(const floating[:, :, :, :, ::1] x, floating[:, :, :, :, ::1] out,
                          const int64_t[::1] depths, const int64_t[::1] rows, const int64_t[::1] cols, Py_ssize_t dd,
                          Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t taps, bint adaptive, Py_ssize_t od_begin,
                          Py_ssize_t od_end, int n_threads) noexcept:
    cdef Py_ssize_t depth = x.shape[1], height = x.shape[2], width = x.shape[3], channels = x.shape[4]
    cdef Py_ssize_t out_d = out.shape[1], out_h = out.shape[2], out_w = out.shape[3]
    cdef Py_ssize_t band = od_end - od_begin, n_rows = out.shape[0] * band * out_h
    cdef Py_ssize_t volume = depth * height * width * channels
    cdef int team = _team_size(n_threads, n_rows, (taps + 1) * out_w * channels)
    cdef Py_ssize_t t, image, od, oh, row
    if n_rows == 0:
        return
    with nogil:
        for t in prange(n_rows, schedule='static', num_threads=team):
            image = t // (band * out_h)
            od = od_begin + (t // out_h) % band
            oh = t % out_h
            row = (image * out_d + od) * out_h + oh
            if floating is float:
                convx_ndhwc_avg_row_f(&x[0, 0, 0, 0, 0] + image * volume, &out[0, 0, 0, 0, 0] + row * out_w * channels,
                                      height, width, channels, out_w, depths[od], depths[out_d + od], dd, rows[oh],
                                      rows[out_h + oh], dh, &cols[0], &cols[out_w], dw, depths[2 * out_d + od],
                                      rows[2 * out_h + oh], &cols[2 * out_w], adaptive)
            else:
                convx_ndhwc_avg_row_d(&x[0, 0, 0, 0, 0] + image * volume, &out[0, 0, 0, 0, 0] + row * out_w * channels,
                                      height, width, channels, out_w, depths[od], depths[out_d + od], dd, rows[oh],
                                      rows[out_h + oh], dh, &cols[0], &cols[out_w], dw, depths[2 * out_d + od],
                                      rows[2 * out_h + oh], &cols[2 * out_w], adaptive)


def avg_pool3d_ndhwc_forward(const floating[:, :, :, :, ::1] x, floating[:, :, :, :, ::1] out,
                             Py_ssize_t kernel_d, Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t stride_d,
                             Py_ssize_t stride_h, Py_ssize_t stride_w, Py_ssize_t pad_d, Py_ssize_t pad_h,
                             Py_ssize_t pad_w, Py_ssize_t pad_back, Py_ssize_t pad_bottom, Py_ssize_t pad_right,
                             Py_ssize_t dilation_d, Py_ssize_t dilation_h, Py_ssize_t dilation_w,
                             bint count_include_pad, Py_ssize_t divisor_override, Py_ssize_t od_begin,
                             Py_ssize_t od_end, int n_threads):
    """out[n, od, oh, ow, c] = sum_{a, b, j} x_zero_padded[n, od*sd + a*dd, oh*sh + b*dh, ow*sw + j*dw, c] / divisor,
    the divisor as in avg_pool3d_forward, for od in [od_begin, od_end)."""
    cdef Py_ssize_t rest = 1 if divisor_override > 0 else 0
    cdef const int64_t[::1] depths = _nhwc_axis(x.shape[1], out.shape[1], kernel_d, stride_d, pad_d, pad_back,
                                                dilation_d, count_include_pad, divisor_override)
    cdef const int64_t[::1] rows = _nhwc_axis(x.shape[2], out.shape[2], kernel_h, stride_h, pad_h, pad_bottom,
                                              dilation_h, count_include_pad, rest)
    cdef const int64_t[::1] cols = _nhwc_axis(x.shape[3], out.shape[3], kernel_w, stride_w, pad_w, pad_right,
                                              dilation_w, count_include_pad, rest)
    _ndhwc_avg_rows(x, out, depths, rows, cols, dilation_d, dilation_h, dilation_w, kernel_d * kernel_h * kernel_w,
                    False, od_begin, od_end, n_threads)


def adaptive_avg_pool3d_ndhwc_forward(const floating[:, :, :, :, ::1] x, floating[:, :, :, :, ::1] out,
                                      Py_ssize_t od_begin, Py_ssize_t od_end, int n_threads):
    """out[n, od, oh, ow, c] = sum over window (od, oh, ow) of x[n, :, :, :, c] / window_d / window_h / window_w,
    for od in [od_begin, od_end)."""
    cdef const int64_t[::1] depths = _nhwc_adaptive_axis(x.shape[1], out.shape[1])
    cdef const int64_t[::1] rows = _nhwc_adaptive_axis(x.shape[2], out.shape[2])
    cdef const int64_t[::1] cols = _nhwc_adaptive_axis(x.shape[3], out.shape[3])
    cdef Py_ssize_t taps = ((x.shape[1] // out.shape[1] + 1) * (x.shape[2] // out.shape[2] + 1)
                            * (x.shape[3] // out.shape[3] + 1))
    _ndhwc_avg_rows(x, out, depths, rows, cols, 1, 1, 1, taps, True, od_begin, od_end, n_threads)


cdef void _ndhwc_avg_gather(const floating[:, :, :, :, ::1] grad_out, floating[:, :, :, :, ::1] grad_in,
                            const int64_t[::1] depths, const int64_t[::1] rows, const int64_t[::1] cols,
                            const int64_t[::1] over_d, const int64_t[::1] over_h, Py_ssize_t dd, Py_ssize_t dh,
                            Py_ssize_t dw, bint adaptive, Py_ssize_t d_begin, Py_ssize_t d_end,
                            int n_threads) noexcept:
    """Each input row (d, h) of grad_in with d in [d_begin, d_end), zeroed, takes the shares of the
    output rows (od, oh), over_d[d] <= od < over_d[D + d] and over_h[h] <= oh < over_h[H + h], whose
    windows hold it, in that order."""
    cdef Py_ssize_t depth = grad_in.shape[1], height = grad_in.shape[2], width = grad_in.shape[3]
    cdef Py_ssize_t channels = grad_in.shape[4]
    cdef Py_ssize_t out_d = grad_out.shape[1], out_h = grad_out.shape[2], out_w = grad_out.shape[3]
    cdef Py_ssize_t band = d_end - d_begin, n_rows = grad_in.shape[0] * band * height
    cdef int team = _team_size(n_threads, n_rows, (width + 2 * out_w) * channels)
    # One C-vector of shares per thread, each on its own cache lines.
    cdef Py_ssize_t slot = (channels + 15) // 16 * 16 + 16
    cdef floating[::1] shares = np.empty(max(1, team * slot), dtype=np.asarray(grad_in).dtype)
    cdef Py_ssize_t t, image, d, h, od, oh, tid, offset, src
    cdef floating* dst
    if n_rows == 0:
        return
    with nogil, parallel(num_threads=team):
        tid = threadid()
        for t in prange(n_rows, schedule='static'):
            image = t // (band * height)
            d = d_begin + (t // height) % band
            h = t % height
            dst = &grad_in[0, 0, 0, 0, 0] + ((image * depth + d) * height + h) * width * channels
            memset(dst, 0, width * channels * sizeof(floating))
            for od in range(over_d[d], over_d[depth + d]):
                offset = d - depths[od]
                if offset < 0 or offset % dd != 0 or offset // dd >= depths[out_d + od]:
                    continue
                for oh in range(over_h[h], over_h[height + h]):
                    offset = h - rows[oh]
                    if offset < 0 or offset % dh != 0 or offset // dh >= rows[out_h + oh]:
                        continue
                    src = ((image * out_d + od) * out_h + oh) * out_w * channels
                    if floating is float:
                        convx_ndhwc_avg_spread_row_f(&grad_out[0, 0, 0, 0, 0] + src, dst, &shares[tid * slot],
                                                     channels, out_w, &cols[0], &cols[out_w], dw,
                                                     depths[2 * out_d + od], rows[2 * out_h + oh], &cols[2 * out_w],
                                                     adaptive)
                    else:
                        convx_ndhwc_avg_spread_row_d(&grad_out[0, 0, 0, 0, 0] + src, dst, &shares[tid * slot],
                                                     channels, out_w, &cols[0], &cols[out_w], dw,
                                                     depths[2 * out_d + od], rows[2 * out_h + oh], &cols[2 * out_w],
                                                     adaptive)


cdef object _windows_over(Py_ssize_t size, Py_ssize_t out_size, Py_ssize_t kernel, Py_ssize_t stride, Py_ssize_t pad,
                          Py_ssize_t dilation):
    """int64 [first, end] (size entries each): the outputs whose windows may hold input i are
    first[i] <= o < end[i]: those starting at most i into the padded input, and at least
    i - (kernel - 1) * dilation."""
    cdef int64_t[::1] over = np.empty(2 * size, dtype=np.int64)
    cdef Py_ssize_t i, t
    for i in range(size):
        t = i + pad - (kernel - 1) * dilation
        over[i] = 0 if t <= 0 else min(out_size, (t + stride - 1) // stride)
        over[size + i] = max(over[i], min(out_size, (i + pad) // stride + 1))
    return np.asarray(over)


cdef object _adaptive_over(const int64_t[::1] axis, Py_ssize_t size, Py_ssize_t out_size):
    """int64 [first, end] (size entries each): the adaptive windows over input i, a run in output order."""
    cdef int64_t[::1] over = np.empty(2 * size, dtype=np.int64)
    cdef Py_ssize_t i, o
    for i in range(size):
        over[i] = out_size
        over[size + i] = 0
    for o in range(out_size):
        for i in range(axis[o], axis[o] + axis[out_size + o]):
            over[i] = min(over[i], o)
            over[size + i] = o + 1
    return np.asarray(over)


def avg_pool3d_ndhwc_backward(const floating[:, :, :, :, ::1] grad_out, floating[:, :, :, :, ::1] grad_in,
                              Py_ssize_t kernel_d, Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t stride_d,
                              Py_ssize_t stride_h, Py_ssize_t stride_w, Py_ssize_t pad_d, Py_ssize_t pad_h,
                              Py_ssize_t pad_w, Py_ssize_t pad_back, Py_ssize_t pad_bottom, Py_ssize_t pad_right,
                              Py_ssize_t dilation_d, Py_ssize_t dilation_h, Py_ssize_t dilation_w,
                              bint count_include_pad, Py_ssize_t divisor_override, Py_ssize_t d_begin,
                              Py_ssize_t d_end, int n_threads):
    """grad_in[n, d, h, w, c] = sum of grad_out[n, od, oh, ow, c] / divisor over the windows holding (d, h, w),
    for the input depths d in [d_begin, d_end) (overwritten)."""
    cdef Py_ssize_t rest = 1 if divisor_override > 0 else 0
    cdef Py_ssize_t depth = grad_in.shape[1], height = grad_in.shape[2], width = grad_in.shape[3]
    cdef Py_ssize_t out_d = grad_out.shape[1], out_h = grad_out.shape[2], out_w = grad_out.shape[3]
    cdef const int64_t[::1] depths = _nhwc_axis(depth, out_d, kernel_d, stride_d, pad_d, pad_back, dilation_d,
                                                count_include_pad, divisor_override)
    cdef const int64_t[::1] rows = _nhwc_axis(height, out_h, kernel_h, stride_h, pad_h, pad_bottom, dilation_h,
                                              count_include_pad, rest)
    cdef const int64_t[::1] cols = _nhwc_axis(width, out_w, kernel_w, stride_w, pad_w, pad_right, dilation_w,
                                              count_include_pad, rest)
    cdef const int64_t[::1] over_d = _windows_over(depth, out_d, kernel_d, stride_d, pad_d, dilation_d)
    cdef const int64_t[::1] over_h = _windows_over(height, out_h, kernel_h, stride_h, pad_h, dilation_h)
    _ndhwc_avg_gather(grad_out, grad_in, depths, rows, cols, over_d, over_h, dilation_d, dilation_h, dilation_w,
                      False, d_begin, d_end, n_threads)


def adaptive_avg_pool3d_ndhwc_backward(const floating[:, :, :, :, ::1] grad_out, floating[:, :, :, :, ::1] grad_in,
                                       Py_ssize_t d_begin, Py_ssize_t d_end, int n_threads):
    """grad_in[n, d, h, w, c] = sum over the windows (od, oh, ow) holding (d, h, w) of grad_out[n, od, oh, ow, c]
    / window_d / window_h / window_w, for the input depths d in [d_begin, d_end) (overwritten)."""
    cdef Py_ssize_t depth = grad_in.shape[1], height = grad_in.shape[2]
    cdef Py_ssize_t out_d = grad_out.shape[1], out_h = grad_out.shape[2]
    cdef const int64_t[::1] depths = _nhwc_adaptive_axis(depth, out_d)
    cdef const int64_t[::1] rows = _nhwc_adaptive_axis(height, out_h)
    cdef const int64_t[::1] cols = _nhwc_adaptive_axis(grad_in.shape[3], grad_out.shape[3])
    cdef const int64_t[::1] over_d = _adaptive_over(depths, depth, out_d)
    cdef const int64_t[::1] over_h = _adaptive_over(rows, height, out_h)
    _ndhwc_avg_gather(grad_out, grad_in, depths, rows, cols, over_d, over_h, 1, 1, 1, True, d_begin, d_end,
                      n_threads)
