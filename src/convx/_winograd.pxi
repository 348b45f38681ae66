# Winograd F(4x4, 3x3) convolution for 3x3 kernels, stride 1, dilation 1, one group (opt-in:
# algorithm="winograd"). The transforms are in _winograd.h; here they are driven chunk by
# chunk over the batch's tile rows (a tile row: the tiles_w tiles covering four output rows
# of one image), with three phases per chunk, each split across the team. A transform takes
# a run of consecutive tile rows (across images) at once, so that its vectors are long.
#   1. V[p, c, t] = (B^T d B)[p] for every input channel c and tile t of the chunk;
#   2. M[p] = U[p] @ V[p] for each of the 36 points p (one BLAS GEMM each, K x C times C x T);
#   3. the outputs A^T M A, tile row by tile row.
# The workspace is the transformed weight (36 K C) and one chunk's V and M, whatever the batch.

cdef extern from "_winograd.h" nogil:
    Py_ssize_t convx_wino_scratch(Py_ssize_t tiles_w, Py_ssize_t run_rows, Py_ssize_t n_cols)
    void convx_wino_weight_row_f(const float* w, Py_ssize_t col_stride, int flip, Py_ssize_t n_cols, float* u,
                                 Py_ssize_t point_stride, float* scratch)
    void convx_wino_weight_row_d(const double* w, Py_ssize_t col_stride, int flip, Py_ssize_t n_cols, double* u,
                                 Py_ssize_t point_stride, double* scratch)
    void convx_wino_weight_grad_row_f(const float* du, Py_ssize_t point_stride, Py_ssize_t n_cols, float* dw,
                                      float* scratch)
    void convx_wino_weight_grad_row_d(const double* du, Py_ssize_t point_stride, Py_ssize_t n_cols, double* dw,
                                      double* scratch)
    void convx_wino_input_f(const float* x, Py_ssize_t image_stride, Py_ssize_t height, Py_ssize_t width,
                            Py_ssize_t pad_h, Py_ssize_t pad_w, Py_ssize_t tiles_h, Py_ssize_t tiles_w,
                            Py_ssize_t q_first, Py_ssize_t n_rows, float* v, Py_ssize_t point_stride, float* scratch)
    void convx_wino_input_d(const double* x, Py_ssize_t image_stride, Py_ssize_t height, Py_ssize_t width,
                            Py_ssize_t pad_h, Py_ssize_t pad_w, Py_ssize_t tiles_h, Py_ssize_t tiles_w,
                            Py_ssize_t q_first, Py_ssize_t n_rows, double* v, Py_ssize_t point_stride,
                            double* scratch)
    void convx_wino_grad_out_f(const float* grad_out, Py_ssize_t image_stride, Py_ssize_t out_h, Py_ssize_t out_w,
                               Py_ssize_t tiles_h, Py_ssize_t tiles_w, Py_ssize_t q_first, Py_ssize_t n_rows,
                               float* v, Py_ssize_t point_stride, float* scratch)
    void convx_wino_grad_out_d(const double* grad_out, Py_ssize_t image_stride, Py_ssize_t out_h, Py_ssize_t out_w,
                               Py_ssize_t tiles_h, Py_ssize_t tiles_w, Py_ssize_t q_first, Py_ssize_t n_rows,
                               double* v, Py_ssize_t point_stride, double* scratch)
    int convx_wino_output_f(const float* m, Py_ssize_t point_stride, float bias, float* out, Py_ssize_t image_stride,
                            Py_ssize_t out_h, Py_ssize_t out_w, Py_ssize_t tiles_h, Py_ssize_t tiles_w,
                            Py_ssize_t q_first, Py_ssize_t n_rows, float* scratch)
    int convx_wino_output_d(const double* m, Py_ssize_t point_stride, double bias, double* out,
                            Py_ssize_t image_stride, Py_ssize_t out_h, Py_ssize_t out_w, Py_ssize_t tiles_h,
                            Py_ssize_t tiles_w, Py_ssize_t q_first, Py_ssize_t n_rows, double* scratch)


cdef enum:
    WINO_POINTS = 36
    # Elements of one chunk's V and M together: within the caches, unless that would leave
    # fewer than WINO_MIN_TILES tiles per chunk (too thin a GEMM for BLAS to run well).
    WINO_BUDGET = 1 << 20
    WINO_MIN_TILES = 128
    # Tiles per transform call (rounded up to whole tile rows): vectors this long vectorise fully.
    WINO_RUN = 128
    # Elements between consecutive points' planes beyond their size: planes a multiple of 4 KiB
    # apart would put the 36 streams of a transform in the same cache sets.
    WINO_PAD = 16


cdef struct WinoGeometry:
    Py_ssize_t batch, c_in, c_out      # the correlation computed: C_in planes in, C_out out
    Py_ssize_t height, width, out_h, out_w
    Py_ssize_t pad_h, pad_w            # top/left offset of the patches (negative: a crop)
    Py_ssize_t tiles_h, tiles_w
    Py_ssize_t n_rows                  # tile rows of the batch
    Py_ssize_t chunk_rows              # tile rows per chunk
    Py_ssize_t run_rows                # tile rows per transform call
    Py_ssize_t scratch                 # elements of one thread's transform scratch


cdef WinoGeometry _wino_geometry(Py_ssize_t batch, Py_ssize_t c_in, Py_ssize_t height, Py_ssize_t width,
                                 Py_ssize_t c_out, Py_ssize_t out_h, Py_ssize_t out_w, int pad_h, int pad_w) noexcept:
    cdef WinoGeometry g
    cdef Py_ssize_t most, n_chunks
    g.batch = batch
    g.c_in = c_in
    g.c_out = c_out
    g.height = height
    g.width = width
    g.out_h = out_h
    g.out_w = out_w
    g.pad_h = pad_h
    g.pad_w = pad_w
    g.tiles_h = (out_h + 3) // 4
    g.tiles_w = (out_w + 3) // 4
    g.n_rows = batch * g.tiles_h
    # Chunks of near-equal size within the budget.
    most = max(WINO_BUDGET // (WINO_POINTS * (c_in + c_out)), WINO_MIN_TILES) // g.tiles_w
    most = max(1, most)
    n_chunks = (g.n_rows + most - 1) // most
    g.chunk_rows = (g.n_rows + n_chunks - 1) // n_chunks
    g.run_rows = min(g.chunk_rows, (WINO_RUN + g.tiles_w - 1) // g.tiles_w)
    g.scratch = convx_wino_scratch(g.tiles_w, g.run_rows, max(c_in, c_out))
    return g


cdef inline Py_ssize_t _point_stride(Py_ssize_t plane) noexcept nogil:
    """Elements from one point's plane (of ``plane`` elements) to the next."""
    return plane + WINO_PAD


cdef tuple _wino_workspace(WinoGeometry* g, dtype):
    """The transformed weight (or its gradient), V and M of one chunk: one allocation, the three
    an odd number of cache lines apart, so that no two of them stream through the same
    cache sets at the same offsets."""
    cdef Py_ssize_t sizes[3]
    sizes[0] = WINO_POINTS * _point_stride(g.c_out * g.c_in)
    sizes[1] = WINO_POINTS * _point_stride(g.c_in * g.chunk_rows * g.tiles_w)
    sizes[2] = WINO_POINTS * _point_stride(g.c_out * g.chunk_rows * g.tiles_w)
    work = np.empty(sizes[0] + sizes[1] + sizes[2] + 4 * WINO_PAD, dtype=dtype)
    first = sizes[0] + WINO_PAD
    second = first + sizes[1] + 3 * WINO_PAD
    return work[:sizes[0]], work[first:first + sizes[1]], work[second:second + sizes[2]]


cdef inline Py_ssize_t _wino_runs(WinoGeometry* g, Py_ssize_t q0, Py_ssize_t q1) noexcept nogil:
    return (q1 - q0 + g.run_rows - 1) // g.run_rows


cdef void _wino_input_chunk(const floating* x, WinoGeometry* g, Py_ssize_t q0, Py_ssize_t q1, floating* v,
                            floating* scratch, int n_threads) noexcept nogil:
    """v[p, c, s] = (B^T d B)[p] for the tiles s of tile rows [q0, q1) and every input channel c."""
    cdef Py_ssize_t n_tiles = (q1 - q0) * g.tiles_w
    cdef Py_ssize_t plane = g.height * g.width
    cdef Py_ssize_t n_runs = _wino_runs(g, q0, q1)
    cdef Py_ssize_t job, c, q
    for job in prange(n_runs * g.c_in, schedule='static', num_threads=_team(n_threads, n_runs * g.c_in)):
        c = job // n_runs
        q = q0 + (job % n_runs) * g.run_rows
        if floating is float:
            convx_wino_input_f(x + c * plane, g.c_in * plane, g.height, g.width, g.pad_h, g.pad_w, g.tiles_h,
                               g.tiles_w, q, min(g.run_rows, q1 - q), v + c * n_tiles + (q - q0) * g.tiles_w,
                               _point_stride(g.c_in * n_tiles), scratch + threadid() * g.scratch)
        else:
            convx_wino_input_d(x + c * plane, g.c_in * plane, g.height, g.width, g.pad_h, g.pad_w, g.tiles_h,
                               g.tiles_w, q, min(g.run_rows, q1 - q), v + c * n_tiles + (q - q0) * g.tiles_w,
                               _point_stride(g.c_in * n_tiles), scratch + threadid() * g.scratch)


cdef void _wino_products(const floating* a, const floating* b, floating* c, bint trans_b, Py_ssize_t m,
                         Py_ssize_t n, Py_ssize_t k, floating beta, int n_threads) noexcept nogil:
    """C[p] := A[p] @ op(B[p]) + beta * C[p] for the 36 points p; A[p] is (m, k), C[p] (m, n),
    each point's plane _point_stride(its size) after the previous one's."""
    cdef Py_ssize_t p
    cdef Py_ssize_t a_stride = _point_stride(m * k), b_stride = _point_stride(n * k), c_stride = _point_stride(m * n)
    for p in prange(WINO_POINTS, schedule='static', num_threads=_team(n_threads, WINO_POINTS)):
        if trans_b:
            _gemm(False, True, m, n, k, 1, a + p * a_stride, k, b + p * b_stride, k, beta, c + p * c_stride, n)
        else:
            _gemm(False, False, m, n, k, 1, a + p * a_stride, k, b + p * b_stride, n, beta, c + p * c_stride, n)


cdef void _wino_weight(const floating* weight, Py_ssize_t rows, Py_ssize_t cols, bint flip, floating* u,
                       floating* scratch, Py_ssize_t scratch_size, int n_threads) noexcept nogil:
    """u[p, r, q] = (G g G^T)[p] with g = weight[r, q] (flip: rot180(weight[q, r])), weight (., ., 3, 3)."""
    cdef Py_ssize_t r
    for r in prange(rows, schedule='static', num_threads=_team(n_threads, rows)):
        if floating is float:
            convx_wino_weight_row_f(weight + (r * 9 if flip else r * cols * 9), rows * 9 if flip else 9, flip,
                                    cols, u + r * cols, _point_stride(rows * cols), scratch + threadid() * scratch_size)
        else:
            convx_wino_weight_row_d(weight + (r * 9 if flip else r * cols * 9), rows * 9 if flip else 9, flip,
                                    cols, u + r * cols, _point_stride(rows * cols), scratch + threadid() * scratch_size)


def winograd_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] weight,
                     const floating[::1] bias, floating[:, :, :, ::1] out, int pad_h, int pad_w, bint flip,
                     int n_threads):
    """out[n, k] = bias[k] + sum_c corr3x3(x_pad[n, c], g[k, c]), by Winograd F(4x4, 3x3).

    g = weight (C_out, C_in, 3, 3), or with ``flip`` rot180(weight[c, k]) for weight
    (C_in, C_out, 3, 3): the input gradient of a stride-1 convolution, computed with padding
    2 - pad. Returns whether an output is not finite (the caller then recomputes it directly:
    a transform spreads one non-finite input over its whole tile).
    """
    cdef Py_ssize_t c_out = out.shape[1], c_in = x.shape[1]
    cdef WinoGeometry g = _wino_geometry(x.shape[0], c_in, x.shape[2], x.shape[3], c_out, out.shape[2],
                                         out.shape[3], pad_h, pad_w)
    cdef Py_ssize_t plane_out = g.out_h * g.out_w
    cdef Py_ssize_t q0, q1, n_tiles, n_runs, job, q, k
    cdef bint has_bias = bias.shape[0] > 0
    cdef int bad = 0
    dtype = np.asarray(out).dtype
    cdef floating[::1] u, v, m
    u, v, m = _wino_workspace(&g, dtype)
    cdef floating[::1] scratch = np.empty(max(1, n_threads) * g.scratch, dtype=dtype)
    with nogil:
        _wino_weight(&weight[0, 0, 0, 0], c_out, c_in, flip, &u[0], &scratch[0], g.scratch, n_threads)
        q0 = 0
        while q0 < g.n_rows:
            q1 = min(q0 + g.chunk_rows, g.n_rows)
            n_tiles = (q1 - q0) * g.tiles_w
            n_runs = _wino_runs(&g, q0, q1)
            _wino_input_chunk(&x[0, 0, 0, 0], &g, q0, q1, &v[0], &scratch[0], n_threads)
            _wino_products(&u[0], &v[0], &m[0], False, c_out, n_tiles, c_in, 0, n_threads)
            for job in prange(n_runs * c_out, schedule='static', num_threads=_team(n_threads, n_runs * c_out)):
                k = job // n_runs
                q = q0 + (job % n_runs) * g.run_rows
                if floating is float:
                    bad += convx_wino_output_f(&m[0] + k * n_tiles + (q - q0) * g.tiles_w, _point_stride(c_out * n_tiles),
                                               bias[k] if has_bias else 0, &out[0, 0, 0, 0] + k * plane_out,
                                               c_out * plane_out, g.out_h, g.out_w, g.tiles_h, g.tiles_w, q,
                                               min(g.run_rows, q1 - q), &scratch[0] + threadid() * g.scratch)
                else:
                    bad += convx_wino_output_d(&m[0] + k * n_tiles + (q - q0) * g.tiles_w, _point_stride(c_out * n_tiles),
                                               bias[k] if has_bias else 0, &out[0, 0, 0, 0] + k * plane_out,
                                               c_out * plane_out, g.out_h, g.out_w, g.tiles_h, g.tiles_w, q,
                                               min(g.run_rows, q1 - q), &scratch[0] + threadid() * g.scratch)
            q0 = q1
    return bad != 0


def winograd_backward_weight(const floating[:, :, :, ::1] grad_out, const floating[:, :, :, ::1] x,
                             floating[:, :, :, ::1] grad_weight, int pad_h, int pad_w, int n_threads):
    """grad_weight[k, c] = sum_n corr(x_pad[n, c], grad_out[n, k]) (3x3, overwritten), by
    Winograd: G^T [sum over tiles of (A dY A^T) * (B^T d B)] G, the sum a GEMM per point."""
    cdef Py_ssize_t c_out = grad_weight.shape[0], c_in = grad_weight.shape[1]
    cdef WinoGeometry g = _wino_geometry(x.shape[0], c_in, x.shape[2], x.shape[3], c_out, grad_out.shape[2],
                                         grad_out.shape[3], pad_h, pad_w)
    cdef Py_ssize_t plane_out = g.out_h * g.out_w
    cdef Py_ssize_t q0, q1, n_tiles, n_runs, job, q, k
    dtype = np.asarray(grad_weight).dtype
    cdef floating[::1] du, v, m
    du, v, m = _wino_workspace(&g, dtype)
    cdef floating[::1] scratch = np.empty(max(1, n_threads) * g.scratch, dtype=dtype)
    with nogil:
        memset(&du[0], 0, du.shape[0] * sizeof(floating))
        q0 = 0
        while q0 < g.n_rows:
            q1 = min(q0 + g.chunk_rows, g.n_rows)
            n_tiles = (q1 - q0) * g.tiles_w
            n_runs = _wino_runs(&g, q0, q1)
            _wino_input_chunk(&x[0, 0, 0, 0], &g, q0, q1, &v[0], &scratch[0], n_threads)
            for job in prange(n_runs * c_out, schedule='static', num_threads=_team(n_threads, n_runs * c_out)):
                k = job // n_runs
                q = q0 + (job % n_runs) * g.run_rows
                if floating is float:
                    convx_wino_grad_out_f(&grad_out[0, 0, 0, 0] + k * plane_out, c_out * plane_out, g.out_h,
                                          g.out_w, g.tiles_h, g.tiles_w, q, min(g.run_rows, q1 - q),
                                          &m[0] + k * n_tiles + (q - q0) * g.tiles_w, _point_stride(c_out * n_tiles),
                                          &scratch[0] + threadid() * g.scratch)
                else:
                    convx_wino_grad_out_d(&grad_out[0, 0, 0, 0] + k * plane_out, c_out * plane_out, g.out_h,
                                          g.out_w, g.tiles_h, g.tiles_w, q, min(g.run_rows, q1 - q),
                                          &m[0] + k * n_tiles + (q - q0) * g.tiles_w, _point_stride(c_out * n_tiles),
                                          &scratch[0] + threadid() * g.scratch)
            _wino_products(&m[0], &v[0], &du[0], True, c_out, c_in, n_tiles, 1, n_threads)
            q0 = q1
        for k in prange(c_out, schedule='static', num_threads=_team(n_threads, c_out)):
            if floating is float:
                convx_wino_weight_grad_row_f(&du[0] + k * c_in, _point_stride(c_out * c_in), c_in, &grad_weight[k, 0, 0, 0],
                                             &scratch[0] + threadid() * g.scratch)
            else:
                convx_wino_weight_grad_row_d(&du[0] + k * c_in, _point_stride(c_out * c_in), c_in, &grad_weight[k, 0, 0, 0],
                                             &scratch[0] + threadid() * g.scratch)
