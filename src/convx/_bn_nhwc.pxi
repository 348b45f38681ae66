# Batch normalisation of channels-last arrays (C bodies in _bn_nhwc.h), the same four kernels as
# the channels-first ones of _elementwise.pxi with the same arguments, on (N, L, C) arrays read as
# (N*L, C) matrices. The rows are cut into chunks of a fixed size whatever the thread count, one
# chunk per thread at a time; each chunk's channel sums go to its own rows of a partial array and
# are merged in chunk order after the parallel loop, so that the statistics and sums do not depend
# on the thread count and no two threads write the same memory.

cdef extern from "_bn_nhwc.h" nogil:
    void convx_bn_merge_moments(double count, double count_b, const double* mean_b, const double* m2_b, double* mean,
                                double* m2, Py_ssize_t channels)
    void convx_bn_rows_moments_f(const float* x, Py_ssize_t rows, Py_ssize_t channels, Py_ssize_t period,
                                 double* mean, double* m2, double* scratch)
    void convx_bn_rows_moments_d(const double* x, Py_ssize_t rows, Py_ssize_t channels, Py_ssize_t period,
                                 double* mean, double* m2, double* scratch)
    void convx_bn_rows_normalize_f(const float* x, float* out, Py_ssize_t n, Py_ssize_t period, const float* mean_rep,
                                   const float* scale_rep, const float* shift_rep, int kind, double p0, double p1)
    void convx_bn_rows_normalize_d(const double* x, double* out, Py_ssize_t n, Py_ssize_t period,
                                   const double* mean_rep, const double* scale_rep, const double* shift_rep, int kind,
                                   double p0, double p1)
    void convx_bn_rows_grad_sums_f(const float* grad_out, const float* x, const float* y, int kind, double p0,
                                   double p1, Py_ssize_t n, Py_ssize_t channels, Py_ssize_t period,
                                   const float* mean_rep, const float* scale_rep, const float* shift_rep,
                                   const double* mean_rep_d, double* sum_grad, double* sum_grad_centered,
                                   float* scratch, double* acc)
    void convx_bn_rows_grad_sums_d(const double* grad_out, const double* x, const double* y, int kind, double p0,
                                   double p1, Py_ssize_t n, Py_ssize_t channels, Py_ssize_t period,
                                   const double* mean_rep, const double* scale_rep, const double* shift_rep,
                                   const double* mean_rep_d, double* sum_grad, double* sum_grad_centered,
                                   double* scratch, double* acc)
    void convx_bn_rows_input_grad_f(const float* grad_out, const float* x, const float* y, int kind, double p0,
                                    double p1, Py_ssize_t n, Py_ssize_t period, const float* mean_rep,
                                    const float* scale_rep, const float* shift_rep, const float* k_centered_rep,
                                    const float* k_0_rep, float* grad_in, float* scratch)
    void convx_bn_rows_input_grad_d(const double* grad_out, const double* x, const double* y, int kind, double p0,
                                    double p1, Py_ssize_t n, Py_ssize_t period, const double* mean_rep,
                                    const double* scale_rep, const double* shift_rep, const double* k_centered_rep,
                                    const double* k_0_rep, double* grad_in, double* scratch)
    Py_ssize_t convx_bn_rows_block_f(Py_ssize_t period)


cdef enum:
    # Elements of a chunk of rows (whole rows, at least one): a thread's unit of work.
    BN_ROWS_CHUNK = 32768
    # The shortest period: per-channel figures are repeated over a multiple of C at least this long.
    BN_MIN_PERIOD = 64


cdef inline Py_ssize_t _bn_period(Py_ssize_t channels) noexcept nogil:
    return channels * ((BN_MIN_PERIOD + channels - 1) // channels)


cdef inline Py_ssize_t _bn_chunk_rows(Py_ssize_t channels) noexcept nogil:
    return max(1, BN_ROWS_CHUNK // channels)


cdef inline Py_ssize_t _bn_row(Py_ssize_t n, Py_ssize_t itemsize) noexcept nogil:
    """n elements rounded up to whole 64-byte lines: the stride of a table's rows."""
    return (n * itemsize + 63) // 64 * 64 // itemsize


def _bn_aligned(Py_ssize_t n, dtype):
    """An empty (n,) array of dtype starting on a 64-byte boundary: the kernels load the repeated
    figures and the period sums a vector at a time, and an AVX-512 vector off a line boundary is
    two loads."""
    cdef Py_ssize_t itemsize = np.dtype(dtype).itemsize
    buffer = np.empty(n + 64 // itemsize, dtype=dtype)
    start = (-buffer.ctypes.data % 64) // itemsize
    return buffer[start:start + n]


cdef void _bn_repeat(const double[::1] figures, floating* out, Py_ssize_t period) noexcept nogil:
    """out[j] = figures[j % C] for j < period (a multiple of C), rounded to out's type."""
    cdef Py_ssize_t channels = figures.shape[0], k, c
    for k in range(period // channels):
        for c in range(channels):
            out[k * channels + c] = <floating> figures[c]


def batch_norm_moments_nhwc(const floating[:, :, ::1] x, double count, double[::1] mean, double[::1] m2,
                            int n_threads):
    """Merge x (N, L, C) into each channel's running mean[c] and sum of squared deviations m2[c]
    of `count` values so far."""
    cdef Py_ssize_t channels = x.shape[2], rows = x.shape[0] * x.shape[1], k, r0, tid
    if rows == 0 or channels == 0:
        return
    cdef Py_ssize_t period = _bn_period(channels), chunk_rows = _bn_chunk_rows(channels)
    cdef Py_ssize_t n_chunks = (rows + chunk_rows - 1) // chunk_rows
    cdef int team = _elementwise_team(n_threads, n_chunks, rows * channels)
    cdef double[:, ::1] partial = np.empty((2 * n_chunks, channels))
    cdef Py_ssize_t stride = _bn_row(3 * period + 2 * channels, 8)
    cdef double[::1] scratch = _bn_aligned(team * stride, np.float64)
    cdef const floating* src = &x[0, 0, 0]
    with nogil:
        with parallel(num_threads=team):
            tid = threadid()
            for k in prange(n_chunks, schedule='static'):
                r0 = k * chunk_rows
                if floating is float:
                    convx_bn_rows_moments_f(src + r0 * channels, min(chunk_rows, rows - r0), channels, period,
                                            &partial[2 * k, 0], &partial[2 * k + 1, 0], &scratch[tid * stride])
                else:
                    convx_bn_rows_moments_d(src + r0 * channels, min(chunk_rows, rows - r0), channels, period,
                                            &partial[2 * k, 0], &partial[2 * k + 1, 0], &scratch[tid * stride])
        for k in range(n_chunks):
            r0 = min(chunk_rows, rows - k * chunk_rows)
            convx_bn_merge_moments(count, <double> r0, &partial[2 * k, 0], &partial[2 * k + 1, 0], &mean[0], &m2[0],
                                   channels)
            count += <double> r0


def batch_norm_normalize_nhwc(const floating[:, :, ::1] x, floating[:, :, ::1] out, const double[::1] mean,
                              const double[::1] scale, const double[::1] shift, int kind, double p0, double p1,
                              int n_threads):
    """out[n, l, c] = act((x[n, l, c] - mean[c]) * scale[c] + shift[c]) over (N, L, C) arrays, act
    the activation `kind` (none when negative)."""
    cdef Py_ssize_t channels = x.shape[2], rows = x.shape[0] * x.shape[1], k, r0
    if rows == 0 or channels == 0:
        return
    cdef Py_ssize_t period = _bn_period(channels), chunk_rows = _bn_chunk_rows(channels)
    cdef Py_ssize_t n_chunks = (rows + chunk_rows - 1) // chunk_rows
    cdef int team = _elementwise_team(n_threads, n_chunks, 2 * rows * channels)
    cdef Py_ssize_t stride = _bn_row(period, sizeof(floating))
    cdef floating[::1] rep = _bn_aligned(3 * stride, np.float32 if floating is float else np.float64)
    cdef const floating* src = &x[0, 0, 0]
    cdef floating* dst = &out[0, 0, 0]
    with nogil:
        _bn_repeat(mean, &rep[0], period)
        _bn_repeat(scale, &rep[stride], period)
        _bn_repeat(shift, &rep[2 * stride], period)
        for k in prange(n_chunks, schedule='static', num_threads=team):
            r0 = k * chunk_rows
            if floating is float:
                convx_bn_rows_normalize_f(src + r0 * channels, dst + r0 * channels,
                                          min(chunk_rows, rows - r0) * channels, period, &rep[0], &rep[stride],
                                          &rep[2 * stride], kind, p0, p1)
            else:
                convx_bn_rows_normalize_d(src + r0 * channels, dst + r0 * channels,
                                          min(chunk_rows, rows - r0) * channels, period, &rep[0], &rep[stride],
                                          &rep[2 * stride], kind, p0, p1)


def batch_norm_grad_sums_nhwc(const floating[:, :, ::1] grad_out, const floating[:, :, ::1] x,
                              const floating[:, :, ::1] y, int kind, double p0, double p1, const double[::1] mean,
                              const double[::1] scale, const double[::1] shift, double[::1] sum_grad,
                              double[::1] sum_grad_centered, int n_threads):
    """sum_grad[c] += sum g[..., c]; sum_grad_centered[c] += sum g[..., c] * (x[..., c] - mean[c])
    over (N, L, C) arrays, g as in batch_norm_grad_sums (y None: the activation's output recomputed
    from x with mean, scale and shift)."""
    cdef Py_ssize_t channels = x.shape[2], rows = x.shape[0] * x.shape[1], k, r0, tid, c
    if rows == 0 or channels == 0:
        return
    cdef Py_ssize_t period = _bn_period(channels), chunk_rows = _bn_chunk_rows(channels)
    cdef Py_ssize_t n_chunks = (rows + chunk_rows - 1) // chunk_rows
    cdef Py_ssize_t block = convx_bn_rows_block_f(period)
    cdef int team = _elementwise_team(n_threads, n_chunks, 2 * rows * channels)
    dtype = np.float32 if floating is float else np.float64
    cdef Py_ssize_t stride = _bn_row(period, sizeof(floating)), block_stride = _bn_row(block, sizeof(floating))
    cdef Py_ssize_t acc_stride = _bn_row(2 * period, 8)
    cdef floating[::1] rep = _bn_aligned(3 * stride, dtype)
    cdef double[::1] mean_rep = _bn_aligned(period, np.float64)
    cdef double[:, ::1] partial = np.empty((2 * n_chunks, channels))
    cdef floating[::1] scratch = _bn_aligned(team * block_stride, dtype)
    cdef double[::1] acc = _bn_aligned(team * acc_stride, np.float64)
    cdef bint recompute = kind >= 0 and y is None
    cdef const floating* y0 = &y[0, 0, 0] if kind >= 0 and not recompute else NULL
    cdef const floating* g0 = &grad_out[0, 0, 0]
    cdef const floating* src = &x[0, 0, 0]
    with nogil:
        _bn_repeat(mean, &rep[0], period)
        _bn_repeat(scale, &rep[stride], period)
        _bn_repeat(shift, &rep[2 * stride], period)
        _bn_repeat(mean, &mean_rep[0], period)
        with parallel(num_threads=team):
            tid = threadid()
            for k in prange(n_chunks, schedule='static'):
                r0 = k * chunk_rows * channels
                if floating is float:
                    convx_bn_rows_grad_sums_f(g0 + r0, src + r0, y0 + r0 if y0 else NULL, kind, p0, p1,
                                              min(chunk_rows, rows - k * chunk_rows) * channels, channels, period,
                                              &rep[0], &rep[stride], &rep[2 * stride], &mean_rep[0],
                                              &partial[2 * k, 0], &partial[2 * k + 1, 0], &scratch[tid * block_stride],
                                              &acc[tid * acc_stride])
                else:
                    convx_bn_rows_grad_sums_d(g0 + r0, src + r0, y0 + r0 if y0 else NULL, kind, p0, p1,
                                              min(chunk_rows, rows - k * chunk_rows) * channels, channels, period,
                                              &rep[0], &rep[stride], &rep[2 * stride], &mean_rep[0],
                                              &partial[2 * k, 0], &partial[2 * k + 1, 0], &scratch[tid * block_stride],
                                              &acc[tid * acc_stride])
        for k in range(n_chunks):
            for c in range(channels):
                sum_grad[c] += partial[2 * k, c]
                sum_grad_centered[c] += partial[2 * k + 1, c]


def batch_norm_input_grad_nhwc(const floating[:, :, ::1] grad_out, const floating[:, :, ::1] x,
                               const floating[:, :, ::1] y, int kind, double p0, double p1, const double[::1] shift,
                               floating[:, :, ::1] grad_in, const double[::1] mean, const double[::1] k_grad,
                               const double[::1] k_centered, const double[::1] k_0, int n_threads):
    """grad_in[n, l, c] = k_grad[c] * g[n, l, c] + k_centered[c] * (x[n, l, c] - mean[c]) + k_0[c]
    over (N, L, C) arrays, g as in batch_norm_grad_sums_nhwc, k_grad the forward's scale (y None:
    with shift, recompute its output)."""
    cdef Py_ssize_t channels = x.shape[2], rows = x.shape[0] * x.shape[1], k, r0, tid
    if rows == 0 or channels == 0:
        return
    cdef Py_ssize_t period = _bn_period(channels), chunk_rows = _bn_chunk_rows(channels)
    cdef Py_ssize_t n_chunks = (rows + chunk_rows - 1) // chunk_rows
    cdef Py_ssize_t block = convx_bn_rows_block_f(period)
    cdef int team = _elementwise_team(n_threads, n_chunks, 3 * rows * channels)
    dtype = np.float32 if floating is float else np.float64
    cdef Py_ssize_t stride = _bn_row(period, sizeof(floating)), block_stride = _bn_row(block, sizeof(floating))
    cdef floating[::1] rep = _bn_aligned(5 * stride, dtype)
    cdef floating[::1] scratch = _bn_aligned(team * block_stride, dtype)
    cdef bint recompute = kind >= 0 and y is None
    cdef const floating* y0 = &y[0, 0, 0] if kind >= 0 and not recompute else NULL
    cdef const floating* g0 = &grad_out[0, 0, 0]
    cdef const floating* src = &x[0, 0, 0]
    cdef floating* dst = &grad_in[0, 0, 0]
    with nogil:
        _bn_repeat(mean, &rep[0], period)
        _bn_repeat(k_grad, &rep[stride], period)
        _bn_repeat(shift, &rep[2 * stride], period)
        _bn_repeat(k_centered, &rep[3 * stride], period)
        _bn_repeat(k_0, &rep[4 * stride], period)
    with nogil, parallel(num_threads=team):
        tid = threadid()
        for k in prange(n_chunks, schedule='static'):
            r0 = k * chunk_rows * channels
            if floating is float:
                convx_bn_rows_input_grad_f(g0 + r0, src + r0, y0 + r0 if y0 else NULL, kind, p0, p1,
                                           min(chunk_rows, rows - k * chunk_rows) * channels, period, &rep[0],
                                           &rep[stride], &rep[2 * stride], &rep[3 * stride], &rep[4 * stride],
                                           dst + r0, &scratch[tid * block_stride])
            else:
                convx_bn_rows_input_grad_d(g0 + r0, src + r0, y0 + r0 if y0 else NULL, kind, p0, p1,
                                           min(chunk_rows, rows - k * chunk_rows) * channels, period, &rep[0],
                                           &rep[stride], &rep[2 * stride], &rep[3 * stride], &rep[4 * stride],
                                           dst + r0, &scratch[tid * block_stride])
