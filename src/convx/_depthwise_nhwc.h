/* Channels-last (NHWC) depthwise convolution kernels (one filter per channel, multiplier 1),
 * compiled once per instruction-set level (see _simd.h).
 *
 * An image is (H, W, C) with the channels innermost and the weight is transposed to (taps, C):
 * every tap of a window is one contiguous C-vector of the image times one of the weight, so each
 * kernel combines whole C-vectors, a block of channels summed in registers over a window's taps
 * (the weight gradient: along an output row), the taps in row-major order. Taps in the padding
 * are skipped
 * (the callers decline the inputs whose products with the padding's zeros are not zero).
 */
#ifndef CONVX_DEPTHWISE_NHWC_H
#define CONVX_DEPTHWISE_NHWC_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "_simd.h"

#define CONVX_DWL_JOIN2(a, b) a##_##b
#define CONVX_DWL_JOIN(a, b) CONVX_DWL_JOIN2(a, b)
#define CONVX_DWL(name) CONVX_DWL_JOIN(name, NS)

/* GCC's and Clang's vector extensions: blocks of channels kept in registers (plain loops elsewhere). */
#if defined(__GNUC__)
#define CONVX_DWL_VECTORS 1
#endif

#define NT float
#define NS f
#include "_depthwise_nhwc_body.h"
#undef NT
#undef NS

#define NT double
#define NS d
#include "_depthwise_nhwc_body.h"
#undef NT
#undef NS

#endif
