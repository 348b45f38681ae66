/* Plane kernels of the direct (depthwise) convolution loops, compiled once per instruction-set level.
 *
 * The default build targets baseline x86-64 (SSE2) so that a wheel runs anywhere; on
 * GCC/x86-64 these small functions are cloned for AVX2+FMA and AVX-512 as well, and the
 * loader picks the best clone the CPU supports (an ifunc, resolved once). Elsewhere they are
 * plain functions. `omp simd` lets reductions vectorise without -ffast-math.
 */
#ifndef CONVX_SIMD_H
#define CONVX_SIMD_H

#include <stddef.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CONVX_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CONVX_CLONES
#endif

#if defined(_MSC_VER)
#define CONVX_RESTRICT __restrict
#define CONVX_SIMD
#define CONVX_SIMD_SUM(var)
#else
#define CONVX_RESTRICT __restrict__
#define CONVX_PRAGMA(x) _Pragma(#x)
#define CONVX_SIMD CONVX_PRAGMA(omp simd)
#define CONVX_SIMD_SUM(var) CONVX_PRAGMA(omp simd reduction(+:var))
#endif

/* Unroll the next loop n times (the register tiles' depth loops: their pointer steps and loop
 * test are a sixth of each step's instructions, and GCC does not unroll them by itself). */
#if defined(__clang__)
#define CONVX_UNROLL(n) CONVX_PRAGMA(unroll n)
#elif defined(__GNUC__)
#define CONVX_UNROLL(n) CONVX_PRAGMA(GCC unroll n)
#else
#define CONVX_UNROLL(n)
#endif


/* Ask for bytes from p into L2, a cache line at a time (a hint: nothing where the compiler
 * has no prefetch). */
static inline void convx_prefetch(const void *p, size_t bytes) {
#if defined(__GNUC__) || defined(__clang__)
    for (size_t i = 0; i < bytes; i += 64) __builtin_prefetch((const char *)p + i, 0, 2);
#else
    (void)p;
    (void)bytes;
#endif
}

/* Columns per register block of the 3x3 weight gradient (one AVX-512 vector of float). */
#define CONVX_DW_BLOCK 16

/* One call per plane, with the row loops inside, so that the short rows of a feature map do
 * not each pay for a call through the ifunc. lo[j], hi[j]: the outputs ow whose tap j lands
 * inside the input row, [lo, hi). Geometry as in ConvGeometry (_conv.pxi). */
#define CONVX_PLANE_KERNELS(T, SUFFIX)                                                                    \
    /* sum of x[0..n): a bias gradient's plane, in SIMD lanes (any order of the sum is within the         \
     * accuracy bound; one dependent chain of adds would run at a few cycles per element). */             \
    CONVX_CLONES static T convx_sum_##SUFFIX(const T *CONVX_RESTRICT x, ptrdiff_t n) {                    \
        T total = 0;                                                                                      \
        CONVX_SIMD_SUM(total) for (ptrdiff_t k = 0; k < n; k++) total += x[k];                            \
        return total;                                                                                     \
    }                                                                                                     \
    /* whether every x[0..n) is finite: x * 0 is 0 for finite x, NaN for NaN and +-inf */                \
    CONVX_CLONES static int convx_all_finite_##SUFFIX(const T *CONVX_RESTRICT x, ptrdiff_t n) {           \
        T total = 0;                                                                                      \
        CONVX_SIMD_SUM(total) for (ptrdiff_t k = 0; k < n; k++) total += x[k] * (T)0;                     \
        return total == 0;                                                                                \
    }                                                                                                     \
    /* acc[ow] += grad_out[oh, ow] * image_padded[oh*sh + i*dh, ow*sw + j*dw] for the rows                \
     * [oh0, oh1) and the columns [c0, c1), every tap inside the input; acc = partial + tap * out_w. */   \
    static inline void convx_dw_weight_rows_##SUFFIX(                                                     \
        const T *CONVX_RESTRICT grad_out, const T *CONVX_RESTRICT image,                                  \
        T *CONVX_RESTRICT partial, ptrdiff_t height, ptrdiff_t width, ptrdiff_t out_w,                    \
        ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw,               \
        ptrdiff_t dh, ptrdiff_t dw, const ptrdiff_t *lo, const ptrdiff_t *hi, ptrdiff_t oh0,              \
        ptrdiff_t oh1, ptrdiff_t c0, ptrdiff_t c1) {                                                      \
        ptrdiff_t oh, ow, i, j, ih;                                                                       \
        for (oh = oh0; oh < oh1; oh++) {                                                                  \
            const T *dy = grad_out + oh * out_w;                                                          \
            for (i = 0; i < kh; i++) {                                                                    \
                ih = oh * sh - ph + i * dh;                                                               \
                if (ih < 0 || ih >= height) continue;                                                     \
                for (j = 0; j < kw; j++) {                                                                \
                    const T *src = image + ih * width;                                                    \
                    const ptrdiff_t off = j * dw - pw;                                                    \
                    const ptrdiff_t a = lo[j] > c0 ? lo[j] : c0, b = hi[j] < c1 ? hi[j] : c1;             \
                    T *acc = partial + (i * kw + j) * out_w;                                              \
                    if (sw == 1) {                                                                        \
                        CONVX_SIMD for (ow = a; ow < b; ow++) acc[ow] += dy[ow] * src[ow + off];          \
                    } else {                                                                              \
                        CONVX_SIMD for (ow = a; ow < b; ow++) acc[ow] += dy[ow] * src[ow * sw + off];     \
                    }                                                                                     \
                }                                                                                         \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
    /* out = bias + sum_{i, j} w[i, j] * image_padded[oh*sh + i*dh, ow*sw + j*dw] */                      \
    CONVX_CLONES static void convx_dw_forward_plane_##SUFFIX(                                             \
        const T *CONVX_RESTRICT image, const T *CONVX_RESTRICT w, T bias,                                 \
        T *CONVX_RESTRICT out, ptrdiff_t height, ptrdiff_t width, ptrdiff_t out_h,                        \
        ptrdiff_t out_w, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,                          \
        ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw, const ptrdiff_t *lo,                      \
        const ptrdiff_t *hi) {                                                                            \
        ptrdiff_t oh, ow, i, j, ih;                                                                       \
        if (kh == 3 && kw == 3 && sh == 1 && sw == 1 && dh == 1 && dw == 1) {                             \
            /* The nine taps of a column summed in a register, in the order of the loops below            \
             * (the same sums, bit for bit), between the columns [inner0, inner1) whose three             \
             * taps are all inside the row; the columns at the edges tap by tap. */                       \
            const ptrdiff_t inner0 = lo[0], inner1 = hi[2] > lo[0] ? hi[2] : lo[0], off = -pw;            \
            for (oh = 0; oh < out_h; oh++) {                                                              \
                T *dst = out + oh * out_w;                                                                \
                const T *rows[3] = {NULL, NULL, NULL}, *taps[3] = {NULL, NULL, NULL};                     \
                int n = 0;                                                                                \
                for (i = 0; i < 3; i++) {                                                                 \
                    ih = oh - ph + i;                                                                     \
                    if (ih >= 0 && ih < height) {                                                         \
                        rows[n] = image + ih * width;                                                 \
                        taps[n] = w + 3 * i;                                                              \
                        n++;                                                                              \
                    }                                                                                     \
                }                                                                                         \
                for (ow = 0; ow < out_w; ow++) {                                                          \
                    if (ow == inner0) ow = inner1;                                                        \
                    if (ow >= out_w) break;                                                               \
                    T acc = bias;                                                                         \
                    for (int r = 0; r < n; r++)                                                           \
                        for (j = 0; j < 3; j++)                                                           \
                            if (ow >= lo[j] && ow < hi[j]) acc += taps[r][j] * rows[r][ow + off + j];           \
                    dst[ow] = acc;                                                                        \
                }                                                                                         \
                const T *r0 = rows[0], *r1 = rows[1], *r2 = rows[2];                                      \
                const T *t0 = taps[0], *t1 = taps[1], *t2 = taps[2];                                      \
                if (n == 3) {                                                                             \
                    CONVX_SIMD for (ow = inner0; ow < inner1; ow++) {                                     \
                        T acc = bias;                                                                     \
                        acc += t0[0] * r0[ow + off]; acc += t0[1] * r0[ow + off + 1]; acc += t0[2] * r0[ow + off + 2];      \
                        acc += t1[0] * r1[ow + off]; acc += t1[1] * r1[ow + off + 1]; acc += t1[2] * r1[ow + off + 2];      \
                        acc += t2[0] * r2[ow + off]; acc += t2[1] * r2[ow + off + 1]; acc += t2[2] * r2[ow + off + 2];      \
                        dst[ow] = acc;                                                                    \
                    }                                                                                     \
                } else if (n == 2) {                                                                      \
                    CONVX_SIMD for (ow = inner0; ow < inner1; ow++) {                                     \
                        T acc = bias;                                                                     \
                        acc += t0[0] * r0[ow + off]; acc += t0[1] * r0[ow + off + 1]; acc += t0[2] * r0[ow + off + 2];      \
                        acc += t1[0] * r1[ow + off]; acc += t1[1] * r1[ow + off + 1]; acc += t1[2] * r1[ow + off + 2];      \
                        dst[ow] = acc;                                                                    \
                    }                                                                                     \
                } else if (n == 1) {                                                                      \
                    CONVX_SIMD for (ow = inner0; ow < inner1; ow++) {                                     \
                        T acc = bias;                                                                     \
                        acc += t0[0] * r0[ow + off]; acc += t0[1] * r0[ow + off + 1]; acc += t0[2] * r0[ow + off + 2];      \
                        dst[ow] = acc;                                                                    \
                    }                                                                                     \
                } else {                                                                                  \
                    for (ow = inner0; ow < inner1; ow++) dst[ow] = bias;                                  \
                }                                                                                         \
            }                                                                                             \
            return;                                                                                       \
        }                                                                                                 \
        for (oh = 0; oh < out_h; oh++) {                                                                  \
            T *dst = out + oh * out_w;                                                                    \
            for (ow = 0; ow < out_w; ow++) dst[ow] = bias;                                                \
            for (i = 0; i < kh; i++) {                                                                    \
                ih = oh * sh - ph + i * dh;                                                               \
                if (ih < 0 || ih >= height) continue;                                                     \
                for (j = 0; j < kw; j++) {                                                                \
                    const T t = w[i * kw + j];                                                            \
                    const T *src = image + ih * width;                                                    \
                    const ptrdiff_t off = j * dw - pw;                                                    \
                    if (sw == 1) {                                                                        \
                        CONVX_SIMD for (ow = lo[j]; ow < hi[j]; ow++)                                     \
                            dst[ow] += t * src[ow + off];                                                 \
                    } else {                                                                              \
                        CONVX_SIMD for (ow = lo[j]; ow < hi[j]; ow++)                                     \
                            dst[ow] += t * src[ow * sw + off];                                            \
                    }                                                                                     \
                }                                                                                         \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
    /* grad_in[ih, iw] += w[i, j] * grad_out[oh, ow] for one output plane (not cleared here) */           \
    CONVX_CLONES static void convx_dw_backward_input_plane_##SUFFIX(                                      \
        const T *CONVX_RESTRICT grad_out, const T *CONVX_RESTRICT w,                                      \
        T *CONVX_RESTRICT grad_in, ptrdiff_t height, ptrdiff_t width, ptrdiff_t out_h,                    \
        ptrdiff_t out_w, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,                          \
        ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw, const ptrdiff_t *lo,                      \
        const ptrdiff_t *hi) {                                                                            \
        ptrdiff_t oh, ow, i, j, ih;                                                                       \
        for (oh = 0; oh < out_h; oh++) {                                                                  \
            const T *src = grad_out + oh * out_w;                                                         \
            for (i = 0; i < kh; i++) {                                                                    \
                ih = oh * sh - ph + i * dh;                                                               \
                if (ih < 0 || ih >= height) continue;                                                     \
                for (j = 0; j < kw; j++) {                                                                \
                    const T t = w[i * kw + j];                                                            \
                    T *dst = grad_in + ih * width;                                                        \
                    const ptrdiff_t off = j * dw - pw;                                                    \
                    if (sw == 1) {                                                                        \
                        CONVX_SIMD for (ow = lo[j]; ow < hi[j]; ow++)                                     \
                            dst[ow + off] += t * src[ow];                                                 \
                    } else {                                                                              \
                        for (ow = lo[j]; ow < hi[j]; ow++) dst[ow * sw + off] += t * src[ow];             \
                    }                                                                                     \
                }                                                                                         \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
    /* partial[(i*kw + j)*out_w + ow] += grad_out[oh, ow] * image_padded[oh*sh + i*dh,                    \
     * ow*sw + j*dw] over the rows oh, for every tap inside the input: the weight gradient                \
     * of one plane, still spread over the output columns (summed by the caller once all                  \
     * planes of a channel are in). No reduction inside the loops, so they vectorise. */                  \
    CONVX_CLONES static void convx_dw_weight_plane_##SUFFIX(                                              \
        const T *CONVX_RESTRICT grad_out, const T *CONVX_RESTRICT image,                                  \
        T *CONVX_RESTRICT partial, ptrdiff_t height, ptrdiff_t width, ptrdiff_t out_h,                    \
        ptrdiff_t out_w, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,                          \
        ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw, const ptrdiff_t *lo,                      \
        const ptrdiff_t *hi) {                                                                            \
        if (!(kh == 3 && kw == 3 && sh == 1 && sw == 1 && dh == 1 && dw == 1)) {                          \
            convx_dw_weight_rows_##SUFFIX(grad_out, image, partial, height, width, out_w, kh, kw, sh, sw, \
                                          ph, pw, dh, dw, lo, hi, 0, out_h, 0, out_w);                    \
            return;                                                                                       \
        }                                                                                                 \
        /* 3x3, stride 1, dilation 1: inside the rows [row0, row1) and the columns                        \
         * [inner0, inner1), where all nine taps are inside the input, blocks of                          \
         * CONVX_DW_BLOCK columns sum their nine products per column down the rows in                     \
         * registers (a last, overlapping block adds only its new columns); the border                    \
         * tap by tap as above. */                                                                        \
        ptrdiff_t row0 = ph < out_h ? ph : out_h, row1 = height + ph - 2;                                 \
        if (row1 > out_h) row1 = out_h;                                                                   \
        if (row1 < row0) row1 = row0;                                                                     \
        const ptrdiff_t inner0 = lo[0];                                                                   \
        ptrdiff_t inner1 = hi[2] > lo[0] ? hi[2] : lo[0];                                                 \
        if (inner1 - inner0 < CONVX_DW_BLOCK) inner1 = inner0;                                            \
        for (ptrdiff_t next = inner0; next < inner1; next += CONVX_DW_BLOCK) {                            \
            const ptrdiff_t block = next + CONVX_DW_BLOCK <= inner1 ? next : inner1 - CONVX_DW_BLOCK;     \
            const ptrdiff_t done = next - block;  /* columns the previous block took */                   \
            T acc[9][CONVX_DW_BLOCK] = {{0}};                                                             \
            for (ptrdiff_t oh = row0; oh < row1; oh++) {                                                  \
                const T *dy = grad_out + oh * out_w + block;                                              \
                const T *x0 = image + (oh - ph) * width + block - pw, *x1 = x0 + width, *x2 = x1 + width; \
                CONVX_SIMD for (ptrdiff_t c = 0; c < CONVX_DW_BLOCK; c++) {                               \
                    const T d = dy[c];                                                                    \
                    acc[0][c] += d * x0[c]; acc[1][c] += d * x0[c + 1]; acc[2][c] += d * x0[c + 2];       \
                    acc[3][c] += d * x1[c]; acc[4][c] += d * x1[c + 1]; acc[5][c] += d * x1[c + 2];       \
                    acc[6][c] += d * x2[c]; acc[7][c] += d * x2[c + 1]; acc[8][c] += d * x2[c + 2];       \
                }                                                                                         \
            }                                                                                             \
            for (ptrdiff_t tap = 0; tap < 9; tap++) {                                                     \
                T *dst = partial + tap * out_w + block;                                                   \
                CONVX_SIMD for (ptrdiff_t c = 0; c < CONVX_DW_BLOCK; c++)                                 \
                    dst[c] += c >= done ? acc[tap][c] : 0;                                                \
            }                                                                                             \
        }                                                                                                 \
        /* The border last, its planes now in cache (first touched column by column, each row             \
         * would wait for memory). */                                                                     \
        convx_dw_weight_rows_##SUFFIX(grad_out, image, partial, height, width, out_w, 3, 3, 1, 1, ph, pw, \
                                      1, 1, lo, hi, 0, row0, 0, out_w);                                   \
        convx_dw_weight_rows_##SUFFIX(grad_out, image, partial, height, width, out_w, 3, 3, 1, 1, ph, pw, \
                                      1, 1, lo, hi, row1, out_h, 0, out_w);                               \
        /* The columns beside the blocks, one at a time down the rows, their taps in registers. */        \
        for (ptrdiff_t ow = 0; ow < out_w; ow++) {                                                        \
            if (ow == inner0) ow = inner1;                                                                \
            if (ow >= out_w) break;                                                                       \
            const int in0 = ow >= lo[0] && ow < hi[0], in1 = ow >= lo[1] && ow < hi[1];                   \
            const int in2 = ow >= lo[2] && ow < hi[2];                                                    \
            T a[9] = {0};                                                                                 \
            for (ptrdiff_t oh = row0; oh < row1; oh++) {                                                  \
                const T d = grad_out[oh * out_w + ow];                                                    \
                for (ptrdiff_t i = 0; i < 3; i++) {                                                       \
                    const T *src = image + (oh - ph + i) * width;                                         \
                    if (in0) a[3 * i] += d * src[ow - pw];                                                \
                    if (in1) a[3 * i + 1] += d * src[ow - pw + 1];                                        \
                    if (in2) a[3 * i + 2] += d * src[ow - pw + 2];                                        \
                }                                                                                         \
            }                                                                                             \
            for (ptrdiff_t tap = 0; tap < 9; tap++) partial[tap * out_w + ow] += a[tap];                  \
        }                                                                                                 \
    }

CONVX_PLANE_KERNELS(float, f)
CONVX_PLANE_KERNELS(double, d)

#endif
