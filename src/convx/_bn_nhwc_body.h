/* The channels-last batch-normalisation kernels for one element type: included by _bn_nhwc.h with
 * ET the type (float, double) and ES its suffix (f, d). Every chunk starts at a row, so element j
 * of a chunk belongs to channel j % C and period position j % P; `*_rep` arrays hold a
 * per-channel figure repeated over a period (rep[j] = figure[j % C], j < P). The loops that sum
 * take four periods at a time where they can, so that each load and store of a sum kept per
 * period position serves four elements; the loops that write an array go straight along it
 * (four periods side by side there measured slower: the hardware prefetcher follows one
 * ascending stream best, and a loop that waits for memory has time for the extra loads). */

/* Elements of a chunk taken per block by the element-wise passes: whole periods, at least one. */
static inline ptrdiff_t CONVX_EW(convx_bn_rows_block)(ptrdiff_t period) {
    return period * (CONVX_BN_ROWS_PASS > period ? CONVX_BN_ROWS_PASS / period : 1);
}

/* The mean[c] and sum of squared deviations m2[c] of each channel over a chunk of `rows` rows
 * (overwritten): each block of rows in the corrected two-pass form of convx_bn_channel_moments,
 * the blocks merged by Chan's update. scratch: 3 * period + 2 * channels doubles. */
CONVX_CLONES static void CONVX_EW(convx_bn_rows_moments)(const ET *CONVX_RESTRICT x, ptrdiff_t rows,
                                                         ptrdiff_t channels, ptrdiff_t period, double *mean,
                                                         double *m2, double *CONVX_RESTRICT scratch) {
    double *CONVX_RESTRICT first = scratch, *CONVX_RESTRICT second = scratch + period;
    double *CONVX_RESTRICT rough = scratch + 2 * period;
    double *block_mean = scratch + 3 * period, *residual = block_mean + channels;
    const ptrdiff_t block_rows = CONVX_BN_ROWS_BLOCK > channels ? CONVX_BN_ROWS_BLOCK / channels : 1;
    double count = 0;
    for (ptrdiff_t r0 = 0; r0 < rows; r0 += block_rows) {
        const ptrdiff_t len_rows = rows - r0 < block_rows ? rows - r0 : block_rows;
        const ptrdiff_t n = len_rows * channels;
        const ET *CONVX_RESTRICT src = x + r0 * channels;
        const double len = (double)len_rows;
        memset(first, 0, (size_t)period * sizeof(double));
        ptrdiff_t b = 0;
        for (; b + 4 * period <= n; b += 4 * period) {
            const ET *CONVX_RESTRICT s0 = src + b, *CONVX_RESTRICT s1 = s0 + period;
            const ET *CONVX_RESTRICT s2 = s1 + period, *CONVX_RESTRICT s3 = s2 + period;
            CONVX_SIMD for (ptrdiff_t j = 0; j < period; j++)
                first[j] += ((double)s0[j] + (double)s1[j]) + ((double)s2[j] + (double)s3[j]);
        }
        for (; b < n; b += period) {
            const ptrdiff_t seg = n - b < period ? n - b : period;
            CONVX_SIMD for (ptrdiff_t j = 0; j < seg; j++) first[j] += (double)src[b + j];
        }
        convx_bn_fold(first, period, channels, block_mean);
        for (ptrdiff_t c = 0; c < channels; c++) block_mean[c] /= len;
        for (ptrdiff_t k = 0; k < period; k += channels)
            for (ptrdiff_t c = 0; c < channels; c++) rough[k + c] = block_mean[c];
        /* The deviations' own sum corrects the mean for the rounding of the first sum, and the
         * squares for the offset (as convx_bn_channel_moments). */
        memset(first, 0, (size_t)period * sizeof(double));
        memset(second, 0, (size_t)period * sizeof(double));
        for (b = 0; b + 4 * period <= n; b += 4 * period) {
            const ET *CONVX_RESTRICT s0 = src + b, *CONVX_RESTRICT s1 = s0 + period;
            const ET *CONVX_RESTRICT s2 = s1 + period, *CONVX_RESTRICT s3 = s2 + period;
            CONVX_SIMD for (ptrdiff_t j = 0; j < period; j++) {
                const double r = rough[j];
                const double d0 = (double)s0[j] - r, d1 = (double)s1[j] - r;
                const double d2 = (double)s2[j] - r, d3 = (double)s3[j] - r;
                first[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
                second[j] += (d0 + d1) + (d2 + d3);
            }
        }
        for (; b < n; b += period) {
            const ptrdiff_t seg = n - b < period ? n - b : period;
            CONVX_SIMD for (ptrdiff_t j = 0; j < seg; j++) {
                const double d = (double)src[b + j] - rough[j];
                first[j] += d * d;
                second[j] += d;
            }
        }
        convx_bn_fold(second, period, channels, residual);
        convx_bn_fold(first, period, channels, second);
        const double merged = count + len;
        for (ptrdiff_t c = 0; c < channels; c++) {
            const double mean_b = block_mean[c] + residual[c] / len;
            const double squares = second[c] - residual[c] * residual[c] / len;
            if (count == 0) {
                mean[c] = mean_b;
                m2[c] = squares;
            } else {
                const double delta = mean_b - mean[c];
                mean[c] += delta * (len / merged);
                m2[c] += squares + delta * delta * (count * len / merged);
            }
        }
        count = merged;
    }
}

/* out = (x - mean) * scale + shift over n elements starting at a row. */
static inline void CONVX_EW(convx_bn_rows_affine)(const ET *CONVX_RESTRICT x, ET *CONVX_RESTRICT out, ptrdiff_t n,
                                                  ptrdiff_t period, const ET *CONVX_RESTRICT mean_rep,
                                                  const ET *CONVX_RESTRICT scale_rep,
                                                  const ET *CONVX_RESTRICT shift_rep) {
    for (ptrdiff_t b = 0; b < n; b += period) {
        const ptrdiff_t seg = n - b < period ? n - b : period;
        const ET *CONVX_RESTRICT src = x + b;
        ET *CONVX_RESTRICT dst = out + b;
        CONVX_SIMD for (ptrdiff_t j = 0; j < seg; j++) dst[j] = (src[j] - mean_rep[j]) * scale_rep[j] + shift_rep[j];
    }
}

/* out = act((x - mean) * scale + shift) over the n elements (whole rows) of a chunk, a block at a
 * time while it is in L1, act the activation `kind` (< 0: none). */
CONVX_CLONES static void CONVX_EW(convx_bn_rows_normalize)(const ET *CONVX_RESTRICT x, ET *CONVX_RESTRICT out,
                                                           ptrdiff_t n, ptrdiff_t period,
                                                           const ET *CONVX_RESTRICT mean_rep,
                                                           const ET *CONVX_RESTRICT scale_rep,
                                                           const ET *CONVX_RESTRICT shift_rep, int kind, double p0,
                                                           double p1) {
    const ptrdiff_t block = CONVX_EW(convx_bn_rows_block)(period);
    for (ptrdiff_t b0 = 0; b0 < n; b0 += block) {
        const ptrdiff_t len = n - b0 < block ? n - b0 : block;
        CONVX_EW(convx_bn_rows_affine)(x + b0, out + b0, len, period, mean_rep, scale_rep, shift_rep);
        if (kind >= 0) CONVX_EW(convx_activation_forward)(kind, out + b0, out + b0, len, p0, p1);
    }
}

/* The gradient reaching the normalisation over n elements starting at a row: grad_out itself
 * (kind < 0), or grad_out through the activation's backward at its output y, into scratch; y NULL:
 * that output recomputed from x as convx_bn_rows_normalize computes it. */
static inline const ET *CONVX_EW(convx_bn_rows_incoming)(const ET *grad_out, const ET *x, const ET *y, int kind,
                                                         double p0, double p1, ptrdiff_t period,
                                                         const ET *CONVX_RESTRICT mean_rep,
                                                         const ET *CONVX_RESTRICT scale_rep,
                                                         const ET *CONVX_RESTRICT shift_rep, ET *scratch,
                                                         ptrdiff_t n) {
    if (kind < 0) return grad_out;
    if (y == NULL) {
        CONVX_EW(convx_bn_rows_affine)(x, scratch, n, period, mean_rep, scale_rep, shift_rep);
        CONVX_EW(convx_activation_forward)(kind, scratch, scratch, n, p0, p1);
        y = scratch;
    }
    CONVX_EW(convx_activation_backward)(kind, grad_out, y, scratch, n, p0, p1);
    return scratch;
}

/* sum_grad[c] = sum of grad, sum_grad_centered[c] = sum of grad * (x - mean) over each channel of
 * a chunk of n elements (overwritten), grad as convx_bn_rows_incoming gives it. scratch: a block
 * (convx_bn_rows_block) of ET; acc: 2 * period doubles. */
CONVX_CLONES static void CONVX_EW(convx_bn_rows_grad_sums)(const ET *grad_out, const ET *x, const ET *y, int kind,
                                                           double p0, double p1, ptrdiff_t n, ptrdiff_t channels,
                                                           ptrdiff_t period, const ET *mean_rep, const ET *scale_rep,
                                                           const ET *shift_rep,
                                                           const double *CONVX_RESTRICT mean_rep_d,
                                                           double *sum_grad, double *sum_grad_centered,
                                                           ET *scratch, double *CONVX_RESTRICT acc) {
    const ptrdiff_t block = CONVX_EW(convx_bn_rows_block)(period);
    double *CONVX_RESTRICT acc_grad = acc, *CONVX_RESTRICT acc_centered = acc + period;
    memset(acc, 0, 2 * (size_t)period * sizeof(double));
    for (ptrdiff_t b0 = 0; b0 < n; b0 += block) {
        const ptrdiff_t len = n - b0 < block ? n - b0 : block;
        const ET *g = CONVX_EW(convx_bn_rows_incoming)(grad_out + b0, x + b0, y ? y + b0 : NULL, kind, p0, p1, period,
                                                       mean_rep, scale_rep, shift_rep, scratch, len);
        const ET *CONVX_RESTRICT src = x + b0;
        ptrdiff_t b = 0;
        for (; b + 4 * period <= len; b += 4 * period) {
            const ET *CONVX_RESTRICT g0 = g + b, *CONVX_RESTRICT g1 = g0 + period;
            const ET *CONVX_RESTRICT g2 = g1 + period, *CONVX_RESTRICT g3 = g2 + period;
            const ET *CONVX_RESTRICT x0 = src + b, *CONVX_RESTRICT x1 = x0 + period;
            const ET *CONVX_RESTRICT x2 = x1 + period, *CONVX_RESTRICT x3 = x2 + period;
            CONVX_SIMD for (ptrdiff_t j = 0; j < period; j++) {
                const double m = mean_rep_d[j];
                const double a0 = (double)g0[j], a1 = (double)g1[j], a2 = (double)g2[j], a3 = (double)g3[j];
                acc_grad[j] += (a0 + a1) + (a2 + a3);
                acc_centered[j] += (a0 * ((double)x0[j] - m) + a1 * ((double)x1[j] - m)) +
                                   (a2 * ((double)x2[j] - m) + a3 * ((double)x3[j] - m));
            }
        }
        for (; b < len; b += period) {
            const ptrdiff_t seg = len - b < period ? len - b : period;
            const ET *CONVX_RESTRICT gb = g + b;
            const ET *CONVX_RESTRICT xb = src + b;
            CONVX_SIMD for (ptrdiff_t j = 0; j < seg; j++) {
                const double gj = (double)gb[j];
                acc_grad[j] += gj;
                acc_centered[j] += gj * ((double)xb[j] - mean_rep_d[j]);
            }
        }
    }
    convx_bn_fold(acc_grad, period, channels, sum_grad);
    convx_bn_fold(acc_centered, period, channels, sum_grad_centered);
}

/* grad_in = scale * grad + k_centered * (x - mean) + k_0 over a chunk of n elements, grad as in
 * convx_bn_rows_grad_sums (scale: the forward's, also the factor of grad). scratch: a block. */
CONVX_CLONES static void CONVX_EW(convx_bn_rows_input_grad)(const ET *grad_out, const ET *x, const ET *y, int kind,
                                                            double p0, double p1, ptrdiff_t n, ptrdiff_t period,
                                                            const ET *CONVX_RESTRICT mean_rep,
                                                            const ET *CONVX_RESTRICT scale_rep,
                                                            const ET *CONVX_RESTRICT shift_rep,
                                                            const ET *CONVX_RESTRICT k_centered_rep,
                                                            const ET *CONVX_RESTRICT k_0_rep,
                                                            ET *CONVX_RESTRICT grad_in, ET *scratch) {
    const ptrdiff_t block = CONVX_EW(convx_bn_rows_block)(period);
    for (ptrdiff_t b0 = 0; b0 < n; b0 += block) {
        const ptrdiff_t len = n - b0 < block ? n - b0 : block;
        const ET *g = CONVX_EW(convx_bn_rows_incoming)(grad_out + b0, x + b0, y ? y + b0 : NULL, kind, p0, p1, period,
                                                       mean_rep, scale_rep, shift_rep, scratch, len);
        const ET *CONVX_RESTRICT src = x + b0;
        ET *CONVX_RESTRICT dst = grad_in + b0;
        for (ptrdiff_t b = 0; b < len; b += period) {
            const ptrdiff_t seg = len - b < period ? len - b : period;
            const ET *CONVX_RESTRICT gb = g + b;
            const ET *CONVX_RESTRICT xb = src + b;
            ET *CONVX_RESTRICT db = dst + b;
            CONVX_SIMD for (ptrdiff_t j = 0; j < seg; j++)
                db[j] = scale_rep[j] * gb[j] + k_centered_rep[j] * (xb[j] - mean_rep[j]) + k_0_rep[j];
        }
    }
}
