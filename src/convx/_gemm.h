/* convx's own single-threaded GEMM, C = A @ B, for the convolution's products, in the layout of
 * a blocked BLAS (Goto's scheme, as in BLIS): A (the weights, the same for every tile of a call)
 * is packed once per call into panels of MR rows; each call packs B in blocks of KC x NC into
 * strips of NR columns, and a register tile of MR x NR accumulates over KC with broadcasts of A
 * and vector loads of B.
 *
 * Every thread runs its own GEMM on its own tile, so that no BLAS thread pool sits between the
 * OpenMP threads and the cores, and the weights are not repacked per image as a BLAS call would
 * do. The kernels are written for AVX-512 and AVX2+FMA, compiled with function-level target
 * attributes so that the default build stays baseline x86-64, and picked at run time: AVX-512
 * where the CPU has it, else AVX2+FMA; elsewhere, and away from GCC/Clang on x86-64, the callers
 * use BLAS (see set_gemm_kernel in _conv.pxi).
 */
#ifndef CONVX_GEMM_H
#define CONVX_GEMM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "_simd.h"
#include "_elementwise.h"

enum { CONVX_GEMM_BLAS = 0, CONVX_GEMM_AVX2 = 1, CONVX_GEMM_AVX512 = 2 };

/* A convolution's geometry, as in ConvGeometry (_conv.pxi); the padding may be negative. The
 * direct kernels (convx_direct_conv_*) also read x_last and out_last: whether the input, and the
 * output, are channels last (N, H, W, C) rather than (N, C, H, W); the others take channels first. */
typedef struct {
    ptrdiff_t groups, c_in_g, c_out_g, height, width, out_h, out_w;
    ptrdiff_t kh, kw, sh, sw, ph, pw, dh, dw;
    int x_last, out_last;
    /* Channels last, the output may be one phase of a larger plane (the input gradient of a
     * strided convolution, _conv_direct.pxi): output (oh, ow) is then pixel (oh * o_sh, ow * o_sw)
     * of a plane of o_h x o_w pixels. Otherwise o_h, o_w are out_h, out_w and o_sh, o_sw 1. */
    ptrdiff_t o_h, o_w, o_sh, o_sw;
    /* Channels first, the direct kernels' step from one output channel to the next where the
     * output is one depth slice of a volume (_conv3d.pxi); 0: out_h * out_w, the plane. */
    ptrdiff_t o_cs;
} convx_conv_shape;

/* Elements from one image of the direct kernels' output to the next, from one output row to the
 * next, and from one output pixel to the next. */
static inline ptrdiff_t convx_out_image(const convx_conv_shape *s) {
    return s->groups * s->c_out_g * (s->out_last ? s->o_h * s->o_w : s->out_h * s->out_w);
}

/* Elements from one output channel of the direct kernels to the next. */
static inline ptrdiff_t convx_out_channel(const convx_conv_shape *s) {
    return s->out_last ? 1 : s->o_cs ? s->o_cs : s->out_h * s->out_w;
}

static inline ptrdiff_t convx_out_row(const convx_conv_shape *s) {
    return s->out_last ? s->o_sh * s->o_w * s->groups * s->c_out_g : s->out_w;
}

static inline ptrdiff_t convx_out_px(const convx_conv_shape *s) {
    return s->out_last ? s->o_sw * s->groups * s->c_out_g : 1;
}

/* An activation the direct kernels apply to each register tile before storing it
 * (convx_activation_forward's kind and parameters); NULL where there is none. */
typedef struct {
    int kind;
    double p0, p1;
} convx_epilogue;

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define CONVX_GEMM_X86 1
#include <immintrin.h>
#else
#define CONVX_GEMM_X86 0
#endif

/* The best kernel this CPU runs. */
static int convx_gemm_detect(void) {
#if CONVX_GEMM_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        return CONVX_GEMM_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return CONVX_GEMM_AVX2;
#endif
    return CONVX_GEMM_BLAS;
}

/* A 1x1 kernel with stride 1 and no padding reads each input plane as it is, so runs of
 * columns may cross output rows. */
static inline int convx_conv_flat(const convx_conv_shape *s) {
    return s->kh == 1 && s->kw == 1 && s->sh == 1 && s->sw == 1 && s->ph == 0 && s->pw == 0 &&
           s->out_w == s->width && s->out_h == s->height;
}

/* The run of columns from column q (see convx_pack_columns): its image n, output row oh and
 * column ow; returns the columns to the end of its output row (of its plane when flat). */
static inline ptrdiff_t convx_run_start(const convx_conv_shape *s, int flat, ptrdiff_t q, ptrdiff_t *n, ptrdiff_t *oh,
                                        ptrdiff_t *ow) {
    const ptrdiff_t n_out = s->out_h * s->out_w, pos = q % n_out;
    *n = q / n_out;
    *oh = flat ? 0 : pos / s->out_w;
    *ow = flat ? pos : pos % s->out_w;
    return (flat ? n_out : s->out_w) - *ow;
}

/* A run of a column block: columns [t, t + len) of the block (t from the block's first column),
 * along one output row (one plane when flat) within one strip of NR columns; their image's
 * group's input planes start base elements into the input (or its gradient), and tap (0, 0)
 * of the run's first column sits at input row ih, column iw. */
typedef struct {
    ptrdiff_t t, len, base, ih, iw;
} convx_run;

/* The runs of the columns [q0, q0 + nc) of group grp's column matrix, cut where output rows (or
 * planes, when flat) and strips of nr columns end; returns their number, at most
 * nc + nc / nr + 1. */
static inline ptrdiff_t convx_block_runs(const convx_conv_shape *s, int flat, ptrdiff_t grp, ptrdiff_t q0,
                                         ptrdiff_t nc, ptrdiff_t nr, convx_run *run) {
    ptrdiff_t runs = 0;
    for (ptrdiff_t q = 0; q < nc; runs++) {
        ptrdiff_t n, oh, ow;
        ptrdiff_t len = convx_run_start(s, flat, q0 + q, &n, &oh, &ow);
        if (len > nc - q) len = nc - q;
        if (len > nr - q % nr) len = nr - q % nr;
        run[runs].t = q;
        run[runs].len = len;
        run[runs].base = (n * s->groups + grp) * s->c_in_g * s->height * s->width;
        run[runs].ih = oh * s->sh - s->ph;
        run[runs].iw = ow * s->sw - s->pw;
        q += len;
    }
    return runs;
}

/* [lo, hi): the t in [0, len) whose tap, input row ih and column iw + t * sw, lies inside the
 * input (none when the row is outside); every t of a flat run. */
static inline void convx_run_range(const convx_conv_shape *s, int flat, ptrdiff_t ih, ptrdiff_t iw, ptrdiff_t len,
                                   ptrdiff_t *lo, ptrdiff_t *hi) {
    *lo = 0;
    *hi = len;
    if (flat)
        return;
    if (ih < 0 || ih >= s->height) {
        *hi = 0;
        return;
    }
    if (iw < 0) *lo = (-iw + s->sw - 1) / s->sw;
    if (iw + (len - 1) * s->sw >= s->width) *hi = iw >= s->width ? 0 : (s->width - 1 - iw) / s->sw + 1;
    if (*lo > len) *lo = len;
    if (*hi < *lo) *hi = *lo;
}

/* Rows and columns of a zero-padded copy of an input plane: the top (left) padding, the plane,
 * and zeros down to the last row (column) a window reads, which lies past the same padding again
 * where the padding is asymmetric ('same' with an even kernel: the output's size carries it). */
static inline ptrdiff_t convx_padded_height(const convx_conv_shape *s) {
    const ptrdiff_t reach = (s->out_h - 1) * s->sh + (s->kh - 1) * s->dh + 1;
    return reach > s->ph + s->height ? reach : s->ph + s->height;
}

static inline ptrdiff_t convx_padded_width(const convx_conv_shape *s) {
    const ptrdiff_t reach = (s->out_w - 1) * s->sw + (s->kw - 1) * s->dw + 1;
    return reach > s->pw + s->width ? reach : s->pw + s->width;
}

/* Depth (input channels per group x taps) convx_plane_conv takes at most. */
#define CONVX_PLANE_DEPTH 256

/* Taps of a kernel convx_direct_conv_* take at most. */
#define CONVX_DIRECT_TAPS 128

/* Taps of the 3-D direct kernel (convx_direct_conv3d_rows: kd * kh * kw), and its depth taps. */
#define CONVX_DIRECT3D_TAPS 512
#define CONVX_DIRECT3D_DEPTH_TAPS 16

/* The depth axis of a 3-D convolution for convx_direct_conv3d_rows: input depth, kernel depth,
 * stride, leading padding and dilation, and the input slices [lo, hi) it reads (the others count
 * as zeros: a band of grad_out's slices in the input gradient; [0, depth) otherwise). */
typedef struct {
    ptrdiff_t depth, kd, sd, pd, dd, lo, hi;
} convx_depth_axis;
/* Segments (runs along one output row) of one tile of convx_direct_weight_images at most. */
#define CONVX_DIRECT_SEGS 512
/* Bytes of input rows (channels last in the image buffer) and output-gradient rows (a cache line a
 * pixel) one band of output rows of convx_direct_weight_images reads, at most, with grad_out channels
 * last: every tile of output channels and block of input channels reads the band again, which then
 * comes from L2. Whole images (the channels-first band) took 2-3x longer on large ones: 16 images of
 * 56x56, weight gradient 256->64 1x1 26.5 ms whole, 9.8-10.8 in bands of 2-8 rows; 64->256 1x1 27.0
 * against 9.0-11.3; 64->64 3x3 16.2 against 14.2-15.2 (Xeon family 6 model 167, 2 threads, medians of
 * 7; channels first, flat or direct, 8.3 / 10.7 / 12.2). */
#define CONVX_DIRECT_LAST_BAND_BYTES (128 * 1024)

/* Pixels of convx_direct_conv_rows's tiles for a register tile of mr rows: mr, or mr - 1 where
 * that covers the output row with fewer (14, 28 pixels wide: 7 tiles of 7 lanes, not 8). */
static inline ptrdiff_t convx_direct_row_tile(const convx_conv_shape *s, ptrdiff_t mr) {
    if (mr <= 2)
        return mr;
    const ptrdiff_t full = (s->out_w + mr - 1) / mr * mr, short_ = (s->out_w + mr - 2) / (mr - 1) * (mr - 1);
    return short_ < full ? mr - 1 : mr;
}

/* Columns of a row of convx_direct_conv_rows's channels-last buffer: the padding, the input
 * row, and zero columns out to the last one a tile reads (mr: the register tile's rows). */
static inline ptrdiff_t convx_direct_buffer_width(const convx_conv_shape *s, ptrdiff_t mr) {
    const ptrdiff_t tile = convx_direct_row_tile(s, mr), tiles = (s->out_w + tile - 1) / tile;
    const ptrdiff_t reach = (tiles * tile - 1) * s->sw + (s->kw - 1) * s->dw + 1;
    return reach > s->width + s->pw ? reach : s->width + s->pw;
}

/* Elements of convx_direct_conv_rows's buffer for chunks of at most rows output rows. */
static inline size_t convx_direct_buffer_size(const convx_conv_shape *s, ptrdiff_t mr, ptrdiff_t rows) {
    ptrdiff_t in_rows = (rows - 1) * s->sh + (s->kh - 1) * s->dh + 1;
    if (in_rows > s->height) in_rows = s->height;
    return (size_t)in_rows * (size_t)convx_direct_buffer_width(s, mr) * (size_t)(s->groups * s->c_in_g);
}

#define CONVX_GEMM_JOIN2(a, b) a##_##b
#define CONVX_GEMM_JOIN(a, b) CONVX_GEMM_JOIN2(a, b)

#if CONVX_GEMM_X86

/* Lanes [lo, hi) of 16 (either bound may lie outside [0, 16)). */
static inline unsigned convx_mask16(ptrdiff_t lo, ptrdiff_t hi) {
    if (lo < 0) lo = 0;
    if (hi > 16) hi = 16;
    return hi <= lo ? 0u : ((1u << hi) - 1u) & ~((1u << lo) - 1u);
}

/* The four 128-bit lanes L of v0..v3 gathered as out[L] = [v0.L, v1.L, v2.L, v3.L]. */
#define CONVX_LANES_TRANSPOSE(SHUF, V, v0, v1, v2, v3, out)                                               \
    do {                                                                                                  \
        const V x0 = SHUF(v0, v1, 0x44), x1 = SHUF(v0, v1, 0xEE);                                         \
        const V y0 = SHUF(v2, v3, 0x44), y1 = SHUF(v2, v3, 0xEE);                                         \
        out[0] = SHUF(x0, y0, 0x88);                                                                      \
        out[1] = SHUF(x0, y0, 0xDD);                                                                      \
        out[2] = SHUF(x1, y1, 0x88);                                                                      \
        out[3] = SHUF(x1, y1, 0xDD);                                                                      \
    } while (0)

/* dst[j * ldd + i] = src[i * ld + j] for i, j < 16. */
__attribute__((target("avx512f"))) static inline void convx_transpose16_f(const float *src, ptrdiff_t ld,
                                                                           float *dst, ptrdiff_t ldd) {
    __m512 r[16], t[16], out[4];
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + i * ld);
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    /* u[4g + c], lane L: column 4L + c of rows 4g..4g+3 */
    for (int g = 0; g < 16; g += 4) {
        const __m512d a = _mm512_castps_pd(t[g]), b = _mm512_castps_pd(t[g + 1]);
        const __m512d c = _mm512_castps_pd(t[g + 2]), d = _mm512_castps_pd(t[g + 3]);
        r[g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int c = 0; c < 4; c++) {
        CONVX_LANES_TRANSPOSE(_mm512_shuffle_f32x4, __m512, r[c], r[4 + c], r[8 + c], r[12 + c], out);
        for (int lane = 0; lane < 4; lane++) _mm512_storeu_ps(dst + (4 * lane + c) * ldd, out[lane]);
    }
}

/* dst[j * ldd + i] = src[i * ld + j] for i, j < 8. */
__attribute__((target("avx512f"))) static inline void convx_transpose8_d(const double *src, ptrdiff_t ld,
                                                                          double *dst, ptrdiff_t ldd) {
    __m512d r[8], t[8], out[4];
    for (int i = 0; i < 8; i++) r[i] = _mm512_loadu_pd(src + i * ld);
    /* t[2g + c], lane L: column 2L + c of rows 2g, 2g+1 */
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm512_unpacklo_pd(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_pd(r[i], r[i + 1]);
    }
    for (int c = 0; c < 2; c++) {
        CONVX_LANES_TRANSPOSE(_mm512_shuffle_f64x2, __m512d, t[c], t[2 + c], t[4 + c], t[6 + c], out);
        for (int lane = 0; lane < 4; lane++) _mm512_storeu_pd(dst + (2 * lane + c) * ldd, out[lane]);
    }
}

#define GN(name) CONVX_GEMM_JOIN(name, f512)
#define GT float
#define GACT convx_activation_forward_f
#define GV __m512
#define GVL 16
#define GKC 256
#define GMR 8
#define GNV 2
#define GFV 3
#define GWA 4
#define GWB 4
#define GREDUCE _mm512_reduce_add_ps
#define GSTREAM _mm512_stream_ps
#define GNC 384
#define GMC 128
#define GTARGET __attribute__((target("avx512f")))
#define GLOAD _mm512_loadu_ps
#define GSTORE _mm512_storeu_ps
#define GFMA _mm512_fmadd_ps
#define GSET1 _mm512_set1_ps
#define GZERO _mm512_setzero_ps
#define GADD _mm512_add_ps
#define GMASK __mmask16
#define GMASK_LOAD _mm512_maskz_loadu_ps
#define GMASK_STORE _mm512_mask_storeu_ps
#define GMASK_RANGE(lo, hi) convx_mask16(lo, hi)
#define GMASK_EVEN 0x5555
#define GTRANSPOSE convx_transpose16_f
/* dst[r] = src[r * GNR] for r < 8: a column of a direct tile stored along an output row (a
 * gather and one store where the tile took 8 scalar copies per lane: VGG-style 3->32 forward,
 * batch 64, 0.96 -> 0.83 ms, deeper layers within noise; Xeon family 6 model 167) */
#define GCOLUMN8(dst, src)                                                                                \
    _mm256_storeu_ps((dst), _mm256_i32gather_ps((src), _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), \
                                                                           _mm256_set1_epi32(GNR)), 4))
#define GSPREAD_EVEN(v, half) \
    _mm512_maskz_expand_ps(0x5555, (half) ? _mm512_shuffle_f32x4(v, v, 0xEE) : (v))
#define GEVENS(a, b)                                                                                      \
    _mm512_permutex2var_ps(a, _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), b)
#include "_gemm_body.h"

#define GN(name) CONVX_GEMM_JOIN(name, d512)
#define GT double
#define GACT convx_activation_forward_d
#define GV __m512d
#define GVL 8
#define GKC 128
#define GMR 8
#define GNV 2
#define GFV 3
#define GWA 4
#define GWB 4
#define GREDUCE _mm512_reduce_add_pd
#define GSTREAM _mm512_stream_pd
#define GNC 384
#define GMC 128
#define GTARGET __attribute__((target("avx512f")))
#define GLOAD _mm512_loadu_pd
#define GSTORE _mm512_storeu_pd
#define GFMA _mm512_fmadd_pd
#define GSET1 _mm512_set1_pd
#define GZERO _mm512_setzero_pd
#define GADD _mm512_add_pd
#define GMASK __mmask8
#define GMASK_LOAD _mm512_maskz_loadu_pd
#define GMASK_STORE _mm512_mask_storeu_pd
#define GMASK_RANGE(lo, hi) ((__mmask8)convx_mask16(lo, hi))
#define GMASK_EVEN 0x55
#define GTRANSPOSE convx_transpose8_d
#define GSPREAD_EVEN(v, half) _mm512_maskz_expand_pd(0x55, (half) ? _mm512_shuffle_f64x2(v, v, 0xEE) : (v))
#define GEVENS(a, b) _mm512_permutex2var_pd(a, _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14), b)
#include "_gemm_body.h"

__attribute__((target("avx2,fma"))) static inline float convx_reduce8_f(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

__attribute__((target("avx2,fma"))) static inline double convx_reduce4_d(__m256d v) {
    const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

/* AVX2 has 16 vector registers: 6 x 2 accumulators, two of B and a broadcast (and 3 x 3 dot
 * products with three input rows and one of grad_out for convx_flat_weight). */
#define GN(name) CONVX_GEMM_JOIN(name, f256)
#define GT float
#define GACT convx_activation_forward_f
#define GV __m256
#define GVL 8
#define GKC 256
#define GMR 6
#define GNV 2
#define GFV 2
#define GWA 3
#define GWB 3
#define GREDUCE convx_reduce8_f
#define GSTREAM _mm256_stream_ps
#define GNC 384
#define GMC 128
#define GTARGET __attribute__((target("avx2,fma")))
#define GLOAD _mm256_loadu_ps
#define GSTORE _mm256_storeu_ps
#define GFMA _mm256_fmadd_ps
#define GSET1 _mm256_set1_ps
#define GZERO _mm256_setzero_ps
#define GADD _mm256_add_ps
#include "_gemm_body.h"

#define GN(name) CONVX_GEMM_JOIN(name, d256)
#define GT double
#define GACT convx_activation_forward_d
#define GV __m256d
#define GVL 4
#define GKC 128
#define GMR 6
#define GNV 2
#define GFV 2
#define GWA 3
#define GWB 3
#define GREDUCE convx_reduce4_d
#define GSTREAM _mm256_stream_pd
#define GNC 384
#define GMC 128
#define GTARGET __attribute__((target("avx2,fma")))
#define GLOAD _mm256_loadu_pd
#define GSTORE _mm256_storeu_pd
#define GFMA _mm256_fmadd_pd
#define GSET1 _mm256_set1_pd
#define GZERO _mm256_setzero_pd
#define GADD _mm256_add_pd
#include "_gemm_body.h"

/* One entry point per element type; level is CONVX_GEMM_AVX512 or CONVX_GEMM_AVX2. */
#define CONVX_GEMM_DISPATCH(T, S)                                                                         \
    static size_t convx_flat_work_size_##S(int level) {                                                   \
        return level == CONVX_GEMM_AVX512 ? convx_flat_work_size_##S##512() : convx_flat_work_size_##S##256(); \
    }                                                                                                     \
    static ptrdiff_t convx_flat_strips_##S(int level, const T *c, ptrdiff_t n_pix, int stream) {          \
        return level == CONVX_GEMM_AVX512 ? convx_flat_strips_##S##512(c, n_pix, stream)                  \
                                          : convx_flat_strips_##S##256(c, n_pix, stream);                 \
    }                                                                                                     \
    static void convx_flat_conv_##S(int level, ptrdiff_t groups, ptrdiff_t m, ptrdiff_t k, ptrdiff_t n_pix, \
                                    const T *packed, size_t group_size, const T *bias,                    \
                                    const convx_epilogue *epi, const T *b, ptrdiff_t b_image, T *c,       \
                                    ptrdiff_t c_image, int stream, ptrdiff_t i0, ptrdiff_t i1, T *work) { \
        if (level == CONVX_GEMM_AVX512)                                                                   \
            convx_flat_conv_##S##512(groups, m, k, n_pix, packed, group_size, bias, epi, b, b_image, c,   \
                                     c_image, stream, i0, i1, work);                                      \
        else                                                                                              \
            convx_flat_conv_##S##256(groups, m, k, n_pix, packed, group_size, bias, epi, b, b_image, c,   \
                                     c_image, stream, i0, i1, work);                                      \
    }                                                                                                     \
    static ptrdiff_t convx_flat_weight_blocks_##S(int level, ptrdiff_t c) {                               \
        return level == CONVX_GEMM_AVX512 ? convx_flat_weight_blocks_##S##512(c)                          \
                                          : convx_flat_weight_blocks_##S##256(c);                         \
    }                                                                                                     \
    static void convx_flat_weight_##S(int level, ptrdiff_t groups, ptrdiff_t m, ptrdiff_t c, ptrdiff_t n_pix, \
                                      ptrdiff_t batch, const T *gy, const T *x, T *gw, ptrdiff_t u0,      \
                                      ptrdiff_t u1) {                                                     \
        if (level == CONVX_GEMM_AVX512)                                                                   \
            convx_flat_weight_##S##512(groups, m, c, n_pix, batch, gy, x, gw, u0, u1);                    \
        else                                                                                              \
            convx_flat_weight_##S##256(groups, m, c, n_pix, batch, gy, x, gw, u0, u1);                    \
    }                                                                                                     \
    static size_t convx_direct_outer_part_size_##S(int level, const convx_conv_shape *s) {                \
        return level == CONVX_GEMM_AVX512 ? convx_direct_outer_part_size_##S##512(s)                      \
                                          : convx_direct_outer_part_size_##S##256(s);                     \
    }                                                                                                     \
    static size_t convx_direct_outer3d_buffer_size_##S(int level, const convx_conv_shape *s,              \
                                                       const convx_depth_axis *d, ptrdiff_t slices) {      \
        return level == CONVX_GEMM_AVX512 ? convx_direct_outer3d_buffer_size_##S##512(s, d, slices)       \
                                          : convx_direct_outer3d_buffer_size_##S##256(s, d, slices);      \
    }                                                                                                     \
    static void convx_direct_weight_outer3d_##S(int level, const convx_conv_shape *s, const convx_depth_axis *d, \
                                                const T *grad_out, const T *x, ptrdiff_t out_d, ptrdiff_t od0, \
                                                ptrdiff_t od1, T *part, T *buf) {                         \
        if (level == CONVX_GEMM_AVX512)                                                                   \
            convx_direct_weight_outer3d_##S##512(s, d, grad_out, x, out_d, od0, od1, part, buf);          \
        else                                                                                              \
            convx_direct_weight_outer3d_##S##256(s, d, grad_out, x, out_d, od0, od1, part, buf);          \
    }                                                                                                     \
    static void convx_direct_outer_store_##S(int level, const convx_conv_shape *s, const T *part,         \
                                             T *grad_weight) {                                            \
        if (level == CONVX_GEMM_AVX512)                                                                   \
            convx_direct_outer_store_##S##512(s, part, grad_weight);                                      \
        else                                                                                              \
            convx_direct_outer_store_##S##256(s, part, grad_weight);                                      \
    }                                                                                                     \
    static size_t convx_direct_weight_part_size_##S(int level, const convx_conv_shape *s, ptrdiff_t tiles) { \
        return level == CONVX_GEMM_AVX512 ? convx_direct_weight_part_size_##S##512(s, tiles)              \
                                          : convx_direct_weight_part_size_##S##256(s, tiles);             \
    }                                                                                                     \
    static ptrdiff_t convx_direct_weight_tiles_##S(int level, const convx_conv_shape *s) {                \
        return level == CONVX_GEMM_AVX512 ? convx_direct_weight_tiles_##S##512(s)                         \
                                          : convx_direct_weight_tiles_##S##256(s);                        \
    }                                                                                                     \
    static size_t convx_direct_weight_image_size_##S(int level, const convx_conv_shape *s) {              \
        return level == CONVX_GEMM_AVX512 ? convx_direct_weight_image_size_##S##512(s)                    \
                                          : convx_direct_weight_image_size_##S##256(s);                   \
    }                                                                                                     \
    static void convx_direct_weight_images_##S(int level, const convx_conv_shape *s, const T *grad_out,   \
                                               const T *x, ptrdiff_t n_images, ptrdiff_t u0, ptrdiff_t u1, \
                                               T *part, T *buf) {                                         \
        if (level == CONVX_GEMM_AVX512)                                                                   \
            convx_direct_weight_images_##S##512(s, grad_out, x, n_images, u0, u1, part, buf);             \
        else                                                                                              \
            convx_direct_weight_images_##S##256(s, grad_out, x, n_images, u0, u1, part, buf);             \
    }                                                                                                     \
    static int convx_direct_weight_store_##S(int level, const convx_conv_shape *s, const T *part,         \
                                             ptrdiff_t u0, ptrdiff_t u1, T *grad_weight) {                \
        return level == CONVX_GEMM_AVX512 ? convx_direct_weight_store_##S##512(s, part, u0, u1, grad_weight) \
                                          : convx_direct_weight_store_##S##256(s, part, u0, u1, grad_weight); \
    }                                                                                                     \
    static size_t convx_direct_weight_size_##S(int level, ptrdiff_t m, ptrdiff_t k) {                     \
        return level == CONVX_GEMM_AVX512 ? convx_direct_weight_size_##S##512(m, k)                       \
                                          : convx_direct_weight_size_##S##256(m, k);                      \
    }                                                                                                     \
    static ptrdiff_t convx_direct_lanes_##S(int level) {                                                  \
        return level == CONVX_GEMM_AVX512 ? convx_direct_lanes_##S##512() : convx_direct_lanes_##S##256(); \
    }                                                                                                     \
    static ptrdiff_t convx_direct_rows_##S(int level) {                                                   \
        return level == CONVX_GEMM_AVX512 ? convx_direct_rows_##S##512() : convx_direct_rows_##S##256();  \
    }                                                                                                     \
    static int convx_direct_pack_weight_##S(int level, const T *w, ptrdiff_t m, ptrdiff_t channels,       \
                                            ptrdiff_t taps, ptrdiff_t s_m, ptrdiff_t s_c, ptrdiff_t s_t,  \
                                            ptrdiff_t blk, T *packed) {                                   \
        return level == CONVX_GEMM_AVX512                                                                 \
                   ? convx_direct_pack_weight_##S##512(w, m, channels, taps, s_m, s_c, s_t, blk, packed)  \
                   : convx_direct_pack_weight_##S##256(w, m, channels, taps, s_m, s_c, s_t, blk, packed); \
    }                                                                                                     \
    static void convx_direct_conv_rows_##S(int level, const convx_conv_shape *s, const T *packed,         \
                                           size_t group_size, const T *bias, const convx_epilogue *epi,   \
                                           const T *x, T *out, ptrdiff_t r0, ptrdiff_t r1, T *buf) {      \
        if (level == CONVX_GEMM_AVX512)                                                                   \
            convx_direct_conv_rows_##S##512(s, packed, group_size, bias, epi, x, out, r0, r1, buf);       \
        else                                                                                              \
            convx_direct_conv_rows_##S##256(s, packed, group_size, bias, epi, x, out, r0, r1, buf);       \
    }                                                                                                     \
    static void convx_direct_conv3d_rows_##S(int level, const convx_conv_shape *s, const convx_depth_axis *d, \
                                             const T *packed, size_t group_size, const T *bias,           \
                                             const convx_epilogue *epi, const T *x, T *out,               \
                                             ptrdiff_t out_slice, ptrdiff_t od0, ptrdiff_t od1, ptrdiff_t r0, \
                                             ptrdiff_t r1, T *buf) {                                      \
        if (level == CONVX_GEMM_AVX512)                                                                   \
            convx_direct_conv3d_rows_##S##512(s, d, packed, group_size, bias, epi, x, out, out_slice, od0, od1, \
                                              r0, r1, buf);                                               \
        else                                                                                              \
            convx_direct_conv3d_rows_##S##256(s, d, packed, group_size, bias, epi, x, out, out_slice, od0, od1, \
                                              r0, r1, buf);                                               \
    }                                                                                                     \
    static void convx_direct_row_nhwc_##S(int level, const T *src, ptrdiff_t plane, ptrdiff_t channels,   \
                                          ptrdiff_t width, T *dst, ptrdiff_t ld) {                        \
        if (level == CONVX_GEMM_AVX512)                                                                   \
            convx_direct_row_nhwc_##S##512(src, plane, channels, width, dst, ld);                         \
        else                                                                                              \
            convx_direct_row_nhwc_##S##256(src, plane, channels, width, dst, ld);                         \
    }                                                                                                     \
    static void convx_direct_conv_images_##S(int level, const convx_conv_shape *s, const T *packed,       \
                                             size_t group_size, const T *bias, const convx_epilogue *epi, \
                                             const T *x, T *out, ptrdiff_t n_images, ptrdiff_t blk0,      \
                                             ptrdiff_t blk1, T *buf) {                                    \
        if (level == CONVX_GEMM_AVX512)                                                                   \
            convx_direct_conv_images_##S##512(s, packed, group_size, bias, epi, x, out, n_images, blk0, blk1, \
                                              buf);                                                       \
        else                                                                                              \
            convx_direct_conv_images_##S##256(s, packed, group_size, bias, epi, x, out, n_images, blk0, blk1, \
                                              buf);                                                       \
    }                                                                                                     \
    static size_t convx_gemm_packed_size_##S(int level, ptrdiff_t m, ptrdiff_t k) {                       \
        return level == CONVX_GEMM_AVX512 ? convx_gemm_packed_size_##S##512(m, k)                         \
                                          : convx_gemm_packed_size_##S##256(m, k);                        \
    }                                                                                                     \
    static size_t convx_gemm_work_size_##S(int level) {                                                   \
        return level == CONVX_GEMM_AVX512 ? convx_gemm_work_size_##S##512() : convx_gemm_work_size_##S##256(); \
    }                                                                                                     \
    static void convx_gemm_pack_a_##S(int level, ptrdiff_t m, ptrdiff_t k, const T *a, ptrdiff_t rs,      \
                                      ptrdiff_t cs, T *packed) {                                          \
        if (level == CONVX_GEMM_AVX512)                                                                   \
            convx_gemm_pack_a_##S##512(m, k, a, rs, cs, packed);                                          \
        else                                                                                              \
            convx_gemm_pack_a_##S##256(m, k, a, rs, cs, packed);                                          \
    }                                                                                                     \
    static void convx_gemm_##S(int level, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const T *packed,         \
                               const T *b, ptrdiff_t ldb, T *c, ptrdiff_t ldc, int accumulate, T *work) { \
        if (level == CONVX_GEMM_AVX512)                                                                   \
            convx_gemm_##S##512(m, n, k, packed, b, ldb, c, ldc, accumulate, work);                       \
        else                                                                                              \
            convx_gemm_##S##256(m, n, k, packed, b, ldb, c, ldc, accumulate, work);                       \
    }                                                                                                     \
    static void convx_gemm_bt_##S(int level, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const T *packed,      \
                                  const T *b, ptrdiff_t ldb, T *c, ptrdiff_t ldc, int accumulate,         \
                                  T *work) {                                                              \
        if (level == CONVX_GEMM_AVX512)                                                                   \
            convx_gemm_bt_##S##512(m, n, k, packed, b, ldb, c, ldc, accumulate, work);                    \
        else                                                                                              \
            convx_gemm_bt_##S##256(m, n, k, packed, b, ldb, c, ldc, accumulate, work);                    \
    }                                                                                                     \
    static void convx_conv_block_##S(int level, const convx_conv_shape *s, const T *packed,               \
                                     size_t group_size, const T *bias, const convx_epilogue *epi,         \
                                     const T *x, T *out, ptrdiff_t q0, ptrdiff_t nc, T *work) {           \
        if (level == CONVX_GEMM_AVX512)                                                                   \
            convx_conv_block_##S##512(s, packed, group_size, bias, epi, x, out, q0, nc, work);            \
        else                                                                                              \
            convx_conv_block_##S##256(s, packed, group_size, bias, epi, x, out, q0, nc, work);            \
    }                                                                                                     \
    static void convx_gemm_pack_a_cyclic_##S(int level, ptrdiff_t m, ptrdiff_t k, const T *a, ptrdiff_t rcycle, \
                                             ptrdiff_t rs, ptrdiff_t rs2, ptrdiff_t kcycle, ptrdiff_t cs, \
                                             ptrdiff_t cs2, T *packed) {                                  \
        if (level == CONVX_GEMM_AVX512)                                                                   \
            convx_gemm_pack_a_cyclic_##S##512(m, k, a, rcycle, rs, rs2, kcycle, cs, cs2, packed);         \
        else                                                                                              \
            convx_gemm_pack_a_cyclic_##S##256(m, k, a, rcycle, rs, rs2, kcycle, cs, cs2, packed);         \
    }                                                                                                     \
    static void convx_conv_input_block_##S(int level, const convx_conv_shape *s, const T *packed,         \
                                           ptrdiff_t grp, ptrdiff_t c0, ptrdiff_t nch, const T *grad_out, \
                                           T *grad_in, ptrdiff_t q0, ptrdiff_t nc, T *work) {             \
        if (level == CONVX_GEMM_AVX512)                                                                   \
            convx_conv_input_block_##S##512(s, packed, grp, c0, nch, grad_out, grad_in, q0, nc, work);    \
        else                                                                                              \
            convx_conv_input_block_##S##256(s, packed, grp, c0, nch, grad_out, grad_in, q0, nc, work);    \
    }                                                                                                     \
    static ptrdiff_t convx_conv_block_cols_##S(int level) {                                               \
        return level == CONVX_GEMM_AVX512 ? convx_conv_block_cols_##S##512() : convx_conv_block_cols_##S##256(); \
    }                                                                                                     \
    static ptrdiff_t convx_conv_weight_cols_##S(int level) {                                              \
        return level == CONVX_GEMM_AVX512 ? convx_conv_weight_cols_##S##512() : convx_conv_weight_cols_##S##256(); \
    }                                                                                                     \
    static size_t convx_conv_weight_work_size_##S(int level, ptrdiff_t m) {                               \
        return level == CONVX_GEMM_AVX512 ? convx_conv_weight_work_size_##S##512(m)                       \
                                          : convx_conv_weight_work_size_##S##256(m);                      \
    }                                                                                                     \
    static void convx_conv_weight_block_##S(int level, const convx_conv_shape *s, const T *grad_out,      \
                                            const T *x, ptrdiff_t q0, ptrdiff_t nc, T *partial, T *work) { \
        if (level == CONVX_GEMM_AVX512)                                                                   \
            convx_conv_weight_block_##S##512(s, grad_out, x, q0, nc, partial, work);                      \
        else                                                                                              \
            convx_conv_weight_block_##S##256(s, grad_out, x, q0, nc, partial, work);                      \
    }                                                                                                     \
    static ptrdiff_t convx_plane_channels_##S(int level) {                                                \
        return level == CONVX_GEMM_AVX512 ? convx_plane_channels_##S##512() : convx_plane_channels_##S##256(); \
    }                                                                                                     \
    static ptrdiff_t convx_plane_lanes_##S(int level) {                                                   \
        return level == CONVX_GEMM_AVX512 ? convx_plane_lanes_##S##512() : convx_plane_lanes_##S##256();  \
    }                                                                                                     \
    static size_t convx_plane_weight_size_##S(int level, ptrdiff_t c_out_g, ptrdiff_t k) {                \
        return level == CONVX_GEMM_AVX512 ? convx_plane_weight_size_##S##512(c_out_g, k)                  \
                                          : convx_plane_weight_size_##S##256(c_out_g, k);                 \
    }                                                                                                     \
    static size_t convx_plane_buffer_size_##S(int level, const convx_conv_shape *s) {                     \
        return level == CONVX_GEMM_AVX512 ? convx_plane_buffer_size_##S##512(s)                           \
                                          : convx_plane_buffer_size_##S##256(s);                          \
    }                                                                                                     \
    static void convx_plane_pack_weight_##S(int level, const T *w, ptrdiff_t c_out_g, ptrdiff_t depth,    \
                                            T *packed) {                                                  \
        if (level == CONVX_GEMM_AVX512)                                                                   \
            convx_plane_pack_weight_##S##512(w, c_out_g, depth, packed);                                  \
        else                                                                                              \
            convx_plane_pack_weight_##S##256(w, c_out_g, depth, packed);                                  \
    }                                                                                                     \
    static void convx_plane_conv_##S(int level, const convx_conv_shape *s, const T *packed, size_t group_size, \
                                     const T *bias, const T *x, T *out, ptrdiff_t u0, ptrdiff_t u1, T *buf) { \
        if (level == CONVX_GEMM_AVX512)                                                                   \
            convx_plane_conv_##S##512(s, packed, group_size, bias, x, out, u0, u1, buf);                  \
        else                                                                                              \
            convx_plane_conv_##S##256(s, packed, group_size, bias, x, out, u0, u1, buf);                  \
    }

#else /* no kernels here: convx_gemm_detect() says BLAS, and these are never called */

#define CONVX_GEMM_DISPATCH(T, S)                                                                         \
    static size_t convx_flat_work_size_##S(int level) { return 0; }                                       \
    static ptrdiff_t convx_flat_strips_##S(int level, const T *c, ptrdiff_t n_pix, int stream) { return 0; } \
    static void convx_flat_conv_##S(int level, ptrdiff_t groups, ptrdiff_t m, ptrdiff_t k, ptrdiff_t n_pix, \
                                    const T *packed, size_t group_size, const T *bias,                    \
                                    const convx_epilogue *epi, const T *b, ptrdiff_t b_image, T *c,       \
                                    ptrdiff_t c_image, int stream, ptrdiff_t i0, ptrdiff_t i1, T *work) {} \
    static ptrdiff_t convx_flat_weight_blocks_##S(int level, ptrdiff_t c) { return 1; }                   \
    static void convx_flat_weight_##S(int level, ptrdiff_t groups, ptrdiff_t m, ptrdiff_t c, ptrdiff_t n_pix, \
                                      ptrdiff_t batch, const T *gy, const T *x, T *gw, ptrdiff_t u0,      \
                                      ptrdiff_t u1) {}                                                    \
    static size_t convx_direct_outer_part_size_##S(int level, const convx_conv_shape *s) { return 0; }    \
    static size_t convx_direct_outer3d_buffer_size_##S(int level, const convx_conv_shape *s,              \
                                                       const convx_depth_axis *d, ptrdiff_t slices) { return 0; } \
    static void convx_direct_weight_outer3d_##S(int level, const convx_conv_shape *s, const convx_depth_axis *d, \
                                                const T *grad_out, const T *x, ptrdiff_t out_d, ptrdiff_t od0, \
                                                ptrdiff_t od1, T *part, T *buf) {}                        \
    static void convx_direct_outer_store_##S(int level, const convx_conv_shape *s, const T *part,         \
                                             T *grad_weight) {}                                           \
    static size_t convx_direct_weight_part_size_##S(int level, const convx_conv_shape *s, ptrdiff_t tiles) { \
        return 0;                                                                                         \
    }                                                                                                     \
    static ptrdiff_t convx_direct_weight_tiles_##S(int level, const convx_conv_shape *s) { return 1; }    \
    static size_t convx_direct_weight_image_size_##S(int level, const convx_conv_shape *s) { return 0; }  \
    static void convx_direct_weight_images_##S(int level, const convx_conv_shape *s, const T *grad_out,   \
                                               const T *x, ptrdiff_t n_images, ptrdiff_t u0, ptrdiff_t u1, \
                                               T *part, T *buf) {}                                        \
    static int convx_direct_weight_store_##S(int level, const convx_conv_shape *s, const T *part,         \
                                             ptrdiff_t u0, ptrdiff_t u1, T *grad_weight) { return 0; }    \
    static size_t convx_direct_weight_size_##S(int level, ptrdiff_t m, ptrdiff_t k) { return 0; }         \
    static ptrdiff_t convx_direct_lanes_##S(int level) { return 1; }                                      \
    static ptrdiff_t convx_direct_rows_##S(int level) { return 1; }                                       \
    static int convx_direct_pack_weight_##S(int level, const T *w, ptrdiff_t m, ptrdiff_t channels,       \
                                            ptrdiff_t taps, ptrdiff_t s_m, ptrdiff_t s_c, ptrdiff_t s_t,  \
                                            ptrdiff_t blk, T *packed) { return 0; }                       \
    static void convx_direct_conv_rows_##S(int level, const convx_conv_shape *s, const T *packed,         \
                                           size_t group_size, const T *bias, const convx_epilogue *epi,   \
                                           const T *x, T *out, ptrdiff_t r0, ptrdiff_t r1, T *buf) {}     \
    static void convx_direct_conv3d_rows_##S(int level, const convx_conv_shape *s, const convx_depth_axis *d, \
                                             const T *packed, size_t group_size, const T *bias,           \
                                             const convx_epilogue *epi, const T *x, T *out,               \
                                             ptrdiff_t out_slice, ptrdiff_t od0, ptrdiff_t od1, ptrdiff_t r0, \
                                             ptrdiff_t r1, T *buf) {}                                     \
    static void convx_direct_row_nhwc_##S(int level, const T *src, ptrdiff_t plane, ptrdiff_t channels,   \
                                          ptrdiff_t width, T *dst, ptrdiff_t ld) {                        \
        for (ptrdiff_t c = 0; c < channels; c++)                                                          \
            for (ptrdiff_t iw = 0; iw < width; iw++) dst[iw * ld + c] = src[c * plane + iw];              \
    }                                                                                                     \
    static void convx_direct_conv_images_##S(int level, const convx_conv_shape *s, const T *packed,       \
                                             size_t group_size, const T *bias, const convx_epilogue *epi, \
                                             const T *x, T *out, ptrdiff_t n_images, ptrdiff_t blk0,      \
                                             ptrdiff_t blk1, T *buf) {}                                   \
    static size_t convx_gemm_packed_size_##S(int level, ptrdiff_t m, ptrdiff_t k) { return 0; }           \
    static size_t convx_gemm_work_size_##S(int level) { return 0; }                                       \
    static void convx_gemm_pack_a_##S(int level, ptrdiff_t m, ptrdiff_t k, const T *a, ptrdiff_t rs,      \
                                      ptrdiff_t cs, T *packed) {}                                         \
    static void convx_gemm_##S(int level, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const T *packed,         \
                               const T *b, ptrdiff_t ldb, T *c, ptrdiff_t ldc, int accumulate, T *work) {} \
    static void convx_gemm_bt_##S(int level, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const T *packed,      \
                                  const T *b, ptrdiff_t ldb, T *c, ptrdiff_t ldc, int accumulate,         \
                                  T *work) {}                                                             \
    static void convx_conv_block_##S(int level, const convx_conv_shape *s, const T *packed,               \
                                     size_t group_size, const T *bias, const convx_epilogue *epi,         \
                                     const T *x, T *out, ptrdiff_t q0, ptrdiff_t nc, T *work) {}          \
    static void convx_gemm_pack_a_cyclic_##S(int level, ptrdiff_t m, ptrdiff_t k, const T *a, ptrdiff_t rcycle, \
                                             ptrdiff_t rs, ptrdiff_t rs2, ptrdiff_t kcycle, ptrdiff_t cs, \
                                             ptrdiff_t cs2, T *packed) {}                                 \
    static void convx_conv_input_block_##S(int level, const convx_conv_shape *s, const T *packed,         \
                                           ptrdiff_t grp, ptrdiff_t c0, ptrdiff_t nch, const T *grad_out, \
                                           T *grad_in, ptrdiff_t q0, ptrdiff_t nc, T *work) {}            \
    static ptrdiff_t convx_conv_block_cols_##S(int level) { return 1; }                                   \
    static ptrdiff_t convx_conv_weight_cols_##S(int level) { return 1; }                                  \
    static size_t convx_conv_weight_work_size_##S(int level, ptrdiff_t m) { return 0; }                   \
    static void convx_conv_weight_block_##S(int level, const convx_conv_shape *s, const T *grad_out,      \
                                            const T *x, ptrdiff_t q0, ptrdiff_t nc, T *partial, T *work) {}                                                                                                     \
    static ptrdiff_t convx_plane_channels_##S(int level) { return 1; }                                    \
    static ptrdiff_t convx_plane_lanes_##S(int level) { return 1; }                                       \
    static size_t convx_plane_weight_size_##S(int level, ptrdiff_t c_out_g, ptrdiff_t k) { return 0; }    \
    static size_t convx_plane_buffer_size_##S(int level, const convx_conv_shape *s) { return 0; }         \
    static void convx_plane_pack_weight_##S(int level, const T *w, ptrdiff_t c_out_g, ptrdiff_t depth,    \
                                            T *packed) {}                                                 \
    static void convx_plane_conv_##S(int level, const convx_conv_shape *s, const T *packed, size_t group_size, \
                                     const T *bias, const T *x, T *out, ptrdiff_t u0, ptrdiff_t u1, T *buf) {}

#endif

CONVX_GEMM_DISPATCH(float, f)
CONVX_GEMM_DISPATCH(double, d)

#endif
