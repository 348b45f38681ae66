# Resampling and padding (interpolate, pad), forward and backward.
#
# Every output plane reads its input plane through one table per axis, computed by the caller:
# gather kernels copy one source element per output (nearest neighbours, every padding mode; a
# negative source stands for the constant fill), bilinear kernels blend two per axis. Threads split
# the N*C planes and each plane of an output or input gradient is written by one thread only, so
# the backward's scatter-adds need no reduction.

from libc.string cimport memcpy


cdef void _gather_plane(const floating* src, Py_ssize_t width, floating* dst, Py_ssize_t out_h, Py_ssize_t out_w,
                        const int64_t* rows, const int64_t* cols, Py_ssize_t run_begin, Py_ssize_t run_end,
                        floating value) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef int64_t c
    cdef const floating* row
    for i in range(out_h):
        if rows[i] < 0:
            for j in range(out_w):
                dst[j] = value
        else:
            row = src + rows[i] * width
            for j in range(run_begin):
                c = cols[j]
                dst[j] = row[c] if c >= 0 else value
            if run_end > run_begin:
                memcpy(dst + run_begin, row + cols[run_begin], (run_end - run_begin) * sizeof(floating))
            for j in range(run_end, out_w):
                c = cols[j]
                dst[j] = row[c] if c >= 0 else value
        dst += out_w


def gather2d_forward(const floating[:, :, ::1] x, floating[:, :, ::1] out, const int64_t[::1] rows,
                     const int64_t[::1] cols, Py_ssize_t run_begin, Py_ssize_t run_end, double value, int n_threads):
    """out[p, i, j] = x[p, rows[i], cols[j]], or value where rows[i] or cols[j] is negative; cols[j] runs
    cols[run_begin], cols[run_begin] + 1, ... over [run_begin, run_end) (copied as one block)."""
    cdef Py_ssize_t n_planes = out.shape[0], height = x.shape[1], width = x.shape[2]
    cdef Py_ssize_t out_h = out.shape[1], out_w = out.shape[2], p
    if n_planes == 0 or out_h == 0 or out_w == 0:
        return
    cdef const floating* src = &x[0, 0, 0] if height * width > 0 else NULL
    cdef floating* dst = &out[0, 0, 0]
    cdef floating fill = <floating> value
    with nogil:
        for p in prange(n_planes, schedule='static', num_threads=_team_size(n_threads, n_planes, 2 * out_h * out_w)):
            _gather_plane(src + p * height * width if src else NULL, width, dst + p * out_h * out_w, out_h, out_w,
                          &rows[0], &cols[0], run_begin, run_end, fill)


cdef void _gather_backward_plane(const floating* grad_out, Py_ssize_t out_h, Py_ssize_t out_w, floating* grad_in,
                                 Py_ssize_t plane_size, Py_ssize_t width, const int64_t* rows,
                                 const int64_t* cols) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef int64_t c
    cdef floating* row
    memset(grad_in, 0, plane_size * sizeof(floating))
    for i in range(out_h):
        if rows[i] >= 0:
            row = grad_in + rows[i] * width
            for j in range(out_w):
                c = cols[j]
                if c >= 0:
                    row[c] += grad_out[j]
        grad_out += out_w


def gather2d_backward(const floating[:, :, ::1] grad_out, floating[:, :, ::1] grad_in, const int64_t[::1] rows,
                      const int64_t[::1] cols, int n_threads):
    """grad_in[p, h, w] = sum of grad_out[p, i, j] over rows[i] == h and cols[j] == w, in output order."""
    cdef Py_ssize_t n_planes = grad_in.shape[0], height = grad_in.shape[1], width = grad_in.shape[2]
    cdef Py_ssize_t out_h = grad_out.shape[1], out_w = grad_out.shape[2], p
    if n_planes == 0 or height == 0 or width == 0:
        return
    cdef const floating* src = &grad_out[0, 0, 0] if out_h * out_w > 0 else NULL
    cdef floating* dst = &grad_in[0, 0, 0]
    with nogil:
        for p in prange(n_planes, schedule='static',
                        num_threads=_team_size(n_threads, n_planes, height * width + out_h * out_w)):
            if src:
                _gather_backward_plane(src + p * out_h * out_w, out_h, out_w, dst + p * height * width,
                                       height * width, width, &rows[0], &cols[0])
            else:
                memset(dst + p * height * width, 0, height * width * sizeof(floating))


cdef void _bilinear_plane(const floating* src, Py_ssize_t width, floating* dst, Py_ssize_t out_h, Py_ssize_t out_w,
                          const int64_t* rows, const floating* row_weights, const int64_t* cols,
                          const floating* col_weights) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef const floating* top
    cdef const floating* bottom
    cdef floating w0, w1
    for i in range(out_h):
        top = src + rows[2 * i] * width
        bottom = src + rows[2 * i + 1] * width
        for j in range(out_w):
            w0 = col_weights[2 * j]
            w1 = col_weights[2 * j + 1]
            dst[j] = ((top[cols[2 * j]] * w0 + top[cols[2 * j + 1]] * w1) * row_weights[2 * i]
                      + (bottom[cols[2 * j]] * w0 + bottom[cols[2 * j + 1]] * w1) * row_weights[2 * i + 1])
        dst += out_w


def bilinear2d_forward(const floating[:, :, ::1] x, floating[:, :, ::1] out, const int64_t[:, ::1] rows,
                       const floating[:, ::1] row_weights, const int64_t[:, ::1] cols,
                       const floating[:, ::1] col_weights, int n_threads):
    """out[p, i, j] = sum_{a, b in 0, 1} row_weights[i, a] * col_weights[j, b] * x[p, rows[i, a], cols[j, b]]."""
    cdef Py_ssize_t n_planes = out.shape[0], height = x.shape[1], width = x.shape[2]
    cdef Py_ssize_t out_h = out.shape[1], out_w = out.shape[2], p
    if n_planes == 0 or out_h == 0 or out_w == 0:
        return
    cdef const floating* src = &x[0, 0, 0]
    cdef floating* dst = &out[0, 0, 0]
    with nogil:
        for p in prange(n_planes, schedule='static', num_threads=_team_size(n_threads, n_planes, 5 * out_h * out_w)):
            _bilinear_plane(src + p * height * width, width, dst + p * out_h * out_w, out_h, out_w, &rows[0, 0],
                            &row_weights[0, 0], &cols[0, 0], &col_weights[0, 0])


cdef void _bilinear_backward_plane(const floating* grad_out, Py_ssize_t out_h, Py_ssize_t out_w, floating* grad_in,
                                   Py_ssize_t plane_size, Py_ssize_t width, const int64_t* rows,
                                   const floating* row_weights, const int64_t* cols,
                                   const floating* col_weights) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef floating* top
    cdef floating* bottom
    cdef floating g, h0, h1, w0, w1
    memset(grad_in, 0, plane_size * sizeof(floating))
    for i in range(out_h):
        top = grad_in + rows[2 * i] * width
        bottom = grad_in + rows[2 * i + 1] * width
        h0 = row_weights[2 * i]
        h1 = row_weights[2 * i + 1]
        for j in range(out_w):
            g = grad_out[j]
            w0 = col_weights[2 * j]
            w1 = col_weights[2 * j + 1]
            top[cols[2 * j]] += h0 * w0 * g
            top[cols[2 * j + 1]] += h0 * w1 * g
            bottom[cols[2 * j]] += h1 * w0 * g
            bottom[cols[2 * j + 1]] += h1 * w1 * g
        grad_out += out_w


def bilinear2d_backward(const floating[:, :, ::1] grad_out, floating[:, :, ::1] grad_in, const int64_t[:, ::1] rows,
                        const floating[:, ::1] row_weights, const int64_t[:, ::1] cols,
                        const floating[:, ::1] col_weights, int n_threads):
    """grad_in[p, h, w] = sum over (i, a, j, b) with rows[i, a] == h, cols[j, b] == w of
    row_weights[i, a] * col_weights[j, b] * grad_out[p, i, j], in output order."""
    cdef Py_ssize_t n_planes = grad_in.shape[0], height = grad_in.shape[1], width = grad_in.shape[2]
    cdef Py_ssize_t out_h = grad_out.shape[1], out_w = grad_out.shape[2], p
    if n_planes == 0 or height == 0 or width == 0 or out_h == 0 or out_w == 0:
        return
    cdef const floating* src = &grad_out[0, 0, 0]
    cdef floating* dst = &grad_in[0, 0, 0]
    with nogil:
        for p in prange(n_planes, schedule='static',
                        num_threads=_team_size(n_threads, n_planes, height * width + 5 * out_h * out_w)):
            _bilinear_backward_plane(src + p * out_h * out_w, out_h, out_w, dst + p * height * width,
                                     height * width, width, &rows[0, 0], &row_weights[0, 0], &cols[0, 0],
                                     &col_weights[0, 0])
