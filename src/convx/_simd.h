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


/* One call per plane, with the row loops inside, so that the short rows of a feature map do
 * not each pay for a call through the ifunc. lo[j], hi[j]: the outputs ow whose tap j lands
 * inside the input row, [lo, hi). Geometry as in ConvGeometry (_conv.pxi). */
#define CONVX_PLANE_KERNELS(T, SUFFIX)                                                         \
    /* out = bias + sum_{i, j} w[i, j] * image_padded[oh*sh + i*dh, ow*sw + j*dw] */           \
    CONVX_CLONES static void convx_dw_forward_plane_##SUFFIX(                                  \
        const T *CONVX_RESTRICT image, const T *CONVX_RESTRICT w, T bias,                      \
        T *CONVX_RESTRICT out, ptrdiff_t height, ptrdiff_t width, ptrdiff_t out_h,             \
        ptrdiff_t out_w, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,               \
        ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw, const ptrdiff_t *lo,           \
        const ptrdiff_t *hi) {                                                                 \
        ptrdiff_t oh, ow, i, j, ih;                                                            \
        for (oh = 0; oh < out_h; oh++) {                                                       \
            T *dst = out + oh * out_w;                                                         \
            for (ow = 0; ow < out_w; ow++) dst[ow] = bias;                                     \
            for (i = 0; i < kh; i++) {                                                         \
                ih = oh * sh - ph + i * dh;                                                    \
                if (ih < 0 || ih >= height) continue;                                          \
                for (j = 0; j < kw; j++) {                                                     \
                    const T t = w[i * kw + j];                                                 \
                    const T *src = image + ih * width;                                         \
                    const ptrdiff_t off = j * dw - pw;                                         \
                    if (sw == 1) {                                                             \
                        CONVX_SIMD for (ow = lo[j]; ow < hi[j]; ow++)                          \
                            dst[ow] += t * src[ow + off];                                      \
                    } else {                                                                   \
                        CONVX_SIMD for (ow = lo[j]; ow < hi[j]; ow++)                          \
                            dst[ow] += t * src[ow * sw + off];                                 \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
    /* grad_in[ih, iw] += w[i, j] * grad_out[oh, ow] for one output plane (not cleared here) */ \
    CONVX_CLONES static void convx_dw_backward_input_plane_##SUFFIX(                           \
        const T *CONVX_RESTRICT grad_out, const T *CONVX_RESTRICT w,                           \
        T *CONVX_RESTRICT grad_in, ptrdiff_t height, ptrdiff_t width, ptrdiff_t out_h,         \
        ptrdiff_t out_w, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,               \
        ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw, const ptrdiff_t *lo,           \
        const ptrdiff_t *hi) {                                                                 \
        ptrdiff_t oh, ow, i, j, ih;                                                            \
        for (oh = 0; oh < out_h; oh++) {                                                       \
            const T *src = grad_out + oh * out_w;                                              \
            for (i = 0; i < kh; i++) {                                                         \
                ih = oh * sh - ph + i * dh;                                                    \
                if (ih < 0 || ih >= height) continue;                                          \
                for (j = 0; j < kw; j++) {                                                     \
                    const T t = w[i * kw + j];                                                 \
                    T *dst = grad_in + ih * width;                                             \
                    const ptrdiff_t off = j * dw - pw;                                         \
                    if (sw == 1) {                                                             \
                        CONVX_SIMD for (ow = lo[j]; ow < hi[j]; ow++)                          \
                            dst[ow + off] += t * src[ow];                                      \
                    } else {                                                                   \
                        for (ow = lo[j]; ow < hi[j]; ow++) dst[ow * sw + off] += t * src[ow];  \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
    /* partial[(i*kw + j)*out_w + ow] += grad_out[oh, ow] * image_padded[oh*sh + i*dh,        \
     * ow*sw + j*dw] over the rows oh, for every tap inside the input: the weight gradient     \
     * of one plane, still spread over the output columns (summed by the caller once all       \
     * planes of a channel are in). No reduction inside the loops, so they vectorise. */       \
    CONVX_CLONES static void convx_dw_weight_plane_##SUFFIX(                                   \
        const T *CONVX_RESTRICT grad_out, const T *CONVX_RESTRICT image,                       \
        T *CONVX_RESTRICT partial, ptrdiff_t height, ptrdiff_t width, ptrdiff_t out_h,         \
        ptrdiff_t out_w, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,               \
        ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw, const ptrdiff_t *lo,           \
        const ptrdiff_t *hi) {                                                                 \
        ptrdiff_t oh, ow, i, j, ih;                                                            \
        for (oh = 0; oh < out_h; oh++) {                                                       \
            const T *dy = grad_out + oh * out_w;                                               \
            for (i = 0; i < kh; i++) {                                                         \
                ih = oh * sh - ph + i * dh;                                                    \
                if (ih < 0 || ih >= height) continue;                                          \
                for (j = 0; j < kw; j++) {                                                     \
                    const T *src = image + ih * width;                                         \
                    const ptrdiff_t off = j * dw - pw;                                         \
                    T *acc = partial + (i * kw + j) * out_w;                                   \
                    if (sw == 1) {                                                             \
                        CONVX_SIMD for (ow = lo[j]; ow < hi[j]; ow++)                          \
                            acc[ow] += dy[ow] * src[ow + off];                                 \
                    } else {                                                                   \
                        CONVX_SIMD for (ow = lo[j]; ow < hi[j]; ow++)                          \
                            acc[ow] += dy[ow] * src[ow * sw + off];                            \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }

CONVX_PLANE_KERNELS(float, f)
CONVX_PLANE_KERNELS(double, d)

#endif
