/* Batch normalisation of channels-last arrays: the kernels of _bn_nhwc.pxi, on the (rows, C)
 * matrix of an (N, H, W, C) array (rows = N*H*W), C the innermost, contiguous axis.
 *
 * Each function works on one chunk of whole rows. A per-channel figure is repeated along a
 * "period" of P elements, P a multiple of C of at least 64 (64 / C rows of a narrow array, one
 * row of a wide one), so that every inner loop runs over P contiguous elements and vectorises
 * whatever C is; the sums over a chunk are kept per period position and folded into C channels
 * at its end. The formulas, the precision (sums in double, element-wise passes in the array's
 * dtype, each per-channel constant rounded to it once) and the activation epilogue are those of
 * the channels-first kernels (_elementwise_body.h), so both layouts agree to rounding.
 */
#ifndef CONVX_BN_NHWC_H
#define CONVX_BN_NHWC_H

#include "_elementwise.h"

/* Elements of a chunk whose statistics are taken in two sweeps from L1 (whole rows, at least
 * one) before being merged into the chunk's running figures. */
#define CONVX_BN_ROWS_BLOCK 4096

/* Elements the element-wise passes take per block (whole periods, at least one): the
 * channels-first kernels' block. (1024, so that the input, the output's gradient, the scratch of
 * a recomputed activation and the result fit a 32 KiB L1 together, measured no faster: each
 * block pays two calls of the activation's kernels.) */
#define CONVX_BN_ROWS_PASS CONVX_BN_BLOCK

/* Chan, Golub and LeVeque's update: the figures (count_b, mean_b[c], m2_b[c]) of a set of values
 * merged into (count, mean[c], m2[c]), for c < channels. */
static inline void convx_bn_merge_moments(double count, double count_b, const double *mean_b, const double *m2_b,
                                          double *mean, double *m2, ptrdiff_t channels) {
    const double merged = count + count_b;
    if (count_b == 0) return;
    for (ptrdiff_t c = 0; c < channels; c++) {
        const double delta = mean_b[c] - mean[c];
        mean[c] += delta * (count_b / merged);
        m2[c] += m2_b[c] + delta * delta * (count * count_b / merged);
    }
}

/* sums[c] = sum over k of acc[k * channels + c], k < period / channels: the period positions of
 * each channel folded into one figure. */
static inline void convx_bn_fold(const double *acc, ptrdiff_t period, ptrdiff_t channels, double *sums) {
    for (ptrdiff_t c = 0; c < channels; c++) sums[c] = acc[c];
    for (ptrdiff_t k = channels; k < period; k += channels)
        for (ptrdiff_t c = 0; c < channels; c++) sums[c] += acc[k + c];
}

#define ET float
#define ES f
#include "_bn_nhwc_body.h"
#undef ET
#undef ES

#define ET double
#define ES d
#include "_bn_nhwc_body.h"
#undef ET
#undef ES

#endif
