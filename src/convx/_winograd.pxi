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
    # The weight gradient over several chunks sums them in this many lanes (chunk i in lane
    # i % WINO_LANES, each lane in chunk order, then the lanes in order: the same sums whatever
    # the team), if their partial sums take at most WINO_LANE_BUDGET elements.
    WINO_LANES = 4
    WINO_LANE_BUDGET = 1 << 23
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
    Py_ssize_t n_chunks
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
    if n_chunks > 1:
        # An even count, for two threads (the common team) to share them out evenly.
        n_chunks = min(g.n_rows, n_chunks + n_chunks % 2)
    g.chunk_rows = (g.n_rows + n_chunks - 1) // n_chunks
    g.n_chunks = (g.n_rows + g.chunk_rows - 1) // g.chunk_rows
    g.run_rows = min(g.chunk_rows, (WINO_RUN + g.tiles_w - 1) // g.tiles_w)
    g.scratch = convx_wino_scratch(g.tiles_w, g.run_rows, max(c_in, c_out))
    return g


cdef inline Py_ssize_t _point_stride(Py_ssize_t plane) noexcept nogil:
    """Elements from one point's plane (of ``plane`` elements) to the next."""
    return plane + WINO_PAD


cdef tuple _wino_workspace(WinoGeometry* g, dtype, Py_ssize_t copies):
    """The transformed weight (or its gradient), and V and M of one chunk (``copies`` of each,
    one per thread when the threads take whole chunks): one allocation, the three an odd
    number of cache lines apart, so that no two of them stream through the same cache sets
    at the same offsets."""
    cdef Py_ssize_t sizes[3]
    sizes[0] = WINO_POINTS * _point_stride(g.c_out * g.c_in)
    sizes[1] = copies * _wino_chunk_size(g, g.c_in)
    sizes[2] = copies * _wino_chunk_size(g, g.c_out)
    work = np.empty(sizes[0] + sizes[1] + sizes[2] + 4 * WINO_PAD, dtype=dtype)
    first = sizes[0] + WINO_PAD
    second = first + sizes[1] + 3 * WINO_PAD
    return work[:sizes[0]], work[first:first + sizes[1]], work[second:second + sizes[2]]


cdef inline Py_ssize_t _wino_chunk_size(WinoGeometry* g, Py_ssize_t channels) noexcept nogil:
    """Elements of one chunk's transformed planes of ``channels`` channels (V or M)."""
    return WINO_POINTS * _point_stride(channels * g.chunk_rows * g.tiles_w)


cdef inline Py_ssize_t _wino_runs(WinoGeometry* g, Py_ssize_t q0, Py_ssize_t q1) noexcept nogil:
    return (q1 - q0 + g.run_rows - 1) // g.run_rows


cdef inline void _wino_input_run(const floating* x, WinoGeometry* g, Py_ssize_t c, Py_ssize_t q0, Py_ssize_t q1,
                                 Py_ssize_t q, floating* v, floating* scratch) noexcept nogil:
    """V for channel c and the run of tile rows from q (within chunk [q0, q1))."""
    cdef Py_ssize_t n_tiles = (q1 - q0) * g.tiles_w
    cdef Py_ssize_t plane = g.height * g.width
    if floating is float:
        convx_wino_input_f(x + c * plane, g.c_in * plane, g.height, g.width, g.pad_h, g.pad_w, g.tiles_h, g.tiles_w,
                           q, min(g.run_rows, q1 - q), v + c * n_tiles + (q - q0) * g.tiles_w,
                           _point_stride(g.c_in * n_tiles), scratch)
    else:
        convx_wino_input_d(x + c * plane, g.c_in * plane, g.height, g.width, g.pad_h, g.pad_w, g.tiles_h, g.tiles_w,
                           q, min(g.run_rows, q1 - q), v + c * n_tiles + (q - q0) * g.tiles_w,
                           _point_stride(g.c_in * n_tiles), scratch)


cdef inline int _wino_output_run(const floating* m, floating bias, floating* out, WinoGeometry* g, Py_ssize_t k,
                                 Py_ssize_t q0, Py_ssize_t q1, Py_ssize_t q, floating* scratch) noexcept nogil:
    """The outputs of channel k for the run of tile rows from q; whether one is not finite."""
    cdef Py_ssize_t n_tiles = (q1 - q0) * g.tiles_w
    cdef Py_ssize_t plane = g.out_h * g.out_w
    if floating is float:
        return convx_wino_output_f(m + k * n_tiles + (q - q0) * g.tiles_w, _point_stride(g.c_out * n_tiles), bias,
                                   out + k * plane, g.c_out * plane, g.out_h, g.out_w, g.tiles_h, g.tiles_w, q,
                                   min(g.run_rows, q1 - q), scratch)
    else:
        return convx_wino_output_d(m + k * n_tiles + (q - q0) * g.tiles_w, _point_stride(g.c_out * n_tiles), bias,
                                   out + k * plane, g.c_out * plane, g.out_h, g.out_w, g.tiles_h, g.tiles_w, q,
                                   min(g.run_rows, q1 - q), scratch)


cdef inline void _wino_grad_run(const floating* grad_out, WinoGeometry* g, Py_ssize_t k, Py_ssize_t q0,
                                Py_ssize_t q1, Py_ssize_t q, floating* m, floating* scratch) noexcept nogil:
    """A dY A^T for channel k of grad_out and the run of tile rows from q."""
    cdef Py_ssize_t n_tiles = (q1 - q0) * g.tiles_w
    cdef Py_ssize_t plane = g.out_h * g.out_w
    if floating is float:
        convx_wino_grad_out_f(grad_out + k * plane, g.c_out * plane, g.out_h, g.out_w, g.tiles_h, g.tiles_w, q,
                              min(g.run_rows, q1 - q), m + k * n_tiles + (q - q0) * g.tiles_w,
                              _point_stride(g.c_out * n_tiles), scratch)
    else:
        convx_wino_grad_out_d(grad_out + k * plane, g.c_out * plane, g.out_h, g.out_w, g.tiles_h, g.tiles_w, q,
                              min(g.run_rows, q1 - q), m + k * n_tiles + (q - q0) * g.tiles_w,
                              _point_stride(g.c_out * n_tiles), scratch)


cdef inline void _wino_product(const floating* a, const floating* b, floating* c, bint trans_b, Py_ssize_t m,
                               Py_ssize_t n, Py_ssize_t k, floating beta, Py_ssize_t p) noexcept nogil:
    """C[p] := A[p] @ op(B[p]) + beta * C[p] for point p; A[p] is (m, k), C[p] (m, n), each point's
    plane _point_stride(its size) after the previous one's."""
    if trans_b:
        _gemm(False, True, m, n, k, 1, a + p * _point_stride(m * k), k, b + p * _point_stride(n * k), k, beta,
              c + p * _point_stride(m * n), n)
    else:
        _gemm(False, False, m, n, k, 1, a + p * _point_stride(m * k), k, b + p * _point_stride(n * k), n, beta,
              c + p * _point_stride(m * n), n)


cdef void _wino_products(const floating* a, const floating* b, floating* c, bint trans_b, Py_ssize_t m,
                         Py_ssize_t n, Py_ssize_t k, floating beta, int n_threads) noexcept nogil:
    """_wino_product for the 36 points, split across the team."""
    cdef Py_ssize_t p
    for p in prange(WINO_POINTS, schedule='static', num_threads=_team(n_threads, WINO_POINTS)):
        _wino_product(a, b, c, trans_b, m, n, k, beta, p)


cdef int _wino_forward_chunk(const floating* x, const floating* u, const floating* bias, floating* out,
                             WinoGeometry* g, Py_ssize_t q0, Py_ssize_t q1, floating* v, floating* m,
                             floating* scratch) noexcept nogil:
    """One chunk of the forward pass on the calling thread alone (bias NULL: none); whether an
    output is not finite."""
    cdef Py_ssize_t n_tiles = (q1 - q0) * g.tiles_w
    cdef Py_ssize_t n_runs = _wino_runs(g, q0, q1)
    cdef Py_ssize_t c, k, r, p
    cdef int bad = 0
    for c in range(g.c_in):
        for r in range(n_runs):
            _wino_input_run(x, g, c, q0, q1, q0 + r * g.run_rows, v, scratch)
    for p in range(WINO_POINTS):
        _wino_product(u, v, m, False, g.c_out, n_tiles, g.c_in, 0, p)
    for k in range(g.c_out):
        for r in range(n_runs):
            bad |= _wino_output_run(m, bias[k] if bias != NULL else 0, out, g, k, q0, q1, q0 + r * g.run_rows,
                                    scratch)
    return bad


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

    With several chunks, each thread takes whole chunks through all three phases on its own
    (no barrier between them: a barrier whose threads went to sleep costs a wake-up, which on
    a busy machine can take longer than a phase); a batch of one chunk splits each phase.
    """
    cdef Py_ssize_t c_out = out.shape[1], c_in = x.shape[1]
    cdef WinoGeometry g = _wino_geometry(x.shape[0], c_in, x.shape[2], x.shape[3], c_out, out.shape[2],
                                         out.shape[3], pad_h, pad_w)
    cdef int team = _team(n_threads, g.n_chunks)
    cdef bint own_chunks = g.n_chunks > 1
    cdef Py_ssize_t v_size = _wino_chunk_size(&g, c_in), m_size = _wino_chunk_size(&g, c_out)
    cdef Py_ssize_t q0, q1, n_tiles, n_runs, job, k, chunk, tid
    cdef bint has_bias = bias.shape[0] > 0
    cdef const floating* bias_ptr = &bias[0] if has_bias else NULL
    cdef int bad = 0
    dtype = np.asarray(out).dtype
    cdef floating[::1] u, v, m
    u, v, m = _wino_workspace(&g, dtype, team if own_chunks else 1)
    cdef floating[::1] scratch = np.empty(max(1, n_threads) * g.scratch, dtype=dtype)
    cdef int[::1] bad_parts = np.zeros(team, dtype=np.intc)
    with _blas_limit(True):
        with nogil:
            _wino_weight(&weight[0, 0, 0, 0], c_out, c_in, flip, &u[0], &scratch[0], g.scratch, n_threads)
            if own_chunks:
                with parallel(num_threads=team):
                    tid = threadid()
                    for chunk in prange(g.n_chunks, schedule='static'):
                        bad_parts[tid] |= _wino_forward_chunk(
                            &x[0, 0, 0, 0], &u[0], bias_ptr, &out[0, 0, 0, 0], &g, chunk * g.chunk_rows,
                            min((chunk + 1) * g.chunk_rows, g.n_rows), &v[0] + tid * v_size, &m[0] + tid * m_size,
                            &scratch[0] + tid * g.scratch)
                for tid in range(team):
                    bad |= bad_parts[tid]
            else:
                q0, q1 = 0, g.n_rows
                n_tiles = q1 * g.tiles_w
                n_runs = _wino_runs(&g, q0, q1)
                for job in prange(n_runs * c_in, schedule='static', num_threads=_team(n_threads, n_runs * c_in)):
                    _wino_input_run(&x[0, 0, 0, 0], &g, job // n_runs, q0, q1, (job % n_runs) * g.run_rows, &v[0],
                                    &scratch[0] + threadid() * g.scratch)
                _wino_products(&u[0], &v[0], &m[0], False, c_out, n_tiles, c_in, 0, n_threads)
                for job in prange(n_runs * c_out, schedule='static', num_threads=_team(n_threads, n_runs * c_out)):
                    k = job // n_runs
                    bad += _wino_output_run(&m[0], bias[k] if has_bias else 0, &out[0, 0, 0, 0], &g, k, q0, q1,
                                            (job % n_runs) * g.run_rows, &scratch[0] + threadid() * g.scratch)
    return bad != 0


cdef void _wino_weight_grad_chunk(const floating* grad_out, const floating* x, WinoGeometry* g, Py_ssize_t q0,
                                  Py_ssize_t q1, floating* du, floating* v, floating* m,
                                  floating* scratch) noexcept nogil:
    """du[p] += (A dY A^T)[p] @ (B^T d B)[p]^T over one chunk's tiles, on the calling thread alone."""
    cdef Py_ssize_t n_tiles = (q1 - q0) * g.tiles_w
    cdef Py_ssize_t n_runs = _wino_runs(g, q0, q1)
    cdef Py_ssize_t c, k, r, p
    for c in range(g.c_in):
        for r in range(n_runs):
            _wino_input_run(x, g, c, q0, q1, q0 + r * g.run_rows, v, scratch)
    for k in range(g.c_out):
        for r in range(n_runs):
            _wino_grad_run(grad_out, g, k, q0, q1, q0 + r * g.run_rows, m, scratch)
    for p in range(WINO_POINTS):
        _wino_product(m, v, du, True, g.c_out, g.c_in, n_tiles, 1, p)


def winograd_backward_weight(const floating[:, :, :, ::1] grad_out, const floating[:, :, :, ::1] x,
                             floating[:, :, :, ::1] grad_weight, int pad_h, int pad_w, int n_threads):
    """grad_weight[k, c] = sum_n corr(x_pad[n, c], grad_out[n, k]) (3x3, overwritten), by
    Winograd: G^T [sum over tiles of (A dY A^T) * (B^T d B)] G, the sum a GEMM per point.

    With several chunks, threads take whole lanes of chunks (see WINO_LANES) with no barrier
    between their phases; a batch of one chunk splits both transforms across the team, then
    the 36 products by point."""
    cdef Py_ssize_t c_out = grad_weight.shape[0], c_in = grad_weight.shape[1]
    cdef WinoGeometry g = _wino_geometry(x.shape[0], c_in, x.shape[2], x.shape[3], c_out, grad_out.shape[2],
                                         grad_out.shape[3], pad_h, pad_w)
    cdef Py_ssize_t du_size = WINO_POINTS * _point_stride(c_out * c_in)
    cdef Py_ssize_t lanes = min(<Py_ssize_t> WINO_LANES, g.n_chunks)
    cdef bint own_chunks = g.n_chunks > 1 and lanes * du_size <= WINO_LANE_BUDGET
    cdef int team = _team(n_threads, lanes if own_chunks else 1)
    cdef Py_ssize_t v_size = _wino_chunk_size(&g, c_in), m_size = _wino_chunk_size(&g, c_out)
    cdef Py_ssize_t q0, q1, n_tiles, n_runs, job, k, lane, chunk, tid, i
    dtype = np.asarray(grad_weight).dtype
    cdef floating[::1] du, v, m, lane_sums
    du, v, m = _wino_workspace(&g, dtype, team if own_chunks else 1)
    lane_sums = np.zeros(lanes * du_size if own_chunks else 1, dtype=dtype)
    cdef floating[::1] scratch = np.empty(max(1, n_threads) * g.scratch, dtype=dtype)
    with _blas_limit(True):
        with nogil:
            memset(&du[0], 0, du.shape[0] * sizeof(floating))
            if own_chunks:
                with parallel(num_threads=team):
                    tid = threadid()
                    for lane in prange(lanes, schedule='static'):
                        chunk = lane
                        while chunk < g.n_chunks:
                            _wino_weight_grad_chunk(&grad_out[0, 0, 0, 0], &x[0, 0, 0, 0], &g, chunk * g.chunk_rows,
                                                    min((chunk + 1) * g.chunk_rows, g.n_rows),
                                                    &lane_sums[0] + lane * du_size, &v[0] + tid * v_size,
                                                    &m[0] + tid * m_size, &scratch[0] + tid * g.scratch)
                            chunk = chunk + lanes
                for i in prange(du_size, schedule='static', num_threads=n_threads):
                    for lane in range(lanes):
                        du[i] = du[i] + lane_sums[lane * du_size + i]
            else:
                q0 = 0
                while q0 < g.n_rows:
                    q1 = min(q0 + g.chunk_rows, g.n_rows)
                    n_tiles = (q1 - q0) * g.tiles_w
                    n_runs = _wino_runs(&g, q0, q1)
                    for job in prange(n_runs * (c_in + c_out), schedule='static',
                                      num_threads=_team(n_threads, n_runs * (c_in + c_out))):
                        if job < n_runs * c_in:
                            _wino_input_run(&x[0, 0, 0, 0], &g, job // n_runs, q0, q1, q0 + (job % n_runs) * g.run_rows,
                                            &v[0], &scratch[0] + threadid() * g.scratch)
                        else:
                            _wino_grad_run(&grad_out[0, 0, 0, 0], &g, job // n_runs - c_in, q0, q1,
                                           q0 + (job % n_runs) * g.run_rows, &m[0], &scratch[0] + threadid() * g.scratch)
                    _wino_products(&m[0], &v[0], &du[0], True, c_out, c_in, n_tiles, 1, n_threads)
                    q0 = q1
            for k in prange(c_out, schedule='static', num_threads=_team(n_threads, c_out)):
                if floating is float:
                    convx_wino_weight_grad_row_f(&du[0] + k * c_in, _point_stride(c_out * c_in), c_in,
                                                 &grad_weight[k, 0, 0, 0], &scratch[0] + threadid() * g.scratch)
                else:
                    convx_wino_weight_grad_row_d(&du[0] + k * c_in, _point_stride(c_out * c_in), c_in,
                                                 &grad_weight[k, 0, 0, 0], &scratch[0] + threadid() * g.scratch)

