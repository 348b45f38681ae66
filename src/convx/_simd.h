/* Row kernels for the direct (depthwise) loops, compiled once per instruction-set level.
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

#define CONVX_ROW_KERNELS(T, SUFFIX)                                                           \
    /* dst[i] += a * src[i * stride], i < n */                                                 \
    CONVX_CLONES static void convx_axpy_##SUFFIX(T *CONVX_RESTRICT dst,                          \
                                                 const T *CONVX_RESTRICT src, T a,             \
                                                 ptrdiff_t n, ptrdiff_t stride) {              \
        ptrdiff_t i;                                                                           \
        if (stride == 1) {                                                                     \
            CONVX_SIMD for (i = 0; i < n; i++) dst[i] += a * src[i];                           \
        } else {                                                                               \
            CONVX_SIMD for (i = 0; i < n; i++) dst[i] += a * src[i * stride];                  \
        }                                                                                      \
    }                                                                                          \
    /* dst[i * stride] += a * src[i], i < n */                                                 \
    CONVX_CLONES static void convx_axpy_scatter_##SUFFIX(T *CONVX_RESTRICT dst,                  \
                                                         const T *CONVX_RESTRICT src, T a,     \
                                                         ptrdiff_t n, ptrdiff_t stride) {      \
        ptrdiff_t i;                                                                           \
        if (stride == 1) {                                                                     \
            CONVX_SIMD for (i = 0; i < n; i++) dst[i] += a * src[i];                           \
        } else {                                                                               \
            for (i = 0; i < n; i++) dst[i * stride] += a * src[i];                             \
        }                                                                                      \
    }                                                                                          \
    /* sum_i a[i] * b[i * stride], i < n */                                                    \
    CONVX_CLONES static T convx_dot_##SUFFIX(const T *CONVX_RESTRICT a,                          \
                                             const T *CONVX_RESTRICT b, ptrdiff_t n,           \
                                             ptrdiff_t stride) {                               \
        ptrdiff_t i;                                                                           \
        T total = 0;                                                                           \
        if (stride == 1) {                                                                     \
            CONVX_SIMD_SUM(total) for (i = 0; i < n; i++) total += a[i] * b[i];                \
        } else {                                                                               \
            CONVX_SIMD_SUM(total) for (i = 0; i < n; i++) total += a[i] * b[i * stride];      \
        }                                                                                      \
        return total;                                                                          \
    }

CONVX_ROW_KERNELS(float, f)
CONVX_ROW_KERNELS(double, d)

#endif
