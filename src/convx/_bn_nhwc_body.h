/* The channels-last batch-normalisation kernels for one element type: included by _bn_nhwc.h with
 * ET the type (float, double) and ES its suffix (f, d). Every chunk starts at a row, so element j
 * of a chunk belongs to channel j % C and period position j % P; `*_rep` arrays hold a
 * per-channel figure repeated over a period (rep[j] = figure[j % C], j < P). */

/* Elements of a chunk taken per block by the element-wise passes: whole periods, at least one. */
static inline ptrdiff_t CONVX_EW(convx_bn_rows_block)(ptrdiff_t period) {
    return period * (CONVX_BN_BLOCK > period ? CONVX_BN_BLOCK / period : 1);
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
        for (ptrdiff_t b = 0; b < n; b += period) {
            const ptrdiff_t seg = n - b < period ? n - b : period;
            CONVX_SIMD for (ptrdiff_t j = 0; j < seg; j++) first[j] += (double)src[b + j];
        }
        convx_bn_fold(first, period, channels, block_mean);
        for (ptrdiff_t c = 0; c < channels; c++) block_mean[c] /= len;
        for (ptrdiff_t j = 0; j < period; j++) rough[j] = block_mean[j % channels];
        /* The deviations' own sum corrects the mean for the rounding of the first sum, and the
         * squares for the offset (as convx_bn_channel_moments). */
        memset(first, 0, (size_t)period * sizeof(double));
        memset(second, 0, (size_t)period * sizeof(double));
        for (ptrdiff_t b = 0; b < n; b += period) {
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
        for (ptrdiff_t b = b0; b < b0 + len; b += period) {
            const ptrdiff_t seg = b0 + len - b < period ? b0 + len - b : period;
            const ET *CONVX_RESTRICT src = x + b;
            ET *CONVX_RESTRICT dst = out + b;
            CONVX_SIMD for (ptrdiff_t j = 0; j < seg; j++) dst[j] = (src[j] - mean_rep[j]) * scale_rep[j] + shift_rep[j];
        }
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
        for (ptrdiff_t b = 0; b < n; b += period) {
            const ptrdiff_t seg = n - b < period ? n - b : period;
            const ET *CONVX_RESTRICT src = x + b;
            ET *CONVX_RESTRICT dst = scratch + b;
            CONVX_SIMD for (ptrdiff_t j = 0; j < seg; j++) dst[j] = (src[j] - mean_rep[j]) * scale_rep[j] + shift_rep[j];
        }
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
        for (ptrdiff_t b = 0; b < len; b += period) {
            const ptrdiff_t seg = len - b < period ? len - b : period;
            const ET *CONVX_RESTRICT gb = g + b;
            const ET *CONVX_RESTRICT src = x + b0 + b;
            CONVX_SIMD for (ptrdiff_t j = 0; j < seg; j++) {
                const double gj = (double)gb[j];
                acc_grad[j] += gj;
                acc_centered[j] += gj * ((double)src[j] - mean_rep_d[j]);
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
        for (ptrdiff_t b = 0; b < len; b += period) {
            const ptrdiff_t seg = len - b < period ? len - b : period;
            const ET *CONVX_RESTRICT gb = g + b;
            const ET *CONVX_RESTRICT src = x + b0 + b;
            ET *CONVX_RESTRICT dst = grad_in + b0 + b;
            CONVX_SIMD for (ptrdiff_t j = 0; j < seg; j++)
                dst[j] = scale_rep[j] * gb[j] + k_centered_rep[j] * (src[j] - mean_rep[j]) + k_0_rep[j];
        }
    }
}
