/* Depthwise 3-D convolution gradients over NCDHW volumes (one input channel per group, any
 * channel multiplier m), one (image, channel) volume per call, compiled once per instruction-set
 * level (see _simd.h). Each output row is a run of W-contiguous products, so every inner loop is
 * one row long and vectorises; taps in the padding are skipped (the callers decline the inputs
 * whose products with the padding's zeros would not be zero).
 */
#ifndef CONVX_DEPTHWISE3D_H
#define CONVX_DEPTHWISE3D_H

#include <stddef.h>
#include "_simd.h"

/* One depthwise convolution's geometry: input (depth, height, width), output (out_d, out_h,
 * out_w), kernel, stride, padding before, dilation. */
typedef struct convx_dw3d_shape {
    ptrdiff_t depth, height, width, out_d, out_h, out_w;
    ptrdiff_t kd, kh, kw, sd, sh, sw, pd, ph, pw, dd, dh, dw;
} convx_dw3d_shape;

#define CONVX_DW3D_JOIN2(a, b) a##_##b
#define CONVX_DW3D_JOIN(a, b) CONVX_DW3D_JOIN2(a, b)
#define CONVX_DW3D(name) CONVX_DW3D_JOIN(name, D3S)

#define D3T float
#define D3S f
#include "_depthwise3d_body.h"
#undef D3T
#undef D3S

#define D3T double
#define D3S d
#include "_depthwise3d_body.h"
#undef D3T
#undef D3S

#endif
