# Channels-last pooling kernels: (N, H, W, C) arrays, forward and backward of max, average and
# adaptive pooling, native (no transposes).
#
# The forwards split the N * out_h output rows between the threads, the average backwards the
# N * H input rows (each gathers the shares of the windows over it, in output order), the max
# backward the images (a scatter by indices, whose targets only the image's own outputs know).
# Every row of an output or input gradient is written by one thread. Inside a row, each window
# combines its taps' C-vectors with the channel axis innermost (_pool_nhwc.h), in the row-major
# tap order of the NCHW kernels, so that the results are theirs bit for bit.

cdef extern from "_pool_nhwc.h" nogil:
    void convx_nhwc_max_row_f(const float* image, float* out, int64_t* where, Py_ssize_t width,
                              Py_ssize_t channels, Py_ssize_t out_w, Py_ssize_t h0, Py_ssize_t rows,
                              Py_ssize_t dh, const int64_t* col_first, const int64_t* col_count, Py_ssize_t dw)
    void convx_nhwc_max_row_d(const double* image, double* out, int64_t* where, Py_ssize_t width,
                              Py_ssize_t channels, Py_ssize_t out_w, Py_ssize_t h0, Py_ssize_t rows,
                              Py_ssize_t dh, const int64_t* col_first, const int64_t* col_count, Py_ssize_t dw)
    void convx_nhwc_max_row_i8(const int8_t* image, int8_t* out, int64_t* where, Py_ssize_t width,
                               Py_ssize_t channels, Py_ssize_t out_w, Py_ssize_t h0, Py_ssize_t rows,
                               Py_ssize_t dh, const int64_t* col_first, const int64_t* col_count, Py_ssize_t dw)
    void convx_nhwc_max_row_u8(const uint8_t* image, uint8_t* out, int64_t* where, Py_ssize_t width,
                               Py_ssize_t channels, Py_ssize_t out_w, Py_ssize_t h0, Py_ssize_t rows,
                               Py_ssize_t dh, const int64_t* col_first, const int64_t* col_count, Py_ssize_t dw)
    void convx_nhwc_avg_row_f(const float* image, float* out, Py_ssize_t width, Py_ssize_t channels,
                              Py_ssize_t out_w, Py_ssize_t h0, Py_ssize_t rows, Py_ssize_t dh,
                              const int64_t* col_first, const int64_t* col_count, Py_ssize_t dw, int64_t row_div,
                              const int64_t* col_div, int two_step)
    void convx_nhwc_avg_row_d(const double* image, double* out, Py_ssize_t width, Py_ssize_t channels,
                              Py_ssize_t out_w, Py_ssize_t h0, Py_ssize_t rows, Py_ssize_t dh,
                              const int64_t* col_first, const int64_t* col_count, Py_ssize_t dw, int64_t row_div,
                              const int64_t* col_div, int two_step)
    void convx_nhwc_avg_spread_row_f(const float* grad, float* dst, float* share, Py_ssize_t channels,
                                     Py_ssize_t out_w, const int64_t* col_first, const int64_t* col_count,
                                     Py_ssize_t dw, int64_t row_div, const int64_t* col_div, int two_step)
    void convx_nhwc_avg_spread_row_d(const double* grad, double* dst, double* share, Py_ssize_t channels,
                                     Py_ssize_t out_w, const int64_t* col_first, const int64_t* col_count,
                                     Py_ssize_t dw, int64_t row_div, const int64_t* col_div, int two_step)
    int convx_nhwc_max_blocks_f(const float* grad, const int64_t* indices, float* grad_in, int32_t* code,
                                Py_ssize_t height, Py_ssize_t width, Py_ssize_t out_h, Py_ssize_t out_w,
                                Py_ssize_t channels)
    int convx_nhwc_max_blocks_d(const double* grad, const int64_t* indices, double* grad_in, int32_t* code,
                                Py_ssize_t height, Py_ssize_t width, Py_ssize_t out_h, Py_ssize_t out_w,
                                Py_ssize_t channels)
    void convx_nhwc_max_sep_row_f(const float* image, Py_ssize_t width, Py_ssize_t channels, Py_ssize_t h,
                                  Py_ssize_t kernel_w, Py_ssize_t out_w, const int64_t* win, float* scratch,
                                  float* rval, int32_t* rcol)
    void convx_nhwc_max_sep_row_d(const double* image, Py_ssize_t width, Py_ssize_t channels, Py_ssize_t h,
                                  Py_ssize_t kernel_w, Py_ssize_t out_w, const int64_t* win, double* scratch,
                                  double* rval, int32_t* rcol)
    void convx_nhwc_max_sep_columns_f(const float* rval, const int32_t* rcol, Py_ssize_t height, Py_ssize_t width,
                                      Py_ssize_t lanes, Py_ssize_t l0, Py_ssize_t n, Py_ssize_t kernel_h,
                                      Py_ssize_t out_h, const int64_t* win, float* scratch, float* out,
                                      int64_t* indices)
    void convx_nhwc_max_sep_columns_d(const double* rval, const int32_t* rcol, Py_ssize_t height, Py_ssize_t width,
                                      Py_ssize_t lanes, Py_ssize_t l0, Py_ssize_t n, Py_ssize_t kernel_h,
                                      Py_ssize_t out_h, const int64_t* win, double* scratch, double* out,
                                      int64_t* indices)
    int convx_nhwc_max_scatter_f(const float* grad, const int64_t* indices, float* grad_in, Py_ssize_t plane,
                                 Py_ssize_t width, Py_ssize_t outputs, Py_ssize_t channels)
    int convx_nhwc_max_scatter_d(const double* grad, const int64_t* indices, double* grad_in, Py_ssize_t plane,
                                 Py_ssize_t width, Py_ssize_t outputs, Py_ssize_t channels)


cdef object _nhwc_axis(Py_ssize_t size, Py_ssize_t out_size, Py_ssize_t kernel, Py_ssize_t stride, Py_ssize_t pad,
                       Py_ssize_t pad_after, Py_ssize_t dilation, bint count_include_pad, Py_ssize_t divisor):
    """The windows of one axis as int64 [first, count, divisor] (out_size entries each): window o's
    first tap inside the input, its number of taps inside it, and its divisor along this axis
    (``divisor`` when positive, as _avg_divisors has them)."""
    cdef int64_t[::1] axis = np.empty(3 * out_size, dtype=np.int64)
    cdef int64_t lo, hi
    cdef Py_ssize_t o, start
    for o in range(out_size):
        start = o * stride - pad
        _tap_range(start, size, kernel, dilation, &lo, &hi)
        axis[o] = start + lo * dilation
        axis[out_size + o] = hi - lo
        axis[2 * out_size + o] = divisor if divisor > 0 else _avg_count(start, size, pad_after, kernel, dilation, lo,
                                                                         hi, count_include_pad)
    return np.asarray(axis)


cdef object _nhwc_adaptive_axis(Py_ssize_t size, Py_ssize_t out_size):
    """Adaptive pooling's windows of one axis as int64 [first, count, count] (as :func:`_nhwc_axis`)."""
    cdef int64_t[::1] axis = np.empty(3 * out_size, dtype=np.int64)
    cdef AdaptiveWalk walk = _adaptive_walk(size, out_size)
    cdef Py_ssize_t o
    for o in range(out_size):
        axis[o] = walk.start
        axis[out_size + o] = walk.end - walk.start
        axis[2 * out_size + o] = walk.end - walk.start
        _adaptive_next(&walk)
    return np.asarray(axis)


cdef void _nhwc_max_rows(const max_pooled[:, :, :, ::1] x, max_pooled[:, :, :, ::1] out, int64_t[:, :, :, ::1] indices,
                         const int64_t[::1] rows, const int64_t[::1] cols, Py_ssize_t dh, Py_ssize_t dw,
                         Py_ssize_t taps, int n_threads) noexcept:
    cdef Py_ssize_t height = x.shape[1], width = x.shape[2], channels = x.shape[3]
    cdef Py_ssize_t out_h = out.shape[1], out_w = out.shape[2], n_rows = out.shape[0] * out_h
    cdef bint want_indices = indices.shape[0] > 0
    cdef int team = _team_size(n_threads, n_rows, (taps + 1) * out_w * channels)
    cdef Py_ssize_t t, image, oh
    cdef int64_t* where
    with nogil:
        for t in prange(n_rows, schedule='static', num_threads=team):
            image = t // out_h
            oh = t - image * out_h
            where = &indices[0, 0, 0, 0] + t * out_w * channels if want_indices else NULL
            if max_pooled is float:
                convx_nhwc_max_row_f(&x[0, 0, 0, 0] + image * height * width * channels,
                                     &out[0, 0, 0, 0] + t * out_w * channels, where, width, channels, out_w,
                                     rows[oh], rows[out_h + oh], dh, &cols[0], &cols[out_w], dw)
            elif max_pooled is double:
                convx_nhwc_max_row_d(&x[0, 0, 0, 0] + image * height * width * channels,
                                     &out[0, 0, 0, 0] + t * out_w * channels, where, width, channels, out_w,
                                     rows[oh], rows[out_h + oh], dh, &cols[0], &cols[out_w], dw)
            elif max_pooled is int8_t:
                convx_nhwc_max_row_i8(&x[0, 0, 0, 0] + image * height * width * channels,
                                      &out[0, 0, 0, 0] + t * out_w * channels, where, width, channels, out_w,
                                      rows[oh], rows[out_h + oh], dh, &cols[0], &cols[out_w], dw)
            else:
                convx_nhwc_max_row_u8(&x[0, 0, 0, 0] + image * height * width * channels,
                                      &out[0, 0, 0, 0] + t * out_w * channels, where, width, channels, out_w,
                                      rows[oh], rows[out_h + oh], dh, &cols[0], &cols[out_w], dw)


def max_pool2d_nhwc_forward(const max_pooled[:, :, :, ::1] x, max_pooled[:, :, :, ::1] out,
                            int64_t[:, :, :, ::1] indices,
                            Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t stride_h, Py_ssize_t stride_w,
                            Py_ssize_t pad_h, Py_ssize_t pad_w, Py_ssize_t dilation_h, Py_ssize_t dilation_w,
                            int n_threads):
    """out[n, oh, ow, c] = max_{i, j} x_padded[n, oh*sh + i*dh, ow*sw + j*dw, c] (padding never wins, NaN does),
    indices[n, oh, ow, c] = the flat h*W + w of that maximum; a zero-batch ``indices`` skips them."""
    cdef const int64_t[::1] rows = _nhwc_axis(x.shape[1], out.shape[1], kernel_h, stride_h, pad_h, 0, dilation_h,
                                              False, 1)
    cdef const int64_t[::1] cols = _nhwc_axis(x.shape[2], out.shape[2], kernel_w, stride_w, pad_w, 0, dilation_w,
                                              False, 1)
    _nhwc_max_rows(x, out, indices, rows, cols, dilation_h, dilation_w, kernel_h * kernel_w, n_threads)


cdef enum:
    # Lanes (output columns x channels) the channels-last separable column pass takes at once: its
    # scratch, 2 x (value + int32 row) per lane and input row, within this many bytes per thread.
    NHWC_SEPARABLE_COLUMN_BYTES = 1 << 18


def max_pool2d_nhwc_separable(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out,
                              int64_t[:, :, :, ::1] indices, Py_ssize_t kernel_h, Py_ssize_t kernel_w,
                              Py_ssize_t stride_h, Py_ssize_t stride_w, Py_ssize_t pad_h, Py_ssize_t pad_w,
                              int n_threads):
    """max_pool2d_nhwc_forward for windows of dilation 1 in time linear in the image, whatever the
    window: per image, a row pass (threads take input rows) finds each row's winner for every output
    column, then a column pass (threads take runs of output columns x channels) combines the rows of
    each window; the winners of convx_max_pool_separable. A zero-batch ``indices`` skips them.
    Height and width below 2^31 (int32 rows and columns)."""
    cdef Py_ssize_t n = x.shape[0], height = x.shape[1], width = x.shape[2], channels = x.shape[3]
    cdef Py_ssize_t out_h = out.shape[1], out_w = out.shape[2], lanes = out_w * channels
    cdef bint want_indices = indices.shape[0] > 0
    cdef int64_t[::1] ranges = np.empty(2 * (out_h + out_w), dtype=np.int64)
    cdef PoolGeometry g = _pool_geometry(height, width, out_h, out_w, kernel_h, kernel_w, stride_h, stride_w,
                                         pad_h, pad_w, 1, 1, ranges)
    cdef const int64_t[::1] row_win = _block_windows(out_h, kernel_h, stride_h, pad_h, g.row_lo, g.row_hi)
    cdef const int64_t[::1] col_win = _block_windows(out_w, kernel_w, stride_w, pad_w, g.col_lo, g.col_hi)
    cdef Py_ssize_t item = sizeof(floating)
    cdef Py_ssize_t chunk = max(16, NHWC_SEPARABLE_COLUMN_BYTES // (height * 2 * (item + 4))) // 16 * 16
    chunk = min(chunk, lanes)
    cdef Py_ssize_t n_chunks = (lanes + chunk - 1) // chunk
    cdef int row_team = _team_size(n_threads, height, 3 * width * channels)
    cdef int column_team = _team_size(n_threads, n_chunks, 3 * height * chunk)
    cdef int team = max(row_team, column_team)
    # Per thread, on its own cache lines: the row pass's prefixes and suffixes, or the column pass's
    # (values, then int32 positions), in whole values.
    cdef Py_ssize_t slot = (max(2 * width * channels, 2 * height * chunk) * (item + 4) + 128) // item
    cdef floating[::1] scratch = np.empty(team * slot, dtype=np.asarray(out).dtype)
    cdef floating[::1] rval = np.empty(max(1, height * lanes), dtype=np.asarray(out).dtype)
    cdef int32_t[::1] rcol = np.empty(max(1, height * lanes), dtype=np.int32)
    cdef Py_ssize_t image, h, k, l0, tid
    cdef int64_t* where
    with nogil:
        for image in range(n):
            with parallel(num_threads=row_team):
                tid = threadid()
                for h in prange(height, schedule='static'):
                    if floating is float:
                        convx_nhwc_max_sep_row_f(&x[image, 0, 0, 0], width, channels, h, kernel_w, out_w,
                                                 &col_win[0], &scratch[tid * slot], &rval[0], &rcol[0])
                    else:
                        convx_nhwc_max_sep_row_d(&x[image, 0, 0, 0], width, channels, h, kernel_w, out_w,
                                                 &col_win[0], &scratch[tid * slot], &rval[0], &rcol[0])
            where = &indices[image, 0, 0, 0] if want_indices else NULL
            with parallel(num_threads=column_team):
                tid = threadid()
                for k in prange(n_chunks, schedule='static'):
                    l0 = k * chunk
                    if floating is float:
                        convx_nhwc_max_sep_columns_f(&rval[0], &rcol[0], height, width, lanes, l0,
                                                     min(chunk, lanes - l0), kernel_h, out_h, &row_win[0],
                                                     &scratch[tid * slot], &out[image, 0, 0, 0], where)
                    else:
                        convx_nhwc_max_sep_columns_d(&rval[0], &rcol[0], height, width, lanes, l0,
                                                     min(chunk, lanes - l0), kernel_h, out_h, &row_win[0],
                                                     &scratch[tid * slot], &out[image, 0, 0, 0], where)


def adaptive_max_pool2d_nhwc_forward(const max_pooled[:, :, :, ::1] x, max_pooled[:, :, :, ::1] out,
                                     int64_t[:, :, :, ::1] indices, int n_threads):
    """out[n, oh, ow, c] = max_{h, w in window(oh, ow)} x[n, h, w, c] (NaN wins), indices = its flat h*W + w;
    a zero-batch ``indices`` skips them."""
    cdef const int64_t[::1] rows = _nhwc_adaptive_axis(x.shape[1], out.shape[1])
    cdef const int64_t[::1] cols = _nhwc_adaptive_axis(x.shape[2], out.shape[2])
    cdef Py_ssize_t taps = (x.shape[1] // out.shape[1] + 1) * (x.shape[2] // out.shape[2] + 1)
    _nhwc_max_rows(x, out, indices, rows, cols, 1, 1, taps, n_threads)


def max_pool2d_nhwc_backward(const floating[:, :, :, ::1] grad_out, const int64_t[:, :, :, ::1] indices,
                             floating[:, :, :, ::1] grad_in, int n_threads):
    """grad_in[n, :, :, c].flat[indices[n, oh, ow, c]] += grad_out[n, oh, ow, c]; grad_in is overwritten.

    Returns the number of images left unfinished because one of their indices lies outside the
    plane (each index is read once, checked and only then used as an address). Where the 2x2
    blocks of the outputs fit the plane, an image whose indices all lie in their own block is
    written in one pass (convx_nhwc_max_blocks), the others by the scatter."""
    cdef Py_ssize_t n = grad_in.shape[0], height = grad_in.shape[1], width = grad_in.shape[2]
    cdef Py_ssize_t channels = grad_in.shape[3], out_h = grad_out.shape[1], out_w = grad_out.shape[2]
    cdef Py_ssize_t plane = height * width, outputs = out_h * out_w
    cdef int team = _team_size(n_threads, n, (plane + outputs) * channels)
    cdef bint blocks = 2 * out_h <= height and 2 * out_w <= width
    # One output row of codes per thread, each on its own cache lines.
    cdef Py_ssize_t slot = (out_w * channels + 15) // 16 * 16 + 16 if blocks else 0
    cdef int32_t[::1] codes = np.empty(max(1, team * slot), dtype=np.int32)
    cdef Py_ssize_t image, tid, refused = 0
    cdef int outside
    with nogil, parallel(num_threads=team):
        tid = threadid()
        for image in prange(n, schedule='static'):
            outside = 1
            if floating is float:
                if blocks:
                    outside = convx_nhwc_max_blocks_f(&grad_out[0, 0, 0, 0] + image * outputs * channels,
                                                      &indices[0, 0, 0, 0] + image * outputs * channels,
                                                      &grad_in[0, 0, 0, 0] + image * plane * channels,
                                                      &codes[tid * slot], height, width, out_h, out_w, channels)
                if outside:
                    outside = convx_nhwc_max_scatter_f(&grad_out[0, 0, 0, 0] + image * outputs * channels,
                                                       &indices[0, 0, 0, 0] + image * outputs * channels,
                                                       &grad_in[0, 0, 0, 0] + image * plane * channels, plane,
                                                       width, outputs, channels)
            else:
                if blocks:
                    outside = convx_nhwc_max_blocks_d(&grad_out[0, 0, 0, 0] + image * outputs * channels,
                                                      &indices[0, 0, 0, 0] + image * outputs * channels,
                                                      &grad_in[0, 0, 0, 0] + image * plane * channels,
                                                      &codes[tid * slot], height, width, out_h, out_w, channels)
                if outside:
                    outside = convx_nhwc_max_scatter_d(&grad_out[0, 0, 0, 0] + image * outputs * channels,
                                                       &indices[0, 0, 0, 0] + image * outputs * channels,
                                                       &grad_in[0, 0, 0, 0] + image * plane * channels, plane,
                                                       width, outputs, channels)
            refused += outside
    return refused


cdef void _nhwc_avg_rows(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out, const int64_t[::1] rows,
                         const int64_t[::1] cols, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t taps, bint two_step,
                         int n_threads) noexcept:
    cdef Py_ssize_t height = x.shape[1], width = x.shape[2], channels = x.shape[3]
    cdef Py_ssize_t out_h = out.shape[1], out_w = out.shape[2], n_rows = out.shape[0] * out_h
    cdef int team = _team_size(n_threads, n_rows, (taps + 1) * out_w * channels)
    cdef Py_ssize_t t, image, oh
    with nogil:
        for t in prange(n_rows, schedule='static', num_threads=team):
            image = t // out_h
            oh = t - image * out_h
            if floating is float:
                convx_nhwc_avg_row_f(&x[0, 0, 0, 0] + image * height * width * channels,
                                     &out[0, 0, 0, 0] + t * out_w * channels, width, channels, out_w, rows[oh],
                                     rows[out_h + oh], dh, &cols[0], &cols[out_w], dw, rows[2 * out_h + oh],
                                     &cols[2 * out_w], two_step)
            else:
                convx_nhwc_avg_row_d(&x[0, 0, 0, 0] + image * height * width * channels,
                                     &out[0, 0, 0, 0] + t * out_w * channels, width, channels, out_w, rows[oh],
                                     rows[out_h + oh], dh, &cols[0], &cols[out_w], dw, rows[2 * out_h + oh],
                                     &cols[2 * out_w], two_step)


def avg_pool2d_nhwc_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out,
                            Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t stride_h, Py_ssize_t stride_w,
                            Py_ssize_t pad_h, Py_ssize_t pad_w, Py_ssize_t pad_bottom, Py_ssize_t pad_right,
                            Py_ssize_t dilation_h, Py_ssize_t dilation_w, bint count_include_pad,
                            Py_ssize_t divisor_override, int n_threads):
    """out[n, oh, ow, c] = sum_{i, j} x_zero_padded[n, oh*sh + i*dh, ow*sw + j*dw, c] / divisor(oh, ow), the
    divisor as in avg_pool2d_forward."""
    cdef const int64_t[::1] rows = _nhwc_axis(x.shape[1], out.shape[1], kernel_h, stride_h, pad_h, pad_bottom,
                                              dilation_h, count_include_pad, divisor_override)
    cdef const int64_t[::1] cols = _nhwc_axis(x.shape[2], out.shape[2], kernel_w, stride_w, pad_w, pad_right,
                                              dilation_w, count_include_pad, 1 if divisor_override > 0 else 0)
    _nhwc_avg_rows(x, out, rows, cols, dilation_h, dilation_w, kernel_h * kernel_w, False, n_threads)


def adaptive_avg_pool2d_nhwc_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out, int n_threads):
    """out[n, oh, ow, c] = sum_{h, w in window(oh, ow)} x[n, h, w, c] / window_h / window_w."""
    cdef const int64_t[::1] rows = _nhwc_adaptive_axis(x.shape[1], out.shape[1])
    cdef const int64_t[::1] cols = _nhwc_adaptive_axis(x.shape[2], out.shape[2])
    cdef Py_ssize_t taps = (x.shape[1] // out.shape[1] + 1) * (x.shape[2] // out.shape[2] + 1)
    _nhwc_avg_rows(x, out, rows, cols, 1, 1, taps, True, n_threads)


cdef void _nhwc_avg_gather(const floating[:, :, :, ::1] grad_out, floating[:, :, :, ::1] grad_in,
                           const int64_t[::1] rows, const int64_t[::1] cols, const int64_t[::1] over,
                           Py_ssize_t dh, Py_ssize_t dw, bint two_step, int n_threads) noexcept:
    """Each input row h of grad_in, zeroed, takes the shares of the output rows over[h] <= oh <
    over[height + h] whose windows hold it, in order."""
    cdef Py_ssize_t height = grad_in.shape[1], width = grad_in.shape[2], channels = grad_in.shape[3]
    cdef Py_ssize_t out_h = grad_out.shape[1], out_w = grad_out.shape[2], n_rows = grad_in.shape[0] * height
    cdef int team = _team_size(n_threads, n_rows, (width + 2 * out_w) * channels)
    # One C-vector of shares per thread, each on its own cache lines.
    cdef Py_ssize_t slot = (channels + 15) // 16 * 16 + 16
    cdef floating[::1] shares = np.empty(team * slot, dtype=np.asarray(grad_in).dtype)
    cdef Py_ssize_t t, image, h, oh, tid, offset
    cdef floating* dst
    with nogil, parallel(num_threads=team):
        tid = threadid()
        for t in prange(n_rows, schedule='static'):
            image = t // height
            h = t - image * height
            dst = &grad_in[0, 0, 0, 0] + t * width * channels
            memset(dst, 0, width * channels * sizeof(floating))
            for oh in range(over[h], over[height + h]):
                offset = h - rows[oh]
                if offset < 0 or offset % dh != 0 or offset // dh >= rows[out_h + oh]:
                    continue
                if floating is float:
                    convx_nhwc_avg_spread_row_f(&grad_out[0, 0, 0, 0] + (image * out_h + oh) * out_w * channels, dst,
                                                &shares[tid * slot], channels, out_w, &cols[0], &cols[out_w], dw,
                                                rows[2 * out_h + oh], &cols[2 * out_w], two_step)
                else:
                    convx_nhwc_avg_spread_row_d(&grad_out[0, 0, 0, 0] + (image * out_h + oh) * out_w * channels, dst,
                                                &shares[tid * slot], channels, out_w, &cols[0], &cols[out_w], dw,
                                                rows[2 * out_h + oh], &cols[2 * out_w], two_step)


def avg_pool2d_nhwc_backward(const floating[:, :, :, ::1] grad_out, floating[:, :, :, ::1] grad_in,
                             Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t stride_h, Py_ssize_t stride_w,
                             Py_ssize_t pad_h, Py_ssize_t pad_w, Py_ssize_t pad_bottom, Py_ssize_t pad_right,
                             Py_ssize_t dilation_h, Py_ssize_t dilation_w, bint count_include_pad,
                             Py_ssize_t divisor_override, int n_threads):
    """grad_in[n, oh*sh - ph + i*dh, ow*sw - pw + j*dw, c] += grad_out[n, oh, ow, c] / divisor(oh, ow) over
    the taps inside the input, windows in output order; grad_in is overwritten."""
    cdef Py_ssize_t height = grad_in.shape[1], out_h = grad_out.shape[1], h, t
    cdef const int64_t[::1] rows = _nhwc_axis(height, out_h, kernel_h, stride_h, pad_h, pad_bottom,
                                              dilation_h, count_include_pad, divisor_override)
    cdef const int64_t[::1] cols = _nhwc_axis(grad_in.shape[2], grad_out.shape[2], kernel_w, stride_w, pad_w,
                                              pad_right, dilation_w, count_include_pad,
                                              1 if divisor_override > 0 else 0)
    # The windows over input row h: those starting at most h rows into the padded input, and at
    # least h - (kernel_h - 1) * dilation_h.
    cdef int64_t[::1] over = np.empty(2 * height, dtype=np.int64)
    for h in range(height):
        t = h + pad_h - (kernel_h - 1) * dilation_h
        over[h] = 0 if t <= 0 else min(out_h, (t + stride_h - 1) // stride_h)
        over[height + h] = max(over[h], min(out_h, (h + pad_h) // stride_h + 1))
    _nhwc_avg_gather(grad_out, grad_in, rows, cols, over, dilation_h, dilation_w, False, n_threads)


def adaptive_avg_pool2d_nhwc_backward(const floating[:, :, :, ::1] grad_out, floating[:, :, :, ::1] grad_in,
                                      int n_threads):
    """grad_in[n, h, w, c] = sum_{(oh, ow) whose window holds (h, w)} grad_out[n, oh, ow, c] / window_h / window_w."""
    cdef Py_ssize_t height = grad_in.shape[1], out_h = grad_out.shape[1], h, oh
    cdef const int64_t[::1] rows = _nhwc_adaptive_axis(height, out_h)
    cdef const int64_t[::1] cols = _nhwc_adaptive_axis(grad_in.shape[2], grad_out.shape[2])
    # Adaptive windows start and end in output order: the ones over a row are a run.
    cdef int64_t[::1] over = np.empty(2 * height, dtype=np.int64)
    for h in range(height):
        over[h] = out_h
        over[height + h] = 0
    for oh in range(out_h):
        for h in range(rows[oh], rows[oh] + rows[out_h + oh]):
            over[h] = min(over[h], oh)
            over[height + h] = oh + 1
    _nhwc_avg_gather(grad_out, grad_in, rows, cols, over, 1, 1, True, n_threads)
