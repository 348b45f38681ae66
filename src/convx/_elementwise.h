/* Kernels of the layers that touch each element once: activations and batch normalisation,
 * compiled once per instruction-set level (see _simd.h).
 *
 * Every function works on one contiguous run of elements (a thread's share of an activation, one
 * plane of a batch normalisation); the Cython drivers (_elementwise.pxi) split the work between
 * threads, so that no two threads ever write the same memory. The conditions and formulas are
 * PyTorch's, including how NaN goes through each comparison, so that NaN and +-inf come out as
 * they do there. Sums over a channel run in double whatever the element type.
 */
#ifndef CONVX_ELEMENTWISE_H
#define CONVX_ELEMENTWISE_H

#include <stddef.h>
#include <math.h>
#include "_simd.h"

/* Which activation; the backward of each reads either the forward's input or its output
 * (convx/nn/activations.py keeps the one it needs). */
enum convx_activation {
    CONVX_ACT_RELU = 0,        /* backward reads y */
    CONVX_ACT_RELU6 = 1,       /* y */
    CONVX_ACT_LEAKY_RELU = 2,  /* y when p0 (the slope) >= 0, else x: the sign of x is the sign of y */
    CONVX_ACT_ELU = 3,         /* y (needs p0 = alpha >= 0); p1 = scale (1, or SELU's) */
    CONVX_ACT_ELU_INPUT = 4,   /* x: ELU with any alpha */
    CONVX_ACT_SIGMOID = 5,     /* y */
    CONVX_ACT_TANH = 6,        /* y */
    CONVX_ACT_SILU = 7,        /* x */
    CONVX_ACT_GELU = 8,        /* x */
    CONVX_ACT_GELU_TANH = 9,   /* x */
    CONVX_ACT_HARDSWISH = 10,  /* x */
    CONVX_ACT_HARDSIGMOID = 11,/* x */
    CONVX_ACT_SOFTPLUS = 12,   /* x; p0 = beta, p1 = threshold */
    CONVX_ACT_COUNT = 13
};

/* Elements of a plane whose mean and squared deviations are summed in two sweeps (both from
 * L1) before being merged into the channel's running figures. */
#define CONVX_BN_BLOCK 2048

#define CONVX_EW_CAT2(a, b) a##_##b
#define CONVX_EW_CAT(a, b) CONVX_EW_CAT2(a, b)
#define CONVX_EW(name) CONVX_EW_CAT(name, ES)

#define ET float
#define ES f
#define CONVX_EW_EXP expf
#define CONVX_EW_EXPM1 expm1f
#define CONVX_EW_LOG1P log1pf
#define CONVX_EW_TANH tanhf
#define CONVX_EW_ERFC erfcf
#include "_elementwise_body.h"
#undef ET
#undef ES
#undef CONVX_EW_EXP
#undef CONVX_EW_EXPM1
#undef CONVX_EW_LOG1P
#undef CONVX_EW_TANH
#undef CONVX_EW_ERFC

#define ET double
#define ES d
#define CONVX_EW_EXP exp
#define CONVX_EW_EXPM1 expm1
#define CONVX_EW_LOG1P log1p
#define CONVX_EW_TANH tanh
#define CONVX_EW_ERFC erfc
#include "_elementwise_body.h"
#undef ET
#undef ES
#undef CONVX_EW_EXP
#undef CONVX_EW_EXPM1
#undef CONVX_EW_LOG1P
#undef CONVX_EW_TANH
#undef CONVX_EW_ERFC

#endif
