/* Channels-last (NHWC) pooling kernels, compiled once per instruction-set level (see _simd.h).
 *
 * An image is (H, W, C) with the channels innermost: every tap of a window is one contiguous
 * C-vector, so each kernel combines whole C-vectors, one unit-stride loop over the channels per
 * tap, with the taps visited in the row-major order of the NCHW kernels (_pool_body.h): the
 * same comparisons and the same sums in the same order, bit for bit, channel by channel.
 *
 * Windows are given by their first tap inside the input and their count of taps inside it,
 * along each axis (the callers compute them once per output row and column, from the pooling's
 * geometry or from adaptive pooling's windows), and their step (the dilation).
 *
 * The 3-D (NDHWC) kernels are the same windows with a depth axis in front: a (D, H, W, C) volume's
 * taps in the (depth, rows, columns) order of the NCDHW kernels (_pool3d.pxi).
 */
#ifndef CONVX_POOL_NHWC_H
#define CONVX_POOL_NHWC_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#include "_simd.h"

#define CONVX_NHWC_JOIN2(a, b) a##_##b
#define CONVX_NHWC_JOIN(a, b) CONVX_NHWC_JOIN2(a, b)
#define CONVX_NHWC(name) CONVX_NHWC_JOIN(name, NS)

#ifndef CONVX_SIMD_OR
#if defined(_MSC_VER)
#define CONVX_SIMD_OR(var)
#else
#define CONVX_SIMD_OR(var) CONVX_PRAGMA(omp simd reduction(|:var))
#endif
#endif

#define NT float
#define NS f
#define NT_LOWEST (-INFINITY)
#include "_pool_nhwc_body.h"
#undef NT
#undef NS
#undef NT_LOWEST

#define NT double
#define NS d
#define NT_LOWEST (-INFINITY)
#include "_pool_nhwc_body.h"
#undef NT
#undef NS
#undef NT_LOWEST

/* The 8-bit integers, max pooling only, exact in their type; the NaN tests (v != v) are always
 * false for them, as intended. */
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wtautological-compare"
#endif
#define CONVX_NHWC_MAX_ONLY 1
#define NT int8_t
#define NS i8
#define NT_LOWEST INT8_MIN
#include "_pool_nhwc_body.h"
#undef NT
#undef NS
#undef NT_LOWEST

#define NT uint8_t
#define NS u8
#define NT_LOWEST 0
#include "_pool_nhwc_body.h"
#undef NT
#undef NS
#undef NT_LOWEST
#undef CONVX_NHWC_MAX_ONLY
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#endif
