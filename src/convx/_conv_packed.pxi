# The packed-GEMM paths: the forward packing column blocks straight from the input
# (_implicit_conv), the input gradient adding W^T tiles into grad_in, the weight gradient
# summing per-thread partials (convx_conv_*_block in _gemm_body.h).

cdef struct WeightProduct:
    # op(W_grp) @ B for each group: op(W) = W (m = c_out_g, k = col_rows) or W^T (m = col_rows,
    # k = c_out_g). With level CONVX_GEMM_BLAS through BLAS from weight, else through
    # convx_gemm from packed (group grp at packed + grp * group_size); a packed W (not W^T) has
    # its columns in the forward's tap-major order, for convx_conv_block only.
    int level
    bint transpose
    Py_ssize_t m, k, group_size
    const void* weight
    void* packed


cdef object _pack_weight(const floating[:, :, :, ::1] weight, int groups, bint transpose, WeightProduct* p):
    """Fill p for op(W) of each group of weight (see WeightProduct); returns the array holding
    the packing, which must outlive every use of p."""
    cdef Py_ssize_t c_out_g = weight.shape[0] // groups, c_in_g = weight.shape[1]
    cdef Py_ssize_t taps = weight.shape[2] * weight.shape[3], col_rows = c_in_g * taps
    cdef Py_ssize_t grp, w_size = c_out_g * col_rows
    cdef floating[::1] packed
    cdef const floating* w = &weight[0, 0, 0, 0] if weight.shape[0] else NULL
    p.level = _level()
    p.transpose = transpose
    p.m = col_rows if transpose else c_out_g
    p.k = c_out_g if transpose else col_rows
    p.weight = w
    p.packed = NULL
    p.group_size = 0
    if p.level == CONVX_GEMM_BLAS or w_size == 0:
        p.level = CONVX_GEMM_BLAS
        return None
    if floating is float:
        p.group_size = convx_gemm_packed_size_f(p.level, p.m, p.k)
    else:
        p.group_size = convx_gemm_packed_size_d(p.level, p.m, p.k)
    packed = np.empty(groups * p.group_size, dtype=np.asarray(weight).dtype)
    with nogil:
        for grp in range(groups):
            # W^T: element (r, j) at w_grp[r + j * col_rows]. W with its columns in the forward's
            # tap-major order (convx_pack_columns): column j is channel j % c_in_g, tap
            # j / c_in_g, element (r, j) at w_grp[r * col_rows + (j % c_in_g) * taps + j / c_in_g].
            if floating is float:
                if transpose:
                    convx_gemm_pack_a_f(p.level, p.m, p.k, w + grp * w_size, 1, col_rows, &packed[grp * p.group_size])
                else:
                    convx_gemm_pack_a_cyclic_f(p.level, p.m, p.k, w + grp * w_size, p.m, col_rows, 0, c_in_g, taps,
                                               1, &packed[grp * p.group_size])
            else:
                if transpose:
                    convx_gemm_pack_a_d(p.level, p.m, p.k, w + grp * w_size, 1, col_rows, &packed[grp * p.group_size])
                else:
                    convx_gemm_pack_a_cyclic_d(p.level, p.m, p.k, w + grp * w_size, p.m, col_rows, 0, c_in_g, taps,
                                               1, &packed[grp * p.group_size])
    p.packed = &packed[0]
    return packed


cdef inline Py_ssize_t _product_work_size(WeightProduct* p, bint is_float) noexcept nogil:
    """Scratch elements one thread needs for _product."""
    if p.level == CONVX_GEMM_BLAS:
        return 1
    if is_float:
        return convx_gemm_work_size_f(p.level)
    return convx_gemm_work_size_d(p.level)


cdef inline void _product(WeightProduct* p, Py_ssize_t grp, Py_ssize_t n, const floating* b, Py_ssize_t ldb,
                          floating* c, Py_ssize_t ldc, floating* work) noexcept nogil:
    """C (p.m x n, row stride ldc) = op(W_grp) @ B (p.k x n, row stride ldb)."""
    if p.level == CONVX_GEMM_BLAS:
        _gemm(p.transpose, False, p.m, n, p.k, 1,
              <const floating*> p.weight + grp * p.m * p.k, p.k if not p.transpose else p.m,
              b, ldb, 0, c, ldc)
    elif floating is float:
        convx_gemm_f(p.level, p.m, n, p.k, <const float*> p.packed + grp * p.group_size, b, ldb, c, ldc, 0, work)
    else:
        convx_gemm_d(p.level, p.m, n, p.k, <const double*> p.packed + grp * p.group_size, b, ldb, c, ldc, 0, work)


cdef inline void _product_t(WeightProduct* p, Py_ssize_t grp, Py_ssize_t n, const floating* b, Py_ssize_t ldb,
                            floating* c, Py_ssize_t ldc, floating* work) noexcept nogil:
    """C (p.m x n, row stride ldc) = op(W_grp) @ B^T, B (n x p.k, row stride ldb): _product with
    B's columns given as rows (a channels-last image's pixels)."""
    if p.level == CONVX_GEMM_BLAS:
        _gemm(p.transpose, True, p.m, n, p.k, 1,
              <const floating*> p.weight + grp * p.m * p.k, p.k if not p.transpose else p.m,
              b, ldb, 0, c, ldc)
    elif floating is float:
        convx_gemm_bt_f(p.level, p.m, n, p.k, <const float*> p.packed + grp * p.group_size, b, ldb, c, ldc, 0, work)
    else:
        convx_gemm_bt_d(p.level, p.m, n, p.k, <const double*> p.packed + grp * p.group_size, b, ldb, c, ldc, 0, work)


cdef int _implicit_conv(const floating* x, WeightProduct* wp, const floating* bias, const convx_epilogue* epi,
                        floating* out, convx_conv_shape* s, Py_ssize_t batch, int n_threads) except -1:
    """out = act(conv(x) + bias) (bias and the activation of epi where given) by convx_conv_block:
    each thread packs the column matrix of its share of the batch's output pixels straight from
    x, a block at a time."""
    cdef Py_ssize_t n_cols = batch * s.out_h * s.out_w
    cdef Py_ssize_t block, work_size, lo, hi, q0, nc
    cdef int team, t
    if n_cols == 0:
        return 0
    if floating is float:
        block = convx_conv_block_cols_f(wp.level)
        work_size = convx_gemm_work_size_f(wp.level)
        dtype = np.float32
    else:
        block = convx_conv_block_cols_d(wp.level)
        work_size = convx_gemm_work_size_d(wp.level)
        dtype = np.float64
    team = _team(n_threads, (n_cols + 63) // 64)
    cdef floating[::1] work = np.empty(team * work_size, dtype=dtype)
    with nogil:
        for t in prange(team, schedule='static', num_threads=team):
            lo = t * n_cols // team
            hi = (t + 1) * n_cols // team
            q0 = lo
            while q0 < hi:
                nc = min(block, hi - q0)
                if floating is float:
                    convx_conv_block_f(wp.level, s, <const float*> wp.packed, wp.group_size, bias, epi, x, out, q0,
                                       nc, &work[t * work_size])
                else:
                    convx_conv_block_d(wp.level, s, <const double*> wp.packed, wp.group_size, bias, epi, x, out, q0,
                                       nc, &work[t * work_size])
                q0 = q0 + nc
    return 0


cdef inline bint _packed_input(ConvGeometry* g, int n_threads) noexcept nogil:
    """Whether the input gradient goes through _packed_input_gradient: with convx's GEMM, where
    the product is not written straight into grad_in already (a 1x1 kernel over whole planes),
    and with enough input channels for each thread to take eight."""
    return (_level() != CONVX_GEMM_BLAS and not g.direct_1x1 and g.batch > 0 and g.c_out_g > 0
            and g.groups * g.c_in_g >= 8 * max(1, n_threads))


cdef int _packed_input_gradient(const floating* grad_out, const floating* weight, floating* grad_in,
                                convx_conv_shape* s, Py_ssize_t batch, int n_threads) except -1:
    """grad_in = col2im(W^T @ grad_out) by convx_conv_input_block, with no column matrix: each
    thread takes an equal share of the input channels (so that no two write the same element),
    packs its rows of W^T (cut where groups end) and adds its rows of every tile of the product
    into grad_in, over all the batch's pixels."""
    cdef Py_ssize_t n_cols = batch * s.out_h * s.out_w
    cdef Py_ssize_t c_in = s.groups * s.c_in_g, taps = s.kh * s.kw, n_out = s.out_h * s.out_w
    cdef Py_ssize_t col_rows = s.c_in_g * taps, w_size = s.c_out_g * col_rows
    cdef Py_ssize_t block, work_size, c, c0, c1, end, grp, q0, nc, n, u, zn, zr, row_end
    cdef int level = _level(), team = _team(n_threads, c_in), t
    # seg[u] = (thread, group, its first channel in the group, channels, where its W^T is packed):
    # a thread's channels cut where groups end
    segments = []
    packed_size = 0
    for t in range(team):
        c = t * c_in // team
        c1 = (t + 1) * c_in // team
        while c < c1:
            grp = c // s.c_in_g
            end = min(c1, (grp + 1) * s.c_in_g)
            segments.append((t, grp, c - grp * s.c_in_g, end - c, packed_size))
            if floating is float:
                packed_size += convx_gemm_packed_size_f(level, (end - c) * taps, s.c_out_g)
            else:
                packed_size += convx_gemm_packed_size_d(level, (end - c) * taps, s.c_out_g)
            c = end
    cdef Py_ssize_t[:, ::1] seg = np.array(segments, dtype=np.intp)
    cdef Py_ssize_t n_segs = seg.shape[0]
    if floating is float:
        block = convx_conv_block_cols_f(level)
        work_size = convx_gemm_work_size_f(level)
        dtype = np.float32
    else:
        block = convx_conv_block_cols_d(level)
        work_size = convx_gemm_work_size_d(level)
        dtype = np.float64
    cdef floating[::1] packed = np.empty(max(1, packed_size), dtype=dtype)
    cdef floating[::1] work = np.empty(team * work_size, dtype=dtype)
    with nogil:
        for t in prange(team, schedule='static', num_threads=team):
            c0 = t * c_in // team
            c1 = (t + 1) * c_in // team
            # grad_in is zeroed just ahead of the blocks, while it stays in cache: rows [0, zr)
            # of image zn, and the images before it, are zeroed
            zn = 0
            zr = 0
            for u in range(n_segs):
                if seg[u, 0] == t:
                    # row r of the segment's W^T: channel r % nch, tap r / nch; column co
                    if floating is float:
                        convx_gemm_pack_a_cyclic_f(level, seg[u, 3] * taps, s.c_out_g,
                                                   weight + seg[u, 1] * w_size + seg[u, 2] * taps, seg[u, 3],
                                                   taps, 1, s.c_out_g, col_rows, 0, &packed[seg[u, 4]])
                    else:
                        convx_gemm_pack_a_cyclic_d(level, seg[u, 3] * taps, s.c_out_g,
                                                   weight + seg[u, 1] * w_size + seg[u, 2] * taps, seg[u, 3],
                                                   taps, 1, s.c_out_g, col_rows, 0, &packed[seg[u, 4]])
            q0 = 0
            while q0 < n_cols:
                nc = min(block, n_cols - q0)
                # the block reaches image n up to input row row_end (exclusive)
                n = (q0 + nc - 1) // n_out
                row_end = (q0 + nc - 1) % n_out // s.out_w * s.sh - s.ph + (s.kh - 1) * s.dh + 1
                while zn < n:
                    _zero_rows(grad_in, s, zn, c0, c1, zr, s.height)
                    zn = zn + 1
                    zr = 0
                row_end = min(max(row_end, zr), s.height)
                _zero_rows(grad_in, s, n, c0, c1, zr, row_end)
                zr = row_end
                for u in range(n_segs):
                    if seg[u, 0] == t:
                        if floating is float:
                            convx_conv_input_block_f(level, s, &packed[seg[u, 4]], seg[u, 1], seg[u, 2], seg[u, 3],
                                                     grad_out, grad_in, q0, nc, &work[t * work_size])
                        else:
                            convx_conv_input_block_d(level, s, &packed[seg[u, 4]], seg[u, 1], seg[u, 2], seg[u, 3],
                                                     grad_out, grad_in, q0, nc, &work[t * work_size])
                q0 = q0 + nc
            while zn < batch:
                _zero_rows(grad_in, s, zn, c0, c1, zr, s.height)
                zn = zn + 1
                zr = 0
    return 0


cdef inline void _zero_rows(floating* grad_in, convx_conv_shape* s, Py_ssize_t n, Py_ssize_t c0, Py_ssize_t c1,
                            Py_ssize_t row0, Py_ssize_t row1) noexcept nogil:
    """grad_in[n, c0:c1, row0:row1] = 0."""
    cdef Py_ssize_t c
    if row1 <= row0:
        return
    for c in range(c0, c1):
        memset(grad_in + ((n * s.groups * s.c_in_g + c) * s.height + row0) * s.width, 0,
               (row1 - row0) * s.width * sizeof(floating))


cdef int _packed_weight_gradient(const floating* grad_out, const floating* x, convx_conv_shape* s,
                                 Py_ssize_t batch, floating* grad_weight, int n_threads) except -1:
    """grad_weight = sum_q grad_out[:, q] col[:, q]^T by convx_conv_weight_block: each thread sums
    its share of the batch's output pixels into its own partial (transposed), the partials are
    added after."""
    cdef Py_ssize_t n_cols = batch * s.out_h * s.out_w
    cdef Py_ssize_t w_size = s.groups * s.c_out_g * s.c_in_g * s.kh * s.kw
    cdef Py_ssize_t taps = s.kh * s.kw, col_rows = s.c_in_g * taps
    cdef Py_ssize_t block, work_size, lo, hi, q0, nc, grp, co, kk
    cdef int team, t, level = _level()
    if floating is float:
        block = convx_conv_weight_cols_f(level)
        work_size = convx_conv_weight_work_size_f(level, s.c_out_g)
        dtype = np.float32
    else:
        block = convx_conv_weight_cols_d(level)
        work_size = convx_conv_weight_work_size_d(level, s.c_out_g)
        dtype = np.float64
    team = _team(n_threads, (n_cols + block - 1) // block)
    cdef floating[::1] parts = np.zeros(team * w_size, dtype=dtype)
    cdef floating[::1] work = np.empty(team * work_size, dtype=dtype)
    with nogil:
        for t in prange(team, schedule='static', num_threads=team):
            lo = t * n_cols // team
            hi = (t + 1) * n_cols // team
            q0 = lo
            while q0 < hi:
                nc = min(block, hi - q0)
                if floating is float:
                    convx_conv_weight_block_f(level, s, grad_out, x, q0, nc, &parts[t * w_size],
                                              &work[t * work_size])
                else:
                    convx_conv_weight_block_d(level, s, grad_out, x, q0, nc, &parts[t * w_size],
                                              &work[t * work_size])
                q0 = q0 + nc
        _sum_partials(&parts[0], team, w_size, &parts[0])
        # the blocks sum the transposed gradient of each group, its rows tap-major: row
        # tap * c_in_g + ci is grad_weight[co, ci * taps + tap]
        for grp in range(s.groups):
            for co in range(s.c_out_g):
                for kk in range(col_rows):
                    grad_weight[(grp * s.c_out_g + co) * col_rows + kk] = parts[
                        (grp * col_rows + kk % taps * s.c_in_g + kk // taps) * s.c_out_g + co]
    return 0
