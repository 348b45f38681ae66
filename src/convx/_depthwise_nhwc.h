/* Channels-last (NHWC) depthwise convolution kernels (one filter per channel, multiplier 1),
 * compiled once per instruction-set level (see _simd.h).
 *
 * An image is (H, W, C) with the channels innermost and the weight is transposed to (taps, C):
 * every tap of a window is one contiguous C-vector of the image times one of the weight, so each
 * kernel combines whole C-vectors, one unit-stride loop over the channels per tap, a block of
 * channels kept in registers over all the taps of a window. Taps in the padding are skipped
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
