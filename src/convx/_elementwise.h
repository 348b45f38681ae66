/* Kernels of the layers that touch each element once: activations, batch, group and layer
 * normalisation, softmax, dropout, compiled once per instruction-set level (see _simd.h).
 *
 * Every function works on one contiguous run of elements (a thread's share of an activation, one
 * plane of a batch normalisation, one row or block of columns of a softmax); the Cython drivers (_elementwise.pxi) split the work between
 * threads, so that no two threads ever write the same memory. The conditions and formulas are
 * PyTorch's, including how NaN goes through each comparison, so that NaN and +-inf come out as
 * they do there. Sums over a channel run in double whatever the element type.
 */
#ifndef CONVX_ELEMENTWISE_H
#define CONVX_ELEMENTWISE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#include "_simd.h"

/* Two sums in one SIMD loop (a vectorised reduction of each). */
#if defined(_MSC_VER)
#define CONVX_SIMD_SUM2(a, b)
#else
#define CONVX_SIMD_SUM2(a, b) CONVX_PRAGMA(omp simd reduction(+:a, b))
#endif

/* A vectorised maximum (which NaN wins is unspecified: the softmax needs neither). */
#if defined(_MSC_VER)
#define CONVX_SIMD_MAX(a)
#else
#define CONVX_SIMD_MAX(a) CONVX_PRAGMA(omp simd reduction(max:a))
#endif

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

/* Which optimizer step (convx/optim.py). */
enum convx_optimizer {
    CONVX_OPT_SGD = 0,
    CONVX_OPT_ADAM = 1,
    CONVX_OPT_ADAGRAD = 2,
    CONVX_OPT_RMSPROP = 3,
    CONVX_OPT_ADADELTA = 4
};

/* Elements of a plane whose mean and squared deviations are summed in two sweeps (both from
 * L1) before being merged into the channel's running figures. */
#define CONVX_BN_BLOCK 2048

/* 1/k!: the Taylor coefficients of e^r. */
static const double convx_inverse_factorial[14] = {
    1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040, 1.0 / 40320, 1.0 / 362880,
    1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800.0,
};

/* erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z/2), z >= 0: the coefficients of P, a least-squares
 * fit of log(erfcx(z) / t) on [0, 1] in t (scipy's erfcx, 4000 Chebyshev nodes); relative error
 * of the formula 1.05e-8 in double arithmetic over z in [0, 10]: for float only. */
static const double convx_erfc_fit[12] = {
    -1.2655121242899483, 0.9999999286132072, 0.3750201575989416, 0.0825930017499015,
    -0.07473846187515651, -0.23368856580971764, 0.33548460080123965, -1.2253210945356439,
    2.3986076668692045, -2.205012198312522, 0.9913167417008433, -0.17874966294259773,
};

/* A 32-bit hash of (seed, index), two rounds of MurmurHash3's finaliser: the dropout mask of
 * element `index` is a function of the seed and the index alone, so it does not depend on how the
 * elements are split between threads or sub-batches, and the backward recomputes it. */
static inline uint32_t convx_hash32(uint64_t seed, uint64_t index) {
    uint32_t h = (uint32_t)index * 0x9E3779B1u + (uint32_t)seed;
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    h ^= (uint32_t)(seed >> 32) ^ ((uint32_t)(index >> 32) * 0x85EBCA6Bu);
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    return h;
}

#define CONVX_EW_CAT2(a, b) a##_##b
#define CONVX_EW_CAT(a, b) CONVX_EW_CAT2(a, b)
#define CONVX_EW(name) CONVX_EW_CAT(name, ES)

#define ET float
#define ES f
#define EI int32_t
#define EU uint32_t
#define CONVX_EW_MANTISSA 23
#define CONVX_EW_BIAS 127
/* 1.5 * 2^23: x + this rounds x to an integer, held in the low bits. */
#define CONVX_EW_ROUNDER 12582912.0f
/* exp overflows above HI and is 0 below LO (below half the smallest subnormal). */
#define CONVX_EW_EXP_HI 88.72283935546875f
#define CONVX_EW_EXP_LO -103.98f
#define CONVX_EW_LN2_HI 0.693145751953125f
#define CONVX_EW_LN2_LO 1.428606765330187e-06f
/* |x| past which tanh(x) rounds to +-1 */
#define CONVX_EW_TANH_ONE 9.1f
#define CONVX_EW_EXP_TERMS 7
#define CONVX_EW_EXP CONVX_EW(convx_exp)
#define CONVX_EW_EXPM1 CONVX_EW(convx_expm1)
#define CONVX_EW_TANH CONVX_EW(convx_tanh)
#define CONVX_EW_ERFC CONVX_EW(convx_erfc_fit)
#define CONVX_SQRT sqrtf
#define CONVX_EW_LOG_TERMS 7
#include "_elementwise_body.h"
#undef ET
#undef ES
#undef CONVX_EW_EXP
#undef CONVX_EW_EXPM1
#undef CONVX_EW_TANH
#undef CONVX_EW_ERFC
#undef EI
#undef EU
#undef CONVX_EW_MANTISSA
#undef CONVX_EW_BIAS
#undef CONVX_EW_ROUNDER
#undef CONVX_EW_EXP_HI
#undef CONVX_EW_EXP_LO
#undef CONVX_EW_LN2_HI
#undef CONVX_EW_LN2_LO
#undef CONVX_EW_TANH_ONE
#undef CONVX_EW_EXP_TERMS
#undef CONVX_EW_LOG_TERMS
#undef CONVX_SQRT

#define ET double
#define ES d
#define EI int64_t
#define EU uint64_t
#define CONVX_EW_MANTISSA 52
#define CONVX_EW_BIAS 1023
#define CONVX_EW_ROUNDER 6755399441055744.0
#define CONVX_EW_EXP_HI 709.782712893384
#define CONVX_EW_EXP_LO -745.2
#define CONVX_EW_LN2_HI 0.6931471803691238
#define CONVX_EW_LN2_LO 1.90821492927058770002e-10
#define CONVX_EW_TANH_ONE 19.1
#define CONVX_EW_EXP_TERMS 13
#define CONVX_EW_EXP CONVX_EW(convx_exp)
#define CONVX_EW_EXPM1 CONVX_EW(convx_expm1)
#define CONVX_EW_TANH CONVX_EW(convx_tanh)
#define CONVX_EW_ERFC erfc
#define CONVX_SQRT sqrt
#define CONVX_EW_LOG_TERMS 16
#include "_elementwise_body.h"
#undef ET
#undef ES
#undef CONVX_EW_EXP
#undef CONVX_EW_EXPM1
#undef CONVX_EW_TANH
#undef CONVX_EW_ERFC
#undef EI
#undef EU
#undef CONVX_EW_MANTISSA
#undef CONVX_EW_BIAS
#undef CONVX_EW_ROUNDER
#undef CONVX_EW_EXP_HI
#undef CONVX_EW_EXP_LO
#undef CONVX_EW_LN2_HI
#undef CONVX_EW_LN2_LO
#undef CONVX_EW_TANH_ONE
#undef CONVX_EW_EXP_TERMS
#undef CONVX_EW_LOG_TERMS
#undef CONVX_SQRT

#endif
