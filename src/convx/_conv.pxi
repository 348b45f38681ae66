# Convolution kernels: im2col/col2im + GEMM (Caffe's scheme), and direct loops for
# convolutions with one input channel per group (depthwise and friends).
#
# The GEMMs are convx's own packed kernels (_gemm.h) where the CPU has them, else BLAS. With
# convx's, the forward (and, for layers it suits, the weight gradient) packs column blocks
# straight from the input, each thread taking an equal share of the batch's output pixels; the
# input gradient (with enough input channels) adds each tile of W^T @ grad_out straight into
# grad_in, each thread taking an equal share of the input channels. Otherwise work is split
# into tiles: one image (or a chunk of its output rows, when its column
# matrix would exceed the per-thread budget), or a block of whole images when their planes are
# so small that one GEMM per image would be too thin for BLAS to run well. Column buffers hold
# one tile per thread, never the whole batch. Threads split the tiles; each has its own
# scratch, and weight gradients are accumulated in per-thread partials summed afterwards.

cdef enum:
    # Upper bound on the elements of one thread's scratch (column matrix + gathered gradients).
    COL_BUDGET = 1 << 20
    # Images with fewer output pixels than this are blocked together into one GEMM.
    MIN_GEMM_COLS = 512
    # Largest gradient (per group) the packed weight gradient takes.
    PACKED_WEIGHT_MOST = 1 << 17


cdef inline int _team(int n_threads, Py_ssize_t n_items) noexcept nogil:
    """Threads for a loop of n_items: never more than the items (each thread costs its start-up
    and a stack, whatever it gets to do)."""
    return <int> max(1, min(<Py_ssize_t> n_threads, n_items))


cdef object _NO_LIMIT = _nullcontext()


cdef object _blas_limit(bint needed):
    """convx._threads.single_threaded_blas() where a kernel is about to call BLAS from its team
    (looked up at each use, so that tests can watch it), else a context that does nothing: the
    limit costs some microseconds, as much as a small convolution, so only BLAS calls pay it."""
    if not needed:
        return _NO_LIMIT
    from convx import _threads
    return _threads.single_threaded_blas()


cdef inline void _gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                       const floating* a, int lda, const floating* b, int ldb,
                       floating beta, floating* c, int ldc) noexcept nogil:
    """C := alpha * op(A) @ op(B) + beta * C, row-major, C is (m, n)."""
    # BLAS is column-major: C = A B  <=>  C^T = B^T A^T, so the operands swap places.
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*> b, &ldb, <float*> a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*> b, &ldb, <double*> a, &lda, &beta, c, &ldc)


def matmul(const floating[:, ::1] a, bint trans_a, const floating[:, ::1] b, bint trans_b, floating[:, ::1] out,
           int n_threads):
    """out := op(a) @ op(b) (op(a) = a.T where trans_a, likewise b), split over the threads by
    rows of out, or by its columns where it has fewer than 8 rows per thread and fewer rows than
    columns (OpenBLAS's products of a column share ran slower on two threads than the whole on
    one: 64x800 @ 800x500 1.58 ms on one thread, 2.17 in column halves, 1.16 in row halves); each
    part one BLAS call, BLAS held at one thread (its own threads, left spinning after a call,
    would take cores from the kernels that run next). Sizes below 2**31."""
    cdef int m = out.shape[0], n = out.shape[1], k = a.shape[0] if trans_a else a.shape[1]
    cdef int lda = a.shape[1], ldb = b.shape[1], ldc = n
    cdef bint by_rows = m >= 8 * n_threads or m >= n
    cdef int parts = m if by_rows else n, team = _team(n_threads, parts), t
    cdef Py_ssize_t lo, hi
    if m == 0 or n == 0:
        return
    if k == 0:
        memset(&out[0, 0], 0, <size_t> m * n * sizeof(floating))
        return
    with _blas_limit(True):
        with nogil:
            for t in prange(team, schedule='static', num_threads=team):
                lo = t * parts // team
                hi = (t + 1) * parts // team
                if by_rows:
                    _gemm(trans_a, trans_b, <int> (hi - lo), n, k, 1, &a[0, 0] + (lo if trans_a else lo * lda), lda,
                          &b[0, 0], ldb, 0, &out[0, 0] + lo * ldc, ldc)
                else:
                    _gemm(trans_a, trans_b, m, <int> (hi - lo), k, 1, &a[0, 0], lda,
                          &b[0, 0] + (lo * ldb if trans_b else lo), ldb, 0, &out[0, 0] + lo, ldc)


cdef extern from "_gemm.h" nogil:
    enum:
        CONVX_GEMM_BLAS
        CONVX_GEMM_AVX2
        CONVX_GEMM_AVX512
    int convx_gemm_detect()
    size_t convx_gemm_packed_size_f(int level, Py_ssize_t m, Py_ssize_t k)
    size_t convx_gemm_packed_size_d(int level, Py_ssize_t m, Py_ssize_t k)
    size_t convx_gemm_work_size_f(int level)
    size_t convx_gemm_work_size_d(int level)
    void convx_gemm_pack_a_f(int level, Py_ssize_t m, Py_ssize_t k, const float* a, Py_ssize_t rs,
                             Py_ssize_t cs, float* packed)
    void convx_gemm_pack_a_d(int level, Py_ssize_t m, Py_ssize_t k, const double* a, Py_ssize_t rs,
                             Py_ssize_t cs, double* packed)
    void convx_gemm_f(int level, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float* packed,
                      const float* b, Py_ssize_t ldb, float* c, Py_ssize_t ldc, int accumulate, float* work)
    void convx_gemm_d(int level, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const double* packed,
                      const double* b, Py_ssize_t ldb, double* c, Py_ssize_t ldc, int accumulate, double* work)
    ctypedef struct convx_conv_shape:
        Py_ssize_t groups, c_in_g, c_out_g, height, width, out_h, out_w
        Py_ssize_t kh, kw, sh, sw, ph, pw, dh, dw
    Py_ssize_t convx_conv_block_cols_f(int level)
    Py_ssize_t convx_conv_block_cols_d(int level)
    void convx_conv_block_f(int level, const convx_conv_shape* s, const float* packed, size_t group_size,
                            const float* bias, const float* x, float* out, Py_ssize_t q0, Py_ssize_t nc,
                            float* work)
    void convx_conv_block_d(int level, const convx_conv_shape* s, const double* packed, size_t group_size,
                            const double* bias, const double* x, double* out, Py_ssize_t q0, Py_ssize_t nc,
                            double* work)
    void convx_gemm_pack_a_cyclic_f(int level, Py_ssize_t m, Py_ssize_t k, const float* a, Py_ssize_t rcycle,
                                    Py_ssize_t rs, Py_ssize_t rs2, Py_ssize_t kcycle, Py_ssize_t cs,
                                    Py_ssize_t cs2, float* packed)
    void convx_gemm_pack_a_cyclic_d(int level, Py_ssize_t m, Py_ssize_t k, const double* a, Py_ssize_t rcycle,
                                    Py_ssize_t rs, Py_ssize_t rs2, Py_ssize_t kcycle, Py_ssize_t cs,
                                    Py_ssize_t cs2, double* packed)
    void convx_conv_input_block_f(int level, const convx_conv_shape* s, const float* packed, Py_ssize_t grp,
                                  Py_ssize_t c0, Py_ssize_t nch, const float* grad_out, float* grad_in,
                                  Py_ssize_t q0, Py_ssize_t nc, float* work)
    void convx_conv_input_block_d(int level, const convx_conv_shape* s, const double* packed, Py_ssize_t grp,
                                  Py_ssize_t c0, Py_ssize_t nch, const double* grad_out, double* grad_in,
                                  Py_ssize_t q0, Py_ssize_t nc, double* work)
    Py_ssize_t convx_conv_weight_cols_f(int level)
    Py_ssize_t convx_conv_weight_cols_d(int level)
    size_t convx_conv_weight_work_size_f(int level, Py_ssize_t m)
    size_t convx_conv_weight_work_size_d(int level, Py_ssize_t m)
    void convx_conv_weight_block_f(int level, const convx_conv_shape* s, const float* grad_out, const float* x,
                                   Py_ssize_t q0, Py_ssize_t nc, float* partial, float* work)
    void convx_conv_weight_block_d(int level, const convx_conv_shape* s, const double* grad_out, const double* x,
                                   Py_ssize_t q0, Py_ssize_t nc, double* partial, double* work)
    enum:
        CONVX_DIRECT_TAPS
    int convx_conv_flat(const convx_conv_shape* s)
    size_t convx_direct_outer_part_size_f(int level, const convx_conv_shape* s)
    size_t convx_direct_outer_part_size_d(int level, const convx_conv_shape* s)
    size_t convx_direct_outer_buffer_size_f(int level, const convx_conv_shape* s)
    size_t convx_direct_outer_buffer_size_d(int level, const convx_conv_shape* s)
    void convx_direct_weight_outer_f(int level, const convx_conv_shape* s, const float* grad_out, const float* x,
                                     Py_ssize_t n_images, float* part, float* buf)
    void convx_direct_weight_outer_d(int level, const convx_conv_shape* s, const double* grad_out, const double* x,
                                     Py_ssize_t n_images, double* part, double* buf)
    void convx_direct_outer_store_f(int level, const convx_conv_shape* s, const float* part, float* grad_weight)
    void convx_direct_outer_store_d(int level, const convx_conv_shape* s, const double* part, double* grad_weight)
    size_t convx_direct_weight_part_size_f(int level, const convx_conv_shape* s, Py_ssize_t tiles)
    size_t convx_direct_weight_part_size_d(int level, const convx_conv_shape* s, Py_ssize_t tiles)
    Py_ssize_t convx_direct_weight_tiles_f(int level, const convx_conv_shape* s)
    Py_ssize_t convx_direct_weight_tiles_d(int level, const convx_conv_shape* s)
    size_t convx_direct_weight_image_size_f(int level, const convx_conv_shape* s)
    size_t convx_direct_weight_image_size_d(int level, const convx_conv_shape* s)
    void convx_direct_weight_images_f(int level, const convx_conv_shape* s, const float* grad_out, const float* x,
                                      Py_ssize_t n_images, Py_ssize_t u0, Py_ssize_t u1, float* part, float* buf)
    void convx_direct_weight_images_d(int level, const convx_conv_shape* s, const double* grad_out, const double* x,
                                      Py_ssize_t n_images, Py_ssize_t u0, Py_ssize_t u1, double* part, double* buf)
    int convx_direct_weight_store_f(int level, const convx_conv_shape* s, const float* part, Py_ssize_t u0,
                                    Py_ssize_t u1, float* grad_weight)
    int convx_direct_weight_store_d(int level, const convx_conv_shape* s, const double* part, Py_ssize_t u0,
                                    Py_ssize_t u1, double* grad_weight)
    enum: CONVX_PLANE_DEPTH
    Py_ssize_t convx_padded_height(const convx_conv_shape* s)
    Py_ssize_t convx_padded_width(const convx_conv_shape* s)
    Py_ssize_t convx_plane_channels_f(int level)
    Py_ssize_t convx_plane_channels_d(int level)
    Py_ssize_t convx_plane_lanes_f(int level)
    Py_ssize_t convx_plane_lanes_d(int level)
    size_t convx_plane_weight_size_f(int level, Py_ssize_t c_out_g, Py_ssize_t k)
    size_t convx_plane_weight_size_d(int level, Py_ssize_t c_out_g, Py_ssize_t k)
    size_t convx_plane_buffer_size_f(int level, const convx_conv_shape* s)
    size_t convx_plane_buffer_size_d(int level, const convx_conv_shape* s)
    void convx_plane_pack_weight_f(int level, const float* w, Py_ssize_t c_out_g, Py_ssize_t depth, float* packed)
    void convx_plane_pack_weight_d(int level, const double* w, Py_ssize_t c_out_g, Py_ssize_t depth, double* packed)
    void convx_plane_conv_f(int level, const convx_conv_shape* s, const float* packed, size_t group_size,
                            const float* bias, const float* x, float* out, Py_ssize_t u0, Py_ssize_t u1, float* buf)
    void convx_plane_conv_d(int level, const convx_conv_shape* s, const double* packed, size_t group_size,
                            const double* bias, const double* x, double* out, Py_ssize_t u0, Py_ssize_t u1,
                            double* buf)
    size_t convx_direct_buffer_size(const convx_conv_shape* s, Py_ssize_t mr, Py_ssize_t rows)
    Py_ssize_t convx_direct_row_tile(const convx_conv_shape* s, Py_ssize_t mr)
    Py_ssize_t convx_direct_buffer_width(const convx_conv_shape* s, Py_ssize_t mr)
    size_t convx_direct_weight_size_f(int level, Py_ssize_t m, Py_ssize_t k)
    size_t convx_direct_weight_size_d(int level, Py_ssize_t m, Py_ssize_t k)
    Py_ssize_t convx_direct_lanes_f(int level)
    Py_ssize_t convx_direct_lanes_d(int level)
    Py_ssize_t convx_direct_rows_f(int level)
    Py_ssize_t convx_direct_rows_d(int level)
    int convx_direct_pack_weight_f(int level, const float* w, Py_ssize_t m, Py_ssize_t channels, Py_ssize_t taps,
                                   Py_ssize_t s_m, Py_ssize_t s_c, Py_ssize_t s_t, Py_ssize_t blk, float* packed)
    int convx_direct_pack_weight_d(int level, const double* w, Py_ssize_t m, Py_ssize_t channels, Py_ssize_t taps,
                                   Py_ssize_t s_m, Py_ssize_t s_c, Py_ssize_t s_t, Py_ssize_t blk, double* packed)
    void convx_direct_conv_rows_f(int level, const convx_conv_shape* s, const float* packed, size_t group_size,
                                  const float* bias, const float* x, float* out, Py_ssize_t r0, Py_ssize_t r1,
                                  float* buf)
    void convx_direct_conv_rows_d(int level, const convx_conv_shape* s, const double* packed, size_t group_size,
                                  const double* bias, const double* x, double* out, Py_ssize_t r0, Py_ssize_t r1,
                                  double* buf)
    void convx_direct_conv_images_f(int level, const convx_conv_shape* s, const float* packed, size_t group_size,
                                    const float* bias, const float* x, float* out, Py_ssize_t n_images,
                                    Py_ssize_t blk0, Py_ssize_t blk1, float* buf)
    void convx_direct_conv_images_d(int level, const convx_conv_shape* s, const double* packed, size_t group_size,
                                    const double* bias, const double* x, double* out, Py_ssize_t n_images,
                                    Py_ssize_t blk0, Py_ssize_t blk1, double* buf)
    size_t convx_flat_work_size_f(int level)
    size_t convx_flat_work_size_d(int level)
    Py_ssize_t convx_flat_strips_f(int level, const float* c, Py_ssize_t n_pix, int stream)
    Py_ssize_t convx_flat_strips_d(int level, const double* c, Py_ssize_t n_pix, int stream)
    void convx_flat_conv_f(int level, Py_ssize_t groups, Py_ssize_t m, Py_ssize_t k, Py_ssize_t n_pix,
                           const float* packed, size_t group_size, const float* bias, const float* b,
                           Py_ssize_t b_image, float* c, Py_ssize_t c_image, int stream, Py_ssize_t i0,
                           Py_ssize_t i1, float* work)
    void convx_flat_conv_d(int level, Py_ssize_t groups, Py_ssize_t m, Py_ssize_t k, Py_ssize_t n_pix,
                           const double* packed, size_t group_size, const double* bias, const double* b,
                           Py_ssize_t b_image, double* c, Py_ssize_t c_image, int stream, Py_ssize_t i0,
                           Py_ssize_t i1, double* work)
    Py_ssize_t convx_flat_weight_blocks_f(int level, Py_ssize_t c)
    Py_ssize_t convx_flat_weight_blocks_d(int level, Py_ssize_t c)
    void convx_flat_weight_f(int level, Py_ssize_t groups, Py_ssize_t m, Py_ssize_t c, Py_ssize_t n_pix,
                             Py_ssize_t batch, const float* gy, const float* x, float* gw, Py_ssize_t u0,
                             Py_ssize_t u1)
    void convx_flat_weight_d(int level, Py_ssize_t groups, Py_ssize_t m, Py_ssize_t c, Py_ssize_t n_pix,
                             Py_ssize_t batch, const double* gy, const double* x, double* gw, Py_ssize_t u0,
                             Py_ssize_t u1)


GEMM_KERNELS = ("blas", "avx2", "avx512")
cdef int _gemm_supported = convx_gemm_detect()
# On an AVX2-only EPYC (Zen 1) the AVX2 kernels took 0.6-0.9 of the BLAS path's time on most
# layers of the benchmark (vgg_3x3's forward 48 ms against 59-79 ms, PyTorch 44 ms).
cdef int _gemm_level = _gemm_supported


def gemm_kernel():
    """The kernel of the convolutions' matrix products: convx's own 'avx512' or 'avx2' (the default
    where the CPU has it), or 'blas' (elsewhere)."""
    return GEMM_KERNELS[_gemm_level]


def set_gemm_kernel(name):
    """Use kernel ``name`` (see gemm_kernel) from now on: 'blas', or one of convx's that this CPU runs.

    For tests and benchmarks, which compare the kernels; not thread-safe against running calls.
    """
    global _gemm_level
    if name not in GEMM_KERNELS:
        raise ValueError(f"gemm kernel must be one of {', '.join(map(repr, GEMM_KERNELS))}, got {name!r}")
    level = GEMM_KERNELS.index(name)
    if level > _gemm_supported:
        raise ValueError(f"this CPU does not run the {name!r} kernel; it runs {GEMM_KERNELS[:_gemm_supported + 1]}")
    _gemm_level = level


cdef extern from *:
    """
    /* A calling thread's own choice of GEMM level and direct mode (-1: the process-wide
       setting), set around one call by convx.autotune. The kernels' teams never read them:
       every choice is made, and every level passed on, before a parallel region starts. */
    static __thread int convx_thread_gemm_level = -1;
    static __thread int convx_thread_direct_mode = -1;
    static int convx_get_thread_gemm_level(void) { return convx_thread_gemm_level; }
    static int convx_get_thread_direct_mode(void) { return convx_thread_direct_mode; }
    static void convx_set_thread_config(int level, int mode) {
        convx_thread_gemm_level = level;
        convx_thread_direct_mode = mode;
    }
    """
    int convx_get_thread_gemm_level() noexcept nogil
    int convx_get_thread_direct_mode() noexcept nogil
    void convx_set_thread_config(int level, int mode) noexcept nogil


cdef inline int _level() noexcept nogil:
    """The GEMM level this thread's calls use: its own (ConvConfig), else set_gemm_kernel's."""
    cdef int level = convx_get_thread_gemm_level()
    return _gemm_level if level < 0 else level


cdef inline int _dmode() noexcept nogil:
    """The direct mode this thread's calls use: its own (ConvConfig), else set_direct_conv's."""
    cdef int mode = convx_get_thread_direct_mode()
    return _direct_mode if mode < 0 else mode


DIRECT_MODES = ("auto", "off", "rows", "images", "outer", "flat", "plane")
# 'auto' picks per layer (_direct_choice, _direct_weight_choice, _flat_choice, _plane_choice); the
# others force a mode wherever the direct kernels apply at all, for tests and benchmarks ('outer':
# the forward and input gradient as 'rows', the weight gradient as _direct_outer_weight_gradient;
# 'flat': the convx_flat_* kernels for every 1x1 kernel over whole planes, other layers as 'auto';
# 'plane': the forward by convx_plane_conv wherever it applies, other ops as 'auto').
cdef enum:
    # _direct_mode: the index of its name in DIRECT_MODES
    MODE_AUTO = 0
    MODE_OFF = 1
    MODE_ROWS = 2
    MODE_IMAGES = 3
    MODE_OUTER = 4
    MODE_FLAT = 5
    MODE_PLANE = 6
cdef int _direct_mode = MODE_AUTO


def direct_conv():
    """How convolutions use the channels-last direct kernels (convx_direct_*): 'auto' (per
    layer), 'off', or forced to 'rows' (tiles of pixels along an output row; the weight
    gradient split over the batch), 'images' (tiles of one pixel of several images; the weight
    gradient split over the output channels), 'outer' (the weight gradient with the output
    channels as lanes), 'flat' (the plane-wise kernels of 1x1 convolutions, convx_flat_*) or
    'plane' (the forward with the pixels as lanes, convx_plane_conv) wherever they apply."""
    return DIRECT_MODES[_direct_mode]


def set_direct_conv(mode):
    """Set direct_conv's mode; for tests and benchmarks, not thread-safe against running calls."""
    global _direct_mode
    if mode not in DIRECT_MODES:
        raise ValueError(f"direct conv mode must be one of {', '.join(map(repr, DIRECT_MODES))}, got {mode!r}")
    _direct_mode = DIRECT_MODES.index(mode)


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


cdef int _implicit_conv(const floating* x, WeightProduct* wp, const floating* bias, floating* out,
                        convx_conv_shape* s, Py_ssize_t batch, int n_threads) except -1:
    """out = conv(x) (bias added where given) by convx_conv_block: each thread packs the column
    matrix of its share of the batch's output pixels straight from x, a block at a time."""
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
                    convx_conv_block_f(wp.level, s, <const float*> wp.packed, wp.group_size, bias, x, out, q0,
                                       nc, &work[t * work_size])
                else:
                    convx_conv_block_d(wp.level, s, <const double*> wp.packed, wp.group_size, bias, x, out, q0,
                                       nc, &work[t * work_size])
                q0 = q0 + nc
    return 0


cdef enum:
    # Paths whose per-thread scratch holds a zero-padded (or stride-spread) copy of an image are
    # taken only where that copy stays within SCRATCH_IMAGE_MULTIPLE times one image's input and
    # output, plus SCRATCH_SLACK elements; elsewhere the paths that clip each tap to the input
    # (convx_conv_block's packing, im2col tiles) run, whose scratch the padding, stride and
    # dilation do not size. The outputs that read padding only are cut off before (functional/
    # conv.py, _kernel_plan); what this bounds is the padding inside the windows left, and
    # dilated taps stepping past the input: a 1x1 image, dilation and padding 10**4 had the
    # direct weight gradient take 6 GiB and 19 s, 3 GiB and 1.7 s its forward (Xeon, family 6
    # model 167, AVX-512). The layers of the benchmark copy at most about twice an image (a 3x3
    # kernel with padding 1 over 7x7 planes: 9 / 7 columns per row, plus the output), so none
    # of them changes path.
    SCRATCH_IMAGE_MULTIPLE = 4
    SCRATCH_SLACK = 1 << 18


cdef inline bint _scratch_fits(double elements, convx_conv_shape* s) noexcept nogil:
    """Whether a per-thread copy of elements stays within the bound above for the shape s
    (in double: the padded sizes of an unbounded path could overflow a 64-bit product)."""
    cdef double image = (<double> (s.groups * s.c_in_g) * <double> s.height * <double> s.width
                         + <double> (s.groups * s.c_out_g) * <double> s.out_h * <double> s.out_w)
    return elements <= SCRATCH_IMAGE_MULTIPLE * image + SCRATCH_SLACK


cdef inline double _padded_planes(convx_conv_shape* s, Py_ssize_t channels) noexcept nogil:
    """Elements of channels zero-padded planes (convx_padded_height x convx_padded_width), in double."""
    return <double> channels * <double> convx_padded_height(s) * <double> convx_padded_width(s)


cdef enum:
    # Pixels per plane from which the flat kernels take a 1x1 convolution's forward and input
    # gradient, and its weight gradient. Their strips and chunks end with each plane, where the
    # packed path's run on into the next image, and each strip streams the whole weight: on
    # 14x14 planes (256 -> 1024 channels) they took 1.2-1.3x the packed path's time, on 28x28
    # 0.85-0.96 (the weight gradient 1.0-1.24), on 56x56 0.74-0.83. The float64 weight gradient
    # took 0.99-1.12 on 56x56, and stays on the packed path.
    FLAT_LEAST_PIXELS = 512
    FLAT_WEIGHT_LEAST_PIXELS = 2048
    # Outputs of at least this many bytes are streamed past the caches.
    FLAT_STREAM_BYTES = 16 << 20


cdef inline bint _flat_choice(convx_conv_shape* s, Py_ssize_t batch, bint weight, bint is_float) noexcept nogil:
    """Whether the convx_flat_* kernels take the convolution of shape s (its forward and input
    gradient, or with weight its weight gradient): a 1x1 kernel over whole planes, on convx's
    own kernels."""
    if _level() == CONVX_GEMM_BLAS or batch == 0 or s.c_out_g == 0 or s.c_in_g == 0 or not convx_conv_flat(s):
        return False
    if _dmode() == MODE_FLAT:
        return True
    if _dmode() != MODE_AUTO or (weight and not is_float):
        return False
    return s.height * s.width >= (FLAT_WEIGHT_LEAST_PIXELS if weight else FLAT_LEAST_PIXELS)


cdef int _flat_conv(const floating* b, const floating[:, :, :, ::1] weight, bint transpose, const floating* bias,
                    floating* c, convx_conv_shape* s, Py_ssize_t batch, int n_threads) except -1:
    """C = op(W) @ B plane by plane by convx_flat_conv, for a shape _flat_choice took: the
    forward (B = x, C = out, op(W) = W, with the bias) or the input gradient (B = grad_out,
    C = grad_in, op(W) = W^T, transpose). Threads take equal shares of the planes' strips."""
    cdef WeightProduct product
    cdef WeightProduct* wp = &product
    packed = _pack_weight(weight, s.groups, transpose, wp)
    cdef Py_ssize_t n_pix = s.height * s.width, strips, items, work_size, lo, hi
    cdef Py_ssize_t b_image = s.groups * wp.k * n_pix, c_image = s.groups * wp.m * n_pix
    cdef int team, t
    cdef int stream = batch * c_image * <Py_ssize_t> sizeof(floating) >= FLAT_STREAM_BYTES
    if floating is float:
        strips = convx_flat_strips_f(wp.level, c, n_pix, stream)
        work_size = convx_flat_work_size_f(wp.level)
        dtype = np.float32
    else:
        strips = convx_flat_strips_d(wp.level, c, n_pix, stream)
        work_size = convx_flat_work_size_d(wp.level)
        dtype = np.float64
    items = batch * s.groups * strips
    team = _team(n_threads, items)
    cdef floating[::1] work = np.empty(team * work_size, dtype=dtype)
    with nogil:
        for t in prange(team, schedule='static', num_threads=team):
            lo = t * items // team
            hi = (t + 1) * items // team
            if floating is float:
                convx_flat_conv_f(wp.level, s.groups, wp.m, wp.k, n_pix, <const float*> wp.packed, wp.group_size,
                                  bias, b, b_image, c, c_image, stream, lo, hi, &work[t * work_size])
            else:
                convx_flat_conv_d(wp.level, s.groups, wp.m, wp.k, n_pix, <const double*> wp.packed, wp.group_size,
                                  bias, b, b_image, c, c_image, stream, lo, hi, &work[t * work_size])
    return 0


cdef int _flat_weight_gradient(const floating* grad_out, const floating* x, convx_conv_shape* s, Py_ssize_t batch,
                               floating* grad_weight, int n_threads) except -1:
    """grad_weight = sum over the batch's pixels of grad_out x x^T by convx_flat_weight, for a
    shape _flat_choice took. Threads take equal shares of the batch, each summing its own
    partial, or, for fewer images than threads, of the blocks of input channels (each
    writing its own elements and reading all of grad_out)."""
    cdef int level = _level(), team, t
    cdef Py_ssize_t n_pix = s.height * s.width, items, lo, hi, n0, n1
    cdef Py_ssize_t w_size = s.groups * s.c_out_g * s.c_in_g
    cdef Py_ssize_t image_in = s.groups * s.c_in_g * n_pix, image_out = s.groups * s.c_out_g * n_pix
    if floating is float:
        items = s.groups * convx_flat_weight_blocks_f(level, s.c_in_g)
        dtype = np.float32
    else:
        items = s.groups * convx_flat_weight_blocks_d(level, s.c_in_g)
        dtype = np.float64
    cdef bint by_images = batch >= n_threads
    team = _team(n_threads, batch if by_images else items)
    cdef floating[::1] parts = np.empty(team * w_size if by_images else 1, dtype=dtype)
    cdef floating* dst
    with nogil:
        for t in prange(team, schedule='static', num_threads=team):
            lo = 0 if by_images else t * items // team
            hi = items if by_images else (t + 1) * items // team
            n0 = t * batch // team if by_images else 0
            n1 = (t + 1) * batch // team if by_images else batch
            dst = &parts[t * w_size] if by_images else grad_weight
            if floating is float:
                convx_flat_weight_f(level, s.groups, s.c_out_g, s.c_in_g, n_pix, n1 - n0, grad_out + n0 * image_out,
                                    x + n0 * image_in, dst, lo, hi)
            else:
                convx_flat_weight_d(level, s.groups, s.c_out_g, s.c_in_g, n_pix, n1 - n0, grad_out + n0 * image_out,
                                    x + n0 * image_in, dst, lo, hi)
        if by_images:
            _sum_partials(&parts[0], team, w_size, grad_weight)
    return 1


cdef enum:
    # Depths (input channels per group x taps) up to which convx_plane_conv takes a forward (on
    # AVX2, against the packed and channels-last paths, float32 and float64): where its vectors
    # cover the output rows with at most 15% idle (1->32, 3->64 and 16->32 3x3 layers on 28-32
    # pixel rows in 0.7-0.9 of the other paths' time, 3->64 7x7 0.9), and where they do not but
    # the output channels are too few for the channels-last lanes (LeNet's 1->20 5x5 on rows of
    # 24: 0.58 ms against 1.04; 1->6 5x5 on rows of 10: 0.19 against 0.26). 8->32 3x3 on rows of
    # 10 took 0.73 ms against the channels-last 0.49. Also the most elements of the per-thread
    # copy of one image's padded planes.
    PLANE_DEPTH_COVERED = 160
    PLANE_DEPTH_FEW_CHANNELS = 75
    PLANE_BUFFER = 1 << 22


cdef inline bint _plane_choice(convx_conv_shape* s, Py_ssize_t batch, bint is_float) noexcept nogil:
    """Whether convx_plane_conv takes the forward of shape s."""
    cdef Py_ssize_t depth = s.c_in_g * s.kh * s.kw, lanes, covered
    if _level() == CONVX_GEMM_BLAS or batch == 0 or s.c_out_g == 0 or s.c_in_g == 0:
        return False
    if s.sw != 1 or s.ph < 0 or s.pw < 0 or depth > CONVX_PLANE_DEPTH:
        return False
    if _padded_planes(s, s.c_in_g) > PLANE_BUFFER or not _scratch_fits(_padded_planes(s, s.c_in_g), s):
        return False
    if _dmode() == MODE_PLANE:
        return True
    # Measured on AVX2 only (an AVX2 EPYC): on AVX-512 the other kernels' choices stand.
    if _dmode() != MODE_AUTO or _level() != CONVX_GEMM_AVX2 or convx_conv_flat(s):
        return False
    lanes = convx_plane_lanes_f(_level()) if is_float else convx_plane_lanes_d(_level())
    covered = (s.out_w + lanes - 1) // lanes * lanes
    if 20 * s.out_w >= 17 * covered:
        return depth <= PLANE_DEPTH_COVERED
    return depth <= PLANE_DEPTH_FEW_CHANNELS and not _fills_lanes(s.c_out_g, is_float)


cdef int _plane_conv(const floating* x, const floating* weight, const floating* bias, floating* out,
                     convx_conv_shape* s, Py_ssize_t batch, int n_threads) except -1:
    """out = conv(x) (bias added where given) by convx_plane_conv, for a shape _plane_choice took.
    Threads take equal shares of the items (image, group, block of output channels), in order,
    so that consecutive items of one image share its padded copy."""
    cdef int level = _level(), team, t
    cdef Py_ssize_t depth = s.c_in_g * s.kh * s.kw, lanes, blocks, group_size, buf_size, grp, n_items, lo, hi
    if floating is float:
        lanes = convx_plane_channels_f(level)
        group_size = convx_plane_weight_size_f(level, s.c_out_g, depth)
        buf_size = convx_plane_buffer_size_f(level, s)
        dtype = np.float32
    else:
        lanes = convx_plane_channels_d(level)
        group_size = convx_plane_weight_size_d(level, s.c_out_g, depth)
        buf_size = convx_plane_buffer_size_d(level, s)
        dtype = np.float64
    blocks = (s.c_out_g + lanes - 1) // lanes
    cdef floating[::1] packed = np.empty(s.groups * group_size, dtype=dtype)
    with nogil:
        for grp in range(s.groups):
            if floating is float:
                convx_plane_pack_weight_f(level, weight + grp * s.c_out_g * depth, s.c_out_g, depth,
                                          &packed[grp * group_size])
            else:
                convx_plane_pack_weight_d(level, weight + grp * s.c_out_g * depth, s.c_out_g, depth,
                                          &packed[grp * group_size])
    n_items = batch * s.groups * blocks
    team = _team(n_threads, n_items)
    cdef floating[::1] buf = np.empty(team * buf_size, dtype=dtype)
    with nogil:
        for t in prange(team, schedule='static', num_threads=team):
            lo = t * n_items // team
            hi = (t + 1) * n_items // team
            if floating is float:
                convx_plane_conv_f(level, s, &packed[0], group_size, bias, x, out, lo, hi, &buf[t * buf_size])
            else:
                convx_plane_conv_d(level, s, &packed[0], group_size, bias, x, out, lo, hi, &buf[t * buf_size])
    return 0


cdef enum:
    DIRECT_OFF = 0
    DIRECT_ROWS = 1
    DIRECT_IMAGES = 2


cdef inline bint _fills_lanes(Py_ssize_t channels, bint is_float) noexcept nogil:
    """Whether channels fill at least 3/4 of the direct kernels' lanes (the lanes past them are
    computed and dropped: lenet_c2's 50 filters in 64 lanes still ran in 0.85 of the packed
    path's time)."""
    cdef Py_ssize_t lanes = convx_direct_lanes_f(_level()) if is_float else convx_direct_lanes_d(_level())
    return 3 * ((channels + lanes - 1) // lanes * lanes) <= 4 * channels


cdef int _direct_choice(convx_conv_shape* s, Py_ssize_t batch, bint is_float) noexcept nogil:
    """How convx_direct_conv_* takes a convolution of shape s (DIRECT_OFF: it does not): as
    _direct_mode_wanted, but not in rows whose channels-last copy of the rows read (their
    padding's columns, and the columns out to a last tile's spare pixels) would exceed
    _scratch_fits (images copy the images only, and skip the taps in the padding)."""
    cdef int mode = _direct_mode_wanted(s, batch, is_float)
    cdef Py_ssize_t mr = convx_direct_rows_f(_level()) if is_float else convx_direct_rows_d(_level())
    cdef double in_rows
    if mode == DIRECT_ROWS:
        in_rows = min(<double> s.height, <double> ((s.out_h - 1) * s.sh + (s.kh - 1) * s.dh + 1))
        if not _scratch_fits(in_rows * <double> convx_direct_buffer_width(s, mr) * <double> (s.groups * s.c_in_g), s):
            return DIRECT_OFF
    return mode


cdef int _direct_mode_wanted(convx_conv_shape* s, Py_ssize_t batch, bint is_float) noexcept nogil:
    """How convx_direct_conv_* would best take a convolution of shape s, scratch aside."""
    cdef int level = _level()
    cdef Py_ssize_t rows, tile
    if level == CONVX_GEMM_BLAS or _dmode() == MODE_OFF or batch == 0 or s.c_out_g == 0 or s.c_in_g == 0:
        return DIRECT_OFF
    if s.ph < 0 or s.pw < 0 or s.kh * s.kw > CONVX_DIRECT_TAPS:
        return DIRECT_OFF
    if _dmode() == MODE_ROWS or _dmode() == MODE_OUTER:
        return DIRECT_ROWS
    if _dmode() == MODE_IMAGES:
        return DIRECT_IMAGES
    # A 1x1 kernel over whole planes stays a plain GEMM of the planes.
    if not _fills_lanes(s.c_out_g, is_float) or convx_conv_flat(s):
        return DIRECT_OFF
    rows = convx_direct_rows_f(level) if is_float else convx_direct_rows_d(level)
    # Rows shorter than a tile would leave some of its rows idle, and waste the padding's
    # columns: tile across the images, which skips every tap in the padding. So do rows whose
    # last tile is short enough that whole tiles would leave a quarter of their pixels idle
    # (the last tile computes only its pixels, but few of them run slower per product): on
    # AVX2's tiles of 5 and 6, deep_small's rows of 7 (5 + 2) took 89 ms in rows, 83 in
    # images; lenet_c2's rows of 8 (5 + 3) 3.8 and 4.3 ms.
    tile = convx_direct_row_tile(s, rows)
    if batch >= rows and (s.out_w < rows or 4 * s.out_w < 3 * ((s.out_w + tile - 1) // tile * tile)):
        return DIRECT_IMAGES
    return DIRECT_ROWS


cdef int _direct_conv(const floating* x, const floating* weight, Py_ssize_t s_g, Py_ssize_t s_m, Py_ssize_t s_c,
                      Py_ssize_t s_t, const floating* bias, floating* out, convx_conv_shape* s, Py_ssize_t batch,
                      int n_threads, int mode) except -1:
    """out = conv(x) (bias added where given) by convx_direct_conv_rows or _images (mode). Group
    grp's weight of output channel co, input channel c and tap t (t = i * kw + j) is
    weight[grp * s_g + co * s_m + c * s_c + t * s_t]. Threads take whole images (or
    chunks of their output rows, or of their output channels, where the batch is too small to go
    round), each with its own channels-last buffer. Returns 0, having written nothing, where a
    weight is not finite (the caller then takes another path: see convx_direct_pack_weight)."""
    cdef int level = _level(), team, t
    cdef Py_ssize_t taps = s.kh * s.kw, k = s.c_in_g * s.kh * s.kw, lanes, mr, blocks, u, co, grp
    cdef Py_ssize_t group_size, n_items, per_image, chunk, buf_size, item, n, r0, r1, splits, chunks, b0, b1
    if floating is float:
        lanes = convx_direct_lanes_f(level)
        mr = convx_direct_rows_f(level)
        group_size = convx_direct_weight_size_f(level, s.c_out_g, k)
        dtype = np.float32
    else:
        lanes = convx_direct_lanes_d(level)
        mr = convx_direct_rows_d(level)
        group_size = convx_direct_weight_size_d(level, s.c_out_g, k)
        dtype = np.float64
    blocks = (s.c_out_g + lanes - 1) // lanes
    cdef floating[::1] packed = np.empty(s.groups * group_size, dtype=dtype)
    cdef floating[::1] lane_bias = np.zeros(s.groups * blocks * lanes if bias != NULL else 1, dtype=dtype)
    if bias != NULL:
        for grp in range(s.groups):
            for co in range(s.c_out_g):
                lane_bias[grp * blocks * lanes + co] = bias[grp * s.c_out_g + co]
    cdef const floating* b = &lane_bias[0] if bias != NULL else NULL
    team = _team(n_threads, s.groups * blocks)
    cdef Py_ssize_t finite = 0
    with nogil:
        for u in prange(s.groups * blocks, schedule='static', num_threads=team):
            if floating is float:
                finite += convx_direct_pack_weight_f(level, weight + (u // blocks) * s_g, s.c_out_g, s.c_in_g,
                                                     taps, s_m, s_c, s_t, u % blocks,
                                                     &packed[(u // blocks) * group_size + (u % blocks) * k * lanes])
            else:
                finite += convx_direct_pack_weight_d(level, weight + (u // blocks) * s_g, s.c_out_g, s.c_in_g,
                                                     taps, s_m, s_c, s_t, u % blocks,
                                                     &packed[(u // blocks) * group_size + (u % blocks) * k * lanes])
    if finite < s.groups * blocks:
        return 0
    cdef Py_ssize_t image_in = s.groups * s.c_in_g * s.height * s.width
    cdef Py_ssize_t image_out = s.groups * s.c_out_g * s.out_h * s.out_w
    cdef floating[::1] buf
    if mode == DIRECT_ROWS:
        per_image = 1
        if batch % n_threads:
            per_image = min(s.out_h, (4 * n_threads + batch - 1) // batch)
        chunk = (s.out_h + per_image - 1) // per_image
        n_items = batch * per_image
        team = _team(n_threads, n_items)
        buf_size = convx_direct_buffer_size(s, mr, chunk)
        buf = np.empty(team * buf_size, dtype=dtype)
        with nogil, parallel(num_threads=team):
            t = threadid()
            for item in prange(n_items, schedule='static'):
                n = item // per_image
                r0 = (item % per_image) * s.out_h // per_image
                r1 = (item % per_image + 1) * s.out_h // per_image
                if r0 < r1:
                    if floating is float:
                        convx_direct_conv_rows_f(level, s, &packed[0], group_size, b, x + n * image_in,
                                                 out + n * image_out, r0, r1, &buf[t * buf_size])
                    else:
                        convx_direct_conv_rows_d(level, s, &packed[0], group_size, b, x + n * image_in,
                                                 out + n * image_out, r0, r1, &buf[t * buf_size])
        return 1
    chunks = (batch + mr - 1) // mr
    splits = 1 if chunks % n_threads == 0 else min(s.groups * blocks, n_threads)
    n_items = chunks * splits
    team = _team(n_threads, n_items)
    buf_size = mr * image_in
    # zeros: the planes past a last chunk's images are read (into rows never stored)
    buf = np.zeros(team * buf_size, dtype=dtype)
    with nogil, parallel(num_threads=team):
        t = threadid()
        for item in prange(n_items, schedule='static'):
            n = (item // splits) * mr
            b0 = (item % splits) * s.groups * blocks // splits
            b1 = (item % splits + 1) * s.groups * blocks // splits
            if floating is float:
                convx_direct_conv_images_f(level, s, &packed[0], group_size, b, x + n * image_in, out + n * image_out,
                                           min(mr, batch - n), b0, b1, &buf[t * buf_size])
            else:
                convx_direct_conv_images_d(level, s, &packed[0], group_size, b, x + n * image_in, out + n * image_out,
                                           min(mr, batch - n), b0, b1, &buf[t * buf_size])
    return 1


cdef enum:
    # how _direct_weight_gradient splits the work between threads
    DIRECT_BY_CHANNELS = 1
    DIRECT_BY_IMAGES = 2
    # _direct_outer_weight_gradient instead
    DIRECT_OUTER = 3
    # Largest per-thread partial (elements) the split over images sums.
    DIRECT_PARTIAL_MOST = 1 << 18


cdef int _direct_weight_choice(convx_conv_shape* s, Py_ssize_t batch, bint is_float, int n_threads) noexcept nogil:
    """_direct_weight_wanted, or DIRECT_OFF where its channels-last copy of an image (all its
    rows; the padding's columns, and for DIRECT_OUTER its rows, zero) would exceed _scratch_fits."""
    cdef int split = _direct_weight_wanted(s, batch, is_float, n_threads)
    cdef int level = _level()
    cdef double copy, part
    cdef double weight = <double> (s.groups * s.c_out_g * s.c_in_g) * <double> (s.kh * s.kw)
    if split == DIRECT_OFF:
        return split
    if split == DIRECT_OUTER:
        copy = _padded_planes(s, s.groups * s.c_in_g)
        part = convx_direct_outer_part_size_f(level, s) if is_float else convx_direct_outer_part_size_d(level, s)
    else:
        copy = <double> s.height * <double> convx_direct_buffer_width(s, 1) * <double> (s.groups * s.c_in_g)
        if is_float:
            part = convx_direct_weight_part_size_f(level, s, s.groups * convx_direct_weight_tiles_f(level, s))
        else:
            part = convx_direct_weight_part_size_d(level, s, s.groups * convx_direct_weight_tiles_d(level, s))
    # The partials hold whole register tiles of output by input channels for every tap: for few
    # channels a multiple of the weight (2 -> 4 channels of a 256x256 kernel: 64 MiB for a 2 MiB weight).
    if not _scratch_fits(copy, s) or part > SCRATCH_IMAGE_MULTIPLE * weight + SCRATCH_SLACK:
        return DIRECT_OFF
    return split


cdef int _direct_weight_wanted(convx_conv_shape* s, Py_ssize_t batch, bint is_float, int n_threads) noexcept nogil:
    """How _direct_weight_gradient takes the weight gradient of shape s: DIRECT_OFF (it does not),
    DIRECT_BY_IMAGES (threads take shares of the batch, each summing a whole partial) or
    DIRECT_BY_CHANNELS (threads take shares of the output channels, each reading every image),
    or, for few input channels, DIRECT_OUTER (_direct_outer_weight_gradient). The forced modes
    force them too: 'rows' split by images where the batch allows, 'images' by channels."""
    cdef int level = _level()
    cdef Py_ssize_t tiles, part
    if level == CONVX_GEMM_BLAS or _dmode() == MODE_OFF or batch == 0 or s.c_out_g == 0 or s.c_in_g == 0:
        return DIRECT_OFF
    if s.ph < 0 or s.pw < 0:
        return DIRECT_OFF
    if _dmode() == MODE_ROWS:
        return DIRECT_BY_IMAGES
    if _dmode() == MODE_IMAGES:
        return DIRECT_BY_CHANNELS
    if _dmode() == MODE_OUTER:
        return DIRECT_OUTER
    # The output channels as lanes where they fill them and the input channels do not, or the
    # stride makes grad_out the smaller tensor to copy channels-last (resnet_3x3_s2: 0.93 of
    # the other way's time).
    if _fills_lanes(s.c_out_g, is_float) and s.kh * s.kw > 1:
        if not _fills_lanes(s.c_in_g, is_float) or s.sh * s.sw > 1:
            return DIRECT_OUTER
    if not _fills_lanes(s.c_in_g, is_float) or convx_conv_flat(s):
        return DIRECT_OFF
    if is_float:
        tiles = s.groups * convx_direct_weight_tiles_f(level, s)
        part = convx_direct_weight_part_size_f(level, s, tiles)
    else:
        tiles = s.groups * convx_direct_weight_tiles_d(level, s)
        part = convx_direct_weight_part_size_d(level, s, tiles)
    if batch >= n_threads and part <= DIRECT_PARTIAL_MOST:
        return DIRECT_BY_IMAGES
    return DIRECT_BY_CHANNELS


cdef int _direct_weight_gradient(const floating* grad_out, const floating* x, convx_conv_shape* s,
                                 Py_ssize_t batch, floating* grad_weight, int n_threads, int split) except -1:
    """grad_weight = sum over the batch's pixels of grad_out x im2col(x)^T by
    convx_direct_weight_images, the work split as _direct_weight_choice chose. Returns 0 where
    the result is not finite (grad_weight then holds garbage, and the caller recomputes it on a
    path that multiplies the padding's zeros, as the taps this one skips would)."""
    cdef int level = _level(), team, t
    cdef bint by_images = split == DIRECT_BY_IMAGES
    cdef Py_ssize_t tiles, n_tiles, share, part_size, image_size, per_chunk, buf_size
    cdef Py_ssize_t u0, u1, n0, n1, n, c, finite = 0
    cdef Py_ssize_t image_in = s.groups * s.c_in_g * s.height * s.width
    cdef Py_ssize_t image_out = s.groups * s.c_out_g * s.out_h * s.out_w
    if floating is float:
        tiles = convx_direct_weight_tiles_f(level, s)
        image_size = convx_direct_weight_image_size_f(level, s)
        dtype = np.float32
    else:
        tiles = convx_direct_weight_tiles_d(level, s)
        image_size = convx_direct_weight_image_size_d(level, s)
        dtype = np.float64
    n_tiles = s.groups * tiles
    team = _team(n_threads, batch if by_images else n_tiles)
    share = n_tiles if by_images else (n_tiles + team - 1) // team
    if floating is float:
        part_size = convx_direct_weight_part_size_f(level, s, share)
    else:
        part_size = convx_direct_weight_part_size_d(level, s, share)
    # images per pass: their channels-last copies about 256 KB (in L2 beside the partial), or 8
    per_chunk = max(1, min(8, (1 << 16) // max(1, image_size)))
    buf_size = per_chunk * image_size + 64
    cdef floating[::1] parts = np.zeros(team * part_size, dtype=dtype)
    cdef floating[::1] buf = np.empty(team * buf_size, dtype=dtype)
    with nogil:
        for t in prange(team, schedule='static', num_threads=team):
            if by_images:
                u0 = 0
                u1 = n_tiles
                n0 = t * batch // team
                n1 = (t + 1) * batch // team
            else:
                u0 = t * n_tiles // team
                u1 = (t + 1) * n_tiles // team
                n0 = 0
                n1 = batch
            n = n0
            while n < n1:
                c = min(per_chunk, n1 - n)
                if floating is float:
                    convx_direct_weight_images_f(level, s, grad_out + n * image_out, x + n * image_in, c, u0, u1,
                                                 &parts[t * part_size], &buf[t * buf_size])
                else:
                    convx_direct_weight_images_d(level, s, grad_out + n * image_out, x + n * image_in, c, u0, u1,
                                                 &parts[t * part_size], &buf[t * buf_size])
                n = n + c
            if not by_images:
                if floating is float:
                    finite += convx_direct_weight_store_f(level, s, &parts[t * part_size], u0, u1, grad_weight)
                else:
                    finite += convx_direct_weight_store_d(level, s, &parts[t * part_size], u0, u1, grad_weight)
        if by_images:
            _sum_partials(&parts[0], team, part_size, &parts[0])
            if floating is float:
                finite = team * convx_direct_weight_store_f(level, s, &parts[0], 0, n_tiles, grad_weight)
            else:
                finite = team * convx_direct_weight_store_d(level, s, &parts[0], 0, n_tiles, grad_weight)
    return finite == team


cdef int _direct_outer_weight_gradient(const floating* grad_out, const floating* x, convx_conv_shape* s,
                                       Py_ssize_t batch, floating* grad_weight, int n_threads) except -1:
    """grad_weight by convx_direct_weight_outer (the output channels as lanes, every product of
    im2col taken): threads take shares of the batch, each summing a partial."""
    cdef int level = _level(), team = _team(n_threads, batch), t
    cdef Py_ssize_t part_size, buf_size, n0, n1
    cdef Py_ssize_t image_in = s.groups * s.c_in_g * s.height * s.width
    cdef Py_ssize_t image_out = s.groups * s.c_out_g * s.out_h * s.out_w
    if floating is float:
        part_size = convx_direct_outer_part_size_f(level, s)
        buf_size = convx_direct_outer_buffer_size_f(level, s)
        dtype = np.float32
    else:
        part_size = convx_direct_outer_part_size_d(level, s)
        buf_size = convx_direct_outer_buffer_size_d(level, s)
        dtype = np.float64
    cdef floating[::1] parts = np.zeros(team * part_size, dtype=dtype)
    cdef floating[::1] buf = np.empty(team * buf_size, dtype=dtype)
    with nogil:
        for t in prange(team, schedule='static', num_threads=team):
            n0 = t * batch // team
            n1 = (t + 1) * batch // team
            if floating is float:
                convx_direct_weight_outer_f(level, s, grad_out + n0 * image_out, x + n0 * image_in, n1 - n0,
                                            &parts[t * part_size], &buf[t * buf_size])
            else:
                convx_direct_weight_outer_d(level, s, grad_out + n0 * image_out, x + n0 * image_in, n1 - n0,
                                            &parts[t * part_size], &buf[t * buf_size])
        _sum_partials(&parts[0], team, part_size, &parts[0])
        if floating is float:
            convx_direct_outer_store_f(level, s, &parts[0], grad_weight)
        else:
            convx_direct_outer_store_d(level, s, &parts[0], grad_weight)
    return 1


cdef int _direct_input_mode(ConvGeometry* g, convx_conv_shape* a, bint is_float) noexcept nogil:
    """The direct kernel's mode for the input gradient of a stride-1 convolution, which is the
    convolution a of grad_out with W^T's taps reversed, padded by dilation * (kernel - 1) - pad
    (DIRECT_OFF for other strides, or where that padding is negative)."""
    if g.stride_h != 1 or g.stride_w != 1:
        return DIRECT_OFF
    a.groups = g.groups
    a.c_in_g = g.c_out_g
    a.c_out_g = g.c_in_g
    a.height = g.out_h
    a.width = g.out_w
    a.out_h = g.height
    a.out_w = g.width
    a.kh = g.kernel_h
    a.kw = g.kernel_w
    a.sh = 1
    a.sw = 1
    a.ph = g.dilation_h * (g.kernel_h - 1) - g.pad_h
    a.pw = g.dilation_w * (g.kernel_w - 1) - g.pad_w
    a.dh = g.dilation_h
    a.dw = g.dilation_w
    return _direct_choice(a, g.batch, is_float)


cdef int _direct_input_gradient(const floating* grad_out, const floating* weight, floating* grad_in,
                                ConvGeometry* g, convx_conv_shape* a, int n_threads, int mode) except -1:
    """grad_in by _direct_conv on the shape _direct_input_mode gave: its output channel is W's
    input channel ci, its input channel W's output channel co, its tap t W's tap taps - 1 - t.
    Returns 0 where _direct_conv declines (a weight not finite)."""
    cdef Py_ssize_t taps = g.kernel_h * g.kernel_w
    return _direct_conv(grad_out, weight + (taps - 1), g.c_out_g * g.col_rows, taps, g.col_rows, -1, NULL, grad_in,
                        a, g.batch, n_threads, mode)


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


cdef inline convx_conv_shape _conv_shape(ConvGeometry* g) noexcept nogil:
    cdef convx_conv_shape s
    s.groups = g.groups
    s.c_in_g = g.c_in_g
    s.c_out_g = g.c_out_g
    s.height = g.height
    s.width = g.width
    s.out_h = g.out_h
    s.out_w = g.out_w
    s.kh = g.kernel_h
    s.kw = g.kernel_w
    s.sh = g.stride_h
    s.sw = g.stride_w
    s.ph = g.pad_h
    s.pw = g.pad_w
    s.dh = g.dilation_h
    s.dw = g.dilation_w
    return s


cdef inline void _valid_range(Py_ssize_t offset, Py_ssize_t stride, Py_ssize_t size, Py_ssize_t out_size,
                              Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """[lo, hi): the outputs o with 0 <= o * stride + offset < size."""
    cdef Py_ssize_t first = 0, last
    if offset < 0:
        first = (-offset + stride - 1) // stride
    if size - 1 - offset < 0:
        last = 0
    else:
        last = (size - 1 - offset) // stride + 1
    if first > out_size:
        first = out_size
    if last > out_size:
        last = out_size
    if last < first:
        last = first
    lo[0] = first
    hi[0] = last


cdef struct ConvGeometry:
    Py_ssize_t batch, groups
    Py_ssize_t c_in_g, c_out_g
    Py_ssize_t height, width, out_h, out_w
    Py_ssize_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w
    Py_ssize_t col_rows        # c_in_g * kernel_h * kernel_w
    Py_ssize_t chunk_rows      # output rows per tile (out_h unless one image is split)
    Py_ssize_t chunk_cols      # output columns per tile (out_w unless one row's columns exceed COL_BUDGET)
    Py_ssize_t block           # whole images per tile (1 unless planes are small)
    bint direct_1x1            # the input plane is already the column matrix


cdef inline void _clip_range(Py_ssize_t col0, Py_ssize_t col1, Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """[lo, hi) := [lo, hi) within [col0, col1), as offsets from col0."""
    lo[0] = min(max(lo[0], col0), col1) - col0
    hi[0] = min(max(hi[0], col0 + lo[0]), col1) - col0


cdef void _im2col(const floating* image, ConvGeometry* g, Py_ssize_t row0, Py_ssize_t row1, Py_ssize_t col0,
                  Py_ssize_t col1, floating* col, Py_ssize_t ld) noexcept nogil:
    """col[(c, i, j) * ld + (oh - row0) * (col1 - col0) + ow - col0] = image[c, oh*sh - ph + i*dh, ow*sw - pw + j*dw]
    (0 outside) for output rows [row0, row1) and columns [col0, col1)."""
    cdef Py_ssize_t c, i, j, oh, ow, ih, iw0, lo, hi, n = col1 - col0
    cdef floating* dst
    cdef const floating* src
    for c in range(g.c_in_g):
        for i in range(g.kernel_h):
            for j in range(g.kernel_w):
                iw0 = j * g.dilation_w - g.pad_w
                _valid_range(iw0, g.stride_w, g.width, g.out_w, &lo, &hi)
                _clip_range(col0, col1, &lo, &hi)
                dst = col + ((c * g.kernel_h + i) * g.kernel_w + j) * ld
                for oh in range(row0, row1):
                    ih = oh * g.stride_h - g.pad_h + i * g.dilation_h
                    if ih < 0 or ih >= g.height:
                        memset(dst, 0, n * sizeof(floating))
                    else:
                        # output column col0 + ow reads src[ow * stride_w]
                        src = image + (c * g.height + ih) * g.width + iw0 + col0 * g.stride_w
                        for ow in range(lo):
                            dst[ow] = 0
                        if g.stride_w == 1:
                            for ow in range(lo, hi):
                                dst[ow] = src[ow]
                        elif g.stride_w == 2:
                            # A literal stride lets the compiler vectorise the gather.
                            for ow in range(lo, hi):
                                dst[ow] = src[2 * ow]
                        else:
                            for ow in range(lo, hi):
                                dst[ow] = src[ow * g.stride_w]
                        for ow in range(hi, n):
                            dst[ow] = 0
                    dst += n


cdef void _col2im(const floating* col, ConvGeometry* g, Py_ssize_t row0, Py_ssize_t row1, Py_ssize_t col0,
                  Py_ssize_t col1, floating* image, Py_ssize_t ld) noexcept nogil:
    """image[c, oh*sh - ph + i*dh, ow*sw - pw + j*dw] += col[(c, i, j) * ld + (oh - row0) * (col1 - col0) + ow - col0]
    (adjoint of _im2col)."""
    cdef Py_ssize_t c, i, j, oh, ow, ih, iw0, lo, hi, n = col1 - col0
    cdef const floating* src
    cdef floating* dst
    for c in range(g.c_in_g):
        for i in range(g.kernel_h):
            for j in range(g.kernel_w):
                iw0 = j * g.dilation_w - g.pad_w
                _valid_range(iw0, g.stride_w, g.width, g.out_w, &lo, &hi)
                _clip_range(col0, col1, &lo, &hi)
                src = col + ((c * g.kernel_h + i) * g.kernel_w + j) * ld
                for oh in range(row0, row1):
                    ih = oh * g.stride_h - g.pad_h + i * g.dilation_h
                    if ih >= 0 and ih < g.height:
                        dst = image + (c * g.height + ih) * g.width + iw0 + col0 * g.stride_w
                        if g.stride_w == 1:
                            for ow in range(lo, hi):
                                dst[ow] += src[ow]
                        elif g.stride_w == 2:
                            for ow in range(lo, hi):
                                dst[2 * ow] += src[ow]
                        else:
                            for ow in range(lo, hi):
                                dst[ow * g.stride_w] += src[ow]
                    src += n


cdef ConvGeometry _geometry(Py_ssize_t batch, Py_ssize_t c_in, Py_ssize_t height, Py_ssize_t width,
                            Py_ssize_t c_out, Py_ssize_t kernel_h, Py_ssize_t kernel_w,
                            Py_ssize_t out_h, Py_ssize_t out_w, int groups,
                            int stride_h, int stride_w, int pad_h, int pad_w,
                            int dilation_h, int dilation_w, int n_threads):
    cdef ConvGeometry g
    cdef Py_ssize_t n_out = out_h * out_w
    cdef Py_ssize_t per_image, most, wanted
    g.batch = batch
    g.groups = groups
    g.c_in_g = c_in // groups
    g.c_out_g = c_out // groups
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
    g.col_rows = g.c_in_g * kernel_h * kernel_w
    g.direct_1x1 = (kernel_h == 1 and kernel_w == 1 and stride_h == 1 and stride_w == 1
                    and pad_h == 0 and pad_w == 0 and out_h == height and out_w == width)
    g.chunk_rows = out_h
    g.chunk_cols = out_w
    if not g.direct_1x1 and g.col_rows * n_out > COL_BUDGET:
        g.chunk_rows = max(1, COL_BUDGET // (g.col_rows * out_w))
        if g.col_rows * out_w > COL_BUDGET:
            # A kernel much larger than the image (padded as far): the columns of one output row
            # would be kernel x output width, a multiple of the weight (a 256x256 kernel over a
            # 1x1 image with padding 255: 256 MiB per thread). Tiles of a row's columns instead.
            g.chunk_cols = max(1, COL_BUDGET // g.col_rows)
    g.block = 1
    if n_out < MIN_GEMM_COLS and batch > 1:
        wanted = (MIN_GEMM_COLS + n_out - 1) // n_out
        per_image = (g.col_rows + g.c_out_g) * n_out
        most = max(1, COL_BUDGET // per_image)
        g.block = min(wanted, most, (batch + n_threads - 1) // n_threads)
        if g.block > 1:
            g.direct_1x1 = False
            # The block tiles take whole images (and their scratch is sized so); the budget
            # test above already implies this, stated here because the tiles rely on it.
            g.chunk_rows = out_h
            g.chunk_cols = out_w
    return g


cdef void _split_rows(ConvGeometry* g, int n_threads) noexcept nogil:
    """Shrink the row chunks so that a batch smaller than the team still gives every thread work."""
    cdef Py_ssize_t want
    if g.batch >= n_threads or g.block > 1:
        return
    want = (n_threads + g.batch - 1) // g.batch
    if want > g.out_h:
        want = g.out_h
    g.chunk_rows = min(g.chunk_rows, (g.out_h + want - 1) // want)


cdef inline Py_ssize_t _n_blocks(ConvGeometry* g, int n_threads) noexcept nogil:
    """Tiles of whole images: at most g.block images each, and (where the batch allows) a
    multiple of the team, so that no thread idles while another finishes a last block."""
    cdef Py_ssize_t n_blocks = (g.batch + g.block - 1) // g.block
    if g.block > 1 and n_blocks % n_threads:
        n_blocks = min(g.batch, (n_blocks + n_threads - 1) // n_threads * n_threads)
    return n_blocks


cdef inline Py_ssize_t _block_start(ConvGeometry* g, Py_ssize_t item, Py_ssize_t n_blocks) noexcept nogil:
    """First image of tile ``item`` of ``n_blocks`` near-equal tiles of the batch."""
    return item * g.batch // n_blocks


cdef inline Py_ssize_t _col_size(ConvGeometry* g) noexcept nogil:
    if g.direct_1x1:
        return 1
    return g.col_rows * g.block * g.chunk_rows * g.chunk_cols


cdef inline Py_ssize_t _gathered_size(ConvGeometry* g) noexcept nogil:
    if g.block == 1:
        return 1
    return g.c_out_g * g.block * g.out_h * g.out_w


cdef void _gather(const floating* grad_out, ConvGeometry* g, Py_ssize_t grp, Py_ssize_t n_images,
                  floating* gathered) noexcept nogil:
    """gathered[m, b * n_out + p] = grad_out[b, grp * c_out_g + m, p]: the block's images side by side."""
    cdef Py_ssize_t n_out = g.out_h * g.out_w
    cdef Py_ssize_t image_stride = g.groups * g.c_out_g * n_out
    cdef Py_ssize_t ld = n_images * n_out
    cdef Py_ssize_t b, m, p
    cdef const floating* src
    cdef floating* dst
    for m in range(g.c_out_g):
        for b in range(n_images):
            src = grad_out + b * image_stride + (grp * g.c_out_g + m) * n_out
            dst = gathered + m * ld + b * n_out
            for p in range(n_out):
                dst[p] = src[p]


cdef void _scatter(const floating* gathered, ConvGeometry* g, Py_ssize_t grp, Py_ssize_t n_images,
                   floating* out) noexcept nogil:
    """out[b, grp * c_out_g + m, p] = gathered[m, b * n_out + p] (inverse of _gather)."""
    cdef Py_ssize_t n_out = g.out_h * g.out_w
    cdef Py_ssize_t image_stride = g.groups * g.c_out_g * n_out
    cdef Py_ssize_t ld = n_images * n_out
    cdef Py_ssize_t b, m, p
    cdef const floating* src
    cdef floating* dst
    for m in range(g.c_out_g):
        for b in range(n_images):
            src = gathered + m * ld + b * n_out
            dst = out + b * image_stride + (grp * g.c_out_g + m) * n_out
            for p in range(n_out):
                dst[p] = src[p]


cdef void _columns(const floating* images, ConvGeometry* g, Py_ssize_t grp, Py_ssize_t n_images,
                   Py_ssize_t row0, Py_ssize_t row1, Py_ssize_t col0, Py_ssize_t col1, floating* col) noexcept nogil:
    """The column matrix of group grp for images [0, n_images), output rows [row0, row1) and columns
    [col0, col1), side by side."""
    cdef Py_ssize_t plane = g.height * g.width
    cdef Py_ssize_t n_cols = (row1 - row0) * (col1 - col0)
    cdef Py_ssize_t b
    for b in range(n_images):
        _im2col(images + (b * g.groups + grp) * g.c_in_g * plane, g, row0, row1, col0, col1,
                col + b * n_cols, n_images * n_cols)


cdef void _forward_tile(const floating* x, const floating* weight, floating* out, ConvGeometry* g,
                        Py_ssize_t n_images, Py_ssize_t row0, Py_ssize_t row1,
                        floating* col, floating* gathered) noexcept nogil:
    """out[b, grp, :, rows] = W_grp @ im2col(x[b, grp], rows) for the tile's images b and every group,
    by BLAS (convx's own GEMM packs its columns itself: _implicit_conv)."""
    cdef Py_ssize_t plane = g.height * g.width
    cdef Py_ssize_t n_out = g.out_h * g.out_w
    cdef Py_ssize_t n_cols = (row1 - row0) * g.out_w
    cdef Py_ssize_t grp, col0, col1
    cdef const floating* w_grp
    for grp in range(g.groups):
        w_grp = weight + grp * g.c_out_g * g.col_rows
        if g.direct_1x1:
            _gemm(False, False, g.c_out_g, n_cols, g.col_rows, 1, w_grp, g.col_rows,
                  x + grp * g.c_in_g * plane + row0 * g.out_w, plane,
                  0, out + grp * g.c_out_g * n_out + row0 * g.out_w, n_out)
            continue
        if n_images > 1:
            _columns(x, g, grp, n_images, row0, row1, 0, g.out_w, col)
            _gemm(False, False, g.c_out_g, n_images * n_cols, g.col_rows, 1, w_grp, g.col_rows,
                  col, n_images * n_cols, 0, gathered, n_images * n_cols)
            _scatter(gathered, g, grp, n_images, out)
            continue
        # whole rows, or (chunk_cols < out_w, one row) a part of one
        col0 = 0
        while col0 < g.out_w:
            col1 = min(col0 + g.chunk_cols, g.out_w)
            n_cols = (row1 - row0) * (col1 - col0)
            _columns(x, g, grp, 1, row0, row1, col0, col1, col)
            _gemm(False, False, g.c_out_g, n_cols, g.col_rows, 1, w_grp, g.col_rows, col, n_cols,
                  0, out + grp * g.c_out_g * n_out + row0 * g.out_w + col0, n_out)
            col0 = col1


cdef void _backward_input_tile(const floating* grad_out, WeightProduct* wp, floating* grad_in,
                               ConvGeometry* g, Py_ssize_t n_images,
                               floating* col, floating* gathered, floating* work) noexcept nogil:
    """grad_in[b] = col2im(W_grp^T @ grad_out[b, grp]) for the tile's whole images; grad_in is overwritten."""
    cdef Py_ssize_t plane = g.height * g.width
    cdef Py_ssize_t n_out = g.out_h * g.out_w
    cdef Py_ssize_t image_in = g.groups * g.c_in_g * plane
    cdef Py_ssize_t grp, row0, row1, col0, col1, n_cols, b
    if not g.direct_1x1:
        memset(grad_in, 0, n_images * image_in * sizeof(floating))
    for grp in range(g.groups):
        if n_images > 1:
            _gather(grad_out, g, grp, n_images, gathered)
            _product(wp, grp, n_images * n_out, gathered, n_images * n_out, col, n_images * n_out, work)
            for b in range(n_images):
                _col2im(col + b * n_out, g, 0, g.out_h, 0, g.out_w, grad_in + b * image_in + grp * g.c_in_g * plane,
                        n_images * n_out)
            continue
        row0 = 0
        while row0 < g.out_h:
            row1 = min(row0 + g.chunk_rows, g.out_h)
            if g.direct_1x1:
                n_cols = (row1 - row0) * g.out_w
                _product(wp, grp, n_cols, grad_out + grp * g.c_out_g * n_out + row0 * g.out_w, n_out,
                         grad_in + grp * g.c_in_g * plane + row0 * g.out_w, plane, work)
                row0 = row1
                continue
            col0 = 0
            while col0 < g.out_w:
                col1 = min(col0 + g.chunk_cols, g.out_w)
                n_cols = (row1 - row0) * (col1 - col0)
                _product(wp, grp, n_cols, grad_out + grp * g.c_out_g * n_out + row0 * g.out_w + col0, n_out,
                         col, n_cols, work)
                _col2im(col, g, row0, row1, col0, col1, grad_in + grp * g.c_in_g * plane, n_cols)
                col0 = col1
            row0 = row1


cdef void _backward_weight_tile(const floating* grad_out, const floating* x, floating* grad_weight,
                                ConvGeometry* g, Py_ssize_t n_images,
                                floating* col, floating* gathered) noexcept nogil:
    """grad_weight_grp += grad_out[b, grp] @ im2col(x[b, grp])^T summed over the tile's whole images."""
    cdef Py_ssize_t plane = g.height * g.width
    cdef Py_ssize_t n_out = g.out_h * g.out_w
    cdef Py_ssize_t grp, row0, row1, col0, col1, n_cols
    cdef floating* dw_grp
    for grp in range(g.groups):
        dw_grp = grad_weight + grp * g.c_out_g * g.col_rows
        if n_images > 1:
            _gather(grad_out, g, grp, n_images, gathered)
            _columns(x, g, grp, n_images, 0, g.out_h, 0, g.out_w, col)
            _gemm(False, True, g.c_out_g, g.col_rows, n_images * n_out, 1, gathered, n_images * n_out,
                  col, n_images * n_out, 1, dw_grp, g.col_rows)
            continue
        row0 = 0
        while row0 < g.out_h:
            row1 = min(row0 + g.chunk_rows, g.out_h)
            if g.direct_1x1:
                n_cols = (row1 - row0) * g.out_w
                _gemm(False, True, g.c_out_g, g.col_rows, n_cols, 1,
                      grad_out + grp * g.c_out_g * n_out + row0 * g.out_w, n_out,
                      x + grp * g.c_in_g * plane + row0 * g.out_w, plane, 1, dw_grp, g.col_rows)
                row0 = row1
                continue
            col0 = 0
            while col0 < g.out_w:
                col1 = min(col0 + g.chunk_cols, g.out_w)
                n_cols = (row1 - row0) * (col1 - col0)
                _columns(x, g, grp, 1, row0, row1, col0, col1, col)
                _gemm(False, True, g.c_out_g, g.col_rows, n_cols, 1,
                      grad_out + grp * g.c_out_g * n_out + row0 * g.out_w + col0, n_out, col, n_cols,
                      1, dw_grp, g.col_rows)
                col0 = col1
            row0 = row1


cdef extern from "_simd.h" nogil:
    void convx_prefetch(const void* p, size_t bytes)
    int convx_all_finite_f(const float* x, Py_ssize_t n)
    int convx_all_finite_d(const double* x, Py_ssize_t n)
    float convx_sum_f(const float* x, Py_ssize_t n)
    double convx_sum_d(const double* x, Py_ssize_t n)


cdef inline floating _plane_sum(const floating* plane, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return convx_sum_f(plane, n)
    else:
        return convx_sum_d(plane, n)


cdef void _bias_grad_images(const floating* grad_out, floating* grad_bias, Py_ssize_t n_images,
                            Py_ssize_t channels, Py_ssize_t n_out) noexcept nogil:
    cdef Py_ssize_t b, c
    for b in range(n_images):
        for c in range(channels):
            grad_bias[c] += _plane_sum(grad_out + (b * channels + c) * n_out, n_out)


cdef void _sum_partials(floating* partials, Py_ssize_t n_parts, Py_ssize_t size, floating* out) noexcept nogil:
    cdef Py_ssize_t t, i
    for i in range(size):
        out[i] = partials[i]
    for t in range(1, n_parts):
        for i in range(size):
            out[i] += partials[t * size + i]


cdef enum:
    # The implementations of the convolution entry points, as _forward_impl, _input_impl and
    # _weight_impl name them (the index of the name in IMPLEMENTATIONS).
    IMPL_NONE = 0
    IMPL_FLAT = 1               # _flat_conv / _flat_weight_gradient
    IMPL_PLANE = 2              # _plane_conv
    IMPL_DIRECT_ROWS = 3        # _direct_conv, tiles along output rows
    IMPL_DIRECT_IMAGES = 4      # _direct_conv, tiles across images
    IMPL_PACKED = 5             # _implicit_conv, _packed_input_gradient, _packed_weight_gradient
    IMPL_IM2COL = 6             # im2col / col2im tiles and a GEMM (convx's, or BLAS)
    IMPL_DIRECT_OUTER = 7       # _direct_outer_weight_gradient
    IMPL_DIRECT_BY_IMAGES = 8   # _direct_weight_gradient, threads split the batch
    IMPL_DIRECT_BY_CHANNELS = 9  # _direct_weight_gradient, threads split the output channels

IMPLEMENTATIONS = ("none", "flat", "plane", "direct-rows", "direct-images", "packed", "im2col", "direct-outer",
                   "direct-split-images", "direct-split-channels")

cdef extern from *:
    """
    /* What the calling thread's last convolution ran, per op (forward, input gradient, weight
       gradient): implementation * 4 + GEMM level, or -1. */
    static __thread int convx_thread_ran[3] = {-1, -1, -1};
    static void convx_set_ran(int op, int code) { convx_thread_ran[op] = code; }
    static int convx_get_ran(int op) { return convx_thread_ran[op]; }
    """
    void convx_set_ran(int op, int code) noexcept nogil
    int convx_get_ran(int op) noexcept nogil

cdef enum:
    OP_FORWARD = 0
    OP_INPUT = 1
    OP_WEIGHT = 2

CONV_OPS = ("forward", "input", "weight")


cdef inline void _ran(int op, int impl, int level) noexcept nogil:
    convx_set_ran(op, impl * 4 + level)


cdef str _impl_name(int code):
    if code < 0:
        return None
    impl, level = divmod(code, 4)
    return f"{GEMM_KERNELS[level]}/{IMPLEMENTATIONS[impl]}"


cdef int _forward_impl(convx_conv_shape* s, Py_ssize_t batch, bint is_float) noexcept nogil:
    """The implementation that takes the forward of shape s (where the data let it)."""
    cdef int mode
    if _flat_choice(s, batch, False, is_float):
        return IMPL_FLAT
    if _plane_choice(s, batch, is_float):
        return IMPL_PLANE
    mode = _direct_choice(s, batch, is_float)
    if mode == DIRECT_ROWS:
        return IMPL_DIRECT_ROWS
    if mode == DIRECT_IMAGES:
        return IMPL_DIRECT_IMAGES
    return IMPL_IM2COL if _level() == CONVX_GEMM_BLAS else IMPL_PACKED


cdef int _input_impl(ConvGeometry* g, convx_conv_shape* s, convx_conv_shape* adjoint, bint is_float,
                     int n_threads) noexcept nogil:
    """The implementation that takes the input gradient of g (s its shape); adjoint receives the
    shape of the direct kernels' convolution where they take it."""
    cdef int mode
    if _flat_choice(s, g.batch, False, is_float):
        return IMPL_FLAT
    mode = _direct_input_mode(g, adjoint, is_float) if g.batch else DIRECT_OFF
    if mode == DIRECT_ROWS:
        return IMPL_DIRECT_ROWS
    if mode == DIRECT_IMAGES:
        return IMPL_DIRECT_IMAGES
    if _packed_input(g, n_threads):
        return IMPL_PACKED
    return IMPL_IM2COL


cdef int _weight_impl(ConvGeometry* g, convx_conv_shape* s, bint is_float, int n_threads) noexcept nogil:
    """The implementation that takes the weight gradient of g (s its shape)."""
    cdef int split
    if g.groups * g.c_out_g * g.col_rows == 0:
        return IMPL_NONE
    if _flat_choice(s, g.batch, True, is_float):
        return IMPL_FLAT
    split = _direct_weight_choice(s, g.batch, is_float, n_threads)
    if split == DIRECT_OUTER:
        return IMPL_DIRECT_OUTER
    if split == DIRECT_BY_IMAGES:
        return IMPL_DIRECT_BY_IMAGES
    if split == DIRECT_BY_CHANNELS:
        return IMPL_DIRECT_BY_CHANNELS
    if _level() != CONVX_GEMM_BLAS and g.c_out_g >= 32 and g.c_out_g * g.col_rows <= PACKED_WEIGHT_MOST:
        return IMPL_PACKED
    return IMPL_IM2COL


def conv_implementation(str op, Py_ssize_t batch, Py_ssize_t c_in, Py_ssize_t height, Py_ssize_t width,
                        Py_ssize_t c_out, Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t out_h,
                        Py_ssize_t out_w, int groups, int stride_h, int stride_w, int pad_h, int pad_w,
                        int dilation_h, int dilation_w, bint is_float, int n_threads):
    """'level/implementation' that conv2d_forward ('forward'), conv2d_backward_input ('input') or
    conv2d_backward_params' weight gradient ('weight') takes for these sizes (as its arguments,
    already validated and cut as functional/conv.py cuts them), on finite data, under this
    thread's settings. Nothing is computed."""
    cdef ConvGeometry g = _geometry(batch, c_in, height, width, c_out, kernel_h, kernel_w, out_h, out_w, groups,
                                    stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, n_threads)
    cdef convx_conv_shape shape, adjoint
    cdef int impl
    if op == "forward":
        _split_rows(&g, n_threads)
        shape = _conv_shape(&g)
        impl = _forward_impl(&shape, g.batch, is_float)
    elif op == "input":
        shape = _conv_shape(&g)
        impl = _input_impl(&g, &shape, &adjoint, is_float, n_threads)
    elif op == "weight":
        shape = _conv_shape(&g)
        impl = _weight_impl(&g, &shape, is_float, n_threads)
    else:
        raise ValueError(f"op must be one of {CONV_OPS}, got {op!r}")
    return _impl_name(impl * 4 + (CONVX_GEMM_BLAS if op == "weight" and impl == IMPL_IM2COL else _level()))


def conv_ran():
    """{'forward': ..., 'input': ..., 'weight': ...}: what the calling thread's last
    conv2d_forward, input gradient and weight gradient ran ('level/implementation'; None before
    any)."""
    return {name: _impl_name(convx_get_ran(op)) for op, name in enumerate(CONV_OPS)}


cdef class ConvConfig:
    """While entered, the calling thread's convolutions use GEMM kernel ``gemm`` and direct mode
    ``direct`` (None: as before, which outside any ConvConfig is the process-wide setting of
    set_gemm_kernel / set_direct_conv); the thread's previous settings come back on exit. Other
    threads are not affected."""
    cdef int level, mode, previous_level, previous_mode
    cdef bint held

    def __init__(self, gemm=None, direct=None):
        if gemm is None:
            self.level = -1
        elif gemm not in GEMM_KERNELS:
            raise ValueError(f"gemm kernel must be one of {', '.join(map(repr, GEMM_KERNELS))}, got {gemm!r}")
        else:
            self.level = GEMM_KERNELS.index(gemm)
            if self.level > _gemm_supported:
                raise ValueError(f"this CPU does not run the {gemm!r} kernel; it runs "
                                 f"{GEMM_KERNELS[:_gemm_supported + 1]}")
        if direct is None:
            self.mode = -1
        elif direct not in DIRECT_MODES:
            raise ValueError(f"direct conv mode must be one of {', '.join(map(repr, DIRECT_MODES))}, got {direct!r}")
        else:
            self.mode = DIRECT_MODES.index(direct)

    def __enter__(self):
        if self.held:
            raise RuntimeError("this ConvConfig is already entered; make a new one per use")
        self.previous_level = convx_get_thread_gemm_level()
        self.previous_mode = convx_get_thread_direct_mode()
        convx_set_thread_config(self.previous_level if self.level < 0 else self.level,
                                self.previous_mode if self.mode < 0 else self.mode)
        self.held = True
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        if self.held:
            self.held = False
            convx_set_thread_config(self.previous_level, self.previous_mode)
        return False

    def __dealloc__(self):
        if self.held:
            self.held = False
            convx_set_thread_config(self.previous_level, self.previous_mode)


def supported_gemm_kernels():
    """The GEMM kernels this CPU runs, in GEMM_KERNELS' order."""
    return GEMM_KERNELS[:_gemm_supported + 1]


def conv2d_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] weight,
                   const floating[::1] bias, floating[:, :, :, ::1] out,
                   int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w,
                   int groups, int n_threads):
    """out[n, co] = bias[co] + sum_{ci in group(co), i, j} w[co, ci, i, j] * x_padded[n, ci, oh*s + i*d, ow*s + j*d]."""
    cdef ConvGeometry g = _geometry(x.shape[0], x.shape[1], x.shape[2], x.shape[3], weight.shape[0],
                                    weight.shape[2], weight.shape[3], out.shape[2], out.shape[3], groups,
                                    stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, n_threads)
    _split_rows(&g, n_threads)
    cdef Py_ssize_t col_size = _col_size(&g), gathered_size = _gathered_size(&g)
    cdef Py_ssize_t n_out = g.out_h * g.out_w
    cdef Py_ssize_t c_out = out.shape[1]
    cdef Py_ssize_t n_chunks = (g.out_h + g.chunk_rows - 1) // g.chunk_rows
    cdef Py_ssize_t n_blocks = _n_blocks(&g, n_threads)
    cdef Py_ssize_t item, n, n_images, row0, row1, b, c, p, tid
    cdef bint has_bias = bias.shape[0] > 0
    cdef floating* out_b
    cdef convx_conv_shape shape = _conv_shape(&g)
    cdef int impl = _forward_impl(&shape, g.batch, floating is float), level = _level()
    if impl == IMPL_FLAT:
        _ran(OP_FORWARD, impl, level)
        _flat_conv(&x[0, 0, 0, 0], weight, False, &bias[0] if has_bias else NULL, &out[0, 0, 0, 0], &shape, g.batch,
                   n_threads)
        return
    if impl == IMPL_PLANE:
        _ran(OP_FORWARD, impl, level)
        _plane_conv(&x[0, 0, 0, 0], &weight[0, 0, 0, 0], &bias[0] if has_bias else NULL, &out[0, 0, 0, 0], &shape,
                    g.batch, n_threads)
        return
    cdef Py_ssize_t taps = g.kernel_h * g.kernel_w
    if (impl == IMPL_DIRECT_ROWS or impl == IMPL_DIRECT_IMAGES) and _direct_conv(
            &x[0, 0, 0, 0], &weight[0, 0, 0, 0], g.c_out_g * g.col_rows, g.col_rows, taps, 1,
            &bias[0] if has_bias else NULL, &out[0, 0, 0, 0], &shape, g.batch, n_threads,
            DIRECT_ROWS if impl == IMPL_DIRECT_ROWS else DIRECT_IMAGES):
        _ran(OP_FORWARD, impl, level)
        return
    cdef WeightProduct wp
    packed = _pack_weight(weight, groups, False, &wp)
    _ran(OP_FORWARD, IMPL_IM2COL if wp.level == CONVX_GEMM_BLAS else IMPL_PACKED, wp.level)
    if wp.level != CONVX_GEMM_BLAS:
        _implicit_conv(&x[0, 0, 0, 0] if g.batch else NULL, &wp, &bias[0] if has_bias else NULL,
                       &out[0, 0, 0, 0] if g.batch else NULL, &shape, g.batch, n_threads)
        return
    n_threads = max(1, min(n_threads, n_blocks * n_chunks))
    dtype = np.asarray(out).dtype
    cdef floating[::1] col = np.empty(n_threads * col_size, dtype=dtype)
    cdef floating[::1] gathered = np.empty(n_threads * gathered_size, dtype=dtype)
    with _blas_limit(True):
        with nogil, parallel(num_threads=n_threads):
            tid = threadid()
            for item in prange(n_blocks * n_chunks, schedule='static'):
                n = _block_start(&g, item // n_chunks, n_blocks)
                n_images = _block_start(&g, item // n_chunks + 1, n_blocks) - n
                row0 = (item % n_chunks) * g.chunk_rows
                row1 = min(row0 + g.chunk_rows, g.out_h)
                _forward_tile(&x[n, 0, 0, 0], &weight[0, 0, 0, 0], &out[n, 0, 0, 0], &g, n_images, row0, row1,
                              &col[tid * col_size], &gathered[tid * gathered_size])
                if has_bias:
                    for b in range(n_images):
                        out_b = &out[n + b, 0, 0, 0]
                        for c in range(c_out):
                            for p in range(row0 * g.out_w, row1 * g.out_w):
                                out_b[c * n_out + p] += bias[c]


def conv2d_backward_input(const floating[:, :, :, ::1] grad_out, const floating[:, :, :, ::1] weight,
                          floating[:, :, :, ::1] grad_in,
                          int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w,
                          int groups, int n_threads):
    """grad_in = col2im(W^T @ grad_out): the full correlation of grad_out (dilated by the stride) with the flipped kernel."""
    cdef ConvGeometry g = _geometry(grad_in.shape[0], grad_in.shape[1], grad_in.shape[2], grad_in.shape[3],
                                    weight.shape[0], weight.shape[2], weight.shape[3],
                                    grad_out.shape[2], grad_out.shape[3], groups,
                                    stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, n_threads)
    cdef Py_ssize_t col_size = _col_size(&g), gathered_size = _gathered_size(&g)
    cdef Py_ssize_t n_blocks = _n_blocks(&g, n_threads)
    cdef Py_ssize_t item, n, tid
    cdef convx_conv_shape shape = _conv_shape(&g), adjoint
    cdef int impl = _input_impl(&g, &shape, &adjoint, floating is float, n_threads), level = _level()
    if impl == IMPL_FLAT:
        _ran(OP_INPUT, impl, level)
        _flat_conv(&grad_out[0, 0, 0, 0], weight, True, NULL, &grad_in[0, 0, 0, 0], &shape, g.batch, n_threads)
        return
    if (impl == IMPL_DIRECT_ROWS or impl == IMPL_DIRECT_IMAGES) and _direct_input_gradient(
            &grad_out[0, 0, 0, 0], &weight[0, 0, 0, 0], &grad_in[0, 0, 0, 0], &g, &adjoint, n_threads,
            DIRECT_ROWS if impl == IMPL_DIRECT_ROWS else DIRECT_IMAGES):
        _ran(OP_INPUT, impl, level)
        return
    if impl != IMPL_IM2COL and _packed_input(&g, n_threads):
        _ran(OP_INPUT, IMPL_PACKED, level)
        _packed_input_gradient(&grad_out[0, 0, 0, 0], &weight[0, 0, 0, 0], &grad_in[0, 0, 0, 0], &shape, g.batch,
                               n_threads)
        return
    cdef WeightProduct wp
    packed = _pack_weight(weight, groups, True, &wp)
    _ran(OP_INPUT, IMPL_IM2COL, wp.level)
    cdef Py_ssize_t work_size = _product_work_size(&wp, floating is float)
    n_threads = max(1, min(n_threads, n_blocks))
    dtype = np.asarray(grad_in).dtype
    cdef floating[::1] col = np.empty(n_threads * col_size, dtype=dtype)
    cdef floating[::1] gathered = np.empty(n_threads * gathered_size, dtype=dtype)
    cdef floating[::1] work = np.empty(n_threads * work_size, dtype=dtype)
    with _blas_limit(wp.level == CONVX_GEMM_BLAS):
        with nogil, parallel(num_threads=n_threads):
            tid = threadid()
            for item in prange(n_blocks, schedule='static'):
                n = _block_start(&g, item, n_blocks)
                _backward_input_tile(&grad_out[n, 0, 0, 0], &wp, &grad_in[n, 0, 0, 0], &g,
                                     _block_start(&g, item + 1, n_blocks) - n, &col[tid * col_size],
                                     &gathered[tid * gathered_size], &work[tid * work_size])


def conv2d_backward_params(const floating[:, :, :, ::1] grad_out, const floating[:, :, :, ::1] x,
                           const floating[:, :, :, ::1] weight,
                           floating[:, :, :, ::1] grad_in, floating[:, :, :, ::1] grad_weight,
                           floating[::1] grad_bias,
                           int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w,
                           int groups, int n_threads):
    """grad_weight = sum_n grad_out[n] @ im2col(x[n])^T, grad_bias = sum_{n, h, w} grad_out,
    and, when grad_in has a batch, grad_in = col2im(W^T @ grad_out), in one pass over the batch.

    ``grad_weight`` and ``grad_bias`` are overwritten; a zero-length ``grad_bias`` or
    zero-batch ``grad_in`` skips that gradient.
    """
    cdef ConvGeometry g = _geometry(x.shape[0], x.shape[1], x.shape[2], x.shape[3], grad_weight.shape[0],
                                    grad_weight.shape[2], grad_weight.shape[3],
                                    grad_out.shape[2], grad_out.shape[3], groups,
                                    stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, n_threads)
    cdef Py_ssize_t col_size = _col_size(&g), gathered_size = _gathered_size(&g)
    cdef Py_ssize_t n_out = g.out_h * g.out_w
    cdef Py_ssize_t c_out = grad_weight.shape[0]
    cdef Py_ssize_t w_size = c_out * g.col_rows
    cdef Py_ssize_t n_blocks = _n_blocks(&g, n_threads)
    cdef Py_ssize_t item, n, n_images, tid
    cdef bint want_bias = grad_bias.shape[0] > 0
    # the input gradient, when wanted, goes through _flat_conv, _direct_input_gradient, _packed_input_gradient or
    # the tiles below
    cdef convx_conv_shape shape = _conv_shape(&g), adjoint
    cdef int level = _level()
    cdef int input_impl = (_input_impl(&g, &shape, &adjoint, floating is float, n_threads) if grad_in.shape[0] > 0
                           else IMPL_NONE)
    # convx's blocks sweep a per-thread partial of the whole (transposed) gradient for every
    # GKC pixels: BLAS does better with large gradients, or few output channels to fill a strip.
    cdef int weight_impl = _weight_impl(&g, &shape, floating is float, n_threads)
    cdef bint flat = input_impl == IMPL_FLAT
    if flat:
        _flat_conv(&grad_out[0, 0, 0, 0], weight, True, NULL, &grad_in[0, 0, 0, 0], &shape, g.batch, n_threads)
    cdef bint direct_input = input_impl == IMPL_DIRECT_ROWS or input_impl == IMPL_DIRECT_IMAGES
    if direct_input and not _direct_input_gradient(&grad_out[0, 0, 0, 0], &weight[0, 0, 0, 0], &grad_in[0, 0, 0, 0],
                                                   &g, &adjoint, n_threads,
                                                   DIRECT_ROWS if input_impl == IMPL_DIRECT_ROWS else DIRECT_IMAGES):
        direct_input = False
        input_impl = IMPL_PACKED if _packed_input(&g, n_threads) else IMPL_IM2COL
    cdef bint packed_input = input_impl == IMPL_PACKED
    cdef bint want_input = input_impl == IMPL_IM2COL
    cdef WeightProduct wp
    packed = _pack_weight(weight, groups, True, &wp) if want_input else None
    cdef Py_ssize_t work_size = _product_work_size(&wp, floating is float) if want_input else 1
    cdef bint weight_done = False
    if weight_impl == IMPL_FLAT:
        weight_done = _flat_weight_gradient(&grad_out[0, 0, 0, 0], &x[0, 0, 0, 0], &shape, g.batch,
                                            &grad_weight[0, 0, 0, 0], n_threads)
    elif weight_impl == IMPL_DIRECT_OUTER:
        weight_done = _direct_outer_weight_gradient(&grad_out[0, 0, 0, 0], &x[0, 0, 0, 0], &shape, g.batch,
                                                    &grad_weight[0, 0, 0, 0], n_threads)
    elif weight_impl == IMPL_DIRECT_BY_IMAGES or weight_impl == IMPL_DIRECT_BY_CHANNELS:
        weight_done = _direct_weight_gradient(&grad_out[0, 0, 0, 0], &x[0, 0, 0, 0], &shape, g.batch,
                                              &grad_weight[0, 0, 0, 0], n_threads,
                                              DIRECT_BY_IMAGES if weight_impl == IMPL_DIRECT_BY_IMAGES
                                              else DIRECT_BY_CHANNELS)
    cdef bint packed_weight = (not weight_done and level != CONVX_GEMM_BLAS and w_size > 0
                               and g.c_out_g >= 32 and g.c_out_g * g.col_rows <= PACKED_WEIGHT_MOST)
    if packed_weight:
        _packed_weight_gradient(&grad_out[0, 0, 0, 0], &x[0, 0, 0, 0], &shape, g.batch, &grad_weight[0, 0, 0, 0],
                                n_threads)
    if w_size > 0:
        # the tiles' weight products are BLAS's at every level
        _ran(OP_WEIGHT, weight_impl if weight_done else (IMPL_PACKED if packed_weight else IMPL_IM2COL),
             level if weight_done or packed_weight else CONVX_GEMM_BLAS)
    if grad_in.shape[0] > 0:
        _ran(OP_INPUT, input_impl, wp.level if want_input else level)
    weight_done = weight_done or packed_weight
    if packed_input:
        _packed_input_gradient(&grad_out[0, 0, 0, 0], &weight[0, 0, 0, 0], &grad_in[0, 0, 0, 0], &shape, g.batch,
                               n_threads)
    if weight_done and not (want_bias or want_input):
        return
    n_threads = max(1, min(n_threads, n_blocks))
    dtype = np.asarray(grad_weight).dtype
    cdef floating[::1] col = np.empty(n_threads * col_size, dtype=dtype)
    cdef floating[::1] gathered = np.empty(n_threads * gathered_size, dtype=dtype)
    cdef floating[::1] work = np.empty(n_threads * work_size, dtype=dtype)
    cdef floating[::1] w_parts = np.zeros(1 if weight_done else n_threads * w_size, dtype=dtype)
    cdef floating[::1] b_parts = np.zeros(n_threads * c_out, dtype=dtype)
    with _blas_limit(not weight_done or (want_input and wp.level == CONVX_GEMM_BLAS)):
        with nogil, parallel(num_threads=n_threads):
            tid = threadid()
            for item in prange(n_blocks, schedule='static'):
                n = _block_start(&g, item, n_blocks)
                n_images = _block_start(&g, item + 1, n_blocks) - n
                if not weight_done:
                    _backward_weight_tile(&grad_out[n, 0, 0, 0], &x[n, 0, 0, 0], &w_parts[tid * w_size], &g,
                                          n_images, &col[tid * col_size], &gathered[tid * gathered_size])
                if want_bias:
                    _bias_grad_images(&grad_out[n, 0, 0, 0], &b_parts[tid * c_out], n_images, c_out, n_out)
                if want_input:
                    _backward_input_tile(&grad_out[n, 0, 0, 0], &wp, &grad_in[n, 0, 0, 0], &g,
                                         n_images, &col[tid * col_size], &gathered[tid * gathered_size],
                                         &work[tid * work_size])
    with nogil:
        if not weight_done:
            _sum_partials(&w_parts[0], n_threads, w_size, &grad_weight[0, 0, 0, 0])
        if want_bias:
            _sum_partials(&b_parts[0], n_threads, c_out, &grad_bias[0])


def conv2d_backward_bias(const floating[:, :, :, ::1] grad_out, floating[::1] grad_bias, int n_threads):
    """grad_bias[c] = sum_{n, h, w} grad_out[n, c, h, w]."""
    cdef Py_ssize_t batch = grad_out.shape[0], channels = grad_out.shape[1]
    cdef Py_ssize_t n_out = grad_out.shape[2] * grad_out.shape[3]
    cdef Py_ssize_t c, n
    cdef floating total
    with nogil:
        for c in prange(channels, schedule='static', num_threads=_team(n_threads, channels)):
            total = 0
            for n in range(batch):
                total = total + _plane_sum(&grad_out[n, c, 0, 0], n_out)
            grad_bias[c] = total
