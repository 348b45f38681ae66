/* The Winograd transforms for one element type: included by _winograd.h with WT the type
 * (float, double) and WS its suffix (f, d). Vectors run over the tiles of one tile row (or
 * over the columns of one weight row); `point_stride` separates the 36 transformed points. */

/* y[0..5] = B^T x[0..5], elementwise over n. */
static inline void CONVX_WINO(convx_wino_bt)(const WT *const x[6], WT *const y[6], ptrdiff_t n) {
    const WT *CONVX_RESTRICT x0 = x[0], *CONVX_RESTRICT x1 = x[1], *CONVX_RESTRICT x2 = x[2];
    const WT *CONVX_RESTRICT x3 = x[3], *CONVX_RESTRICT x4 = x[4], *CONVX_RESTRICT x5 = x[5];
    WT *CONVX_RESTRICT y0 = y[0], *CONVX_RESTRICT y1 = y[1], *CONVX_RESTRICT y2 = y[2];
    WT *CONVX_RESTRICT y3 = y[3], *CONVX_RESTRICT y4 = y[4], *CONVX_RESTRICT y5 = y[5];
    CONVX_SIMD for (ptrdiff_t t = 0; t < n; t++) {
        const WT d0 = x0[t], d1 = x1[t], d2 = x2[t], d3 = x3[t], d4 = x4[t], d5 = x5[t];
        y0[t] = 4 * d0 - 5 * d2 + d4;
        y1[t] = d3 + d4 - 4 * (d1 + d2);
        y2[t] = d4 - d3 + 4 * (d1 - d2);
        y3[t] = d4 - d2 + 2 * (d3 - d1);
        y4[t] = d4 - d2 + 2 * (d1 - d3);
        y5[t] = 4 * d1 - 5 * d3 + d5;
    }
}

/* y[0..3] = A^T x[0..5]. */
static inline void CONVX_WINO(convx_wino_at)(const WT *const x[6], WT *const y[4], ptrdiff_t n) {
    const WT *CONVX_RESTRICT x0 = x[0], *CONVX_RESTRICT x1 = x[1], *CONVX_RESTRICT x2 = x[2];
    const WT *CONVX_RESTRICT x3 = x[3], *CONVX_RESTRICT x4 = x[4], *CONVX_RESTRICT x5 = x[5];
    WT *CONVX_RESTRICT y0 = y[0], *CONVX_RESTRICT y1 = y[1], *CONVX_RESTRICT y2 = y[2], *CONVX_RESTRICT y3 = y[3];
    CONVX_SIMD for (ptrdiff_t t = 0; t < n; t++) {
        const WT s12 = x1[t] + x2[t], d12 = x1[t] - x2[t], s34 = x3[t] + x4[t], d34 = x3[t] - x4[t];
        y0[t] = x0[t] + s12 + s34;
        y1[t] = d12 + 2 * d34;
        y2[t] = s12 + 4 * s34;
        y3[t] = d12 + 8 * d34 + x5[t];
    }
}

/* y[0..5] = A x[0..3] (A = (A^T)^T): a 4-vector of output gradients to its 6 points. */
static inline void CONVX_WINO(convx_wino_a)(const WT *const x[4], WT *const y[6], ptrdiff_t n) {
    const WT *CONVX_RESTRICT x0 = x[0], *CONVX_RESTRICT x1 = x[1], *CONVX_RESTRICT x2 = x[2], *CONVX_RESTRICT x3 = x[3];
    WT *CONVX_RESTRICT y0 = y[0], *CONVX_RESTRICT y1 = y[1], *CONVX_RESTRICT y2 = y[2];
    WT *CONVX_RESTRICT y3 = y[3], *CONVX_RESTRICT y4 = y[4], *CONVX_RESTRICT y5 = y[5];
    CONVX_SIMD for (ptrdiff_t t = 0; t < n; t++) {
        const WT e = x0[t] + x2[t], o = x1[t] + x3[t];
        const WT e4 = x0[t] + 4 * x2[t], o8 = 2 * x1[t] + 8 * x3[t];
        y0[t] = x0[t];
        y1[t] = e + o;
        y2[t] = e - o;
        y3[t] = e4 + o8;
        y4[t] = e4 - o8;
        y5[t] = x3[t];
    }
}

/* y[0..5] = G x[0..2]: three taps to six points. */
static inline void CONVX_WINO(convx_wino_g)(const WT *const x[3], WT *const y[6], ptrdiff_t n) {
    const WT *CONVX_RESTRICT x0 = x[0], *CONVX_RESTRICT x1 = x[1], *CONVX_RESTRICT x2 = x[2];
    WT *CONVX_RESTRICT y0 = y[0], *CONVX_RESTRICT y1 = y[1], *CONVX_RESTRICT y2 = y[2];
    WT *CONVX_RESTRICT y3 = y[3], *CONVX_RESTRICT y4 = y[4], *CONVX_RESTRICT y5 = y[5];
    const WT sixth = (WT)1 / 6, twelfth = (WT)1 / 12, twenty_fourth = (WT)1 / 24;
    CONVX_SIMD for (ptrdiff_t t = 0; t < n; t++) {
        const WT g0 = x0[t], g1 = x1[t], g2 = x2[t];
        y0[t] = g0 / 4;
        y1[t] = -(g0 + g1 + g2) * sixth;
        y2[t] = -(g0 - g1 + g2) * sixth;
        y3[t] = g0 * twenty_fourth + g1 * twelfth + g2 * sixth;
        y4[t] = g0 * twenty_fourth - g1 * twelfth + g2 * sixth;
        y5[t] = g2;
    }
}

/* y[0..2] = G^T x[0..5]: six points back to three taps. */
static inline void CONVX_WINO(convx_wino_gt)(const WT *const x[6], WT *const y[3], ptrdiff_t n) {
    const WT *CONVX_RESTRICT x0 = x[0], *CONVX_RESTRICT x1 = x[1], *CONVX_RESTRICT x2 = x[2];
    const WT *CONVX_RESTRICT x3 = x[3], *CONVX_RESTRICT x4 = x[4], *CONVX_RESTRICT x5 = x[5];
    WT *CONVX_RESTRICT y0 = y[0], *CONVX_RESTRICT y1 = y[1], *CONVX_RESTRICT y2 = y[2];
    const WT sixth = (WT)1 / 6, twelfth = (WT)1 / 12, twenty_fourth = (WT)1 / 24;
    CONVX_SIMD for (ptrdiff_t t = 0; t < n; t++) {
        const WT s12 = x1[t] + x2[t], s34 = x3[t] + x4[t];
        y0[t] = x0[t] / 4 - s12 * sixth + s34 * twenty_fourth;
        y1[t] = (x2[t] - x1[t]) * sixth + (x3[t] - x4[t]) * twelfth;
        y2[t] = (s34 - s12) * sixth + x5[t];
    }
}

/* The four phases of a zero-padded row: phase[m * len + k] = row[col0 + 4k + m] (0 outside
 * [0, width)), k < len. */
static inline void CONVX_WINO(convx_wino_phases)(const WT *row, ptrdiff_t width, ptrdiff_t col0, ptrdiff_t len,
                                               WT *CONVX_RESTRICT buffer, WT *CONVX_RESTRICT phase) {
    ptrdiff_t span = 4 * len, lo = col0 < 0 ? -col0 : 0, hi = width - col0;
    if (hi > span) hi = span;
    if (row == NULL || hi <= lo) {
        memset(phase, 0, 4 * len * sizeof(WT));
        return;
    }
    if (lo > 0) memset(buffer, 0, lo * sizeof(WT));
    memcpy(buffer + lo, row + col0 + lo, (hi - lo) * sizeof(WT));
    if (hi < span) memset(buffer + hi, 0, (span - hi) * sizeof(WT));
    for (ptrdiff_t m = 0; m < 4; m++) {
        WT *CONVX_RESTRICT dst = phase + m * len;
        CONVX_SIMD for (ptrdiff_t k = 0; k < len; k++) dst[k] = buffer[4 * k + m];
    }
}

/* The weight row `row` of U = G g G^T: u[p * point_stride + q] for the n_cols taps
 * g_q = w[q * col_stride + tap] (tap 8 - tap when flip, the kernel rotated by 180 degrees). */
CONVX_CLONES static void CONVX_WINO(convx_wino_weight_row)(
        const WT *w, ptrdiff_t col_stride, int flip, ptrdiff_t n_cols, WT *u, ptrdiff_t point_stride,
        WT *scratch) {
    WT *taps = scratch, *half = scratch + 9 * n_cols;  /* taps[tap][q], half[a][j][q] */
    for (ptrdiff_t q = 0; q < n_cols; q++)
        for (ptrdiff_t tap = 0; tap < 9; tap++) taps[tap * n_cols + q] = w[q * col_stride + (flip ? 8 - tap : tap)];
    for (ptrdiff_t j = 0; j < 3; j++) {
        const WT *x[3] = {taps + j * n_cols, taps + (3 + j) * n_cols, taps + (6 + j) * n_cols};
        WT *y[6];
        for (ptrdiff_t a = 0; a < 6; a++) y[a] = half + (a * 3 + j) * n_cols;
        CONVX_WINO(convx_wino_g)(x, y, n_cols);
    }
    for (ptrdiff_t a = 0; a < 6; a++) {
        const WT *x[3] = {half + (a * 3) * n_cols, half + (a * 3 + 1) * n_cols, half + (a * 3 + 2) * n_cols};
        WT *y[6];
        for (ptrdiff_t b = 0; b < 6; b++) y[b] = u + (a * 6 + b) * point_stride;
        CONVX_WINO(convx_wino_g)(x, y, n_cols);
    }
}

/* One row of the weight gradient: dw[q * 9 + (3i + j)] = (G^T dU_q G)[i, j] for the n_cols
 * columns q of du[p * point_stride + q]. */
CONVX_CLONES static void CONVX_WINO(convx_wino_weight_grad_row)(
        const WT *du, ptrdiff_t point_stride, ptrdiff_t n_cols, WT *dw, WT *scratch) {
    WT *half = scratch, *taps = scratch + 18 * n_cols;  /* half[i][b][q], taps[tap][q] */
    for (ptrdiff_t b = 0; b < 6; b++) {
        const WT *x[6];
        WT *y[3];
        for (ptrdiff_t a = 0; a < 6; a++) x[a] = du + (a * 6 + b) * point_stride;
        for (ptrdiff_t i = 0; i < 3; i++) y[i] = half + (i * 6 + b) * n_cols;
        CONVX_WINO(convx_wino_gt)(x, y, n_cols);
    }
    for (ptrdiff_t i = 0; i < 3; i++) {
        const WT *x[6];
        WT *y[3];
        for (ptrdiff_t b = 0; b < 6; b++) x[b] = half + (i * 6 + b) * n_cols;
        for (ptrdiff_t j = 0; j < 3; j++) y[j] = taps + (i * 3 + j) * n_cols;
        CONVX_WINO(convx_wino_gt)(x, y, n_cols);
    }
    for (ptrdiff_t q = 0; q < n_cols; q++)
        for (ptrdiff_t tap = 0; tap < 9; tap++) dw[q * 9 + tap] = taps[tap * n_cols + q];
}

/* Tile rows q_first .. q_first + n_rows - 1 of the batch (row q: image q / tiles_h, tile row
 * q % tiles_h) side by side: tile t of local row r is column r * tiles_w + t of a transform's
 * vectors, so that they are long whatever the plane's width. */

/* V = B^T d B for a run of tile rows of one channel: the patch of tile t is
 * plane[4 * row - pad_h + i, 4t - pad_w + j], i, j < 6 (0 outside the plane), with `plane` the
 * channel's plane in the row's image (x + image * image_stride); point p of the run's column s
 * goes to v[p * point_stride + s]. */
CONVX_CLONES static void CONVX_WINO(convx_wino_input)(
        const WT *x, ptrdiff_t image_stride, ptrdiff_t height, ptrdiff_t width, ptrdiff_t pad_h,
        ptrdiff_t pad_w, ptrdiff_t tiles_h, ptrdiff_t tiles_w, ptrdiff_t q_first, ptrdiff_t n_rows,
        WT *v, ptrdiff_t point_stride, WT *scratch) {
    ptrdiff_t n = n_rows * tiles_w, ns = n + CONVX_WINO_SKEW, len = tiles_w + 1;
    WT *patches = scratch, *rows = scratch + 36 * ns;           /* patches[i*6 + j][s], rows[i*6 + j'][s] */
    WT *buffer = scratch + 72 * ns, *phase = buffer + 4 * len;
    for (ptrdiff_t r = 0; r < n_rows; r++) {
        ptrdiff_t q = q_first + r;
        const WT *plane = x + (q / tiles_h) * image_stride;
        for (ptrdiff_t i = 0; i < 6; i++) {
            ptrdiff_t ih = 4 * (q % tiles_h) - pad_h + i;
            CONVX_WINO(convx_wino_phases)(ih >= 0 && ih < height ? plane + ih * width : NULL, width, -pad_w, len,
                                          buffer, phase);
            for (ptrdiff_t j = 0; j < 6; j++)
                memcpy(patches + (i * 6 + j) * ns + r * tiles_w, phase + (j % 4) * len + j / 4, tiles_w * sizeof(WT));
        }
    }
    for (ptrdiff_t i = 0; i < 6; i++) {
        const WT *in[6];
        WT *out[6];
        for (ptrdiff_t j = 0; j < 6; j++) {
            in[j] = patches + (i * 6 + j) * ns;
            out[j] = rows + (i * 6 + j) * ns;
        }
        CONVX_WINO(convx_wino_bt)(in, out, n);
    }
    for (ptrdiff_t j = 0; j < 6; j++) {
        const WT *in[6];
        WT *out[6];
        for (ptrdiff_t i = 0; i < 6; i++) {
            in[i] = rows + (i * 6 + j) * ns;
            out[i] = v + (i * 6 + j) * point_stride;
        }
        CONVX_WINO(convx_wino_bt)(in, out, n);
    }
}

/* A dY A^T for a run of tile rows of one output-gradient channel: tile t covers
 * plane[4 * row + a, 4t + b], a, b < 4 (0 beyond out_h, out_w); point p of the run's column s
 * goes to v[p * point_stride + s]. */
CONVX_CLONES static void CONVX_WINO(convx_wino_grad_out)(
        const WT *grad_out, ptrdiff_t image_stride, ptrdiff_t out_h, ptrdiff_t out_w, ptrdiff_t tiles_h,
        ptrdiff_t tiles_w, ptrdiff_t q_first, ptrdiff_t n_rows, WT *v, ptrdiff_t point_stride, WT *scratch) {
    ptrdiff_t n = n_rows * tiles_w, ns = n + CONVX_WINO_SKEW;
    WT *patches = scratch, *rows = scratch + 16 * ns;           /* patches[a*4 + b][s], rows[a*6 + j][s] */
    WT *buffer = scratch + 40 * ns, *phase = buffer + 4 * tiles_w;
    for (ptrdiff_t r = 0; r < n_rows; r++) {
        ptrdiff_t q = q_first + r;
        const WT *plane = grad_out + (q / tiles_h) * image_stride;
        for (ptrdiff_t a = 0; a < 4; a++) {
            ptrdiff_t oh = 4 * (q % tiles_h) + a;
            CONVX_WINO(convx_wino_phases)(oh < out_h ? plane + oh * out_w : NULL, out_w, 0, tiles_w, buffer, phase);
            for (ptrdiff_t b = 0; b < 4; b++)
                memcpy(patches + (a * 4 + b) * ns + r * tiles_w, phase + b * tiles_w, tiles_w * sizeof(WT));
        }
    }
    for (ptrdiff_t a = 0; a < 4; a++) {
        const WT *in[4] = {patches + (a * 4) * ns, patches + (a * 4 + 1) * ns, patches + (a * 4 + 2) * ns,
                           patches + (a * 4 + 3) * ns};
        WT *out[6];
        for (ptrdiff_t j = 0; j < 6; j++) out[j] = rows + (a * 6 + j) * ns;
        CONVX_WINO(convx_wino_a)(in, out, n);
    }
    for (ptrdiff_t j = 0; j < 6; j++) {
        const WT *in[4];
        WT *out[6];
        for (ptrdiff_t a = 0; a < 4; a++) in[a] = rows + (a * 6 + j) * ns;
        for (ptrdiff_t i = 0; i < 6; i++) out[i] = v + (i * 6 + j) * point_stride;
        CONVX_WINO(convx_wino_a)(in, out, n);
    }
}

/* Y = A^T M A + bias for a run of tile rows of one output channel: point p of the run's
 * column s is m[p * point_stride + s]; tile t of row q fills plane[4 * (q % tiles_h) + a, 4t + b]
 * within out_h x out_w, plane = out + (q / tiles_h) * image_stride. Returns whether a written
 * value is not finite. */
CONVX_CLONES static int CONVX_WINO(convx_wino_output)(
        const WT *m, ptrdiff_t point_stride, WT bias, WT *out, ptrdiff_t image_stride, ptrdiff_t out_h,
        ptrdiff_t out_w, ptrdiff_t tiles_h, ptrdiff_t tiles_w, ptrdiff_t q_first, ptrdiff_t n_rows,
        WT *scratch) {
    ptrdiff_t n = n_rows * tiles_w, ns = n + CONVX_WINO_SKEW;
    WT *cols = scratch, *values = scratch + 24 * ns;            /* cols[a*6 + j][s], values[a*4 + b][s] */
    WT *buffer = scratch + 40 * ns;
    WT finite = 0;
    for (ptrdiff_t j = 0; j < 6; j++) {
        const WT *in[6];
        WT *res[4];
        for (ptrdiff_t i = 0; i < 6; i++) in[i] = m + (i * 6 + j) * point_stride;
        for (ptrdiff_t a = 0; a < 4; a++) res[a] = cols + (a * 6 + j) * ns;
        CONVX_WINO(convx_wino_at)(in, res, n);
    }
    for (ptrdiff_t a = 0; a < 4; a++) {
        const WT *in[6];
        WT *res[4] = {values + (a * 4) * ns, values + (a * 4 + 1) * ns, values + (a * 4 + 2) * ns,
                      values + (a * 4 + 3) * ns};
        for (ptrdiff_t j = 0; j < 6; j++) in[j] = cols + (a * 6 + j) * ns;
        CONVX_WINO(convx_wino_at)(in, res, n);
    }
    for (ptrdiff_t r = 0; r < n_rows; r++) {
        ptrdiff_t q = q_first + r;
        WT *plane = out + (q / tiles_h) * image_stride;
        for (ptrdiff_t a = 0; a < 4 && 4 * (q % tiles_h) + a < out_h; a++) {
            for (ptrdiff_t b = 0; b < 4; b++) {
                const WT *CONVX_RESTRICT src = values + (a * 4 + b) * ns + r * tiles_w;
                CONVX_SIMD for (ptrdiff_t t = 0; t < tiles_w; t++) buffer[4 * t + b] = src[t] + bias;
            }
            WT *CONVX_RESTRICT dst = plane + (4 * (q % tiles_h) + a) * out_w;
            CONVX_SIMD_SUM(finite) for (ptrdiff_t k = 0; k < out_w; k++) {
                dst[k] = buffer[k];
                /* v - v is 0 for finite v, NaN otherwise; NaN survives the sum. */
                finite += buffer[k] - buffer[k];
            }
        }
    }
    return !(finite == 0);
}
