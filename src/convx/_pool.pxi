# Pooling kernels (max, average, adaptive), forward and backward.
#
# Threads split the N*C planes; every plane of an output (or of an input gradient) is written by
# exactly one thread, so no two threads ever touch the same memory and nothing needs a reduction.
#
# The max forward (in C, _pool.h, cloned per instruction set) splits each plane, padded with -inf,
# into its stride phases, so that every tap of every window is one long unit-stride sweep over all
# of the plane's outputs at once (2x2 stride-2 windows without padding read the input directly);
# it tracks each winner's offset within its window as a floating-point number, in the same vector
# lanes as the values. Windows large against the plane (or strides past the kernel, or offsets
# past the float mantissa) go to the separable max forward instead: a row pass then a column pass
# over the windows clipped to the input, by blocks (dilation 1) or by deque, in time and memory
# linear in the plane and the output whatever the window (convx.functional.pooling chooses). The
# average backward (also in C) has each input row gather the shares of
# the windows over it, in output order, with no zero fill first: so any band of input rows can be
# written by a call of its own, bit for bit as in the whole plane (as can any band of output rows
# of the average forward, each row summed on its own). The average forward
# sweeps each output row in two parts: the border windows that overlap the padding one window at
# a time over their clipped tap range, the interior ones one kernel row at a time across the
# whole output row, with the common kernel widths and strides as literals so that the compiler
# vectorises. Every kernel visits the taps of a window in row-major order, so ties, NaN and
# summation order come out exactly as in the one-window-at-a-time loop (and as in PyTorch).

from libc.math cimport INFINITY
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t


# The element types of max pooling: the floating types, and the 8-bit integers (exact, no float
# round trip), which take the separable kernel (it pads nothing and needs no -inf) or a direct
# one of their own in place of the phase split (_pool_direct_body.h).
ctypedef fused max_pooled:
    float
    double
    int8_t
    uint8_t


cdef enum:
    # Elements (read plus written) per thread below which another thread costs more in start-up
    # than it saves; PyTorch's grain size.
    POOL_GRAIN = 32768


cdef inline int _team_size(int n_threads, Py_ssize_t n_planes, Py_ssize_t plane_work) noexcept nogil:
    """Threads for n_planes planes of plane_work elements each: at most one per plane and per grain."""
    cdef Py_ssize_t by_work = n_planes * plane_work // POOL_GRAIN
    return <int> max(1, min(<Py_ssize_t> n_threads, min(n_planes, by_work)))


cdef extern from "_pool.h" nogil:
    # Taps [row_lo[oh], row_hi[oh]) of output row oh land inside the input; same for columns.
    # Output columns [inner_lo, inner_hi) use every tap of the kernel's width.
    ctypedef struct PoolGeometry "convx_pool_geometry":
        Py_ssize_t height, width, out_h, out_w
        Py_ssize_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w
        const int64_t* row_lo
        const int64_t* row_hi
        const int64_t* col_lo
        const int64_t* col_hi
        Py_ssize_t inner_lo, inner_hi
    Py_ssize_t convx_max_pool_scratch(const PoolGeometry* g)
    Py_ssize_t convx_avg_backward_scratch(const PoolGeometry* g)
    void convx_max_pool_plane_f(const float* plane, float* out, int64_t* indices, float* scratch,
                                const PoolGeometry* g)
    void convx_max_pool_plane_d(const double* plane, double* out, int64_t* indices, double* scratch,
                                const PoolGeometry* g)
    void convx_max_pool_separable_f(const float* plane, float* out, int64_t* indices, float* scratch,
                                    int32_t* rcol, const PoolGeometry* g, const int64_t* row_order,
                                    const int64_t* col_order, const int64_t* row_win, const int64_t* col_win,
                                    Py_ssize_t chunk)
    void convx_max_pool_separable_d(const double* plane, double* out, int64_t* indices, double* scratch,
                                    int32_t* rcol, const PoolGeometry* g, const int64_t* row_order,
                                    const int64_t* col_order, const int64_t* row_win, const int64_t* col_win,
                                    Py_ssize_t chunk)
    void convx_max_pool_separable_i8(const int8_t* plane, int8_t* out, int64_t* indices, int8_t* scratch,
                                     int32_t* rcol, const PoolGeometry* g, const int64_t* row_order,
                                     const int64_t* col_order, const int64_t* row_win, const int64_t* col_win,
                                     Py_ssize_t chunk)
    void convx_max_pool_separable_u8(const uint8_t* plane, uint8_t* out, int64_t* indices, uint8_t* scratch,
                                     int32_t* rcol, const PoolGeometry* g, const int64_t* row_order,
                                     const int64_t* col_order, const int64_t* row_win, const int64_t* col_win,
                                     Py_ssize_t chunk)
    Py_ssize_t convx_max_direct_scratch(const PoolGeometry* g)
    void convx_max_pool_direct_i8(const int8_t* plane, int8_t* out, int64_t* indices, int8_t* scratch,
                                  const PoolGeometry* g)
    void convx_max_pool_direct_u8(const uint8_t* plane, uint8_t* out, int64_t* indices, uint8_t* scratch,
                                  const PoolGeometry* g)
    Py_ssize_t convx_max_backward_scratch(Py_ssize_t out_h, Py_ssize_t out_w)
    int convx_max_backward_corners(Py_ssize_t height, Py_ssize_t width, Py_ssize_t out_h, Py_ssize_t out_w,
                                   int64_t* corners)
    int convx_max_backward_plane_f(const float* grad_out, const int64_t* indices, float* grad_in,
                                   const int64_t* corners, int32_t* code, Py_ssize_t height, Py_ssize_t width,
                                   Py_ssize_t out_h, Py_ssize_t out_w)
    int convx_max_backward_plane_d(const double* grad_out, const int64_t* indices, double* grad_in,
                                   const int64_t* corners, int32_t* code, Py_ssize_t height, Py_ssize_t width,
                                   Py_ssize_t out_h, Py_ssize_t out_w)
    void convx_avg_column_windows(const PoolGeometry* g, int64_t* lo, int64_t* hi)
    void convx_avg_gather_plane_f(const float* grad_out, float* grad_in, float* share, const PoolGeometry* g,
                                  const int64_t* row_div, const int64_t* col_div, const int64_t* lo, const int64_t* hi,
                                  Py_ssize_t row_begin, Py_ssize_t row_end)
    void convx_avg_gather_plane_d(const double* grad_out, double* grad_in, double* share, const PoolGeometry* g,
                                  const int64_t* row_div, const int64_t* col_div, const int64_t* lo, const int64_t* hi,
                                  Py_ssize_t row_begin, Py_ssize_t row_end)
    void convx_avg_tiled_plane_f(const float* grad_out, float* grad_in, float* share, const PoolGeometry* g,
                                 const int64_t* row_div, const int64_t* col_div, Py_ssize_t row_begin,
                                 Py_ssize_t row_end)
    void convx_avg_tiled_plane_d(const double* grad_out, double* grad_in, double* share, const PoolGeometry* g,
                                 const int64_t* row_div, const int64_t* col_div, Py_ssize_t row_begin,
                                 Py_ssize_t row_end)


cdef inline void _tap_range(Py_ssize_t start, Py_ssize_t size, Py_ssize_t kernel, Py_ssize_t dilation,
                            int64_t* lo, int64_t* hi) noexcept nogil:
    """[lo, hi): the taps t < kernel with 0 <= start + t * dilation < size."""
    cdef Py_ssize_t first = 0, last
    if start < 0:
        first = (-start + dilation - 1) // dilation
    last = (size - start + dilation - 1) // dilation
    if last > kernel:
        last = kernel
    if last < first:
        last = first
    lo[0] = first
    hi[0] = last


cdef inline void _tap_ranges(Py_ssize_t size, Py_ssize_t out_size, Py_ssize_t kernel, Py_ssize_t stride,
                             Py_ssize_t pad, Py_ssize_t dilation, int64_t* lo, int64_t* hi) noexcept nogil:
    cdef Py_ssize_t o
    for o in range(out_size):
        _tap_range(o * stride - pad, size, kernel, dilation, &lo[o], &hi[o])


cdef PoolGeometry _pool_geometry(Py_ssize_t height, Py_ssize_t width, Py_ssize_t out_h, Py_ssize_t out_w,
                                 Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t stride_h,
                                 Py_ssize_t stride_w, Py_ssize_t pad_h, Py_ssize_t pad_w,
                                 Py_ssize_t dilation_h, Py_ssize_t dilation_w, int64_t[::1] ranges) noexcept:
    """Fill ``ranges`` (2 * (out_h + out_w) entries, owned by the caller) with the tap ranges."""
    cdef PoolGeometry g
    g.height = height
    g.width = width
    g.out_h = out_h
    g.out_w = out_w
    g.kernel_h = kernel_h
    g.kernel_w = kernel_w
    g.stride_h = stride_h
    g.stride_w = stride_w
    g.pad_h = pad_h
    g.pad_w = pad_w
    g.dilation_h = dilation_h
    g.dilation_w = dilation_w
    g.row_lo = &ranges[0]
    g.row_hi = &ranges[out_h]
    g.col_lo = &ranges[2 * out_h]
    g.col_hi = &ranges[2 * out_h + out_w]
    _tap_ranges(height, out_h, kernel_h, stride_h, pad_h, dilation_h, <int64_t*> g.row_lo, <int64_t*> g.row_hi)
    _tap_ranges(width, out_w, kernel_w, stride_w, pad_w, dilation_w, <int64_t*> g.col_lo, <int64_t*> g.col_hi)
    # Windows start further right as ow grows, so the full-width ones form one contiguous run.
    g.inner_lo = 0
    while g.inner_lo < out_w and g.col_lo[g.inner_lo] != 0:
        g.inner_lo += 1
    g.inner_hi = g.inner_lo
    while g.inner_hi < out_w and g.col_lo[g.inner_hi] == 0 and g.col_hi[g.inner_hi] == kernel_w:
        g.inner_hi += 1
    return g


# ---------------------------------------------------------------------------------------------
# Max pooling

cdef inline void _max_window(const max_pooled* plane, Py_ssize_t width, Py_ssize_t h0, Py_ssize_t i_lo,
                             Py_ssize_t i_hi, Py_ssize_t dilation_h, Py_ssize_t w0, Py_ssize_t j_lo,
                             Py_ssize_t j_hi, Py_ssize_t dilation_w, max_pooled* value,
                             int64_t* where) noexcept nogil:
    """value, where = max and flat index of plane over taps [i_lo, i_hi) x [j_lo, j_hi) (NaN wins, last NaN)."""
    cdef Py_ssize_t i, j, pos
    cdef max_pooled v, best
    # The type's lowest value: a window of nothing else reports its first tap, as one of -inf does.
    if max_pooled is int8_t:
        best = -128
    elif max_pooled is uint8_t:
        best = 0
    else:
        best = -INFINITY
    # If no tap beats -inf, PyTorch reports the first tap inside the input.
    cdef int64_t best_pos = (h0 + i_lo * dilation_h) * width + w0 + j_lo * dilation_w
    cdef bint take
    for i in range(i_lo, i_hi):
        for j in range(j_lo, j_hi):
            pos = (h0 + i * dilation_h) * width + w0 + j * dilation_w
            v = plane[pos]
            if max_pooled is float or max_pooled is double:
                take = (v > best) | (v != v)
            else:
                take = v > best
            best = v if take else best
            best_pos = pos if take else best_pos
    value[0] = best
    where[0] = best_pos


cdef inline void _max_pool_plane(const max_pooled* plane, max_pooled* out, int64_t* indices, max_pooled* scratch,
                                 int32_t* rcol, PoolGeometry* g, const int64_t* row_order,
                                 const int64_t* col_order, const int64_t* row_win, const int64_t* col_win,
                                 Py_ssize_t chunk, bint separable) noexcept nogil:
    if max_pooled is int8_t:
        if separable:
            convx_max_pool_separable_i8(plane, out, indices, scratch, rcol, g, row_order, col_order, row_win,
                                        col_win, chunk)
        else:
            convx_max_pool_direct_i8(plane, out, indices, scratch, g)
    elif max_pooled is uint8_t:
        if separable:
            convx_max_pool_separable_u8(plane, out, indices, scratch, rcol, g, row_order, col_order, row_win,
                                        col_win, chunk)
        else:
            convx_max_pool_direct_u8(plane, out, indices, scratch, g)
    elif separable:
        if max_pooled is float:
            convx_max_pool_separable_f(plane, out, indices, scratch, rcol, g, row_order, col_order, row_win,
                                       col_win, chunk)
        else:
            convx_max_pool_separable_d(plane, out, indices, scratch, rcol, g, row_order, col_order, row_win,
                                       col_win, chunk)
    elif max_pooled is float:
        convx_max_pool_plane_f(plane, out, indices, scratch, g)
    else:
        convx_max_pool_plane_d(plane, out, indices, scratch, g)


cdef object _residue_order(Py_ssize_t size, Py_ssize_t out_size, Py_ssize_t stride, Py_ssize_t pad,
                           Py_ssize_t dilation, const int64_t* lo):
    """The outputs of one axis sorted (stably) by the residue modulo ``dilation`` of their first tap
    inside the input, as convx_max_line takes them; None for dilation 1 (the identity). A counting
    sort over at most ``size`` residues (a first tap lies inside the input): memory linear in the
    input and output, whatever the dilation."""
    if dilation == 1:
        return None
    cdef Py_ssize_t buckets = min(dilation, size), o, r
    cdef int64_t[::1] start = np.zeros(buckets + 1, dtype=np.int64)
    cdef int64_t[::1] order = np.empty(out_size, dtype=np.int64)
    for o in range(out_size):
        start[(o * stride - pad + lo[o] * dilation) % dilation + 1] += 1
    for r in range(buckets):
        start[r + 1] += start[r]
    for o in range(out_size):
        r = (o * stride - pad + lo[o] * dilation) % dilation
        order[start[r]] = o
        start[r] += 1
    return np.asarray(order)


cdef object _block_windows(Py_ssize_t out_size, Py_ssize_t kernel, Py_ssize_t stride, Py_ssize_t pad,
                           const int64_t* lo, const int64_t* hi):
    """convx_max_row_blocks's ``win`` for one axis of dilation 1: each output's first and last tap
    inside the input, then which of its blocks' prefix and suffix it takes."""
    cdef int64_t[::1] win = np.empty(3 * out_size, dtype=np.int64)
    cdef Py_ssize_t o, a, b
    for o in range(out_size):
        a = o * stride - pad + lo[o]
        b = a + hi[o] - lo[o] - 1
        win[o] = a
        win[out_size + o] = b
        win[2 * out_size + o] = 0 if a % kernel == 0 else (1 if a // kernel == b // kernel else 2)
    return np.asarray(win)


cdef enum:
    # Output columns the block column pass combines at once: a few vectors' worth, so that each
    # step is a unit-stride loop, with its rows of scratch within the core's caches.
    POOL_COLUMN_CHUNK = 64
    # Bytes the block column pass may take per thread (fewer columns at once for taller planes;
    # one at a time by deque, in memory linear in the height, past a million rows): with the row
    # winners (a plane of int32) and a contiguous copy of the input, under twice the input + 64 MiB.
    POOL_COLUMN_BUDGET = 1 << 24


def max_pool2d_forward(const max_pooled[:, :, :, ::1] x, max_pooled[:, :, :, ::1] out,
                       int64_t[:, :, :, ::1] indices,
                       Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t stride_h, Py_ssize_t stride_w,
                       Py_ssize_t pad_h, Py_ssize_t pad_w, Py_ssize_t dilation_h, Py_ssize_t dilation_w,
                       bint separable, Py_ssize_t row_begin, Py_ssize_t row_end, int n_threads):
    """out[n, c, oh, ow] = max_{i, j} x_padded[n, c, oh*sh + i*dh, ow*sw + j*dw] (padding -inf, NaN wins),
    indices[n, c, oh, ow] = the flat h*W + w of that maximum, for the output rows [row_begin, row_end)
    only; a zero-batch ``indices`` skips them.

    ``separable``: the row-then-column deque kernel (time linear in the plane, any window), else the
    phase-split one, whose window offsets the caller has checked fit the floating-point type exactly
    and whose scratch it has checked is bounded (convx.functional.pooling decides); for int8 and
    uint8, the direct one in place of the phase split, whose windows the caller has checked have
    at most 256 taps."""
    cdef Py_ssize_t n_planes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t height = x.shape[2], width = x.shape[3], plane_size = height * width
    cdef Py_ssize_t out_w = out.shape[3], out_size = out.shape[2] * out_w
    cdef bint want_indices = indices.shape[0] > 0
    # The band of output rows reads input rows [first, last): a plane of its own, whose padding on top
    # is what lies above its first row, and whose indices are first * width short.
    cdef Py_ssize_t top = row_begin * stride_h - pad_h
    cdef Py_ssize_t first = max(top, 0)
    cdef Py_ssize_t last = min(height, (row_end - 1) * stride_h - pad_h + (kernel_h - 1) * dilation_h + 1)
    cdef Py_ssize_t band_h = row_end - row_begin, band_size = band_h * out_w
    cdef int64_t[::1] ranges = np.empty(2 * (band_h + out_w), dtype=np.int64)
    cdef PoolGeometry g = _pool_geometry(last - first, width, band_h, out_w, kernel_h, kernel_w,
                                         stride_h, stride_w, first - top, pad_w, dilation_h, dilation_w, ranges)
    n_threads = _team_size(n_threads, n_planes, (last - first) * width + band_size)
    # The separable kernel goes by blocks along an axis of dilation 1, by deque along the others;
    # its column pass by blocks of as many output columns as the budget holds (with int32 rows), or
    # else one column at a time by deque.
    cdef Py_ssize_t item = sizeof(max_pooled), rows = last - first
    cdef Py_ssize_t chunk = min(<Py_ssize_t> POOL_COLUMN_CHUNK, out_w,
                                <Py_ssize_t> POOL_COLUMN_BUDGET // (rows * (2 * item + 8)))
    if rows > 2**31 - 1:
        chunk = 0
    cdef Py_ssize_t row_bytes = width * (2 * item + 8) if dilation_w == 1 else width * (8 + item)
    cdef Py_ssize_t column_bytes = rows * chunk * (2 * item + 8) if dilation_h == 1 and chunk else rows * (8 + item)
    # Each thread's slot starts on its own cache lines (slots sharing a line would bounce it
    # between the cores on every store), a whole number of 8 bytes so that int64s stay aligned.
    # (Bytes, for the 8-bit types: a whole number of 8 of them.)
    cdef Py_ssize_t slot
    if separable:
        slot = (((max(row_bytes, column_bytes) + 64) // item + 1) // 2 * 2 if item >= 4 else
                (max(row_bytes, column_bytes) + 64 + 7) // 8 * 8)
    elif max_pooled is int8_t or max_pooled is uint8_t:
        slot = (convx_max_direct_scratch(&g) + 64 + 7) // 8 * 8
    else:
        slot = convx_max_pool_scratch(&g)
    cdef max_pooled[::1] scratch = np.empty(n_threads * slot, dtype=np.asarray(out).dtype)
    cdef Py_ssize_t rcol_slot = ((last - first) * out_w + 31) // 16 * 16 if separable else 0
    # The separable kernel's arrays (held by these names while it runs), as pointers: NULL where
    # unused, so that the phase split's calls acquire no buffers for them.
    cdef int32_t* rcol_ptr = NULL
    cdef const int64_t* row_ptr = NULL
    cdef const int64_t* col_ptr = NULL
    cdef const int64_t* row_win_ptr = NULL
    cdef const int64_t* col_win_ptr = NULL
    cdef int32_t[::1] rcol
    cdef const int64_t[::1] view
    if separable:
        rcol = np.empty(n_threads * rcol_slot, dtype=np.int32)
        rcol_ptr = &rcol[0]
        row_order = _residue_order(rows, band_h, stride_h, first - top, dilation_h, g.row_lo)
        col_order = _residue_order(width, out_w, stride_w, pad_w, dilation_w, g.col_lo)
        row_win = (_block_windows(band_h, kernel_h, stride_h, first - top, g.row_lo, g.row_hi)
                   if dilation_h == 1 and chunk else None)
        col_win = _block_windows(out_w, kernel_w, stride_w, pad_w, g.col_lo, g.col_hi) if dilation_w == 1 else None
        if row_order is not None:
            view = row_order
            row_ptr = &view[0]
        if col_order is not None:
            view = col_order
            col_ptr = &view[0]
        if row_win is not None:
            view = row_win
            row_win_ptr = &view[0]
        if col_win is not None:
            view = col_win
            col_win_ptr = &view[0]
    cdef Py_ssize_t p, tid, o
    cdef int64_t shift = first * width
    cdef int64_t* where
    cdef int32_t* rcol_mine
    with nogil, parallel(num_threads=n_threads):
        tid = threadid()
        rcol_mine = rcol_ptr + tid * rcol_slot if rcol_ptr != NULL else NULL  # (no arithmetic on NULL)
        for p in prange(n_planes, schedule='static'):
            where = &indices[0, 0, 0, 0] + p * out_size + row_begin * out_w if want_indices else NULL
            _max_pool_plane(&x[0, 0, 0, 0] + p * plane_size + first * width,
                            &out[0, 0, 0, 0] + p * out_size + row_begin * out_w, where,
                            &scratch[tid * slot], rcol_mine, &g, row_ptr, col_ptr, row_win_ptr,
                            col_win_ptr, chunk, separable)
            if where != NULL and shift != 0:
                for o in range(band_size):
                    where[o] += shift


def max_pool2d_backward(const floating[:, :, :, ::1] grad_out, const int64_t[:, :, :, ::1] indices,
                        floating[:, :, :, ::1] grad_in, int n_threads):
    """grad_in[n, c].flat[indices[n, c, oh, ow]] += grad_out[n, c, oh, ow]; grad_in is overwritten.

    Returns the number of planes left unfinished because one of their indices lies outside the
    plane: every index is read once, checked and only then used as an address, so no index,
    whatever the caller passed or another thread writes meanwhile, becomes a write outside grad_in.
    """
    cdef Py_ssize_t n_planes = grad_in.shape[0] * grad_in.shape[1]
    cdef Py_ssize_t height = grad_in.shape[2], width = grad_in.shape[3], plane_size = height * width
    cdef Py_ssize_t out_h = grad_out.shape[2], out_w = grad_out.shape[3], out_size = out_h * out_w
    cdef int team = _team_size(n_threads, n_planes, plane_size + out_size)
    cdef Py_ssize_t slot = convx_max_backward_scratch(out_h, out_w)
    cdef int32_t[::1] codes = np.empty(team * slot, dtype=np.int32)
    # The corners of the 2x2 blocks, when they fit: then planes whose indices all lie in their own
    # block are written in one pass.
    cdef int64_t[::1] corners = np.empty(max(out_size, 1), dtype=np.int64)
    cdef const int64_t* blocks = &corners[0] if convx_max_backward_corners(
        height, width, out_h, out_w, &corners[0]) else NULL
    cdef Py_ssize_t p, tid, refused = 0
    cdef int outside
    with nogil, parallel(num_threads=team):
        tid = threadid()
        for p in prange(n_planes, schedule='static'):
            if floating is float:
                outside = convx_max_backward_plane_f(&grad_out[0, 0, 0, 0] + p * out_size,
                                                     &indices[0, 0, 0, 0] + p * out_size,
                                                     &grad_in[0, 0, 0, 0] + p * plane_size, blocks, &codes[tid * slot],
                                                     height, width, out_h, out_w)
            else:
                outside = convx_max_backward_plane_d(&grad_out[0, 0, 0, 0] + p * out_size,
                                                     &indices[0, 0, 0, 0] + p * out_size,
                                                     &grad_in[0, 0, 0, 0] + p * plane_size, blocks, &codes[tid * slot],
                                                     height, width, out_h, out_w)
            refused += outside
    return refused


# ---------------------------------------------------------------------------------------------
# Average pooling

cdef inline Py_ssize_t _avg_count(Py_ssize_t start, Py_ssize_t size, Py_ssize_t pad_after, Py_ssize_t kernel,
                                  Py_ssize_t dilation, Py_ssize_t lo, Py_ssize_t hi, bint count_include_pad) noexcept nogil:
    """The taps along one axis of a window starting at ``start`` that its divisor counts, as PyTorch
    (and ONNX, with dilation): those inside the padded input [-pad_before, size + pad_after) (a
    window always starts inside it), or those inside the input, [lo, hi)."""
    if count_include_pad:
        return min(kernel, (size + pad_after - start + dilation - 1) // dilation)
    return hi - lo


cdef void _avg_divisors(PoolGeometry* g, Py_ssize_t pad_bottom, Py_ssize_t pad_right, bint count_include_pad,
                        Py_ssize_t divisor_override, int64_t* divisors) noexcept:
    """divisor(oh, ow) = divisors[oh] * divisors[out_h + ow]."""
    cdef Py_ssize_t o
    for o in range(g.out_h):
        divisors[o] = divisor_override if divisor_override > 0 else _avg_count(
            o * g.stride_h - g.pad_h, g.height, pad_bottom, g.kernel_h, g.dilation_h, g.row_lo[o], g.row_hi[o],
            count_include_pad)
    for o in range(g.out_w):
        divisors[g.out_h + o] = 1 if divisor_override > 0 else _avg_count(
            o * g.stride_w - g.pad_w, g.width, pad_right, g.kernel_w, g.dilation_w, g.col_lo[o], g.col_hi[o],
            count_include_pad)


cdef inline floating _window_sum(const floating* plane, Py_ssize_t width, Py_ssize_t h0, Py_ssize_t i_lo,
                                 Py_ssize_t i_hi, Py_ssize_t dilation_h, Py_ssize_t w0, Py_ssize_t j_lo,
                                 Py_ssize_t j_hi, Py_ssize_t dilation_w) noexcept nogil:
    """sum of plane[h0 + i*dh, w0 + j*dw] over [i_lo, i_hi) x [j_lo, j_hi), row-major from 0."""
    cdef Py_ssize_t i, j
    cdef floating total = 0
    for i in range(i_lo, i_hi):
        for j in range(j_lo, j_hi):
            total = total + plane[(h0 + i * dilation_h) * width + w0 + j * dilation_w]
    return total


cdef inline void _sum_taps(const floating* row, Py_ssize_t stride, Py_ssize_t n_taps, Py_ssize_t lo,
                           Py_ssize_t hi, bint first, floating* total) noexcept nogil:
    """total[o] += row[o*stride + j] for j < n_taps in order, o in [lo, hi); ``first`` starts from 0."""
    cdef Py_ssize_t o, j
    cdef floating t
    for o in range(lo, hi):
        t = 0 if first else total[o]
        for j in range(n_taps):
            t = t + row[o * stride + j]
        total[o] = t


cdef inline void _sum_row(const floating* row, PoolGeometry* g, bint first, floating* total) noexcept nogil:
    """The taps of one kernel row for the interior outputs of one output row."""
    cdef Py_ssize_t lo = g.inner_lo, hi = g.inner_hi
    # Literal geometry (and literal flags from the callers) let the compiler unroll the taps and
    # vectorise along the output row.
    if g.stride_w == 2 and g.kernel_w == 2:
        _sum_taps(row, 2, 2, lo, hi, first, total)
    elif g.stride_w == 2 and g.kernel_w == 3:
        _sum_taps(row, 2, 3, lo, hi, first, total)
    elif g.stride_w == 1 and g.kernel_w == 2:
        _sum_taps(row, 1, 2, lo, hi, first, total)
    elif g.stride_w == 1 and g.kernel_w == 3:
        _sum_taps(row, 1, 3, lo, hi, first, total)
    else:
        _sum_taps(row, g.stride_w, g.kernel_w, lo, hi, first, total)


cdef inline void _avg_window(const floating* plane, floating* out, PoolGeometry* g, Py_ssize_t oh,
                             Py_ssize_t ow, const int64_t* row_div, const int64_t* col_div) noexcept nogil:
    out[oh * g.out_w + ow] = (
        _window_sum(plane, g.width, oh * g.stride_h - g.pad_h, g.row_lo[oh], g.row_hi[oh], g.dilation_h,
                    ow * g.stride_w - g.pad_w, g.col_lo[ow], g.col_hi[ow], g.dilation_w)
        / <floating> (row_div[oh] * col_div[ow]))


cdef void _avg_pool_plane(const floating* plane, floating* out, PoolGeometry* g, const int64_t* row_div,
                          const int64_t* col_div, Py_ssize_t row_begin, Py_ssize_t row_end) noexcept nogil:
    """out[oh, ow] = (sum of the window's taps inside the input) / divisor, for the output rows
    [row_begin, row_end): each row on its own, so bands of rows come out as the whole plane."""
    cdef Py_ssize_t width = g.width
    cdef Py_ssize_t oh, ow, i, h0
    cdef const floating* row
    cdef floating* out_row
    cdef floating divisor
    for oh in range(row_begin, row_end):
        if g.dilation_w > 1:  # the row sweeps below take adjacent columns
            for ow in range(g.out_w):
                _avg_window(plane, out, g, oh, ow, row_div, col_div)
            continue
        for ow in range(g.inner_lo):
            _avg_window(plane, out, g, oh, ow, row_div, col_div)
        for ow in range(g.inner_hi, g.out_w):
            _avg_window(plane, out, g, oh, ow, row_div, col_div)
        if g.inner_lo == g.inner_hi:
            continue
        h0 = oh * g.stride_h - g.pad_h
        out_row = out + oh * g.out_w
        for i in range(g.row_lo[oh], g.row_hi[oh]):
            row = plane + (h0 + i * g.dilation_h) * width - g.pad_w
            if i == g.row_lo[oh]:
                _sum_row(row, g, True, out_row)
            else:
                _sum_row(row, g, False, out_row)
        # Interior windows of one row share their divisor.
        divisor = <floating> (row_div[oh] * col_div[g.inner_lo])
        for ow in range(g.inner_lo, g.inner_hi):
            out_row[ow] = out_row[ow] / divisor


def avg_pool2d_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out,
                       Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t stride_h, Py_ssize_t stride_w,
                       Py_ssize_t pad_h, Py_ssize_t pad_w, Py_ssize_t pad_bottom, Py_ssize_t pad_right,
                       Py_ssize_t dilation_h, Py_ssize_t dilation_w, bint count_include_pad,
                       Py_ssize_t divisor_override, Py_ssize_t row_begin, Py_ssize_t row_end, int n_threads):
    """out[n, c, oh, ow] = sum_{i, j} x_zero_padded[n, c, oh*sh + i*dh, ow*sw + j*dw] / divisor(oh, ow)
    (divisor_override when positive, else the count of taps in the padded input, padding pad_h/pad_w
    before and pad_bottom/pad_right after, or in the input), for the output rows [row_begin, row_end) only."""
    cdef Py_ssize_t n_planes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t height = x.shape[2], plane_size = height * x.shape[3]
    cdef Py_ssize_t out_h = out.shape[2], out_w = out.shape[3], out_size = out_h * out_w
    cdef int64_t[::1] ranges = np.empty(2 * (out_h + out_w), dtype=np.int64)
    cdef PoolGeometry g = _pool_geometry(height, x.shape[3], out_h, out_w, kernel_h, kernel_w,
                                         stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, ranges)
    cdef int64_t[::1] divisors = np.empty(out_h + out_w, dtype=np.int64)
    _avg_divisors(&g, pad_bottom, pad_right, count_include_pad, divisor_override, &divisors[0])
    # The band's share of a plane: the input rows its windows reach and its outputs.
    cdef Py_ssize_t rows_read = min(height, (row_end - 1) * stride_h - pad_h + (kernel_h - 1) * dilation_h + 1) - max(
        row_begin * stride_h - pad_h, 0)
    cdef int team = _team_size(n_threads, n_planes, rows_read * x.shape[3] + (row_end - row_begin) * out_w)
    cdef Py_ssize_t p
    with nogil:
        for p in prange(n_planes, schedule='static', num_threads=team):
            _avg_pool_plane(&x[0, 0, 0, 0] + p * plane_size, &out[0, 0, 0, 0] + p * out_size, &g,
                            &divisors[0], &divisors[out_h], row_begin, row_end)


cdef inline void _avg_backward_tiled(const floating* grad_out, floating* grad_in, floating* share,
                                     PoolGeometry* g, const int64_t* row_div, const int64_t* col_div,
                                     Py_ssize_t row_begin, Py_ssize_t row_end) noexcept nogil:
    if floating is float:
        convx_avg_tiled_plane_f(grad_out, grad_in, share, g, row_div, col_div, row_begin, row_end)
    else:
        convx_avg_tiled_plane_d(grad_out, grad_in, share, g, row_div, col_div, row_begin, row_end)


cdef void _avg_backward_dilated_plane(const floating* grad_out, floating* grad_in, PoolGeometry* g,
                                      const int64_t* row_div, const int64_t* col_div, Py_ssize_t row_begin,
                                      Py_ssize_t row_end) noexcept nogil:
    """The rows [row_begin, row_end) of grad_in, zeroed, then each window's share added at its taps
    inside them, windows in output order: any dilation, one window at a time."""
    cdef Py_ssize_t width = g.width, oh, ow, i, j, h, w0
    cdef floating share
    memset(grad_in + row_begin * width, 0, (row_end - row_begin) * width * sizeof(floating))
    for oh in range(g.out_h):
        for i in range(g.row_lo[oh], g.row_hi[oh]):
            h = oh * g.stride_h - g.pad_h + i * g.dilation_h
            if h < row_begin or h >= row_end:
                continue
            for ow in range(g.out_w):
                share = grad_out[oh * g.out_w + ow] / <floating> (row_div[oh] * col_div[ow])
                w0 = ow * g.stride_w - g.pad_w
                for j in range(g.col_lo[ow], g.col_hi[ow]):
                    grad_in[h * width + w0 + j * g.dilation_w] += share


def avg_pool2d_backward(const floating[:, :, :, ::1] grad_out, floating[:, :, :, ::1] grad_in,
                        Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t stride_h, Py_ssize_t stride_w,
                        Py_ssize_t pad_h, Py_ssize_t pad_w, Py_ssize_t pad_bottom, Py_ssize_t pad_right,
                        Py_ssize_t dilation_h, Py_ssize_t dilation_w, bint count_include_pad,
                        Py_ssize_t divisor_override, Py_ssize_t row_begin, Py_ssize_t row_end, int n_threads):
    """grad_in[n, c, oh*sh - ph + i*dh, ow*sw - pw + j*dw] += grad_out[n, c, oh, ow] / divisor(oh, ow) over
    the taps inside the input, for the input rows [row_begin, row_end) of grad_in only (each gathers from
    the windows over it, so a band's rows are what the whole plane's would be); those are overwritten."""
    cdef Py_ssize_t n_planes = grad_in.shape[0] * grad_in.shape[1]
    cdef Py_ssize_t width = grad_in.shape[3], plane_size = grad_in.shape[2] * width
    cdef Py_ssize_t out_h = grad_out.shape[2], out_w = grad_out.shape[3], out_size = out_h * out_w
    cdef int64_t[::1] ranges = np.empty(2 * (out_h + out_w), dtype=np.int64)
    cdef PoolGeometry g = _pool_geometry(grad_in.shape[2], width, out_h, out_w, kernel_h, kernel_w,
                                         stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, ranges)
    cdef bint dilated = dilation_h > 1 or dilation_w > 1
    # The band's share of a plane: its rows and the rows of grad_out over them.
    cdef Py_ssize_t first_window = max(0, (row_begin + pad_h - (kernel_h - 1) * dilation_h - 1 + stride_h) // stride_h)
    cdef Py_ssize_t windows = min(out_h, (row_end - 1 + pad_h) // stride_h + 1) - first_window
    cdef int team = _team_size(n_threads, n_planes, (row_end - row_begin) * width + max(windows, 0) * out_w)
    # One row of shares per thread, each on its own cache lines.
    cdef Py_ssize_t slot = convx_avg_backward_scratch(&g)
    cdef floating[::1] shares = np.empty(team * slot, dtype=np.asarray(grad_in).dtype)
    # Windows as wide as their stride tile the row: each element takes one share per window row.
    cdef bint tiled = kernel_w == stride_w and not dilated
    # divisor(oh, ow) = divisors[oh] * divisors[out_h + ow]
    cdef int64_t[::1] divisors = np.empty(out_h + out_w, dtype=np.int64)
    cdef int64_t[::1] columns = np.empty(2 * width, dtype=np.int64)
    cdef Py_ssize_t p, tid
    _avg_divisors(&g, pad_bottom, pad_right, count_include_pad, divisor_override, &divisors[0])
    convx_avg_column_windows(&g, &columns[0], &columns[width])
    with nogil, parallel(num_threads=team):
        tid = threadid()
        for p in prange(n_planes, schedule='static'):
            if dilated:
                _avg_backward_dilated_plane(&grad_out[0, 0, 0, 0] + p * out_size,
                                            &grad_in[0, 0, 0, 0] + p * plane_size, &g, &divisors[0],
                                            &divisors[out_h], row_begin, row_end)
            elif tiled:
                _avg_backward_tiled(&grad_out[0, 0, 0, 0] + p * out_size, &grad_in[0, 0, 0, 0] + p * plane_size,
                                    &shares[tid * slot], &g, &divisors[0], &divisors[out_h], row_begin, row_end)
            elif floating is float:
                convx_avg_gather_plane_f(&grad_out[0, 0, 0, 0] + p * out_size, &grad_in[0, 0, 0, 0] + p * plane_size,
                                         &shares[tid * slot], &g, &divisors[0], &divisors[out_h], &columns[0],
                                         &columns[width], row_begin, row_end)
            else:
                convx_avg_gather_plane_d(&grad_out[0, 0, 0, 0] + p * out_size, &grad_in[0, 0, 0, 0] + p * plane_size,
                                         &shares[tid * slot], &g, &divisors[0], &divisors[out_h], &columns[0],
                                         &columns[width], row_begin, row_end)


# ---------------------------------------------------------------------------------------------
# Adaptive pooling: output o of an axis of in_size inputs and out_size outputs covers
# [floor(o * in_size / out_size), ceil((o + 1) * in_size / out_size)) (convx._shapes.adaptive_window),
# walked output by output without divisions and without arrays of windows (memory that would grow
# with output_size): o * in_size is kept as q * out_size + r, and each step adds in_size as
# (in_size // out_size, in_size % out_size), one carry at most. Nothing overflows: q <= in_size
# and r < out_size.

cdef struct AdaptiveWalk:
    Py_ssize_t start, end  # the current output's window
    Py_ssize_t q, r        # the next output's (o + 1) * in_size = q * out_size + r
    Py_ssize_t whole, part, out_size


cdef inline void _adaptive_next(AdaptiveWalk* walk) noexcept nogil:
    """Move to the next output's window."""
    walk.start = walk.q
    walk.q += walk.whole
    walk.r += walk.part
    if walk.r >= walk.out_size:
        walk.r -= walk.out_size
        walk.q += 1
    walk.end = walk.q + (1 if walk.r != 0 else 0)


cdef inline AdaptiveWalk _adaptive_walk(Py_ssize_t in_size, Py_ssize_t out_size) noexcept nogil:
    """A walk positioned at output 0."""
    cdef AdaptiveWalk walk
    walk.whole = in_size // out_size
    walk.part = in_size - walk.whole * out_size
    walk.out_size = out_size
    walk.q = 0
    walk.r = 0
    _adaptive_next(&walk)
    return walk


cdef enum:
    # Output columns whose windows are laid out at once (on the stack) for the plane loops, so
    # that the inner loops read them rather than carry the walk.
    ADAPTIVE_COLUMNS = 256


cdef inline Py_ssize_t _adaptive_columns(AdaptiveWalk* cols, Py_ssize_t ow0, Py_ssize_t out_w,
                                         int64_t* start, int64_t* end) noexcept nogil:
    """start, end = the windows of output columns [ow0, ow0 + n), walked on from ``cols``; returns n."""
    cdef Py_ssize_t n = min(<Py_ssize_t> ADAPTIVE_COLUMNS, out_w - ow0), k
    for k in range(n):
        start[k] = cols.start
        end[k] = cols.end
        _adaptive_next(cols)
    return n


cdef void _adaptive_avg_plane(const floating* src, Py_ssize_t height, Py_ssize_t width, floating* dst,
                              Py_ssize_t out_h, Py_ssize_t out_w) noexcept nogil:
    cdef AdaptiveWalk rows, cols = _adaptive_walk(width, out_w)
    cdef int64_t start[ADAPTIVE_COLUMNS]
    cdef int64_t end[ADAPTIVE_COLUMNS]
    cdef Py_ssize_t oh, ow0, k, n, h, w, h0, h1
    cdef floating total
    ow0 = 0
    while ow0 < out_w:
        n = _adaptive_columns(&cols, ow0, out_w, start, end)
        rows = _adaptive_walk(height, out_h)
        for oh in range(out_h):
            h0 = rows.start
            h1 = rows.end
            for k in range(n):
                total = 0
                for h in range(h0, h1):
                    for w in range(start[k], end[k]):
                        total = total + src[h * width + w]
                # Two divisions, in PyTorch's order, so float32 results agree bit for bit.
                dst[oh * out_w + ow0 + k] = total / <floating> (h1 - h0) / <floating> (end[k] - start[k])
            _adaptive_next(&rows)
        ow0 += n


def adaptive_avg_pool2d_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out, int n_threads):
    """out[n, c, oh, ow] = sum_{h, w in window(oh, ow)} x[n, c, h, w] / window_h / window_w."""
    cdef Py_ssize_t n_planes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t height = x.shape[2], width = x.shape[3], plane_size = height * width
    cdef Py_ssize_t out_h = out.shape[2], out_w = out.shape[3], out_size = out_h * out_w
    cdef Py_ssize_t p
    with nogil:
        for p in prange(n_planes, schedule='static', num_threads=_team_size(n_threads, n_planes, plane_size + out_size)):
            _adaptive_avg_plane(&x[0, 0, 0, 0] + p * plane_size, height, width, &out[0, 0, 0, 0] + p * out_size,
                                out_h, out_w)


cdef void _adaptive_avg_backward_plane(const floating* src, floating* dst, Py_ssize_t height, Py_ssize_t width,
                                       Py_ssize_t out_h, Py_ssize_t out_w) noexcept nogil:
    cdef AdaptiveWalk rows = _adaptive_walk(height, out_h), cols
    cdef int64_t start[ADAPTIVE_COLUMNS]
    cdef int64_t end[ADAPTIVE_COLUMNS]
    cdef Py_ssize_t oh, ow0, k, n, h, w, h0, h1
    cdef floating share
    memset(dst, 0, height * width * sizeof(floating))
    # Output rows outside, column chunks inside: each element takes its shares in output order.
    for oh in range(out_h):
        h0 = rows.start
        h1 = rows.end
        cols = _adaptive_walk(width, out_w)
        ow0 = 0
        while ow0 < out_w:
            n = _adaptive_columns(&cols, ow0, out_w, start, end)
            for k in range(n):
                share = src[oh * out_w + ow0 + k] / <floating> (h1 - h0) / <floating> (end[k] - start[k])
                for h in range(h0, h1):
                    for w in range(start[k], end[k]):
                        dst[h * width + w] += share
            ow0 += n
        _adaptive_next(&rows)


def adaptive_avg_pool2d_backward(const floating[:, :, :, ::1] grad_out, floating[:, :, :, ::1] grad_in, int n_threads):
    """grad_in[n, c, h, w] = sum_{(oh, ow) whose window holds (h, w)} grad_out[n, c, oh, ow] / window_h / window_w."""
    cdef Py_ssize_t n_planes = grad_in.shape[0] * grad_in.shape[1]
    cdef Py_ssize_t height = grad_in.shape[2], width = grad_in.shape[3], plane_size = height * width
    cdef Py_ssize_t out_h = grad_out.shape[2], out_w = grad_out.shape[3], out_size = out_h * out_w
    cdef Py_ssize_t p
    with nogil:
        for p in prange(n_planes, schedule='static', num_threads=_team_size(n_threads, n_planes, plane_size + out_size)):
            _adaptive_avg_backward_plane(&grad_out[0, 0, 0, 0] + p * out_size, &grad_in[0, 0, 0, 0] + p * plane_size,
                                         height, width, out_h, out_w)


cdef void _adaptive_max_plane(const max_pooled* plane, Py_ssize_t height, Py_ssize_t width, max_pooled* out,
                              int64_t* indices, Py_ssize_t out_h, Py_ssize_t out_w) noexcept nogil:
    """out[oh, ow] = max over window (oh, ow), indices[oh, ow] = its flat index (indices may be NULL)."""
    cdef AdaptiveWalk rows, cols = _adaptive_walk(width, out_w)
    cdef int64_t start[ADAPTIVE_COLUMNS]
    cdef int64_t end[ADAPTIVE_COLUMNS]
    cdef Py_ssize_t oh, ow0, k, n, o
    cdef int64_t unused
    ow0 = 0
    while ow0 < out_w:
        n = _adaptive_columns(&cols, ow0, out_w, start, end)
        rows = _adaptive_walk(height, out_h)
        for oh in range(out_h):
            for k in range(n):
                o = oh * out_w + ow0 + k
                # An adaptive window is a unit-dilation window starting at its first row and column.
                _max_window(plane, width, rows.start, 0, rows.end - rows.start, 1, start[k], 0, end[k] - start[k], 1,
                            &out[o], &indices[o] if indices != NULL else &unused)
            _adaptive_next(&rows)
        ow0 += n


def adaptive_max_pool2d_forward(const max_pooled[:, :, :, ::1] x, max_pooled[:, :, :, ::1] out,
                                int64_t[:, :, :, ::1] indices, int n_threads):
    """out[n, c, oh, ow] = max_{h, w in window(oh, ow)} x[n, c, h, w] (NaN wins), indices = its flat h*W + w;
    a zero-batch ``indices`` skips them."""
    cdef Py_ssize_t n_planes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t height = x.shape[2], width = x.shape[3], plane_size = height * width
    cdef Py_ssize_t out_h = out.shape[2], out_w = out.shape[3], out_size = out_h * out_w
    cdef bint want_indices = indices.shape[0] > 0
    cdef Py_ssize_t p
    with nogil:
        for p in prange(n_planes, schedule='static', num_threads=_team_size(n_threads, n_planes, plane_size + out_size)):
            _adaptive_max_plane(&x[0, 0, 0, 0] + p * plane_size, height, width, &out[0, 0, 0, 0] + p * out_size,
                                &indices[0, 0, 0, 0] + p * out_size if want_indices else NULL, out_h, out_w)
