# Shared by every convolution algorithm: the calls into BLAS, the declarations of convx's GEMM,
# flat, plane and direct kernels (_gemm.h), the settings that choose among them (process-wide
# and per calling thread), and the bound on per-thread scratch.

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
    void convx_gemm_bt_f(int level, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float* packed,
                         const float* b, Py_ssize_t ldb, float* c, Py_ssize_t ldc, int accumulate, float* work)
    void convx_gemm_bt_d(int level, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const double* packed,
                         const double* b, Py_ssize_t ldb, double* c, Py_ssize_t ldc, int accumulate, double* work)
    ctypedef struct convx_conv_shape:
        Py_ssize_t groups, c_in_g, c_out_g, height, width, out_h, out_w
        Py_ssize_t kh, kw, sh, sw, ph, pw, dh, dw
        int x_last, out_last
        Py_ssize_t o_h, o_w, o_sh, o_sw, o_cs
    Py_ssize_t convx_out_image(const convx_conv_shape* s)
    ctypedef struct convx_epilogue:
        int kind
        double p0, p1
    Py_ssize_t convx_conv_block_cols_f(int level)
    Py_ssize_t convx_conv_block_cols_d(int level)
    void convx_conv_block_f(int level, const convx_conv_shape* s, const float* packed, size_t group_size,
                            const float* bias, const convx_epilogue* epi, const float* x, float* out, Py_ssize_t q0, Py_ssize_t nc,
                            float* work)
    void convx_conv_block_d(int level, const convx_conv_shape* s, const double* packed, size_t group_size,
                            const double* bias, const convx_epilogue* epi, const double* x, double* out, Py_ssize_t q0, Py_ssize_t nc,
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
        CONVX_DIRECT3D_TAPS
        CONVX_DIRECT3D_DEPTH_TAPS
    ctypedef struct convx_depth_axis:
        Py_ssize_t depth, kd, sd, pd, dd, lo, hi
    int convx_conv_flat(const convx_conv_shape* s)
    size_t convx_direct_outer_part_size_f(int level, const convx_conv_shape* s)
    size_t convx_direct_outer_part_size_d(int level, const convx_conv_shape* s)
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
                                  const float* bias, const convx_epilogue* epi, const float* x, float* out, Py_ssize_t r0, Py_ssize_t r1,
                                  float* buf)
    void convx_direct_conv_rows_d(int level, const convx_conv_shape* s, const double* packed, size_t group_size,
                                  const double* bias, const convx_epilogue* epi, const double* x, double* out, Py_ssize_t r0, Py_ssize_t r1,
                                  double* buf)
    size_t convx_direct_outer3d_buffer_size_f(int level, const convx_conv_shape* s, const convx_depth_axis* d,
                                              Py_ssize_t slices)
    size_t convx_direct_outer3d_buffer_size_d(int level, const convx_conv_shape* s, const convx_depth_axis* d,
                                              Py_ssize_t slices)
    void convx_direct_weight_outer3d_f(int level, const convx_conv_shape* s, const convx_depth_axis* d,
                                       const float* grad_out, const float* x, Py_ssize_t out_d, Py_ssize_t od0,
                                       Py_ssize_t od1, float* part, float* buf)
    void convx_direct_weight_outer3d_d(int level, const convx_conv_shape* s, const convx_depth_axis* d,
                                       const double* grad_out, const double* x, Py_ssize_t out_d, Py_ssize_t od0,
                                       Py_ssize_t od1, double* part, double* buf)
    void convx_direct_conv3d_rows_f(int level, const convx_conv_shape* s, const convx_depth_axis* d,
                                    const float* packed, size_t group_size, const float* bias,
                                    const convx_epilogue* epi, const float* x, float* out, Py_ssize_t out_slice,
                                    Py_ssize_t od0, Py_ssize_t od1, Py_ssize_t r0, Py_ssize_t r1, float* buf)
    void convx_direct_conv3d_rows_d(int level, const convx_conv_shape* s, const convx_depth_axis* d,
                                    const double* packed, size_t group_size, const double* bias,
                                    const convx_epilogue* epi, const double* x, double* out, Py_ssize_t out_slice,
                                    Py_ssize_t od0, Py_ssize_t od1, Py_ssize_t r0, Py_ssize_t r1, double* buf)
    void convx_direct_conv_images_f(int level, const convx_conv_shape* s, const float* packed, size_t group_size,
                                    const float* bias, const convx_epilogue* epi, const float* x, float* out, Py_ssize_t n_images,
                                    Py_ssize_t blk0, Py_ssize_t blk1, float* buf)
    void convx_direct_conv_images_d(int level, const convx_conv_shape* s, const double* packed, size_t group_size,
                                    const double* bias, const convx_epilogue* epi, const double* x, double* out, Py_ssize_t n_images,
                                    Py_ssize_t blk0, Py_ssize_t blk1, double* buf)
    void convx_direct_row_nhwc_f(int level, const float* src, Py_ssize_t plane, Py_ssize_t channels, Py_ssize_t width,
                                 float* dst, Py_ssize_t ld)
    void convx_direct_row_nhwc_d(int level, const double* src, Py_ssize_t plane, Py_ssize_t channels,
                                 Py_ssize_t width, double* dst, Py_ssize_t ld)
    size_t convx_flat_work_size_f(int level)
    size_t convx_flat_work_size_d(int level)
    Py_ssize_t convx_flat_strips_f(int level, const float* c, Py_ssize_t n_pix, int stream)
    Py_ssize_t convx_flat_strips_d(int level, const double* c, Py_ssize_t n_pix, int stream)
    void convx_flat_conv_f(int level, Py_ssize_t groups, Py_ssize_t m, Py_ssize_t k, Py_ssize_t n_pix,
                           const float* packed, size_t group_size, const float* bias, const convx_epilogue* epi,
                           const float* b,
                           Py_ssize_t b_image, float* c, Py_ssize_t c_image, int stream, Py_ssize_t i0,
                           Py_ssize_t i1, float* work)
    void convx_flat_conv_d(int level, Py_ssize_t groups, Py_ssize_t m, Py_ssize_t k, Py_ssize_t n_pix,
                           const double* packed, size_t group_size, const double* bias, const convx_epilogue* epi,
                           const double* b,
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
    /* A calling thread's own choice of GEMM level, direct mode and depthwise kernel (-1: the process-wide
       setting), set around one call by convx.autotune. The kernels' teams never read them:
       every choice is made, and every level passed on, before a parallel region starts. */
    static __thread int convx_thread_gemm_level = -1;
    static __thread int convx_thread_direct_mode = -1;
    static __thread int convx_thread_depthwise_mode = -1;
    static int convx_get_thread_gemm_level(void) { return convx_thread_gemm_level; }
    static int convx_get_thread_direct_mode(void) { return convx_thread_direct_mode; }
    static int convx_get_thread_depthwise_mode(void) { return convx_thread_depthwise_mode; }
    static void convx_set_thread_config(int level, int mode, int depthwise) {
        convx_thread_gemm_level = level;
        convx_thread_direct_mode = mode;
        convx_thread_depthwise_mode = depthwise;
    }
    """
    int convx_get_thread_gemm_level() noexcept nogil
    int convx_get_thread_direct_mode() noexcept nogil
    int convx_get_thread_depthwise_mode() noexcept nogil
    void convx_set_thread_config(int level, int mode, int depthwise) noexcept nogil


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
